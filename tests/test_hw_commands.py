"""The ``hw`` commands' behaviour around the tools (the syntheses themselves: test_hw_estimate.py)."""

import re

import pytest

from moevit.cli import main


class FakeEstimate:
    def __init__(self, unit):
        self.unit = unit

    def row(self):
        return {"unit": self.unit, "dsp": 1, "lut": 2, "ff": 3, "bram": 0.5, "uram": 0}


def test_estimate_shows_progress_per_unit(tmp_path, monkeypatch, capsys):
    # Yosys takes minutes per unit: the command says which unit runs, one step per unit.
    import moevit.hw.estimate as estimate
    import moevit.hw.generate as generate

    monkeypatch.setenv("MOEVIT_BUILD", str(tmp_path / "build"))
    monkeypatch.setattr(generate, "verilog_file", lambda unit, hw, folder: folder / f"{unit}.v")
    monkeypatch.setattr(estimate, "estimate_verilog", lambda unit, path, top, folder: FakeEstimate(unit))
    with pytest.warns(UserWarning, match=r"^Yosys synth_xilinx -family xcup, not Vivado"):  # the estimate's caveat
        assert main(["hw", "estimate", "--unit", "gelu", "--unit", "softmax"]) == 0
    out, err = capsys.readouterr()
    progress = err.replace("\r", "\n")
    assert re.search(r"estimate: +0%.* 0/2 .*gelu: Yosys synth_xilinx", progress), progress  # the unit that runs
    assert re.search(r"estimate: 100%.* 2/2 .*softmax: Yosys synth_xilinx", progress), progress
    assert re.search(r"^gelu +1 +2 +3 ", out, re.M) and re.search(r"^softmax +1 +2 +3 ", out, re.M)
    assert main(["hw", "estimate", "--unit", "gelu", "--quiet", "--json"]) == 0
    assert "estimate:" not in capsys.readouterr().err


# The benches on named hardware configs (the simulations replaced: the names, the
# checks and what reaches the bench) --------------------------------------------
@pytest.mark.parametrize("argv, message", [
    ("bench linear --hw zcu102", r"Unknown config 'zcu102'; known configs are \[.*\], saved "
                                 r"hardware configs \[.*'zcu102-edge-moe'.*\]"),
    ("bench attention --hw nowhere", r"Unknown config 'nowhere'; .*"),
    ("bench top --hw zcu102-edge-mo", r"Unknown config 'zcu102-edge-mo'; .*"),
    # A named instance made for another model: said before anything is quantized or built.
    ("bench top --config tiny --hw zcu102-edge-moe",
     r"Score lanes 64 do not divide the head width 16 of model 'tiny'"),
    ("bench linear --hw small", r"Bench linear: layer patch_embed \(64x192->64\) does not fit "
                                r"hardware config 'small': Linear descriptor of 192 input "
                                r"features exceeds the 128-feature buffer of hardware 'small'"),
    # --quick trims the default cases, which --hw replaces.
    ("bench linear --hw zcu102-edge-moe --quick", r"--quick does not apply with --hw: .*"),
    ("bench attention --quick --hw tiny", r"--quick does not apply with --hw: .*"),
    ("bench top --prefetch 2", r"argument --prefetch: invalid choice: 2 \(choose from 0, 1\)"),
    ("bench top --config edge-moe --blocks 13", r"--blocks 13: model 'edge-moe' has blocks 1 to 12"),
])
def test_bench_hw_bad_name_is_one_line_exit_2(argv, message, tmp_path, monkeypatch, capfd):
    import json

    import moevit.hw.config as config
    from moevit.hw.config import DEFAULT_HW

    # "small": a saved instance whose input buffer is too short for its own model's layers.
    folder = tmp_path / "configs"
    folder.mkdir()
    for path in config.CONFIGS_FOLDER.glob("*.json"):
        (folder / path.name).write_text(path.read_text())
    small = DEFAULT_HW["tiny"].replace(name="small", max_in=128)
    (folder / "small.json").write_text(json.dumps({"config": "tiny", "hw": small.to_dict()}))
    monkeypatch.setattr(config, "CONFIGS_FOLDER", folder)
    monkeypatch.setenv("MOEVIT_BUILD", str(tmp_path / "build"))
    assert main(argv.split()) == 2
    out, err = capfd.readouterr()
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert re.fullmatch(rf"moevit: error: {message}( \(see: moevit[\w -]* --help\))?\n", err), err
    assert not (tmp_path / "build").exists() or not any((tmp_path / "build").rglob("*.*"))


