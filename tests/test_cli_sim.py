"""``moevit sim``: pytest over every cocotb suite, on the chosen simulator."""

from moevit.cli import main


def test_sim_runs_the_selected_suites(capfd):
    assert main(["sim", "--simulator", "icarus", "-k", "pack_round_trips", "--", "-rA"]) == 0
    out = capfd.readouterr().out
    assert "1 passed" in out and "PASSED tests/test_sim_streams.py::test_pack" in out


def test_sim_reports_failures_through_its_status(capfd):
    # No test matches: pytest exits 5, and so does the command.
    assert main(["sim", "-k", "no_such_test_anywhere"]) == 5


def test_unknown_simulator_is_rejected(capsys):
    assert main(["sim", "--simulator", "questa"]) == 2
    assert capsys.readouterr().err == (
        "moevit: error: argument --simulator: invalid choice: 'questa' (choose from 'icarus', 'verilator') "
        "(see: moevit sim --help)\n"
    )
