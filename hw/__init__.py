"""The accelerator: hardware parameters, run-time descriptors, Amaranth RTL, Verilog emission, resource estimates."""
