"""Adapters for loaders whose files are not one standalone pickle.

A torch checkpoint is a zip archive (or, in the legacy format, several pickles
followed by raw storage bytes); a joblib file interleaves raw array bytes with
pickle opcodes, and may be compressed. Neither can be pinned by the pickles inside
it alone: swapping a tensor's bytes changes no pickle. So ``torch.load`` and
``joblib.load`` are wrapped to pin the whole file (an ``[[artifact]]`` entry, the
hash ``sha256sum`` prints): the wrapper reads the file once, judges those bytes,
and runs the original loader on exactly them, with the pickles it reads out of the
file covered by the artifact's entry.

torch's ``weights_only`` unpickler is pure Python and calls neither ``pickle`` nor
the ``pickle.find_class`` audit event, so it gets a gate of its own: outside an
admitted artifact, each of its loads is judged like any pickle.

joblib's old format (0.9 and earlier) keeps arrays in files next to the pickle,
which the pickle names. Each such file is judged as an artifact of its own, found
where plain joblib finds it, and numpy reads the verified bytes.

The wrappers are installed when the library is imported (an import hook), or at
once if it already is.
"""

from __future__ import annotations

import contextvars
import io
import os
import sys
import warnings

from . import _core
from .errors import PickleGuardError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at interpreter start
    from typing import Any, Callable, Dict, List, Optional, Tuple


def _read_whole(file: Any) -> Optional[Tuple[bytes, Optional[str], Any]]:
    """The bytes a loader would read from ``file`` (a path or a binary file object),
    the file's name, and the file object (None for a path). None if ``file`` is
    neither, so the original loader raises its own error."""
    if _is_path(file):
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


def _artifact_imports(data: bytes) -> Optional[List[Tuple[str, bool]]]:
    """The globals the pickles of an artifact import, found without running them,
    for ``record`` to flag risky ones: each ``.pkl`` member of a zip archive (torch's
    format), or the leading run of concatenated pickles (torch's legacy format).
    Only while recording; None for a file whose pickles cannot be delimited
    (joblib interleaves raw array bytes with the opcodes)."""
    if not _core.journaling():
        return None
    found: List[Tuple[str, bool]] = []
    if data[:4] == b"PK\x03\x04":
        import zipfile

        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                for name in archive.namelist():
                    if name.endswith(".pkl"):
                        found += _core.imports(archive.read(name))
        except Exception:  # a damaged or unusual archive: the loader will say so
            return None
    else:
        offset = 0
        while offset < len(data):
            try:
                length, _ = _core.delimit(data, offset)
            except Exception:  # the reader's errors: the raw data after the pickles
                break
            found += _core.imports(memoryview(data)[offset : offset + length])
            offset += length
        if offset == 0:
            return None
    return list(dict.fromkeys(found))


def _admit(
    data: bytes, source: Optional[str], loader: str, stream: Any = None, any_stream: bool = False
) -> Any:
    return _core.verify_artifact(
        data,
        source=source,
        loader=loader,
        imports=_artifact_imports(data),
        stream=stream,
        any_stream=any_stream,
    )


def _refuse_mapping(loader: str, option: str, alternative: str) -> None:
    raise PickleGuardError(
        f"{loader} with {option} is refused while pickleguard enforces a manifest: the "
        "loader maps the file after pickleguard has hashed it, so its bytes could change "
        "between the check and their use.\n"
        f"hint: load without {option} (the verified bytes are read into memory){alternative}"
    )


def _is_path(file: Any) -> bool:
    return isinstance(file, (str, bytes, os.PathLike))


def _load_artifact(loader: str, file: Any, call: Callable[[Any], Any]) -> Any:
    """Read ``file`` whole, admit it as an artifact of ``loader``, and run
    ``call(verified_file)`` inside the artifact's scope."""
    start = _start_of(file) if hasattr(file, "read") else None
    found = _read_whole(file)
    if found is None:
        return call(file)
    data, source, file_object = found
    verified = io.BytesIO(data)
    if source is not None:
        verified.name = source
    # The pickles the loader reads out of `verified` are covered by the entry;
    # anything else it loads meanwhile (a file next to it) is judged on its own.
    with _admit(data, source, loader, stream=verified):
        try:
            return call(verified)
        finally:
            _seek_after(file_object, start, verified.tell())


