"""The accelerator top: the control port (``control``: ``s_axi_control`` with
``ap_ctrl_hs``) and the memory movers (``movers``: AXI4 master read and write
engines); the sequencer and on-chip buffers that join them into the Vitis RTL
kernel come beside them."""
