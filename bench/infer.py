"""What does aromni's decode loop cost over transformers' ``generate``, and how fast does TTS speak?

    .venv/bin/python bench/infer.py [--shape small] [--new 200] [--repeats 3] [--device cpu] [--threads 1]
    .venv/bin/python bench/infer.py --shape 7b --device cuda --dtype bfloat16      # on a GPU

Prints, for one random Chameleon of the chosen shape (same weights for both loops):
1. tokens/s of transformers' ``generate`` (greedy, repetition penalty 1.2, KV cache) and of aromni's loop
   (greedy, repetition penalty 1.2, the FSM's allowed-id mask every step, KV cache), same prompt, same number of new
   ids (stop ids disabled in both), and the overhead ratio ours/theirs (goal <= 1.1); plus the floor, a bare loop of
   the same forwards with a plain argmax, to show what each loop adds;
2. TTS through ``Omni.tts_stream``: first-token latency (request -> first id), first-audio latency (-> first
   chunk), real-time factor (wall time to the last chunk / seconds of audio; < 1 is faster than real time), with
   the stand-in speech decoder unless --speech-tokenizer names a real one;
3. the same for ``Omni.tts`` without streaming;
4. batched generation: --batch TTS prompts through ``Omni.batch`` (one lockstep decode) vs one ``Omni.tts`` each,
   prompts/s both ways and the ratio (the replies are checked to be the same).
The model is random (it never says <eoa>), so speech length is fixed by --new. Shapes: tiny (hidden 64, 2 layers),
small (256, 4), mid (1024, 8), 7b (4096, 32 layers, 32 heads, MLP 11008: Chameleon-7B's decoder). Times depend on
the machine and its load: the ratio in (1) is the point; run it twice to see the noise.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# bench/ holds a tokenizers.py that would shadow the tokenizers package: keep this folder off sys.path
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHAPES = {"tiny": dict(hidden=64, layers=2, heads=4), "small": dict(hidden=256, layers=4, heads=4),
          "mid": dict(hidden=1024, layers=8, heads=8), "7b": dict(hidden=4096, layers=32, heads=32)}


def make_model(shape: str, dtype, device):
    """A random Chameleon of the shape, built in memory (a 7B-shaped one is never written to disk)."""
    import torch
    from transformers import ChameleonForConditionalGeneration

    from aromni.model.chameleon import tiny_chameleon_config
    cfg = tiny_chameleon_config(**SHAPES[shape])
    if shape == "7b":
        cfg.intermediate_size = 11008
    torch.manual_seed(0)
    with torch.device(device):
        model = ChameleonForConditionalGeneration(cfg).to(dtype)
    return model.eval()


def bpe(tmp: Path):
    from aromni.model.text import load_text_tokenizer, write_chameleon_style_bpe
    texts = ["Convert this text into speech. This is input: USER: GPT: the quick brown fox jumps over the lazy dog"]
    return load_text_tokenizer(write_chameleon_style_bpe(texts * 4, tmp / "tokenizer.json", vocab_size=200))


def sync(device):
    import torch
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def hf_generate(model, prompt, n, device):
    import torch
    ids = torch.tensor([prompt], device=device)
    sync(device)
    t = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, repetition_penalty=1.2, eos_token_id=None, pad_token_id=1)
    sync(device)
    dt = time.perf_counter() - t
    assert out.shape[1] - len(prompt) == n, out.shape
    return dt


def our_generate(lm, prompt, n, device):
    from aromni.infer.generate import Options, Session
    from aromni.infer.state import Constraints, Sampling
    s = Session(lm)
    s.extend(prompt)
    sync(device)
    t = time.perf_counter()
    got = sum(1 for _ in s.generate(Constraints(stop_ids=(), greedy=True),
                                    Options(max_new_tokens=n, text=Sampling(repetition_penalty=1.2))))
    sync(device)
    dt = time.perf_counter() - t
    assert got == n, got
    return dt


def bare_loop(lm, prompt, n, device):
    """The floor: the same forwards with the KV cache and a plain argmax, nothing else."""
    import torch
    cache = lm.new_cache()
    sync(device)
    t = time.perf_counter()
    logits = lm.forward(torch.tensor([prompt]), cache)
    for _ in range(n - 1):
        logits = lm.forward(logits.argmax(-1, keepdim=True), cache)
    sync(device)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="small")
    ap.add_argument("--new", type=int, default=200, help="new ids per run (= TTS codes; 40 per second of audio)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default on CPU: 1; on a busy "
                    "2-core machine 2 threads spin against each other and timings vary 5x)")
    ap.add_argument("--speech-tokenizer", default=None, help="KIND[:PATH] for TTS decoding (default: stand-in)")
    ap.add_argument("--batch", type=int, default=8, help="prompts in the batched-generation line")
    args = ap.parse_args()

    import torch

    from aromni.infer.lm import ChameleonLM
    from aromni.infer.tasks import Omni
    from aromni.model import IMAGE_LOADERS, SPEECH_LOADERS, Tokenizers
    from aromni.layout import AR_OMNI_V0_1 as L

    if args.threads or args.device == "cpu":
        torch.set_num_threads(args.threads or 1)
    dtype = getattr(torch, args.dtype)
    model = make_model(args.shape, dtype, args.device)
    n_params = sum(p.numel() for p in model.model.layers.parameters()) / 1e6
    lm = ChameleonLM(model)
    print(f"model: random Chameleon '{args.shape}' {SHAPES[args.shape]}, {n_params:.1f} M decoder-layer params, "
          f"{args.dtype} on {args.device}" + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda")
                                               else f", {torch.get_num_threads()} threads"))
    prompt = [L.bos] + list(range(16400, 16430)) + [L.eoh, 16431]

    # 1. loop overhead: interleaved, median of repeats, after one warm-up of each
    hf_generate(model, prompt, 8, args.device)
    our_generate(lm, prompt, 8, args.device)
    hf, ours, bare = [], [], []
    for _ in range(args.repeats):
        hf.append(hf_generate(model, prompt, args.new, args.device))
        ours.append(our_generate(lm, prompt, args.new, args.device))
        bare.append(bare_loop(lm, prompt, args.new, args.device))
    t_hf, t_ours, t_bare = statistics.median(hf), statistics.median(ours), statistics.median(bare)
    print(f"transformers generate: {args.new / t_hf:8.1f} ids/s  (median of {args.repeats}: "
          f"{', '.join(f'{x:.2f}' for x in hf)} s)")
    print(f"aromni decode loop:    {args.new / t_ours:8.1f} ids/s  (median of {args.repeats}: "
          f"{', '.join(f'{x:.2f}' for x in ours)} s)")
    print(f"bare forward + argmax: {args.new / t_bare:8.1f} ids/s  (median of {args.repeats}: "
          f"{', '.join(f'{x:.2f}' for x in bare)} s)")
    print(f"overhead ratio ours/transformers: {t_ours / t_hf:.3f}  (goal <= 1.1); "
          f"ours/bare forwards: {t_ours / t_bare:.3f}, transformers/bare: {t_hf / t_bare:.3f}")

    # 2./3. TTS latency and real-time factor
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = bpe(Path(tmp))
        if args.speech_tokenizer:
            kind, _, path = args.speech_tokenizer.partition(":")
            speech = SPEECH_LOADERS[kind](path, L, False)
        else:
            speech = SPEECH_LOADERS["standin"](None, L, True)
        omni = Omni(lm, Tokenizers(text, IMAGE_LOADERS["standin"](None, L, True), speech))
        omni.tts("warm up", max_new_tokens=8)
        runs = []
        for _ in range(args.repeats):
            st = omni.tts_stream("the quick brown fox jumps over the lazy dog", max_new_tokens=args.new)
            chunks = sum(1 for _ in st)
            runs.append((st.metrics, chunks))
        m = sorted(runs, key=lambda r: r[0].rtf)[len(runs) // 2][0]
        chunks = runs[0][1]
        print(f"TTS streamed ({m.audio_s:.2f} s of audio, {chunks} chunks, "
              f"{'stand-in' if not args.speech_tokenizer else args.speech_tokenizer} vocoder): "
              f"FTL {m.first_token_s * 1000:.1f} ms (first speech code {m.first_speech_token_s * 1000:.1f} ms), "
              f"first audio {m.first_audio_s * 1000:.1f} ms, RTF {m.rtf:.3f}")
        r = omni.tts("the quick brown fox jumps over the lazy dog", max_new_tokens=args.new).metrics
        print(f"TTS not streamed: FTL {r['first_token_s'] * 1000:.1f} ms (first speech code "
              f"{r['first_speech_token_s'] * 1000:.1f} ms), audio after {r['total_s'] * 1000:.0f} ms, RTF {r['rtf']:.3f}")
        if args.shape == "7b":
            print("goals (7B, GPU): RTF <= 0.3, FTL <= 50 ms; paper: RTF 0.88, FTL 146 ms")

        # 4. batched generation: the same prompts in one batch vs one by one (same replies, greedy tts)
        texts = [f"sentence number {i} of the quick brown fox" for i in range(args.batch)]
        n_new = min(args.new, 100)
        omni.batch("tts", texts[:2], max_new_tokens=4)          # warm-up
        t = time.perf_counter()
        one = [omni.tts(x, max_new_tokens=n_new).ids for x in texts]
        t_one = time.perf_counter() - t
        t = time.perf_counter()
        batched = [r.ids for r in omni.batch("tts", texts, max_new_tokens=n_new)]
        t_batch = time.perf_counter() - t
        same = "same replies" if batched == one else "REPLIES DIFFER"
        print(f"batched TTS ({args.batch} prompts x {n_new} ids, {same}): {args.batch / t_batch:.2f} prompts/s "
              f"batched vs {args.batch / t_one:.2f} one by one, ratio {t_one / t_batch:.2f}x")


if __name__ == "__main__":
    main()
