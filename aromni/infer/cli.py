"""``aromni infer``: every task from the command line. Registered into ``aromni.cli`` by ``register(app)``."""
from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

TASK_HELP = ("tts: --text -> speech (--out x.wav) | asr: --audio -> text | caption: --image -> text | "
             "t2i: --text -> image (--out x.png) | chat: --messages chat.json -> replies in --out DIR")


def _fail(msg: str, code: int = 2):
    from aromni.cli import console
    console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _fmt_metrics(m: dict) -> str:
    def ms(k):
        return f"{m[k] * 1000:.1f} ms" if m.get(k) is not None else "-"
    bits = [f"FTL {ms('first_token_s')}"]
    if m.get("first_speech_token_s") is not None:
        bits.append(f"first speech code {ms('first_speech_token_s')}")
    if m.get("first_audio_s") is not None:
        bits.append(f"first audio {ms('first_audio_s')}")
    if m.get("rtf") is not None:
        bits.append(f"RTF {m['rtf']:.3f} ({m.get('audio_s', 0):.2f} s of audio)")
    if m.get("new_tokens") is not None:
        bits.append(f"{m['new_tokens']} new ids")
    if m.get("tokens_per_s"):
        bits.append(f"{m['tokens_per_s']:.1f} ids/s")
    return " · ".join(bits)


def write_wav(path: Path, wave, sr: int, info: dict) -> None:
    import soundfile as sf
    path.parent.mkdir(parents=True, exist_ok=True)
    with sf.SoundFile(str(path), "w", samplerate=sr, channels=1, subtype="FLOAT") as f:
        f.comment = json.dumps({"stand_in": info.get("stand_in", False)})
        f.write(wave)


def write_png(path: Path, img, info: dict) -> None:
    from PIL.PngImagePlugin import PngInfo
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = PngInfo()
    meta.add_text("aromni", json.dumps({"stand_in": info.get("stand_in", False)}))
    img.save(str(path), pnginfo=meta)


def write_sidecar(path: Path, reply, extra: dict | None = None) -> Path:
    """<out>.json beside every output: the ids, the text, timings and which tokenizers (stand-in or not) made it."""
    side = path.with_name(path.name + ".json")
    side.parent.mkdir(parents=True, exist_ok=True)
    side.write_text(json.dumps({**reply.summary(), "ids": reply.ids, **(extra or {})}, indent=1, default=str))
    return side


def save_reply(reply, out: Path, stem: str) -> list[Path]:
    """Every image as <stem>_image<i>.png, every speech span as <stem>_speech<i>.wav, the text as <stem>.txt."""
    paths = []
    info = reply.provenance
    for i, img in enumerate(reply.images):
        paths.append(out / f"{stem}_image{i}.png")
        write_png(paths[-1], img, info)
    for i, wave in enumerate(reply.speech):
        paths.append(out / f"{stem}_speech{i}.wav")
        write_wav(paths[-1], wave, reply.sample_rate, info)
    (out / f"{stem}.txt").write_text(reply.text + "\n")
    paths.append(out / f"{stem}.txt")
    write_sidecar(out / stem, reply)
    return paths


def load_messages(path: Path) -> list[dict]:
    """A JSON list of messages ({"role": "user"|"assistant", "text", "image", "audio"}) or {"messages": [...]}.
    Relative media paths are resolved against the JSON file's folder."""
    data = json.loads(path.read_text())
    msgs = data.get("messages") if isinstance(data, dict) else data
    if not isinstance(msgs, list) or not msgs:
        raise ValueError(f"{path}: expected a non-empty JSON list of messages (or {{\"messages\": [...]}})")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise ValueError(f"{path}: message {i} is not an object")
        unknown = set(m) - {"role", "text", "image", "audio"}
        if unknown:
            raise ValueError(f"{path}: message {i} has unknown keys {sorted(unknown)} (role, text, image, audio)")
        for k in ("image", "audio"):
            if m.get(k):
                p = Path(m[k])
                m[k] = str(p if p.is_absolute() else path.parent / p)
                if not Path(m[k]).is_file():
                    raise ValueError(f"{path}: message {i}: {k} file not found: {m[k]}")
    return msgs


