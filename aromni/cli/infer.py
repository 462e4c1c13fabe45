"""``aromni infer``: every task of a model from the command line (the Python API is aromni.infer.tasks.Omni)."""
from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path
from typing import List, Optional

import typer

from aromni.cli.app import app
from aromni.cli.common import WORK_FAILED, console, fail, out_console
from aromni.infer.files import load_messages, save_reply, write_png, write_sidecar, write_wav

TASK_HELP = ("tts: --text -> speech (--out x.wav) | asr: --audio -> text | caption: --image -> text | "
             "t2i: --text -> image (--out x.png) | chat: --messages chat.json or --say TEXT -> replies in --out DIR")

# --help groups the options by what they are for
MODEL, INPUT, CHAT, DECODE, IMAGE, TOKENIZERS = ("Model and task", "Inputs and outputs", "Chat: spoken input",
                                                 "Decoding (text and speech)", "Images (t2i)", "Tokenizers")


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


def run_chat(omni, messages: list[dict], out: Path, console, options=None, voice=None, padding=None) -> list:
    """Send every user message that is not followed by another user message; add the others as history."""
    from aromni.infer.prompts import Message
    from aromni.infer.spoken import Padding
    chat = omni.chat(options)
    padding = padding or Padding()
    replies = []
    for i, m in enumerate(messages):
        msg = Message(m.get("role", "user"), m.get("text"))
        nxt = messages[i + 1] if i + 1 < len(messages) else None
        if msg.role == "user" and (nxt is None or nxt.get("role", "user") == "user"):
            reply = chat.send(msg, image=m.get("image"), audio=m.get("audio"), say=m.get("say"), voice=voice,
                              padding=padding)
            replies.append(reply)
            saved = save_reply(reply, out, f"reply{len(replies)}")
            console.print(f"[bold]reply {len(replies)}[/]: {reply.text!r}  ({_fmt_metrics(reply.metrics)})",
                          highlight=False, soft_wrap=True)
            console.print("  " + "  ".join(str(p) for p in saved), highlight=False, soft_wrap=True)
        else:
            if m.get("say"):
                raise ValueError(f"message {i}: say is only for a user message that gets a reply")
            chat.add(msg, image=m.get("image"), audio=m.get("audio"))
    return replies


def make_voice(kind: str, model: Optional[Path], ref: Optional[Path], ref_text: Optional[str]):
    """The voice that speaks --say: espeak-ng, or CosyVoice2 with a reference speaker clip and its prompt text."""
    from aromni.voice import get_synthesizer
    from aromni.voice.text import normalise

    if kind == "espeak":
        synth = get_synthesizer("espeak", {})
    elif kind == "cosyvoice2":
        if model is None or ref is None:
            fail("--voice cosyvoice2 needs --voice-model DIR and --voice-ref CLIP.wav (the reference speaker)")
        opts = {"model_dir": str(model), "reference_audio": str(ref)}
        if ref_text:
            opts["prompt_text"] = ref_text
        synth = get_synthesizer("cosyvoice2", opts)
    else:
        fail(f"--voice {kind!r}: espeak or cosyvoice2")

    class _Voice:   # what spoken_codes needs: speak(text) -> (wave, rate) and the backend's identity
        identity = property(lambda self: synth.identity)

        def speak(self, text):
            wave, sr, _ = synth.speak(normalise(text))
            return wave, sr
    return _Voice()


