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
# pynq 4.0 pins numpy<2 and grpcio: the zynq backend's tests run in a venv of their own.
PYNQ_VENV := build/venv-pynq

.PHONY: help install sysdeps pynq-venv demo test test-all sim sim-long formal hls-csim hls-synth bitstream clean

help:
	@echo "make demo     train, evaluate and quantize the '$(CONFIG)' config on the synthetic set, then run it"
	@echo "             on the simulated accelerator through the host driver (bit-exact vs golden)"
	@echo "make test     the test suite (fast part of the simulations included)"
	@echo "make sim      all cocotb simulations (SIM=icarus|verilator)"
	@echo "make sim-long every unit and the whole top over SEEDS=$(SEEDS) seeds of random pauses (Verilator)"
	@echo "make formal   the formal checks (SymbiYosys): table, build/formal/summary.json"
	@echo "make hls-csim the HLS kernels' C simulations and the whole model through the HLS top (g++), against the golden model"
	@echo "make hls-synth the Vitis HLS / v++ scripts of the HLS top for BOARD=$(BOARD), then the AMD tool"
	@echo "make bitstream BOARD=$(BOARD) [DRY_RUN=1]  the Vivado / v++ build (the dry run: no AMD tool)"
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

demo: install   # sysdeps: the simulated accelerator is built with a C++ compiler
	$(BIN)/moevit demo --config $(CONFIG)

# moevit itself goes in without its dependencies (no torch): the backend needs numpy only.
# Under a lock: `make test` makes this venv beside the tests, and the zynq test asks for it too.
$(PYNQ_VENV)/.installed: pyproject.toml
	@mkdir -p build
	flock build/venv-pynq.lock sh -c '[ $@ -nt pyproject.toml ] || { \
	  { test -x $(PYNQ_VENV)/bin/python || $(PYTHON) -m venv $(PYNQ_VENV); } && \
	  $(PYNQ_VENV)/bin/python -m pip install -q "pynq==4.0" "numpy<2" "pytest>=8" && \
	  $(PYNQ_VENV)/bin/python -m pip install -q --no-deps -e . && touch $@; }'

pynq-venv: $(PYNQ_VENV)/.installed

# pynq's venv takes minutes of downloads on a fresh machine: it is made while the tests run
# (the zynq test waits for it), and a failure to make it fails the target.
test: install
	@mkdir -p build
	@$(MAKE) --no-print-directory pynq-venv > build/pynq-venv.log 2>&1 & maker=$$!; \
	$(PYTEST) -m "not slow"; status=$$?; \
	wait $$maker || { echo "make pynq-venv failed:"; cat build/pynq-venv.log; exit 1; }; \
	exit $$status

test-all: install pynq-venv
	$(PYTEST)

sim: install
	$(BIN)/moevit sim --simulator $(SIM)

formal: install
	$(BIN)/python -m moevit.hw.formal.run

# The long regression (tests/test_reliability.py): each unit and the whole top, SEEDS seeds,
# on Verilator unless SIM is given; a line per unit as it ends, the copy engine's seeds on a bar.
sim-long: install
	MOEVIT_SEEDS=$(SEEDS) SIM=$(if $(filter file,$(origin SIM)),verilator,$(SIM)) \
	  $(PYTEST) -v -s --durations=0 tests/test_reliability.py -k sim_long

hls-csim: install
	$(BIN)/moevit hls csim --config $(CONFIG)

hls-synth: install
	$(BIN)/moevit hls synth --config $(CONFIG) --board $(BOARD)

# The bitstream of BOARD (zcu102, zcu104, u280); DRY_RUN=1 checks the inputs in tclsh, no AMD tool.
bitstream: install
	$(BIN)/moevit bitstream --board $(BOARD) --config $(CONFIG) $(if $(DRY_RUN),--dry-run)

clean:
	rm -rf build
