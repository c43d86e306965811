"""Fuzzing the program decoder with hypothesis: random bytes, and corruptions of tiny's real
program (bit flips, random words, header fields, truncations, extensions, one instruction
field set to a random or extreme value), with and without the CRCs fixed after the
corruption (so the checks behind the CRCs are reached), through
:func:`~moevit.hw.program.program.decode` and through ``moevit hw disassemble`` on a
program folder whose ``layout.json`` SHA-256 is made to match the corrupted file.

Each input is accepted (a valid program) or rejected with one
:class:`~moevit.hw.program.program.ProgramError` line naming the file; no other exception,
no hang (hypothesis's examples run one after the other under pytest's own time). The
CLI prints one line ``moevit: error: ...`` and exits 2. Fast: a few hundred cases; slow:
thousands. The database lives under ``build/hypothesis``; a failure prints the
``@reproduce_failure`` blob. Counts go to ``build/reliability/``.
"""

import hashlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moevit.cli import main
from moevit.hw.program.program import ProgramError, decode, write_program
from moevit.sim.reliability import (hypothesis_settings, mutate_program, program_mutations,
                                    record, tiny_program)

FAST, SLOW = 150, 3000


@pytest.fixture(scope="module")
def program():
    return tiny_program()[0]


def _decoded(program, data, tally):
    """Decode ``data``: accepted, or one ProgramError line naming the program."""
    try:
        decode(data, program.hw)
    except ProgramError as error:
        text = str(error)
        assert text.startswith("Program") and "\n" not in text, repr(text)
        tally["rejected"] += 1
        first = text.split(":")[0] if ":" in text else text
        tally.setdefault("reasons", set()).add(first[:60])
    else:
        tally["accepted"] += 1


def _examples(slow):
    return SLOW if slow else FAST


@pytest.mark.parametrize("slow", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_decoder_random_bytes(program, slow):
    """Random bytes, and random bytes behind the program's real header."""
    header = program.encode()[:64]
    tally = {"accepted": 0, "rejected": 0}

    @hypothesis_settings(max_examples=_examples(slow))
    @given(st.binary(max_size=600), st.booleans())
    def fuzz(data, behind_header):
        _decoded(program, header + data if behind_header else data, tally)

    with record(f"fuzz-decoder-bytes{'-slow' if slow else ''}", "fuzz",
                "program decoder, random bytes") as counts:
        fuzz()
        counts.update(cases=tally["accepted"] + tally["rejected"],
                      detail=f"{tally['rejected']} rejected, {tally['accepted']} accepted")
    assert tally["rejected"] > 0


@pytest.mark.parametrize("slow", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_decoder_mutated_program(program, slow):
    """Corruptions of tiny's program: every one accepted or rejected with a ProgramError;
    with the CRCs fixed, some reach the descriptor and address checks."""
    data = program.encode()
    decode(data, program.hw)   # the real one is accepted
    tally = {"accepted": 0, "rejected": 0}

    @hypothesis_settings(max_examples=_examples(slow))
    @given(program_mutations(program.instructions, len(data)))
    def fuzz(mutation):
        mutations, fix = mutation
        _decoded(program, mutate_program(data, program.instructions, mutations, fix), tally)

    with record(f"fuzz-decoder-mutations{'-slow' if slow else ''}", "fuzz",
                "program decoder, mutations") as counts:
        fuzz()
        reasons = sorted(tally.get("reasons", ()))
        print(f"{tally['rejected']} rejected, {tally['accepted']} accepted, "
              f"{len(reasons)} kinds of message")
        counts.update(cases=tally["accepted"] + tally["rejected"],
                      detail=f"{tally['rejected']} rejected, {tally['accepted']} accepted")
    assert tally["rejected"] > 0


@pytest.mark.parametrize("slow", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_disassemble_mutated_program(program, slow, tmp_path, capsys):
    """``moevit hw disassemble`` on a folder whose program.bin is corrupted (and its SHA-256
    in layout.json updated, so the decoder's checks are reached): exit 0 with a listing,
    or exit 2 with one line ``moevit: error: ...``, never a traceback."""
    folder = tmp_path / "program"
    write_program(program, folder)
    data = (folder / "program.bin").read_bytes()
    meta = json.loads((folder / "layout.json").read_text())
    codes = {0: 0, 2: 0}

    @hypothesis_settings(max_examples=_examples(slow) // 3)
    @given(program_mutations(program.instructions, len(data)), st.booleans())
    def fuzz(mutation, keep_sha):
        mutated = mutate_program(data, program.instructions, *mutation)
        (folder / "program.bin").write_bytes(mutated)
        meta["sha256"]["program.bin"] = hashlib.sha256(data if keep_sha else mutated).hexdigest()
        (folder / "layout.json").write_text(json.dumps(meta))
        capsys.readouterr()
        code = main(["hw", "disassemble", str(folder)])
        err = capsys.readouterr().err
        assert code in codes, f"exit {code}: {err}"
        if code:
            assert err.startswith("moevit: error: ") and err.count("\n") == 1, err
            assert "program.bin" in err, err
        codes[code] += 1

    with record(f"fuzz-disassemble{'-slow' if slow else ''}", "fuzz",
                "moevit hw disassemble") as counts:
        fuzz()
        counts.update(cases=sum(codes.values()),
                      detail=f"{codes[2]} exit 2, {codes[0]} listed")
    assert codes[2] > 0
