"""The ``pickleguard`` command line.

Exit codes: 0 ok, 1 a finding (an invalid manifest, a pickle that cannot be
delimited), 2 a usage or I/O error.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

from . import _core
from .errors import ManifestError

EXIT_OK = 0
EXIT_FINDING = 1
EXIT_USAGE = 2


class _Report:
    """Collects results; prints humans' lines or one JSON document at the end."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.items: List[Dict[str, Any]] = []

    def add(self, item: Dict[str, Any], human: str) -> None:
        self.items.append(item)
        if not self.as_json:
            print(human)

    def error(self, item: Dict[str, Any], message: str, hint: str) -> None:
        self.items.append(item)
        if not self.as_json:
            print(f"error: {message}", file=sys.stderr)
            print(f"hint: {hint}", file=sys.stderr)

    def finish(self, status: int) -> int:
        if self.as_json:
            json.dump({"status": status, "results": self.items}, sys.stdout, indent=2)
            sys.stdout.write("\n")
        return status


def _check(args: argparse.Namespace) -> int:
    report = _Report(args.json)
    status = EXIT_OK
    for path in args.manifests:
        if not os.path.isfile(path):
            report.error(
                {"manifest": path, "ok": False, "error": "not a readable file"},
                f"{path}: no such file",
                "give the path of a manifest TOML file",
            )
            status = max(status, EXIT_USAGE)
            continue
        try:
            entries = _core.check_manifest(path)
        except ManifestError as e:
            message, _, hint = str(e).partition("\nhint: ")
            report.error(
                {"manifest": path, "ok": False, "error": message, "hint": hint}, message, hint
            )
            status = max(status, EXIT_FINDING)
        else:
            report.add(
                {"manifest": path, "ok": True, "entries": entries},
                f"ok: {path} ({entries} entries)",
            )
    return report.finish(status)


def _hash(args: argparse.Namespace) -> int:
    report = _Report(args.json)
    status = EXIT_OK
    for path in args.files:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            report.error(
                {"file": path, "error": str(e)},
                f"could not read {path}: {e.strerror}",
                "check the path",
            )
            status = max(status, EXIT_USAGE)
            continue
        pickles = []
        offset = 0
        problem: Optional[str] = None
        while offset < len(data):
            view = memoryview(data)[offset:]
            try:
                length, _ = _core.delimit(view)
            except Exception as e:  # the reader's UnpicklingError, EOFError, OverflowError
                problem = f"no complete pickle at offset {offset}: {e}"
                break
            digest = _core.identify(view[:length])[len("sha256:") :]
            pickles.append({"offset": offset, "size": length, "sha256": digest})
            offset += length
        whole = hashlib.sha256(data).hexdigest()
        item = {"file": path, "sha256": whole, "size": len(data), "pickles": pickles}
        if problem:
            item["error"] = problem
        lines = [f"{path}: file sha256:{whole} ({len(data)} bytes)"]
        lines += [
            f"  pickle at {p['offset']}: sha256:{p['sha256']} ({p['size']} bytes)" for p in pickles
        ]
        report.add(item, "\n".join(lines))
        if problem:
            if not args.json:
                print(f"error: {path}: {problem}", file=sys.stderr)
                print("hint: the file is not a pickle, or it is damaged", file=sys.stderr)
            status = max(status, EXIT_FINDING)
    return report.finish(status)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pickleguard",
        description="Allow only the pickles an explicit manifest lists.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = commands.add_parser("check", help="validate manifests")
    check.add_argument("manifests", nargs="+", metavar="MANIFEST")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(run=_check)
    hash_ = commands.add_parser("hash", help="print the identities pickleguard sees in files")
    hash_.add_argument("files", nargs="+", metavar="FILE")
    hash_.add_argument("--json", action="store_true", help="machine-readable output")
    hash_.set_defaults(run=_hash)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:
        return EXIT_USAGE if exit.code not in (0, None) else EXIT_OK
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("error: a command is required\nhint: pickleguard --help", file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.run(args))
    except BrokenPipeError:
        # A closed pipe (`| head`) is not an error; keep the interpreter quiet on exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
