"""A hostile corpus, made by code in the sources' real formats: a LAION webdataset tar (+ img2dataset sidecar) full of
broken and odd images, a GigaSpeech parquet with broken and odd audio, an Ultra-FineWeb parquet with bad text, and
files that are broken as a whole (truncated tar, tar escape attempts, parquet without its columns, junk).

``CASES`` is the matrix: kind -> (source, key, expectation). An expectation is ``("reject", reason)`` or
``("repair", check)`` where ``check(meta, row)`` says what the repair must have recorded in the row.
"""
from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
from PIL import Image

from robust_corpus import write_tar

SR = 16000


# ---- images -----------------------------------------------------------------------------------------------------
def _photo(w=96, h=64) -> Image.Image:
    """A small picture with structure (gradients), so every variant below is a real image, not a flat colour."""
    y, x = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], -1).astype(np.uint8))


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def jpeg(img=None, **kw) -> bytes:
    return _save(img or _photo(), "JPEG", quality=90, **kw)


def cmyk_jpeg() -> bytes:
    return jpeg(_photo().convert("CMYK"))


def palette_png_transparent() -> bytes:
    p = _photo().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return _save(p, "PNG", transparency=0)


def png16() -> bytes:
    a = (np.add.outer(np.arange(64), np.arange(96)) * 300).astype(np.uint16)
    return _save(Image.fromarray(a), "PNG")


def animated(fmt: str) -> bytes:
    frames = [_photo().rotate(20 * i) for i in range(3)]
    return _save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    return jpeg(_photo(96, 64), exif=exif.tobytes())


