"""``aromni card``: the build folder's README.md, a Hugging Face dataset card generated from the manifest.

Front matter (``huggingface_hub.DatasetCardData``): ``configs`` listing the manifest's shards by name (so
``datasets.load_dataset(DIR)`` reads exactly the shards the manifest vouches for: not the rejects, and not a stray
parquet file someone left in ``data/``), ``dataset_info.features`` derived from the row
schema by ``datasets`` itself, license, task categories, size category, tags. Body: stand-in warning, how to load and
train on it, sources with their licenses and counts, tasks, tokenizers, layout, accounting, mixing, lengths, plots,
and the recipe that built it.

Licenses: a recipe does not say under which terms its inputs were published, so the card never guesses: it shows what
``--license`` / ``--source-license NAME=ID`` declare and, for known readers, the license of the *published* dataset of
that format as a pointer to check (the build may have read something else in that format, like the demo does).
"""
from __future__ import annotations

from pathlib import Path

import yaml

from aromni.dataset.filtering import card_section
from aromni.dataset.folder import BuildFolder
from aromni.dataset.stats import PLOT_FILES, PLOTS_DIR, compute, write_plots
from aromni.pipeline.manifest import MANIFEST
from aromni.sample import ROW_SCHEMA
from aromni.tasks import task_table

CARD = "README.md"

# reader -> (license of the published dataset in that format, where to check its terms)
PUBLISHED_LICENSES = {
    "laion": ("cc-by-4.0 (metadata; images belong to their owners)", "https://huggingface.co/datasets/laion/laion2B-en"),
    "gigaspeech": ("gated behind its own terms of use", "https://huggingface.co/datasets/speechcolab/gigaspeech"),
    "ultrafineweb": ("apache-2.0", "https://huggingface.co/datasets/openbmb/Ultra-FineWeb"),
}

# aromni task -> Hugging Face task category (the task table's `hf_category:`)
TASK_CATEGORIES = {name: t.hf_category for name, t in task_table().items() if t.hf_category}

SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"),
                   (10_000_000_000, "1B<n<10B")]


def size_category(n: int) -> str:
    return next((name for limit, name in SIZE_CATEGORIES if n < limit), "n>10B")


def features_yaml() -> list:
    """The row schema as the ``dataset_info.features`` YAML that ``datasets`` itself writes and reads."""
    import datasets

    info = datasets.DatasetInfo(features=datasets.Features.from_arrow_schema(ROW_SCHEMA))
    return info._to_yaml_dict()["features"]


def _uncompressed_bytes(folder: BuildFolder) -> int:
    """Size of the shards' data uncompressed, from parquet metadata (no data read): the card's ``num_bytes``."""
    import pyarrow.parquet as pq

    total = 0
    for p in folder.shard_paths():
        md = pq.read_metadata(p)
        total += sum(md.row_group(g).total_byte_size for g in range(md.num_row_groups))
    return total


def _table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


def source_license(name: str, reader: str, declared: dict[str, str]) -> str:
    if name in declared:
        return declared[name]
    if reader in PUBLISHED_LICENSES:
        lic, url = PUBLISHED_LICENSES[reader]
        return f"not declared (the published {reader} data: {lic}; check the terms of your copy: {url})"
    return "not declared"


