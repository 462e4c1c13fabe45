"""The built-in demo corpus: real material, written in the sources' real published formats.

- LAION (img2dataset webdataset): real photographs bundled with scikit-image, with hand-written captions, as
  ``laion/00000.tar`` ({key}.jpg/.txt/.json) + ``00000.parquet`` (two failed downloads) + ``00000_stats.json``.
- GigaSpeech (HF parquet): real recorded speech (ALSA's channel test voice, Debian alsa-utils) and sentences from the
  Harvard sentence lists spoken by espeak-ng, upper-case text with GigaSpeech's punctuation/garbage tags.
- Ultra-FineWeb (parquet): real English prose, the docstrings of Python's standard library.
Nothing here is downloaded. The tokenizers used with it are stand-ins; see recipes/demo.yaml.
"""
from __future__ import annotations

import hashlib
import importlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aromni.model.text import write_chameleon_style_bpe
from aromni.pipeline.steps.filters.demo_eval import write_demo_eval_sets
from aromni.voice.demand import write_demo_noise
from aromni.voice.espeak import espeak_speak
from aromni.voice.harvard import HARVARD

# (file in skimage/data, caption): captions describe the photographs as a LAION alt-text would.
PHOTOS = [
    ("astronaut.png", "Portrait of astronaut Eileen Collins in an orange flight suit in front of an American flag"),
    ("camera.png", "Black and white photo of a man with a film camera on a tripod in a park"),
    ("coffee.png", "A cup of coffee on a saucer with a spoon, seen from above on a red table"),
    ("chelsea.png", "Close-up of a tabby cat named Chelsea looking to the side"),
    ("rocket.jpg", "A rocket standing on the launch pad under a blue sky"),
    ("hubble_deep_field.jpg", "Hubble deep field image full of distant galaxies on a black background"),
    ("retina.jpg", "Medical photograph of a human retina with blood vessels"),
    ("coins.png", "Greek coins laid out in rows on a dark background, grayscale"),
    ("horse.png", "Black silhouette of a horse on a white background"),
    ("moon.png", "Grayscale photo of the surface of the moon with craters"),
    ("brick.png", "Texture of a brick wall, grayscale"),
    ("grass.png", "Close-up texture of green grass blades, grayscale"),
    ("gravel.png", "Close-up texture of gravel stones on the ground"),
    ("motorcycle_left.png", "A red motorcycle parked in a room with boxes on the shelves"),
    ("page.png", "A scanned page of printed text with uneven lighting"),
    ("text.png", "Photo of hand-painted text on a wall"),
    ("color.png", "A chart of coloured squares in rainbow colours"),
    ("logo.png", "The scikit-image logo, a snake made of pixels"),
    ("clock_motion.png", "A wall clock blurred by camera motion"),
    ("cell.png", "Microscope image of a cell, grayscale"),
    ("ihc.png", "Microscope image of a tissue section stained brown and blue"),
    ("microaneurysms.png", "Close-up of a retina image showing small red dots"),
    ("chessboard_RGB.png", "A black and white chessboard pattern"),
    ("phantom.png", "The Shepp-Logan phantom, a test image of ellipses used in tomography"),
]

# ALSA's speaker-test voice: real recordings of these words.
ALSA_CLIPS = [("Front_Center.wav", "FRONT CENTER <PERIOD>"), ("Front_Left.wav", "FRONT LEFT <PERIOD>"),
              ("Front_Right.wav", "FRONT RIGHT <PERIOD>"), ("Rear_Center.wav", "REAR CENTER <PERIOD>"),
              ("Rear_Left.wav", "REAR LEFT <PERIOD>"), ("Rear_Right.wav", "REAR RIGHT <PERIOD>"),
              ("Side_Left.wav", "SIDE LEFT <PERIOD>"), ("Side_Right.wav", "SIDE RIGHT <PERIOD>")]
ALSA_DIR = Path("/usr/share/sounds/alsa")
TEXT_MODULES = ["json", "csv", "argparse", "logging", "pathlib", "collections", "itertools", "functools",
                "subprocess", "threading", "asyncio", "unittest", "email", "http", "sqlite3", "tarfile", "zipfile",
                "datetime", "decimal", "fractions", "random", "statistics", "string", "textwrap", "difflib",
                "heapq", "bisect", "shutil", "tempfile", "glob", "fnmatch", "pickle", "copy", "pprint", "enum",
                "dataclasses", "contextlib", "abc", "typing", "inspect", "ast", "dis", "tokenize", "pdb",
                "timeit", "doctest", "socket", "ssl", "uuid", "base64", "hashlib", "hmac", "secrets", "zlib",
                "gzip", "bz2", "lzma", "configparser", "optparse", "getopt", "calendar", "locale", "gettext"]


