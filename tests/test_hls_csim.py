"""The HLS kernels in C simulation (g++, hls4ml's ap_types) against the golden model.

Every kernel's testbench output is compared in full with the golden model:
the named tensors of the ``tiny`` model (every layer, every task) and
``intops`` on ragged random cases, whose seed is in the test id and every
failure message.

Fast (``make test``): the linear kernel, the softmax and the LayerNorm on
``tiny``'s HwConfig (the model's cases and a few short random ones), the
linear kernel with DSP packing and chains, a
changed requantize constant that must be seen, a testbench that fails, and
the missing compiler. Slow: every kernel on ``tiny`` (the model's cases and
``MOEVIT_HLS_CASES`` random ones, default 40) and on ``MOEVIT_HLS_POINTS``
random design points (default 8). Replay a seed with ``MOEVIT_SEED=<seed>``.
"""

import dataclasses
import os
import re

import numpy as np
import pytest

from moevit.cli import main
from moevit.hls import cases as C
from moevit.hls.csim import run_kernel
from moevit.hw.config import get_hw_config

CASES = int(os.environ.get("MOEVIT_HLS_CASES", 40))
POINTS = int(os.environ.get("MOEVIT_HLS_POINTS", 8))
FAST_KERNELS = ("linear", "softmax", "layernorm")


def _seeds(seeds):
    replay = os.environ.get("MOEVIT_SEED")
    return [int(replay)] if replay else seeds


@pytest.fixture(scope="module")
def tiny():
    return get_hw_config("tiny")


@pytest.fixture(scope="module")
def tiny_cases():
    qmodel, image = C.quantized_model("tiny")
    return C.model_cases(qmodel, image)


def _check(result, what):
    assert result.cases > 0
    assert result.exact, f"{what}: " + "; ".join(result.mismatches[:5])


@pytest.mark.parametrize("kernel", FAST_KERNELS)
def test_kernel_matches_golden_on_tiny(kernel, tiny, tiny_cases):
    seed = _seeds([1])[0]
    cases = tiny_cases[kernel] + C.random_cases(kernel, tiny, seed, 4, max_tokens=16)
    _check(run_kernel(kernel, tiny, cases, tag=f"test-{kernel}"), f"{kernel}, random seed {seed}")


@pytest.mark.parametrize("packing,chain", [(2, 1), (1, 3), (2, 2), (2, 7)])
def test_linear_packs_and_chains_as_the_rtl(packing, chain, tiny, tiny_cases):
    """The HwConfig's DSP packing and chains in the HLS linear kernel: the same results
    (tiny's buffers hold 256 features, no multiple of 3 or 7: a last step's features
    past them read zeros)."""
    hw = tiny.replace(dsp_packing=packing, chain_depth=chain)
    seed = _seeds([chain])[0]
    cases = tiny_cases["linear"] + C.random_cases("linear", hw, seed, 4, max_tokens=16)
    _check(run_kernel("linear", hw, cases, tag=f"test-linear-{packing}-{chain}"),
           f"linear, packing {packing}, chain {chain}, random seed {seed}")


def _sharp_attention(rng, tokens, head_dim):
    """:func:`moevit.sim.units.sharp_head` as an attention case."""
    from moevit.sim.units import sharp_head

    q, k, v, consts, context = sharp_head(rng, tokens, head_dim)
    qkv = np.concatenate([q, k, v], axis=1).astype(np.int8)
    return C.attention_case(f"every score counts, {tokens} keys", qkv, 1, consts,
                            expected=context)


