# Two commands do all the set-up: `make run` and `make test` (each creates .venv when missing).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# extra jobs.pipeline flags for `make run`, e.g. RUN_ARGS="--minutes 45" or "--finetune-steps 1800"
# (bench/RESULTS.md)
RUN_ARGS ?=
# Debian packages: real dictionary data for the tools (FreeDict both ways: the reverse dictionaries
# rank the translations), Prometheus for the metrics tests, PostgreSQL for the conversation store,
# Chromium and its WebDriver for the console's browser tests
DEB_PACKAGES := dict-freedict-eng-fra dict-freedict-eng-deu dict-freedict-eng-spa \
                dict-freedict-fra-eng dict-freedict-deu-eng dict-freedict-spa-eng dict-elements \
                dict-foldoc prometheus postgresql chromium chromium-driver
DEB_STAMP := /usr/share/dictd/freedict-eng-fra.index /usr/share/dictd/freedict-spa-eng.index \
             /usr/share/dictd/freedict-fra-eng.index /usr/share/dictd/freedict-deu-eng.index \
             /usr/share/dictd/elements.index /usr/share/dictd/foldoc.index /usr/bin/prometheus \
             /usr/lib/postgresql/*/bin/postgres /usr/bin/chromium /usr/bin/chromedriver

.PHONY: setup system-deps run test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) system-deps

system-deps:  ## Debian packages (installed with apt-get when missing; needs root)
	@missing=""; for f in $(DEB_STAMP); do test -e $$f || missing=yes; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(DEB_PACKAGES); \
	  else \
	    echo "missing Debian packages; run: sudo apt-get install -y $(DEB_PACKAGES)"; exit 1; \
	  fi; \
	fi

run: setup  ## the pipeline on the embedded default (bundled corpus, tiny preset, CPU)
	$(PY) -m jobs.pipeline --serve --block $(RUN_ARGS)

test: setup  ## the whole suite
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup  ## CPU benchmarks (JSON lines)
	$(PY) bench/train_step.py --preset tiny
	$(PY) bench/train_step.py --preset debug --seq-len 128

clean:
	rm -rf runs .pytest_cache
