"""``pickleguard run``: run a command with a manifest enforced in every Python
process it starts."""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from .. import _core
from ..errors import ManifestError
from ._child import add_command_line, child_env, command_line
from ._common import message_and_hint, print_error
from ._manifest import shown
from ._status import ExitStatus

HELP = "run a command with the manifest enforced"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--manifest", metavar="MANIFEST", help="default: $PICKLEGUARD_MANIFEST or pickleguard.toml"
    )
    parser.add_argument(
        "--mode",
        choices=("enforce", "warn"),
        default="enforce",
        help="enforce (default) refuses unlisted loads; warn allows them and reports each",
    )
    parser.add_argument(
        "--log", metavar="FILE", help="append warn reports and denials here as JSON lines"
    )
    add_command_line(parser, "the command to run, after --")


def run(args: argparse.Namespace) -> ExitStatus:
    """Replaces this process with the command (so its exit status is the command's);
    returns only for an error of its own."""
    command = command_line(args)
    if command is None:
        return ExitStatus.ERROR
    manifest = args.manifest or os.environ.get("PICKLEGUARD_MANIFEST") or "pickleguard.toml"
    try:
        with open(manifest, "rb"):
            pass
    except OSError as e:
        print_error(
            f"could not read the manifest {manifest}: {e.strerror}",
            "pass --manifest, or record one with `pickleguard record`",
        )
        return ExitStatus.ERROR
    try:
        _core.check_manifest(manifest)
    except ManifestError as e:
        print_error(*message_and_hint(e))
        return ExitStatus.FINDING
    if args.log is not None and not _log_writable(args.log):
        return ExitStatus.ERROR
    env = child_env(
        PICKLEGUARD_MANIFEST=os.path.abspath(manifest),
        PICKLEGUARD_MODE=args.mode,
        PICKLEGUARD_LOG=os.path.abspath(args.log)
        if args.log
        else os.environ.get("PICKLEGUARD_LOG"),
    )
    executable = shutil.which(command[0], path=env.get("PATH"))
    if executable is None:
        print_error(f"command not found: {command[0]}", "check the command after --")
        return ExitStatus.ERROR
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(executable, command, env)
    return ExitStatus.ERROR  # not reached


def _log_writable(path: str) -> bool:
    """Whether the audit log can be appended to (it is created if missing), said
    before the command runs rather than found out by its first denial."""
    try:
        with open(path, "ab"):
            pass
    except OSError as e:
        print_error(
            f"cannot write the audit log {shown(path)}: {e.strerror or e}",
            "give --log a file in a directory you can write; the command was not run",
        )
        return False
    return True
