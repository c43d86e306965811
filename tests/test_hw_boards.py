"""The board files (boards/*.json), their loader (moevit.hw.boards) and ``moevit hw boards``."""

import json
import math
import re
import subprocess
import sys
from importlib import resources

import pytest

from moevit.cli import main
from moevit.errors import ConfigError
from moevit.hw.boards import BOARDS, get_board, load_board


def raw(name):
    return json.loads(resources.files("moevit.boards").joinpath(f"{name}.json").read_text())


def figures(node, where=""):
    """``(dotted name, figure)`` of every figure (an object with a "value") in a board file."""
    if isinstance(node, dict) and "value" in node:
        yield where, node
    elif isinstance(node, dict):
        for key, child in node.items():
            yield from figures(child, f"{where}.{key}" if where else key)
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from figures(child, f"{where}.{i}")


def test_the_three_boards_load():
    assert BOARDS == ("u280", "zcu102", "zcu104")
    for name in BOARDS:
        board = get_board(name)
        assert board.name == name


@pytest.mark.parametrize("name", BOARDS)
def test_every_figure_has_a_source(name):
    data = raw(name)
    found = dict(figures(data))
    # Board, memory and port figures (and the ports' own clock where they have one).
    assert len(found) == 10 + 5 * len(data["memories"]) + 2 + ("clock_mhz" in data["ports"])
    for where, figure in found.items():
        assert set(figure) == {"value", "source", "checked"}, where
        assert figure["source"].strip(), where
        assert figure["checked"] is None or figure["checked"].strip(), where
    # The loader read every figure, and kept its source.
    board = get_board(name)
    assert board.sources == {w: f["source"] for w, f in found.items()}
    assert board.checked == {w: f["checked"] for w, f in found.items()}


def test_zcu102_figures_agree_with_the_device_tables():
    # XCZU9EG (DS891): 2,520 DSP48E2, 274,080 LUTs, 912 BRAM36 (32.1 Mb), no UltraRAM.
    b = get_board("zcu102")
    assert (b.part, b.dsp, b.lut, b.bram36, b.uram) == ("xczu9eg-ffvb1156-2-e", 2520, 274080, 912, 0)
    assert round(b.bram36 * 36 / 1024, 1) == 32.1  # Mb, as the data sheet states it
    assert b.memory("DDR4").bandwidth_gbs == pytest.approx(64 / 8 * 2133 / 1000, abs=0.005)
    assert (b.ports, b.port_bits, b.host, b.vitis_platform) == (4, 128, "pynq", None)


def test_zcu104_figures_agree_with_the_device_tables():
    # XCZU7EV (DS891): 1,728 DSP48E2, 230,400 LUTs, 312 BRAM36 (11 Mb), 96 URAM (27 Mb).
    b = get_board("zcu104")
    assert (b.part, b.dsp, b.lut, b.bram36, b.uram) == ("xczu7ev-ffvc1156-2-e", 1728, 230400, 312, 96)
    assert round(b.bram36 * 36 / 1024) == 11 and b.uram * 288 / 1024 == 27
    assert b.memory("DDR4").capacity_gib == 2
    assert (b.host, b.vitis_platform) == ("pynq", None)


def test_u280_figures_agree_with_the_data_sheet_and_ug1393():
    b = get_board("u280")
    assert (b.part, b.dsp, b.lut, b.bram36, b.uram) == ("xcu280-fsvh2892-2L-e", 9024, 1303680, 2016, 960)
    hbm, ddr = b.memory("HBM2"), b.memory("DDR4")
    assert (hbm.capacity_gib, hbm.channels) == (8, 32)
    assert hbm.bandwidth_gbs == 32 * 14.375  # 460 GB/s: 32 pseudo-channels of 14.375 GB/s
    assert (ddr.capacity_gib, ddr.channels, ddr.bandwidth_gbs) == (32, 2, 2 * 19.25)
    assert (b.vitis_platform, b.vitis_max, b.host) == ("xilinx_u280_gen3x16_xdma_1_202211_1", "2023.2", "pyxrt")


@pytest.mark.parametrize("name", BOARDS)
def test_figures_are_sane(name):
    b = get_board(name)
    assert b.ff == 2 * b.lut  # 16 flip-flops per 8 LUTs in an UltraScale+ CLB
    assert b.lut > 100 * b.dsp > 0  # every UltraScale+ part has far more LUTs than DSPs
    assert 1 <= b.ports <= 64 and b.port_bits in (32, 64, 128, 256, 512)
    assert 100 <= b.clock_mhz <= 500
    for memory in b.memories:
        assert 1 <= memory.bandwidth_gbs <= 1000 and memory.capacity_gib >= 1
    assert b.port_bandwidth_gbs == b.ports * b.port_bits / 8 * (b.port_clock_mhz or
                                                               b.clock_mhz) / 1000
    assert (b.vitis_platform is None) == (b.host == "pynq") == (b.vitis_max is None)
    assert re.fullmatch(r"xc[a-z0-9]+-[a-z]+\d+-2L?-e", b.part)


