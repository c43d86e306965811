"""The top's memory ports: the assignment table's rules, the ports' names and signature."""

import pytest

from moevit.hw.config import DEFAULT_HW
from moevit.hw.top.memory_ports import MOVERS, PORT_OF, port_members, port_name, ports_of


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
