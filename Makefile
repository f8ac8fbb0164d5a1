# Every target bootstraps .venv by itself (idempotent): a fresh machine needs only `make demo` or `make test`.
# `make demo` installs the core alone (`pip install -e .`); `make test`, `make bench` and `make install` install
# the test extra too (Ray, the notebook kernel, Playwright: everything the tests and benchmarks import).
# pip reads PIP_INDEX_URL / PIP_EXTRA_INDEX_URL from the environment (a CPU-only PyTorch: see the README).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt
CORE := $(VENV)/.installed-core
# .installed: the name of the one stamp there was before the core had its own
FULL := $(VENV)/.installed

.PHONY: install demo test test-fast bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(CORE): pyproject.toml constraints.txt | $(BIN)/python
	$(PIP_INSTALL) -e .
	touch $@

# the full install holds the core, so it stamps both: `make demo` after `make test` installs nothing
$(FULL): pyproject.toml constraints.txt | $(BIN)/python
	$(PIP_INSTALL) -e '.[test]'
	touch $(CORE) $@

install: $(FULL)

demo: $(CORE)
	$(BIN)/python scripts/demo.py

test: $(FULL)
	bash scripts/ensure-chromium.sh
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: $(FULL)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not integration and not browser"

bench: $(FULL)
	$(BIN)/python bench/run_all.py $(if $(QUICK),--quick)

clean:
	rm -rf $(VENV) runs demo_data test-output
