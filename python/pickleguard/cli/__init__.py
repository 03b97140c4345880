"""The ``pickleguard`` command line: one module a command, each with its
``add_arguments(parser)`` and ``run(args)``; exit statuses in ``ExitStatus``.

Exit codes: 0 ok, 1 a finding (an invalid manifest, a pickle that cannot be
delimited, a risky import), 2 a usage or I/O error; ``record`` and ``run`` return
the command's own once it has started.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional, Sequence, TextIO

from .. import __version__
from . import check, index, inspect, pin, record, run
from . import hash as hash_
from ._status import ExitStatus

__all__ = ["ExitStatus", "main"]

# In the order `pickleguard --help` lists them.
_COMMANDS = {
    "check": check,
    "hash": hash_,
    "inspect": inspect,
    "record": record,
    "run": run,
    "pin": pin,
    "index": index,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pickleguard",
        description="Allow only the pickles an explicit manifest lists.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _COMMANDS.items():
        # The one-line summary is also the description its own --help starts with.
        description = module.HELP[0].upper() + module.HELP[1:] + "."
        command = commands.add_parser(name, help=module.HELP, description=description)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    stdout, sys.stdout = sys.stdout, _PipeOutput(sys.stdout)
    try:
        status = _main(argv)
        sys.stdout.flush()
        return status
    finally:
        sys.stdout = stdout


def _main(argv: Optional[Sequence[str]]) -> int:
    parser = _parser()
    try:
        args, extra = parser.parse_known_args(argv)
        # argparse cannot take `pin` FILEs after an option (`pin M --note x a.pt`); they
        # come back unrecognized. Anything else unrecognized is the usual usage error.
        if extra and args.command == "pin" and not any(a.startswith("-") for a in extra):
            args.files += extra
        elif extra:
            parser.error("unrecognized arguments: " + " ".join(extra))
    except SystemExit as exit:
        return ExitStatus.ERROR if exit.code not in (0, None) else ExitStatus.OK
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("error: a command is required\nhint: pickleguard --help", file=sys.stderr)
        return ExitStatus.ERROR
    return int(args.run(args))


class _PipeOutput:
    """Standard output that survives its reader going away (``| head -1``): the
    rest of the output is dropped and the command runs on, so that its exit status
    is still its own (a finding stays 1), and nothing is printed about the pipe."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._gone = False

    def write(self, text: str) -> int:
        if not self._gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._drop()
        return len(text)

    def flush(self) -> None:
        if not self._gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._drop()

    def _drop(self) -> None:
        self._gone = True
        # The interpreter flushes what is left in the buffer at exit; send it to
        # /dev/null, or that flush fails and prints "Exception ignored ...".
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        finally:
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
