"""What an executor runs per unit: load the tokenizers once per process, process the unit, write its part."""
from __future__ import annotations

import dataclasses
import json
import os

from aromni.io import paths
from aromni.pipeline.executor import error_text
from aromni.layout import AR_OMNI_V0_1
from aromni.model import load_tokenizers
from aromni.pipeline.parts import write_part
from aromni.pipeline.plan import PlannedUnit
from aromni.pipeline.pools import attach
from aromni.pipeline.unit import process_unit
from aromni.recipe import Recipe, parse_recipe

_TOKENIZER_CACHE: dict[str, object] = {}


def tokenizers_cfg(recipe: Recipe):
    """The recipe's tokenizers section with absolute local checkpoint paths (a checkpoint in a bucket or on the Hub is
    fetched once per machine into aromni's cache: ``paths.local_copy``)."""
    cfg = recipe.tokenizers.model_copy(deep=True)
    for kind in ("text", "image", "speech"):
        c = getattr(cfg, kind)
        if c is not None and c.path is not None:
            c.path = paths.local_copy(recipe.resolve(c.path))
    return cfg


def tokenizers_for(recipe: Recipe, pools=None):
    """Load the recipe's tokenizers once per process (Ray reuses worker processes across units). Model tokenizers
    load lazily (config only); with ``pools`` their encode goes to the build's actor pools instead."""
    cfg = tokenizers_cfg(recipe)
    key = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
    if key not in _TOKENIZER_CACHE:
        _TOKENIZER_CACHE[key] = load_tokenizers(cfg, AR_OMNI_V0_1)
    return attach(_TOKENIZER_CACHE[key], pools.tokenizers if pools is not None else None)


def run_unit(recipe: dict | Recipe, pu: PlannedUnit, out: str, pools=None) -> dict:
    """Process one unit and write its part; returns the unit's stats as a dict (what its done marker holds)."""
    # A unit holds one CPU: the text tokenizer's thread pool would start a thread per core of the node in every
    # worker. (Read by the library at each batch call; a user's own setting wins.)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    recipe = recipe if isinstance(recipe, Recipe) else parse_recipe(recipe)
    tok = tokenizers_for(recipe, pools)
    result = process_unit(recipe, recipe.sources[pu.source_index], pu.unit, tok, pu.uid, pools=pools)
    stats = result.stats.to_dict()
    write_part(out, pu.part_stem, dataclasses.replace(result, stats=stats), recipe)
    return stats


def run_units(recipe_dict: dict, pus: list[PlannedUnit], out: str, pools=None) -> list[tuple[str, object]]:
    """Several units in one task (one dispatch and one recipe parse for all): each still writes its own part and has
    its own outcome, ``("ok", stats)`` or ``("error", "Type: message")``, so one unit's bug loses no other unit."""
    recipe = parse_recipe(recipe_dict)
    outcomes: list[tuple[str, object]] = []
    for pu in pus:
        try:
            outcomes.append(("ok", run_unit(recipe, pu, out, pools)))
        except Exception as e:  # noqa: BLE001 - any error of a unit's code is that unit's failure
            outcomes.append(("error", error_text(e)))
    return outcomes
