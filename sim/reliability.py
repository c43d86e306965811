"""The reliability counts: proofs, faults survived, fuzz cases, long-regression seeds.

Each reliability suite (``tests/test_faults.py``, the driver-level faults in
``tests/test_host_sim.py``, ``tests/test_fuzz*.py``, the long regression in
``tests/test_reliability.py``) writes what it ran into one
JSON file under ``build/reliability/`` through :func:`record`: its status
(``passed``, or ``failed`` when the suite raised), when it ran, how long it
took, and its counts (``faults``: injected and survived; ``fuzz``: cases;
``seeds``: seeds run and passed). :func:`reliability_rows` reads those files
and the formal checks' ``build/formal/summary.json`` (written by ``make
formal``), so ``moevit bench reliability`` and ``moevit report``
(:func:`reliability_markdown`) show what the last runs produced and when.

:func:`hypothesis_settings` keeps hypothesis's example database under
``build/`` (never in the source tree).
"""

import contextlib
import functools
import json
import time
from datetime import datetime, timezone
from pathlib import Path

from moevit.errors import ConfigError

__all__ = ["record", "results_dir", "reliability_rows", "reliability_markdown", "print_table",
           "run_fast_suites", "hypothesis_settings", "seeds", "tiny_quantized_model",
           "tiny_program", "short_program", "program_mutations", "mutate_program", "fix_crcs",
           "FAST_SUITES", "KINDS", "LONG_UNITS"]

#: What a suite counts: its kind -> (the count passed, the count run, what they are).
KINDS = {"faults": ("survived", "injected", "faults survived"),
         "fuzz": ("cases", "cases", "fuzz cases run"),
         "seeds": ("passed", "seeds", "seeds bit-exact"),
         "formal": ("proven", "properties", "properties proven")}

#: The long regression's units (``make sim-long``, tests/test_reliability.py): a row each,
#: "not run" until it has run.
LONG_UNITS = ("attention", "softmax", "layernorm", "gelu", "linear", "copy-engine", "top")

#: The fast suites ``moevit bench reliability --run`` runs first (pytest files, not slow;
#: test_host_sim.py: the driver-level faults on the sim backend).
FAST_SUITES = ("test_faults.py", "test_host_sim.py", "test_fuzz_program.py",
               "test_fuzz_readers.py", "test_fuzz_sim.py")


def results_dir(*parts) -> Path:
    """``build/reliability/...`` (made on demand)."""
    from moevit.paths import build_dir

    return build_dir("reliability", *parts)


def _now():
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def record(suite: str, kind: str, what: str):
    """Count one run of ``suite`` (a file name under ``build/reliability/``; ``/`` makes
    folders) into a dict the body fills (``injected``/``survived``, ``cases``,
    ``seeds``/``passed``), then write it with the status, ``what`` ran, when and how long.

    A body that raises leaves ``failed``, so a stale pass never outlives a failing run.
    """
    if kind not in KINDS:
        raise ValueError(f"Suite kind must be one of {sorted(KINDS)}, not {kind!r}")
    counts = {}
    started, status = time.monotonic(), "failed"
    try:
        yield counts
        status = "passed"
    finally:
        path = results_dir(*suite.split("/")[:-1]) / f"{suite.split('/')[-1]}.json"
        path.write_text(json.dumps({"suite": suite, "kind": kind, "what": what,
                                    "status": status, "when": _now(),
                                    "seconds": round(time.monotonic() - started, 1),
                                    **counts}, indent=1) + "\n")


def hypothesis_settings(**options):
    """hypothesis ``settings`` with its folder (example database, caches) under
    ``build/hypothesis`` (no database when derandomized) and no deadline (a loaded
    machine's timings vary); ``options`` as hypothesis takes them."""
    from hypothesis import HealthCheck, settings
    from hypothesis.configuration import set_hypothesis_home_dir
    from hypothesis.database import DirectoryBasedExampleDatabase

    from moevit.paths import build_dir

    # Its caches too (constants, Unicode tables), which it would put in ./.hypothesis.
    set_hypothesis_home_dir(build_dir("hypothesis"))
    database = None if options.get("derandomize") else \
        DirectoryBasedExampleDatabase(str(build_dir("hypothesis", "examples")))
    return settings(database=database, deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture], **options)