@app.command("infer")
def infer(
    model: Path = typer.Option(..., "--model", "-m", rich_help_panel=MODEL,
                               help="an HF Chameleon/Anole/AR-Omni model dir (config.json + safetensors) or a "
                                    "Meta-format checkpoint (models/7b/consolidated*.pth, converted once into "
                                    "$AROMNI_CACHE)"),
    task: str = typer.Option(..., "--task", "-t", help=TASK_HELP, rich_help_panel=MODEL),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1 ...", rich_help_panel=MODEL),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16", rich_help_panel=MODEL),
    text: Optional[str] = typer.Option(None, "--text", help="tts: the text to speak; t2i: what to draw",
                                       rich_help_panel=INPUT),
    image: Optional[Path] = typer.Option(None, "--image", help="caption: the picture to describe",
                                         rich_help_panel=INPUT),
    audio: Optional[Path] = typer.Option(None, "--audio", help="asr: the speech to transcribe (wav/flac/...)",
                                         rich_help_panel=INPUT),
    messages: Optional[Path] = typer.Option(None, "--messages", rich_help_panel=INPUT,
                                            help="chat: JSON list of {role, text, image, audio, say} messages (paths "
                                                 "relative to the JSON; with audio or say, text is the instruction "
                                                 "after the speech). See docs/inference.md"),
    instruction: Optional[str] = typer.Option(None, "--instruction", rich_help_panel=INPUT,
                                              help="override the task template's default instruction"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", rich_help_panel=INPUT,
                                       help="tts: x.wav, t2i: x.png, chat: a folder; asr/caption: optional .txt"),
    stream: bool = typer.Option(False, "--stream", rich_help_panel=INPUT,
                                help="tts: write the WAV chunk by chunk while it is generated"),
    say: Optional[List[str]] = typer.Option(None, "--say", rich_help_panel=CHAT,
                                            help="chat: a user turn SPOKEN by the voice backend (upstream's chat "
                                                 "input: text -> CosyVoice2 -> WavTokenizer); repeat for more turns"),
    voice: str = typer.Option("espeak", "--voice", rich_help_panel=CHAT,
                              help="who speaks --say: espeak (offline, not upstream's voice) or cosyvoice2"),
    voice_model: Optional[Path] = typer.Option(None, "--voice-model", rich_help_panel=CHAT,
                                               help="cosyvoice2: the CosyVoice2-0.5B model dir"),
    voice_ref: Optional[Path] = typer.Option(None, "--voice-ref", rich_help_panel=CHAT,
                                             help="cosyvoice2: the reference speaker clip (upstream: ref.wav)"),
    voice_ref_text: Optional[str] = typer.Option(None, "--voice-ref-text", rich_help_panel=CHAT,
                                                 help="what the reference clip says (default: upstream's \"Ask her "
                                                      "to bring these things with her from the store.\")"),
    silence_head: float = typer.Option(0.0, "--silence-head", rich_help_panel=CHAT,
                                       help="seconds of silence codes before the spoken turn (upstream default 0)"),
    silence_tail: float = typer.Option(0.0, "--silence-tail", rich_help_panel=CHAT,
                                       help="seconds of silence codes after the spoken turn (upstream default 0)"),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", rich_help_panel=DECODE,
                                                 help="cap the reply length (default per task: tts 2000, "
                                                      "asr/caption 512, t2i 1027, chat 2048)"),
    seed: int = typer.Option(0, "--seed", help="seed of the sampling generator (same seed, same reply)",
                             rich_help_panel=DECODE),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="text/speech temperature (default 1.2)",
                                                rich_help_panel=DECODE),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="text/speech top-p (default 0.96)",
                                          rich_help_panel=DECODE),
    repetition_penalty: Optional[float] = typer.Option(None, "--repetition-penalty", rich_help_panel=DECODE,
                                                       help="text/speech repetition penalty (default 1.2)"),
    image_temperature: Optional[float] = typer.Option(None, "--image-temperature", help="default 1.0",
                                                      rich_help_panel=IMAGE),
    g_txt: float = typer.Option(3.07, "--g-txt", help="image guidance: weight of the text condition",
                                rich_help_panel=IMAGE),
    g_img: float = typer.Option(1.15, "--g-img", rich_help_panel=IMAGE,
                                help="image guidance: weight of the image condition (upstream's t2i script uses 1.32)"),
    no_cfg: bool = typer.Option(False, "--no-cfg", help="decode images without classifier-free guidance",
                                rich_help_panel=IMAGE),
    text_tokenizer: Optional[Path] = typer.Option(None, "--text-tokenizer", rich_help_panel=TOKENIZERS,
                                                  help="tokenizer.json (default: found in --model)"),
    image_tokenizer: Optional[str] = typer.Option(None, "--image-tokenizer", rich_help_panel=TOKENIZERS,
                                                  help="KIND[:PATH], e.g. vqgan:/ckpt/tokenizer or standin (default: "
                                                       "a VQGAN in --model, else the stand-in)"),
    speech_tokenizer: Optional[str] = typer.Option(None, "--speech-tokenizer", rich_help_panel=TOKENIZERS,
                                                   help="KIND[:PATH], e.g. wavtokenizer:/ckpt/wavtok or standin "
                                                        "(default: found in --model, else the stand-in)"),
):
    """Talk to a model: text to speech, speech to text, image to caption, text to image, multi-turn chat.

    Prints the reply (text), where its outputs went, first-token latency (FTL), and for speech the real-time
    factor (RTF = wall time / seconds of audio). Every output gets a <out>.json beside it with the reply's ids,
    timings, and whether stand-in tokenizers made it. Examples:

      aromni infer -m runs/model -t tts --text "hello" -o hello.wav --stream

      aromni infer -m runs/model -t t2i --text "a red fox in snow" -o fox.png

      aromni infer -m runs/model -t chat --messages chat.json -o replies/

      aromni infer -m /ckpt/AR-Omni-Chat -t chat --say "What is a rainbow?" -o replies/

    (--say with upstream's voice: --voice cosyvoice2 --voice-model /ckpt/CosyVoice2-0.5B --voice-ref ref.wav)
    """
    from aromni.infer.cfg import Guidance
    from aromni.infer.spoken import Padding
    from aromni.infer.state import IMAGE_SAMPLING, TEXT_SAMPLING, DecodeError
    from aromni.infer.tasks import TASKS, Omni
    from aromni.model.meta_checkpoint import MetaCheckpointError, is_meta_checkpoint
    from aromni.tasks import TemplateError
    from aromni.voice import VoiceError

    if task not in TASKS:
        fail(f"unknown --task {task!r}; one of {', '.join(TASKS)}")
    if say and task != "chat":
        fail("--say is for --task chat")
    need = {"tts": ("text", text), "t2i": ("text", text), "asr": ("audio", audio), "caption": ("image", image),
            "chat": ("messages or --say", messages or say)}[task]
    if not need[1]:
        fail(f"--task {task} needs --{need[0]}")
    if say and messages:
        fail("give --messages or --say, not both (a messages file can hold \"say\" turns)")
    if task in ("tts", "t2i", "chat") and out is None:
        fail(f"--task {task} needs --out ({'a .wav file' if task == 'tts' else 'a .png file' if task == 't2i' else 'a folder'})")
    for p in (image, audio, messages, voice_ref):
        if p is not None and not p.is_file():
            fail(f"file not found: {p}")
    if not (model / "config.json").is_file() and not is_meta_checkpoint(model):
        fail(f"{model} is not a model dir (no config.json) nor a Meta-format checkpoint (models/<size>/params.json)")
    try:
        text_s = replace(TEXT_SAMPLING, **{k: v for k, v in {"temperature": temperature, "top_p": top_p,
                         "repetition_penalty": repetition_penalty}.items() if v is not None})
        image_s = replace(IMAGE_SAMPLING, **({"temperature": image_temperature} if image_temperature else {}))
        padding = Padding(silence_head, silence_tail)
    except ValueError as e:
        fail(str(e))
    msgs = None
    if task == "chat":
        try:
            msgs = load_messages(messages) if messages else [{"role": "user", "say": s} for s in say]
        except ValueError as e:   # the file is there but its content is wrong: as before, exit 1
            fail(str(e), WORK_FAILED)
    speaker = None
    if msgs and any(m.get("say") for m in msgs):
        try:
            speaker = make_voice(voice, voice_model, voice_ref, voice_ref_text)
        except VoiceError as e:
            fail(f"cannot load the voice: {e}", WORK_FAILED)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            omni = Omni.load(model, text_tokenizer=str(text_tokenizer) if text_tokenizer else None,
                             image_tokenizer=image_tokenizer, speech_tokenizer=speech_tokenizer, dtype=dtype,
                             device=device)
        except (OSError, ValueError, MetaCheckpointError) as e:
            fail(f"cannot load {model}: {e}")
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
            run_chat(omni, msgs, out, out_console, opts, voice=speaker, padding=padding)
            return
        if task == "tts" and stream:
            reply = _stream_tts(omni, text, instruction, opts, out, console)
        else:
            fn = {"tts": lambda: omni.tts(text, instruction, opts), "t2i": lambda: omni.t2i(text, instruction, opts),
                  "asr": lambda: omni.asr(audio, instruction, opts),
                  "caption": lambda: omni.caption(image, instruction, opts)}[task]
            reply = fn()
    except (DecodeError, TemplateError, ValueError) as e:
        fail(str(e), WORK_FAILED)
    except VoiceError as e:
        fail(f"the voice backend failed: {e}", WORK_FAILED)
    if task == "tts" and not stream:
        if not reply.speech:
            fail("the reply has no speech (raise --max-new-tokens?)", WORK_FAILED)
        write_wav(out, reply.audio, reply.sample_rate, reply.provenance)
    elif task == "t2i":
        if not reply.images:
            fail("the reply has no complete image (raise --max-new-tokens to at least 1027)", WORK_FAILED)
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
        fail("the reply has no speech (raise --max-new-tokens?)", WORK_FAILED)
    st.reply.metrics["chunks"] = n
    return st.reply