def write(tmp_path, data, name="board.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def without(data, dotted):
    """A deep copy of ``data`` without the key at the dotted path."""
    data = json.loads(json.dumps(data))
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    del node[last]
    return data


@pytest.mark.parametrize("dotted", ["dsp", "bram36", "uram", "memories.0.bandwidth_gbs",
                                    "memories.1.kind", "memories.0.latency_ns", "ports.bits",
                                    "clock_mhz", "vitis_platform",
                                    "host", "name"])
def test_a_missing_figure_is_named(tmp_path, dotted):
    path = write(tmp_path, without(raw("u280"), dotted))
    with pytest.raises(ConfigError, match=rf"^The board file board\.json: {re.escape(dotted)} is missing$"):
        load_board(path)


@pytest.mark.parametrize("dotted", ["dsp.source", "memories.0.channels.source"])
def test_a_figure_without_source_is_rejected(tmp_path, dotted):
    path = write(tmp_path, without(raw("zcu104"), dotted))
    figure = dotted.rpartition(".")[0]
    with pytest.raises(ConfigError, match=rf"^The board file board\.json: {re.escape(figure)} has no source "):
        load_board(path)


@pytest.mark.parametrize("dotted, value, message", [
    ("dsp", 0, r"dsp must be at least 1, not 0"),
    ("uram", -96, r"uram must be at least 0, not -96"),
    ("lut", "many", r"lut must be int, not 'many'"),
    ("dsp", True, r"dsp must be int, not True"),
    ("memories.0.bandwidth_gbs", float("nan"), r"memories\.0\.bandwidth_gbs must be at least 0\.001, not nan"),
    ("memories.0.latency_ns", 0, r"memories\.0\.latency_ns must be at least 1, not 0"),
    ("clock_mhz", None, r"clock_mhz must be int or float, not None"),
    ("host", "ssh", r"host must be one of pynq, pyxrt, not 'ssh'"),
])
def test_an_impossible_figure_is_rejected(tmp_path, dotted, value, message):
    data = raw("zcu104")
    node = data
    for key in dotted.split("."):
        node = node[int(key)] if isinstance(node, list) else node[key]
    node["value"] = value
    with pytest.raises(ConfigError, match=rf"^The board file board\.json: {message}$"):
        load_board(write(tmp_path, data))


def test_unknown_board_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"^Unknown board 'zcu106'; known boards: u280, zcu102, zcu104 "):
        get_board("zcu106")


def test_a_file_that_names_another_board_is_rejected(tmp_path, monkeypatch):
    import moevit.hw.boards as boards

    data = dict(raw("zcu102"), name="zcu104")
    monkeypatch.setattr(boards, "_board_files", lambda: {"zcu102": write(tmp_path, data, "zcu102.json")})
    with pytest.raises(ConfigError, match=r"^The board file zcu102\.json names itself 'zcu104'$"):
        get_board("zcu102")


def test_command_prints_the_table(capsys):
    assert main(["hw", "boards"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^zcu102 +xczu9eg-ffvb1156-2-e +2520 +274080 +548160 +912 +0 +DDR4 17\.06 GB/s", out, re.M)
    assert re.search(r"^u280 .* HBM2 460 GB/s, DDR4 38\.5 GB/s +32x256b +300 +pyxrt +"
                     r"xilinx_u280_gen3x16_xdma_1_202211_1", out, re.M)
    assert main(["hw", "boards", "zcu104", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["zcu104"] and rows[0]["uram"] == 96
    assert main(["hw", "boards", "u280", "--sources"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^  memories\.0\.bandwidth_gbs +AMD UG1393 2023\.1.*GB/s theoretical for the subsystem$",
                     out, re.M)  # confirmed: no mark
    assert re.search(r"^  ports\.bits +AMD .*\(PG276\).*  \[not confirmed in a public copy\]$", out, re.M)


@pytest.mark.parametrize("content, message", [
    (None, r"Unknown board 'nope'; known boards: u280, zcu102, zcu104 \(or a path to a board \.json file\)"),
    ('{"name": "x",', r"The board file bad\.json is not valid JSON: Expecting property name enclosed in "
                     r"double quotes at line 1 column 14"),
    ("[1, 2]", r"The board file bad\.json: the file must be a JSON object"),
    ("{}", r"The board file bad\.json: memories is missing"),
])
def test_command_bad_input_is_one_line(tmp_path, capsys, content, message):
    target = "nope"
    if content is not None:
        target = str(tmp_path / "bad.json")
        (tmp_path / "bad.json").write_text(content)
    assert main(["hw", "boards", "zcu102", target]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # nothing printed before every board was checked
    assert re.fullmatch(rf"moevit: error: {message}\n", err), err


def test_a_missing_file_is_one_line(tmp_path, capsys):
    assert main(["hw", "boards", str(tmp_path / "none.json")]) == 2
    assert re.fullmatch(r"moevit: error: No board file none\.json at .*none\.json\n", capsys.readouterr().err)


def test_the_installed_package_finds_its_boards(tmp_path):
    # From a folder outside the checkout, through the installed package only.
    code = "from moevit.hw.boards import BOARDS, get_board; print(BOARDS, get_board('zcu102').dsp)"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            check=True)
    assert result.stdout == "('u280', 'zcu102', 'zcu104') 2520\n"
    assert math.isclose(get_board("u280").memory("HBM2").bandwidth_gbs, 460)


def test_the_u280s_ports_have_their_own_clock():
    """The HBM AXI ports run apart from the kernel: 32 x 256 bits at one pseudo-channel's
    rate make the HBM's 460 GB/s; the ZCU102's HP ports run at the design's clock."""
    u280, zcu102 = get_board("u280"), get_board("zcu102")
    assert u280.port_clock_mhz == 450 and zcu102.port_clock_mhz is None
    assert u280.port_bandwidth_gbs == pytest.approx(u280.memory("HBM2").bandwidth_gbs, rel=0.01)
