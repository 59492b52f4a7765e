# The two commands a new user needs: `make demo` and `make test`.
# Everything runs from the project's own virtualenv; nothing is started by hand.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PACKAGES := edge_protocol edge_common model_registry edge_agent

.PHONY: help install test lint typecheck pytest demo mosquitto haproxy nats chromium postgres clean arm64-check bench bench-quick

help:
	@echo "make install    create $(VENV) and install the project with all extras"
	@echo "make test       install what the tests need, then ruff, mypy --strict and pytest"
	@echo "make demo       run the whole story end to end on an embedded broker"

install: $(VENV)/.installed

# Reinstall only when the dependency list changes; the editable install tracks the code.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all]'
	touch $@

mosquitto:
	@scripts/ensure-mosquitto.sh

# The replica tests balance several registries with HAProxy (docs/operations.md section 11).
haproxy:
	@scripts/ensure-haproxy.sh

# The clustered-broker test runs three NATS nodes (docs/operations.md section 12).
nats:
	@scripts/ensure-nats.sh

# The dashboard's browser tests drive Debian's chromium; its alert rules are checked by promtool.
chromium:
	@scripts/ensure-chromium.sh

# The storage tests run on SQLite and on PostgreSQL (TEST_POSTGRES_URL, default 127.0.0.1:5432).
postgres: install
	@PYTHON=$(BIN)/python scripts/ensure-postgres.sh

lint: install
	$(BIN)/ruff check $(PACKAGES) tests scripts
	$(BIN)/ruff format --check $(PACKAGES) tests scripts

typecheck: install
	$(BIN)/mypy $(PACKAGES)

# loadfile: a file's tests run on one worker, in order, so module fixtures are made once and
# the steps of an end-to-end story stay together. Three workers on two cores: the end-to-end
# tests spend much of their time waiting on processes they started, which a third worker fills.
PYTEST_WORKERS ?= 3
pytest: install mosquitto haproxy nats chromium postgres
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadfile

test: lint typecheck pytest

# The whole story in under two minutes; `make demo DEMO_DIR=path` works somewhere else, and
# `make demo KEEP=1` keeps the registry and its dashboard up until Ctrl-C.
demo: install
	$(BIN)/python scripts/demo.py $(if $(DEMO_DIR),--dir $(DEMO_DIR)) $(if $(KEEP),--keep)

# Not part of `make test`: the agent as aarch64 code under qemu-user receives a signed update
# from a registry on this machine and answers a request (docs/operations.md). Downloads about
# 70 MB into .cache/arm64 on the first run; needs root once to install qemu-user-static.
arm64-check: install
	scripts/arm64-check.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# Benchmarks against peers (benchmarks/README.md): results/*.json and the README tables.
bench: install
	@benchmarks/ensure-tools.sh
	@benchmarks/ensure-mlserver.sh $(PYTHON) "$$($(BIN)/python -c 'import onnxruntime; print(onnxruntime.__version__)')"
	$(BIN)/python -m benchmarks.run --full

bench-quick: install
	@benchmarks/ensure-tools.sh
	$(BIN)/python -m benchmarks.run --quick
