# tecaflow: `make demo` runs the system, `make test` runs the tests; both set up first.
SHELL := /bin/bash
PY      := .venv/bin/python
PIP     := .venv/bin/pip
DEBS    := redis-server prometheus chromium chromium-driver espeak-ng ffmpeg
STAMP   := .venv/.tecaflow-installed

.PHONY: setup debs test test-fast demo bench clean

setup: $(STAMP) debs

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'  # dev includes every extra: stream, dashboard, train, stack, ingest
	@touch $(STAMP)

# Debian packages: `apt-get update` once, and only when something is missing.
debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not integration"

demo: setup
	.venv/bin/tecaflow demo

bench: setup
	.venv/bin/tecaflow bench gate

clean:
	rm -rf runs .pytest_cache