def _load_mapped(
    loader: str, option: str, alternative: str, path: Any, call: Callable[[], Any]
) -> Any:
    """A loader that maps the file at ``path`` itself: refused while enforcing;
    recorded (or warned about) otherwise, then run as asked."""
    if _core.enforcing():
        _refuse_mapping(loader, option, alternative)
    found = _read_whole(path)
    assert found is not None
    data, source, _ = found
    # Not enforcing (refused above otherwise): the loader opens the file itself.
    with _admit(data, source, loader, any_stream=True):
        return call()


def _replace_load(original: Any, wrapper: Any, module: Any, package: Any) -> None:
    """Put ``wrapper`` in place of ``module.load`` and of the package's re-export of
    it, looking like the original to introspection."""
    for attribute in ("__doc__", "__name__", "__qualname__"):
        setattr(wrapper, attribute, getattr(original, attribute))
    wrapper.__wrapped__ = original
    wrapper._pickleguard = True
    module.load = wrapper
    if getattr(package, "load", None) is original:
        package.load = wrapper


# ---------------------------------------------------------------------------
# torch


def _patch_torch(torch: Any) -> None:
    serialization: Any = sys.modules.get("torch.serialization")
    if serialization is None or getattr(serialization.load, "_pickleguard", False):
        return
    original = serialization.load

    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        if _maps(kwargs.get("mmap")) and _is_path(f):
            return _load_mapped(
                "torch.load",
                "mmap=True",
                ", or convert the checkpoint to safetensors",
                f,
                lambda: original(f, *args, **kwargs),
            )
        # (torch itself refuses mmap=True for a file object.)
        return _load_artifact("torch.load", f, lambda verified: original(verified, *args, **kwargs))

    _replace_load(original, load, serialization, torch)
    _gate_weights_only_unpickler()


def _maps(mmap: Any) -> bool:
    """Whether torch.load will map the file: `mmap=True`, or `mmap=None` with torch's
    own default (`torch.utils.serialization.config.load.mmap`) set."""
    if mmap is not None:
        return bool(mmap)
    config = sys.modules.get("torch.utils.serialization.config")
    return bool(getattr(getattr(config, "load", None), "mmap", False))


def _gate_weights_only_unpickler() -> None:
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


# ---------------------------------------------------------------------------
# joblib


def _patch_joblib(joblib: Any) -> None:
    numpy_pickle: Any = sys.modules.get("joblib.numpy_pickle")
    if numpy_pickle is None or getattr(numpy_pickle.load, "_pickleguard", False):
        return
    original = numpy_pickle.load
    compat: Any = sys.modules.get("joblib.numpy_pickle_compat")
    _patch_joblib_array_files(compat)
    zfile_unpickler = _zfile_unpickler(compat)

    def load(filename: Any, mmap_mode: Any = None, *args: Any, **kwargs: Any) -> Any:
        if mmap_mode is not None and _is_path(filename) and not _joblib_compressed(filename):
            return _load_mapped(
                "joblib.load",
                f"mmap_mode={mmap_mode!r}",
                "",
                filename,
                lambda: original(filename, mmap_mode, *args, **kwargs),
            )
        # Given a path, joblib looks for the old format's array files next to it.
        # It is given the verified bytes instead, so the directory is passed on.
        directory = os.path.dirname(os.fspath(filename)) if _is_path(filename) else None

        def call(verified: Any) -> Any:
            if directory is None:
                return original(verified, mmap_mode, *args, **kwargs)
            if zfile_unpickler is not None and _joblib_zfile(verified):
                return _load_joblib_zfile(zfile_unpickler, os.fspath(filename), verified)
            here = _JOBLIB_DIRECTORY.set((verified, directory))
            try:
                return original(verified, mmap_mode, *args, **kwargs)
            finally:
                _JOBLIB_DIRECTORY.reset(here)

        # joblib ignores mmap_mode, with a warning, for a file object or a compressed
        # file: nothing is mapped, so the verified bytes can be loaded as they are.
        return _load_artifact("joblib.load", filename, call)

    _replace_load(original, load, numpy_pickle, joblib)


# The verified stream of the joblib.load of a path running in this thread or task,
# and the directory of that path.
_JOBLIB_DIRECTORY: contextvars.ContextVar[Optional[Tuple[Any, Any]]] = contextvars.ContextVar(
    "pickleguard_joblib_directory", default=None
)

