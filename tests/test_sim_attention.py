"""The attention kernel in simulation, bit for bit against the golden model.

Fast (Icarus): random heads built to drive the softmax to its extremes
(all-equal rows, one dominant score, saturating scores and contexts) with
seeded gaps and back-pressure, and the first attention layer of the ``tiny``
model with untrained weights that carry signal (no training in the fast suite). Slow (``make sim``, ``$SIM``): every attention layer of the
tiny model on its default hardware, and one ViT-S head. Each bench compares
every context value with ``golden.attention_head``; the tests also compare
with the golden model's recorded ``blocks.{i}.attn.ctx``.
"""

import numpy as np
import pytest

from moevit.hw.config import DEFAULT_HW, HwConfig
from moevit.hw.program.descriptor import AttentionDescriptor, DescriptorError
from moevit.model.integer import intops
from moevit.sim.runner import default_simulator
from moevit.sim.units import (attention_descriptor, attention_layer, run_attention,
                              sharp_head, tiny_quantized)


def extreme_heads(rng, tokens, head_dim):
    """Four heads: random; all-equal score rows; one dominant key per query; saturation."""
    q, k, v = (rng.integers(-128, 128, (4, tokens, head_dim)) for _ in range(3))
    k[1] = k[1, :1]  # every key equal: each row of scores is constant
    sign = rng.choice([-1, 1], head_dim)
    q[2] = sign * rng.integers(1, 5, (tokens, head_dim))
    k[2] = rng.integers(-4, 5, (tokens, head_dim))
    k[2, 3] = sign * 127  # one key far above the others for every query
    q[3] = -128  # the largest scores an int8 head can make, and saturating contexts
    k[3] = np.where(rng.random((tokens, head_dim)) < 0.5, -128, 127)
    v[3] = np.where(rng.random((tokens, head_dim)) < 0.5, -128, 127)
    return q, k, v


@pytest.mark.parametrize("gaps, stall", [("random", "random"), ("none", "fixed")])
def test_extremes_icarus(gaps, stall):
    hw = HwConfig(name="attn-small", score_lanes=8, kv_depth=24, max_head_dim=16,
                  heads_parallel=2)
    rng = np.random.default_rng(7)
    q, k, v = extreme_heads(rng, 21, 16)
    sm_mult, sm_shift = intops.softmax_constants(1 / 64)
    consts = (sm_mult, sm_shift, *map(int, intops.quantize_multiplier(1 / 40)))
    # The bench fails on any difference; check the extremes were reached too.
    from moevit.model.integer.golden import AttentionConsts, attention_head

    probs = [attention_head(q[h], k[h], v[h], AttentionConsts(*consts)).probs for h in range(4)]
    assert (probs[1] == probs[1][:, :1]).all()
    assert probs[2][:, 3].min() >= intops.PROB_ONE - 64
    run = run_attention(hw, q, k, v, consts, test_id=f"attention-extremes-{gaps}-{stall}",
                        simulator="icarus", gaps=gaps, stall=stall, seed=3)
    out = run.out
    assert out[3].min() == -128 and out[3].max() == 127
    assert run.cycles > 0


def _tiny_block(block, trained=True):
    from moevit.model.integer import golden

    qmodel, image = tiny_quantized(trained)
    result = golden.run(qmodel, image, 0)
    return attention_layer(qmodel, result.tensors, block)


def test_tiny_model_first_layer_icarus():
    """The untrained signal model's first layer (the trained model's are slow tests)."""
    q, k, v, consts, ctx = _tiny_block(0, trained=False)
    # Other lanes than the default hardware: two heads at once, one chunk per score.
    hw = DEFAULT_HW["tiny"].replace(score_lanes=16, heads_parallel=2, kv_depth=72,
                                    max_head_dim=16)
    run = run_attention(hw, q, k, v, consts, test_id="attention-tiny-block0",
                        simulator="icarus", seed=1)
    np.testing.assert_array_equal(np.concatenate(list(run.out), axis=1), ctx)


def test_tiny_first_layer_in_two_ranges_of_query_rows_icarus():
    """The untrained first layer's query rows in two token chunks, each against every key
    (the descriptor's ``rows``), on four row lanes (neither range a multiple of them) and
    two banks of K and V: together the whole layer's context, bit for bit; each run's
    cycles without pauses the kernel's model."""
    q, k, v, consts, ctx = _tiny_block(0, trained=False)
    hw = DEFAULT_HW["tiny"].replace(row_lanes=4, kv_banks=2)
    parts = []
    for first, end in ((0, 30), (30, q.shape[1])):
        run = run_attention(hw, q[:, first:end], k, v, consts, gaps="none", stall="none",
                            test_id=f"attention-tiny-rows-{first}", simulator="icarus")
        desc = attention_descriptor(hw, k.shape[1], q.shape[0], q.shape[2], consts,
                                    rows=end - first)
        print(f"rows {first}..{end - 1}: {run.cycles} cycles, model {desc.expected_cycles()}")
        assert run.cycles == desc.expected_cycles()
        parts.append(np.concatenate(list(run.out), axis=1))
    np.testing.assert_array_equal(np.concatenate(parts), ctx)


