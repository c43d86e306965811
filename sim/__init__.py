"""cocotb test benches and the simulator runner (Icarus, Verilator)."""