def make_card(folder: BuildFolder, st: dict, *, license: str | None = None,
              source_licenses: dict[str, str] | None = None, repo_id: str | None = None):
    from huggingface_hub import DatasetCard, DatasetCardData

    m = folder.manifest
    declared = dict(source_licenses or {})
    srcs = folder.recipe.get("sources", [])
    if license is None:
        known = {declared.get(s["name"]) for s in srcs}
        license = known.pop() if len(known) == 1 and None not in known else "other"
    tasks = sorted(st["by_task"])
    categories = sorted({TASK_CATEGORIES[t] for t in tasks if t in TASK_CATEGORIES} | {"any-to-any"})
    tags = ["aromni", "ar-omni", "chameleon", "interleaved", "tokenized"] + (["stand-in-tokenizers"] if folder.stand_in else [])
    data = DatasetCardData(
        license=license, pretty_name=folder.name, task_categories=categories,
        size_categories=[size_category(st["rows"])], tags=tags,
        configs=[{"config_name": "default", "data_files": [{"split": "train",
                                                            "path": [s["path"] for s in folder.shards]}]}],
        dataset_info={"features": features_yaml(),
                      "splits": [{"name": "train", "num_bytes": _uncompressed_bytes(folder), "num_examples": st["rows"]}],
                      "download_size": sum(int(s.get("bytes", 0)) for s in folder.shards),
                      "dataset_size": _uncompressed_bytes(folder)},
    )
    load_as = repo_id or str(folder.path)
    lay = folder.layout
    L: list[str] = [f"# {folder.name}", ""]
    if folder.stand_in:
        L += [f"> **WARNING: {folder.warning}.** The tokenizers marked stand-in below are not the released "
              "checkpoints; this dataset shows the format and the pipeline only.", ""]
    desc = folder.recipe.get("description")
    L += [desc + "\n" if desc else "",
          f"Token sequences for [AR-Omni](https://github.com/ModalityDance/AR-Omni)-style any-to-any training (one "
          f"decoder over text, image and speech tokens, Chameleon/Anole vocabulary, layout `{lay.name}`), built by "
          f"aromni {m.get('aromni_version', '?')} from the recipe below "
          f"(sha256 `{m.get('recipe_sha256', '?')[:16]}...`).", "",
          f"**{st['rows']:,} rows, {st['tokens']:,} tokens** in {st['shards']} parquet shard(s) under `data/`; "
          f"{st['rejects']['total']:,} rejected inputs are listed with their reasons under `rejects/`; "
          f"`manifest.json` holds layout, recipe, tokenizer identities, shard checksums and accounting.", "",
          "## Use", "", "```python", "import datasets",
          f"ds = datasets.load_dataset({load_as!r}, split='train')",
          "row = ds[0]  # id, source, task, input_ids, segments, n_tokens, meta", "",
          "# labels and loss weights derive from ids + segments (with aromni installed):",
          "from aromni.sample import labels_and_weights, LossPolicy",
          "labels, weights = labels_and_weights(row['input_ids'], row['segments'], row['task'])",
          "```", "",
          "Look at rows decoded back to text, PNG and WAV with `aromni show DIR --row 0` (or `--html`); export to "
          "AR-Omni's own training formats with `aromni export DIR --format aromni-pretrain-jsonl|aromni-sft-parquet`.", ""]

    L += ["## Row schema", "", _table(["column", "type", "meaning"], [
        ["id", "string", "stable: source name + the item's own key"],
        ["source", "string", "recipe source name"], ["task", "string", "AR-Omni task name"],
        ["input_ids", "list<int32>", "the token sequence"],
        ["segments", "list<{role, modality, start, end}>", "cover the row: user/assistant x text/image/speech spans"],
        ["n_tokens", "int32", "len(input_ids)"], ["meta", "string (JSON)", "caption/transcript, original path, ..."],
    ]), ""]

    L += ["## Sources", "", _table(["source", "reader", "group", "tasks", "license", "read", "written", "rejected",
                                     "rows in shards"],
                                    [[s["name"], s["reader"], s.get("group", "?"), ", ".join(s["tasks"]),
                                      source_license(s["name"], s["reader"], declared),
                                      st["accounting"].get(s["name"], {}).get("read", 0),
                                      st["accounting"].get(s["name"], {}).get("written", 0),
                                      sum(st["accounting"].get(s["name"], {}).get("rejected", {}).values()),
                                      st["by_source"].get(s["name"], {}).get("rows", 0)] for s in srcs]), ""]
    L += ["## Tasks", "", _table(["task", "rows", "tokens", "median length", "p95", "max"],
                                 [[t, f"{v['rows']:,}", f"{v['tokens']:,}", v.get("p50", ""), v.get("p95", ""),
                                   v.get("p100", "")] for t, v in st["by_task"].items()]), ""]
    L += ["## Tokens by modality", "", _table(["modality", "tokens", "user (input)", "assistant (output)"],
                                              [[k, f"{v['tokens']:,}", f"{v['user']:,}", f"{v['assistant']:,}"]
                                               for k, v in st["by_modality"].items()]), ""]

    tok_rows = []
    for mod in ("text", "image", "speech"):
        ident = (m.get("tokenizers") or {}).get(mod)
        if ident:
            tok_rows.append([mod, ident.get("kind", "?"), "**yes: STAND-IN**" if ident.get("stand_in") else "no",
                             (ident.get("sha256") or "")[:16], ident.get("note", "") or Path(ident.get("path") or "").name])
    L += ["## Tokenizers", "", _table(["modality", "kind", "stand-in", "sha256 (first 16)", "file / note"], tok_rows), ""]

    L += ["## Token layout", "", f"`{lay.name}`, vocabulary {lay.vocab_size:,} ids (stored in full in `manifest.json`):", "",
          _table(["what", "ids"], [
              ["bos / eos / pad (training)", f"{lay.bos} / {lay.eos} / {lay.train_pad}"],
              ["image codes (code c -> id c+4)", f"{lay.image_code_start}..{lay.image_code_end}, {lay.image_tokens} per image"],
              ["image span", f"[{lay.boi}] codes [{lay.eoi}]"],
              ["speech codes (code c -> id c+{0})".format(lay.speech_code_start),
               f"{lay.speech_code_start}..{lay.speech_code_end}, {lay.speech_rate} per second"],
              ["speech span", f"[{lay.boa}] codes [{lay.eoa}]"],
              ["end of user turn / assistant turn", f"{lay.eoh} / {lay.eom}"],
              ["SFT transcript / response start", f"{lay.ins} / {lay.res}"],
          ]), ""]

    mix = st["mixing"]
    L += ["## Mixing", "", f"Stop rule `{mix.get('stop')}`, seed {mix.get('seed')}, {mix.get('blocks', '?')} blocks; "
          "every shard holds the ratio.", "",
          _table(["group", "ratio", "available", "used", "repeated"],
                 [[g, v.get("ratio"), f"{v['available']:,}", f"{v['used']:,}", v.get("repeated", 0)]
                  for g, v in mix.get("groups", {}).items()]), ""]
    L += ["## Accounting and rejects", "",
          "Every input example ends in exactly one place: a row or a reject (read = written + rejected; written rows "
          "not used by the mixing are not in the shards).", "",
          _table(["reason", "count"], [[r, n] for r, n in st["rejects"]["by_reason"].items()] or [["(none)", 0]]), ""]
    L += card_section(st.get("filtering") or {}, folder.recipe)
    if st["checks"]:
        L += ["**Checks that failed when this card was written:**", ""] + [f"- {c}" for c in st["checks"]] + [""]
    lens = st["lengths"]
    if lens:
        L += ["## Row lengths", "", _table(["p0", "p5", "p25", "p50", "p75", "p95", "p99", "max", "mean"],
                                           [[lens[k] for k in ("p0", "p5", "p25", "p50", "p75", "p95", "p99", "p100",
                                                               "mean")]]), ""]
    if st.get("plots"):
        L += ["## Plots", ""] + [f"![{Path(p).stem.replace('_', ' ')}]({p})" for p in st["plots"]] + [""]
    L += ["## Recipe", "", "```yaml", yaml.safe_dump(folder.recipe, sort_keys=False, allow_unicode=True).rstrip(),
          "```", "", "## Citation", "",
          "*AR-Omni: A Unified Autoregressive Model for Any-to-Any Generation*, arXiv:2601.17761 (2026).", ""]
    return DatasetCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n{{ body }}\n",
                                     body="\n".join(L))


def write_card(path: str | Path, *, license: str | None = None, source_licenses: dict[str, str] | None = None,
               repo_id: str | None = None, plots: bool | None = True) -> tuple[Path, dict]:
    """Compute stats, write the plots and README.md into the build folder; returns (card path, stats).

    ``plots``: True redraws them, False links the ones already there, None redraws only when one is missing or older
    than manifest.json (what publish uses: drawing costs seconds, a rebuild rewrites the manifest)."""
    folder = BuildFolder(path)
    st, lens = compute(folder)
    if plots is None:
        have = [folder.path / PLOTS_DIR / n for n in PLOT_FILES]
        newest_input = (folder.path / MANIFEST).stat().st_mtime
        plots = not all(p.is_file() and p.stat().st_mtime >= newest_input for p in have)
    made = write_plots(folder, st, lens) if plots else sorted((folder.path / PLOTS_DIR).glob("*.png"))
    st["plots"] = [p.relative_to(folder.path).as_posix() for p in made]
    card = make_card(folder, st, license=license, source_licenses=source_licenses, repo_id=repo_id)
    out = folder.path / CARD
    out.write_text(str(card), encoding="utf-8")
    return out, st
