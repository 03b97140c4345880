"""``pickleguard inspect``: the globals each pickle in a file would import, and
their class (risky, review), found without loading it. ``--format sarif`` writes
the findings as a SARIF 2.1.0 log for code-scanning dashboards."""

from __future__ import annotations

import argparse
import io
import struct
import zipfile
from typing import Any, Dict, List, Optional
from urllib.parse import quote

from .. import _core
from .._pickles import Found, walk
from ._common import Report, print_error, print_json, readable
from ._status import ExitStatus

HELP = "list the globals a pickle would import, without loading it"

_MARKS = {"risky": "RISKY ", "review": "REVIEW "}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files", nargs="+", metavar="FILE", help="a pickle, a torch checkpoint or another file"
    )
    parser.add_argument(
        "--format",
        choices=("text", "json", "sarif"),
        default=None,
        help="output format (default text); sarif: a SARIF 2.1.0 log of the RISKY "
        "imports and unreadable files",
    )
    parser.add_argument("--json", action="store_true", help="the same as --format json")


def run(args: argparse.Namespace) -> ExitStatus:
    if args.json and args.format not in (None, "json"):
        print_error(f"--json and --format {args.format} contradict each other", "give one of them")
        return ExitStatus.ERROR
    form = "json" if args.json else (args.format or "text")
    report = Report(form != "text")
    status = ExitStatus.OK
    for path, data in readable(args.files, report):
        found = walk(data)
        for p in found.pickles:
            status = max(status, _inspect_pickle(report, path, p, data))
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
    if form == "sarif":
        status = max(status, report.floor)
        print_json(sarif_log(report.items))
        return status
    for item in report.items:
        item.pop("_file_offset", None)
    return report.finish(status)


def _inspect_pickle(report: Report, path: str, p: Found, data: bytes) -> ExitStatus:
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
    if risky:
        # Where the pickle's bytes start in the file itself, for SARIF's region
        # (a zip member's offset is in its own data); None when the member is
        # compressed, so no byte of the file is its start.
        item["_file_offset"] = _file_offset(data, p)
    lines = [f"{label} pickle at {p.offset}{role} (sha256:{p.sha256}):"]
    lines += [f"  {_MARKS.get(c, '')}{g}" for g, c in classes] or ["  (no imports)"]
    report.add(item, "\n".join(lines))
    return ExitStatus.FINDING if risky else ExitStatus.OK


def _file_offset(data: bytes, p: Found) -> Optional[int]:
    if not p.member:
        return p.offset
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            info = archive.getinfo(p.member)
    except (zipfile.BadZipFile, KeyError, OSError):
        return None
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    header = data[info.header_offset : info.header_offset + 30]
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        return None
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_length + extra_length + p.offset


SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_RULES: List[Dict[str, Any]] = [
    {
        "id": "PG001",
        "name": "RiskyPickleImport",
        "shortDescription": {"text": "A pickle imports a global known to run code"},
        "fullDescription": {
            "text": "Loading this pickle imports a RISKY global (one known to run code, "
            "start processes, touch files or the network, or import by name). Found "
            "without loading it."
        },
        "help": {
            "text": "Review the pickle with `pickleguard inspect`. Replace it with a "
            "format that carries no code (safetensors for weights), or, if you trust "
            "it, pin it in a reviewed manifest (`pickleguard pin --allow-risky`)."
        },
        "defaultConfiguration": {"level": "error"},
    },
    {
        "id": "PG002",
        "name": "UnreadablePickle",
        "shortDescription": {"text": "A file holds no complete pickle where one was expected"},
        "fullDescription": {
            "text": "The file (or archive member) could not be read or scanned to its "
            "end: it is damaged, truncated or not a pickle."
        },
        "help": {"text": "Check the file; a damaged pickle cannot be pinned or loaded."},
        "defaultConfiguration": {"level": "error"},
    },
]


def _location(path: str, offset: Optional[int], size: Optional[int], member: Any) -> Dict[str, Any]:
    physical: Dict[str, Any] = {"artifactLocation": {"uri": quote(path.replace("\\", "/"))}}
    if offset is not None:
        region: Dict[str, Any] = {"byteOffset": offset}
        if size is not None:
            region["byteLength"] = size
        physical["region"] = region
    location: Dict[str, Any] = {"physicalLocation": physical}
    if member:
        location["logicalLocations"] = [{"name": member, "kind": "member"}]
    return location


def sarif_log(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    """A SARIF 2.1.0 log of inspect's items: one result per RISKY import (located at
    its pickle's bytes in the file), one per file that could not be read or scanned."""
    results = []
    for item in items:
        path = item["file"]
        if "error" in item:
            results.append(
                {
                    "ruleId": "PG002",
                    "ruleIndex": 1,
                    "level": "error",
                    "message": {"text": f"{path}: {item['error']}"},
                    "locations": [_location(path, None, None, item.get("member"))],
                }
            )
            continue
        for name in item.get("risky", []):
            where = f"{path}:{item['member']}" if item.get("member") else path
            properties: Dict[str, Any] = {"global": name, "sha256": item["sha256"]}
            if item.get("member"):
                properties.update(member=item["member"], offsetInMember=item["offset"])
            location = _location(path, item.get("_file_offset"), item["size"], item.get("member"))
            results.append(
                {
                    "ruleId": "PG001",
                    "ruleIndex": 0,
                    "level": "error",
                    "message": {
                        "text": f"{where}: the pickle at byte {item['offset']} imports "
                        f"{name}, which is RISKY"
                    },
                    "locations": [location],
                    "partialFingerprints": {"pickleSha256AndGlobal/v1": f"{item['sha256']}:{name}"},
                    "properties": properties,
                }
            )
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "pickleguard",
                        "version": _core.VERSION,
                        "rules": _RULES,
                    }
                },
                "columnKind": "unicodeCodePoints",
                "results": results,
            }
        ],
    }
