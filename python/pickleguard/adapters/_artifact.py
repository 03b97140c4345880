"""What the torch and joblib adapters share: reading a file whole, admitting it as
an artifact, and running the original loader on exactly the verified bytes."""

from __future__ import annotations

import io
import os
import sys

from .. import _core
from ..errors import PickleGuardError
from . import _verified

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at interpreter start
    from typing import Any, Callable, List, Optional, Tuple


def read_whole(file: Any) -> Optional[Tuple[bytes, Optional[str], Any]]:
    """The bytes a loader would read from ``file`` (a path or a binary file object),
    the file's name, and the file object (None for a path). None if ``file`` is
    neither, so the original loader raises its own error."""
    if is_path(file):
        path = os.fspath(file)
        with open(path, "rb") as f:
            return f.read(), os.fsdecode(path), None
    read = getattr(file, "read", None)
    if read is None:
        return None
    name = getattr(file, "name", None)
    data = read()
    if not isinstance(data, bytes):
        data = bytes(data)
    return data, name if isinstance(name, str) else None, file


def _seek_after(file: Any, start: Optional[int], consumed: int) -> None:
    """Leave a file object where the loader would have: just after what it read."""
    if file is not None and start is not None:
        file.seek(start + consumed)


def _start_of(file: Any) -> Optional[int]:
    try:
        return file.tell() if file is not None and file.seekable() else None
    except (AttributeError, OSError, ValueError):
        return None


def _artifact_imports(data: Any) -> Optional[List[Tuple[str, bool]]]:
    """The globals the pickles of an artifact import, found without running them,
    for ``record`` to flag risky ones: walked as its loader reads it (a zip
    archive's .pkl members, torch's legacy format, a joblib file's pickles around
    its array data). Only while recording; a file whose walk stops early also
    lists why, as a risky import: what the rest imports is not known."""
    if not _core.journaling():
        return None
    from .. import _pickles  # only while recording: not on the start-up path

    if isinstance(data, _core.VerifiedFile):
        data = _verified.imports_source(data)
    walked = _pickles.walk(data)
    found = walked.imports
    if walked.problem and walked.form != "none":
        found.append((f"<not read: {walked.problem}>", True))
    return found


def admit(
    data: Any,
    source: Optional[str],
    loader: str,
    stream: Any = None,
    any_stream: bool = False,
    shared: bool = False,
) -> Any:
    """Judge ``data`` (bytes, or a verified copy) as an artifact of ``loader``; the
    with-block to run the loader in. ``shared``: a file an engine's processes
    share, which the loader maps in place; only a channel rule admits it."""
    return _core.verify_artifact(
        data,
        source=source,
        loader=loader,
        imports=_artifact_imports(data),
        stream=stream,
        any_stream=any_stream,
        shared=shared,
    )


def _refuse_mapping(loader: str, option: str, alternative: str) -> None:
    raise PickleGuardError(
        f"{loader} with {option} is refused while pickleguard enforces a manifest: the "
        "loader maps the file after pickleguard has hashed it, so its bytes could change "
        "between the check and their use.\n"
        f"hint: load without {option} (the verified bytes are read into memory){alternative}"
    )


def refuse_writing_map(loader: str, option: str, what: str, hint: str) -> None:
    """Refuse a mapping whose writes would go to the file: a sealed copy cannot
    take them, and the file itself is not what was checked."""
    raise PickleGuardError(
        f"{loader} with {option} is refused while pickleguard enforces a manifest: that "
        f"maps the file writable and shared, so it writes changes to the {what} back to "
        "the file, and pickleguard maps only a sealed copy of the bytes it checked, which "
        f"nothing can write to.\nhint: {hint}"
    )


def is_path(file: Any) -> bool:
    return isinstance(file, (str, bytes, os.PathLike))


def load_artifact(
    loader: str, file: Any, call: Callable[[Any], Any], copy: Optional[_core.VerifiedFile] = None
) -> Any:
    """Read ``file`` whole, admit it as an artifact of ``loader``, and run
    ``call(verified_file)`` inside the artifact's scope. Given ``copy``, the
    verified copy of the path ``file``, the loader reads a file over that copy."""
    if copy is not None:
        name = _verified.source_name(file)
        with copy, _verified.stream_over(copy, name) as stream:
            with admit(copy, name, loader, stream=stream):
                return call(stream)
    start = _start_of(file) if hasattr(file, "read") else None
    found = read_whole(file)
    if found is None:
        return call(file)
    data, source, file_object = found
    verified = io.BytesIO(data)
    if source is not None:
        verified.name = source
    # The pickles the loader reads out of `verified` are covered by the entry;
    # anything else it loads meanwhile (a file next to it) is judged on its own.
    with admit(data, source, loader, stream=verified):
        try:
            return call(verified)
        finally:
            _seek_after(file_object, start, verified.tell())


def load_copy_mapped(
    loader: str, path: Any, copy: _core.VerifiedFile, call: Callable[[str], Any]
) -> Any:
    """Admit the verified copy of ``path`` as an artifact of ``loader``, and run
    ``call(copy_path)`` inside the artifact's scope: the loader maps (or opens) the
    sealed copy by name, never ``path``."""
    with copy, admit(copy, _verified.source_name(path), loader):
        return call(copy.path)


def load_mapped(
    loader: str, option: str, alternative: str, path: Any, call: Callable[[], Any]
) -> Any:
    """A loader that maps the file at ``path`` itself, where there is no verified
    copy to map instead: refused while enforcing; recorded (or warned about)
    otherwise, then run as asked."""
    if _core.enforcing():
        _refuse_mapping(loader, option, alternative)
    found = read_whole(path)
    assert found is not None
    data, source, _ = found
    # Not enforcing (refused above otherwise): the loader opens the file itself.
    with admit(data, source, loader, any_stream=True):
        return call()


def unwrapped(name: str) -> Any:
    """The library's module ``name`` if it is imported and its ``load`` is not
    wrapped yet, else None."""
    module = sys.modules.get(name)
    if module is None or getattr(module.load, "_pickleguard", False):
        return None
    return module


def disguise(wrapper: Any, original: Any) -> None:
    """Make ``wrapper`` look like ``original`` to introspection, and mark it as ours
    so that it is never wrapped twice."""
    for attribute in ("__doc__", "__name__", "__qualname__"):
        setattr(wrapper, attribute, getattr(original, attribute))
    wrapper.__wrapped__ = original
    wrapper._pickleguard = True


def replace_load(original: Any, wrapper: Any, module: Any, package: Any) -> None:
    """Put ``wrapper`` in place of ``module.load`` and of the package's re-export of
    it, looking like the original to introspection."""
    disguise(wrapper, original)
    module.load = wrapper
    if getattr(package, "load", None) is original:
        package.load = wrapper
