"""Descriptors: bit layout, packing, validation against the HwConfig."""

import pytest

from moevit.hw.config import DEFAULT_HW
from moevit.hw.descriptor import (OPCODE_WIDTH, DescriptorError, LinearDescriptor)


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