def espeak(text: str, voice: str = "en-us", speed: int = 160) -> tuple[np.ndarray, int]:
    """Speak ``text`` with espeak-ng; returns (float32 mono, rate)."""
    return espeak_speak(text, voice=voice, rate=speed)


def _wav_bytes(x: np.ndarray, sr: int, fmt: str = "WAV") -> bytes:
    import soundfile as sf
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt)
    return buf.getvalue()


def write_laion(root: Path) -> Path:
    from PIL import Image
    d = root / "laion"
    d.mkdir(parents=True, exist_ok=True)
    data_dir = Path(importlib.import_module("skimage").__file__).parent / "data"
    rows, ok = [], 0
    with tarfile.open(d / "00000.tar", "w", format=tarfile.USTAR_FORMAT) as tf:
        for i, (fname, caption) in enumerate(PHOTOS):
            key = f"{i:09d}"
            img = Image.open(data_dir / fname)
            img = img.convert("RGB") if img.mode not in ("RGB", "L") else img
            img.thumbnail((640, 640))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=88)
            jpg = buf.getvalue()
            meta = {"url": f"https://example.org/demo/{fname}", "caption": caption, "key": key, "status": "success",
                    "error_message": None, "width": img.width, "height": img.height,
                    "original_width": img.width, "original_height": img.height, "exif": None,
                    "sha256": hashlib.sha256(jpg).hexdigest(), "similarity": 0.33, "NSFW": "UNLIKELY"}
            for ext, payload in ((".jpg", jpg), (".txt", caption.encode()), (".json", json.dumps(meta).encode())):
                ti = tarfile.TarInfo(key + ext)
                ti.size, ti.mtime = len(payload), 0
                tf.addfile(ti, io.BytesIO(payload))
            rows.append(meta)
            ok += 1
    for j, err in enumerate(["HTTP Error 404: Not Found", "timed out"]):  # img2dataset records failures here only
        rows.append({"url": f"https://example.org/gone/{j}.jpg", "caption": "lost image", "key": f"{len(PHOTOS) + j:09d}",
                     "status": "failed_to_download", "error_message": err, "width": None, "height": None,
                     "original_width": None, "original_height": None, "exif": None, "sha256": None,
                     "similarity": None, "NSFW": None})
    pq.write_table(pa.Table.from_pylist(rows), d / "00000.parquet")
    (d / "00000_stats.json").write_text(json.dumps({"count": len(rows), "successes": ok, "failed_to_download": 2,
                                                    "failed_to_resize": 0, "duration": 0.0,
                                                    "status_dict": {"success": ok, "HTTP Error 404: Not Found": 1,
                                                                    "timed out": 1}}, indent=1))
    return d


