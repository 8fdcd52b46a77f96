# The two commands a newcomer types: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# oneDNN for the fused CPU engine of linear_cross_entropy (optional: without it the
# engine stays off and the other engines run).
ONEDNN := $(VENV)/.onednn

.PHONY: demo test test-all lint typecheck bench setup clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml constraints.txt $(ONEDNN)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[demo,test]"
	touch $(STAMP)

$(ONEDNN): $(BIN)/python scripts/fetch-onednn.sh
	sh scripts/fetch-onednn.sh $(VENV)/lib || echo "oneDNN not installed: the fused CPU engine stays off"
	touch $(ONEDNN)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/crossentropy tour

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -p no:cacheprovider -n 2 --hypothesis-profile=ci --doctest-modules src/crossentropy tests

test-all: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider -n 2 --hypothesis-profile=ci --doctest-modules --runslow src/crossentropy tests

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/python -m mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_info.py
	$(BIN)/python benchmarks/bench_loss.py
	$(BIN)/python benchmarks/bench_linear_ce.py --quick
	$(BIN)/python benchmarks/bench_vocab_parallel.py
	$(BIN)/python benchmarks/bench_coding.py

clean:
	rm -rf $(VENV) tour-output build dist
