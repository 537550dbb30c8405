# scratchllm: `make demo` runs the whole pipeline on the built-in corpus, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch is pinned here; pyproject.toml keeps a normal range for GPU users.
CONSTRAINTS := constraints-cpu.txt
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e '.[dev]'
	touch $(STAMP)

# Style, types, and the code's shape: functions of at most 80 lines and radon rank C or better,
# no import cycle, every import down the layers (tests/test_code_shape.py).
lint: install
	$(BIN)/ruff check src tests benchmarks configs
	$(BIN)/mypy
	$(BIN)/python -m pytest -q tests/test_code_shape.py

test: lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

demo: install
	$(BIN)/scratchllm demo

bench: install
	$(BIN)/python benchmarks/tokenize_throughput.py
	$(BIN)/python benchmarks/generate.py
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
