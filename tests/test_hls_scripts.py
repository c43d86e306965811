"""The Vitis HLS / v++ scripts of the HLS top and their dry run (tclsh, no AMD tools).

For each board the dry run must pass every check. Each check is also shown to fail on a script spoiled in the way it guards
against (a wrong part, a missing file, a Tcl typo, a wrong platform), so no
check passes by construction.
"""

import re

import pytest

from moevit.cli import main
from moevit.errors import MoevitError, ToolNotFoundError
from moevit.hls import scripts as S
from moevit.hw.boards import get_board

BOARDS = ("zcu102", "zcu104", "u280")


@pytest.fixture(autouse=True)
def quick_case(monkeypatch):
    """The testbench's case as empty files of the right names: compiling tiny's program
    and running the interpreter takes seconds (tests/test_hls_top.py runs a real case
    through the testbench, and the written scripts' own case)."""
    def write(config, folder):
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("runs.txt", "weights.bin", "program.bin", "run0-expected-output.bin",
                     "run0-expected-scratch.bin"):
            (folder / name).write_bytes(b"")
        return folder

    monkeypatch.setattr(S, "_write_case", write)


def _checks(scripts):
    return {check.name: check for check in S.dry_run(scripts)}


def _spoil(path, old, new):
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("board", BOARDS)
def test_dry_run_passes(board, tmp_path):
    scripts = S.write_scripts("tiny", board, tmp_path)
    checks = _checks(scripts)
    assert checks["the top function is defined"].detail == "void moevit_top(...) in top.cpp"
    failed = [f"{c.name}: {c.detail}" for c in checks.values() if not c.ok]
    assert not failed
    part = get_board(board).part
    text = scripts.tcl.read_text()
    assert f"set_top {S.TOP}\n" in text and f"set_part {{{part}}}\n" in text
    alveo = board == "u280"
    assert ("export_design -format ip_catalog" in text) != alveo
    assert (tmp_path / S.CFG).exists() == alveo and (tmp_path / S.VPP_SCRIPT).exists() == alveo
    assert (tmp_path / "parameters.h").is_file()
    case = tmp_path / S.CASE
    assert f"csim_design -argv {{{case}}}\n" in text and f"cosim_design -argv {{{case}}}\n" in text


def test_clock_is_the_hw_target_capped_at_the_board(tmp_path):
    zynq = S.write_scripts("tiny", "zcu102", tmp_path / "z")   # board 200 MHz < HwConfig 250
    alveo = S.write_scripts("tiny", "u280", tmp_path / "u")    # HwConfig 250 MHz < board 300
    assert (zynq.clock_mhz, alveo.clock_mhz) == (200, 250)
    assert "create_clock -period 5.000 -name default" in zynq.tcl.read_text()
    assert "clock=250000000:moevit_top" in (tmp_path / "u" / S.CFG).read_text()


def test_vpp_command(tmp_path):
    S.write_scripts("tiny", "u280", tmp_path)
    line = [l for l in (tmp_path / S.VPP_SCRIPT).read_text().splitlines() if l.startswith("v++")]
    assert len(line) == 1
    assert line[0].startswith("v++ -c -t hw --platform xilinx_u280_gen3x16_xdma_1_202211_1 "
                              "-k moevit_top --config moevit_top.cfg ")
    assert " -o moevit_top.xo " in line[0] and line[0].endswith("hls/src/top.cpp")


@pytest.mark.parametrize("board, file, old, new, check", [
    ("zcu102", S.TCL, "set_part {xczu9eg-ffvb1156-2-e}", "set_part {xczu7ev-ffvc1156-2-e}",
     "set_part is the board's"),
    ("zcu104", S.TCL, "set_top moevit_top", "set_top moevit", "set_top"),
    ("zcu102", S.TCL, "-flow_target vivado", "-flow_target vitis", "flow target"),
    ("zcu102", S.TCL, "-period 5.000", "-period 4.000", "clock"),
    ("zcu102", S.TCL, "-format ip_catalog", "-format xo", "export_design -format ip_catalog"),
    ("zcu102", S.TCL, "moevit_gelu.h}", "moevit_gelu_x.h}", "every named file exists"),
    ("zcu104", S.TCL, "tb_top.cpp}", "tb_top_x.cpp}", "every named file exists"),
    ("zcu102", S.TCL, "add_files {" + str(S.INCLUDE_DIR / "moevit_moe.h"), "add_files -tb {"
     + str(S.INCLUDE_DIR / "moevit_moe.h"), "every source is added"),
    ("zcu104", S.TCL, "add_files -tb {" + str(S.TOP_TESTBENCH) + "} -cflags {",
     "# ", "every source is added"),
    ("zcu102", S.TCL, "csynth_design\n", "", "flow order"),
    ("zcu104", S.TCL, "cosim_design -argv {", "cosim_design -argv {/tmp", "the testbench's case"),
    ("u280", S.VPP_SCRIPT, "xilinx_u280_gen3x16_xdma_1_202211_1", "xilinx_u250", "v++ -c to an .xo"),
    ("u280", S.CFG, "clock=250000000", "clock=300000000", "v++ -c to an .xo"),
    ("u280", S.TCL, "csynth_design\n", "csynth_design\nexport_design -format ip_catalog\n",
     "no Vivado IP export on an Alveo card"),
])
def test_each_check_fails_on_a_spoiled_script(board, file, old, new, check, tmp_path):
    scripts = S.write_scripts("tiny", board, tmp_path)
    _spoil(tmp_path / file, old, new)
    found = _checks(scripts)[check]
    assert not found.ok, found.detail


