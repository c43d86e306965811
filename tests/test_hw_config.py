"""HwConfig: defaults per model, validation, the rules against a model."""

import re

import pytest

from moevit.errors import ConfigError
from moevit.hw.config import DEFAULT_HW, HwConfig, get_hw_config, products_width
from moevit.model.config import CONFIGS, get_config


def test_products_width_is_exact():
    # 384 products of -128*-128 = 2**14 sum to 6291456 < 2**23: 23 bits + sign.
    assert products_width(384) == 24
    assert products_width(1) == 16  # 16384 needs 15 bits + sign
    assert products_width(1536) == 26


def test_every_model_has_a_default_that_fits_it():
    for name, model in CONFIGS.items():
        hw = DEFAULT_HW[name]
        assert hw.name == name and hw is DEFAULT_HW[name]
        hw.check_model(model)
        assert model.head_dim % hw.cols == 0
    vit = get_hw_config("m3vit-s")
    assert (vit.rows, vit.cols, vit.macs, vit.max_in) == (8, 32, 256, 1536)


def test_round_trips_through_dict():
    hw = DEFAULT_HW["tiny"]
    assert HwConfig.from_dict(hw.to_dict()) == hw
    assert hw.replace(rows=8) == HwConfig(**{**hw.to_dict(), "rows": 8})


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"rows": 0}, r"^Array rows must be a positive integer, not 0$"),
        ({"cols": 2.0}, r"^Array columns must be a positive integer, not 2\.0$"),
        ({"clock_mhz": 0}, r"^Clock target must be a positive number of MHz, not 0$"),
        ({"act_width": 4}, r"^Activation and weight widths must be 8 \(int8 numeric contract\), "
                           r"not 4 and 8$"),
        ({"acc_width": 40}, r"^Accumulator of 40 bits exceeds the int32 accumulation of the "
                            r"numeric contract; at most 32$"),
        ({"max_tokens": 66}, r"^Token buffer depth 66 is not a multiple of the 4 array rows$"),
        ({"post_lanes": 5}, r"^Post-processing lanes 5 do not divide the 16 array columns$"),
        ({"out_depth": 2}, r"^Output FIFO depth 2 cannot take one beat per cycle; at least 3$"),
        ({"bus_width": 0}, r"^Bus width must be a positive integer, not 0$"),
        ({"bus_width": 96}, r"^Bus width must be a power of two bits, not 96$"),
        ({"bus_width": 16}, r"^Bus width of 16 bits is outside the 32 to 1024 bits the memory "
                            r"movers take$"),
        ({"bus_width": 2048}, r"^Bus width of 2048 bits is outside the 32 to 1024 bits the "
                              r"memory movers take$"),
        ({"max_outstanding": 0}, r"^Outstanding bursts must be a positive integer, not 0$"),
        ({"memory_ports": 0}, r"^Memory ports must be an integer from 1 to 8 \(one per mover\), "
                              r"not 0$"),
        ({"memory_ports": 9}, r"^Memory ports must be an integer from 1 to 8 \(one per mover\), "
                              r"not 9$"),
        ({"memory_ports": True}, r"^Memory ports must be an integer from 1 to 8 \(one per "
                                 r"mover\), not True$"),
    ],
)
def test_bad_parameter_is_a_clear_error(changes, message):
    with pytest.raises(ConfigError, match=message):
        DEFAULT_HW["tiny"].replace(**changes)


def test_accumulator_too_narrow_for_the_input_buffer():
    with pytest.raises(ConfigError, match=r"^Accumulator of 24 bits cannot hold 1536 int8 "
                                          r"products; needs 26$"):
        HwConfig(max_in=1536, acc_width=24)


def test_columns_must_divide_the_models_width():
    """COMBINE sums the experts' rows in beats of the columns; a beat may hold several heads
    (96 columns of m3vit-s's 32-wide heads) or part of one (24)."""
    for cols in (24, 96):
        HwConfig.for_model("m3vit-s", cols=cols)
    with pytest.raises(ConfigError, match=r"^Array columns 256 do not divide the width 384 "
                                          r"of model 'm3vit-s'; COMBINE sums its rows in "
                                          r"beats of the columns$"):
        HwConfig.for_model("m3vit-s", cols=256)


