"""The exit status of every ``pickleguard`` command."""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """What a command's exit status means (docs/cli.md). With several arguments, a
    command exits with the worst status seen: ``max()`` of the statuses."""

    OK = 0
    FINDING = 1  # an invalid manifest, a file with no complete pickle, a RISKY import
    ERROR = 2  # a usage error, or a file that cannot be read or written