def test_bench_linear_and_attention_run_the_named_configs_model(monkeypatch, capsys):
    import moevit.hw.bench as bench
    import moevit.hw.bench_attention as bench_attention
    from moevit.hw.bench import linear_shapes
    from moevit.hw.config import get_hw_config
    from moevit.model.config import get_config

    seen = []
    monkeypatch.setattr(bench, "_run", lambda hw, shapes, simulator, test_id, bar:
                        seen.append((hw, shapes, test_id)) or [])
    assert main(["bench", "linear", "--hw", "zcu102-edge-moe", "--json"]) == 0
    (hw, shapes, test_id), = seen
    assert hw == get_hw_config("zcu102-edge-moe") and test_id.startswith("bench-linear-zcu102-")
    assert shapes == linear_shapes(get_config("edge-moe"))   # 129 tokens fit 2,080: no chunks
    # A layer longer than the token buffer: in chunks of max_tokens, as the search runs it.
    seen.clear()
    assert main(["bench", "linear", "--hw", "m3vit-s", "--json"]) == 0
    (hw, shapes, _), = seen
    embed = [s for s in shapes if s[0].startswith("patch_embed")]
    assert [s[:2] for s in embed] == [(f"patch_embed[{k}]", n)
                                      for k, n in enumerate([256] * 4 + [176])]

    cases = []
    monkeypatch.setattr(bench_attention, "_case", lambda hw, *case, seed: cases.append(
        (hw, case)) or {})
    assert main(["bench", "attention", "--hw", "zcu104-edge-moe", "--json"]) == 0
    assert cases == [(get_hw_config("zcu104-edge-moe"), ("attn", 3, 129, 64, "verilator"))]
    capsys.readouterr()


def test_bench_top_runs_the_named_config(tmp_path, monkeypatch, capsys):
    import moevit.hw.bench_top as bench_top
    from moevit.hw.config import DEFAULT_HW, get_hw_config

    runs = []

    def fake(config, hw, simulator, blocks, per_instruction=False, latency=0,
             memory="python", board=None, routing="model", **rates):
        runs.append((config, hw) if blocks == 12 or config == "tiny" else (config, hw, blocks))
        if latency:
            runs.append(("latency", latency))
        if routing != "model":
            runs.append(("routing", routing))
        if board or memory != "python":
            runs.append(("memory", board, memory, sorted(rates)))
        return [{"config": config, "hw": hw.name, "task": "semseg",
                 "expert_prefetch": hw.expert_prefetch, "onchip_bytes": hw.onchip_bytes,
                 "cycles": 10, "switch_cycles": 0, "memory_latency": latency, "predicted": 11,
                 "bit_exact": True, "utilization": 0.5, "bytes_read": 1, "latency_ms": 1.0,
                 "busy": {"linear": 0.5}, "simulator": simulator, "sim_seconds": 1.0,
                 "sim_cycles_per_second": 10, "mac_units": 1, "clock_mhz": 200.0}]

    monkeypatch.setattr(bench_top, "_bench", fake)
    monkeypatch.setenv("MOEVIT_BUILD", str(tmp_path / "build"))
    assert main(["bench", "top", "--config", "edge-moe", "--hw", "zcu102-edge-moe"]) == 0
    assert runs == [("edge-moe", get_hw_config("zcu102-edge-moe"))]   # its own prefetch only
    assert re.search(r"^edge-moe +zcu102-edge-moe +semseg ", capsys.readouterr().out, re.M)
    assert (tmp_path / "build/bench/top-edge-moe-zcu102-edge-moe.png").is_file()
    assert (tmp_path / "build/bench/top-edge-moe-zcu102-edge-moe.json").is_file()  # for the report
    runs.clear()
    assert main(["bench", "top", "--json"]) == 0          # the default: both settings
    assert runs == [("tiny", DEFAULT_HW["tiny"]),
                    ("tiny", DEFAULT_HW["tiny"].replace(expert_prefetch=1))]
    runs.clear()
    assert main(["bench", "top", "--config", "edge-moe", "--prefetch", "1", "--json"]) == 0
    assert runs == [("edge-moe", DEFAULT_HW["edge-moe"].replace(expert_prefetch=1))]
    runs.clear()
    assert main(["bench", "top", "--config", "edge-moe", "--blocks", "2", "--prefetch", "0"]) == 0
    assert runs == [("edge-moe", DEFAULT_HW["edge-moe"], 2)]
    assert (tmp_path / "build/bench/top-edge-moe-blocks2.json").is_file()
    runs.clear()
    assert main(["bench", "top", "--prefetch", "0", "--onchip", "32768", "--json"]) == 0
    assert runs == [("tiny", DEFAULT_HW["tiny"]),          # beside it, the on-chip rows
                    ("tiny", DEFAULT_HW["tiny"].replace(onchip_bytes=32768))]
    runs.clear()
    assert main(["bench", "top", "--prefetch", "0", "--latency", "50"]) == 0
    assert runs == [("tiny", DEFAULT_HW["tiny"]), ("latency", 50)]
    assert re.search(r"^tiny +tiny +semseg +0 +0 +50 +10 +11 ", capsys.readouterr().out, re.M)
    assert (tmp_path / "build/bench/top-tiny-latency50.json").is_file()
    runs.clear()
    assert main(["bench", "top", "--prefetch", "0", "--board", "zcu102", "--memory", "verilog",
                 "--json"]) == 0                  # the board's rates and latency, each run
    assert runs == [("tiny", DEFAULT_HW["tiny"]),
                    ("memory", "zcu102", "verilog",
                     ["bandwidth", "board_latency", "memory_bandwidth"])]
    assert (tmp_path / "build/bench/top-tiny-zcu102.json").is_file()
    runs.clear()
    assert main(["bench", "top", "--prefetch", "0", "--routing", "balanced", "--json"]) == 0
    assert runs == [("tiny", DEFAULT_HW["tiny"]), ("routing", "balanced")]
    assert (tmp_path / "build/bench/top-tiny-balanced.json").is_file()
    runs.clear()
    assert main(["bench", "top", "--latency", "-1"]) == 2            # before any run
    assert runs == [] and "Memory latency must be a whole number of cycles >= 0, not -1" in \
        capsys.readouterr().err


