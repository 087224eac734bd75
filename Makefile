# `make run`: set up .venv and start a node on built-in defaults.
# `make test`: set up .venv, install the Debian packages the integration tests use, run
#              ruff, mypy and the whole test suite (unit + integration with real components).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SYSTEM_PACKAGES := docker-registry containerd skopeo apache2-utils curl iproute2 aria2 opentracker mktorrent \
	docker.io podman systemd
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint unit system-deps bench-blob

$(BIN)/pollen: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $@

run: $(BIN)/pollen
	$(BIN)/pollen run

system-deps:
	@for cmd in docker-registry containerd ctr skopeo htpasswd curl ip tc aria2c opentracker mktorrent \
	  dockerd podman unshare systemd-analyze; do \
	  command -v $$cmd >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(SYSTEM_PACKAGES); \
	fi

lint: $(BIN)/pollen
	$(BIN)/ruff check .
	$(BIN)/mypy

test: $(BIN)/pollen system-deps lint
	$(BIN)/pytest

unit: $(BIN)/pollen
	$(BIN)/pytest -m "not integration"

bench-blob: $(BIN)/pollen system-deps
	$(BIN)/python -m bench.blob_throughput
