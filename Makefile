# Every target installs first (idempotent), so `make demo` and `make test` work on a fresh machine.
VENV   ?= .venv
PY     := $(VENV)/bin/python
AROMNI := $(VENV)/bin/aromni
STAMP  := $(VENV)/.installed
APT_PKGS := espeak-ng alsa-utils
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export HF_HUB_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
export TOKENIZERS_PARALLELISM := false

.PHONY: install system-deps demo-data demo test test-fast bench clean

install: $(STAMP)

system-deps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; fi

$(STAMP): pyproject.toml | system-deps
	@$(MAKE) --no-print-directory system-deps
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,cosyvoice]"
	touch $(STAMP)
	@$(MAKE) --no-print-directory demo-data

# The built-in demo corpus (real photos, speech and text in the sources' published formats), made once.
demo-data:
	@test -f demo_data/tokenizer/vqgan/vqgan.ckpt -a -f demo_data/eval/README.txt || $(AROMNI) demo-corpus --out demo_data

demo: install demo-data
	$(AROMNI) build recipes/demo.yaml --out runs/demo
	$(AROMNI) validate runs/demo
	$(AROMNI) stats runs/demo > runs/demo/stats.txt
	@echo
	@echo "Done. Results in runs/demo/: data/*.parquet (shards), manifest.json, rejects/, plots/*.png, stats.txt"
	@echo "The demo's tokenizers are STAND-INS (see the manifest's 'warning'); point a recipe at real checkpoints for real data."
	@echo "Next: $(AROMNI) show runs/demo --row 1 | $(AROMNI) readers | $(AROMNI) --help"

# Two pytest workers, one test file each at a time (--dist loadfile: a file's module fixtures, e.g. one shared build,
# are made once): most tests wait on Ray, S3 or subprocesses, so two workers on two cores take ~1/3 of the serial time.
# TEST_WORKERS=0 runs them serially in one process.
TEST_WORKERS ?= 2
PYTEST := $(VENV)/bin/pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: install
	$(PYTEST)

test-fast: install
	$(PYTEST) -m "not slow"

# Each script prints what it measures and ratios against its baseline. Full-size tokenizer throughput on a CPU is
# slow (minutes per batch of 32 images): `make bench` runs small batches; see `bench/tokenizers.py --help`.
bench: install
	$(PY) bench/build.py --text-rows 80000
	$(PY) bench/build.py
	$(PY) bench/vs_datasets.py
	$(PY) bench/loader.py
	$(PY) bench/memory.py
	$(PY) bench/infer.py
	$(PY) bench/voice.py
	$(PY) bench/tokenizers.py --image-batches 1 --audio-batches 1 8 16 --images 4

clean:
	rm -rf runs demo_data .pytest_cache
