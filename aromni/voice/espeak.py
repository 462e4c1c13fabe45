"""``espeak``: espeak-ng (Debian package ``espeak-ng``) as the offline fallback voice used by the demo and CI.

Deterministic (same text, same espeak-ng data -> same samples). Its "model sha256" is the hash of the espeak-ng
version line and of its phoneme/dictionary data, so an upgraded espeak-ng does not reuse old cache entries.
"""
from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np
from pydantic import Field

from aromni.voice.backend import SAMPLE_RATE, BackendOptions, VoiceBackend, VoiceError, register_backend


class EspeakOptions(BackendOptions):
    voice: str = Field("en-us", description="espeak-ng voice (espeak-ng --voices=en), e.g. en-us, en-gb, en-us+f3")
    rate: int = Field(160, ge=80, le=450, description="words per minute (-s)")
    pitch: int = Field(50, ge=0, le=99, description="pitch 0-99 (-p)")


def espeak_exe() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise VoiceError("espeak-ng is not installed (Debian package espeak-ng; `make install` installs it)")
    return exe


@lru_cache(maxsize=1)
def espeak_identity() -> str:
    exe = espeak_exe()
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    h = hashlib.sha256(version.encode())
    data = Path(version.split("Data at:")[-1].strip()) if "Data at:" in version else None
    for name in ("phontab", "phondata", "phonindex", "en_dict"):
        if data is not None and (data / name).is_file():
            h.update((data / name).read_bytes())
    return h.hexdigest()


def espeak_speak(text: str, voice: str = "en-us", rate: int = 160, pitch: int = 50) -> tuple[np.ndarray, int]:
    """Run espeak-ng on ``text`` (given on stdin, so a leading '-' is never an option); (float32 mono, rate)."""
    import soundfile as sf
    proc = subprocess.run([espeak_exe(), "-v", voice, "-s", str(rate), "-p", str(pitch), "-b", "1", "--stdout"],
                          input=text.encode("utf-8"), capture_output=True, timeout=120)
    if proc.returncode != 0 or not proc.stdout:
        raise VoiceError(f"espeak-ng failed (voice {voice!r}): {proc.stderr.decode(errors='replace').strip()[:300]}")
    wave, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    return (wave.mean(axis=1) if wave.ndim == 2 else wave), int(sr)


@register_backend
class EspeakBackend(VoiceBackend):
    name = "espeak"
    Options = EspeakOptions

    def model_sha256(self) -> str:
        return espeak_identity()

    def voice(self) -> str:
        o = self.opts
        return f"espeak-ng:{o.voice}:s{o.rate}:p{o.pitch}"

    def synthesise(self, text: str) -> np.ndarray:
        import soxr
        wave, sr = espeak_speak(text, self.opts.voice, self.opts.rate, self.opts.pitch)
        return soxr.resample(wave, sr, SAMPLE_RATE).astype(np.float32) if sr != SAMPLE_RATE else wave