def test_attention_head_lanes_must_be_whole_bus_words():
    """The attention engine asks for ``heads_parallel`` heads of a row in one request of
    whole bus words: one 16-byte head of tiny on a 256-bit bus is half a word."""
    tiny = get_config("tiny")
    hw = DEFAULT_HW["tiny"].replace(bus_width=256, cols=32 // 2, heads_parallel=1)
    with pytest.raises(ConfigError, match=r"^The attention engine's 1 head lane\(s\) of 16 "
                                          r"bytes are not whole 256-bit bus words \(32 bytes\) "
                                          r"for model 'tiny'"):
        hw.check_model(tiny)
    hw.replace(heads_parallel=2).check_model(tiny)


def test_input_buffer_must_hold_the_widest_layer():
    with pytest.raises(ConfigError, match=r"^Input buffer of 768 features cannot hold the 1536 "
                                          r"input features of model 'm3vit-s'; needs 1536$"):
        HwConfig.for_model(get_config("m3vit-s"), max_in=768)


def test_unknown_model_name():
    with pytest.raises(ConfigError, match=r"^Unknown config 'vit-h'"):
        get_hw_config("vit-h")


def test_bus_widths_are_those_the_movers_and_the_layout_take():
    from moevit.hw.program.layout import BUS_WIDTHS
    from moevit.hw.top.movers import DATA_WIDTHS

    accepted = []
    for bits in range(1, 2049):
        try:
            accepted.append(HwConfig(bus_width=bits).bus_width)
        except ConfigError:
            pass
    assert tuple(accepted) == DATA_WIDTHS == BUS_WIDTHS
    # The defaults: the ZCU102/ZCU104 HP ports.
    assert {(DEFAULT_HW[name].bus_width, DEFAULT_HW[name].max_outstanding)
            for name in ("tiny", "edge-moe", "m3vit-s")} == {(128, 4)}


def test_one_memory_port_leaves_the_fingerprint_as_it_was():
    """memory_ports=1 (today's top) is not in the dict, so not in a program's fingerprint:
    programs and caches made before the field existed stay valid; 2 ports is another one."""
    from moevit.hw.program.program import hw_hash

    hw = DEFAULT_HW["tiny"]
    assert "memory_ports" not in hw.to_dict()
    assert f"{hw_hash(hw):016x}" == "c14458c845e956b3"   # tiny's, before the field (e64dbe1)
    two = hw.replace(memory_ports=2)
    assert two.to_dict()["memory_ports"] == 2 and hw_hash(two) != hw_hash(hw)
    assert HwConfig.from_dict(two.to_dict()) == two and HwConfig.from_dict(hw.to_dict()) == hw


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"norm_lanes": 3}, r"^LayerNorm lanes must be a power of two, not 3$"),
        ({"norm_lanes": 0}, r"^LayerNorm lanes must be a power of two, not 0$"),
        ({"norm_lanes": True}, r"^LayerNorm lanes must be a power of two, not True$"),
        ({"norm_lanes": 32}, r"^LayerNorm lanes 32 exceed the 16 bytes a bus word of 128 bits "
                             r"brings a cycle$"),
        ({"norm_lanes": 16, "max_in": 248}, r"^LayerNorm lanes 16 do not divide the input "
                                            r"buffer depth 248$"),
    ],
)
def test_bad_layernorm_lanes(changes, message):
    with pytest.raises(ConfigError, match=message):
        DEFAULT_HW["tiny"].replace(**changes)


@pytest.mark.parametrize("value", [3, -1, 48, True, 2.0])
@pytest.mark.parametrize("field, rule", [
    ("combine_lanes", "COMBINE lanes must be 0 (as many as the 16 array columns)"),
    ("context_lanes", "Context lanes must be 0 (as many as the 8 score lanes)")])
def test_bad_lane_counts(field, rule, value):
    with pytest.raises(ConfigError, match=rf"^{re.escape(rule)} or a divisor of them, not "
                                          rf"{value!r}$"):
        DEFAULT_HW["tiny"].replace(**{field: value})


def test_combine_lanes_leave_older_fingerprints_alone():
    """0 (every column, as before the field) stays out of the fingerprint; fewer lanes
    are another top."""
    from moevit.hw.program.program import hw_hash

    hw = get_hw_config("tiny")
    assert "combine_lanes" not in hw.to_dict() and hw.combine_width == hw.cols == 16
    four = hw.replace(combine_lanes=4)
    assert four.combine_width == 4 and hw_hash(four) != hw_hash(hw)
    assert HwConfig.from_dict(four.to_dict()) == four


def test_context_lanes_need_one_head_lane():
    tiny = DEFAULT_HW["tiny"]
    assert tiny.replace(context_lanes=2).context_width == 2
    assert tiny.replace(heads_parallel=2, context_lanes=8).context_width == 8
    with pytest.raises(ConfigError, match=r"^Context lanes below the score lanes need one "
                                          r"head lane, not 2: "):
        tiny.replace(heads_parallel=2, context_lanes=2)


def test_context_lanes_leave_older_fingerprints_alone():
    from moevit.hw.program.program import hw_hash

    hw = get_hw_config("tiny")
    assert "context_lanes" not in hw.to_dict() and hw.context_width == hw.score_lanes
    two = hw.replace(context_lanes=2)
    assert hw_hash(two) != hw_hash(hw) and HwConfig.from_dict(two.to_dict()) == two


