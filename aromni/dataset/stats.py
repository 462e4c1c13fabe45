"""``aromni stats``: what a build holds, counted from its shards (not copied from the manifest), and four plots.

Counts: rows and tokens by task / group / source, tokens by modality and role, row-length percentiles, rejects by
reason (from ``rejects/*.parquet``), mixing (available vs used per group). Where the shards and the manifest disagree,
``checks`` says so. Plots (PNG, beside the manifest in ``plots/``): length histograms per task, tokens per modality,
mixing, rejects by reason.

``losses``: what the build dropped without a reject row: whole dialog exchanges cut to fit ``max_chat_tokens``
(``dropped_turns``, from the manifest's accounting) and the per-example steps' counts (the voice step: synthesised,
cache hits, unspeakable/skipped turns, seconds where recorded), summed per source from the units' ``parts/*.done.json``
(the manifest does not copy them; a folder without ``parts/`` says so instead of showing zeros).
``loss_lines(stats)`` formats them for the terminal.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aromni.dataset.filtering import filter_lines, filtering, is_filter, plot_files
from aromni.dataset.folder import BuildFolder
from aromni.pipeline.parts import read_done

PLOTS_DIR = "plots"
PLOT_FILES = ("lengths_by_task.png", "tokens_by_modality.png", "mixing.png", "rejects_by_reason.png")
PERCENTILES = (0, 5, 25, 50, 75, 95, 99, 100)
MODALITY_COLORS = {"text": "#4C72B0", "image": "#DD8452", "speech": "#55A868"}


def _percentiles(x: np.ndarray) -> dict:
    if len(x) == 0:
        return {}
    q = np.percentile(x, PERCENTILES, method="nearest")
    out = {f"p{p}": int(v) for p, v in zip(PERCENTILES, q)}
    out["mean"] = round(float(x.mean()), 1)
    return out


def segment_lengths(t: pa.Table) -> pa.Table:
    """One row per segment: task, role, modality, tokens (vectorised: no Python loop over rows)."""
    segs = t.column("segments").combine_chunks()
    parents = pc.list_parent_indices(segs)
    flat = pc.list_flatten(segs)
    return pa.table({"task": pc.take(t.column("task"), parents), "role": flat.field("role"),
                     "modality": flat.field("modality"),
                     "tokens": pc.subtract(flat.field("end"), flat.field("start")).cast(pa.int64())})


def compute(folder: BuildFolder) -> tuple[dict, dict[str, np.ndarray]]:
    """(stats as a JSON-able dict, row lengths per task for the histograms)."""
    m = folder.manifest
    group_of = folder.group_of()
    by = {k: defaultdict(lambda: [0, 0]) for k in ("task", "group", "source")}
    lengths: dict[str, list[np.ndarray]] = defaultdict(list)
    mod = defaultdict(int)  # (task, role, modality) -> tokens
    rows = tokens = 0
    for t in folder.tables(columns=["task", "source", "n_tokens", "segments"]):
        n = t.column("n_tokens").to_numpy()
        agg = t.group_by(["task", "source"]).aggregate([("n_tokens", "sum"), ("n_tokens", "count")])
        for r in agg.to_pylist():
            for key, v in (("task", r["task"]), ("group", group_of.get(r["source"], "?")), ("source", r["source"])):
                by[key][v][0] += r["n_tokens_count"]
                by[key][v][1] += r["n_tokens_sum"]
        tasks = t.column("task").to_numpy(zero_copy_only=False)
        for task in np.unique(tasks):
            lengths[str(task)].append(n[tasks == task])
        agg = segment_lengths(t).group_by(["task", "role", "modality"]).aggregate([("tokens", "sum")])
        for r in agg.to_pylist():
            mod[(r["task"], r["role"], r["modality"])] += r["tokens_sum"]
        rows += t.num_rows
        tokens += int(n.sum())
    lens = {k: np.concatenate(v) for k, v in sorted(lengths.items())}
    all_lens = np.concatenate(list(lens.values())) if lens else np.zeros(0, dtype=np.int64)

    by_modality: dict = {}
    for (task, role, modality), k in sorted(mod.items()):
        d = by_modality.setdefault(modality, {"tokens": 0, "user": 0, "assistant": 0, "by_task": {}})
        d["tokens"] += k
        d[role] += k
        d["by_task"][task] = d["by_task"].get(task, 0) + k

    rej = folder.rejects()
    by_reason = Counter(rej.column("reason").to_pylist())
    by_source_reason: dict = defaultdict(Counter)
    for src, reason in zip(rej.column("source").to_pylist(), rej.column("reason").to_pylist()):
        by_source_reason[src][reason] += 1

    stats = {
        "name": folder.name, "path": str(folder.path), "stand_in": folder.stand_in, "warning": folder.warning,
        "rows": rows, "tokens": tokens, "shards": len(folder.shards),
        "by_task": {k: {"rows": r, "tokens": n, **_percentiles(lens[k])} for k, (r, n) in sorted(by["task"].items())},
        "by_group": {k: {"rows": r, "tokens": n} for k, (r, n) in sorted(by["group"].items())},
        "by_source": {k: {"rows": r, "tokens": n} for k, (r, n) in sorted(by["source"].items())},
        "by_modality": by_modality,
        "lengths": _percentiles(all_lens),
        "rejects": {"total": rej.num_rows, "by_reason": dict(by_reason.most_common()),
                    "by_source": {s: dict(c.most_common()) for s, c in sorted(by_source_reason.items())}},
        "accounting": {s: {k: a[k] for k in ("read", "written", "rejected", "reconciles")}
                       for s, a in m.get("accounting", {}).items()},
        "mixing": m.get("mixing", {}),
    }
    stats["losses"] = losses(folder)
    stats["filtering"] = filtering(m, stats["losses"]["steps"])
    stats["checks"] = _checks(m, stats)
    return stats, lens


def losses(folder: BuildFolder) -> dict:
    """Dialog turns dropped to fit max_chat_tokens, and step counts (voice, noise, ...) per source."""
    acc = folder.manifest.get("accounting") or {}
    dropped = {src: int(a.get("dropped_turns") or 0) for src, a in sorted(acc.items()) if isinstance(a, dict)}
    steps: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    missing = 0
    units = [u for u in folder.manifest.get("units") or [] if isinstance(u, dict)]
    for u in units:
        done = read_done(folder.path, f"{u.get('source')}/{u.get('unit_id')}")
        if done is None:
            missing += 1
            continue
        for step, counts in (done.get("steps") or {}).items():
            for k, v in (counts or {}).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    steps[u["source"]][step][k] += v
    return {"dropped_turns": dropped, "dropped_turns_total": sum(dropped.values()),
            "steps": {src: {st: dict(sorted(c.items())) for st, c in sorted(d.items())}
                      for src, d in sorted(steps.items())},
            "units": len(units), "units_without_record": missing}


def loss_lines(st: dict) -> list[str]:
    """The losses as terminal lines (what ``aromni stats`` and the build summary print)."""
    lo = st.get("losses") or {}
    out = []
    dropped = {s: n for s, n in (lo.get("dropped_turns") or {}).items() if n}
    out.append("dialog turns dropped to fit max_chat_tokens: " +
               (", ".join(f"{s} {n:,}" for s, n in dropped.items()) if dropped else "none"))
    for src, steps in (lo.get("steps") or {}).items():
        for step, counts in steps.items():
            if is_filter(step):  # shown by filter_lines, without its histogram counters
                continue
            out.append(f"step {step} ({src}): " + ", ".join(f"{k} {round(v, 1) if isinstance(v, float) else v:,}"
                                                           for k, v in counts.items()))
    out += filter_lines(st.get("filtering") or {})
    if lo.get("units_without_record"):
        out.append(f"step counts: {lo['units_without_record']} of {lo['units']} unit(s) have no parts/*.done.json "
                   f"here (parts/ removed or not copied): their step counts are not shown")
    return out


def _checks(m: dict, st: dict) -> list[str]:
    """Where what the shards hold disagrees with what the manifest says."""
    out = []
    if m.get("rows") is not None and m["rows"] != st["rows"]:
        out.append(f"shards hold {st['rows']} rows, manifest says {m['rows']}")
    if m.get("tokens") is not None and m["tokens"] != st["tokens"]:
        out.append(f"shards hold {st['tokens']} tokens, manifest says {m['tokens']}")
    for key in ("task", "group", "source"):
        want = (m.get("totals") or {}).get(key)
        got = st[f"by_{key}"]
        if want is not None and {k: (v["rows"], v["tokens"]) for k, v in want.items()} != \
                {k: (v["rows"], v["tokens"]) for k, v in got.items()}:
            out.append(f"rows/tokens by {key} differ from the manifest's totals")
    seg_tokens = sum(d["tokens"] for d in st["by_modality"].values())
    if seg_tokens != st["tokens"]:
        out.append(f"segments cover {seg_tokens} tokens of {st['tokens']} (run `aromni validate`)")
    acc = Counter()
    for a in m.get("accounting", {}).values():
        acc.update(a.get("rejected", {}))
    if dict(acc) != st["rejects"]["by_reason"]:
        out.append(f"rejects/*.parquet hold {st['rejects']['total']} rejects, accounting says {sum(acc.values())}")
    for s, a in st["accounting"].items():
        if not a.get("reconciles", True):
            out.append(f"accounting for {s} does not reconcile: read {a['read']} != written + rejected")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Plots (matplotlib's object API on the Agg canvas: no global pyplot state, no display needed)
# ---------------------------------------------------------------------------------------------------------------
def _figure(w: float, h: float, title: str, stand_in: bool):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110, layout="constrained")
    fig.suptitle(title + ("\nSTAND-IN tokenizers: not the released Chameleon/WavTokenizer codes" if stand_in else ""),
                 fontsize=12, color="black")
    return fig


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})  # no version stamp: same build, same bytes
    return path


def plot_lengths(lens: dict[str, np.ndarray], st: dict, path: Path, max_tokens: int | None) -> Path:
    tasks = list(lens) or ["(no rows)"]
    cols = min(3, len(tasks))
    nrows = -(-len(tasks) // cols)
    title = f"{st['name']}: row length (tokens) per task"
    if max_tokens:
        title += f" (the recipe rejects rows over {max_tokens})"
    fig = _figure(max(4.2 * cols, 9), 2.9 * nrows + 1.1, title, st["stand_in"])
    axes = np.atleast_1d(fig.subplots(nrows, cols, squeeze=False)).ravel()
    for ax, task in zip(axes, tasks):
        x = lens.get(task, np.zeros(0))
        if len(x):
            lo, hi = int(x.min()), int(x.max())
            bins = np.linspace(lo - 0.5, hi + 0.5, min(40, hi - lo + 2))
            ax.hist(x, bins=bins, color="#4C72B0", edgecolor="white", linewidth=0.5)
            p50, p95 = np.percentile(x, [50, 95], method="nearest")
            ax.axvline(p50, color="black", linestyle="--", linewidth=1, label=f"median {int(p50)}")
            ax.axvline(p95, color="#C44E52", linestyle=":", linewidth=1.5, label=f"p95 {int(p95)}")
            ax.set_ylim(0, ax.get_ylim()[1] * 1.35)  # headroom: the legend sits above the bars
            ax.legend(fontsize=8, loc="upper right", framealpha=0.9, edgecolor="none")
        ax.set_title(f"{task}  ({len(x)} rows)", fontsize=10)
        ax.set_xlabel("tokens per row", fontsize=9)
        ax.set_ylabel("rows", fontsize=9)
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.tick_params(labelsize=8)
    for ax in axes[len(tasks):]:
        ax.set_visible(False)
    return _save(fig, path)


def plot_modalities(st: dict, path: Path) -> Path:
    mods = [m for m in ("text", "image", "speech") if m in st["by_modality"]]
    tasks = list(st["by_task"])
    fig = _figure(12, 0.45 * max(len(tasks), 3) + 2.6, f"{st['name']}: tokens per modality", st["stand_in"])
    left, right = fig.subplots(1, 2, width_ratios=[1, 1.5])
    # left: absolute totals, split user / assistant (who reads vs who the model learns to produce)
    y = np.arange(len(mods))
    users = [st["by_modality"][m]["user"] for m in mods]
    assistants = [st["by_modality"][m]["assistant"] for m in mods]
    left.barh(y, users, color=[MODALITY_COLORS[m] for m in mods], alpha=0.45, label="user (input)")
    left.barh(y, assistants, left=users, color=[MODALITY_COLORS[m] for m in mods], label="assistant (output)")
    total = max(st["tokens"], 1)
    for i, m in enumerate(mods):
        k = st["by_modality"][m]["tokens"]
        left.text(k, i, f" {k:,} ({100 * k / total:.0f}%)", va="center", fontsize=9)
    left.set_yticks(y, mods)
    left.set_xlim(0, max([st["by_modality"][m]["tokens"] for m in mods] + [1]) * 1.45)
    left.set_xlabel("tokens (light: user input, dark: assistant output)")
    left.set_title("all rows", fontsize=10)
    # right: each task's tokens as 100% stacked shares (image spans dwarf text in absolute numbers)
    yt = np.arange(len(tasks))
    acc = np.zeros(len(tasks))
    task_tokens = np.array([max(st["by_task"][t]["tokens"], 1) for t in tasks], dtype=float)
    for m in mods:
        share = np.array([st["by_modality"][m]["by_task"].get(t, 0) for t in tasks]) / task_tokens * 100
        right.barh(yt, share, left=acc, color=MODALITY_COLORS[m], label=m)
        for i, s in enumerate(share):
            if s >= 8:
                right.text(acc[i] + s / 2, i, f"{s:.0f}%", ha="center", va="center", fontsize=8, color="white")
        acc += share
    right.set_yticks(yt, [f"{t} ({st['by_task'][t]['tokens']:,})" for t in tasks], fontsize=9)
    right.set_xlim(0, 100)
    right.invert_yaxis()
    right.set_xlabel("% of the task's tokens")
    right.set_title("share per task (total tokens in brackets)", fontsize=10)
    right.legend(loc="lower center", bbox_to_anchor=(0.5, 1.06), ncol=3, frameon=False, fontsize=9)
    return _save(fig, path)


def plot_mixing(st: dict, path: Path) -> Path:
    groups = st["mixing"].get("groups", {})
    names = list(groups)
    fig = _figure(8, 0.7 * max(len(names), 2) + 2.2,
                  f"{st['name']}: mixing ({st['mixing'].get('stop', '?')}, seed {st['mixing'].get('seed', '?')})",
                  st["stand_in"])
    ax = fig.subplots()
    y = np.arange(len(names))
    avail = [groups[g]["available"] for g in names]
    used = [groups[g]["used"] for g in names]
    unique = [groups[g].get("unique_used", groups[g]["used"]) for g in names]
    ax.barh(y - 0.2, avail, height=0.38, color="#BBBBBB", label="available (rows built)")
    ax.barh(y + 0.2, unique, height=0.38, color="#4C72B0", label="used")
    rep = [u - q for u, q in zip(used, unique)]
    if any(rep):
        ax.barh(y + 0.2, rep, left=unique, height=0.38, color="#C44E52", label="used again (repeated)")
    for i, g in enumerate(names):
        ax.text(avail[i], i - 0.2, f" {avail[i]:,}", va="center", fontsize=9)
        pct = f" ({100 * unique[i] / avail[i]:.0f}% of available)" if avail[i] else ""
        ax.text(used[i], i + 0.2, f" {used[i]:,}{pct}", va="center", fontsize=9)
    ax.set_yticks(y, [f"{g}\nratio {groups[g].get('ratio', '?')}" for g in names])
    ax.invert_yaxis()
    ax.set_xlim(0, max(avail + used + [1]) * 1.45)
    ax.set_xlabel("rows")
    ax.legend(loc="lower right", fontsize=9, frameon=False)
    return _save(fig, path)


def plot_rejects(st: dict, path: Path) -> Path:
    by_src = st["rejects"]["by_source"]
    reasons = list(st["rejects"]["by_reason"])
    fig = _figure(8, 0.5 * max(len(reasons), 2) + 2.2,
                  f"{st['name']}: rejects by reason ({st['rejects']['total']} of "
                  f"{sum(a['read'] for a in st['accounting'].values()):,} read)", st["stand_in"])
    ax = fig.subplots()
    if not reasons:
        ax.text(0.5, 0.5, "no rejects", ha="center", va="center", fontsize=14, transform=ax.transAxes)
        ax.set_axis_off()
        return _save(fig, path)
    y = np.arange(len(reasons))
    acc = np.zeros(len(reasons))
    palette = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]
    for k, (src, counts) in enumerate(by_src.items()):
        v = np.array([counts.get(r, 0) for r in reasons])
        ax.barh(y, v, left=acc, color=palette[k % len(palette)], label=src)
        acc += v
    for i, n in enumerate(acc):
        ax.text(n, i, f" {int(n):,}", va="center", fontsize=9)
    ax.set_yticks(y, reasons)
    ax.invert_yaxis()
    ax.set_xlim(0, acc.max() * 1.2)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("rejected examples")
    ax.legend(title="source", fontsize=9, frameon=False, loc="lower right")
    return _save(fig, path)


def write_plots(folder: BuildFolder, st: dict, lens: dict[str, np.ndarray]) -> list[Path]:
    d = folder.path / PLOTS_DIR
    max_tokens = (folder.recipe.get("filters") or {}).get("max_tokens")
    lengths, modalities, mixing, rejects = (d / n for n in PLOT_FILES)
    return [plot_lengths(lens, st, lengths, max_tokens), plot_modalities(st, modalities), plot_mixing(st, mixing),
            plot_rejects(st, rejects)] + [plot_filter_hist(st, step, q, d / name)
                                          for step, q, name in plot_files(st.get("filtering") or {})]


def plot_filter_hist(st: dict, step: str, quantity: str, path: Path) -> Path:
    """A filter's measured quantity over its fixed bins, with the recipe's threshold(s) drawn."""
    e = st["filtering"][step]
    hist = e["hist"][quantity]
    starts = np.array([float(b) for b in hist])
    counts = np.array(list(hist.values()))
    width = float(np.min(np.diff(starts))) if len(starts) > 1 else 1.0
    rejected = sum(e["rejected"].values())
    fig = _figure(8, 4, f"{st['name']}: {step} — {quantity} ({int(counts.sum()):,} measured, "
                        f"{rejected:,} rejected by {step})", st["stand_in"])
    ax = fig.subplots()
    ax.bar(starts, counts, width=width * 0.9, align="edge", color="#4C72B0")
    for t in e["thresholds"].get(quantity, []):
        ax.axvline(t, color="#C44E52", linestyle="--", linewidth=2)
        ax.text(t, counts.max() * 1.02, f" threshold {t:g}", color="#C44E52", fontsize=9)
    ax.set_xlabel(quantity)
    ax.set_ylabel("examples")
    ax.set_ylim(0, counts.max() * 1.15 + 1)
    return _save(fig, path)


def stats(path: str | Path, plots: bool = True) -> dict:
    """Compute the statistics of a build folder and (by default) write its plots; returns the stats dict."""
    folder = BuildFolder(path)
    st, lens = compute(folder)
    st["plots"] = [str(p.relative_to(folder.path)) for p in write_plots(folder, st, lens)] if plots else []
    return st
