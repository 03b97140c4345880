"""``pickleguard inspect``: the globals each pickle in a file would import, and
their class (risky, review), found without loading it."""

from __future__ import annotations

import argparse

from .. import _core
from .._pickles import pickle_members, pickles_in
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
        members, damaged = pickle_members(data)
        if damaged:
            report.error(
                {"file": path, "error": damaged}, f"{path}: {damaged}", "the file is damaged"
            )
            status = max(status, ExitStatus.FINDING)
        for name, blob in members:
            status = max(status, _inspect_member(report, path, name, blob))
    return report.finish(status)


def _inspect_member(report: Report, path: str, name: str, blob: bytes) -> ExitStatus:
    """Report each pickle of one member of the file (or of the file, named "")."""
    status = ExitStatus.OK
    pickles, problem = pickles_in(blob)
    label = f"{path}:{name}" if name else path
    for p in pickles:
        offset = p["offset"]
        found = _core.imports(blob[offset : offset + p["size"]])
        classes = _core.classify_imports([g for g, _ in found])
        risky = [g for g, c in classes if c == "risky"]
        item = {
            "file": path,
            "member": name or None,
            "offset": offset,
            "sha256": p["sha256"],
            "imports": [g for g, _ in found],
            "risky": risky,
            "review": [g for g, c in classes if c == "review"],
            "classes": dict(classes),
        }
        lines = [f"{label} pickle at {offset} (sha256:{p['sha256']}):"]
        lines += [f"  {_MARKS.get(c, '')}{g}" for g, c in classes] or ["  (no imports)"]
        report.add(item, "\n".join(lines))
        if risky:
            status = ExitStatus.FINDING
    if problem:
        report.error(
            {"file": path, "member": name or None, "error": problem},
            f"{label}: {problem}",
            "the file is not a pickle, or it is damaged",
        )
        status = ExitStatus.FINDING
    return status
