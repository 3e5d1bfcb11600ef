# Two commands do all the set-up: `make run` and `make test` (each creates .venv when missing).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup run test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: setup  ## the pipeline on the embedded default (bundled corpus, tiny preset, CPU)
	$(PY) -m jobs.pipeline

test: setup  ## the whole suite
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup  ## CPU benchmarks (JSON lines)
	$(PY) bench/train_step.py --preset tiny
	$(PY) bench/train_step.py --preset debug --seq-len 128

clean:
	rm -rf runs .pytest_cache