def seeds(default: int) -> list:
    """The long regression's seeds: ``$MOEVIT_SEED`` alone (a replay), else ``$MOEVIT_SEEDS``
    of them (``make sim-long``: 100; ``FIRST-LAST``: those, to share a run between
    processes, each its own disjoint span), else ``default``; 1, 2, ... so a failure names its seed in the test id."""
    import os
    import re

    if os.environ.get("MOEVIT_SEED"):
        return [int(os.environ["MOEVIT_SEED"])]
    text = os.environ.get("MOEVIT_SEEDS", str(default))
    span = re.fullmatch(r"([1-9][0-9]*)-([1-9][0-9]*)", text)
    if span and int(span[1]) <= int(span[2]):
        return list(range(int(span[1]), int(span[2]) + 1))
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"MOEVIT_SEEDS must be a positive integer or FIRST-LAST, "
                          f"not {text!r}")
    return list(range(1, int(text) + 1))


@functools.lru_cache(maxsize=1)
def tiny_quantized_model():
    """tiny's untrained signal model quantized, and one float image: made once per process
    for every reliability suite (:func:`moevit.sim.units.tiny_quantized`)."""
    from moevit.sim.units import tiny_quantized

    return tiny_quantized(trained=False)


@functools.lru_cache(maxsize=1)
def tiny_program():
    """tiny's program for its default hardware and its int8 input image."""
    from moevit.hw.config import DEFAULT_HW
    from moevit.hw.program.compiler import compile_program
    from moevit.model.integer import golden

    qmodel, image = tiny_quantized_model()
    program = compile_program(qmodel, DEFAULT_HW["tiny"])
    return program, golden.quantize_image(image, qmodel.scale("input"))


def short_program(program, *, linear):
    """A few instructions of ``program`` (tiny's) that read every kind of buffer and write
    the scratch and the output: PATCHIFY, (the first LINEAR,) the COPY of the class token,
    and a COPY of 1024 bytes of patches into the output buffer. Without the LINEAR (a top
    of the PATCHIFY and COPY engines), PATCHIFY cuts only the first row of patches: a run
    of 450 cycles."""
    import dataclasses

    from moevit.hw.program.isa import CopyDescriptor

    layout = program.layout
    patchify, first_linear, copy_cls = program.instructions[:3]
    if not linear:
        patchify = dataclasses.replace(patchify, rows=patchify.patch)
    to_output = CopyDescriptor(program.hw, length=1024, src_addr=layout["patch_embed.in"].offset,
                               dst_addr=layout["output"].offset)
    body = [patchify, *([first_linear] if linear else []), copy_cls, to_output]
    return dataclasses.replace(program, instructions=body)


