"""The top's memory ports: the assignment table's rules, the ports' names and signature."""

import pytest

from moevit.errors import ConfigError
from moevit.hw.config import DEFAULT_HW, HwConfig
from moevit.hw.top.memory_ports import (MOVERS, PORT_OF, port_members, port_name, ports_of,
                                        weight_stripe)


@pytest.mark.parametrize("ports", sorted(PORT_OF))
def test_the_table_spreads_the_heavy_streams(ports):
    """Every port carries a mover; from 2 ports the weights have a port of their own; from 3
    the write mover too; from 4 ATTENTION's q, k, v (x, w, chan) and its output each one."""
    where = dict(zip(MOVERS, PORT_OF[ports]))
    assert sorted(set(where.values())) == list(range(ports))
    if ports >= 2:
        assert [m for m, p in where.items() if p == where["w"]] == ["w"]
    if ports >= 3:
        assert [m for m, p in where.items() if p == where["write"]] == ["write"]
    if ports >= 4:
        assert len({where[m] for m in ("x", "w", "chan", "write")}) == 4
    # The sequencer's reads never share a port with the weights.
    assert ports == 1 or where["w"] not in (where["program"], where["entry"])


def test_port_names_follow_vitis():
    """Port 0 keeps today's name, so the one-port top is unchanged; then gmem1, gmem2 ..."""
    assert [port_name(k) for k in range(4)] == ["gmem", "gmem1", "gmem2", "gmem3"]
    tiny = DEFAULT_HW["tiny"]
    one = port_members(tiny)
    assert all(name.startswith("m_axi_gmem_") for name in one) and len(one) == 29
    four = port_members(tiny.replace(memory_ports=4))
    assert len(four) == 4 * 29
    for k in range(4):
        prefix = f"m_axi_{port_name(k)}_"
        assert {n[len(prefix):] for n in four if n.startswith(prefix)} == \
            {n[len("m_axi_gmem_"):] for n in one}
    wide = port_members(tiny.replace(memory_ports=2, bus_width=128))
    assert wide["m_axi_gmem1_araddr"].shape == 64      # 64-bit addresses on every port
    assert ports_of(tiny.replace(memory_ports=2))["w"] == 1


def test_the_top_has_every_port():
    """The top's signature: the control port, then m_axi_gmem .. m_axi_gmem2 in full."""
    from moevit.hw.top.accelerator import Accelerator

    hw = DEFAULT_HW["tiny"].replace(memory_ports=3)
    top = Accelerator(hw, ("copy",))
    names = set(top.signature.members)
    assert set(port_members(hw)) <= names
    assert top.signature.members["m_axi_gmem2_rdata"].shape == hw.bus_width


def test_the_driver_sees_the_same_registers():
    """More ports change no register: the driver's map (the generator's JSON) is the same."""
    from moevit.hw.program.regmap import REGMAP
    from moevit.hw.top.accelerator import Accelerator

    for ports in (1, 4):
        top = Accelerator(DEFAULT_HW["tiny"].replace(memory_ports=ports), ("copy",))
        assert top.regmap.to_dict() == REGMAP.to_dict()


@pytest.mark.parametrize("ports", sorted(PORT_OF))
def test_the_weights_stripe_from_their_own_port(ports):
    """weight_ports k: w's own port, then the k - 1 after it, wrapping; k = 1 is the table's."""
    hw = DEFAULT_HW["tiny"].replace(memory_ports=ports)
    own = ports_of(hw)["w"]
    for k in range(1, ports + 1):
        stripe = weight_stripe(hw.replace(weight_ports=k))
        assert stripe[0] == own and len(set(stripe)) == k
        assert all((b - a) % ports == 1 for a, b in zip(stripe, stripe[1:]))
    assert weight_stripe(hw.replace(weight_ports=ports)) == tuple(
        (own + j) % ports for j in range(ports))
    assert weight_stripe(DEFAULT_HW["tiny"].replace(memory_ports=4, weight_ports=2)) == (1, 2)