def test_bench_top_per_instruction_prints_each_task_s_instructions(tmp_path, monkeypatch,
                                                                  capsys):
    """--per-instruction: the bench asked for the timeline, and each task's instructions
    printed with their simulated and predicted cycles and the error (rows made up: this is
    the plumbing; tests/test_sim_top.py runs the timeline)."""
    import moevit.hw.bench_top as bench_top

    asked = []

    def fake(config, hw, simulator, blocks, per_instruction=False, latency=0, **memory):
        asked.append(per_instruction)
        return [{"config": config, "hw": hw.name, "task": "semseg",
                 "expert_prefetch": hw.expert_prefetch, "onchip_bytes": 0, "cycles": 300,
                 "memory_latency": latency, "predicted": 290,
                 "switch_cycles": 0, "bit_exact": True, "utilization": 0.5, "bytes_read": 1,
                 "latency_ms": 1.0, "busy": {"linear": 0.5}, "simulator": simulator,
                 "sim_seconds": 1.0, "sim_cycles_per_second": 10, "mac_units": 1,
                 "clock_mhz": 200.0,
                 "instructions": [{"index": 0, "mnemonic": "PATCHIFY", "bound": "compute",
                                   "simulated": 200, "predicted": 190, "error": -0.05},
                                  {"index": 1, "mnemonic": "COPY", "bound": "memory",
                                   "simulated": 100, "predicted": 103, "error": 0.03}]}]

    monkeypatch.setattr(bench_top, "_bench", fake)
    monkeypatch.setenv("MOEVIT_BUILD", str(tmp_path / "build"))
    assert main(["bench", "top", "--prefetch", "0", "--per-instruction"]) == 0
    out = capsys.readouterr().out
    assert asked == [True]
    assert "tiny semseg prefetch 0, per instruction (from its issue to the next one's):" in out
    assert re.search(r"^ +0 +PATCHIFY +200 +190 +-5\.00% +compute$", out, re.M), out
    assert re.search(r"^ +1 +COPY +100 +103 +\+3\.00% +memory$", out, re.M), out
    assert "tiny semseg, per kind of instruction:" in out
    assert re.search(r"^ +PATCHIFY +1 +200 +190 +-5\.00%$", out, re.M), out
    assert main(["bench", "top", "--prefetch", "0"]) == 0
    assert asked == [True, False] and "per instruction" not in capsys.readouterr().out


def test_bench_top_blocks_cut_the_program_after_a_block():
    """--blocks N: the compiled program's first instructions, up to the next block's norm1."""
    from moevit.hw.bench_top import _program
    from moevit.model.config import get_config

    whole, image = _program("tiny")
    assert _program("tiny", blocks=4)[0] == whole          # all four: the whole program
    for blocks in (1, 2, 3):
        cut, same = _program("tiny", blocks=blocks)
        assert (same == image).all()
        assert cut.instructions == whole.instructions[:len(cut.instructions)]
        count = len(cut.instructions)
        following = whole.instructions[count].MNEMONIC
        # The last block's last instruction; after it, the next block's norm1.
        assert cut.instructions[-1].MNEMONIC == ("COMBINE" if get_config("tiny").is_moe(blocks - 1)
                                                 else "LINEAR") and following == "LAYERNORM"


