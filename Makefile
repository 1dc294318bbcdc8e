# freshrec: `make demo` and `make test` work from a clean clone with Python 3.11, Java 17 and make.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.install-stamp
# Use a local wheelhouse when the machine has one (torch's CPU wheel lies there on CI machines).
PIP_EXTRA := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
PYTEST_ARGS ?=
AIRFLOW_ARGS ?=

.PHONY: install demo test lint bench airflow clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(PIP_EXTRA) -c requirements.lock -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/python -m freshrec.demo

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check freshrec jobs models dags tests bench

# Airflow UI + scheduler on this machine (SQLite under $FRESHREC_HOME/airflow); e.g. AIRFLOW_ARGS="--port 8081 --require-login".
airflow: install
	$(BIN)/freshrec airflow $(AIRFLOW_ARGS)

bench: install
	@for b in bench/*.py; do echo "== $$b" >&2; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf .freshrec