def write_gigaspeech(root: Path) -> Path:
    import soxr
    import soundfile as sf
    d = root / "gigaspeech" / "data"
    d.mkdir(parents=True, exist_ok=True)
    rows = []

    def add(seg_id, text, x, sr, source):
        x16 = soxr.resample(x, sr, 16000).astype(np.float32) if sr != 16000 else x
        rows.append({"segment_id": seg_id, "speaker": "N/A", "text": text,
                     "audio": {"bytes": _wav_bytes(x16, 16000), "path": f"{seg_id}.wav"},
                     "begin_time": 0.0, "end_time": round(len(x16) / 16000, 3), "audio_id": seg_id.rsplit("_", 1)[0],
                     "title": "aromni demo", "url": "N/A", "source": source, "category": "demo",
                     "original_full_path": f"audio/demo/{seg_id}.opus"})

    for i, sentence in enumerate(HARVARD):
        x, sr = espeak(sentence, voice=["en-us", "en-gb", "en-us+f3", "en-gb-x-rp"][i % 4])
        text = sentence.upper().replace("'", "'").replace(".", " <PERIOD>").replace(",", " <COMMA>")
        add(f"ESPK{i:04d}_S0000", text, x, sr, "espeak-ng")
    if ALSA_DIR.is_dir():
        for j, (fname, text) in enumerate(ALSA_CLIPS):
            if (ALSA_DIR / fname).exists():
                x, sr = sf.read(ALSA_DIR / fname, dtype="float32")
                add(f"ALSA{j:04d}_S0000", text, x, sr, "alsa-utils")
    x, sr = espeak("mm")  # a garbage-only utterance, as GigaSpeech has: dropped and counted
    add("GARB0000_S0000", "<SIL>", x, sr, "espeak-ng")
    add("GARB0001_S0000", "<MUSIC> <NOISE>", x, sr, "espeak-ng")
    schema = pa.schema([("segment_id", pa.string()), ("speaker", pa.string()), ("text", pa.string()),
                        ("audio", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("begin_time", pa.float32()), ("end_time", pa.float32()), ("audio_id", pa.string()),
                        ("title", pa.string()), ("url", pa.string()), ("source", pa.string()),
                        ("category", pa.string()), ("original_full_path", pa.string())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), d / "train-00000-of-00001.parquet", row_group_size=16)
    return d.parent


def stdlib_paragraphs(limit: int = 60) -> list[str]:
    paras = []
    for name in TEXT_MODULES:
        try:
            doc = importlib.import_module(name).__doc__ or ""
        except Exception:  # noqa: BLE001 - a module missing from this Python is just skipped
            continue
        for p in doc.split("\n\n"):
            p = " ".join(p.split())
            if len(p) >= 80 and sum(c.isalpha() or c == " " for c in p) > 0.85 * len(p):
                paras.append(p)
    return paras[:limit]


NEAR_DUPLICATES = 2


def write_ultrafineweb(root: Path) -> Path:
    d = root / "ultrafineweb" / "data" / "ultrafineweb_en"
    d.mkdir(parents=True, exist_ok=True)
    paras = stdlib_paragraphs()
    rows = [{"content": p, "score": round(0.5 + 0.5 * (i % 10) / 10, 2), "source": "python-stdlib-docstrings"}
            for i, p in enumerate(paras)]
    rows.append({"content": "   \n\t ", "score": 0.9, "source": "empty"})  # an empty document: rejected, counted
    # planted near-duplicates (a web crawl's reposts): the first two documents again, a word or two changed, so the
    # near-duplicate stages (docs/quality.md) have something to find
    for i, p in enumerate(paras[:NEAR_DUPLICATES]):
        words = p.split()
        words[len(words) // 2] = "indeed"
        rows.append({"content": " ".join(words) + " (reposted)", "score": 0.6, "source": f"near-duplicate-of-{i}"})
    pq.write_table(pa.Table.from_pylist(rows), d / "part-00000.parquet", row_group_size=32)
    return d.parent.parent


def write_text_tokenizer(root: Path) -> Path:
    """A STAND-IN BPE in Chameleon's tokenizer.json format, trained on the demo text (not Chameleon's vocabulary)."""
    texts = stdlib_paragraphs(1000) + HARVARD + [c for _, c in PHOTOS] + [
        "USER:", "GPT:", " GPT:", "This is input: ", " This is input: ", "Describe this image.",
        "Create a picture that matches the essence of this text.",
        "Can you please convert this speech into written text?", "Convert this text into speech."]
    return write_chameleon_style_bpe(texts, root / "tokenizer" / "tokenizer.json", vocab_size=4000)


def make_demo_corpus(out: str | Path) -> dict[str, Path]:
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    paths = {"laion": write_laion(root), "gigaspeech": write_gigaspeech(root),
             "ultrafineweb": write_ultrafineweb(root), "text tokenizer (STAND-IN)": write_text_tokenizer(root)}
    # random-weight VQGAN + WavTokenizer in their published formats, for recipes/demo_realformat.yaml
    from aromni.model.random_checkpoints import write_demo_checkpoints
    paths.update(write_demo_checkpoints(root / "tokenizer"))
    # DEMAND-format noise for the noise step: espeak-ng babble, NOT DEMAND (its STAND_IN.txt says so)
    paths["noise (DEMAND format, STAND-IN babble)"] = write_demo_noise(root / "demand")
    # STAND-IN evaluation sets (LibriSpeech / COCO layouts) holding a few demo items, for the decontaminate step
    paths.update(write_demo_eval_sets(out=root / "eval", laion_path=paths["laion"],
                                      gigaspeech_path=paths["gigaspeech"]))
    (root / "README.txt").write_text(__doc__)
    return paths