@pytest.mark.parametrize("old, new, message", [
    ("csynth_design", "csynth_desgn", r'invalid command name "csynth_desgn"'),
    ("set_part {", "set_part {{", r"missing close-brace"),
])
def test_tcl_that_does_not_run_in_tclsh(old, new, message, tmp_path):
    scripts = S.write_scripts("tiny", "zcu102", tmp_path)
    _spoil(scripts.tcl, old, new)
    with pytest.raises(MoevitError, match=r"^The Tcl script .* does not run in tclsh: .*" + message):
        S.dry_run(scripts)


def test_recorded_calls_keep_their_words(tmp_path):
    scripts = S.write_scripts("tiny", "zcu104", tmp_path)
    calls = S.record_calls(scripts.tcl)
    assert calls[0] == ["open_project", "-reset", "moevit_top_prj"]
    assert calls[-1] == ["exit"]
    tb = [c for c in calls if c[:2] == ["add_files", "-tb"]]
    assert [c[2] for c in tb] == [str(S.TOP_TESTBENCH), str(S.TB_DIR / "tb_io.h")]
    assert all(c[3] == "-cflags" and c[4].startswith("-std=c++14 -I") for c in tb)


def test_missing_tclsh(tmp_path, monkeypatch):
    scripts = S.write_scripts("tiny", "zcu102", tmp_path)
    monkeypatch.setattr(S.shutil, "which", lambda name: None)
    with pytest.raises(ToolNotFoundError, match=r"^tclsh not found: .*apt-get install tcl"):
        S.dry_run(scripts)


def test_cli_dry_run(tmp_path, capsys):
    code = main(["hls", "scripts", "--board", "u280", "-o", str(tmp_path), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert re.search(r"^dry run of u280: 12 of 12 checks pass$", out, re.M)
    assert not re.search(r"^FAIL", out, re.M)


def test_top_function_missing(tmp_path, monkeypatch):
    """A top source without moevit_top fails its check (the other checks still run)."""
    scripts = S.write_scripts("tiny", "zcu102", tmp_path)
    source = tmp_path / "top.cpp"
    source.write_text(S.TOP_SOURCE.read_text().replace("void moevit_top(", "void other_top("))
    monkeypatch.setattr(S, "TOP_SOURCE", source)
    found = _checks(scripts)["the top function is defined"]
    assert not found.ok and found.detail == f"{source} defines no function moevit_top"


@pytest.mark.parametrize("board, tool", [("zcu102", "vitis_hls"), ("u280", "v\\+\\+")])
def test_synth_without_the_tools(board, tool, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))
    assert main(["hls", "synth", "--board", board, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(rf"moevit: error: {tool} not found: the HLS synthesis needs AMD Vitis "
                        rf"2023\.2 .*the scripts are written in .*out\n", err)
    assert (tmp_path / "out" / S.TCL).is_file()


@pytest.mark.parametrize("argv, message", [
    (["--board", "zcu106"], r"Unknown board 'zcu106'; known boards: u280, zcu102, zcu104"),
    (["--board", "zcu102", "--config", "huge"], r".*huge"),
    (["--board", "zcu102", "-o", "{file}/sub"], r"Cannot write the HLS script folder"),
])
def test_bad_input(argv, message, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    argv = [a.replace("{file}", str(tmp_path / "file")) for a in argv]
    assert main(["hls", "scripts", *argv]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(rf"moevit: error: {message}.*\n", err), err
    assert not (tmp_path / "file" / "sub").exists()


def test_synth_with_the_tool(tmp_path, capsys, monkeypatch):
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "vitis_hls").write_text("#!/bin/sh\n: > ran\n")
    (tools / "vitis_hls").chmod(0o755)
    monkeypatch.setenv("PATH", str(tools))
    code = main(["hls", "synth", "--board", "zcu104", "-o", str(tmp_path / "out")])
    assert code == 0 and (tmp_path / "out" / "ran").exists()  # run in the scripts' folder
