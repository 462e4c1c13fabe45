"""Mix: unit parts -> final shards that each hold the recipe's group ratio exactly, as a distributed stage.

Rules (a pure function of the recipe and the parts, whatever the worker count, node count or filesystem):
each group's rows are ordered by (hash(mixing.seed, id), id, unit order, row); a row whose id an earlier row has is
dropped (``duplicate_id``), then among the remaining rows one whose content hash an earlier one has is dropped
(``duplicate``, with ``filters.dedup``), then, with a ``near_dup`` step, every row of a near-duplicate cluster but
its first (``near_duplicate``); groups are cut to ratio-proportional counts (``first_exhausted``: stop at
the first exhausted group; ``all_exhausted``: repeat smaller groups, repeats get an ``@repK`` id suffix) and laid out
in blocks of ``ratio[g]`` rows per group, interleaved; a shard is a run of whole blocks.

Stages (see docs/pipeline.md "Mixing at scale"): ``index`` (one task per batch of parts: the part's rows sorted by
order key), ``dedup`` (one task per order-key range for ids, one per content-hash range for content), ``near`` (with
a ``near_dup`` step: one task per fingerprint-key range for candidate pairs, one for the clusters), ``order`` (one
task per order-key range: surviving rows sorted by group; counts give every row its rank with no global sort),
``shards`` (one task per shard, reading only the rank ranges it holds) and the per-source rejects.
"""
from aromni.pipeline.mix.run import MixError, MixResult, PartRef, run_mix

DATA = "data"

__all__ = ["run_mix", "PartRef", "MixResult", "MixError", "DATA"]
