"""The stream drivers and the runner, on a one-register loopback (Icarus; Verilator slow)."""

import json

import pytest

from moevit.sim.runner import default_simulator, run_cocotb
from moevit.sim.streams import fixed_pattern, pack, pauses, unpack


def _loopback_verilog(tmp_path):
    from amaranth.back import verilog

    from moevit.sim.benches.loopback import Loopback

    path = tmp_path / "loopback.v"
    path.write_text(verilog.convert(Loopback(16), name="loopback", emit_src=False))
    return path


def test_pack_round_trips_struct_of_arrays():
    from amaranth.hdl import signed, unsigned
    from amaranth.lib import data

    layout = data.StructLayout({"data": data.ArrayLayout(signed(8), 3), "last": unsigned(1)})
    value = {"data": [-128, 5, 127], "last": 1}
    image = pack(layout, value)
    assert image == (0x80 | 5 << 8 | 0x7F << 16 | 1 << 24)
    assert unpack(layout, image) == value


def test_pause_patterns_are_seeded():
    take = lambda it: [next(it) for _ in range(200)]
    assert not any(take(pauses("none")))
    assert take(pauses("fixed"))[:6] == [False, False, True, False, True, True]
    random_a = take(pauses("random", seed=3))
    assert random_a == take(pauses("random", seed=3)) != take(pauses("random", seed=4))
    assert 30 < sum(random_a) < 90
    with pytest.raises(ValueError, match=r"^Pause kind must be one of .*, not 'often'$"):
        pauses("often")


def test_each_stream_has_its_own_fixed_pattern():
    take = lambda it, n=34: [next(it) for _ in range(n)]
    names = ("desc", "x", "w", "chan", "res", "y")
    patterns = {name: fixed_pattern(name) for name in names}
    assert len(set(patterns.values())) == len(names)
    for name, pattern in patterns.items():
        assert pattern[0] is False and pattern[-1] is True and len(pattern) in (7, 11, 13, 17)
        assert take(pauses("fixed", stream=name), 2 * len(pattern)) == list(pattern) * 2
    # Random patterns differ per stream too, and repeat per seed.
    assert take(pauses("random", seed=1, stream="x")) == take(pauses("random", seed=1, stream="x"))
    assert take(pauses("random", seed=1, stream="x")) != take(pauses("random", seed=1, stream="w"))


@pytest.mark.parametrize(
    "gaps, stall",
    [("none", "none"), ("random", "random"), ("fixed", "fixed")],
    ids=lambda v: v,
)
def test_loopback(tmp_path, gaps, stall):
    """On $SIM (Icarus unless set): every beat once, in order, under gaps and back-pressure."""
    source = _loopback_verilog(tmp_path)
    case = {"seed": 11, "beats": 300, "gaps": gaps, "stall": stall}
    simulator = default_simulator()
    run_cocotb(toplevel="loopback", sources=[source], simulator=simulator,
               test_module="moevit.sim.benches.loopback",
               test_id=f"loopback-{simulator}-{gaps}-{stall}", env={"MOEVIT_CASE": json.dumps(case)})


@pytest.mark.slow
def test_loopback_verilator(tmp_path):
    source = _loopback_verilog(tmp_path)
    case = {"seed": 12, "beats": 300, "gaps": "random", "stall": "random"}
    run_cocotb(toplevel="loopback", sources=[source], simulator="verilator",
               test_module="moevit.sim.benches.loopback",
               test_id="loopback-verilator", env={"MOEVIT_CASE": json.dumps(case)})
