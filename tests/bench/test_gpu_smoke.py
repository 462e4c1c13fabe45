"""bench/gpu.sh --smoke: every section of the GPU benchmark (VQGAN per precision, batched WavTokenizer, a pooled
`aromni build` with the GPU sampler, TTS through `aromni infer --stream`) runs end to end on CPU at tiny sizes, so
the script a GPU machine will run in one call does not rot. The numbers are meaningless; the table's rows are not."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_bench_smoke_runs_every_section(tmp_path):
    env = {**os.environ, "PYTHON": str(REPO / ".venv" / "bin" / "python"), "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([str(REPO / "bench" / "gpu.sh"), "--smoke", "--workdir", str(tmp_path)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = [line for line in r.stdout.splitlines() if line.startswith("| ")]
    rows = {line.split("|")[1].strip(): line for line in table[1:]}
    for prec in ("fp32", "tf32", "bf16"):
        for bs in (1, 2):
            assert f"vqgan {prec} batch {bs}" in rows
    assert "codes = fp32 100.0%" in rows["vqgan tf32 batch 2"]          # tf32 is fp32 on CPU
    assert "codes = batch 1 100.0%" in rows["wavtokenizer fp32 batch 2"]  # batched speech codes = one by one
    build = next(k for k in rows if k.startswith("build demo x1"))
    assert "precision fp32" in rows[build] and "end to end vs bare encode" in rows
    assert "GPU busy during the build" in rows
    assert any(k.startswith("tts tiny") and "FTL" in v and "RTF" in v for k, v in rows.items())