def bomb_png(side: int = 30000) -> bytes:
    """A valid 1-bit PNG of side x side pixels (900 megapixels) that is ~100 KB on disk: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


# ---- audio ------------------------------------------------------------------------------------------------------
def tone(seconds=1.0, sr=SR, amp=0.3, f=220.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * f * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def encode(x, sr=SR, fmt="WAV", subtype=None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def clipped_wav() -> bytes:
    return encode(np.clip(tone(amp=3.0), -1.0, 1.0), subtype="PCM_16")   # flat tops at full scale


def nan_wav() -> bytes:
    x = tone()
    x[1000:1010] = np.nan
    return encode(x, subtype="FLOAT")


def truncated_wav() -> bytes:
    w = encode(tone(2.0))
    return w[: len(w) // 3]        # the header still promises 2 s


# ---- files ------------------------------------------------------------------------------------------------------
def wav_claiming(data_size: int, riff_size: int | None = None) -> bytes:
    """A 1 s WAV whose data chunk (and optionally RIFF) size claims ``data_size`` bytes: what a writer that died or
    never patched its header leaves. libsndfile decodes the second that is there."""
    w = bytearray(encode(tone(1.0)))
    i = w.index(b"data")
    w[i + 4:i + 8] = data_size.to_bytes(4, "little")
    if riff_size is not None:
        w[4:8] = riff_size.to_bytes(4, "little")
    return bytes(w)


def _meta(key: str, caption: str, **extra) -> bytes:
    return json.dumps({"key": key, "caption": caption, "status": "success", "url": f"https://example.org/{key}",
                       **extra}).encode()


GOOD_CAPTION = "A colourful gradient picture used as a test image"
LONG_CAPTION = " ".join(["word%d" % i for i in range(3000)])


def laion_members() -> list[tuple[str, bytes] | tarfile.TarInfo]:
    """(name, payload) members of the hostile LAION tar, in order."""
    def item(key, img, caption=GOOD_CAPTION, ext="jpg", meta=None):
        out = [(f"{key}.{ext}", img)] if img is not None else []
        if caption is not None:
            out.append((f"{key}.txt", caption if isinstance(caption, bytes) else caption.encode()))
        out.append((f"{key}.json", meta if meta is not None else _meta(key, caption if isinstance(caption, str) else "")))
        return out
    good = jpeg()
    m: list = []
    m += item("ok_plain", good)
    m += item("jpeg_truncated", good[: len(good) // 2])
    m += item("jpeg_zero_byte", b"")
    m += item("jpeg_not_an_image", b"<html><body>404 Not Found</body></html>")
    m += item("cmyk", cmyk_jpeg(), "A CMYK picture from a print workflow")
    m += item("palette_transparent", palette_png_transparent(), "A palette picture with transparency", "png")
    m += item("png_16bit", png16(), "A sixteen bit greyscale gradient", "png")
    m += item("tiny_1x1", jpeg(Image.new("RGB", (1, 1), (255, 0, 0))))
    m += item("bomb_30000", bomb_png(), ext="png")
    # img2dataset --resize_mode no keeps the original bytes under the configured extension: a GIF named .jpg
    m += item("gif_animated", animated("GIF"), "An animated picture in three frames", "jpg")
    m += item("webp_animated", animated("WEBP"), "An animated webp in three frames", "webp")
    m += item("exif_rotated", exif_rotated_jpeg(), "A photo taken with the camera turned sideways")
    m += item("missing_image", None)
    m += item("json_malformed", jpeg(_photo(80, 80)), meta=b'{"key": "json_malformed", "caption": ')
    m += item("caption_empty", jpeg(_photo(90, 70)), "")
    m += item("caption_whitespace", jpeg(_photo(70, 90)), " \t\n  ")
    m += item("caption_control_chars", jpeg(_photo(88, 66)), "A red\x00 car\x07 parked\x1b by the\x7f road")
    m += item("caption_not_utf8", jpeg(_photo(66, 88)), b"Caf\xe9 \xff\xfe au lait")
    m += item("caption_overlong", jpeg(_photo(77, 77)), LONG_CAPTION)
    m += item("dup_key", jpeg(_photo(100, 60)), "The first picture with this key")
    m += item("ok_second", jpeg(_photo(60, 100)), "Another plain picture between the duplicates")
    m += item("dup_key", jpeg(_photo(120, 50)), "The second picture with the same key")
    m += [("../escape_parent.jpg", good), ("/tmp/aromni_escape_absolute.jpg", good)]
    link = tarfile.TarInfo("symlink_passwd.jpg")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    hard = tarfile.TarInfo("hardlink_ok.jpg")
    hard.type, hard.linkname = tarfile.LNKTYPE, "ok_plain.jpg"
    m += [link, hard]
    # a sample whose image is a link but whose caption and metadata are fine: one sample, one reject
    captioned = tarfile.TarInfo("link_with_caption.jpg")
    captioned.type, captioned.linkname = tarfile.SYMTYPE, "/etc/passwd"
    m += [captioned, ("link_with_caption.txt", GOOD_CAPTION.encode()),
          ("link_with_caption.json", _meta("link_with_caption", GOOD_CAPTION))]
    return m


def write_laion(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    with tarfile.open(d / "00000.tar", "w", format=tarfile.GNU_FORMAT) as tf:
        for member in laion_members():
            if isinstance(member, tarfile.TarInfo):
                tf.addfile(member)
                continue
            name, payload = member
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime = len(payload), 0
            tf.addfile(ti, io.BytesIO(payload))
    # img2dataset's sidecar: one failed download, and one "success" whose files are not in the tar.
    rows = [{"key": "listed_not_in_tar", "status": "success", "error_message": None},
            {"key": "download_failed", "status": "failed_to_download", "error_message": "HTTP Error 404"}]
    pq.write_table(pa.Table.from_pylist(rows), d / "00000.parquet")
    # A tar cut in the middle of a member (a copy that died), and a file that is not a tar at all.
    good = [(f"trunc_{i}.jpg", jpeg(_photo(64 + i, 64))) for i in range(3)] + \
           [(f"trunc_{i}.txt", GOOD_CAPTION.encode()) for i in range(3)]
    good.sort()
    write_tar(d / "00001.tar", good)
    with tarfile.open(d / "00001.tar") as tf:
        cut = next(m.offset_data + m.size // 2 for m in tf.getmembers() if m.name == "trunc_1.jpg")
    raw = (d / "00001.tar").read_bytes()
    (d / "00001.tar").write_bytes(raw[:cut])   # dies inside trunc_1.jpg
    (d / "00002.tar").write_bytes(b"this is not a tar archive\n" * 40)
    # A shard that is broken wholesale (101 empty images in a row): the circuit breaker stops it at the default 100.
    write_tar(d / "00003.tar", [m for i in range(101) for m in ((f"empty{i:03d}.jpg", b""),
                                                               (f"empty{i:03d}.txt", b"caption %d" % i))])


GIGA_SCHEMA = pa.schema([("segment_id", pa.string()), ("text", pa.string()),
                         ("audio", pa.struct([("bytes", pa.binary()), ("path", pa.string())]))])
TRANSCRIPT = "THE BIRCH CANOE SLID ON THE SMOOTH PLANKS <PERIOD>"


def giga_rows() -> list[dict]:
    def row(seg, audio, text=TRANSCRIPT, path=None):
        return {"segment_id": seg, "text": text,
                "audio": None if audio is None else {"bytes": audio, "path": path or f"{seg}.wav"}}
    mp3 = encode(tone(1.0), fmt="MP3")
    return [
        row("ok_speech", encode(tone(1.0))),
        row("audio_empty_bytes", b""),
        row("audio_missing", None),
        row("audio_garbage", b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(range(256)) * 4),
        row("audio_silent", encode(np.zeros(SR, np.float32))),
        row("audio_clipped", clipped_wav(), "FRONT LEFT <PERIOD>"),
        row("audio_stereo", encode(np.stack([tone(1.0), tone(1.0, f=330.0)], 1)), "FRONT RIGHT <PERIOD>"),
        row("audio_8khz", encode(tone(1.0, sr=8000), sr=8000), "REAR LEFT <PERIOD>"),
        row("audio_48khz", encode(tone(1.0, sr=48000), sr=48000), "REAR RIGHT <PERIOD>"),
        row("audio_nan", nan_wav(), "SIDE LEFT <PERIOD>"),
        row("audio_truncated", truncated_wav(), "SIDE RIGHT <PERIOD>"),
        # 10 hours at 16 kHz, 16 bit claimed in the data chunk; the RIFF size is the true one
        row("audio_data_chunk_10h", wav_claiming(10 * 3600 * SR * 2, riff_size=len(encode(tone(1.0))) - 8),
            "THE DATA CHUNK SAYS TEN HOURS <PERIOD>"),
        row("audio_data_chunk_ffffffff", wav_claiming(0xFFFFFFFF), "A HEADER NEVER PATCHED <PERIOD>"),
        row("audio_riff_and_data_ffffffff", wav_claiming(0xFFFFFFFF, riff_size=0xFFFFFFFF),
            "BOTH SIZES ARE PLACEHOLDERS <PERIOD>"),
        row("audio_mp3_named_wav", mp3, "GLUE THE SHEET TO THE DARK BLUE BACKGROUND <PERIOD>", path="x.wav"),
        row("audio_overlong", encode(tone(45.0)), "IT'S EASY TO TELL THE DEPTH OF A WELL <PERIOD>"),
        row("audio_too_short", encode(tone(0.05)), "RICE IS OFTEN SERVED IN ROUND BOWLS <PERIOD>"),
        row("transcript_garbage_only", encode(tone(1.0, f=180.0)), "<SIL> <NOISE>"),
        row("dup_segment", encode(tone(1.0, f=400.0)), "THE JUICE OF LEMONS MAKES FINE PUNCH <PERIOD>"),
        row("dup_segment", encode(tone(1.0, f=500.0)), "THE BOX WAS THROWN BESIDE THE PARKED TRUCK <PERIOD>"),
    ]


def write_gigaspeech(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(giga_rows(), schema=GIGA_SCHEMA), d / "train-00000.parquet")
    # A parquet file of the source that lacks the audio column, and junk named .parquet.
    pq.write_table(pa.table({"segment_id": ["no_audio_col"], "text": [TRANSCRIPT]}), d / "train-00001.parquet")
    (d / "train-00002.parquet").write_bytes(b"PAR1 but not really" * 10)


UFW_DOCS = {
    "ok_doc": "Plain English prose about rivers and the sea, long enough to be a document of its own.",
    "text_empty": "",
    "text_whitespace": " \n\t \r\n ",
    "text_control_chars": "Text with\x00 control\x01 characters\x1f inside\x7f it, which a user expects cleaned.",
    "text_overlong": " ".join(f"token{i}" for i in range(6000)),
}


def ufw_key(name: str | None) -> str:
    """Ultra-FineWeb rows are keyed file:row; None is the null document after the named ones."""
    return f"part-00000:{len(UFW_DOCS) if name is None else list(UFW_DOCS).index(name)}"


def write_ultrafineweb(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    docs = list(UFW_DOCS.values()) + [None]
    t = pa.table({"content": pa.array(docs, pa.string()), "score": [0.9] * len(docs), "source": ["t"] * len(docs)})
    pq.write_table(t, d / "part-00000.parquet")
    # Bytes that are not UTF-8 in a string column (a corrupt writer): pyarrow refuses to decode them.
    bad = pa.array([b"fine text in a row of its own", b"Caf\xe9 \xff\xfe broken", b"more fine text"], pa.binary())
    pq.write_table(pa.table({"content": bad.view(pa.string()), "score": [0.9] * 3}), d / "part-00001.parquet")


CHAT_LINES = {
    "ok_chat": b'{"id": "ok_chat", "data": ["Hello there, how are you today?", "I am fine, thank you for asking."]}',
    "jsonl_malformed": b'{"id": "broken", "data": ["an unterminated',
    "jsonl_not_an_object": b'["a", "list", "is", "not", "a", "record"]',
    "jsonl_not_utf8": b'{"id": "latin1", "data": ["Caf\xe9 au lait?", "Oui."]}',
    "chat_data_not_a_list": b'{"id": "chat_data_not_a_list", "data": "just one string"}',
    "chat_no_turns": b'{"id": "chat_no_turns", "data": []}',
}


def line_key(name: str) -> str:
    """UltraChat lines without a usable id are keyed by the hash of the raw line."""
    import hashlib
    return hashlib.sha1(CHAT_LINES[name]).hexdigest()[:16]


def write_ultrachat(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "train_0.jsonl").write_bytes(b"\n".join(CHAT_LINES.values()) + b"\n")


def write_corpus(root: Path) -> Path:
    write_ultrachat(root / "ultrachat")
    write_laion(root / "laion")
    write_gigaspeech(root / "gigaspeech")
    write_ultrafineweb(root / "ultrafineweb")
    return root


# ---- the matrix -------------------------------------------------------------------------------------------------
def _has(key, value=True):
    return lambda meta, row: meta.get(key) == value


CASES: dict[str, tuple[str, str, tuple]] = {
    # images (LAION tar)
    "jpeg_truncated": ("laion", "jpeg_truncated", ("reject", "bad_image")),
    "jpeg_zero_byte": ("laion", "jpeg_zero_byte", ("reject", "bad_image")),
    "jpeg_not_an_image": ("laion", "jpeg_not_an_image", ("reject", "bad_image")),
    "image_cmyk": ("laion", "cmyk", ("repair", lambda m, r: m["image"]["mode"] == "CMYK")),
    "image_palette_transparency": ("laion", "palette_transparent", ("repair", lambda m, r: m["image"]["mode"] == "P")),
    "image_png_16bit": ("laion", "png_16bit", ("repair", lambda m, r: m["image"]["mode"].startswith("I;16"))),
    "image_1x1": ("laion", "tiny_1x1", ("reject", "image_too_small")),
    "image_decompression_bomb": ("laion", "bomb_30000", ("reject", "image_too_large")),
    "image_gif_animated": ("laion", "gif_animated", ("repair", lambda m, r: m["image"]["frames"] == 3)),
    "image_webp_animated": ("laion", "webp_animated", ("repair", lambda m, r: m["image"]["frames"] == 3)),
    "image_exif_rotated": ("laion", "exif_rotated",
                           ("repair", lambda m, r: m["image"]["exif_transposed"] and m["image"]["size"] == [64, 96])),
    # captions and metadata (LAION tar / sidecar)
    "metadata_missing_image_file": ("laion", "missing_image", ("reject", "missing_file")),
    "metadata_success_not_in_tar": ("laion", "listed_not_in_tar", ("reject", "missing_file")),
    "metadata_malformed_json": ("laion", "json_malformed", ("reject", "bad_metadata")),
    "caption_empty": ("laion", "caption_empty", ("reject", "empty_text")),
    "caption_whitespace": ("laion", "caption_whitespace", ("reject", "empty_text")),
    "caption_control_chars": ("laion", "caption_control_chars",
                              ("repair", lambda m, r: m["caption"] and "\x00" not in r["text"])),
    "caption_not_utf8": ("laion", "caption_not_utf8", ("reject", "bad_text")),
    "sample_overlong": ("laion", "caption_overlong", ("reject", "too_long")),
    "duplicate_id_in_tar": ("laion", "dup_key@2", ("reject", "duplicate_id")),
    # tar structure
    # a refused member is its sample's one reject, keyed like every LAION sample (the member's stem)
    "tar_member_parent_path": ("laion", "escape_parent", ("reject", "bad_path")),
    "tar_member_absolute_path": ("laion", "aromni_escape_absolute", ("reject", "bad_path")),
    "tar_member_symlink": ("laion", "symlink_passwd", ("reject", "bad_tar_member")),
    "tar_member_hardlink": ("laion", "hardlink_ok", ("reject", "bad_tar_member")),
    "tar_member_link_with_caption": ("laion", "link_with_caption", ("reject", "bad_tar_member")),
    "tar_truncated": ("laion", "trunc_1", ("reject", "truncated_tar")),
    "tar_not_a_tar": ("laion", "00002.tar", ("reject", "unreadable_file")),
    # audio (GigaSpeech parquet)
    "audio_empty_bytes": ("gigaspeech", "audio_empty_bytes", ("reject", "missing_audio")),
    "audio_missing": ("gigaspeech", "audio_missing", ("reject", "missing_audio")),
    "audio_garbage": ("gigaspeech", "audio_garbage", ("reject", "bad_audio")),
    "audio_silent": ("gigaspeech", "audio_silent", ("reject", "silent_audio")),
    "audio_clipped": ("gigaspeech", "audio_clipped", ("repair", lambda m, r: m["audio"]["clipped_fraction"] > 0.01)),
    "audio_stereo": ("gigaspeech", "audio_stereo", ("repair", lambda m, r: m["audio"]["channels"] == 2)),
    "audio_8khz": ("gigaspeech", "audio_8khz", ("repair", lambda m, r: m["audio"]["sample_rate"] == 8000)),
    "audio_48khz": ("gigaspeech", "audio_48khz", ("repair", lambda m, r: m["audio"]["sample_rate"] == 48000)),
    "audio_nan": ("gigaspeech", "audio_nan", ("reject", "bad_audio")),
    "audio_truncated": ("gigaspeech", "audio_truncated", ("reject", "truncated_audio")),
    "audio_data_chunk_10h": ("gigaspeech", "audio_data_chunk_10h", ("reject", "truncated_audio")),
    "audio_data_chunk_ffffffff": ("gigaspeech", "audio_data_chunk_ffffffff", ("reject", "truncated_audio")),
    "audio_riff_and_data_ffffffff": ("gigaspeech", "audio_riff_and_data_ffffffff", ("reject", "truncated_audio")),
    "audio_mp3_named_wav": ("gigaspeech", "audio_mp3_named_wav",
                            ("repair", lambda m, r: m["audio"]["format"] == "MP3")),
    "audio_overlong": ("gigaspeech", "audio_overlong", ("reject", "audio_too_long")),
    "audio_too_short": ("gigaspeech", "audio_too_short", ("reject", "audio_too_short")),
    "transcript_garbage_only": ("gigaspeech", "transcript_garbage_only", ("reject", "garbage_only")),
    "duplicate_id_in_parquet": ("gigaspeech", "dup_segment@2", ("reject", "duplicate_id")),
    "parquet_missing_columns": ("gigaspeech", "train-00001.parquet#0", ("reject", "missing_columns")),
    "parquet_not_parquet": ("gigaspeech", "train-00002.parquet", ("reject", "unreadable_file")),
    # text (Ultra-FineWeb parquet)
    "text_empty": ("ultrafineweb", ufw_key("text_empty"), ("reject", "empty_text")),
    "text_whitespace": ("ultrafineweb", ufw_key("text_whitespace"), ("reject", "empty_text")),
    "text_null": ("ultrafineweb", ufw_key(None), ("reject", "empty_text")),
    "text_control_chars": ("ultrafineweb", ufw_key("text_control_chars"),
                           ("repair", lambda m, r: "\x00" not in r["text"] and "characters inside" in r["text"])),
    "text_overlong": ("ultrafineweb", ufw_key("text_overlong"), ("reject", "too_long")),
    "text_not_utf8": ("ultrafineweb", "part-00001.parquet#0:row1", ("reject", "bad_text")),
    # dialogs (UltraChat jsonl)
    "jsonl_malformed_line": ("ultrachat", line_key("jsonl_malformed"), ("reject", "bad_metadata")),
    "jsonl_not_an_object": ("ultrachat", line_key("jsonl_not_an_object"), ("reject", "bad_metadata")),
    "jsonl_not_utf8": ("ultrachat", line_key("jsonl_not_utf8"), ("reject", "bad_text")),
    "dialog_data_not_a_list": ("ultrachat", "chat_data_not_a_list", ("reject", "bad_dialog")),
    "dialog_no_turns": ("ultrachat", "chat_no_turns", ("reject", "bad_dialog")),
}
