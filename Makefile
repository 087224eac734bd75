# `make run`: set up .venv and start a node on built-in defaults.
# `make test`: set up .venv, install the Debian packages the integration tests use, run
#              ruff, mypy and the whole test suite (unit + integration with real components).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SYSTEM_PACKAGES := docker-registry containerd skopeo apache2-utils curl iproute2 aria2 opentracker mktorrent \
	docker.io podman systemd
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint unit system-deps bench-blob dist FORCE

$(BIN)/pollen: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench,dist]'
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

test: $(BIN)/pollen system-deps lint dist
	$(BIN)/pytest

# `make dist`: dist/pollen, one executable with its own Python and libraries (PyInstaller
# one-file): runs on a Linux host with no Python. The node only: `pollen bench` (and
# matplotlib) stay out. The commit it is built from goes in as the module pollen_build.
SOURCES := $(shell find peer pieces wire -name '*.py') setup.cfg
dist: dist/pollen

dist/pollen: $(BIN)/pollen $(SOURCES) Makefile build/gen/pollen_build.py
	@$(BIN)/python -c "import sys, sysconfig; sys.exit(0 if sysconfig.get_config_var('Py_ENABLE_SHARED') \
	  else 'make dist: PyInstaller needs a Python with its shared library (libpython3.11.so): ' \
	  'Debian: apt-get install libpython3.11; pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared')"
	$(BIN)/pyinstaller --noconfirm --clean --log-level WARN --onefile --name pollen \
	  --paths build/gen --hidden-import pollen_build --hidden-import peer.configure.command \
	  --exclude-module bench --exclude-module matplotlib --exclude-module tests \
	  --exclude-module pytest --exclude-module hypothesis --exclude-module mypy \
	  --exclude-module numpy --exclude-module PIL --exclude-module tkinter \
	  --exclude-module setuptools --exclude-module pydoc --exclude-module unittest \
	  --distpath dist --workpath build/pyinstaller --specpath build peer/__main__.py

# The commit the binary says it was built from: worked out at every make, the file replaced
# only when it changes (a new commit rebuilds dist/pollen; nothing else does). Local changes
# to the sources, new files included, add "-dirty"; no git: "unknown".
build/gen/pollen_build.py: FORCE
	@mkdir -p build/gen
	@commit="$$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"; \
	dirty="$$(git status --porcelain -- peer pieces wire setup.cfg 2>/dev/null | head -c1)"; \
	printf 'COMMIT = "%s%s"\n' "$$commit" "$${dirty:+-dirty}" > $@.new; \
	if cmp -s $@.new $@; then rm $@.new; else mv $@.new $@; fi

FORCE:

unit: $(BIN)/pollen
	$(BIN)/pytest -m "not integration"

bench-blob: $(BIN)/pollen system-deps
	$(BIN)/python -m bench.blob_throughput
