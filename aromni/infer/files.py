"""Writing a reply to disk: WAV / PNG / TXT outputs and the ``.json`` beside each (ids, text, timings, provenance);
reading a chat's messages file. Used by ``aromni infer`` and by scripts."""
from __future__ import annotations

import json
from pathlib import Path


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
    """A JSON list of messages ({"role": "user"|"assistant", "text", "image", "audio", "say"}) or
    {"messages": [...]}. ``say``: text the voice backend speaks as the user's speech (upstream's chat input).
    Relative media paths are resolved against the JSON file's folder."""
    data = json.loads(path.read_text())
    msgs = data.get("messages") if isinstance(data, dict) else data
    if not isinstance(msgs, list) or not msgs:
        raise ValueError(f"{path}: expected a non-empty JSON list of messages (or {{\"messages\": [...]}})")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise ValueError(f"{path}: message {i} is not an object")
        unknown = set(m) - {"role", "text", "image", "audio", "say"}
        if unknown:
            raise ValueError(f"{path}: message {i} has unknown keys {sorted(unknown)} (role, text, image, audio, say)")
        if m.get("say") and m.get("audio"):
            raise ValueError(f"{path}: message {i} has both audio and say (one speech input per message)")
        for k in ("image", "audio"):
            if m.get(k):
                p = Path(m[k])
                m[k] = str(p if p.is_absolute() else path.parent / p)
                if not Path(m[k]).is_file():
                    raise ValueError(f"{path}: message {i}: {k} file not found: {m[k]}")
    return msgs