# Corrupted programs ----------------------------------------------------------------------
def fix_crcs(data: bytes) -> bytes:
    """``program.bin``'s bytes with the body length and both CRCs made to match what they
    hold (a body cut to whole words), so a corruption reaches the checks behind them: the
    decoder's opcodes, descriptors and addresses, and the sequencer, which checks no CRC."""
    import zlib

    from moevit.hw.program.program import HEADER_FIELDS, HEADER_WORDS

    head = 4 * HEADER_WORDS
    if len(data) < head:
        return bytes(data)
    data = bytearray(data[:head + (len(data) - head) // 4 * 4])
    words = {name: 4 * k for k, name in enumerate(HEADER_FIELDS)}
    body = bytes(data[head:])
    data[words["body_words"]:words["body_words"] + 4] = (len(body) // 4).to_bytes(4, "little")
    data[words["body_crc"]:words["body_crc"] + 4] = zlib.crc32(body).to_bytes(4, "little")
    crc = zlib.crc32(bytes(data[:words["header_crc"]]))
    data[words["header_crc"]:words["header_crc"] + 4] = crc.to_bytes(4, "little")
    return bytes(data)


def program_mutations(instructions, size, start=0):
    """A hypothesis strategy of corruptions of a ``size``-byte ``program.bin`` holding
    ``instructions``: lists of bit flips, random words, truncations, extensions and edits
    of one field of one instruction (or of the header), each list with a flag to fix the
    CRCs after it (:func:`mutate_program` applies them). Flips, words and truncations fall
    at or after byte ``start`` (the header's own fields are edited by name)."""
    from hypothesis import strategies as st

    from moevit.hw.program.program import HEADER_FIELDS

    fields = [(k, name, bits) for k, d in enumerate(instructions)
              for name, _, bits, _, _ in d.describe()]
    word = st.integers(0, 2**32 - 1)
    edge = lambda bits: st.sampled_from([0, 1, (1 << bits) - 1, 1 << (bits - 1)])  # noqa: E731
    field_edit = st.sampled_from(fields).flatmap(lambda f: st.tuples(
        st.just("field"), st.just(f[0]), st.just(f[1]),
        st.integers(0, (1 << f[2]) - 1) | edge(f[2])))
    one = st.one_of(
        st.tuples(st.just("flip"), st.integers(8 * start, 8 * size - 1)),
        st.tuples(st.just("word"), st.integers(start // 4, size // 4 - 1), word),
        st.tuples(st.just("header"), st.sampled_from(HEADER_FIELDS), word),
        st.tuples(st.just("truncate"), st.integers(start, size - 1)),
        st.tuples(st.just("extend"), st.binary(min_size=1, max_size=64)),
        field_edit)
    return st.tuples(st.lists(one, min_size=1, max_size=4), st.booleans())


def mutate_program(data: bytes, instructions, mutations, fix) -> bytes:
    """``data`` (``program.bin`` of ``instructions``) with ``mutations`` applied in order
    (see :func:`program_mutations`), then the CRCs fixed if ``fix``."""
    from moevit.hw.program.program import HEADER_FIELDS, HEADER_WORDS

    data = bytearray(data)
    starts = [4 * HEADER_WORDS]
    for d in instructions:
        starts.append(starts[-1] + 4 * d.words())
    for kind, *args in mutations:
        if kind == "flip" and args[0] < 8 * len(data):
            data[args[0] // 8] ^= 1 << (args[0] % 8)
        elif kind == "word" and 4 * args[0] + 4 <= len(data):
            data[4 * args[0]:4 * args[0] + 4] = args[1].to_bytes(4, "little")
        elif kind == "header":
            at = 4 * HEADER_FIELDS.index(args[0])
            if at + 4 <= len(data):
                data[at:at + 4] = args[1].to_bytes(4, "little")
        elif kind == "truncate":
            del data[args[0]:]
        elif kind == "extend":
            data += args[0]
        elif kind == "field":
            k, name, value = args
            desc = instructions[k]
            image = desc.to_int_with(**{name: value})
            at, count = starts[k], 4 * desc.words()
            if at + count <= len(data):
                data[at:at + count] = image.to_bytes(count, "little")
    return fix_crcs(bytes(data)) if fix else bytes(data)


# The counts ------------------------------------------------------------------------------
def _formal_rows():
    from moevit.paths import build_dir

    path = build_dir() / "formal" / "summary.json"
    if not path.is_file():
        return [{"suite": "formal", "what": KINDS["formal"][2], "passed": None, "total": None,
                 "status": "not run: make formal", "when": None, "seconds": None,
                 "detail": ""}]
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"Cannot read the formal summary {path}: {error}") from None
    # The format of moevit.hw.formal.run: one row per check, ``kind`` "prove"
    # (k-induction) or "bmc" (bounded at ``depth``), ``ok`` when the result is the
    # expected one (a mutant is expected to FAIL).
    if not isinstance(data, list) or not all(isinstance(p, dict) and "ok" in p for p in data):
        raise ConfigError(f"The formal summary {path} is not a list of checks")
    checks = [p for p in data if p.get("expect") != "FAIL"]
    mutants = [p for p in data if p.get("expect") == "FAIL"]
    proven = [p for p in checks if p["ok"] and p.get("kind") == "prove"]
    bounded = [p for p in checks if p["ok"] and p.get("kind") == "bmc"]
    depths = sorted(int(p["depth"]) for p in bounded if isinstance(p.get("depth"), int))
    detail = (f"{len(proven)} proven (k-induction), {len(bounded)} bounded"
              + (f" at depth {depths[0]}" + (f"..{depths[-1]}" if depths[-1] != depths[0] else "")
                 if depths else "")
              + f", {sum(p['ok'] for p in mutants)} of {len(mutants)} mutants caught")
    bad = [p for p in data if not p["ok"]]
    when = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(
        timespec="seconds")
    return [{"suite": "formal", "what": KINDS["formal"][2], "passed": len(proven) + len(bounded),
             "total": len(checks), "status": "failed" if bad else "passed", "when": when,
             "seconds": round(sum(float(p.get("seconds") or 0) for p in data), 1),
             "detail": detail}]


def _suite_rows():
    rows, folder = [], results_dir()
    files = sorted(p for p in folder.rglob("*.json"))
    grouped = {}
    for path in files:
        try:
            entry = json.loads(path.read_text())
            passed_key, total_key, what = KINDS[entry["kind"]]
        except (OSError, ValueError, KeyError, TypeError):
            raise ConfigError(f"The result file {path} is not a reliability record; "
                              f"delete it or rerun its suite") from None
        # The long regression writes a file per (unit, seed): one row per unit.
        group = str(path.parent.relative_to(folder)) if path.parent != folder else entry["suite"]
        row = grouped.setdefault(group, {"suite": group, "what": what, "passed": 0, "total": 0,
                                         "status": "passed", "when": entry["when"],
                                         "seconds": 0.0, "detail": ""})
        if path.parent != folder:   # one seed
            row["passed"] += entry["status"] == "passed"
            row["total"] += 1
        else:
            row["passed"] += int(entry.get(passed_key, 0)) if entry["status"] == "passed" else 0
            row["total"] += int(entry.get(total_key, 0))
            row["detail"] = entry.get("detail", "")
        if entry["status"] != "passed":
            row["status"] = "failed"
        row["when"] = max(row["when"], entry["when"])
        row["seconds"] = round(row["seconds"] + float(entry.get("seconds", 0)), 1)
    rows.extend(grouped.values())
    rows.extend({"suite": f"sim-long-{unit}", "what": KINDS["seeds"][2], "passed": None,
                 "total": None, "status": "not run: make sim-long", "when": None,
                 "seconds": None, "detail": ""}
                for unit in LONG_UNITS if f"sim-long-{unit}" not in grouped)
    return rows


def reliability_rows() -> list:
    """One row per suite (``suite``, ``what``, ``passed``, ``total``, ``status``,
    ``when``, ``seconds``, ``detail``): the formal checks first, then every result file
    under ``build/reliability/``, then a "not run" row for each unit of the long regression
    that has none."""
    return _formal_rows() + _suite_rows()


def _text(row, key):
    value = row[key]
    return "-" if value is None else str(value)


def print_table(rows) -> None:
    """The rows as a table, with a line when no suite has run yet."""
    from moevit.hw.bench import print_rows

    shown = [dict(r, passed_text=_text(r, "passed"), total_text=_text(r, "total"),
                  status_text="  " + r["status"],
                  when_text=(r["when"] or "-").replace("+00:00", "Z"),
                  seconds_text=_text(r, "seconds"), detail_text="  " + r["detail"])
             for r in rows]
    wide = max(len(r["suite"]) for r in rows) + 2
    print_rows(shown, [("suite", "suite", f"<{wide}", ""), ("what", "what", "<19", ""),
                       ("passed", "passed_text", ">7", ""), ("of", "total_text", ">7", ""),
                       ("  status", "status_text", "<26", ""),
                       ("when (UTC)", "when_text", "<22", ""),
                       ("seconds", "seconds_text", ">8", ""),
                       ("  detail", "detail_text", "<0", "")])
    if all(r["when"] is None for r in rows):
        print("no fault, fuzz or long suite has run yet: moevit bench reliability --run, "
              "or make test / make sim-long")


def reliability_markdown(rows=None) -> str:
    """The rows as a Markdown table (for ``moevit report``)."""
    rows = reliability_rows() if rows is None else rows
    lines = ["| suite | what | passed | of | status | when (UTC) | detail |",
             "|---|---|---:|---:|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['suite']} | {r['what']} | {_text(r, 'passed')} | "
                     f"{_text(r, 'total')} | {r['status']} | {r['when'] or '-'} | "
                     f"{r['detail']} |")
    return "\n".join(lines) + "\n"


def run_fast_suites(to_stderr=False) -> int:
    """Run the fast reliability suites with pytest (their result files follow), its report
    on stderr if ``to_stderr`` (the JSON owns stdout); the exit status of pytest."""
    import subprocess
    import sys

    tests = Path(__file__).resolve().parent.parent / "tests"
    suites = [str(tests / name) for name in FAST_SUITES]
    missing = [s for s in suites if not Path(s).is_file()]
    if missing:
        raise ConfigError(f"The reliability suites are not here: {', '.join(missing)} (run "
                          f"from a source checkout)")
    command = [sys.executable, "-m", "pytest", "-q", "-m", "not slow", *suites]
    return subprocess.call(command, stdout=sys.stderr if to_stderr else None)
