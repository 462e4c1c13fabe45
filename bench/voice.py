"""Voice synthesis cost: real-time factor of each backend available here, and the cache hit rate on a rerun.

    .venv/bin/python bench/voice.py [--replies 12] [--backends espeak,cosyvoice2] [--model-dir DIR --reference WAV]

For each backend: speaks ``--replies`` assistant replies (Harvard sentences, some repeated, as real dialog data repeats
short replies) through ``Synthesizer`` with an empty cache, then again over the same cache (a rerun / a second
recipe). Prints per backend: seconds of audio, synthesis seconds, RTF = synthesis time / audio time (< 1: faster than
real time), first-run hit rate (repeats within the run), rerun hit rate (should be 100 %) and rerun time, and the
ratio first run / rerun. ``cosyvoice2`` needs the aromni[cosyvoice] extra; without ``--model-dir`` it uses the tiny
RANDOM stand-in model (aromni.voice.tiny_cosyvoice2: the published layout, shrunk sizes), so its RTF measures the code
path and the fixed costs (LLM steps, 10 flow-matching steps with CFG, HiFT), NOT CosyVoice2-0.5B's speed.
Timings depend on the machine and its load; the ratios are the point.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# bench/ itself is not an import root: bench/tokenizers.py would shadow the `tokenizers` package
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def replies(n: int) -> list[str]:
    from aromni.voice.harvard import HARVARD
    unique = HARVARD[: max(1, (3 * n) // 4)]
    return [unique[i % len(unique)] for i in range(n)]  # about a quarter are repeats


def run(synth_factory, texts: list[str]) -> dict:
    from aromni.voice import VoiceCache
    with tempfile.TemporaryDirectory() as cache_dir:
        out = {}
        for label in ("first", "rerun"):
            s = synth_factory(VoiceCache(cache_dir))
            t0 = time.perf_counter()
            audio = 0.0
            for t in texts:
                w, sr, _ = s.speak(t)
                audio += len(w) / sr
            out[label] = {"seconds": time.perf_counter() - t0, "audio": audio, "hits": s.cache.hits,
                          "calls": len(texts), "synth_audio": s.synthesised_seconds}
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replies", type=int, default=12)
    ap.add_argument("--backends", default="espeak,cosyvoice2")
    ap.add_argument("--model-dir", help="a real CosyVoice2 model dir (default: the tiny random stand-in)")
    ap.add_argument("--reference", help="reference clip for cosyvoice2 (default: espeak-ng speaking the prompt)")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from aromni.voice import Synthesizer
    from aromni.voice.espeak import EspeakBackend

    texts = replies(args.replies)
    results: dict[str, dict] = {}
    tmp = Path(tempfile.mkdtemp(prefix="aromni-bench-voice-"))
    for name in args.backends.split(","):
        if name == "espeak":
            backend = EspeakBackend()
        elif name == "cosyvoice2":
            try:
                import cosyvoice  # noqa: F401
            except ImportError:
                print("cosyvoice2: skipped (pip install 'aromni[cosyvoice]')")
                continue
            import soundfile as sf

            from aromni.voice.cosyvoice2 import AR_OMNI_PROMPT, CosyVoice2Backend
            from aromni.voice.espeak import espeak_speak
            model_dir = args.model_dir
            if model_dir is None:
                from aromni.voice.tiny_cosyvoice2 import write_tiny_cosyvoice2
                model_dir = str(write_tiny_cosyvoice2(tmp / "CosyVoice2-tiny"))
            reference = args.reference
            if reference is None:
                x, sr = espeak_speak(AR_OMNI_PROMPT)
                reference = str(tmp / "reference.wav")
                sf.write(reference, x, sr)
            backend = CosyVoice2Backend({"model_dir": model_dir, "reference_audio": reference})
            t0 = time.perf_counter()
            backend._load()  # load once, outside the timed synthesis (a pool actor loads once too)
            print(f"cosyvoice2: model loaded in {time.perf_counter() - t0:.1f} s"
                  f"{' (tiny RANDOM stand-in)' if backend.stand_in else ''}")
        else:
            print(f"{name}: unknown backend, skipped")
            continue
        results[name] = run(lambda cache, b=backend: Synthesizer(b, cache), texts)

    table = Table(title=f"voice synthesis, {len(texts)} replies ({len(set(texts))} distinct)")
    for col in ("backend", "audio s", "synth s", "RTF", "hit rate 1st", "hit rate rerun", "rerun s", "1st/rerun"):
        table.add_column(col, justify="right")
    for name, r in results.items():
        f, s = r["first"], r["rerun"]
        rtf = f["seconds"] / f["synth_audio"] if f["synth_audio"] else float("nan")
        table.add_row(name, f"{f['audio']:.1f}", f"{f['seconds']:.2f}", f"{rtf:.3f}",
                      f"{f['hits'] / f['calls']:.0%}", f"{s['hits'] / s['calls']:.0%}", f"{s['seconds']:.3f}",
                      f"{f['seconds'] / max(s['seconds'], 1e-9):.0f}x")
    Console(width=130).print(table)


if __name__ == "__main__":
    main()
