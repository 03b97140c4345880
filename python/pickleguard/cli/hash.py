"""``pickleguard hash``: the identities pickleguard sees in files: the whole file's,
and each pickle's in it (in each .pkl member of a zip archive)."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List

from .. import _core
from .._pickles import Found, Walk, walk, zip_pickles
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
        found = walk(data)
        item: Dict[str, Any] = {
            "file": path,
            algorithm: whole,
            "size": len(data),
            "format": found.form,
            "raw_bytes": found.raw_bytes,
        }
        lines = [f"{path}: file {algorithm}:{whole} ({len(data)} bytes{_form(found)})"]
        view = memoryview(data)
        if found.form == "zip":
            blobs = dict(zip_pickles(data)) if found.pickles else {}
            members: Dict[str, List[Dict[str, Any]]] = {name: [] for name in blobs}
            for p in found.pickles:
                stream = memoryview(blobs[p.member])[p.offset : p.offset + p.size]
                digest = _core.hexdigest(stream, algorithm)
                members[p.member].append(_pickle(p, algorithm, digest))
                lines.append(f"  {p.member}: {algorithm}:{digest} ({p.size} bytes)")
            item["members"] = [{"name": n, "pickles": ps} for n, ps in members.items()]
        else:
            item["pickles"] = []
            for p in found.pickles:
                digest = _core.hexdigest(view[p.offset : p.offset + p.size], algorithm)
                item["pickles"].append(_pickle(p, algorithm, digest))
                role = f" ({p.role})" if p.role else ""
                lines.append(f"  pickle at {p.offset}{role}: {algorithm}:{digest} ({p.size} bytes)")
        problem = found.problem
        if problem:
            item["error"] = problem
        report.add(item, "\n".join(lines))
        if problem:
            if not args.json:
                print(f"error: {path}: {problem}", file=sys.stderr)
                print("hint: the file is not a pickle, or it is damaged", file=sys.stderr)
            status = max(status, ExitStatus.FINDING)
    return report.finish(status)


def _pickle(p: Found, algorithm: str, digest: str) -> Dict[str, Any]:
    described: Dict[str, Any] = {"offset": p.offset, "size": p.size, algorithm: digest}
    if p.role:
        described["role"] = p.role
    return described


def _form(found: Walk) -> str:
    """What the walk recognized, for the file's line: nothing for plain pickles."""
    raw = f", {found.raw_bytes} bytes of raw data" if found.raw_bytes else ""
    compressed, _, form = found.form.rpartition(" ")
    named = {
        "zip": "zip archive",
        "torch-legacy": "torch's legacy format",
        "joblib": "joblib",
    }.get(form)
    if compressed:
        named = f"{compressed} {named or form}"
    return f", {named}{raw}" if named else ""
