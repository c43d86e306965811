"""The accelerator: hardware parameters (``config``), the units' RTL (``units/``), the
instruction set (``program/``), Verilog emission, resource estimates, the benches."""
