# Every target installs what it needs first: a virtual environment in .venv from pyproject.toml,
# and the pinned Solidity compiler and anvil from contracts/package-lock.json.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install run demo test contracts check-contracts bench clean

install: $(VENV)/.installed contracts/node_modules/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

contracts/node_modules/.installed: contracts/package.json contracts/package-lock.json
	npm ci --prefix contracts --no-audit --no-fund
	touch $@

run: install
	$(BIN)/tokenport serve

demo: install
	$(BIN)/tokenport demo

test: install
	$(BIN)/pytest

bench: install
	$(BIN)/python -m bench

contracts: install
	node contracts/build.mjs

check-contracts: install
	node contracts/build.mjs --check

clean:
	rm -rf $(VENV) contracts/node_modules .tokenport
