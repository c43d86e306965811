"""The accelerator top: the memory movers (``movers``: AXI4 master read and write
engines); the sequencer, on-chip buffers and the AXI top come beside them."""
