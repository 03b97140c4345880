"""The joblib adapter: ``joblib.load`` pins the whole file, which interleaves raw
array bytes with pickle opcodes and may be compressed.

joblib's old format (0.9 and earlier) keeps arrays in files next to the pickle,
which the pickle names. Each such file is judged as an artifact of its own, found
where plain joblib finds it, and numpy reads the verified bytes.

Never imports joblib: ``patch`` is given the module once it has been imported.
"""

from __future__ import annotations

import builtins
import contextvars
import io
import operator
import os
import sys
import warnings

from .. import _core
from ..errors import PickleGuardError
from . import _verified
from ._artifact import (
    admit,
    disguise,
    is_path,
    load_artifact,
    load_copy_mapped,
    load_mapped,
    read_whole,
    refuse_writing_map,
    replace_load,
    unwrapped,
)

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at interpreter start
    from typing import Any, Optional, Tuple


def patch(joblib: Any) -> None:
    numpy_pickle = unwrapped("joblib.numpy_pickle")
    if numpy_pickle is None:
        return
    original = numpy_pickle.load
    compat: Any = sys.modules.get("joblib.numpy_pickle_compat")
    _patch_joblib_array_files(compat)
    _patch_temporary_memmaps(numpy_pickle)
    _patch_unpickler(numpy_pickle)
    _patch_array_reads(numpy_pickle)
    _substitute(numpy_pickle)
    zfile_unpickler = _zfile_unpickler(compat)

    def load(filename: Any, mmap_mode: Any = None, *args: Any, **kwargs: Any) -> Any:
        if _refused_by_joblib(mmap_mode, args, kwargs) or _uncompressed_stream(filename):
            # joblib raises on these arguments before it reads anything; and an
            # uncompressed stream is read by joblib's unpickler, which reads exactly
            # one joblib pickle, judged there (see _patch_unpickler).
            return original(filename, mmap_mode, *args, **kwargs)
        mapped = mmap_mode is not None and is_path(filename)
        if mapped and mmap_mode in ("r+", "w+") and not _joblib_compressed(filename):
            # Its writes go to the file: a sealed copy cannot take them.
            if _core.enforcing():
                refuse_writing_map(
                    "joblib.load",
                    f"mmap_mode={mmap_mode!r}",
                    "arrays",
                    "use mmap_mode='c' (mapped copy-on-write from the verified copy; "
                    "changes stay in memory) or mmap_mode='r' (read-only)",
                )
            return load_mapped(
                "joblib.load",
                f"mmap_mode={mmap_mode!r}",
                "",
                filename,
                lambda: original(filename, mmap_mode, *args, **kwargs),
            )
        copy = _verified.copy_of(filename) if is_path(filename) else None
        if copy is not None and mapped and not _joblib_compressed_head(copy.head(64)):
            # joblib is given the path, as plain: it opens the sealed copy in its
            # place and maps its arrays from it (see _substitute); the old
            # format's array files are looked for next to the original path.
            here = _JOBLIB_DIRECTORY.set((copy.path, os.path.dirname(os.fspath(filename))))
            try:
                return load_copy_mapped(
                    "joblib.load",
                    filename,
                    copy,
                    lambda path: _as_opened(
                        filename,
                        lambda: _verified.stream_over(copy, _verified.source_name(filename)),
                        _SharedCopy(path),
                        lambda: original(filename, mmap_mode, *args, **kwargs),
                    ),
                )
            finally:
                _JOBLIB_DIRECTORY.reset(here)
        if copy is None and mapped and not _joblib_compressed(filename):
            if not _core.enforcing():
                return load_mapped(
                    "joblib.load",
                    f"mmap_mode={mmap_mode!r}",
                    "",
                    filename,
                    lambda: original(filename, mmap_mode, *args, **kwargs),
                )
            # No sealed memory to map: the verified bytes, read into memory (joblib
            # warns that it cannot map a file object, and reads it).
        # Given a path, joblib looks for the old format's array files next to it.
        # It is given the verified bytes instead, so the directory is passed on.
        directory = os.path.dirname(os.fspath(filename)) if is_path(filename) else None

        def call(verified: Any) -> Any:
            if copy is not None:
                # Its arrays are mapped copy-on-write from the sealed copy rather
                # than copied out of it (see _patch_array_reads).
                here = _ARRAYS_FROM.set(_SealedArrays(verified, copy.path, len(copy)))
                try:
                    return call_joblib(verified)
                finally:
                    _ARRAYS_FROM.reset(here)
            return call_joblib(verified)

        def call_joblib(verified: Any) -> Any:
            if directory is None:
                return original(verified, mmap_mode, *args, **kwargs)
            if zfile_unpickler is not None and _joblib_zfile(verified):
                return _load_joblib_zfile(zfile_unpickler, os.fspath(filename), verified)
            here = _JOBLIB_DIRECTORY.set((verified, directory))
            try:
                # The path, as plain joblib is given it (its messages name it); it
                # opens the verified stream in its place.
                return _as_opened(
                    filename,
                    lambda: verified,
                    None,
                    lambda: original(filename, mmap_mode, *args, **kwargs),
                )
            finally:
                _JOBLIB_DIRECTORY.reset(here)

        # joblib ignores mmap_mode, with a warning, for a file object or a compressed
        # file: nothing is mapped, so the verified bytes can be loaded as they are.
        return load_artifact("joblib.load", filename, call, copy)

    replace_load(original, load, numpy_pickle, joblib)


