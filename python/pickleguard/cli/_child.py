"""What ``record`` and ``run`` share: the command after ``--``, and the environment
it starts in."""

from __future__ import annotations

import argparse
import json
import os
from typing import Dict, List, Optional

from ._common import print_error


def add_command_line(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("command_line", nargs=argparse.REMAINDER, metavar="-- CMD ...", help=help)


def command_line(args: argparse.Namespace) -> Optional[List[str]]:
    """The command to start, or None (and an error printed) if there is none."""
    command = list(args.command_line)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print_error("no command to run", f"pickleguard {args.command} [options] -- python app.py")
        return None
    return command


def inherited_layers() -> List[List[Optional[str]]]:
    """The layers this process runs under, as PICKLEGUARD_LAYERS entries, so that a
    command started from here keeps them: layers only add up down a process tree."""
    layers: List[List[Optional[str]]] = []
    manifest = os.environ.get("PICKLEGUARD_MANIFEST")
    if manifest is not None or "PICKLEGUARD_MODE" in os.environ:
        mode = os.environ.get("PICKLEGUARD_MODE") or "enforce"
        layers.append([mode, os.path.abspath(manifest) if manifest else None])
    try:
        layers += json.loads(os.environ.get("PICKLEGUARD_LAYERS") or "[]")
    except ValueError:
        pass
    return layers


def child_env(**settings: Optional[str]) -> Dict[str, str]:
    """This environment with its PICKLEGUARD_ variables replaced by ``settings``, and
    the layers it ran under carried over in PICKLEGUARD_LAYERS."""
    inherited = inherited_layers()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICKLEGUARD_")}
    env.update({k: v for k, v in settings.items() if v is not None})
    if inherited:
        env["PICKLEGUARD_LAYERS"] = json.dumps(inherited)
    return env
