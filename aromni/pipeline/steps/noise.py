"""``noise``: mix DEMAND background noise into user speech (AR-Omni stage 2: noisy user speech for robustness).

Per speech segment, from the example's own generator (seeded by hash(seed, "noise", id)) in a fixed order:
apply? (``p``) -> noise file (environment/channel) -> SNR in ``snr_db`` -> offset into the noise file. Speech and noise
are brought to ``sample_rate`` (soxr for speech; audiomentations' loader for the noise), then audiomentations'
``AddBackgroundNoise`` mixes them with exactly those parameters (frozen, so the library's global ``random`` is never
used). A noise file shorter than the speech is looped (``looped: true``). If the mix clips, it is scaled down as a whole
(the SNR is unchanged). What was done is recorded as ``meta["noise"]`` of the segment: the turn's meta for dialogs (the row's
``meta["turns"][i]["noise"]``), the example's for single-turn ASR (``meta["noise"]``): ``env``, ``file``, ``offset_s``,
``snr_db``, ``sample_rate``, ``noise_rate`` (+ ``looped``, ``stand_in``), so a row can be re-made from its meta. ``keep_clean`` keeps the clean waveform beside the noisy one as ``speech_clean``.
"""
from __future__ import annotations

import warnings
from collections import Counter
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from aromni.pipeline.steps.base import Step, StepOptions, register_step
from aromni.voice.demand import INDOOR, NoiseFile, scan_demand


class NoiseOptions(StepOptions):
    path: str = Field(description="DEMAND root ({ENV}/ch01.wav … ch16.wav), relative to data_root")
    environments: list[str] = Field(list(INDOOR), description="DEMAND environments to draw from; default: indoor (D*, O*)")
    channels: list[int] = Field(list(range(1, 17)), description="channel files to use (1..16)")
    snr_db: tuple[float, float] = Field((5.0, 20.0), description="SNR range in dB, drawn uniformly")
    p: float = Field(1.0, ge=0.0, le=1.0, description="probability that a segment gets noise")
    targets: list[Literal["user_turns", "speech_to_text"]] = Field(
        ["user_turns"], description="user_turns: user speech in dialogs; speech_to_text: single-turn ASR inputs")
    sample_rate: int = Field(16000, description="speech and noise are mixed (and left) at this rate")
    keep_clean: bool = Field(False, description="keep the clean waveform as media `speech_clean` beside the noisy "
                                                  "one, for later steps (not tokenized into rows)")
    min_noise_seconds: float = Field(1.0, gt=0, description="noise files shorter than this are not used")

    @model_validator(mode="after")
    def _check(self):
        lo, hi = self.snr_db
        if lo > hi:
            raise ValueError(f"snr_db: low {lo} > high {hi}")
        bad = [c for c in self.channels if not 1 <= c <= 16]
        if bad or not self.channels:
            raise ValueError(f"channels must be a non-empty list of 1..16, got {self.channels}")
        if not self.environments:
            raise ValueError("environments must not be empty")
        return self


def add_noise(wave: np.ndarray, sr: int, noise: NoiseFile, snr_db: float, offset_s: float,
              rate: int = 16000) -> tuple[np.ndarray, dict]:
    """Speech + noise at ``snr_db`` from ``offset_s`` into ``noise``, at ``rate``. Returns (mix, info)."""
    import soxr
    from audiomentations import AddBackgroundNoise

    x = np.asarray(wave, dtype=np.float32)
    if sr != rate:
        x = soxr.resample(x, sr, rate).astype(np.float32)
    seconds = len(x) / rate
    t = AddBackgroundNoise(sounds_path=str(noise.path), min_snr_db=snr_db, max_snr_db=snr_db, p=1.0)
    t.parameters = {"should_apply": True, "snr_db": snr_db, "rms_db": 0.0, "noise_file_path": str(noise.path),
                    "offset": offset_s, "duration": seconds}
    t.freeze_parameters()
    with warnings.catch_warnings():  # "had to be resampled ... hurt execution time": expected for 48 kHz files
        warnings.simplefilter("ignore")
        y = t(x, rate)
    info: dict = {}
    peak = float(np.abs(y).max()) if len(y) else 0.0
    if peak > 1.0:
        y = y / peak
        info["peak_normalised_from"] = round(peak, 3)
    return y.astype(np.float32), info


@register_step
class NoiseStep(Step):
    name = "noise"
    Options = NoiseOptions

    def __init__(self, options, recipe=None):
        super().__init__(options, recipe)
        root = recipe.resolve(self.opts.path) if recipe is not None else self.opts.path
        self.tree = scan_demand(root, self.opts.environments, self.opts.channels, self.opts.min_noise_seconds)
        self.stats: Counter = Counter()
        if self.tree.problems:
            self.stats["tree_problems"] = len(self.tree.problems)

    def segments(self, example, media: dict):
        """(media dict holding 'speech', meta dict to record in) for every segment to noise, in a fixed order."""
        if "user_turns" in self.opts.targets and example.turns and media.get("turns"):
            for turn, m in zip(example.turns, media["turns"]):
                if turn.role == "user" and "speech" in m:
                    yield m, turn.meta
        if "speech_to_text" in self.opts.targets and example.task == "speech_to_text" and "speech" in media:
            yield media, example.meta

    def apply(self, example, media: dict, rng) -> None:
        o = self.opts
        for m, meta in self.segments(example, media):
            if rng.random() >= o.p:
                meta["noise"] = {"applied": False}
                self.stats["skipped_by_p"] += 1
                continue
            wave, sr = m["speech"]
            nf = self.tree.files[int(rng.integers(len(self.tree.files)))]
            snr = round(float(rng.uniform(*o.snr_db)), 2)
            seconds = len(wave) / sr
            looped = nf.seconds <= seconds
            offset = 0.0 if looped else round(float(rng.uniform(0.0, nf.seconds - seconds)), 4)
            noisy, info = add_noise(wave, sr, nf, snr, offset, o.sample_rate)
            if o.keep_clean:
                m["speech_clean"] = (wave, sr)
            m["speech"] = (noisy, o.sample_rate)
            rec = {"applied": True, "env": nf.env, "file": nf.name, "offset_s": offset, "snr_db": snr,
                   "sample_rate": o.sample_rate, "noise_rate": nf.rate, **info}
            if looped:
                rec["looped"] = True
            if self.tree.stand_in:
                rec["stand_in"] = True
            meta["noise"] = rec
            self.stats["noised"] += 1
            self.stats[f"env_{nf.env}"] += 1