@pytest.mark.parametrize("packing", [1, 2])
def test_attention_packs_keys_as_the_rtl(packing, tiny, tiny_cases):
    """The HwConfig's score packing in the HLS attention (two keys a DSP48E2 in QK): the
    same context on the model's heads, random ones (a chunk of query rows among them) and
    two whose every score counts, an odd sequence (its last key pairs with zero) and an
    even one, on two row lanes."""
    hw = tiny.replace(score_packing=packing, row_lanes=2)
    seed = _seeds([packing])[0]
    rng = np.random.default_rng(seed)
    cases = (tiny_cases["attention"][:2] + [_sharp_attention(rng, n, hw.score_lanes * 2)
                                            for n in (21, 14)]
             + C.random_cases("attention", hw, seed, 4, max_tokens=24))
    _check(run_kernel("attention", hw, cases, tag=f"test-attention-{packing}"),
           f"attention, score packing {packing}, random seed {seed}")


def test_model_cases_cover_every_layer(tiny_cases):
    # Both tasks: 26 linear layers each (the fused residual cases besides), 4 blocks of
    # 4 heads, 9 LayerNorms, 2 MoE layers.
    assert sum(c.label.endswith(("qkv", "proj", "fc1", "fc2", "heads.0", "heads.1"))
               or ".gates." in c.label for c in tiny_cases["linear"]) >= 2 * 24
    assert sum("+" in c.label for c in tiny_cases["linear"]) == 2 * 7
    assert len(tiny_cases["attention"]) == 2 * 4
    assert len(tiny_cases["layernorm"]) == 2 * 9
    assert len(tiny_cases["moe_gate"]) == len(tiny_cases["moe_combine"]) == 2 * 2


# Positions of the per-channel multipliers and shifts in a linear case's inputs
# (hls/tb/tb_linear.cpp reads 12 scalars, x, w, bias, then these).
MULT, SHIFT = 15, 16


@pytest.mark.parametrize("index, bit", [(MULT, 1 << 13), (SHIFT, 1)])
def test_flipped_requantize_constant_is_seen(index, bit, tiny, tiny_cases):
    """The same layer with one bit of each channel's multiplier (or shift) flipped:
    the kernel computes with it, the golden output stays, and the comparison must fail."""
    case = next(c for c in tiny_cases["linear"] if c.label == "task 0 blocks.0.attn.qkv")
    constants = np.array(case.inputs[index], np.int64)
    assert constants.shape == (192,)
    constants ^= bit
    changed = dataclasses.replace(case, inputs=[*case.inputs[:index], constants,
                                                *case.inputs[index + 1:]])
    result = run_kernel("linear", tiny, [case, changed], tag=f"test-flipped-{index}")
    assert len(result.mismatches) == 1
    assert result.mismatches[0].startswith("task 0 blocks.0.attn.qkv (65x64->192) y: ")


def test_failing_testbench_is_a_mismatch(tiny, tiny_cases):
    """A case whose input ends early: the testbench stops with an error, never a pass."""
    case = tiny_cases["softmax"][0]
    truncated = dataclasses.replace(case, inputs=[*case.inputs[:-1], case.inputs[-1][:-1]])
    result = run_kernel("softmax", tiny, [truncated], tag="test-truncated")
    assert not result.exact
    assert result.mismatches == ["tb_softmax exit 3: testbench: input file ended early"]


def test_empty_stream_read_is_a_mismatch(tiny, tiny_cases, tmp_path, monkeypatch):
    """hls::stream's C-simulation model only warns on a read of an empty stream;
    the run must fail on that warning."""
    from moevit.hls import csim

    folder = tmp_path / "tb"
    folder.mkdir()
    (folder / "tb_io.h").write_text((csim.TB_DIR / "tb_io.h").read_text())
    source = (csim.TB_DIR / "tb_softmax.cpp").read_text()
    reads_one_more = source.replace("probs.read().to_int64());",
                                    "probs.read().to_int64());\n            probs.read();")
    assert reads_one_more != source
    (folder / "tb_softmax.cpp").write_text(reads_one_more)
    monkeypatch.setattr(csim, "TB_DIR", folder)
    result = run_kernel("softmax", tiny, tiny_cases["softmax"][:1], folder=tmp_path)
    assert len(result.mismatches) == 1
    assert result.mismatches[0].startswith("tb_softmax exit 0: WARNING: Hls::stream 'probs' is "
                                           "read while empty")


