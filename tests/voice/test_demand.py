"""The demo's DEMAND-format noise: the real layout, real (espeak-ng) babble, reproducible, and flagged as a stand-in."""
from __future__ import annotations

import hashlib

import numpy as np
import soundfile as sf

from aromni.voice.demand import INDOOR, scan_demand, write_demo_noise


def test_demo_noise_has_the_demand_layout_and_says_it_is_not_demand(tmp_path):
    root = write_demo_noise(tmp_path / "a", environments=("OOFFICE", "DLIVING"), seconds=2.0)
    assert sorted(p.name for p in root.iterdir()) == ["DLIVING", "OOFFICE", "STAND_IN.txt"]
    assert sorted(p.name for p in (root / "OOFFICE").iterdir()) == [f"ch{c:02d}.wav" for c in range(1, 17)]
    assert "NOT DEMAND" in (root / "STAND_IN.txt").read_text()
    tree = scan_demand(root, INDOOR)
    assert tree.stand_in and len(tree.files) == 32 and {f.rate for f in tree.files} == {16000}
    assert all(abs(f.seconds - 2.0) < 1e-3 for f in tree.files)
    x1, _ = sf.read(root / "OOFFICE" / "ch01.wav")
    x2, _ = sf.read(root / "OOFFICE" / "ch02.wav")
    assert 0.05 < np.abs(x1).max() <= 0.31 and np.sqrt(np.mean(x1 ** 2)) > 0.01   # babble, not silence
    assert not np.array_equal(x1, x2)                                               # each channel its own mix
    again = write_demo_noise(tmp_path / "b", environments=("OOFFICE", "DLIVING"), seconds=2.0)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(root / "DLIVING" / "ch09.wav") == digest(again / "DLIVING" / "ch09.wav")