# The path whose joblib.load runs in this thread or task, with what joblib opens in
# its place (the verified stream) and maps in its place (the sealed copy).
_OPENED: contextvars.ContextVar[Optional[Tuple[str, Any, Any]]] = contextvars.ContextVar(
    "pickleguard_joblib_opened", default=None
)


def _as_opened(path: Any, opener: Any, mapped: Any, call: Any) -> Any:
    """Run ``call`` (joblib.load of ``path``) with joblib opening ``opener()`` and
    mapping ``mapped`` in place of that path: it reads only the verified bytes."""
    here = _OPENED.set((os.fsdecode(os.fspath(path)), opener, mapped))
    try:
        return call()
    finally:
        _OPENED.reset(here)


def _substitute(numpy_pickle: Any) -> None:
    """Give joblib.numpy_pickle an ``open`` and a ``make_memmap`` that, for the path
    a guarded joblib.load was given, open the verified stream and map the sealed
    copy instead; any other file (a dump, a temporary memmap) is opened as asked."""
    if getattr(numpy_pickle.__dict__.get("open"), "_pickleguard", False):
        return
    make_memmap: Any = getattr(numpy_pickle, "make_memmap", None)

    def open_verified(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        opened = _OPENED.get()
        if opened is not None and mode == "rb" and _same_path(file, opened[0]):
            return opened[1]()
        return builtins.open(file, mode, *args, **kwargs)

    def map_verified(filename: Any, *args: Any, **kwargs: Any) -> Any:
        opened = _OPENED.get()
        if opened is not None and _same_path(filename, opened[0]):
            if opened[2] is None:
                raise PickleGuardError(
                    f"joblib tried to map {filename!r}, which pickleguard gave it only "
                    "as a verified stream: refused.\nhint: this joblib version maps "
                    "differently from the one pickleguard knows; load without mmap_mode"
                )
            mapped = make_memmap(opened[2].path(), *args, **kwargs)
            if isinstance(getattr(mapped, "__dict__", None), dict):
                mapped._pickleguard_copy = opened[2]  # its descriptor lives as long
            return mapped
        return make_memmap(filename, *args, **kwargs)

    disguise(open_verified, builtins.open)
    numpy_pickle.open = open_verified
    if make_memmap is not None:
        disguise(map_verified, make_memmap)
        numpy_pickle.make_memmap = map_verified


class _SharedCopy:
    """The sealed copy a mapped joblib.load maps its arrays from, by a path that
    other processes can open too: ``/proc/<this pid>/fd/<a descriptor of its
    own>``. A memmap passed on to joblib.Parallel's workers is mapped there by
    that name (its ``filename``), so they map the same verified bytes. The
    descriptor is opened at the first array and closed once no array mapped
    from it is left (each keeps this object)."""

    def __init__(self, copy_path: str) -> None:
        self._copy_path = copy_path
        self._path: Optional[str] = None

    def path(self) -> str:
        if self._path is None:
            import weakref

            descriptor = os.open(self._copy_path, os.O_RDONLY)  # not inherited
            weakref.finalize(self, os.close, descriptor)
            self._path = f"/proc/{os.getpid()}/fd/{descriptor}"
        return self._path


def _same_path(file: Any, path: str) -> bool:
    return is_path(file) and os.fsdecode(os.fspath(file)) == path


def _refused_by_joblib(mmap_mode: Any, args: Tuple[Any, ...], kwargs: Any) -> bool:
    """Whether joblib.load raises ValueError for these arguments before it opens
    the file: a native byte order asked for together with a memory map."""
    native = args[0] if args else kwargs.get("ensure_native_byte_order", "auto")
    return mmap_mode is not None and native != "auto" and bool(native)


def _uncompressed_stream(file: Any) -> bool:
    """Whether ``file`` is a file object that joblib reads as an uncompressed joblib
    pickle. Its first bytes are looked at as joblib does: peeked at, or read and
    then the stream rewound to its start (which joblib then reads from)."""
    if is_path(file) or not hasattr(file, "read"):
        return False
    utils = sys.modules.get("joblib.numpy_pickle_utils")
    detect = getattr(utils, "_detect_compressor", None)
    if detect is None:
        return False
    try:
        return bool(detect(file) == "not-compressed")
    except Exception:  # joblib raises the same when it looks: let it
        return True


def _patch_unpickler(numpy_pickle: Any) -> None:
    """Judge what joblib's unpickler reads from a stream of its own: one joblib
    pickle, array data inside, read exactly as far as joblib reads it.

    ``NumpyUnpickler.load`` is patched on the class, so every caller is covered:
    joblib.load of a file object, a subclass of it (a caller's ``find_class``), a
    caller's own ``NumpyUnpickler(...).load()``. A stream that belongs to an
    artifact already judged (joblib.load of a path, a temporary memmap) is left to
    the gate, which knows its pickles are covered. One the walk cannot delimit is
    handed to the gate as it is, which judges it as plain pickle, never as joblib.
    """
    cls = getattr(numpy_pickle, "NumpyUnpickler", None)
    if cls is None or getattr(cls.__dict__.get("load"), "_pickleguard", False):
        return
    from .. import _pickles

    def load(self: Any) -> Any:
        handle = getattr(self, "file_handle", None)
        if handle is None or getattr(self, "mmap_mode", None) is not None:
            # It maps its arrays from `filename`, which no stream can stand for.
            return super(cls, self).load()
        if not hasattr(handle, "read") or _core.reads_artifact(handle):
            return super(cls, self).load()
        data, what = _pickles.read_joblib_stream(handle)
        feed: Any = _pickles.Replay(data, handle) if what == "head" else io.BytesIO(data)
        saved = (self.file_handle, self._file_read, self._file_readline)
        self.file_handle, self._file_read, self._file_readline = feed, feed.read, feed.readline
        try:
            if what != "pickle":
                # Judged by the gate as plain pickle: a truncated stream raises
                # as plainly; nothing unjudged loads.
                return super(cls, self).load()
            name = getattr(handle, "name", None)
            with admit(data, name if isinstance(name, str) else None, "joblib.load", stream=feed):
                return super(cls, self).load()
        finally:
            self.file_handle, self._file_read, self._file_readline = saved

    load.__doc__ = None
    load.__name__, load.__qualname__ = "load", f"{cls.__qualname__}.load"
    load._pickleguard = True  # type: ignore[attr-defined]
    cls.load = load


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
    handle = getattr(unpickler, "file_handle", None)
    # The verified stream, or (a mapped load) the sealed copy joblib opened by name.
    if load is not None and (_reads_from(handle, load[0]) or _named(handle, load[0])):
        directory = load[1]
    return directory, os.path.join(directory, wrapper.filename)


def _named(file: Any, path: Any) -> bool:
    return isinstance(path, str) and getattr(file, "name", None) == path


class _VerifiedNumpy:
    """numpy as an old-format array wrapper's ``read`` finds it on its unpickler:
    ``load`` of the array file reads the bytes pickleguard judged, never the path;
    with ``mmap_mode``, it maps the sealed copy of them at ``mapped``."""

    def __init__(self, numpy: Any, path: Any, verified: Any, mapped: Any = None) -> None:
        self._numpy, self._path, self._verified = numpy, path, verified
        self._mapped = mapped

    def __getattr__(self, name: str) -> Any:
        return getattr(self._numpy, name)

    def load(
        self, file: Any, mmap_mode: Any = None, allow_pickle: bool = False, **kwargs: Any
    ) -> Any:
        if file == self._path and mmap_mode is not None and self._mapped is not None:
            return self._numpy.load(
                self._mapped, mmap_mode=mmap_mode, allow_pickle=allow_pickle, **kwargs
            )
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
            copy = _verified.copy_of(path) if mmap_mode is not None else None
            if copy is not None:
                # numpy maps the sealed copy of the array file, never the path.
                with copy, admit(copy, _verified.source_name(path), _ARRAY_FILE_LOADER):
                    unpickler.np = _VerifiedNumpy(numpy, path, None, copy.path)
                    return read_npy(self, unpickler)
            if mmap_mode is not None:
                # No sealed memory: numpy would map the file itself, refused while
                # enforcing, as for a joblib file mapped with mmap_mode.
                return load_mapped(
                    "joblib.load",
                    f"mmap_mode={mmap_mode!r}",
                    "",
                    path,
                    lambda: read_npy(self, unpickler),
                )
            found = read_whole(path)
            assert found is not None
            data, source, _ = found
            verified = io.BytesIO(data)
            # An object array's pickle is read from `verified`: covered by the entry.
            with admit(data, source, _ARRAY_FILE_LOADER, stream=verified):
                unpickler.np = _VerifiedNumpy(numpy, path, verified)
                return read_npy(self, unpickler)
        finally:
            unpickler.np, unpickler._dirname = numpy, dirname

    def read_compressed(self: Any, unpickler: Any) -> Any:
        # joblib's own steps (ZNDArrayWrapper.read), on the verified bytes: the array
        # from the pickled metadata, its data from the zlib-compressed file.
        _, path = _array_file(self, unpickler)
        found = read_whole(path)
        assert found is not None
        data, source, _ = found
        with admit(data, source, _ARRAY_FILE_LOADER):
            array = compat._reconstruct(*self.init_args)
            array.__setstate__(self.state + (compat.read_zfile(io.BytesIO(data)),))
            return array

    for cls, wrapper in ((compat.NDArrayWrapper, read), (compat.ZNDArrayWrapper, read_compressed)):
        disguise(wrapper, cls.read)
        cls.read = wrapper


class _SealedArrays:
    """The arrays of a joblib.load that reads the verified stream over a sealed
    copy of ``size`` bytes: the stream joblib's unpickler reads, and the copy
    mapped copy-on-write (once, at its first large array), which the large
    arrays are views of."""

    def __init__(self, stream: Any, copy_path: str, size: int) -> None:
        self.stream, self.size, self._copy_path = stream, size, copy_path
        self._view: Any = None
        self._unmappable = False

    def view(self) -> Any:
        """The mapping, or None where it cannot be made (the arrays are then
        copied, as plain joblib copies them)."""
        if self._view is None and not self._unmappable:
            import mmap

            try:
                fd = os.open(self._copy_path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                try:
                    # Private and writable: writes to an array stay in this process's
                    # own pages, as they would in an array joblib copied out.
                    self._view = mmap.mmap(
                        fd, 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE
                    )
                finally:
                    os.close(fd)
            except (OSError, ValueError):  # a commit limit, no /proc
                self._unmappable = True
        return self._view


# An array is a view of the copy only if it is at least this part of the file: a
# view keeps the whole copy in memory for as long as it lives, so a small array
# kept after the rest of the file's objects are gone would hold many times its
# size (plain joblib frees each array on its own). Smaller ones are copied out.
_VIEW_FROM_SHARE = 16

_ARRAYS_FROM: contextvars.ContextVar[Optional[_SealedArrays]] = contextvars.ContextVar(
    "pickleguard_joblib_arrays_from", default=None
)


def _patch_array_reads(numpy_pickle: Any) -> None:
    """Let joblib.load of a path, without mmap_mode, return its large arrays as
    views of the sealed copy instead of copies of its bytes: one copy of the file
    in memory, not two. ``NumpyArrayWrapper.read_array`` is patched on the class;
    it maps only for the unpickler that reads the verified stream of such a load,
    an array of plain values of at least a sixteenth of the file that lies whole
    in the copy at an offset aligned for its type (which joblib's own padding
    gives). Everything else is read by joblib."""
    cls = getattr(numpy_pickle, "NumpyArrayWrapper", None)
    original = getattr(cls, "read_array", None)
    native = getattr(numpy_pickle, "_ensure_native_byte_order", None)
    if original is None or getattr(original, "_pickleguard", False) or native is None:
        return

    def read_array(self: Any, unpickler: Any, *args: Any, **kwargs: Any) -> Any:
        arrays = _ARRAYS_FROM.get()
        array = None
        if arrays is not None and unpickler.file_handle is arrays.stream:
            array = _view_of_array(self, unpickler.np, arrays)
        if array is None:
            return original(self, unpickler, *args, **kwargs)
        # What joblib does with the array it read, the same way.
        if self.order == "F":
            array = array.reshape(self.shape[::-1]).transpose()
        else:
            array = array.reshape(self.shape)
        if args[0] if args else kwargs.get("ensure_native_byte_order", False):
            array = native(array)
        return array

    disguise(read_array, original)
    assert cls is not None
    cls.read_array = read_array


def _view_of_array(wrapper: Any, np: Any, arrays: _SealedArrays) -> Any:
    """The 1-d array of ``wrapper``'s data at the stream's position, a view of the
    sealed copy, with the stream moved past it as joblib's read moves it; None
    (nothing read) where joblib must read it itself: anything but a well-formed
    array of plain values lying whole in the copy at an aligned offset, and
    arrays that are a small part of the file."""
    dtype, shape = wrapper.dtype, wrapper.shape
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(shape, tuple):
        return None
    count = 1
    for extent in shape:
        try:
            extent = operator.index(extent)
        except TypeError:
            return None
        if extent < 0:
            return None  # joblib raises for it
        count *= extent
    if count * dtype.itemsize * _VIEW_FROM_SHARE < arrays.size:
        return None
    view = arrays.view()
    if view is None:
        return None
    stream = arrays.stream
    start = stream.tell()
    if wrapper.safe_get_numpy_array_alignment_bytes() is not None:
        if start >= len(view):
            return None
        start += 1 + view[start]  # the padding's length, then the padding
    end = start + count * dtype.itemsize
    if end > len(view) or start % max(dtype.alignment, 1):
        return None  # joblib raises for the short file; it copies what is unaligned
    stream.seek(end)
    return np.frombuffer(view, dtype=dtype, count=count, offset=start)


# The loader named in the messages and entries about a temporary memmap.
_TEMPORARY_MEMMAP_LOADER = "joblib (a temporary memmap of Parallel)"


def _patch_temporary_memmaps(numpy_pickle: Any) -> None:
    """Judge the files joblib.Parallel's workers map outside joblib.load.

    The parent dumps each large array argument to a file in its temporary folder,
    and the task's message names it; ``load_temporary_memmap`` unpickles that file
    with joblib's unpickler (``_unpickle``) and maps its arrays in place, as the
    message is loaded. The file stays shared between the pool's processes (the
    parent may still write it, results refer back to it by name, the worker's
    finalizer unlinks it), so it cannot be swapped for a sealed copy, and no hash
    can pin it: it is judged as a shared artifact, which only a channel rule (the
    pool's transport, see src/channels.rs) admits. ``_unpickle`` is patched on the
    module, where ``load_temporary_memmap`` looks it up at each call.
    """
    original = getattr(numpy_pickle, "_unpickle", None)
    if original is None or getattr(original, "_pickleguard", False):
        return

    def _unpickle(fobj: Any, *args: Any, **kwargs: Any) -> Any:
        if _core.in_artifact() or not kwargs.get("filename"):
            # Inside a joblib.load this adapter judged (the verified bytes), or a
            # file some other artifact's pickle opened: the gate judges what the
            # unpickler reads from it as for any nested load. Without a file name,
            # joblib.load of a stream: its unpickler judges what it reads.
            return original(fobj, *args, **kwargs)
        start = fobj.tell()
        data = fobj.read()
        fobj.seek(start)  # joblib's unpickler reads the same file from here
        name = getattr(fobj, "name", None)
        with admit(
            data,
            os.fsdecode(name) if isinstance(name, (str, bytes)) else None,
            _TEMPORARY_MEMMAP_LOADER,
            stream=fobj,
            shared=True,
        ):
            return original(fobj, *args, **kwargs)

    disguise(_unpickle, original)
    numpy_pickle._unpickle = _unpickle


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
    except UnicodeDecodeError as exc:  # as joblib's load_compatibility says it
        raise ValueError(
            "You may be trying to read with python 3 a joblib pickle generated with "
            "python 2. This feature is not supported by joblib."
        ) from exc
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
    """Whether joblib sees the file at ``path`` as compressed (by its magic bytes).
    Only to choose how to load: what loads is judged apart."""
    try:
        with open(path, "rb") as f:
            return _joblib_compressed_head(f.read(64))
    except (OSError, ValueError):
        return False


def _joblib_compressed_head(head: bytes) -> bool:
    """Whether joblib sees a file starting with ``head`` as compressed."""
    # Imported with joblib.numpy_pickle, whose load this wraps.
    utils = sys.modules.get("joblib.numpy_pickle_utils")
    detect = getattr(utils, "_detect_compressor", None)
    if detect is None:
        return False
    return bool(detect(io.BytesIO(head)) != "not-compressed")