def test_missing_compiler_is_one_clear_error(monkeypatch, capsys):
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    assert main(["hls", "csim", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == ("moevit: error: C++ compiler '/nonexistent/g++' not found: the HLS C "
                   "simulation needs g++ with C++17 (apt-get install g++, or set CXX)\n")


def test_unknown_kernel_is_one_clear_error(capsys):
    assert main(["hls", "csim", "--kernel", "conv"]) == 2
    assert capsys.readouterr().err.startswith("moevit: error: Unknown kernel 'conv'; the kernels: ")


def test_csim_command_json():
    import json
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["hls", "csim", "--kernel", "layernorm", "--random", "2", "--seed", "7",
                     "--json"]) == 0
    rows = json.loads(out.getvalue())
    assert [(r["kernel"], r["set"], r["cases"], r["bit_exact"], r["seed"]) for r in rows] == [
        ("layernorm", "tiny model", 18, True, 7), ("layernorm", "random seed 7", 2, True, 7)]


def test_csim_command_fails_on_a_mismatch(monkeypatch, capsys):
    from moevit.hls import csim

    def mismatching(kernel, hw, cases, **options):
        return csim.KernelResult(kernel, len(cases), [cases[0].shape], ["case 0 y: 1 of 4 differ"])

    monkeypatch.setattr(csim, "run_kernel", mismatching)
    assert main(["hls", "csim", "--kernel", "softmax", "--random", "1", "--quiet"]) == 1
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("softmax")]
    assert rows == [["softmax", "tiny", "model", "65x65", "36", "NO"],
                    ["softmax", "random", "seed", "0", "3x194", "1", "NO"]]
    assert "\nmismatch: softmax: case 0 y: 1 of 4 differ\n" in out


# Slow: every kernel, tiny and random design points ----------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("kernel", C.KERNELS)
def test_every_kernel_on_tiny(kernel, tiny, tiny_cases):
    for seed in _seeds([1, 2]):
        cases = tiny_cases[kernel] + C.random_cases(kernel, tiny, seed, CASES)
        _check(run_kernel(kernel, tiny, cases, tag=f"test-slow-{kernel}"),
               f"{kernel}, random seed {seed}")


@pytest.mark.slow
@pytest.mark.parametrize("kernel", C.KERNELS)
def test_every_kernel_on_the_widest_default(kernel):
    """m3vit-s's HwConfig: 1536-feature buffers (LayerNorm rows up to 1024, the
    widths of its sums), 1216-token K/V buffers; sequences capped at 300 tokens."""
    hw = get_hw_config("m3vit-s")
    for seed in _seeds([1]):
        cases = C.random_cases(kernel, hw, seed, CASES // 4, max_tokens=300)
        _check(run_kernel(kernel, hw, cases), f"{kernel} on m3vit-s, random seed {seed}")


@pytest.mark.slow
@pytest.mark.parametrize("seed", _seeds(list(range(1, POINTS + 1))))
def test_random_design_point(seed):
    hw = C.random_hw(seed)
    for kernel in C.KERNELS:
        _check(run_kernel(kernel, hw, C.random_cases(kernel, hw, seed, CASES // 2)),
               f"{kernel} on {hw}, seed {seed}")


@pytest.mark.slow
def test_csim_command(capsys):
    assert main(["hls", "csim", "--quiet", "--random", "5"]) == 0
    out = capsys.readouterr().out
    for kernel in C.KERNELS:
        assert f"\n{kernel:<13}tiny model" in out
    assert "NO" not in out
    calls = [line.split() for line in out.splitlines() if re.match(r"\d+ +task \d", line)]
    assert [c[:3] + c[-1:] for c in calls] == [["0", "task", "0", "yes"], ["1", "task", "1", "yes"],
                                               ["2", "task", "0", "yes"]]