@pytest.mark.parametrize("value", [0, 3, True, 2.0, "2"])
def test_bad_kv_banks(value):
    with pytest.raises(ConfigError, match=rf"^K/V banks must be 1 or 2, not "
                                          rf"{re.escape(repr(value))}$"):
        DEFAULT_HW["tiny"].replace(kv_banks=value)


def test_kv_banks_leave_older_fingerprints_alone():
    """One bank (a head's K and V after the head before, as before the field) stays out of
    the fingerprint; two are another top."""
    from moevit.hw.program.program import hw_hash

    hw = get_hw_config("tiny")
    assert "kv_banks" not in hw.to_dict() and hw.kv_banks == 1
    two = hw.replace(kv_banks=2)
    assert hw_hash(two) != hw_hash(hw) and HwConfig.from_dict(two.to_dict()) == two


@pytest.mark.parametrize("value", [0, 3, True, 2.0])
def test_bad_score_packing(value):
    with pytest.raises(ConfigError, match=rf"^Score packing must be 1 or 2 int8 multiplies per "
                                          rf"DSP48E2, not {re.escape(repr(value))}$"):
        DEFAULT_HW["tiny"].replace(score_packing=value)


def test_score_packing_needs_even_score_lanes():
    tiny = DEFAULT_HW["tiny"]
    with pytest.raises(ConfigError, match=r"^Score packing 2 takes half the score lanes a "
                                          r"cycle, two keys a DSP48E2: they must be even, not 3$"):
        tiny.replace(score_lanes=3, max_head_dim=15, score_packing=2)
    assert tiny.replace(score_lanes=2, max_head_dim=16, score_packing=2).score_packing == 2


def test_score_packing_leaves_older_fingerprints_alone():
    from moevit.hw.program.program import hw_hash

    hw = get_hw_config("tiny")
    assert "score_packing" not in hw.to_dict()
    two = hw.replace(score_packing=2)
    assert hw_hash(two) != hw_hash(hw) and HwConfig.from_dict(two.to_dict()) == two


#: The top's on/off switches (0, the default, the behaviour before each): field -> its name
#: in the error, and the fields it needs.
SWITCHES = {"weight_streaming": ("Weight streaming", {}), "x_by_words": ("x_by_words", {}),
            "pipelined_heads": ("pipelined_heads", {"kv_banks": 2}),
            "chan_striped": ("chan_striped", {"memory_ports": 2, "weight_ports": 2}),
            "wide_x": ("wide_x", {"chain_depth": 2}), "wide_w": ("wide_w", {"chain_depth": 2})}


@pytest.mark.parametrize("value", [2, -1, True, 1.0, "1"])
@pytest.mark.parametrize("field", sorted(SWITCHES))
def test_bad_switch(field, value):
    name, needs = SWITCHES[field]
    with pytest.raises(ConfigError, match=rf"^{name} must be 0 or 1, not "
                                          rf"{re.escape(repr(value))}$"):
        DEFAULT_HW["tiny"].replace(**needs, **{field: value})


@pytest.mark.parametrize("field", sorted(SWITCHES))
def test_switches_leave_older_fingerprints_alone(field):
    """0 (``weight_streaming``: each tile waits for its full bank; ``x_by_words``: x read a
    row a request; ``pipelined_heads``: a head starts once the one before has drained;
    ``chan_striped``: the constants on their own port; as before each field) stays out of
    the fingerprint; 1 is another top."""
    from moevit.hw.program.program import hw_hash

    hw = get_hw_config("tiny").replace(**SWITCHES[field][1])
    assert field not in hw.to_dict() and getattr(hw, field) == 0
    on = hw.replace(**{field: 1})
    assert hw_hash(on) != hw_hash(hw) and HwConfig.from_dict(on.to_dict()) == on


def test_a_wide_x_beat_lies_in_one_bus_word():
    """``wide_x`` takes a beat's ``chain_depth`` features out of one bus word: a chain of 3
    on a 16-byte word is refused, of 8 on a 4-byte word too; of 4 on 16 bytes is taken (and
    of 1 anywhere: a beat a step either way)."""
    tiny = DEFAULT_HW["tiny"]
    for depth, bus in ((3, 128), (8, 32)):
        with pytest.raises(ConfigError, match=rf"^wide_x 1 takes an x beat's {depth} features "
                                              rf"\(the chain depth\) out of one bus word, "
                                              rf"whose {bus // 8} bytes they do not divide$"):
            tiny.replace(chain_depth=depth, bus_width=bus, wide_x=1)
    assert tiny.replace(chain_depth=4, wide_x=1).x_features == 4
    assert tiny.replace(wide_x=1).x_features == tiny.x_features == 1


