"""``make formal``: run the formal checks, print their table, write their summary.

``python -m moevit.hw.formal.run [--fast] [--only NAME ...] [--json] [--quiet]``

Runs every check of :data:`~moevit.hw.formal.checks.CHECKS` and every mutant of
:data:`~moevit.hw.formal.checks.MUTANTS` (``--fast``: those marked fast), each
in ``build/formal/<name>/``, prints one row per check (property, unit, kind,
depth, result, seconds) and writes ``build/formal/summary.json``: a list of
rows with the keys ``name``, ``unit``, ``what``, ``kind`` (``prove``: k-induction,
a proof; ``bmc``: bounded, no counterexample within ``depth`` cycles of reset),
``depth``, ``result`` (SymbiYosys' verdict: ``PASS``, ``FAIL``, ``UNKNOWN``,
``TIMEOUT``), ``expect`` (``PASS``; ``FAIL`` for a mutant), ``ok`` (result ==
expect), ``seconds``, and for a counterexample ``trace`` (its VCD) and ``failed``
(the source line of each failed assertion; else ``None`` and ``[]``). ``--json`` prints
the same list on stdout instead of the table. A run of some checks (``--only``,
``--fast``) updates their rows of the summary and keeps the others'; the summary is
written after every check. The exit status is 1 when a row of this run is not ``ok``, 2
for bad options.
"""

import argparse
import json
import sys

from moevit.errors import MoevitError, UsageError
from moevit.hw.formal.checks import CHECKS, MUTANTS, run_check
from moevit.paths import build_dir, write_atomically

__all__ = ["run_checks", "print_rows", "main"]

COLUMNS = [("property", "name", "<"), ("unit", "unit", "<"), ("kind", "kind", "<6"),
           ("depth", "depth", ">6"), ("result", "result", ">10"), ("seconds", "seconds", ">9")]


def run_checks(checks, *, progress=True, each=None) -> list:
    """Run ``checks``; one summary row each (see the module's description), handed to
    ``each`` (the rows so far) as soon as its check ends."""
    from tqdm import tqdm

    rows = []
    bar = tqdm(checks, desc="formal", unit="check", disable=not progress, file=sys.stderr)
    for check in bar:
        bar.set_postfix_str(check.name)
        outcome = run_check(check, build_dir("formal", check.name))
        rows.append({"name": check.name, "unit": check.unit, "what": check.what,
                     "kind": check.kind, "depth": check.depth, "result": outcome.status,
                     "expect": check.expect, "ok": outcome.status == check.expect,
                     "seconds": round(outcome.seconds, 1),
                     "trace": str(outcome.trace) if outcome.trace else None,
                     "failed": outcome.failed_rules()})
        if each is not None:
            each(rows)
    return rows


def print_rows(rows) -> None:
    """The table of :func:`run_checks`' rows, then the counts."""
    # The text columns as wide as their longest entry.
    columns = [(header, key, place if place != "<" else
                f"<{max([len(header)] + [len(r[key]) for r in rows]) + 2}")
               for header, key, place in COLUMNS]
    print("".join(f"{header:{place}}" for header, _, place in columns))
    for r in rows:
        shown = dict(r, result=r["result"] + ("" if r["ok"] else "!"))
        print("".join(f"{shown[key]:{place}}" for _, key, place in columns))
    checks = [r for r in rows if r["expect"] == "PASS"]
    proven = sum(r["ok"] and r["kind"] == "prove" for r in checks)
    bounded = sum(r["ok"] and r["kind"] == "bmc" for r in checks)
    caught = sum(r["ok"] for r in rows if r["expect"] == "FAIL")
    print(f"{proven} proven by k-induction, {bounded} bounded (no counterexample within the "
          f"depth), {len(checks) - proven - bounded} failed; {caught} of "
          f"{len(rows) - len(checks)} mutants caught (result FAIL expected); "
          f"! marks a result that is not the expected one")


def _merge(summary, rows, order) -> list:
    """The rows of ``summary`` (a previous run's, if readable) updated with ``rows``,
    in the checks' order: a run of some checks keeps the others' last verdicts."""
    try:
        old = {r["name"]: r for r in json.loads(summary.read_text())}
    except (OSError, ValueError, TypeError, KeyError):
        old = {}
    old.update({r["name"]: r for r in rows})
    return [old[name] for name in order if name in old]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moevit.hw.formal.run",
                                     description="Run the formal checks (SymbiYosys).")
    parser.add_argument("--fast", action="store_true", help="only the checks of make test")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these checks")
    parser.add_argument("--json", action="store_true", help="the rows as JSON on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        checks = CHECKS + MUTANTS
        if args.only:
            known = {c.name for c in checks}
            unknown = [n for n in args.only if n not in known]
            if unknown:
                raise UsageError(f"no formal check named {', '.join(unknown)}; the checks are "
                                 f"{', '.join(sorted(known))}")
            checks = [c for c in checks if c.name in args.only]
        if args.fast:
            checks = [c for c in checks if c.fast]
        summary = build_dir("formal") / "summary.json"
        order = [c.name for c in CHECKS + MUTANTS]

        def save(rows):
            # After every check: a long run stopped part way keeps the verdicts it reached.
            merged = json.dumps(_merge(summary, rows, order), indent=1)
            write_atomically(summary, lambda partial: partial.write_text(merged + "\n"),
                             "formal summary")

        rows = run_checks(checks, progress=not args.quiet, each=save)
    except MoevitError as error:
        print(f"moevit: error: {error}", file=sys.stderr)
        return 2
    text = json.dumps(rows, indent=1)
    if args.json:
        print(text)
    else:
        print_rows(rows)
        print(f"(summary: {summary})")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