@pytest.mark.parametrize("chunks", [1, 2])
def test_bench_top_blocks_cut_two_streams_before_the_next_attention(chunks):
    """--blocks N of a program of two interleaved streams (one image in token chunks on two
    issue lanes): a prefix up to block N's first ATTENTION, holding every instruction of
    the blocks before it (each chunk's COMBINE of each MoE block among them)."""
    from moevit.hw.bench_top import _first_blocks
    from moevit.hw.config import DEFAULT_HW
    from moevit.hw.program.compiler import compile_program
    from moevit.model.config import get_config
    from moevit.sim.units import tiny_quantized

    model = get_config("tiny")
    hw = DEFAULT_HW["tiny"].replace(memory_ports=2, issue_lanes=2, token_chunks=chunks)
    whole = compile_program(tiny_quantized(trained=False)[0], hw)
    for blocks in (1, 2, 3):
        cut = _first_blocks(whole, model, blocks)
        count = len(cut.instructions)
        assert cut.instructions == whole.instructions[:count]
        assert (cut.concurrent, cut.streams) == (whole.concurrent[:count], whole.streams[:count])
        mnemonics = [d.MNEMONIC for d in cut.instructions]
        assert whole.instructions[count].MNEMONIC == "ATTENTION"
        assert mnemonics.count("ATTENTION") == blocks * chunks
        assert mnemonics.count("COMBINE") == 2 * sum(map(model.is_moe, range(blocks)))


def test_balanced_routing_chooses_every_expert():
    """--routing balanced: the gates replaced so that every expert of every MoE layer is
    chosen on the bench's image, by both tasks, and the rest of the model unchanged."""
    import numpy as np

    from moevit.hw.bench_top import _program, balanced_gates
    from moevit.model.config import get_config
    from moevit.model.data import SyntheticDataset
    from moevit.model.integer import golden
    from moevit.model.integer.evaluate import signal_model
    from moevit.model.integer.quantize import quantize

    model = get_config("edge-moe")
    data = SyntheticDataset(model, "val", size=9, seed=1)
    qmodel = quantize(signal_model(model), data.images[:8])
    image = golden.quantize_image(data.images[8].numpy(), qmodel.scale("input"))
    before = {k: v.copy() for k, v in qmodel.arrays.items()}
    balanced = balanced_gates(qmodel, image)
    changed = {k for k in before if not np.array_equal(before[k], balanced.arrays[k])}
    assert changed and all(".mlp.gates." in k for k in changed)
    for task in range(len(model.tasks)):
        run = golden.run(balanced, image, task)
        for i in (i for i in range(model.depth) if model.is_moe(i)):
            counts = np.bincount(run.tensors[f"blocks.{i}.mlp.gate.topk"].ravel(),
                                 minlength=model.experts)
            assert 5 <= counts.min() and counts.max() <= 33, (task, i, counts)
    again, plain = _program("edge-moe", routing="balanced")[0], _program("edge-moe")[0]
    assert again.instructions == plain.instructions and again.weights != plain.weights


def test_hw_generate_and_estimate_take_the_named_configs(tmp_path, monkeypatch, capsys):
    import moevit.hw.estimate as estimate
    import moevit.hw.generate as generate
    from moevit.hw.config import get_hw_config

    assert main(["hw", "generate", "--config", "zcu102-edge-moe", "--unit", "gelu", "-o",
                 str(tmp_path / "rtl")]) == 0
    assert (tmp_path / "rtl" / "moevit_gelu.v").is_file()
    seen = []
    monkeypatch.setenv("MOEVIT_BUILD", str(tmp_path / "build"))
    monkeypatch.setattr(generate, "verilog_file", lambda unit, hw, folder: seen.append(hw)
                        or folder / f"{unit}.v")
    monkeypatch.setattr(estimate, "estimate_verilog", lambda unit, path, top, folder:
                        FakeEstimate(unit))
    with pytest.warns(UserWarning):
        assert main(["hw", "estimate", "--config", "u280-edge-moe", "--unit", "linear",
                     "--quiet"]) == 0
    assert seen == [get_hw_config("u280-edge-moe")]
    assert (tmp_path / "build" / "estimate" / "u280-edge-moe").is_dir()
    capsys.readouterr()
