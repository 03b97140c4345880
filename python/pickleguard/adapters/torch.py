"""The torch adapter: ``torch.load`` pins the whole checkpoint file, and torch's
``weights_only`` unpickler gets a gate of its own.

Never imports torch: ``patch`` is given the module once it has been imported.
"""

from __future__ import annotations

import io
import os
import sys

from .. import _core
from . import _verified
from ._artifact import (
    _artifact_imports,
    is_path,
    load_artifact,
    load_copy_mapped,
    load_mapped,
    refuse_writing_map,
    replace_load,
    unwrapped,
)

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at interpreter start
    from typing import Any


def patch(torch: Any) -> None:
    serialization = unwrapped("torch.serialization")
    if serialization is None:
        return
    original = serialization.load

    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        if not is_path(f):
            # (torch itself refuses mmap=True for a file object.)
            if in_memory(f):
                return load_buffer(f, lambda verified: original(verified, *args, **kwargs))
            return load_artifact("torch.load", f, lambda file: original(file, *args, **kwargs))
        if os.fsdecode(os.fspath(f)).endswith(".safetensors"):
            return original(f, *args, **kwargs)  # torch hands it to safetensors: no pickle
        mapped = _maps(kwargs.get("mmap"))
        if _maps_shared() and (mapped or not _core.enforcing()):
            if _core.enforcing():
                refuse_writing_map(
                    "torch.load",
                    "mmap=True and the default mmap options set to mmap.MAP_SHARED",
                    "tensors",
                    "keep the default mmap options (mmap.MAP_PRIVATE): the tensors are "
                    "mapped copy-on-write from the verified copy",
                )
            # Not enforcing: mapped as asked, writes going to the file.
            return load_mapped(
                "torch.load", "mmap=True", "", f, lambda: original(f, *args, **kwargs)
            )
        copy = _verified.copy_of(f)
        if copy is not None and _verified.is_zip(copy):
            # Mapped (privately) from the sealed copy, asked to or not: its tensors
            # then live in the verified copy's memory, not in a second copy of it.
            options = {**kwargs, "mmap": True}
            return load_copy_mapped(
                "torch.load", f, copy, lambda path: original(path, *args, **options)
            )
        if copy is None and mapped:
            if not _core.enforcing():
                return load_mapped(
                    "torch.load", "mmap=True", "", f, lambda: original(f, *args, **kwargs)
                )
            # No sealed memory to map: the verified bytes, read into memory.
            kwargs = {**kwargs, "mmap": False}
        # The legacy format (torch refuses to map it), or no sealed memory.
        return load_artifact(
            "torch.load", f, lambda verified: original(verified, *args, **kwargs), copy
        )

    replace_load(original, load, serialization, torch)
    _gate_weights_only_unpickler()


def in_memory(f: Any) -> bool:
    """Whether torch.load reads a buffer the program holds in memory (a plain
    ``io.BytesIO``: torch.distributed's objects decoded with ``weights_only=True``)
    rather than a file. A subclass may read from anywhere, so it is a file."""
    return type(f) is io.BytesIO


def load_buffer(f: io.BytesIO, call: Any) -> Any:
    """torch.load of an in-memory buffer: the rest of the buffer is admitted as an
    artifact read from memory, which an ``[[artifact]]`` entry with its hash
    covers, and so does a ``[[channel]]`` rule for the code that called
    torch.load (an engine decoding its own message), as for a pickle."""
    start = f.tell()
    data = f.read()
    verified = io.BytesIO(data)
    scope = _core.verify_artifact(
        data,
        loader="torch.load",
        imports=_artifact_imports(data),
        stream=verified,
        in_memory=True,
    )
    with scope:
        try:
            return call(verified)
        finally:
            f.seek(start + verified.tell())


def _maps(mmap: Any) -> bool:
    """Whether torch.load will map the file: `mmap=True`, or `mmap=None` with torch's
    own default (`torch.utils.serialization.config.load.mmap`) set."""
    if mmap is not None:
        return bool(mmap)
    config = sys.modules.get("torch.utils.serialization.config")
    return bool(getattr(getattr(config, "load", None), "mmap", False))


def _maps_shared() -> bool:
    """Whether torch's mmap=True would map the file shared and writable
    (``torch.serialization.set_default_mmap_options(mmap.MAP_SHARED)``)."""
    import mmap

    serialization: Any = sys.modules.get("torch.serialization")
    options = getattr(serialization, "get_default_mmap_options", None)
    return options is not None and options() == getattr(mmap, "MAP_SHARED", None)


def _gate_weights_only_unpickler() -> None:
    """torch's ``weights_only`` unpickler is pure Python and calls neither ``pickle``
    nor the ``pickle.find_class`` audit event: outside an admitted artifact, each of
    its loads is judged like any pickle."""
    module = sys.modules.get("torch._weights_only_unpickler")
    unpickler = getattr(module, "Unpickler", None)
    if unpickler is None or getattr(unpickler.load, "_pickleguard", False):
        return
    original_load = unpickler.load

    def load(self: Any) -> Any:
        # Judged like any pickle (inside an admitted checkpoint, its bytes are
        # found in the checkpoint's), then run on exactly the verified bytes.
        data, _ = _core.verify_stream(self.read, self.readline)
        read, readline = self.read, self.readline
        verified = io.BytesIO(data)
        self.read, self.readline = verified.read, verified.readline
        try:
            return original_load(self)
        finally:
            self.read, self.readline = read, readline

    load.__doc__ = original_load.__doc__
    load.__qualname__ = original_load.__qualname__
    load._pickleguard = True  # type: ignore[attr-defined]
    unpickler.load = load
