"""``pickleguard index``: write the index of a manifest, which enforcement reads
instead of the TOML (see docs/manifest.md, "The index")."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .. import _core
from ..errors import ManifestError
from . import _writes
from ._common import Report, add_json_option, message_and_hint
from ._status import ExitStatus

HELP = "write a manifest's index, so that a large manifest costs little at start-up"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifests", nargs="+", metavar="MANIFEST", help="a manifest TOML file")
    parser.add_argument(
        "--remove", action="store_true", help="delete the index (enforcement reads the TOML)"
    )
    add_json_option(parser, "machine-readable output")


def run(args: argparse.Namespace) -> ExitStatus:
    report = Report(args.json)
    status = ExitStatus.OK
    for path in args.manifests:
        status = max(status, _one(path, args.remove, report))
    return report.finish(status)


def _one(path: str, remove: bool, report: Report) -> ExitStatus:
    try:
        with _writes.locked(_existing(path)) as target:
            index = _writes.index_path(target)
            if remove:
                try:
                    os.unlink(index)
                    removed = True
                except FileNotFoundError:
                    removed = False
                report.add(
                    {"manifest": path, "ok": True, "index": str(index), "removed": removed},
                    f"ok: removed {index}" if removed else f"ok: {path} has no index",
                )
                return ExitStatus.OK
            rules = _writes.write_index(target)
            state = _core.manifest_index_status(str(target))
    except ManifestError as e:
        message, hint = message_and_hint(e)
        report.error({"manifest": path, "ok": False, "error": message, "hint": hint}, message, hint)
        return ExitStatus.FINDING
    except _writes.LockTimeout as e:
        report.error(
            {"manifest": path, "ok": False, "error": str(e)},
            f"could not lock {path}: {e}",
            "another `pickleguard pin`, `record` or `index` is writing it, or is stuck; "
            f"try again once it is done (the lock file is {e.lock})",
        )
        return ExitStatus.ERROR
    except OSError as e:
        reason = e.strerror or str(e)
        where = e.filename or path
        report.error(
            {"manifest": path, "ok": False, "error": f"{where}: {reason}"},
            f"could not index {path}: {where}: {reason}",
            "the index is written beside the manifest's real path: run this as the "
            "manifest's owner, where its directory takes new files",
        )
        return ExitStatus.ERROR
    item = {"manifest": path, "ok": state == "current", "index": str(index), "rules": rules}
    if state != "current":
        # Written, but not what enforcement would use: say why rather than claim it.
        item["status"] = state
        report.error(
            item,
            f"wrote {index}, but enforcement would not use it: it is {state}",
            "an index must be owned by the manifest's owner and be writable by no one "
            "the manifest is not; run `pickleguard index` as the manifest's owner"
            if state == "untrusted"
            else "the manifest changed while it was indexed; run `pickleguard index` again",
        )
        return ExitStatus.FINDING
    report.add(item, f"ok: wrote {index} ({rules} {'rule' if rules == 1 else 'rules'})")
    return ExitStatus.OK


def _existing(path: str) -> Path:
    """The manifest's path, which must name a readable file (an index of nothing
    is an error, not an empty index)."""
    with open(path, "rb"):
        pass
    return Path(path)
