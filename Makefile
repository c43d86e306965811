# One command per job; each calls the `moevit` command line in ./.venv.
# The venv is made on first use and reused after (the stamp tracks pyproject).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.moevit-installed
CONFIG ?= tiny
BOARD  ?= zcu102
SIM    ?= icarus
SEEDS  ?= 100
PYTEST ?= $(BIN)/python -m pytest

.PHONY: help install sysdeps demo test test-all sim sim-long hls-csim hls-synth clean

help:
	@echo "make demo     train, evaluate and quantize the '$(CONFIG)' config on the synthetic set"
	@echo "make test     the test suite (fast part of the simulations included)"
	@echo "make sim      all cocotb simulations (SIM=icarus|verilator)"
	@echo "make sim-long every unit and the whole top over SEEDS=$(SEEDS) seeds of random pauses (hours)"
	@echo "make hls-csim the HLS kernels' C simulations (g++) against the golden model"
	@echo "make hls-synth the Vitis HLS / v++ scripts of the HLS top for BOARD=$(BOARD), then the AMD tool"
	@echo "make test-all every test, the slow simulations included"
	@echo "make clean    remove build/"

# torch first, pinned exactly: any other spelling pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q --no-build-isolation -e ".[all]"
	touch $@

install: $(STAMP) sysdeps

# System packages: Icarus Verilog for the cocotb simulations, C and C++ compilers for
# the register map's C header test, Verilator's builds and the HLS C simulation, tclsh for the
# HLS scripts' dry run.
sysdeps:
	@missing=""; command -v iverilog >/dev/null || missing="$$missing iverilog"; \
	  command -v cc >/dev/null || missing="$$missing gcc"; \
	  command -v g++ >/dev/null || missing="$$missing g++"; \
	  command -v tclsh >/dev/null || missing="$$missing tcl"; \
	  [ -z "$$missing" ] || { \
	  echo "installing$$missing (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing >/dev/null; }

demo: $(STAMP)
	$(BIN)/moevit demo --config $(CONFIG)

test: install
	$(PYTEST) -m "not slow"

test-all: install
	$(PYTEST)

sim: install
	$(BIN)/moevit sim --simulator $(SIM)

# The long regression (tests/test_reliability.py): each unit and the whole top, SEEDS seeds.
sim-long: install
	MOEVIT_SEEDS=$(SEEDS) SIM=$(SIM) $(PYTEST) -q tests/test_reliability.py -k sim_long

hls-csim: install
	$(BIN)/moevit hls csim --config $(CONFIG)

hls-synth: install
	$(BIN)/moevit hls synth --config $(CONFIG) --board $(BOARD)

clean:
	rm -rf build