def run_chat(omni, messages: list[dict], out: Path, console, options=None) -> list:
    from aromni.infer.prompts import Message
    chat = omni.chat(options)
    replies = []
    for i, m in enumerate(messages):
        msg = Message(m.get("role", "user"), m.get("text"))
        nxt = messages[i + 1] if i + 1 < len(messages) else None
        if msg.role == "user" and (nxt is None or nxt.get("role", "user") == "user"):
            reply = chat.send(msg, image=m.get("image"), audio=m.get("audio"))
            replies.append(reply)
            saved = save_reply(reply, out, f"reply{len(replies)}")
            console.print(f"[bold]reply {len(replies)}[/]: {reply.text!r}  ({_fmt_metrics(reply.metrics)})",
                          highlight=False, soft_wrap=True)
            console.print("  " + "  ".join(str(p) for p in saved), highlight=False, soft_wrap=True)
        else:
            chat.add(msg, image=m.get("image"), audio=m.get("audio"))
    return replies


def register(app: typer.Typer) -> None:
    @app.command("infer")
    def infer(
        model: Path = typer.Option(..., "--model", "-m", help="an HF Chameleon/Anole/AR-Omni model dir "
                                                               "(config.json + safetensors)"),
        task: str = typer.Option(..., "--task", "-t", help=TASK_HELP),
        text: Optional[str] = typer.Option(None, "--text", help="tts: the text to speak; t2i: what to draw"),
        image: Optional[Path] = typer.Option(None, "--image", help="caption: the picture to describe"),
        audio: Optional[Path] = typer.Option(None, "--audio", help="asr: the speech to transcribe (wav/flac/...)"),
        messages: Optional[Path] = typer.Option(None, "--messages", help="chat: JSON list of {role, text, image, "
                                                "audio} messages (paths relative to the JSON; with audio, text is "
                                                "the instruction after the speech). See docs/inference.md"),
        instruction: Optional[str] = typer.Option(None, "--instruction", help="override the task template's "
                                                                               "default instruction"),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="tts: x.wav, t2i: x.png, chat: a folder; "
                                                                     "asr/caption: optional .txt"),
        stream: bool = typer.Option(False, "--stream", help="tts: write the WAV chunk by chunk while it is "
                                                            "generated"),
        max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="cap the reply length "
                                                     "(default per task: tts 2000, asr/caption 512, t2i 1027, "
                                                     "chat 2048)"),
        seed: int = typer.Option(0, "--seed", help="seed of the sampling generator (same seed, same reply)"),
        temperature: Optional[float] = typer.Option(None, "--temperature", help="text/speech temperature "
                                                                                "(default 1.2)"),
        top_p: Optional[float] = typer.Option(None, "--top-p", help="text/speech top-p (default 0.96)"),
        repetition_penalty: Optional[float] = typer.Option(None, "--repetition-penalty",
                                                           help="text/speech repetition penalty (default 1.2)"),
        image_temperature: Optional[float] = typer.Option(None, "--image-temperature", help="default 1.0"),
        g_txt: float = typer.Option(3.07, "--g-txt", help="image guidance: weight of the text condition"),
        g_img: float = typer.Option(1.15, "--g-img", help="image guidance: weight of the image condition "
                                                          "(upstream's t2i script uses 1.32)"),
        no_cfg: bool = typer.Option(False, "--no-cfg", help="decode images without classifier-free guidance"),
        text_tokenizer: Optional[Path] = typer.Option(None, "--text-tokenizer", help="tokenizer.json "
                                                      "(default: found in --model)"),
        image_tokenizer: Optional[str] = typer.Option(None, "--image-tokenizer", help="KIND[:PATH], e.g. "
                                                      "vqgan:/ckpt/tokenizer or standin (default: a VQGAN in --model, "
                                                      "else the stand-in)"),
        speech_tokenizer: Optional[str] = typer.Option(None, "--speech-tokenizer", help="KIND[:PATH], e.g. "
                                                       "wavtokenizer:/ckpt/wavtok or standin (default: found in "
                                                       "--model, else the stand-in)"),
        device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1 ..."),
        dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16"),
    ):
        """Talk to a model: text to speech, speech to text, image to caption, text to image, multi-turn chat.

        Prints the reply (text), where its outputs went, first-token latency (FTL), and for speech the real-time
        factor (RTF = wall time / seconds of audio). Every output gets a <out>.json beside it with the reply's ids,
        timings, and whether stand-in tokenizers made it. Examples:

          aromni infer -m runs/model -t tts --text "hello" -o hello.wav --stream

          aromni infer -m runs/model -t t2i --text "a red fox in snow" -o fox.png

          aromni infer -m runs/model -t chat --messages chat.json -o replies/
        """
        from aromni.cli import console, out_console
        from aromni.infer.cfg import Guidance
        from aromni.infer.state import IMAGE_SAMPLING, TEXT_SAMPLING, DecodeError
        from aromni.infer.tasks import TASKS, Omni
        from aromni.templates import TemplateError

        if task not in TASKS:
            _fail(f"unknown --task {task!r}; one of {', '.join(TASKS)}")
        need = {"tts": ("text", text), "t2i": ("text", text), "asr": ("audio", audio), "caption": ("image", image),
                "chat": ("messages", messages)}[task]
        if not need[1]:
            _fail(f"--task {task} needs --{need[0]}")
        if task in ("tts", "t2i", "chat") and out is None:
            _fail(f"--task {task} needs --out ({'a .wav file' if task == 'tts' else 'a .png file' if task == 't2i' else 'a folder'})")
        for p in (image, audio, messages):
            if p is not None and not p.is_file():
                _fail(f"file not found: {p}")
        if not (model / "config.json").is_file():
            _fail(f"{model} is not a model dir (no config.json)")
        try:
            text_s = replace(TEXT_SAMPLING, **{k: v for k, v in {"temperature": temperature, "top_p": top_p,
                             "repetition_penalty": repetition_penalty}.items() if v is not None})
            image_s = replace(IMAGE_SAMPLING, **({"temperature": image_temperature} if image_temperature else {}))
        except ValueError as e:
            _fail(str(e))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                omni = Omni.load(model, text_tokenizer=str(text_tokenizer) if text_tokenizer else None,
                                 image_tokenizer=image_tokenizer, speech_tokenizer=speech_tokenizer, dtype=dtype,
                                 device=device)
            except (OSError, ValueError) as e:
                _fail(f"cannot load {model}: {e}")
        for w in caught:
            if "STAND-IN" in str(w.message):
                console.print(f"[bold yellow]warning:[/] {w.message}", highlight=False, soft_wrap=True)
        base = omni.task_options("chat" if task == "chat" else task, None)
        opts = replace(base, text=text_s, speech=text_s, image=image_s, seed=seed,
                       guidance=Guidance(g_txt, g_img, enabled=not no_cfg),
                       max_new_tokens=max_new_tokens or base.max_new_tokens)
        try:
            if task == "chat":
                out.mkdir(parents=True, exist_ok=True)
                run_chat(omni, load_messages(messages), out, out_console, opts)
                return
            if task == "tts" and stream:
                reply = _stream_tts(omni, text, instruction, opts, out, console)
            else:
                fn = {"tts": lambda: omni.tts(text, instruction, opts), "t2i": lambda: omni.t2i(text, instruction, opts),
                      "asr": lambda: omni.asr(audio, instruction, opts),
                      "caption": lambda: omni.caption(image, instruction, opts)}[task]
                reply = fn()
        except (DecodeError, TemplateError, ValueError) as e:
            _fail(str(e), 1)
        if task == "tts" and not stream:
            if not reply.speech:
                _fail("the reply has no speech (raise --max-new-tokens?)", 1)
            write_wav(out, reply.audio, reply.sample_rate, reply.provenance)
        elif task == "t2i":
            if not reply.images:
                _fail("the reply has no complete image (raise --max-new-tokens to at least 1027)", 1)
            write_png(out, reply.images[0], reply.provenance)
        elif out is not None and task in ("asr", "caption"):
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(reply.text + "\n")
        if reply.text or task in ("asr", "caption"):
            out_console.print(reply.text, highlight=False, soft_wrap=True, markup=False)
        if out is not None:
            side = write_sidecar(out, reply)
            out_console.print(f"wrote {out} (+ {side.name})", highlight=False)
        if reply.provenance.get("stand_in"):
            out_console.print("[bold yellow]stand_in: true[/] (a stand-in model or tokenizer made this: not real "
                              "speech, pictures or text)")
        out_console.print(_fmt_metrics(reply.metrics), highlight=False)


def _stream_tts(omni, text, instruction, opts, out: Path, console):
    """Write the WAV as chunks arrive (a player can follow the growing file)."""
    import soundfile as sf
    st = omni.tts_stream(text, instruction, opts)
    out.parent.mkdir(parents=True, exist_ok=True)
    sr = omni.layout.speech_sample_rate
    n = 0
    with sf.SoundFile(str(out), "w", samplerate=sr, channels=1, subtype="FLOAT") as f:
        f.comment = json.dumps({"stand_in": omni.provenance["stand_in"]})
        for chunk in st:
            f.write(chunk.samples)
            f.flush()
            n += 1
            console.print(f"  chunk {n}: {len(chunk.samples) / chunk.sample_rate:.2f} s at {chunk.t * 1000:.0f} ms",
                          highlight=False)
    if st.reply is None or not st.reply.speech:
        _fail("the reply has no speech (raise --max-new-tokens?)", 1)
    st.reply.metrics["chunks"] = n
    return st.reply