# The loader named in the messages and entries about an old-format array file.
_ARRAY_FILE_LOADER = "joblib.load (an old-format array file)"


def _reads_from(file: Any, stream: Any) -> bool:
    """Whether ``file`` is ``stream``, or reads from it through a buffered reader or
    a decompressor (joblib's compressed files) a few levels down."""
    for _ in range(4):
        if file is stream:
            return True
        inner = (getattr(file, name, None) for name in ("raw", "_fp", "fileobj"))
        file = next((f for f in inner if f is not None), None)
        if file is None:
            return False
    return False


def _array_file(wrapper: Any, unpickler: Any) -> Tuple[Any, Any]:
    """The directory and the path of the file an old-format array wrapper names:
    where plain joblib looks (``unpickler._dirname``: the pickle's directory, or
    the current one for a file object), but for the joblib.load of a path, whose
    unpickler reads the verified bytes, the directory of that path."""
    directory = unpickler._dirname
    load = _JOBLIB_DIRECTORY.get()
    if load is not None and _reads_from(getattr(unpickler, "file_handle", None), load[0]):
        directory = load[1]
    return directory, os.path.join(directory, wrapper.filename)


class _VerifiedNumpy:
    """numpy as an old-format array wrapper's ``read`` finds it on its unpickler:
    ``load`` of the array file reads the bytes pickleguard judged, never the path."""

    def __init__(self, numpy: Any, path: Any, verified: Any) -> None:
        self._numpy, self._path, self._verified = numpy, path, verified

    def __getattr__(self, name: str) -> Any:
        return getattr(self._numpy, name)

    def load(
        self, file: Any, mmap_mode: Any = None, allow_pickle: bool = False, **kwargs: Any
    ) -> Any:
        if file != self._path or mmap_mode is not None:
            raise PickleGuardError(
                f"joblib asked numpy to load {file!r} (mmap_mode={mmap_mode!r}), not the "
                f"array file pickleguard checked, {self._path!r}: refused.\n"
                "hint: this joblib version reads its old format differently from the one "
                "pickleguard knows; regenerate the file with joblib.dump"
            )
        return self._numpy.load(self._verified, allow_pickle=allow_pickle, **kwargs)


def _patch_joblib_array_files(compat: Any) -> None:
    """Judge each array file an old-format joblib pickle names as an artifact, and
    have numpy read the verified bytes. ``NDArrayWrapper.read`` (an ``.npy`` file)
    and ``ZNDArrayWrapper.read`` (a zlib-compressed one) are patched on the classes:
    every unpickler of joblib's finds them there."""
    classes = [getattr(compat, name, None) for name in ("NDArrayWrapper", "ZNDArrayWrapper")]
    if None in classes or getattr(compat.NDArrayWrapper.read, "_pickleguard", False):
        return  # a joblib without the old format, or already patched
    read_npy = compat.NDArrayWrapper.read

    def read(self: Any, unpickler: Any) -> Any:
        directory, path = _array_file(self, unpickler)
        mmap_mode = unpickler.mmap_mode if getattr(self, "allow_mmap", True) else None
        numpy, dirname = unpickler.np, unpickler._dirname
        unpickler._dirname = directory
        try:
            if mmap_mode is not None:
                # numpy maps the file itself: refused while enforcing, as for a
                # joblib file mapped with mmap_mode.
                return _load_mapped(
                    "joblib.load",
                    f"mmap_mode={mmap_mode!r}",
                    "",
                    path,
                    lambda: read_npy(self, unpickler),
                )
            found = _read_whole(path)
            assert found is not None
            data, source, _ = found
            verified = io.BytesIO(data)
            # An object array's pickle is read from `verified`: covered by the entry.
            with _admit(data, source, _ARRAY_FILE_LOADER, stream=verified):
                unpickler.np = _VerifiedNumpy(numpy, path, verified)
                return read_npy(self, unpickler)
        finally:
            unpickler.np, unpickler._dirname = numpy, dirname

    def read_compressed(self: Any, unpickler: Any) -> Any:
        # joblib's own steps (ZNDArrayWrapper.read), on the verified bytes: the array
        # from the pickled metadata, its data from the zlib-compressed file.
        _, path = _array_file(self, unpickler)
        found = _read_whole(path)
        assert found is not None
        data, source, _ = found
        with _admit(data, source, _ARRAY_FILE_LOADER):
            array = compat._reconstruct(*self.init_args)
            array.__setstate__(self.state + (compat.read_zfile(io.BytesIO(data)),))
            return array

    for cls, wrapper in ((compat.NDArrayWrapper, read), (compat.ZNDArrayWrapper, read_compressed)):
        original = cls.read
        for attribute in ("__doc__", "__name__", "__qualname__"):
            setattr(wrapper, attribute, getattr(original, attribute))
        wrapper.__wrapped__ = original  # type: ignore[attr-defined]
        wrapper._pickleguard = True  # type: ignore[attr-defined]
        cls.read = wrapper


