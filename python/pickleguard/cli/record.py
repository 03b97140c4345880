"""``pickleguard record``: run a trusted command with every load allowed and
journaled, then merge what it loaded into a manifest."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from .. import _core
from ..errors import ManifestError
from . import _manifest
from ._child import add_command_line, child_env, command_line, inherited_layers
from ._common import add_identity_option, add_json_option, plural, print_error, print_json
from ._manifest import Journal, Merge, shown
from ._status import ExitStatus

HELP = "run a trusted command, allow and journal every load, freeze a manifest"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", default="pickleguard.toml", metavar="MANIFEST")
    parser.add_argument("--journal", metavar="DIR", help="keep the raw journal in DIR")
    add_identity_option(
        parser, "hash new entries with SHA-256 (default) or BLAKE3 (faster on large payloads)"
    )
    add_json_option(parser, "machine-readable summary")
    add_command_line(parser)


def run(args: argparse.Namespace) -> int:
    """The command's own exit status, once the manifest is written; an ExitStatus
    for an error of record's own."""
    command = command_line(args)
    if command is None:
        return ExitStatus.ERROR
    output = Path(args.output)
    existing = _existing_manifest(output)
    if isinstance(existing, ExitStatus):
        return existing
    if inherited_layers():
        print_error(
            "record allows every load, and this environment enforces a policy",
            "record in a trusted setting without PICKLEGUARD_ variables",
        )
        return ExitStatus.ERROR
    keep = args.journal is not None
    journal_dir = Path(args.journal) if keep else Path(tempfile.mkdtemp(prefix="pickleguard-"))
    journal_dir.mkdir(parents=True, exist_ok=True)
    returncode = _run_recorded(command, journal_dir, args.identity)
    if returncode is None:
        if not keep:
            shutil.rmtree(journal_dir, ignore_errors=True)
        return ExitStatus.ERROR
    journal = _manifest.read_journals(journal_dir)
    for problem in journal.problems:
        print(f"warning: {problem}", file=sys.stderr)
    try:
        merged = _manifest.merge(existing, str(output), journal)
        _manifest.write_atomically(output, merged.text)
    except (OSError, ManifestError) as e:
        print_error(f"could not write {output}: {e}", f"the journal is kept in {journal_dir}")
        return ExitStatus.ERROR
    if not keep:
        shutil.rmtree(journal_dir, ignore_errors=True)
    _report(args.json, output, returncode, journal, merged)
    return _command_status(returncode)


def _existing_manifest(output: Path) -> Union[Optional[str], ExitStatus]:
    """The text of the manifest to merge into (None if there is none yet), or the
    status to exit with if it cannot be read or does not parse."""
    if not output.exists():
        return None
    try:
        text = output.read_text(encoding="utf-8")
        _core.check_manifest(str(output))
    except (OSError, UnicodeDecodeError, ManifestError) as e:
        print_error(
            f"cannot merge into {output}: {e}", "fix the manifest or choose another with -o"
        )
        return ExitStatus.FINDING if isinstance(e, ManifestError) else ExitStatus.ERROR
    return text


def _run_recorded(command: List[str], journal_dir: Path, identity: str) -> Optional[int]:
    """Run the command with every load journaled into ``journal_dir``: its exit
    status (130 if interrupted), or None if it could not be started."""
    env = child_env(
        PICKLEGUARD_RECORD=str(journal_dir.resolve()),
        PICKLEGUARD_RECORD_IDENTITY=identity,
    )
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        print_error(f"could not run {command[0]}: {e.strerror}", "check the command after --")
        return None


def _summary(output: Path, returncode: int, journal: Journal, merged: Merge) -> Dict[str, Any]:
    return {
        "manifest": str(output),
        "command_exit": returncode,
        "loads": journal.loads,
        "processes": len(journal.processes),
        "added": [
            {
                "kind": r.kind,
                "identity": r.identity,
                "sha256": r.sha256,
                "caller": r.caller,
                "source": r.source,
                "loader": r.loader,
            }
            for r in merged.added
        ],
        "channels_added": merged.channels_added,
        "risky": [
            {"identity": r.identity, "caller": r.caller, "imports": r.risky}
            for r in merged.added
            if r.risky
        ],
    }


def _report(as_json: bool, output: Path, returncode: int, journal: Journal, merged: Merge) -> None:
    if as_json:
        print_json(_summary(output, returncode, journal, merged))
        return
    print(
        f"recorded {plural(journal.loads, 'load')} in "
        f"{plural(len(journal.processes), 'process')}: "
        f"{plural(len(merged.added), 'new entry')}, "
        f"{plural(sum(map(len, merged.channels_added.values())), 'new channel caller')}, "
        f"written to {output}"
    )
    risky = [r for r in merged.added if r.risky]
    for r in risky:
        print(
            f"warning: {r.identity[:23]}... (loaded by {shown(r.caller)}) imports "
            f"{', '.join(map(shown, r.risky))}",
            file=sys.stderr,
        )
    if risky:
        print("hint: review the entries marked RISKY before you trust them", file=sys.stderr)


def _command_status(returncode: int) -> int:
    """The command's exit status as a shell reports it, with a warning if it failed:
    the manifest holds only what it loaded until then."""
    if returncode < 0:  # killed by a signal
        returncode = 128 - returncode
    if returncode != 0:
        print(
            f"warning: the command exited with {returncode}; "
            "the manifest holds what it loaded until then",
            file=sys.stderr,
        )
    return returncode
