"""The configuration header of the HLS kernels (moevit.hls.generate)."""

import re
import subprocess

import pytest

from moevit.errors import ConfigError
from moevit.hls.csim import CXXFLAGS, TB_DIR, ap_types_dir, compiler
from moevit.hls.generate import INCLUDE_DIR, check_hls, parameters_header, write_parameters
from moevit.hw.config import HwConfig, get_hw_config


def _structs(text):
    """``{struct: {member: value}}`` of the CONFIG_T structs of a parameters.h."""
    structs = {}
    for name, body in re.findall(r"struct (\w+_config) \{(.*?)\};", text, re.S):
        structs[name] = {m: int(v) for m, v in re.findall(r"static const unsigned (\w+) = (\d+);", body)}
    return structs


@pytest.mark.parametrize("config", ["tiny", "edge-moe", "m3vit-s", "u280-m3vit-s",
                                    "tiny packed in chains of 3", "tiny with packed scores"])
def test_header_holds_the_hwconfig(config):
    hw = get_hw_config(config.split()[0])
    if "chains" in config:
        hw = hw.replace(dsp_packing=2, chain_depth=3)
    if "scores" in config:
        hw = hw.replace(score_packing=2)
    structs = _structs(parameters_header(hw))
    experts = min(hw.cols, 255)
    assert structs == {
        "linear_config": dict(rows=hw.rows, cols=hw.cols, max_tokens=hw.max_tokens,
                              max_in=hw.max_in, post_lanes=hw.post_lanes, acc_width=hw.acc_width,
                              dsp_packing=hw.dsp_packing, chain_depth=hw.chain_depth),
        "attention_softmax_config": dict(max_row=hw.kv_depth),
        "attention_config": dict(kv_depth=hw.kv_depth, max_head_dim=hw.max_head_dim,
                                 score_lanes=hw.score_lanes, heads_parallel=hw.heads_parallel,
                                 row_lanes=hw.row_lanes, score_packing=hw.score_packing),
        "layernorm_config": dict(max_dim=min(hw.max_in, 1024)),
        "gate_softmax_config": dict(max_row=experts),
        "moe_config": dict(max_tokens=hw.max_tokens, max_experts=experts, max_dim=hw.max_in),
    }


def test_header_holds_the_program_format():
    """Every descriptor field's bits, the opcodes, the header words and error codes, the
    fingerprint and bus width: as moevit.hw.program defines them, read back from the text."""
    from moevit.hw.program.isa import OPCODES
    from moevit.hw.program.program import HEADER_FIELDS, MAGIC, hw_hash
    from moevit.hw.program.regmap import ERROR_CODES

    hw = get_hw_config("tiny")
    text = parameters_header(hw)
    for opcode, cls in OPCODES.items():
        body = re.search(rf"struct {cls.MNEMONIC.lower()}_fields \{{(.*?)\n\}};", text, re.S)[1]
        ranges = re.findall(r"(\w+) = i\.range\((\d+), (\d+)\);", body)
        assert [(n, int(lo), int(hi) - int(lo) + 1) for n, hi, lo in ranges] == \
            [(n, o, b) for n, o, b, _, _ in cls.describe()[1:]]
        addresses = [n for n, _, _, _, _ in cls.describe() if n.endswith("_addr")]
        assert re.search(r"return (.*);", body.split("addresses_below")[1])[1] == \
            " && ".join(f"{a} < end" for a in addresses)
        assert f"case program::OP_{cls.MNEMONIC}: return {cls.words()};" in text
        assert f"OP_{cls.MNEMONIC} = {opcode}" in text
    digest = hw_hash(hw)
    for line in (f"MAGIC = {MAGIC:#010x}u;", f"HW_HASH_LO = {digest & 0xFFFFFFFF:#010x}u;",
                 f"HW_HASH_HI = {digest >> 32:#010x}u;", "BUS_BITS = 128;"):
        assert f"static const unsigned {line}" in text
    assert ", ".join(f"HEADER_{n.upper()} = {k}" for k, n in enumerate(HEADER_FIELDS)) in text
    assert ", ".join(f"ERROR_{n.upper()} = {c}" for n, (c, _) in ERROR_CODES.items()) in text


