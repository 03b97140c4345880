"""``pickleguard hash``: the identities pickleguard sees in files: the whole file's,
and each pickle's in it (in each .pkl member of a zip archive)."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict

from .. import _core
from .._pickles import is_zip, pickle_members, pickles_in
from ._common import Report, add_identity_option, add_json_option, readable
from ._status import ExitStatus

HELP = "print the identities pickleguard sees in files"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files", nargs="+", metavar="FILE", help="a pickle, a torch checkpoint or another file"
    )
    add_json_option(parser, "machine-readable output")
    add_identity_option(parser, "print SHA-256 (default) or BLAKE3 digests")


def run(args: argparse.Namespace) -> ExitStatus:
    report = Report(args.json)
    status = ExitStatus.OK
    algorithm = args.identity
    for path, data in readable(args.files, report):
        whole = _core.hexdigest(data, algorithm)
        item: Dict[str, Any] = {"file": path, algorithm: whole, "size": len(data)}
        lines = [f"{path}: file {algorithm}:{whole} ({len(data)} bytes)"]
        members, problem = pickle_members(data)
        if is_zip(data):
            item["members"] = []
            for name, member in members:
                pickles, problem = pickles_in(member, algorithm)
                item["members"].append({"name": name, "pickles": pickles})
                lines += [
                    f"  {name}: {algorithm}:{p[algorithm]} ({p['size']} bytes)" for p in pickles
                ]
                if problem:
                    problem = f"{name}: {problem}"
                    break
        else:
            pickles, problem = pickles_in(data, algorithm)
            item["pickles"] = pickles
            lines += [
                f"  pickle at {p['offset']}: {algorithm}:{p[algorithm]} ({p['size']} bytes)"
                for p in pickles
            ]
        if problem:
            item["error"] = problem
        report.add(item, "\n".join(lines))
        if problem:
            if not args.json:
                print(f"error: {path}: {problem}", file=sys.stderr)
                print("hint: the file is not a pickle, or it is damaged", file=sys.stderr)
            status = max(status, ExitStatus.FINDING)
    return report.finish(status)
