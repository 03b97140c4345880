"""Finding the pickles in a file without running them: the members of a zip archive
(a torch checkpoint), and the pickles of a file of concatenated pickles.

The command line (``hash``, ``inspect``, ``pin --pickle``) and the adapters (the
imports ``record`` notes for a checkpoint) walk files the same way, here. Imported
by the adapters at interpreter start: nothing costly at module level.
"""

from __future__ import annotations

from . import _core

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at interpreter start
    from typing import Any, Dict, List, Optional, Tuple


def is_zip(data: bytes) -> bool:
    # A zip archive (a torch checkpoint) starts with a local file header; a pickle
    # that merely contains an end-of-archive record does not.
    return data[:4] == b"PK\x03\x04"


def zip_pickles(data: bytes) -> List[Tuple[str, bytes]]:
    """The name and bytes of each pickle inside a zip archive, such as a torch
    checkpoint's data.pkl. Raises zipfile's errors for a damaged archive."""
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(name, archive.read(name)) for name in archive.namelist() if name.endswith(".pkl")]


def pickle_members(data: bytes) -> Tuple[List[Tuple[str, bytes]], Optional[str]]:
    """(name, bytes) of each pickle to look at: the zip's .pkl members, or the file
    (named ""); and why a damaged zip archive could not be read."""
    if not is_zip(data):
        return [("", data)], None
    import zipfile

    try:
        return zip_pickles(data), None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return [], f"damaged zip archive: {e}"


def delimited(data: bytes) -> Tuple[List[Tuple[int, int]], Optional[str]]:
    """The (offset, length) of each pickle of a file of concatenated pickles, from
    the start, and why the walk stopped before the end, if it did."""
    spans: List[Tuple[int, int]] = []
    offset = 0
    while offset < len(data):
        try:
            length, _ = _core.delimit(data, offset)
        except Exception as e:  # the reader's UnpicklingError, EOFError, OverflowError
            return spans, f"no complete pickle at offset {offset}: {e}"
        spans.append((offset, length))
        offset += length
    return spans, None


def pickles_in(
    data: bytes, algorithm: str = "sha256"
) -> Tuple[List[Dict[str, Any]], Optional[str]]:
    """Each pickle of a file of concatenated pickles: offset, size, digest (keyed by
    the algorithm's name), and the reason scanning stopped early, if it did."""
    if not data:
        return [], "the file is empty"
    spans, problem = delimited(data)
    view = memoryview(data)
    pickles = [
        {
            "offset": offset,
            "size": length,
            algorithm: _core.hexdigest(view[offset : offset + length], algorithm),
        }
        for offset, length in spans
    ]
    return pickles, problem
