# The two set-up commands of the README: `make demo` and `make test`.
# Both work on a fresh machine: they create .venv and install what they need.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: demo test lint typecheck venv system-deps bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,demo]'
	touch $(STAMP)

venv: $(STAMP)

# Debian's prometheus (server + promtool) for the scrape and alert-rule tests, and
# docker-compose to validate docker-compose.yml. Installed only where missing; where they
# are missing and cannot be installed (not root, no apt-get, apt-get failed), this fails
# with the command to run: `make test` runs every test, none skips for a missing package.
SYSTEM_BINARIES = prometheus promtool docker-compose
SYSTEM_INSTALL  = apt-get update && apt-get install -y --no-install-recommends prometheus docker-compose

system-deps:
	@missing=""; for b in $(SYSTEM_BINARIES); do command -v $$b >/dev/null 2>&1 || missing="$$missing $$b"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "error: missing:$$missing. make test needs Debian's 'prometheus' and 'docker-compose' packages;" >&2; \
	  echo "       install them as root, then run make test again:" >&2; \
	  echo "       sudo sh -c '$(SYSTEM_INSTALL)'" >&2; \
	  exit 1; \
	fi; \
	echo "installing Debian's prometheus and docker-compose (missing:$$missing)" >&2; \
	if ! { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus docker-compose >/dev/null; }; then \
	  echo "error: apt-get could not install them; run it yourself and read its output:" >&2; \
	  echo "       $(SYSTEM_INSTALL)" >&2; \
	  exit 1; \
	fi; \
	for b in $(SYSTEM_BINARIES); do command -v $$b >/dev/null 2>&1 || { \
	  echo "error: $$b is still missing after apt-get; run: $(SYSTEM_INSTALL)" >&2; exit 1; }; done

# Every test, none skipped (tests/skip_policy.py fails a skip not listed there), with
# hypothesis's reproducible "ci" profile (tests/conftest.py).
test: system-deps $(STAMP) lint typecheck
	HYPOTHESIS_PROFILE=ci $(PY) -m pytest -n 2 --dist loadgroup

# ruff (lint and format) over everything in the repository.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy over the installed namespace: strict on driftline.detectors (pyproject.toml). mypy
# cannot follow the editable install's package-dir mapping, so the folders are linked
# into build/typecheck/driftline as the wheel lays them out.
TYPEROOT = build/typecheck
typecheck: $(STAMP)
	@rm -rf $(TYPEROOT) && mkdir -p $(TYPEROOT)/driftline
	@for f in driftline/*; do ln -s "$(CURDIR)/$$f" $(TYPEROOT)/driftline/; done
	@for p in monitor detectors sinks; do ln -s "$(CURDIR)/$$p" $(TYPEROOT)/driftline/$$p; done
	cd $(TYPEROOT) && "$(CURDIR)/$(VENV)/bin/mypy" --config-file "$(CURDIR)/pyproject.toml" -p driftline

demo: $(STAMP)
	$(VENV)/bin/driftline demo

# Every benchmark, each printing its table, exactly as BENCHMARKS.md runs them; each
# exits non-zero when a target there is missed (--check). Tens of minutes.
bench: $(STAMP)
	$(PY) benchmarks/bench_detectors.py --check
	$(PY) benchmarks/bench_statistics.py --repeats 60 --check
	$(PY) benchmarks/bench_windows.py --events 200000 --repeats 5
	$(PY) benchmarks/bench_segments.py
	$(PY) benchmarks/bench_quality.py --seeds 20 --check
	$(PY) benchmarks/bench_service.py --events 200000 --repeats 9 --check
	$(PY) benchmarks/bench_scaleout.py --events 300000 --repeats 3 --check

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
