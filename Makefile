# kdmsi_qgis developer targets. `make demo` and `make test` set everything up first;
# `make setup` is idempotent and returns in about a second when nothing changed.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --isolated --disable-pip-version-check
APT_PACKAGES := qgis python3-qgis qgis-providers gdal-bin python3-gdal python3-venv xvfb xauth \
  python3-pyqt5.qtwebkit
TORCH_PINS := torch==2.13.0 torchvision==0.28.0
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_OUT ?= demo_out
export QT_QPA_PLATFORM ?= offscreen

.PHONY: setup system-packages demo test test-qgis-lts lint clean

setup: system-packages $(VENV)/.deps-stamp $(VENV)/.qt6-stamp

# Debian's QGIS + GDAL bind to /usr/bin/python3; install them only when one is missing.
system-packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "Installing system packages: $$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi

$(PY):
	/usr/bin/python3 -m venv --system-site-packages $(VENV)

# PyPI's standard torch build (CPU and CUDA) pairs with torchvision; --isolated keeps pip away
# from the machine-wide config that offers a CPU-only torch wheel torchvision cannot import beside.
$(VENV)/.torch-stamp: | $(PY)
	$(PY) -c "import torch, torchvision; assert torch.__version__.startswith('2.13.0')" 2>/dev/null \
	  || $(PIP) install -q $(TORCH_PINS)
	touch $@

$(VENV)/.deps-stamp: requirements.txt requirements-dist.txt pyproject.toml $(VENV)/.torch-stamp
	$(PIP) install -q -r requirements.txt -r requirements-dist.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PY) -c "import numpy, torch, torchvision; from osgeo import gdal; import kdmsi; \
	  assert int(numpy.__version__.split('.')[0]) < 2, 'numpy must stay < 2 for Debian GDAL/QGIS'"
	touch $@

# Qt6's bindings apart from the venv's path, for the plugin's Qt6 check (tests/plugin/test_qt6.py)
$(VENV)/.qt6-stamp: requirements-qt6.txt | $(PY)
	rm -rf $(VENV)/qt6
	$(PIP) install -q --no-deps --target $(VENV)/qt6 -r requirements-qt6.txt
	touch $@

demo: setup
	$(PY) -m kdmsi.demo --out $(DEMO_OUT)

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

# The tests on QGIS 3.40 LTR (Debian 13; QGIS_SUITE=trixie-backports: QGIS 3.44) in a Debian root
# built once into /var/cache/kdmsi (about 2 GB); needs root. See README, "Other QGIS versions".
QGIS_SUITE ?= trixie
test-qgis-lts:
	$(SUDO) env QGIS_SUITE=$(QGIS_SUITE) QGIS_LTS_TESTS="$(QGIS_LTS_TESTS)" bash .ci/qgis_lts.sh

lint: setup
	$(VENV)/bin/ruff check core kdmsi_qgis tests bench
	$(VENV)/bin/ruff format --check core kdmsi_qgis tests bench

clean:
	rm -rf $(VENV) $(DEMO_OUT) dist build *.egg-info

# ------------------------------------------------------------------- plugin packaging
# `make package`: $(DIST_DIR)/kdmsi_qgis.zip, installable with QGIS's "Install from ZIP": the
# plugin folder (kdmsi_qgis/**/*.py, the top-level metadata.txt, resources/icon.svg) with the
# kdmsi library (core/) bundled in kdmsi_qgis/libs/kdmsi, where deps.py puts it on sys.path.
# One source of truth: everything is copied from this checkout. torch, torchvision, shapely
# and fiona are not bundled: the plugin's Dependencies page (kdmsi_qgis/install) installs them.
# `make deploy`: the same folder copied into a QGIS profile (QGIS_PLUGINS to override).
PLUGIN_BUILD ?= build/plugin
DIST_DIR ?= dist
QGIS_PLUGINS ?= $(HOME)/.local/share/QGIS/QGIS3/profiles/default/python/plugins
PLUGIN_SOURCES := $(shell find kdmsi_qgis core -name '*.py') metadata.txt resources/icon.svg

.PHONY: package deploy

$(PLUGIN_BUILD)/kdmsi_qgis: $(PLUGIN_SOURCES)
	rm -rf $@ && mkdir -p $@/libs
	cd kdmsi_qgis && find . -name __pycache__ -prune -o -name '*.py' -print \
	  | xargs cp --parents -t $(abspath $@)
	cp metadata.txt resources/icon.svg $@/
	cp -r core $@/libs/kdmsi
	find $@ -name __pycache__ -prune -exec rm -rf {} +
	touch $@

package: $(PLUGIN_BUILD)/kdmsi_qgis
	mkdir -p $(DIST_DIR) && rm -f $(DIST_DIR)/kdmsi_qgis.zip
	zip=$$(realpath $(DIST_DIR))/kdmsi_qgis.zip && cd $(PLUGIN_BUILD) && \
	  /usr/bin/python3 -m zipfile -c $$zip kdmsi_qgis
	@echo "wrote $(DIST_DIR)/kdmsi_qgis.zip"

deploy: $(PLUGIN_BUILD)/kdmsi_qgis
	mkdir -p "$(QGIS_PLUGINS)" && rm -rf "$(QGIS_PLUGINS)/kdmsi_qgis"
	cp -r $(PLUGIN_BUILD)/kdmsi_qgis "$(QGIS_PLUGINS)/"
