"""DEMAND noise trees: scan one (what is usable, what is not and why), and write a DEMAND-format STAND-IN for the demo.

DEMAND (Thiemann et al. 2013) is ``{ENV}/ch01.wav … ch16.wav``: 16 microphone channels of one environment, 16 kHz or
48 kHz (SCAFE exists at 48 kHz only). ``scan_demand`` accepts any rate (the noise step resamples), and reports a
missing channel file, an unreadable one, or one shorter than ``min_seconds`` as a *problem* (kept in the step's stats)
instead of failing; only a tree with no usable file for the requested environments is an error.
Real DEMAND recordings cannot be downloaded on the build machine, so ``write_demo_noise`` makes babble in the same
layout from real material (several espeak-ng voices speaking the Harvard sentences, mixed) and says so in
``STAND_IN.txt``: every noise record made from such a tree carries ``stand_in: true``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aromni.voice.espeak import espeak_speak
from aromni.voice.harvard import HARVARD

ENVIRONMENTS = ("DKITCHEN", "DLIVING", "DWASHING", "NFIELD", "NPARK", "NRIVER", "OHALLWAY", "OMEETING", "OOFFICE",
                "PCAFETER", "PRESTO", "PSTATION", "SCAFE", "SPSQUARE", "STRAFFIC", "TBUS", "TCAR", "TMETRO")
INDOOR = tuple(e for e in ENVIRONMENTS if e[0] in "DO")  # the paper mixes user speech with indoor DEMAND noises
STAND_IN_MARK = "STAND_IN.txt"


class DemandError(ValueError):
    """A noise tree that cannot be used at all."""


@dataclass(frozen=True)
class NoiseFile:
    env: str
    channel: int
    path: Path
    rate: int
    seconds: float

    @property
    def name(self) -> str:
        return f"{self.env}/{self.path.name}"


@dataclass
class DemandTree:
    root: Path
    files: list[NoiseFile]
    problems: list[str] = field(default_factory=list)
    stand_in: bool = False


def scan_demand(root: str | Path, environments=INDOOR, channels=range(1, 17), min_seconds: float = 1.0) -> DemandTree:
    import soundfile as sf
    root = Path(root)
    if not root.is_dir():
        raise DemandError(f"DEMAND folder {root} does not exist (expected {root}/{{ENV}}/ch01.wav … ch16.wav)")
    unknown = sorted(set(environments) - set(ENVIRONMENTS))
    if unknown:
        raise DemandError(f"unknown DEMAND environment(s) {unknown}; allowed: {list(ENVIRONMENTS)}")
    files, problems = [], []
    for env in environments:
        d = root / env
        if not d.is_dir():
            problems.append(f"{env}: folder missing")
            continue
        for ch in channels:
            p = d / f"ch{ch:02d}.wav"
            if not p.is_file():
                problems.append(f"{env}/{p.name}: missing")
                continue
            try:
                info = sf.info(p)
            except Exception as e:  # noqa: BLE001 - libsndfile raises several types for broken files
                problems.append(f"{env}/{p.name}: unreadable ({type(e).__name__})")
                continue
            seconds = info.frames / info.samplerate if info.samplerate else 0.0
            if seconds < min_seconds:
                problems.append(f"{env}/{p.name}: {seconds:.2f} s is shorter than {min_seconds} s")
                continue
            files.append(NoiseFile(env, ch, p, int(info.samplerate), seconds))
    if not files:
        raise DemandError(f"no usable noise file in {root} for {list(environments)}: " + "; ".join(problems[:8]))
    return DemandTree(root, files, problems, stand_in=(root / STAND_IN_MARK).exists())


def write_demo_noise(out: str | Path, environments=("DLIVING", "OMEETING", "OOFFICE"), seconds: float = 6.0,
                     rate: int = 16000, talkers: int = 6) -> Path:
    """A DEMAND-format STAND-IN: per environment 16 channels of babble mixed from ``talkers`` espeak-ng voices."""
    import soundfile as sf
    import soxr


    out = Path(out)
    voices = ["en-us", "en-gb", "en-us+f3", "en-gb-x-rp", "en-us+m3", "en-029", "en-gb-scotland", "en-us+f2"]
    n = int(seconds * rate)
    clips = []
    for i in range(max(talkers, 2) * 2):  # each talker says two sentences, end to end
        x, sr = espeak_speak(HARVARD[i % len(HARVARD)], voices[i % len(voices)], rate=150 + 10 * (i % 4))
        clips.append(soxr.resample(x, sr, rate).astype(np.float32))
    for e, env in enumerate(environments):
        (out / env).mkdir(parents=True, exist_ok=True)
        for ch in range(1, 17):
            rng = np.random.default_rng([e, ch])  # each channel its own mix; the same on every run
            mix = np.zeros(n, np.float32)
            for t in range(talkers):
                talk = np.concatenate([clips[(2 * t + k + e) % len(clips)] for k in range(2)])
                talk = np.tile(talk, int(np.ceil(2 * n / len(talk))))
                start = int(rng.integers(0, len(talk) - n))
                mix += float(rng.uniform(0.3, 1.0)) * talk[start:start + n]
            mix *= 0.3 / max(float(np.abs(mix).max()), 1e-6)
            sf.write(out / env / f"ch{ch:02d}.wav", mix, rate, subtype="PCM_16")
    (out / STAND_IN_MARK).write_text(
        "stand_in: true\nNOT DEMAND. A DEMAND-format stand-in made by aromni.voice.demand.write_demo_noise: babble of "
        f"{talkers} espeak-ng voices (Harvard sentences) per channel, {seconds} s at {rate} Hz, for the environments "
        f"{', '.join(environments)}. Real DEMAND recordings cannot be downloaded on the build machine; point the noise "
        "step's `path` at the real corpus for real builds.\n")
    return out
