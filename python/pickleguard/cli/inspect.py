"""``pickleguard inspect``: the globals each pickle in a file would import, and
their class (risky, review), found without loading it."""

from __future__ import annotations

import argparse

from .. import _core
from .._pickles import Found, walk
from ._common import Report, add_json_option, readable
from ._status import ExitStatus

HELP = "list the globals a pickle would import, without loading it"

_MARKS = {"risky": "RISKY ", "review": "REVIEW "}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files", nargs="+", metavar="FILE", help="a pickle, a torch checkpoint or another file"
    )
    add_json_option(parser, "machine-readable output")


def run(args: argparse.Namespace) -> ExitStatus:
    report = Report(args.json)
    status = ExitStatus.OK
    for path, data in readable(args.files, report):
        found = walk(data)
        for p in found.pickles:
            status = max(status, _inspect_pickle(report, path, p))
        if found.raw_bytes:
            reader = "torch" if found.form == "torch-legacy" else "numpy"
            report.add(
                {"file": path, "format": found.form, "raw_bytes": found.raw_bytes},
                f"{path}: {found.raw_bytes} bytes of raw tensor or array data, "
                f"read by {reader}, not unpickled",
            )
        if found.problem:
            report.error(
                {"file": path, "error": found.problem},
                f"{path}: {found.problem}",
                "the file is damaged"
                if found.form == "zip"
                else "the file is not a pickle, or it is damaged",
            )
            status = ExitStatus.FINDING
    return report.finish(status)


def _inspect_pickle(report: Report, path: str, p: Found) -> ExitStatus:
    """Report one pickle of the file (or of a zip member)."""
    names = [g for g, _ in p.imports]
    classes = _core.classify_imports(names)
    risky = [g for g, c in classes if c == "risky"]
    label = f"{path}:{p.member}" if p.member else path
    role = f" ({p.role})" if p.role else ""
    item = {
        "file": path,
        "member": p.member or None,
        "offset": p.offset,
        "size": p.size,
        "role": p.role or None,
        "sha256": p.sha256,
        "imports": names,
        "risky": risky,
        "review": [g for g, c in classes if c == "review"],
        "classes": dict(classes),
    }
    lines = [f"{label} pickle at {p.offset}{role} (sha256:{p.sha256}):"]
    lines += [f"  {_MARKS.get(c, '')}{g}" for g, c in classes] or ["  (no imports)"]
    report.add(item, "\n".join(lines))
    return ExitStatus.FINDING if risky else ExitStatus.OK
