"""``pickleguard record``: run a trusted command with every load allowed and
journaled, then merge what it loaded into a manifest."""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from .. import _core
from ..errors import ManifestError
from . import _manifest, _writes
from ._child import add_command_line, child_env, command_line, inherited_layers
from ._common import add_identity_option, add_json_option, plural, print_error, print_json
from ._manifest import Journal, Merge, shown
from ._status import ExitStatus

HELP = "run a trusted command, allow and journal every load, freeze a manifest"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        default="pickleguard.toml",
        metavar="MANIFEST",
        help="the manifest to create or add to (default: pickleguard.toml)",
    )
    parser.add_argument(
        "--journal", metavar="DIR", help="keep the raw journal in DIR (default: removed)"
    )
    parser.add_argument(
        "--from-journal",
        metavar="DIR",
        help="run no command: add what a journal kept in DIR holds to the manifest",
    )
    add_identity_option(
        parser, "hash new entries with SHA-256 (default) or BLAKE3 (faster on large payloads)"
    )
    add_json_option(parser, "machine-readable summary")
    add_command_line(parser, "the trusted command to run and record, after --")


def run(args: argparse.Namespace) -> int:
    """The command's own exit status, once the manifest is written; an ExitStatus
    for an error of record's own."""
    if args.from_journal is not None:
        return _from_journal(args)
    command = command_line(args)
    if command is None:
        return ExitStatus.ERROR
    output = Path(args.output)
    # Said now, not after a long run: the journal would be all that is left of it.
    try:
        _writes.check_writable(output)
    except OSError as e:
        print_error(
            f"cannot write the manifest {shown(args.output)}: {e.strerror or e}",
            "choose a manifest in a directory you can write with -o; the command was not run",
        )
        return ExitStatus.ERROR
    # Checked now, and read again under the lock when the run is merged into it.
    checked = _existing_manifest(output)
    if isinstance(checked, ExitStatus):
        return checked
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
    result = _merge_journal(output, journal_dir)
    if isinstance(result, ExitStatus):
        return result
    if not keep:
        shutil.rmtree(journal_dir, ignore_errors=True)
    _report(args.json, output, returncode, *result)
    return _command_status(returncode)


def _from_journal(args: argparse.Namespace) -> int:
    """``record --from-journal DIR``: the merge of a run recorded earlier, whose
    manifest could not be written then. The journal is left as it is."""
    if [a for a in args.command_line if a != "--"]:
        print_error(
            "--from-journal runs no command",
            f"pickleguard record --from-journal DIR -o {shlex.quote(args.output)}",
        )
        return ExitStatus.ERROR
    journal_dir = Path(args.from_journal)
    if not journal_dir.is_dir() or not any(journal_dir.glob("journal-*.jsonl")):
        print_error(
            f"{shown(args.from_journal)} holds no journal (journal-*.jsonl files)",
            "give the directory that `record` named when it kept its journal",
        )
        return ExitStatus.ERROR
    result = _merge_journal(Path(args.output), journal_dir)
    if isinstance(result, ExitStatus):
        return result
    _report(args.json, Path(args.output), None, *result)
    return ExitStatus.OK


def _merge_journal(output: Path, journal_dir: Path) -> Union[Tuple[Journal, Merge], ExitStatus]:
    """Merge the journal into the manifest, with the manifest locked and read again
    under the lock, so that what another writer added meanwhile is kept. On
    failure the journal is kept, and the command that merges it later is shown."""
    journal = _manifest.read_journals(journal_dir)
    for problem in journal.problems:
        print(f"warning: {problem}", file=sys.stderr)
    recover = (
        f"the journal is kept in {shown(str(journal_dir))}; add it once the manifest can be "
        f"written: pickleguard record --from-journal {shlex.quote(str(journal_dir))} "
        f"-o {shlex.quote(str(output))}"
    )
    try:
        with _writes.locked(output) as target:
            existing = _existing_manifest(target)
            if isinstance(existing, ExitStatus):
                print(f"hint: {recover}", file=sys.stderr)
                return existing
            merged = _manifest.merge(existing, str(target), journal)
            _writes.replace(target, merged.text)
    except _writes.LockTimeout as e:
        print_error(f"could not lock {shown(str(output))}: {e}", recover)
        return ExitStatus.ERROR
    except (OSError, ManifestError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        print_error(f"could not write {shown(str(output))}: {reason}", recover)
        return ExitStatus.ERROR
    return journal, merged


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


def _summary(
    output: Path, returncode: Optional[int], journal: Journal, merged: Merge
) -> Dict[str, Any]:
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


def _report(
    as_json: bool, output: Path, returncode: Optional[int], journal: Journal, merged: Merge
) -> None:
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