@pytest.mark.parametrize("changes, message", [
    ({"weight_ports": 2}, r"^Weight ports must be an integer from 1 to the 1 memory port\(s\), "
                          r"not 2$"),
    ({"memory_ports": 4, "weight_ports": 5}, r"^Weight ports must be an integer from 1 to the "
                                             r"4 memory port\(s\), not 5$"),
    ({"memory_ports": 2, "weight_ports": 0}, r"^Weight ports must be an integer from 1 to the "
                                             r"2 memory port\(s\), not 0$"),
    ({"memory_ports": 2, "weight_ports": True}, r"^Weight ports must be an integer from 1 to "
                                                r"the 2 memory port\(s\), not True$"),
    ({"memory_ports": 2, "weight_ports": 1.5}, r"^Weight ports must be an integer from 1 to "
                                               r"the 2 memory port\(s\), not 1.5$"),
])
def test_bad_weight_ports(changes, message):
    with pytest.raises(ConfigError, match=message):
        DEFAULT_HW["tiny"].replace(**changes)


def test_one_weight_port_leaves_the_fingerprint_as_it_was():
    """weight_ports=1 is silent: not in the dict, so programs and caches stay valid."""
    from moevit.hw.program.program import hw_hash

    hw = DEFAULT_HW["tiny"].replace(memory_ports=2)
    assert "weight_ports" not in hw.to_dict()
    striped = hw.replace(weight_ports=2)
    assert striped.to_dict()["weight_ports"] == 2 and hw_hash(striped) != hw_hash(hw)
    assert HwConfig.from_dict(striped.to_dict()) == striped


def test_the_striped_top_has_a_striper_and_the_same_ports():
    """weight_ports 2 on 4 ports: a ReadStriper before ports 1 and 2 (port 2 arbitrates it
    with chan and res, w's share in w's place), the same flat ports as the unstriped top."""
    from moevit.hw.top.accelerator import Accelerator
    from moevit.hw.top.interconnect import ReadArbiter, ReadStriper

    hw = DEFAULT_HW["tiny"].replace(memory_ports=4)
    plain = Accelerator(hw, ("copy",))
    top = Accelerator(hw.replace(weight_ports=2), ("copy",))
    for unused in (plain, top):
        unused._MustUse__silence = True
    assert top.signature.members == plain.signature.members
    inside = {name: sub for name, (sub, _) in top.elaborate(None)._named_submodules.items()}
    striper = inside["striper"]
    assert isinstance(striper, ReadStriper) and len(striper.ports) == 2
    assert isinstance(inside["arbiter2"], ReadArbiter) and len(inside["arbiter2"].ports) == 3
    assert "arbiter1" not in inside and "striper" not in plain.elaborate(None)._named_submodules


def test_striped_constants_share_the_weights_stripe():
    """chan_striped on 4 ports, weights over 2: a second ReadStriper deals chan over the
    weights' ports 1 and 2, so port 1 arbitrates w's and chan's shares and port 2 w's, chan's
    and res (each in its mover's place); the flat ports stay the unstriped top's."""
    from moevit.hw.top.accelerator import Accelerator
    from moevit.hw.top.interconnect import ReadArbiter, ReadStriper
    from moevit.hw.top.memory_ports import striped_movers

    hw = DEFAULT_HW["tiny"].replace(memory_ports=4, weight_ports=2)
    assert striped_movers(hw) == {"w": (1, 2)}
    assert striped_movers(hw.replace(chan_striped=1)) == {"w": (1, 2), "chan": (1, 2)}
    plain, top = Accelerator(hw, ("copy",)), Accelerator(hw.replace(chan_striped=1), ("copy",))
    for unused in (plain, top):
        unused._MustUse__silence = True
    assert top.signature.members == plain.signature.members
    inside = {name: sub for name, (sub, _) in top.elaborate(None)._named_submodules.items()}
    assert isinstance(inside["chan_striper"], ReadStriper)
    assert len(inside["chan_striper"].ports) == 2
    assert len(inside["arbiter1"].ports) == 2 and len(inside["arbiter2"].ports) == 3
    assert all(isinstance(inside[a], ReadArbiter) for a in ("arbiter1", "arbiter2"))
