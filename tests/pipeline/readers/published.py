"""Tiny inputs in each source's exact published layout (file names, columns, nesting, codecs), made by code.

Each writer puts a handful of good items and a few of the defects real downloads have (failed downloads, missing
clips, garbage transcripts, ...) under the relative path recipes/pretrain.yaml and recipes/instruct.yaml expect, and
returns what a build must account for: ``{source: {"read": n, "rejected": {reason: n}}}``.
Audio is synthetic (tones + noise) and images are generated gradients: these tests are about formats, not content.
"""
from __future__ import annotations

import atexit
import functools
import hashlib
import io
import json
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SENTENCES = ["The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background.",
             "It's easy to tell the depth of a well.", "These days a chicken leg is a rare dish.",
             "Rice is often served in round bowls.", "The juice of lemons makes fine punch.",
             "The box was thrown beside the parked truck.", "Four hours of steady work faced us.",
             "A large size in stockings is hard to sell.", "The boy was there when the sun rose."]


# ---- media ------------------------------------------------------------------------------------------------------
def tone(seconds: float, sr: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * (180 + 40 * seed) * t) + 0.02 * rng.standard_normal(len(t))
    return x.astype(np.float32)


def audio_bytes(x: np.ndarray, sr: int, fmt: str) -> bytes:
    import soundfile as sf
    subtype = {"WAV": "PCM_16", "FLAC": "PCM_16", "MP3": "MPEG_LAYER_III", "OGG": "OPUS"}[fmt]
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def image_bytes(seed: int, size=(96, 80), fmt: str = "JPEG") -> bytes:
    from PIL import Image
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.stack([(xx * 255 // w + seed * 37) % 256, (yy * 255 // h + seed * 91) % 256,
                  np.full_like(xx, (seed * 53) % 256)], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt)
    return buf.getvalue()


def add_member(tf: tarfile.TarFile, name: str, payload: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime = len(payload), 0
    tf.addfile(ti, io.BytesIO(payload))


def write_jsonl(path: Path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


# ---- pretraining sources ------------------------------------------------------------------------------------------
def write_ultrafineweb(root: Path) -> dict:
    d = root / "Ultra-FineWeb" / "data" / "ultrafineweb_en"
    d.mkdir(parents=True, exist_ok=True)
    docs = [f"{s} " * 3 for s in SENTENCES[:7]]
    rows = [{"content": t.strip(), "score": 0.5 + i / 20, "source": "fixture"} for i, t in enumerate(docs)]
    rows.append({"content": " \n\t ", "score": 0.9, "source": "fixture"})            # empty_text
    pq.write_table(pa.Table.from_pylist(rows), d / "ultrafineweb-en-part-0000-of-2048.parquet", row_group_size=4)
    return {"read": 8, "written": 7, "rejected": {"empty_text": 1}}


def _laion_meta(key: str, caption: str, img: bytes | None, status: str = "success", **extra) -> dict:
    ok = status == "success"
    return {"url": f"https://example.org/{key}.jpg", "caption": caption, "key": key, "status": status,
            "error_message": None if ok else "HTTP Error 404: Not Found", "width": 96 if ok else None,
            "height": 80 if ok else None, "original_width": 960 if ok else None,
            "original_height": 800 if ok else None, "exif": None,
            "sha256": hashlib.sha256(img).hexdigest() if img else None,
            "similarity": 0.31, "punsafe": 0.01, "pwatermark": 0.1, "AESTHETIC_SCORE": 5.6, "NSFW": "UNLIKELY",
            **extra}


def write_laion(root: Path) -> dict:
    """img2dataset output in all three formats: 00000.tar (webdataset), 00001/ (files), 00002.parquet (parquet)."""
    d = root / "laion-aesthetics-v2-5plus"
    d.mkdir(parents=True, exist_ok=True)
    samples = [(f"{s:05d}{i:04d}", SENTENCES[(s * 3 + i) % 10]) for s in range(3) for i in range(3)]
    for shard in range(3):
        keys = samples[shard * 3:(shard + 1) * 3]
        metas, payload = [], {}
        for j, (key, cap) in enumerate(keys):
            img = image_bytes(shard * 3 + j)
            if (shard, j) == (1, 0):  # a re-crawl of sample 0 under another key: a duplicate across units
                img, cap = image_bytes(0), samples[0][1]
            extra = {}
            if (shard, j) == (0, 2):
                extra = {"AESTHETIC_SCORE": 4.2}          # low_aesthetic (LAION-Aesthetics keeps >= 5)
            if (shard, j) == (1, 2):
                extra = {"NSFW": "NSFW"}                  # nsfw
            metas.append(_laion_meta(key, cap, img, **extra))
            payload[key] = img
        failed = _laion_meta(f"{shard:05d}0009", "lost", None, status="failed_to_download")
        if shard == 0:
            with tarfile.open(d / "00000.tar", "w", format=tarfile.USTAR_FORMAT) as tf:
                for m in metas:
                    for ext, data in ((".jpg", payload[m["key"]]), (".txt", m["caption"].encode()),
                                      (".json", json.dumps(m).encode())):
                        add_member(tf, m["key"] + ext, data)
        elif shard == 1:
            folder = d / "00001"
            folder.mkdir(exist_ok=True)
            for m in metas:
                (folder / f"{m['key']}.jpg").write_bytes(payload[m["key"]])
                (folder / f"{m['key']}.txt").write_text(m["caption"])
                (folder / f"{m['key']}.json").write_text(json.dumps(m))
        else:
            rows = [{**m, "jpg": payload[m["key"]]} for m in metas] + [{**failed, "jpg": None}]
            pq.write_table(pa.Table.from_pylist(rows), d / "00002.parquet")
        if shard < 2:  # the metadata sidecar: every attempted URL, failures only here
            pq.write_table(pa.Table.from_pylist(metas + [failed]), d / f"{shard:05d}.parquet")
        (d / f"{shard:05d}_stats.json").write_text(json.dumps({"count": 4, "successes": 3, "failed_to_download": 1}))
    # counts are for a whole build: the duplicate is found at mix time (each unit alone writes it)
    return {"read": 12, "written": 6, "rejected": {"download_failed": 3, "duplicate": 1, "low_aesthetic": 1, "nsfw": 1}}


def write_journeydb(root: Path) -> dict:
    d = root / "JourneyDB" / "data" / "train"
    (d / "imgs").mkdir(parents=True, exist_ok=True)
    lines = []
    for folder in ("000", "001"):
        with tarfile.open(d / "imgs" / f"{folder}.tgz", "w:gz") as tf:
            for i in range(3):
                name = f"{folder}/{hashlib.md5(f'{folder}{i}'.encode()).hexdigest()}.jpg"
                add_member(tf, name, image_bytes(10 + int(folder) * 3 + i))
                if (folder, i) == ("001", 2):
                    continue                              # an image without an annotation line: missing_annotation
                rec = {"img_path": f"./{name}", "prompt": f"{SENTENCES[i]} --ar 16:9 --v 5",
                       "Task1": {"Style": ["photo"], "Content": ["canoe"], "Atmosphere": [], "Others": []},
                       "Task2": {"Caption": f"A picture: {SENTENCES[i + 3]}"}, "Task3": {}}
                if (folder, i) == ("000", 1):
                    del rec["Task2"]                      # no caption: the prompt is used (meta.text_field)
                lines.append(rec)
    lines.append({"img_path": "./000/ffffffffffffffffffffffffffffffff.jpg", "prompt": "lost", "Task2": {}})  # missing_file
    write_jsonl(d / "train_anno_realease_repath.jsonl", lines)
    return {"read": 7, "written": 5, "rejected": {"missing_annotation": 1, "missing_file": 1}}


def write_gigaspeech_original(root: Path) -> dict:
    """GigaSpeech.json + decrypted opus recordings; one recording still encrypted (.opus.aes)."""
    d = root / "GigaSpeech"
    audios = []
    for a, (source, aid) in enumerate((("podcast", "POD0000000001"), ("youtube", "YOU0000000001"),
                                        ("audiobook", "AUD0000000001"))):
        rel = f"audio/{source}/P0000/{aid}.opus"
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        segs = []
        for s in range(3):
            text = SENTENCES[a * 3 + s].upper().replace(".", " <PERIOD>").replace(",", " <COMMA>")
            segs.append({"sid": f"{aid}_S{s:04d}", "speaker": "N/A", "begin_time": 1.0 * s + 0.1,
                         "end_time": 1.0 * s + 0.9, "text_tn": text, "subsets": ["{XL}", "{L}"] if s else ["{XL}"]})
        if a == 0:
            segs[2]["text_tn"] = "<SIL> <MUSIC>"                               # garbage_only
        if a == 2:
            (d / f"{rel}.aes").write_bytes(b"\x00" * 64)                       # encrypted_audio x3
        else:
            (d / rel).write_bytes(audio_bytes(tone(3.2, 16000, a), 16000, "OGG"))
        audios.append({"title": f"fixture {aid}", "url": "N/A", "path": rel, "aid": aid, "source": source,
                       "category": "fixture", "speaker": "N/A", "duration": 3.2, "md5": "0" * 32,
                       "subsets": ["{XL}", "{L}"], "segments": segs})
    (d / "GigaSpeech.json").write_text(json.dumps({"dataset": "GigaSpeech", "language": "EN", "version": "v1.0.0",
                                                   "audios": audios}, indent=1))
    return {"read": 9, "written": 5, "rejected": {"garbage_only": 1, "encrypted_audio": 3}}


def write_gigaspeech_hf(root: Path) -> Path:
    d = root / "gigaspeech-hf" / "data"
    d.mkdir(parents=True, exist_ok=True)
    rows = [{"segment_id": f"POD1_S{i:04d}", "speaker": "N/A", "text": SENTENCES[i].upper().replace(".", " <PERIOD>"),
             "audio": {"bytes": audio_bytes(tone(0.8, 16000, i), 16000, "WAV"), "path": f"POD1_S{i:04d}.wav"},
             "begin_time": 0.0, "end_time": 0.8, "audio_id": "POD1", "title": "t", "url": "N/A", "source": "podcast",
             "category": "c", "original_full_path": "audio/podcast/P0000/POD1.opus"} for i in range(3)]
    rows.append({**rows[0], "segment_id": "POD1_S0099", "text": "<NOISE>"})
    pq.write_table(pa.Table.from_pylist(rows), d / "train-00000-of-00001.parquet")
    return d


CV_NEW = ["client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes", "age",
          "gender", "accents", "variant", "locale", "segment"]
CV_OLD = ["client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender", "accent"]


def write_common_voice(root: Path, old: bool = False) -> dict:
    d = root / ("cv-corpus-5.1-2020-06-22" if old else "cv-corpus-20.0-2024-12-06") / "en"
    (d / "clips").mkdir(parents=True, exist_ok=True)
    cols = CV_OLD if old else CV_NEW
    lines = ["\t".join(cols)]
    for i in range(6):
        name = f"common_voice_en_{1000 + i}.mp3"
        if i != 5:                                                              # clip 5 is missing: missing_audio
            (d / "clips" / name).write_bytes(audio_bytes(tone(0.9, 48000, i), 48000, "MP3"))
        rec = {"client_id": hashlib.sha1(str(i).encode()).hexdigest(), "path": name, "sentence_id": f"s{i}",
               "sentence": SENTENCES[i], "sentence_domain": "", "up_votes": "2", "down_votes": "0",
               "age": "twenties", "gender": "", "accents": "", "accent": "", "variant": "", "locale": "en",
               "segment": ""}
        if i == 4:
            rec["up_votes"], rec["down_votes"] = "2", "3"                       # votes (min_vote_margin 1)
        lines.append("\t".join(rec[c] for c in cols))
    (d / "validated.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"read": 6, "written": 4, "rejected": {"votes": 1, "missing_audio": 1}}


def write_mls(root: Path) -> dict:
    d = root / "mls_english_opus" / "train"
    lines = []
    for i in range(5):
        spk, book = str(4800 + i % 2), "10003"
        utt = f"{spk}_{book}_{i:06d}"
        lines.append(f"{utt}\t{SENTENCES[i].lower().rstrip('.').replace(',', '')}")
        if i != 4:                                                              # missing_audio
            p = d / "audio" / spk / book / f"{utt}.opus"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(audio_bytes(tone(1.0, 16000, i), 16000, "OGG"))
    d.mkdir(parents=True, exist_ok=True)
    (d / "transcripts.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"read": 5, "written": 4, "rejected": {"missing_audio": 1}}


def pretrain_tree(root: Path) -> dict:
    return {"ultrafineweb": write_ultrafineweb(root), "laion": write_laion(root), "journeydb": write_journeydb(root),
            "gigaspeech": write_gigaspeech_original(root), "common_voice": write_common_voice(root),
            "mls": write_mls(root)}


# ---- instruction sources --------------------------------------------------------------------------------------------
def write_anyinstruct(root: Path) -> dict:
    base = root / "AnyInstruct"
    conv = base / "speech_conv"
    conv.mkdir(parents=True, exist_ok=True)
    records = []
    with tarfile.open(conv / "speech.tar", "w", format=tarfile.USTAR_FORMAT) as tf:
        n = 0
        for k in range(4):
            chat = []
            for turn in range(2 if k != 3 else 1):  # dialogs 0-2: two exchanges; 3: one
                for role, text in (("USER", SENTENCES[(k + turn) % 10]), ("AnyGPT", SENTENCES[(k + turn + 5) % 10])):
                    member = f"chunk_00000/{n:04d}.mp3"
                    add_member(tf, f"speech/{member}", audio_bytes(tone(0.7, 16000, n % 7), 16000, "MP3"))
                    chat.append({"role": role, "message": text, "speech": member})
                    n += 1
            records.append({"chat": chat})
    records.append({"chat": [{"role": "USER", "message": "hello", "speech": "chunk_00009/9999.mp3"},
                             {"role": "AnyGPT", "message": "hi", "speech": "chunk_00009/9998.mp3"}]})  # missing_audio
    write_jsonl(conv / "metadata.jsonl", records)

    part = base / "part1"
    part.mkdir(parents=True, exist_ok=True)
    with tarfile.open(part / "images_224.tar", "w", format=tarfile.USTAR_FORMAT) as tf:
        add_member(tf, "images/0.jpg", image_bytes(40, (224, 224)))
        add_member(tf, "images/1.jpg", image_bytes(41, (224, 224)))
    with tarfile.open(part / "speech.tar", "w", format=tarfile.USTAR_FORMAT) as tf:
        add_member(tf, "speech/0.mp3", audio_bytes(tone(0.6, 16000, 3), 16000, "MP3"))
    with tarfile.open(part / "music.tar", "w", format=tarfile.USTAR_FORMAT) as tf:
        add_member(tf, "music/0.mp3", audio_bytes(tone(0.6, 16000, 4), 16000, "MP3"))
    dialogs = [
        {"chat": [{"role": "USER", "message": "What is in this picture?", "image": "images/0.jpg"},
                  {"role": "AnyGPT", "message": "A colourful gradient."}]},
        {"chat": [{"role": "USER", "message": "Draw me a gradient."},
                  {"role": "AnyGPT", "message": "Here it is.", "image": "images/1.jpg"},
                  {"role": "USER", "message": "Say something.", "speech": "speech/0.mp3"},
                  {"role": "AnyGPT", "message": "Something."}]},
        {"chat": [{"role": "USER", "message": "Play music."},
                  {"role": "AnyGPT", "message": "Sure.", "music": "music/0.mp3"}]},  # unsupported_modality
    ]
    (part / "metadata.json").write_text(json.dumps(dialogs, indent=1))
    return {"read": 8, "written": 6, "rejected": {"missing_audio": 1, "unsupported_modality": 1}}


def write_voiceassistant(root: Path) -> dict:
    d = root / "VoiceAssistant-400K" / "data"
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for conv, rounds in ((0, 1), (1, 2), (2, 1)):
        for r in range(rounds):
            n = conv * 3 + r
            audio = {"bytes": audio_bytes(tone(0.8, 16000, n % 7), 16000, "WAV"), "path": None}
            if conv == 2:
                audio = {"bytes": b"", "path": None}                            # missing_audio
            rows.append({"split_name": "identity" if conv == 0 else "alpaca", "index": conv, "round": r,
                         "question": SENTENCES[n % 10], "question_audio": audio,
                         "answer": SENTENCES[(n + 4) % 10], "answer_snac": "# 1 2 3 #"})
    schema = pa.schema([("split_name", pa.string()), ("index", pa.int64()), ("round", pa.int64()),
                        ("question", pa.string()),
                        ("question_audio", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("answer", pa.string()), ("answer_snac", pa.string())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), d / "train-00000-of-00001.parquet")
    return {"read": 3, "written": 2, "rejected": {"missing_audio": 1}}


def write_ultrachat(root: Path) -> dict:
    d = root / "ultrachat"
    recs = [{"id": str(i), "data": [SENTENCES[(i + j) % 10] for j in range(n)]}
            for i, n in enumerate((2, 4, 3, 2))]                                 # dialog 2 ends with a user turn
    recs.append({"id": "4", "data": ["   ", "An answer to nothing."]})           # empty_text
    write_jsonl(d / "train_0.jsonl", recs[:3])
    write_jsonl(d / "train_1.jsonl", recs[3:])
    return {"read": 5, "written": 4, "rejected": {"empty_text": 1}, "dropped_turns": 1}


def write_aromni_instruct(root: Path, encode) -> dict:
    """Rows made the way upstream's parquet holds them: input_ids + labels (-100 = no loss)."""
    from aromni.sample import LossPolicy, labels_and_weights
    from aromni.tasks import DialogTurn, render_dialog
    d = root / "AR-Omni-Instruct-v0.1"
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(3):
        turns = [DialogTurn("user", SENTENCES[i], speech_codes=list(range(i, i + 20))),
                 DialogTurn("assistant", SENTENCES[i + 1], speech_codes=list(range(100 + i, 130 + i)))]
        if i == 1:
            turns[0].image_codes = [(7 * j) % 8192 for j in range(1024)]
        r = render_dialog(turns, encode)
        labels, _ = labels_and_weights(r.ids, r.segments, "chat", LossPolicy(on="assistant"))
        rows.append({"input_ids": r.ids, "labels": labels.tolist()})
    bad_labels = list(rows[0]["labels"])
    t = next(k for k, y in enumerate(bad_labels) if y != -100)
    bad_labels[t] += 1                                                           # a label that is not its id
    rows.append({"input_ids": rows[0]["input_ids"], "labels": bad_labels})
    schema = pa.schema([("input_ids", pa.list_(pa.int64())), ("labels", pa.list_(pa.int64()))])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), d / "train.parquet")
    return {"read": 4, "written": 3, "rejected": {"bad_labels": 1}}


def instruct_tree(root: Path, encode) -> dict:
    return {"anyinstruct": write_anyinstruct(root), "voiceassistant": write_voiceassistant(root),
            "ultrachat": write_ultrachat(root), "aromni_instruct": write_aromni_instruct(root, encode)}


def text_tokenizer(root: Path):
    """A STAND-IN Chameleon-format BPE trained on the fixture text (tests only)."""
    from aromni.model.text import load_text_tokenizer, write_chameleon_style_bpe
    p = write_chameleon_style_bpe(SENTENCES + ["USER:", "GPT:", " GPT:", "This is input: ", " This is input: ",
                                               "Please acknowledge the user's vocal input, create a textual response."],
                                  root / "tokenizer" / "tokenizer.json", vocab_size=600)
    return load_text_tokenizer(p, stand_in=True)


# ---- shared by the reader tests and the recipe builds -----------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def fixture_tree() -> tuple[Path, dict]:
    """Both recipes' trees, written once per test session: (data_root, expected accounting per source)."""
    root = Path(tempfile.mkdtemp(prefix="aromni-published-"))
    atexit.register(shutil.rmtree, root, True)
    tok = text_tokenizer(root)
    expect = pretrain_tree(root)
    expect.update(instruct_tree(root, tok.encode))
    return root, expect


STANDIN_TOKENIZERS = ["tokenizers.text={path: tokenizer/tokenizer.json, stand_in: true}",
                      "tokenizers.image={kind: standin}", "tokenizers.speech={kind: standin}"]


def run_source(reader: str, path: str, tasks: list[str], options: dict | None = None, filters: dict | None = None,
               root: Path | None = None) -> dict:
    """Every unit of one source through process_unit (no Ray): summed stats, rows and rejects."""
    from aromni.model import load_tokenizers
    from aromni.pipeline.readers import READERS
    from aromni.pipeline.unit import process_unit
    from aromni.recipe import parse_recipe

    bpe = fixture_tree()[0] / "tokenizer" / "tokenizer.json"
    root = root or fixture_tree()[0]
    groups = {"text_to_text": "text", "chat": "dialog"}
    group = groups.get(tasks[0], "image_text" if "image" in tasks[0] else "speech_text")
    recipe = parse_recipe({"name": "t", "data_root": str(root),
                           "tokenizers": {"text": {"path": str(bpe), "stand_in": True},
                                          "image": {"kind": "standin"}, "speech": {"kind": "standin"}},
                           "sources": [{"name": reader, "reader": reader, "path": path, "tasks": tasks,
                                        "options": options or {}}],
                           "filters": filters or {}, "mixing": {"ratio": {group: 1}}})
    s = recipe.sources[0]
    tok = load_tokenizers(recipe.tokenizers)
    out = {"read": 0, "written": 0, "rejected": {}, "dropped_turns": 0, "rows": [], "rejects": [], "units": 0}
    for u in READERS[s.reader](s.name, recipe.resolve(s.path), s.options).units():
        r = process_unit(recipe, s, u, tok)
        out["units"] += 1
        for k in ("read", "written", "dropped_turns"):
            out[k] += getattr(r.stats, k)
        for k, v in r.stats.rejected.items():
            out["rejected"][k] = out["rejected"].get(k, 0) + v
        out["rows"] += r.rows
        out["rejects"] += r.rejects
    out["tok"] = tok
    return out


def unit_level(expect: dict) -> dict:
    """A build's expected counts as each unit sees them: duplicates across units are only found at mix time."""
    rejected = dict(expect["rejected"])
    dup = rejected.pop("duplicate", 0)
    return {"read": expect["read"], "written": expect["written"] + dup, "rejected": rejected}