def _joblib_zfile(verified: Any) -> bool:
    """Whether joblib sees these bytes as its old compressed format (a "Z-file")."""
    utils = sys.modules.get("joblib.numpy_pickle_utils")
    detect = getattr(utils, "_detect_compressor", None)
    if detect is None:
        return False
    return bool(detect(verified) == "compat")  # it reads the head, then seeks back


def _load_joblib_zfile(unpickler_class: Any, path: Any, verified: Any) -> Any:
    """What joblib.load does for a file in its old compressed format (it hands the
    path to ``load_compatibility``, which opens it again), on the verified bytes."""
    warnings.warn(
        f"The file '{path}' has been generated with a joblib version less than 0.10. "
        "Please regenerate this pickle file.",
        DeprecationWarning,
        stacklevel=2,  # as joblib's: not shown by default
    )
    unpickler = unpickler_class(path, file_handle=verified)
    try:
        return unpickler.load()
    finally:
        unpickler.file_handle.close()


def _zfile_unpickler(compat: Any) -> Any:
    """joblib's unpickler of its old compressed format, with the decompressed pickle
    linked to the verified stream it comes from (as a decompressor's ``fileobj``
    is), so that the gate sees it inside the artifact's bytes."""
    if getattr(compat, "ZipNumpyUnpickler", None) is None:
        return None

    class VerifiedZipNumpyUnpickler(compat.ZipNumpyUnpickler):
        def _open_pickle(self, file_handle: Any) -> Any:
            stream = super()._open_pickle(file_handle)
            stream.fileobj = file_handle
            return stream

    return VerifiedZipNumpyUnpickler


def _joblib_compressed(path: Any) -> bool:
    """Whether joblib sees the file at ``path`` as compressed (by its magic bytes)."""
    # Imported with joblib.numpy_pickle, whose load this wraps.
    utils = sys.modules.get("joblib.numpy_pickle_utils")
    detect = getattr(utils, "_detect_compressor", None)
    if detect is None:
        return False
    try:
        with open(path, "rb") as f:
            head = io.BytesIO(f.read(64))
        return bool(detect(head) != "not-compressed")
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------------------
# Installation: patch now if imported, else when imported.

_PATCHERS: Dict[str, Callable[[Any], None]] = {
    "torch": _patch_torch,
    "joblib": _patch_joblib,
}


class _PatchOnImport:
    """A meta path finder that finds nothing itself: for the modules in _PATCHERS
    it asks the other finders, then patches the module once it has executed."""

    _finding: set = set()

    @classmethod
    def find_spec(cls, name: str, path: Any = None, target: Any = None) -> Any:
        patch = _PATCHERS.get(name)
        if patch is None or name in cls._finding:
            return None
        import importlib.util

        cls._finding.add(name)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            cls._finding.discard(name)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return None
        original_exec = loader.exec_module

        def exec_module(module: Any) -> None:
            original_exec(module)
            patch(module)

        # On this module's own loader instance only.
        loader.exec_module = exec_module
        return spec


_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    replaced: Dict[int, Any] = {}
    for name, patch in _PATCHERS.items():
        module = sys.modules.get(name)
        if module is not None:
            before = getattr(module, "load", None)
            patch(module)
            after = getattr(module, "load", None)
            if before is not None and after is not before:
                replaced[id(before)] = after
    if replaced:
        # `from torch import load` in a module imported before activation.
        from ._gate import rebind_names

        rebind_names(replaced)
    sys.meta_path.insert(0, _PatchOnImport)
