"""What the quality filters did to a build (issue 16): per filter step, its counts per source (checked, kept,
``rejected.<reason>``, ``skipped.<why>``, ``hits.<set>``, ``lang.<code>``), the histogram of each quantity it measured
(``hist.<quantity>.<bin start>`` counters) and the recipe's threshold for it — for ``aromni stats`` (one plot per
measured quantity, threshold drawn) and the dataset card's "Filtering" section.

Counts come from the manifest's ``accounting[<source>].steps`` (the units' step stats summed per source); a build
made before the manifest carried them falls back to the units' ``parts/*.done.json`` (``stats.losses``).
"""
from __future__ import annotations

from collections import Counter

from aromni.pipeline.steps import STEPS
from aromni.pipeline.steps.filters.base import FilterStep

# quantity measured by a filter -> the option that holds its threshold (a [lo, hi] range draws two lines)
THRESHOLD_OPTIONS = {
    "audio_quality": {"clipping": "max_clipping", "speech_fraction": "min_speech_fraction", "snr_db": "min_snr_db",
                      "rate": "rate_range"},
    "language": {"keep_confidence": "min_confidence"},
    "clip_score": {"clip_score": "min_score"},
}


def is_filter(step: str) -> bool:
    return step in STEPS and issubclass(STEPS[step], FilterStep)


def _step_counts(manifest: dict, fallback: dict) -> dict[str, dict[str, dict]]:
    """{source: {step: counts}} from the manifest's accounting, else from the units' done records."""
    acc = manifest.get("accounting") or {}
    if any(isinstance(a, dict) and "steps" in a for a in acc.values()):
        return {src: a.get("steps") or {} for src, a in sorted(acc.items()) if isinstance(a, dict)}
    return fallback or {}


def _thresholds(manifest: dict, step: str) -> dict[str, list[float]]:
    """The recipe's threshold per measured quantity (the options as the recipe gave them, defaults filled in)."""
    for st in (manifest.get("recipe") or {}).get("steps") or []:
        if st.get("name") == step and step in STEPS:
            try:
                opts = STEPS[step].Options(**(st.get("options") or {}))
            except Exception:  # noqa: BLE001 - a manifest of another version: draw no threshold rather than fail
                return {}
            out = {}
            for q, key in THRESHOLD_OPTIONS.get(step, {}).items():
                v = getattr(opts, key, None)
                if v is not None:
                    out[q] = [float(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
            return out
    return {}


def filtering(manifest: dict, step_counts_by_source: dict | None = None) -> dict:
    """``{step: {"sources": {src: counts without hist.*}, "total": {...}, "rejected": {reason: n},
    "hist": {quantity: {bin start: n}}, "thresholds": {quantity: [values]}}}`` for every filter step that ran."""
    out: dict = {}
    for src, steps in _step_counts(manifest, step_counts_by_source or {}).items():
        for step, counts in steps.items():
            if not is_filter(step):
                continue
            e = out.setdefault(step, {"sources": {}, "total": Counter(), "hist": {}})
            plain = {k: v for k, v in counts.items() if not k.startswith("hist.")}
            e["sources"][src] = dict(sorted(plain.items()))
            e["total"].update(plain)
            for k, v in counts.items():
                if k.startswith("hist."):
                    q, b = k[len("hist."):].split(".", 1)
                    h = e["hist"].setdefault(q, Counter())
                    h[float(b)] += v
    for step, e in out.items():
        e["total"] = dict(sorted(e["total"].items()))
        e["rejected"] = {k[len("rejected."):]: v for k, v in e["total"].items() if k.startswith("rejected.")}
        e["hist"] = {q: {f"{b:g}": n for b, n in sorted(h.items())} for q, h in sorted(e["hist"].items())}
        e["thresholds"] = _thresholds(manifest, step)
    return dict(sorted(out.items()))


def filter_lines(flt: dict) -> list[str]:
    """One terminal line per filter step and source."""
    lines = []
    for step, e in flt.items():
        for src, c in e["sources"].items():
            lines.append(f"filter {step} ({src}): " + ", ".join(f"{k} {v:,}" for k, v in c.items()))
    return lines


def plot_files(flt: dict) -> list[tuple[str, str, str]]:
    """(step, quantity, file name) of each histogram plot."""
    return [(step, q, f"filter_{step}_{q}.png") for step, e in flt.items() for q in e["hist"]]


WHAT = {
    "language": "language identification (lingua): keeps the `keep` languages above `min_confidence`",
    "audio_quality": "audio quality: clipping, speech activity (silero-vad), WADA-SNR, speech rate",
    "decontaminate": "evaluation decontamination: word n-gram / full-text overlap and image pHash match against the "
                     "evaluation sets",
    "clip_score": "image-caption CLIP score",
}


def card_section(flt: dict, recipe: dict) -> list[str]:
    """The dataset card's "Filtering" section (markdown lines): each filter step the recipe applied, with its options,
    and per source how many it checked, kept and rejected per reason."""
    steps = [s for s in (recipe.get("steps") or []) if is_filter(s.get("name", ""))]
    L = ["## Filtering", ""]
    if not steps:
        return L + ["No quality filter step was applied (see docs/quality.md for the recipe's `steps`).", ""]
    L += ["Quality filter steps, in the order they ran (docs/quality.md); each rejected example is a reject row under "
          "the filter's reason.", ""]
    for s in steps:
        name, opts = s["name"], s.get("options") or {}
        shown = ", ".join(f"`{k}: {v}`" for k, v in opts.items() if k != "sets")
        sets = ", ".join(f"{x.get('kind')} `{x.get('path')}`" for x in opts.get("sets") or [])
        L.append(f"- **{name}** — {WHAT.get(name, name)}" + (f"; {shown}" if shown else "")
                 + (f"; evaluation sets: {sets}" if sets else ""))
    L.append("")
    rows = []
    for step, e in flt.items():
        for src, c in e["sources"].items():
            rej = ", ".join(f"{k[len('rejected.'):]} {v:,}" for k, v in c.items() if k.startswith("rejected.")) or "-"
            rows.append([step, src, f"{c.get('checked', 0):,}", f"{c.get('kept', 0):,}", rej])
        rows.append([f"**{step}**", "all", f"{e['total'].get('checked', 0):,}", f"{e['total'].get('kept', 0):,}",
                     ", ".join(f"{r} {n:,}" for r, n in e["rejected"].items()) or "-"])
    head = ["step", "source", "checked", "kept", "rejected (reason count)"]
    L += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
    return L + [""]
