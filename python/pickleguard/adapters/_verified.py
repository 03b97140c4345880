"""Verified copies of whole files, for the loaders the adapters wrap.

A path handed to ``torch.load`` or ``joblib.load`` is opened once and copied, with
large sequential reads and hashed on the way, into memory that nothing can change
afterwards (on Linux, a memfd sealed against writes, growing and shrinking; see
``src/verified.rs``). The loader then gets that copy and never the original path:
``/proc/self/fd/N`` of the sealed memory for a loader that maps or reopens its file
by name, or a file object over it. What the loader maps or reads is exactly what
was hashed, however the file at the path changes meanwhile.

Where there is no such memory, ``copy_of`` returns None and the adapters read the
file into a ``bytes`` object instead, as before: no mapping, and never an
unverified one.
"""

from __future__ import annotations

import io
import os

from .. import _core

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional


def copy_of(path: Any) -> Optional[_core.VerifiedFile]:
    """The verified copy of the file at ``path``, or None where this system has no
    sealed memory. Opening the file raises what the loader's own ``open`` would."""
    with open(path, "rb") as f:
        return _core.verified_copy(f.fileno())


def stream_over(copy: _core.VerifiedFile, name: Optional[str]) -> io.BufferedReader:
    """A binary file reading the verified copy from its start, named ``name`` (the
    original path, as the loader's messages name it)."""
    raw = io.FileIO(copy.path, "rb")
    if name is not None:
        raw.name = name  # a plain attribute of FileIO: what BufferedReader.name reports
    return io.BufferedReader(raw, buffer_size=1 << 20)


def imports_source(copy: _core.VerifiedFile) -> bytes:
    """The copy's bytes, for ``record`` to find the imports of its pickles (only
    while journaling: a second copy of the file)."""
    with open(copy.path, "rb") as f:
        return f.read()


def is_zip(copy: _core.VerifiedFile) -> bool:
    """Whether the copy starts like torch's zip format."""
    return bool(copy.head(4) == b"PK\x03\x04")


def source_name(path: Any) -> str:
    return os.fsdecode(os.fspath(path))