def test_packed_scores_icarus():
    """Two keys a DSP48E2 (``score_packing`` 2): every score exact. A head whose every
    score counts (:func:`moevit.sim.units.sharp_head`: one unit more on any one score
    changes every query row's context; half its products negative, the low product's
    borrow), beside the saturating head of :func:`extreme_heads`; an odd
    sequence (its last key pairs with nothing) and an even one, on two row lanes, with
    gaps and back-pressure."""
    hw = HwConfig(name="attn-packed", score_lanes=8, kv_depth=24, max_head_dim=16,
                  row_lanes=2, score_packing=2)
    rng = np.random.default_rng(21)
    for tokens in (21, 14):
        sharp = sharp_head(rng, tokens, 16)
        extreme = extreme_heads(rng, tokens, 16)
        q, k, v = (np.stack([s, e[3]]) for s, e in zip(sharp[:3], extreme))
        consts = sharp[3]
        run = run_attention(hw, q, k, v, consts, test_id=f"attention-packed-{tokens}",
                            simulator="icarus", seed=tokens)
        assert run.out.shape == (2, tokens, 16)


def test_more_query_rows_than_keys():
    hw = HwConfig(name="small")
    with pytest.raises(DescriptorError, match=r"^Attention descriptor of 9 query rows is "
                       r"outside 1 to its 8 tokens$"):
        AttentionDescriptor(hw, tokens=8, rows=9, heads=1, head_dim=16)


@pytest.mark.slow
@pytest.mark.parametrize("block", range(4))
def test_tiny_model_every_layer(block):
    q, k, v, consts, ctx = _tiny_block(block)
    run = run_attention(DEFAULT_HW["tiny"], q, k, v, consts,
                        test_id=f"attention-tiny-block{block}-{default_simulator()}",
                        seed=block)
    np.testing.assert_array_equal(np.concatenate(list(run.out), axis=1), ctx)


@pytest.mark.slow
def test_vit_s_head():
    rng = np.random.default_rng(11)
    q, k, v = (rng.integers(-128, 128, (1, 197, 64)) for _ in range(3))
    consts = (*intops.softmax_constants(1 / 512), *map(int, intops.quantize_multiplier(1 / 40)))
    run = run_attention(HwConfig(name="vit-s"), q, k, v, consts,
                        test_id=f"attention-vit-s-{default_simulator()}", gaps="random",
                        stall="random", seed=2)
    assert run.out.shape == (1, 197, 64)


# Bad input ---------------------------------------------------------------------
def test_sequence_longer_than_the_buffers():
    hw = HwConfig(name="small", kv_depth=64)
    with pytest.raises(DescriptorError, match=r"^Attention descriptor of 65 tokens exceeds the "
                       r"64-token key/value buffers of hardware 'small'$"):
        AttentionDescriptor(hw, tokens=65, heads=1, head_dim=16)


def test_head_dim_not_divisible_by_the_lanes():
    hw = HwConfig(name="small", score_lanes=8)
    with pytest.raises(DescriptorError, match=r"^Attention descriptor head dim 20 is not "
                       r"divisible by the 8 score lanes of hardware 'small'$"):
        AttentionDescriptor(hw, tokens=8, heads=1, head_dim=20)


def test_model_longer_than_the_buffers_at_generation():
    from moevit.errors import ConfigError
    from moevit.model.config import get_config

    with pytest.raises(ConfigError, match=r"^Key/value buffer of 64 tokens cannot hold the 65 "
                       r"tokens of model 'tiny'; needs 65$"):
        HwConfig.for_model(get_config("tiny"), kv_depth=64)


def test_model_head_dim_not_divisible_at_generation():
    from moevit.errors import ConfigError
    from moevit.model.config import get_config

    with pytest.raises(ConfigError, match=r"^Score lanes 32 do not divide the head width 16 of "
                       r"model 'tiny'$"):
        HwConfig.for_model(get_config("tiny"), score_lanes=32)


def test_descriptor_packs_and_counts_work():
    hw = HwConfig(name="small", score_lanes=8, heads_parallel=2)
    desc = AttentionDescriptor(hw, tokens=197, heads=6, head_dim=64, sm_mult=3, sm_shift=9,
                               out_mult=5, out_shift=30)
    assert (desc.chunks, desc.rounds) == (8, 3)
    assert AttentionDescriptor.unpack(hw, desc.pack()) == desc
    assert desc.macs == 2 * 6 * 197 * 197 * 64
    assert desc.ideal_cycles() == 3 * 197 * 197 * 8


@pytest.mark.slow
def test_bench_attention_rows_equal_the_cost_model(capsys):
    """``moevit bench attention --quick --json``: one JSON list, model == simulated cycles."""
    import json

    from moevit.cli import main

    assert main(["bench", "attention", "--quick", "--json", "--simulator",
                 default_simulator()]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["layer"] for r in rows] == ["attn"]
    assert all(r["cycles"] == r["model_cycles"] > r["ideal_cycles"] for r in rows)
