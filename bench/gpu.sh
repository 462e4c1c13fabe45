#!/usr/bin/env bash
# Issue 19's GPU measurements in one call (< 8 minutes on one H100/H200): VQGAN img/s per precision and batch,
# WavTokenizer audio-s/s batched, an `aromni build` on the GPU with its busy share, 7B-shaped TTS FTL/RTF.
# Installs nothing: it uses the venv `make install` made. Prints one markdown table at the end.
#   bench/gpu.sh              # on the GPU machine, from the repo root
#   bench/gpu.sh --smoke      # CPU, tiny sizes, seconds (tests/bench/test_gpu_smoke.py runs it in `make test`)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
if [ "${1:-}" != "--smoke" ]; then
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
exec "$PY" bench/gpu.py "$@"