def test_a_wide_w_beat_is_whole_in_a_layers_inputs():
    """``wide_w`` packs ``chain_depth`` features a w beat; a layer's inputs are whole bus
    words in the top, so the depth must divide the word's bytes."""
    tiny = DEFAULT_HW["tiny"]
    with pytest.raises(ConfigError, match=r"^wide_w 1 packs 3 features \(the chain depth\) "
                                          r"a w beat, which a layer's inputs \(whole 16-byte "
                                          r"bus words\) must fill: the depth must divide the "
                                          r"word's bytes$"):
        tiny.replace(chain_depth=3, wide_w=1)
    assert tiny.replace(chain_depth=4, wide_w=1).w_features == 4
    assert tiny.replace(wide_w=1).w_features == tiny.w_features == 1


def test_pipelined_heads_need_two_banks():
    with pytest.raises(ConfigError, match=r"^pipelined_heads 1 needs kv_banks 2: a head's rows "
                                          r"follow the head before's only into the other bank "
                                          r"\(kv_banks 1\)$"):
        DEFAULT_HW["tiny"].replace(pipelined_heads=1)


def test_striped_constants_need_striped_weights():
    with pytest.raises(ConfigError, match=r"^chan_striped 1 needs weight_ports 2 or more: the "
                                          r"constants are striped over the weights' ports "
                                          r"\(weight_ports 1\)$"):
        DEFAULT_HW["tiny"].replace(memory_ports=4, chan_striped=1)


@pytest.mark.parametrize("value", [3, 0, 32, True, 2.0])
def test_bad_row_lanes(value):
    with pytest.raises(ConfigError, match=rf"^Row lanes must be a power of two from 1 to 16, "
                                          rf"not {value!r}$"):
        DEFAULT_HW["tiny"].replace(row_lanes=value)


def test_row_lanes_multiply_the_attention_macs_and_leave_older_fingerprints_alone():
    from moevit.hw.program.program import hw_hash

    hw = get_hw_config("tiny")
    assert "row_lanes" not in hw.to_dict()
    rows = hw.replace(row_lanes=4)
    assert rows.attention_macs == 4 * hw.attention_macs == 4 * 2 * hw.score_lanes
    assert rows.to_dict()["row_lanes"] == 4 and hw_hash(rows) != hw_hash(hw)
    assert HwConfig.from_dict(rows.to_dict()) == rows


def test_layernorm_lanes_must_divide_the_model_width():
    with pytest.raises(ConfigError, match=r"^LayerNorm lanes 128 do not divide the width 192 of "
                                          r"model 'edge-moe''s LayerNorm rows$"):
        HwConfig.for_model("edge-moe", norm_lanes=128, bus_width=1024)


def test_layernorm_lanes_leave_older_fingerprints_alone():
    """One lane is the hardware from before the field: left out of to_dict(), so the hash a
    program records (and the Verilog cache) of every instance without lanes is unchanged
    (the figures are the hashes before the field existed); more lanes are another
    hardware's."""
    from moevit.hw.program.program import hw_hash

    before = {"tiny": 0xc14458c845e956b3, "edge-moe": 0x79818887d39c7b8a}
    for name, digest in before.items():
        hw = get_hw_config(name)
        assert "norm_lanes" not in hw.to_dict() and hw_hash(hw) == digest
        wide = hw.replace(norm_lanes=2)
        assert wide.to_dict()["norm_lanes"] == 2 and hw_hash(wide) != digest
        assert HwConfig.from_dict(wide.to_dict()) == wide


def test_saved_configs_load_by_name_with_the_model_they_serve():
    from moevit.hw.config import hw_config_model, saved_hw_configs

    assert "zcu102-edge-moe" in saved_hw_configs()
    hw = get_hw_config("zcu102-edge-moe")
    assert hw.name == "zcu102-edge-moe" and hw.macs > DEFAULT_HW["edge-moe"].macs
    hw.check_model(get_config(hw_config_model("zcu102-edge-moe")))
    assert hw_config_model("zcu102-edge-moe") == "edge-moe"
    assert hw_config_model("u280-m3vit-s") == "m3vit-s"
    assert hw_config_model("tiny") == "tiny"      # a model config's default instance
    with pytest.raises(ConfigError, match=r"^Unknown config 'zcu102'; known configs are "
                                          r"\[.*\], saved hardware configs \[.*'zcu102-edge-moe'"):
        hw_config_model("zcu102")


def test_a_malformed_saved_config_is_named(tmp_path, monkeypatch):
    import moevit.hw.config as config

    monkeypatch.setattr(config, "CONFIGS_FOLDER", tmp_path)
    (tmp_path / "broken.json").write_text('{"hw": {"rows": 4}}')   # no "config"
    with pytest.raises(ConfigError, match=r"^The saved hardware config \S+broken\.json has "
                                          r"no 'config' field$"):
        config.hw_config_model("broken")
