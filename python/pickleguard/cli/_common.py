"""What the commands share: their output (humans' lines, or one JSON document), and
reading the files they are given."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from ._status import ExitStatus


class Report:
    """Collects results; prints humans' lines or one JSON document at the end."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.items: List[Dict[str, Any]] = []
        # Raised by callers that hit an I/O error while producing the report.
        self.floor = ExitStatus.OK

    def add(self, item: Dict[str, Any], human: str) -> None:
        self.items.append(item)
        if not self.as_json:
            print(human)

    def error(self, item: Dict[str, Any], message: str, hint: str) -> None:
        self.items.append(item)
        if not self.as_json:
            print_error(message, hint)

    def finish(self, status: ExitStatus) -> ExitStatus:
        status = max(status, self.floor)
        if self.as_json:
            print_json({"status": int(status), "results": self.items})
        return status


def add_json_option(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--json", action="store_true", help=help)


def add_identity_option(
    parser: argparse.ArgumentParser, help: str, default: Optional[str] = "sha256"
) -> None:
    parser.add_argument("--identity", choices=("sha256", "blake3"), default=default, help=help)


def print_error(message: str, hint: str) -> None:
    """A human-readable error: the problem, then what to do about it."""
    print(f"error: {message}", file=sys.stderr)
    print(f"hint: {hint}", file=sys.stderr)


def print_json(document: Dict[str, Any]) -> None:
    json.dump(document, sys.stdout, indent=2)
    sys.stdout.write("\n")


def message_and_hint(error: Exception) -> Tuple[str, str]:
    """The two parts of an error the core raises as "message\\nhint: hint"."""
    message, _, hint = str(error).partition("\nhint: ")
    return message, hint


def plural(count: int, word: str) -> str:
    if count == 1:
        return f"{count} {word}"
    if word.endswith("y"):
        return f"{count} {word[:-1]}ies"
    return f"{count} {word}" + ("es" if word.endswith("s") else "s")


def _read(path: str, report: Report) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        report.floor = ExitStatus.ERROR
        report.error(
            {"file": path, "error": str(e)},
            f"could not read {path}: {e.strerror}",
            "check the path",
        )
        return None


def readable(paths: Sequence[str], report: Report) -> Iterator[Tuple[str, bytes]]:
    """Each file's path and contents; an unreadable one is reported and skipped."""
    for path in paths:
        data = _read(path, report)
        if data is not None:
            yield path, data
