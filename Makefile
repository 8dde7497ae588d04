# The two set-up commands a fresh machine needs are `make demo` and `make test`;
# both create .venv from the lock file when it is missing or stale.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

# Every page bundle build.mjs writes (one esbuild run makes them all: a grouped target).
WEB_BUNDLE := web/dist/stream-page.js web/dist/livekit-page.js

.PHONY: venv web demo test lint bench lock clean deploy-check

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# The browser pages (web/): bundled here from the pinned npm lock, never committed built.
# Without node/npm the browser tests skip (and say why); nothing else needs the bundle.
web: $(WEB_BUNDLE)

$(WEB_BUNDLE) &: web/package.json web/package-lock.json web/build.mjs $(wildcard web/src/*.js)
	@if command -v npm >/dev/null 2>&1; then \
		cd web && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build; \
	else \
		echo "make web: npm not found: the browser pages are not built, browser tests will skip"; \
	fi

# The demo's report.json carries HELLO -> first frame warm and cold (issue 17): ~16 s more.
DEMO_ARGS ?= --continuity

demo: $(STAMP) web
	$(BIN)/avatar-bridge demo $(DEMO_ARGS)

# Tests run inside a private network namespace (bridge/sim/netns.py): WebRTC needs a
# non-loopback interface, and the namespace keeps every packet on this machine.
# Two pytest-xdist workers share it (every listener takes an ephemeral port): most of the suite's
# time is real-time media waiting on the clock, not CPU, and the tests must pass on a loaded
# 2-core machine anyway. worksteal: the minute-long calls do not leave one worker idle at the end.
# PYTEST_WORKERS="-p no:xdist" runs them one at a time.
PYTEST_WORKERS ?= -n 2 --dist worksteal
test: $(STAMP) web
	$(BIN)/python -m bridge.sim.netns -- $(BIN)/python -m pytest $(PYTEST_WORKERS) $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check bridge tests bench deploy/check
	$(BIN)/ruff format --check bridge tests bench deploy/check
	$(BIN)/mypy
	$(BIN)/mypy deploy/check/deploy_check.py

bench: $(STAMP)
	$(BIN)/python -m bench $(if $(QUICK),--quick,)

# The deploy files proven for real (root; docs/deployment.md): the image built and run with podman,
# the systemd units booted under systemd in systemd-nspawn, a whole session through each.
deploy-check: $(STAMP)
	$(BIN)/python deploy/check/deploy_check.py $(DEPLOY_CHECK_ARGS)

# Re-pin after changing dependencies in pyproject.toml (needs uv or pip-tools).
lock:
	uv pip compile pyproject.toml --extra dev --extra demo --python-version 3.11 --no-header -o requirements.lock

clean:
	rm -rf $(VENV) build dist *.egg-info web/node_modules web/dist
