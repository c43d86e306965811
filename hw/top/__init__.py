"""The accelerator top: the control port (``control``), and later the sequencer,
memory movers and on-chip buffers that the Vitis RTL kernel joins."""
