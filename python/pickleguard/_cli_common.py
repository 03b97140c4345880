"""What the command line's commands share: exit codes, and the pickles in a file."""

from __future__ import annotations

import zipfile
from typing import Any, Dict, Iterator, List, Optional, Tuple

from . import _core

EXIT_OK = 0
EXIT_FINDING = 1
EXIT_USAGE = 2


def plural(count: int, word: str) -> str:
    if count == 1:
        return f"{count} {word}"
    if word.endswith("y"):
        return f"{count} {word[:-1]}ies"
    return f"{count} {word}" + ("es" if word.endswith("s") else "s")


def pickles_in(
    data: bytes, algorithm: str = "sha256"
) -> Tuple[List[Dict[str, Any]], Optional[str]]:
    """Each pickle of a file of concatenated pickles: offset, size, digest (keyed by
    the algorithm's name), and the reason scanning stopped early, if it did."""
    pickles: List[Dict[str, Any]] = []
    offset = 0
    if not data:
        return pickles, "the file is empty"
    while offset < len(data):
        try:
            length, _ = _core.delimit(data, offset)
        except Exception as e:  # the reader's UnpicklingError, EOFError, OverflowError
            return pickles, f"no complete pickle at offset {offset}: {e}"
        digest = _core.hexdigest(memoryview(data)[offset : offset + length], algorithm)
        pickles.append({"offset": offset, "size": length, algorithm: digest})
        offset += length
    return pickles, None


def is_zip(data: bytes) -> bool:
    # A zip archive (a torch checkpoint) starts with a local file header; a pickle
    # that merely contains an end-of-archive record does not.
    return data[:4] == b"PK\x03\x04"


def zip_pickles(path: str) -> Iterator[Tuple[str, bytes]]:
    """The pickles inside a zip archive, such as a torch checkpoint's data.pkl."""
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.endswith(".pkl"):
                yield name, archive.read(name)


def pickle_members(path: str, data: bytes) -> Tuple[List[Tuple[str, bytes]], Optional[str]]:
    """(name, bytes) of each pickle to look at: the zip's .pkl members, or the file."""
    if not is_zip(data):
        return [("", data)], None
    try:
        return list(zip_pickles(path)), None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return [], f"damaged zip archive: {e}"
