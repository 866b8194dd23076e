# `make demo` and `make test` each set up .venv on a fresh machine (Python 3.11,
# no conda), then run. torch 2.13.0 is the CPU build; pins live in pyproject.toml.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# mlflow starts uvicorn and `python` by bare name: the venv's bin/ must come first.
export PATH := $(CURDIR)/$(BIN):$(PATH)

# Debian packages: espeak-ng (synthetic voices for speech training), PostgreSQL (the
# shared tracking server), Java 17 (Spark), Chromium and chromedriver (the MLflow UI
# test); root installs them, anyone else through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq

.PHONY: setup system browser demo test test-fast lint docs bench clean server server-stop

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,server,spark]'
	touch $@

setup: $(BIN)/.installed

system:
	@command -v espeak-ng >/dev/null && command -v java >/dev/null \
	  && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -qq && \
	  $(APT) espeak-ng postgresql openjdk-17-jre-headless; }

browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  $(SUDO) apt-get update -qq && $(APT) chromium chromium-driver; }

# A shared MLflow tracking server on PostgreSQL for a team, in .tracking-server/
# (deploy/tracking-server.sh; PG_PORT, MLFLOW_PORT, STATE to change where).
server: setup system
	@deploy/tracking-server.sh start

server-stop:
	@deploy/tracking-server.sh stop

# Trains the volatility recipe on the bundled real prices, prints it beside GARCH(1,1),
# HAR and EWMA with Diebold-Mariano p-values, logs to ./mlflow.db and registers it.
demo: setup
	$(BIN)/mlflow run . --env-manager local --experiment-name prices -P preset=volatility-tbptt

# Two pytest workers (pytest-xdist) of one thread each, each given whole test files: a
# file's module fixtures (a served model, a trained matrix) are built once, and the two
# cores stay busy while one worker waits on a server or a subprocess.
test: setup system browser
	$(BIN)/ruff check .
	$(BIN)/mkdocs build --strict --quiet
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile

test-fast: setup system
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow"

lint: setup
	$(BIN)/ruff check .

# The documentation site (docs/, mkdocs.yml) into site/; a broken link or a page left
# out of the navigation fails it. `$(BIN)/mkdocs serve` shows it at 127.0.0.1:8000.
docs: setup
	$(BIN)/mkdocs build --strict

bench: setup
	$(BIN)/python -m bench.trainer_overhead
	$(BIN)/python -m bench.tbptt_memory
	$(BIN)/python -m bench.time_to_quality
	$(BIN)/python -m bench.rest_vs_inprocess
	$(BIN)/python -m bench.predict_latency
	$(BIN)/python -m bench.rolling_forecasts
	$(BIN)/python -m bench.audio_features
	$(BIN)/python -m bench.speech_trainer_overhead
	$(BIN)/python -m bench.ddp_scaling
	$(BIN)/python -m bench.universe_epoch
	$(BIN)/python -m bench.stream_cost

clean:
	rm -rf $(VENV) mlflow.db mlruns mlartifacts checkpoints test-artifacts .pytest_cache site
