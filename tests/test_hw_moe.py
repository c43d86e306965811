"""The MoE unit's interface, descriptor, cost model and host-side reference (no simulation).

The simulations are in ``test_sim_moe.py``; here: the signature follows the
HwConfig, the descriptor packs, unpacks and refuses what the unit cannot run,
the reference that the random simulations are checked against is the golden
model's MoE layer (both gate rules), and the list decoder refuses a
malformed stream.
"""

import numpy as np
import pytest

from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from moevit.hw.config import DEFAULT_HW
from moevit.hw.program.descriptor import FAULT_WIDTH, DescriptorError, MoeDescriptor
from moevit.hw.units.linear import output_layout
from moevit.hw.units.moe import MoeUnit, decode_lists, list_layout, moe_reference
from moevit.sim.streams import pack

HW = DEFAULT_HW["tiny"]


def test_signature_follows_the_config():
    hw = HW.replace(cols=8, post_lanes=4, max_tokens=12)
    unit = MoeUnit(hw)
    unit._MustUse__silence = True  # only its signature is looked at
    assert unit.signature == wiring.Signature({
        "desc": In(stream.Signature(MoeDescriptor.layout())),
        "logits": In(stream.Signature(output_layout(8))),
        "lists": Out(stream.Signature(list_layout(8, 12))),
        "fc2": In(stream.Signature(output_layout(8))),
        "y": Out(stream.Signature(output_layout(8))),
        "error": Out(FAULT_WIDTH),
        "busy": Out(1),
    })


def test_unit_needs_a_hw_config():
    with pytest.raises(TypeError, match=r"^Hardware config must be a HwConfig, not 'tiny'$"):
        MoeUnit("tiny")


def _desc(**changes):
    fields = dict(tokens=65, experts=8, top_k=2, dim=64, sm_mult=20000, sm_shift=20,
                  out_mult=17000, out_shift=30)
    return MoeDescriptor(HW, **{**fields, **changes})


def test_descriptor_packs_and_unpacks():
    desc = _desc(renorm=1, dim=70)
    assert desc.out_tiles == 5
    assert MoeDescriptor.unpack(HW, desc.pack()) == desc
    assert desc.pack()[0] & 0xFF == MoeDescriptor.OPCODE


@pytest.mark.parametrize("changes, message", [
    (dict(tokens=129), r"MoE descriptor tokens 129 exceeds the 128 token lists of hardware 'tiny'"),
    (dict(tokens=0), r"MoE descriptor tokens must be an integer in \[1, 128\], not 0"),
    (dict(experts=17), r"MoE descriptor experts 17 exceeds the 16 lanes of a gate beat of "
                       r"hardware 'tiny'"),
    (dict(top_k=9), r"MoE descriptor top-k must be an integer in \[1, 8\], not 9"),
    (dict(dim=257), r"MoE descriptor output width 257 exceeds the 256 accumulator features of "
                    r"hardware 'tiny'"),
    (dict(sm_mult=0), r"MoE descriptor gate softmax multiplier must be an integer in "
                      r"\[1, 32767\], not 0"),
    (dict(out_shift=48), r"MoE descriptor combine shift must be an integer in \[1, 47\], not 48"),
])
def test_descriptor_refuses_what_the_unit_cannot_run(changes, message):
    with pytest.raises(DescriptorError, match=f"^{message}$"):
        _desc(**changes)


def test_cost_model_by_hand():
    """tiny's MoE layer: a token costs its beat, 8 lanes walked, the softmax
    (53 + 2 x 8), 2 list writes = 80 cycles; then 65 x 2 x 4 fc2 beats and the
    combine's 3 stages, then 65 x 4 output beats and the output register. The
    simulations check the model on every shape; this pins the formula."""
    desc = _desc()
    assert desc.token_cycles() == 80
    assert desc.expected_cycles() == 65 * 80 + 520 + 3 + 260 + 1
    # Few entries, many experts: the lists stream ends last.
    small = _desc(tokens=1, experts=16, top_k=16, dim=1)
    lists_end = small.token_cycles() + 16 + 16 + 1
    assert small.expected_cycles() == lists_end


@pytest.mark.parametrize("gate", ["vmoe", "renorm"])
def test_reference_is_the_golden_layer(gate):
    """``moe_reference`` (what random operations are checked against) gives the
    golden model's own tensors on every MoE layer and task of ``tiny``."""
    from moevit.model.config import get_config
    from moevit.model.data import SyntheticDataset
    from moevit.model.integer.evaluate import signal_model
    from moevit.model.integer.quantize import quantize
    from moevit.sim.moe_cases import golden_ops

    config = get_config("tiny").replace(gate=gate)
    images = SyntheticDataset(config, "val", size=4, seed=1).images
    qmodel = quantize(signal_model(config), images)
    ops = golden_ops(HW, qmodel, images[0].numpy())
    assert len(ops) == len(config.tasks) * sum(map(config.is_moe, range(config.depth)))
    for op in ops:
        want = op["expected"]  # the golden run's tensors
        got = moe_reference(op["desc"], op["logits"], op["expert_out"])
        np.testing.assert_array_equal(got.topk, want.topk)
        np.testing.assert_array_equal(got.weights, want.weights)
        assert list(got.tokens) == sorted(want.tokens)
        for e in got.tokens:
            np.testing.assert_array_equal(got.tokens[e], want.tokens[e])
        np.testing.assert_array_equal(got.out, want.out)


def _beat(layout, **fields):
    return pack(layout, fields)


def test_list_decoder_refuses_a_malformed_stream():
    desc = _desc(tokens=3, experts=4, top_k=1)
    layout = list_layout(HW.cols, HW.max_tokens)
    head = _beat(layout, header=1, expert=2, count=2)
    entry = [_beat(layout, token=t, weight=100 + t) for t in (0, 2)]
    last = _beat(layout, token=1, weight=7, last=1)
    lists = decode_lists(desc, [head, *entry, _beat(layout, header=1, expert=3, count=1), last])
    assert list(lists) == [2, 3] and lists[2][0].tolist() == [0, 2]
    assert lists[2][1].tolist() == [100, 102] and lists[3][0].tolist() == [1]
    with pytest.raises(ValueError, match=r"^Beat 2: header of expert 3 with 1 entries of "
                                         r"expert 2 missing$"):
        decode_lists(desc, [head, entry[0], _beat(layout, header=1, expert=3, count=1), last])
    with pytest.raises(ValueError, match=r"^Beat 0: an entry without a header$"):
        decode_lists(desc, [last])
    with pytest.raises(ValueError, match=r"^Beat 2: last flag 0$"):
        decode_lists(desc, [head, *entry])
