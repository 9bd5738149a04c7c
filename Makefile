# The two commands of README.md: `make up` and `make test`. Both install what they need first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TOOLS := .tools
FOUNDRY_VERSION ?= 1.7.1
ARGS ?=

.PHONY: up test install install-test tools lint bench clean

$(VENV)/.installed: setup.cfg setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

$(TOOLS)/node_modules/.bin/cast:
	mkdir -p $(TOOLS)
	npm install --silent --no-audit --no-fund --prefix $(TOOLS) \
		@foundry-rs/anvil@$(FOUNDRY_VERSION) @foundry-rs/cast@$(FOUNDRY_VERSION)

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test tools

tools: $(TOOLS)/node_modules/.bin/cast

# Start the whole local stack (enclave process, software NSM, KMS emulator, sidecar).
up: install
	$(VENV)/bin/clave up $(ARGS)

# Install the test dependencies (Python packages, anvil and cast from npm) and run the whole suite.
test: install-test
	PATH="$(CURDIR)/$(TOOLS)/node_modules/.bin:$$PATH" $(PY) -m pytest -q $(ARGS)

lint: install-test
	$(VENV)/bin/ruff check sidecar enclave tests
	$(VENV)/bin/mypy sidecar enclave

clean:
	rm -rf $(VENV) $(TOOLS) build *.egg-info