def test_opcode_the_top_does_not_run_is_a_config_error(monkeypatch, tmp_path):
    from dataclasses import dataclass

    from moevit.hw.program import isa
    from moevit.hw.program.descriptor import Descriptor

    @dataclass(frozen=True)
    class SortDescriptor(Descriptor):
        OPCODE, MNEMONIC, UNIT, OUTPUT = 10, "SORT", "mover", None

    monkeypatch.setitem(isa.OPCODES, 10, SortDescriptor)
    message = (r"Opcode 10 \(SORT\) of the instruction set has no case in the HLS top "
               r"\(hls/src/top\.cpp executes LINEAR, ATTENTION, .*, COMBINE\)")
    with pytest.raises(ConfigError, match=f"^{message}$"):
        write_parameters(get_hw_config("tiny"), tmp_path)
    assert not any(tmp_path.iterdir())


def test_written_under_build(tmp_path, monkeypatch):
    monkeypatch.setenv("MOEVIT_BUILD", str(tmp_path))
    hw = get_hw_config("tiny")
    path = write_parameters(hw)
    assert path == tmp_path / "hls" / "tiny" / "parameters.h"
    assert path.read_text() == parameters_header(hw)
    assert [p.name for p in path.parent.iterdir()] == ["parameters.h"]


@pytest.mark.parametrize("changes, message", [
    (dict(name="a/b"), r"HwConfig name 'a/b' cannot name the HLS build folder; use letters, "
                       r"digits, '_', '\.' and '-'"),
    (dict(kv_depth=2**15 + 1), r"Key/value buffer depth 32769 exceeds the HLS kernels' limit of "
                               r"32768 \(softmax rows of at most 2\*\*15 scores \(intops\.softmax\)\)"),
    (dict(max_tokens=2**16), r"Token buffer depth 65536 exceeds the HLS kernels' limit of 65535 "
                             r"\(16-bit token indices\)"),
    (dict(max_in=2**16 + 1), r"Input buffer depth 65537 exceeds the HLS kernels' limit of 65536 "
                             r"\(linear inputs of at most 2\*\*16 features \(intops\.linear_acc\)\)"),
    (dict(memory_ports=2, issue_lanes=2), r"The HLS top runs one instruction at a time; HwConfig "
                                          r"'custom' has 2 issue lanes \(the RTL top's option\)"),
])
def test_inexpressible_hwconfig_is_a_config_error(changes, message, tmp_path):
    hw = HwConfig(**changes)
    with pytest.raises(ConfigError, match=f"^{message}$"):
        check_hls(hw)
    with pytest.raises(ConfigError, match=f"^{message}$"):
        write_parameters(hw, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-written


@pytest.mark.slow
@pytest.mark.parametrize("config", ["edge-moe", "m3vit-s"])
def test_every_template_compiles_for_the_default_hwconfigs(config, tmp_path):
    """Every testbench and the HLS top instantiate their kernels with the config's CONFIG_T
    structs and its program format."""
    from moevit.hls.generate import TOP_SOURCE

    write_parameters(get_hw_config(config), tmp_path)
    for source in [*sorted(TB_DIR.glob("tb_*.cpp")), TOP_SOURCE]:
        done = subprocess.run([compiler(), *CXXFLAGS, "-fsyntax-only", "-I", str(INCLUDE_DIR),
                               "-I", str(TB_DIR), "-I", str(tmp_path), "-isystem",
                               str(ap_types_dir()), str(source)], capture_output=True, text=True)
        assert done.returncode == 0, f"{source.name} for {config}: {done.stderr[-2000:]}"
