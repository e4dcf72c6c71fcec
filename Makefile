# The two set-up commands of the README: `make demo` and `make test`.
# Both work on a fresh machine: they create .venv and install what they need.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: demo test venv system-deps bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,demo]'
	touch $(STAMP)

venv: $(STAMP)

# Debian's prometheus (server + promtool) for the scrape and alert-rule tests, and
# docker-compose to validate docker-compose.yml. Installed only where missing.
system-deps:
	@if ! command -v promtool >/dev/null 2>&1 || ! command -v docker-compose >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus docker-compose >/dev/null; \
	  else \
	    echo "note: install Debian's 'prometheus' and 'docker-compose' packages for the full suite" >&2; \
	  fi; \
	fi

test: $(STAMP) system-deps
	$(PY) -m pytest

demo: $(STAMP)
	$(VENV)/bin/driftline demo

# Every benchmark, each printing its table (BENCHMARKS.md records them); several minutes.
bench: $(STAMP)
	$(PY) benchmarks/bench_detectors.py
	$(PY) benchmarks/bench_statistics.py
	$(PY) benchmarks/bench_quality.py
	$(PY) benchmarks/bench_service.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
