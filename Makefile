# The two commands of README.md: `make up` and `make test`. Both install what they need first.
# `make check` is the fast unit tier (no process started, well under a minute) for working on the code.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TOOLS := .tools
FOUNDRY_VERSION ?= 1.7.1
# The JavaScript clients the client tests drive (tests/js/client.cjs); pinned, from npm.
ETHERS_VERSION ?= 6.17.0
VIEM_VERSION ?= 2.58.8
ARGS ?=

.PHONY: up test check install install-test tools system-deps lint bench clean

$(VENV)/.installed: setup.cfg setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test,ops]'
	# The newest ansible-core and ansible-lint: the lint test runs the rules an operator's fresh install has.
	$(PY) -m pip install --quiet --upgrade ansible-core ansible-lint
	touch $@

# The ops tests run `systemd-analyze verify` on the rendered units: Debian's systemd package provides it.
system-deps:
	@command -v systemd-analyze >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null; \
		else echo "systemd-analyze missing: install Debian's systemd package (sudo apt-get install systemd)"; fi; }

$(TOOLS)/node_modules/.bin/cast:
	mkdir -p $(TOOLS)
	npm install --silent --no-audit --no-fund --prefix $(TOOLS) \
		@foundry-rs/anvil@$(FOUNDRY_VERSION) @foundry-rs/cast@$(FOUNDRY_VERSION)

$(TOOLS)/.clients-ethers-$(ETHERS_VERSION)-viem-$(VIEM_VERSION):
	mkdir -p $(TOOLS)
	npm install --silent --no-audit --no-fund --prefix $(TOOLS) ethers@$(ETHERS_VERSION) viem@$(VIEM_VERSION)
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test tools system-deps

tools: $(TOOLS)/node_modules/.bin/cast $(TOOLS)/.clients-ethers-$(ETHERS_VERSION)-viem-$(VIEM_VERSION)

# Start the whole local stack (enclave process, software NSM, KMS emulator, sidecar).
up: install
	$(VENV)/bin/clave up $(ARGS)

# Install the test dependencies (Python packages, anvil and cast from npm) and run the whole suite: both
# tiers, as CI does (.ci/run sets CI=1, so missing vectors or tools fail instead of skipping).
test: install-test
	PATH="$(CURDIR)/$(TOOLS)/node_modules/.bin:$$PATH" $(PY) -m pytest -q $(ARGS)

# The fast tier: every test not marked slow, in one process. It installs the test extras if the venv has
# none yet, but never reinstalls an installed venv (run `make install-test` for that).
check:
	@[ -f $(VENV)/.installed-test ] || $(MAKE) --no-print-directory $(VENV)/.installed-test
	$(PY) -m pytest -q -m "not slow" $(ARGS)

lint: install-test
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy src

$(VENV)/.installed-bench: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[bench]'
	touch $@

# Benchmark (issue 6, docs/performance.md): installs the bench extra, anvil (npm) and Debian's wrk (apt-get,
# only when run as root; otherwise it says how), then runs bench/run.py with defaults (about 5-10 minutes)
# and rewrites docs/performance.md. Extra options: make bench BENCH_ARGS="--soak 10".
BENCH_ARGS ?=
bench: $(VENV)/.installed-bench tools
	@command -v wrk >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq wrk; \
		else echo "bench: wrk is not installed and this is not root: run 'sudo apt-get install wrk';" \
			"without it the HTTP rows come from the Python generator only"; fi; }
	$(PY) bench/run.py --docs docs/performance.md --command 'make bench$(if $(BENCH_ARGS), BENCH_ARGS="$(BENCH_ARGS)")' $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(TOOLS) build *.egg-info
