"""AnyInstruct (fnlp/AnyInstruct, the AnyGPT instruction dialogs): speech_conv and the part1/part2 multimodal layout."""
from __future__ import annotations

import hashlib
import json
import tarfile
from typing import Iterator

from pydantic import Field

from aromni.io import paths
from aromni.pipeline.readers.base import Example, Reader, Rejected, Turn, Unit, register
from aromni.pipeline.readers.files import (MiB, LineOptions, MemberRefused, array_units, iter_array, json_lines,
                                           line_units, tar_index, unsafe_name)

ROLES = {"user": "user", "human": "user", "anygpt": "assistant", "assistant": "assistant", "gpt": "assistant"}
TARS = {"speech": ("speech.tar",), "image": ("images_224.tar", "images.tar"), "music": ("music.tar",)}


class AnyInstructOptions(LineOptions):
    unit_bytes: int = Field(1 * MiB, ge=1, description="speech_conv: bytes of metadata.jsonl per unit (~1,000 "
                                                        "dialogs; each has several clips to tokenize)")
    dialogs_per_unit: int = Field(500, ge=1, description="part1/part2: dialogs of metadata.json per unit")


@register
class AnyInstructReader(Reader):
    name = "anyinstruct"
    layout_doc = """AnyInstruct (HF fnlp/AnyInstruct), any of its subsets, or the root holding them:
    speech_conv/metadata.jsonl  one dialog per line: {"chat": [{"role": "USER", "message": "...",
                                "speech": "chunk_00000/0001.mp3"}, {"role": "AnyGPT", "message": "...",
                                "speech": "chunk_00000/0002.mp3"}, ...]}
    speech_conv/speech.tar      the mp3 clips, looked up by the path in "speech" (uncompressed tar, random access)
    part1/, part2/              metadata.json (a JSON array of the same {"chat": [...]} dialogs) + images_224.tar,
                                speech.tar, music.tar; a message names its media by member path in "speech" / "image"
                                / "music" (inferred from the card). Music is not an AR-Omni modality: such dialogs
                                are rejected as unsupported_modality.
    role USER -> user, AnyGPT -> assistant. The user's message is the transcript of the user's speech (it becomes the
    <-Ins-> text), the assistant's message the reply. Task: chat.
    Units: byte ranges of metadata.jsonl (options.unit_bytes), runs of options.dialogs_per_unit dialogs of metadata.json.
    path: the AnyInstruct root, or one subset folder."""
    Options = AnyInstructOptions
    carries = frozenset({"dialog", "text", "speech", "image"})

    def files(self) -> list[str]:
        self.require()
        p = self.path
        if paths.isfile(p):
            return [p]
        names = ("metadata.jsonl", "metadata.json")
        found = [f for f, is_dir in paths.list_dir(p) if not is_dir and paths.name(f) in names]
        for sub, is_dir in paths.list_dir(p):
            if is_dir:
                found += [f for f, d in paths.list_dir(sub) if not d and paths.name(f) in names]
        return sorted(set(found))

    def units(self) -> list[Unit]:
        out = []
        for f in self.files():
            if paths.suffix(f) == ".jsonl":
                out += line_units(self.source, f, self.opts.unit_bytes)
            else:
                out += array_units(self.source, f, None, self.opts.dialogs_per_unit)
        return out

    def read(self, unit: Unit) -> Iterator[Example | Rejected]:
        meta = unit.path
        subset = paths.name(paths.parent(meta))
        if paths.suffix(meta) == ".jsonl":
            for item in json_lines(meta, unit.part or 0, self.opts.unit_bytes, f"{subset}/"):
                if isinstance(item, Rejected):
                    yield item
                else:
                    off, key, rec = item
                    yield self._dialog(rec, key, meta, f"{meta}@{off}")
        else:
            try:
                for rec in iter_array(meta, unit.part or 0, self.opts.dialogs_per_unit):
                    digest = hashlib.sha1(json.dumps(rec, sort_keys=True).encode()).hexdigest()[:16]
                    yield self._dialog(rec, f"{subset}/{digest}", meta, str(meta))
            except ValueError as e:
                yield Rejected(unit.label, "bad_metadata", f"{meta}: {e}")

    def _dialog(self, rec, key: str, meta: str, where: str) -> Example | Rejected:
        folder = paths.parent(meta)
        subset = paths.name(folder)
        if isinstance(rec, dict) and rec.get("id") is not None:
            key = f"{subset}/{rec['id']}"
        chat = rec.get("chat") if isinstance(rec, dict) else None
        if not isinstance(chat, list) or not chat:
            return Rejected(key, "bad_dialog", f"{where}: no 'chat' list")
        turns = []
        for i, msg in enumerate(chat):
            if not isinstance(msg, dict):
                return Rejected(key, "bad_dialog", f"message {i} is not an object")
            role = ROLES.get(str(msg.get("role", "")).lower())
            if role is None:
                return Rejected(key, "bad_dialog", f"message {i}: unknown role {msg.get('role')!r}")
            if msg.get("music"):
                return Rejected(key, "unsupported_modality", f"message {i} has music ({msg['music']}): AR-Omni has "
                                                             f"no music tokens")
            turn = Turn(role, str(msg.get("message") or ""))
            for kind in ("speech", "image"):
                name = msg.get(kind)
                if not name:
                    continue
                if unsafe_name(str(name)):  # "../x" or "/etc/x": refused whatever the tar holds
                    return Rejected(key, "bad_path", f"message {i}: {kind} {name!r} leaves {folder}")
                try:
                    data = self._member(folder, kind, str(name))
                except MemberRefused as e:
                    return Rejected(key, e.reason, f"message {i}: {e.message}")
                except (OSError, tarfile.TarError) as e:
                    return Rejected(key, "unreadable_file", f"{folder}: {TARS[kind][0]}: {e}")
                if data is None:
                    return Rejected(key, "missing_audio" if kind == "speech" else "missing_file",
                                    f"message {i}: {name} is not in {folder}/{TARS[kind][0]}")
                if kind == "speech":
                    turn.audio = data
                else:
                    turn.image = data
                turn.meta[kind] = str(name)
            turns.append(turn)
        return Example(key=key, turns=turns, meta={"path": where, "subset": subset})

    def _member(self, folder: str, kind: str, name: str) -> bytes | None:
        for tar in TARS[kind]:
            p = paths.join(folder, tar)
            if paths.isfile(p):
                return tar_index(p).read(name, self.opts.max_file_bytes)
        return None
