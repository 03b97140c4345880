"""``pickleguard check``: validate manifests, and warn about channel rules that
admit more than the rules ``record`` writes."""

from __future__ import annotations

import argparse
import sys
from typing import List

from .. import _core
from ..errors import ManifestError
from ._common import Report, add_json_option, message_and_hint
from ._manifest import known_rules
from ._status import ExitStatus

HELP = "validate manifests"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "manifests", nargs="+", metavar="MANIFEST", help="a manifest TOML file to parse"
    )
    add_json_option(parser, "machine-readable output")


def run(args: argparse.Namespace) -> ExitStatus:
    report = Report(args.json)
    status = ExitStatus.OK
    for path in args.manifests:
        try:
            with open(path, "rb") as f:
                f.read()
        except OSError as e:
            reason = e.strerror or str(e)
            report.error(
                {"manifest": path, "ok": False, "error": reason},
                f"could not read {path}: {reason}",
                "give the path of a readable manifest TOML file",
            )
            status = max(status, ExitStatus.ERROR)
            continue
        try:
            entries = _core.check_manifest(path)
        except ManifestError as e:
            message, hint = message_and_hint(e)
            report.error(
                {"manifest": path, "ok": False, "error": message, "hint": hint}, message, hint
            )
            status = max(status, ExitStatus.FINDING)
        else:
            warnings = _unnarrowed_channels(path)
            index = _core.manifest_index_status(path)
            if index in _INDEX_WARNINGS:
                warnings.append(f"its index is {index}: {_INDEX_WARNINGS[index]}")
            report.add(
                {
                    "manifest": path,
                    "ok": True,
                    "rules": entries,
                    "index": index,
                    "warnings": warnings,
                },
                f"ok: {path} ({entries} {'rule' if entries == 1 else 'rules'}"
                + ("; index current" if index == "current" else "")
                + ")",
            )
            if not args.json:
                for warning in warnings:
                    print(f"warning: {path}: {warning}", file=sys.stderr)
    return report.finish(status)


# What `check` says of an index that enforcement would not use (it reads the
# TOML then: slower, never less strict).
_INDEX_WARNINGS = {
    "stale": "the manifest changed since it was indexed, so enforcement reads the "
    "TOML instead; rewrite it with `pickleguard index`, or delete it",
    "untrusted": "it is owned by another user than the manifest, or writable by "
    "someone the manifest is not, so enforcement ignores it; rewrite it with "
    "`pickleguard index` as the manifest's owner",
    "damaged": "it is not an index this version of pickleguard reads, so "
    "enforcement ignores it; rewrite it with `pickleguard index`",
}


def _unnarrowed_channels(path: str) -> List[str]:
    """Channel rules of a known transport without `called_from` that admit callers
    which the rule record writes admits only when the transport's own code calls
    them (written by a record from before that, or by hand): they admit every call
    of those callers, a task's or the program's own included."""
    warnings = []
    _, channels = _core.manifest_summary(path)
    for name, callers, called_from in channels:
        if called_from is not None:
            continue
        for known, known_from in known_rules(name):
            wide = [c for c in known if any(_core.pattern_matches(p, c) for p in callers)]
            if not known_from or not wide:
                continue
            listed = ", ".join(f'"{p}"' for p in known_from)
            if set(callers) <= set(known):
                warnings.append(
                    f"the {name!r} channel rule has no called_from, so it also admits a "
                    f"task's own calls of its callers; add called_from = [{listed}] as "
                    "record writes it"
                )
            else:
                example = (
                    " (its recv() on any connection: a Listener's peer, a file)"
                    if name == "multiprocessing"
                    else ""
                )
                warnings.append(
                    f"the {name!r} channel rule has no called_from, so it admits "
                    f"{', '.join(wide)} whoever calls them, the program's own code "
                    f"included{example}; move them to a [[channel]] rule of their own "
                    f"with called_from = [{listed}] as record now writes it, or record "
                    "into a fresh manifest"
                )
    return warnings
