"""HLS C++ of the accelerator units and its configuration generator."""
