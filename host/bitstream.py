"""The bitstream build (placeholder: filled in below)."""

#: The accelerator's IP identity, as the IP packaging writes it (vendor:library:name:version).
VENDOR, LIBRARY, KERNEL, VERSION = "moevit.org", "hls", "moevit_top", "1.0"
VLNV = f"{VENDOR}:{LIBRARY}:{KERNEL}:{VERSION}"
