"""Descriptors: bit layout, packing, validation against the HwConfig."""

import pytest

from moevit.hw.config import DEFAULT_HW, HwConfig
from moevit.hw.program.descriptor import (OPCODE_WIDTH, DescriptorError, LinearDescriptor)


def _vit():
    return DEFAULT_HW["m3vit-s"]


def test_linear_tiling_and_cost():
    d = LinearDescriptor(_vit(), tokens=197, in_features=384, out_features=1536)
    assert (d.token_tiles, d.out_tiles) == (25, 48)  # 197/8 -> 25, 1536/32 -> 48
    assert d.macs == 197 * 384 * 1536
    assert d.ideal_cycles() == 197 * 384 * 1536 // 256
    assert d.array_cycles() == 25 * 48 * 384


def test_pack_places_fields_lsb_first_and_round_trips():
    hw = _vit()
    d = LinearDescriptor(hw, tokens=197, in_features=384, out_features=1536, gelu=True,
                         gelu_b=12, gelu_c=500, gelu_mult=3, gelu_shift=20, y_addr=0xDEADBEEF)
    image = d.to_int()
    assert image & 0xFF == LinearDescriptor.OPCODE
    assert (image >> OPCODE_WIDTH) & 0xFFFF == 197
    assert (image >> (OPCODE_WIDTH + 16)) & 0xFFFF == 384
    rows = {name: (offset, bits) for name, offset, bits, _, _ in LinearDescriptor.describe()}
    offset, bits = rows["y_addr"]
    assert (image >> offset) & ((1 << bits) - 1) == 0xDEADBEEF
    words = d.pack()
    assert len(words) == LinearDescriptor.words() == -(-LinearDescriptor.width() // 32)
    assert all(0 <= w < 2**32 for w in words)
    assert LinearDescriptor.unpack(hw, words) == d
    assert LinearDescriptor.layout().size == LinearDescriptor.width()


def test_unpack_rejects_another_opcode():
    words = LinearDescriptor(_vit(), tokens=8, in_features=8, out_features=8).pack()
    words[0] ^= 0x3
    with pytest.raises(DescriptorError, match=r"^LinearDescriptor has opcode 1, not 2$"):
        LinearDescriptor.unpack(_vit(), words)


def test_tokens_beyond_the_buffer():
    with pytest.raises(DescriptorError, match=r"^Linear descriptor of 400 tokens exceeds the "
                                              r"256-token buffer of hardware 'm3vit-s'$"):
        LinearDescriptor(_vit(), tokens=400, in_features=384, out_features=384)


def test_features_beyond_the_buffer():
    with pytest.raises(DescriptorError, match=r"^Linear descriptor of 2048 input features "
                                              r"exceeds the 1536-feature buffer of hardware "
                                              r"'m3vit-s'$"):
        LinearDescriptor(_vit(), tokens=4, in_features=2048, out_features=384)


def test_zero_shape():
    with pytest.raises(DescriptorError, match=r"^Linear descriptor output features must be a "
                                              r"positive integer, not 0$"):
        LinearDescriptor(_vit(), tokens=4, in_features=4, out_features=0)


def test_field_wider_than_its_bits():
    with pytest.raises(DescriptorError, match=r"^LinearDescriptor field y_addr of 32 bits cannot "
                                              r"hold 4294967296; its range is 0\.\.4294967295$"):
        LinearDescriptor(_vit(), tokens=4, in_features=4, out_features=4, y_addr=2**32)


def test_gelu_constants_checked_when_fused():
    with pytest.raises(DescriptorError, match=r"^GELU constants need 2\*c >= b\*b, not c=3, "
                                              r"b=10$"):
        LinearDescriptor(_vit(), tokens=4, in_features=4, out_features=4, gelu=1, gelu_b=10,
                         gelu_c=3, gelu_mult=1, gelu_shift=1)
    with pytest.raises(DescriptorError, match=r"^Residual shift must be an integer in \[1, 47\], "
                                              r"not 0$"):
        LinearDescriptor(_vit(), tokens=4, in_features=4, out_features=4, residual=1,
                         res_mult_y=1, res_mult_skip=1, res_shift=0)


# The cost model, by hand from the kernel's timing rules (LinearDescriptor.expected_cycles;
# tests/test_sim_linear_random.py checks it against simulation). Cycle 0 takes the
# descriptor; a tile's last step issued at cycle e is copied at e + 4, its n-th chunk pops
# at e + 4 + n and that beat leaves the FIFO 16 cycles later.
def _tiny(tokens, in_features, out_features):
    return LinearDescriptor(DEFAULT_HW["tiny"], tokens=tokens, in_features=in_features,
                            out_features=out_features)


def test_cost_long_reduction():
    # 4 x 16 array, 4 post lanes: a 4-row tile drains in 16 cycles. The bank loads in
    # cycles 1..64 and flips at 65; tile 0 issues 66..129, tile 1 130..193.
    assert _tiny(8, 64, 16).expected_cycles() == 193 + 4 + 16 + 16


def test_cost_drain_bound():
    # 2-step tiles: tile 1's last step waits for tile 0's copy and drain (5 + 16 cycles).
    # Bank ready at 1 + 16 + 1 = 18, tile 0 issues 18..19, tile 1's last step at 19 + 21.
    assert _tiny(8, 2, 16).expected_cycles() == 40 + 4 + 16 + 16


def test_cost_ragged_last_tile_drains_only_its_rows():
    # 5 tokens: the last tile has 1 valid row, 4 cycles of drain instead of 16.
    assert _tiny(5, 2, 16).expected_cycles() == 40 + 4 + 4 + 16


def test_cost_channel_constants_pace_short_out_tiles():
    # 3 x 8 array, 8 post lanes, 1 x 1 -> 64: every out tile's bank takes max(1, 8) + 1 = 9
    # cycles (8 channel beats, then the flip), ready at 10, 19, ..., 73; one step each.
    hw = HwConfig(rows=3, cols=8, post_lanes=8, max_tokens=9, max_in=40, out_depth=3)
    d = LinearDescriptor(hw, tokens=1, in_features=1, out_features=64)
    assert d.expected_cycles() == 73 + 4 + 1 + 16


def test_cost_bank_released_after_its_drain():
    # 1 step x 3 out tiles of one 4-row tile: tile 0 issues at 18 and frees its bank at
    # 18 + 5 + 16 = 39; tile 1 (bank ready at 35) waits for tile 0's drain: its last step
    # at 39, bank free at 60; tile 2's bank loads from 39 (bank 0 released), ready at 56,
    # its step waits until 60.
    assert _tiny(4, 1, 48).expected_cycles() == 60 + 4 + 16 + 16


def test_cost_of_a_sequence():
    # The next descriptor is taken the cycle after the previous last beat enters the
    # output FIFO, one cycle before that beat leaves it.
    a, b = _tiny(8, 64, 16), _tiny(5, 2, 16)
    assert LinearDescriptor.sequence_cycles([a, b]) == [a.expected_cycles(),
                                                        b.expected_cycles() - 1]


def test_a_forged_image_overwrites_only_its_fields():
    from moevit.hw.config import DEFAULT_HW
    from moevit.hw.program.descriptor import LinearDescriptor

    desc = LinearDescriptor(DEFAULT_HW["tiny"], tokens=7, in_features=9, out_features=20)
    rows = {name: (offset, bits) for name, offset, bits, _, _ in desc.describe()}
    forged = desc.to_int_with(opcode=2, tokens=5)
    for name, (offset, bits) in rows.items():
        field = forged >> offset & ((1 << bits) - 1)
        assert field == {"opcode": 2, "tokens": 5}.get(name, desc.to_int() >> offset & ((1 << bits) - 1))
    with pytest.raises(ValueError, match=r"^tokens = 65536 does not fit its 16 bits$"):
        desc.to_int_with(tokens=2**16)
    with pytest.raises(ValueError, match=r"^LinearDescriptor has no field colour$"):
        desc.to_int_with(colour=1)
