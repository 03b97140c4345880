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
from typing import Optional, Sequence

from . import check, inspect, pin, record, run
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
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pickleguard",
        description="Allow only the pickles an explicit manifest lists.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _COMMANDS.items():
        command = commands.add_parser(name, help=module.HELP)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
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
    try:
        return int(args.run(args))
    except BrokenPipeError:
        # A closed pipe (`| head`) is not an error; keep the interpreter quiet on exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitStatus.OK
