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
    from typing import Any, Callable, Dict, List, Optional, Tuple


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


# ---------------------------------------------------------------------------
# Walking a file as its loader reads it: which bytes are pickle opcodes, and which
# are raw tensor or array data that no unpickler reads.


class Found:
    """One pickle a loader reads out of a file, found without running it."""

    def __init__(
        self,
        member: str,
        offset: int,
        size: int,
        imports: List[Tuple[str, bool]],
        sha256: str,
        role: str = "",
        standalone: bool = True,
    ) -> None:
        self.member = member  # the zip member it is in, or "" for the file itself
        self.offset = offset
        self.size = size  # bytes from its first opcode to its STOP, raw data included
        self.sha256 = sha256  # of those bytes: a [[pickle]] identity if standalone
        self.imports = imports  # (name, risky)
        self.role = role  # what the loader reads it as: "torch: object", "joblib", ...
        # Whether its bytes are one plain pickle, which `pickle.load` reads (and
        # [[pickle]] entries identify); not a joblib pickle with arrays inside.
        self.standalone = standalone


class Walk:
    """What a file holds as its loaders read it."""

    def __init__(self, form: str) -> None:
        # "zip" (torch), "torch-legacy", "joblib", "pickles" (one or more plain
        # pickles, one after another), "none" (no pickle at its start).
        self.form = form
        self.pickles: List[Found] = []
        self.raw_bytes = 0  # raw tensor or array data, read by torch or numpy
        self.problem: Optional[str] = None  # why the walk stopped before the end

    @property
    def imports(self) -> List[Tuple[str, bool]]:
        return list(dict.fromkeys(i for p in self.pickles for i in p.imports))

    @property
    def one_pickle(self) -> bool:
        """Whether the file is exactly one plain pickle, nothing before or after it."""
        return (
            self.form == "pickles"
            and self.problem is None
            and len(self.pickles) == 1
            and self.pickles[0].standalone
        )


class _Unwalkable(Exception):
    """A pickle whose walk cannot be sure where its opcodes and raw data lie."""


# torch's legacy (pre-zip) format: five pickles (a magic number, the format's
# protocol version, system information, the object, the list of storage keys),
# then each storage's raw bytes (torch/serialization.py, _legacy_save/_legacy_load).
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_LEGACY_ROLES = ("magic number", "protocol version", "system info", "object", "storage keys")
_JOBLIB_WRAPPER = "joblib.numpy_pickle.NumpyArrayWrapper"


def walk(data: bytes) -> Walk:
    """Walk ``data`` the way its loader reads it, running no pickle: a zip archive's
    .pkl members, torch's legacy format, a joblib file (pickle opcodes with raw
    array data after each array's NumpyArrayWrapper), or plain pickles."""
    if is_zip(data):
        result = Walk("zip")
        try:
            members = zip_pickles(data)
        except Exception as e:  # zipfile's errors for a damaged archive
            result.problem = f"damaged zip archive: {e}"
            return result
        for name, blob in members:
            _walk_plain(result, blob, 0, name)
            if result.problem:
                result.problem = f"{name}: {result.problem}"
                break
        return result
    if not data:
        result = Walk("none")
        result.problem = "the file is empty"
        return result
    try:
        first, _ = _core.delimit(data, 0)
    except Exception:
        first = 0
    if not first:
        compression = next((name for prefix, name in _COMPRESSED if data.startswith(prefix)), None)
        if compression is not None:
            return _walk_compressed(data, compression)
    if first and _torch_magic(data[:first]):
        return _walk_torch_legacy(data)
    if _JOBLIB_WRAPPER in (name for name, _ in _core.imports(data)):
        return _walk_joblib(data)
    result = Walk("pickles")
    _walk_plain(result, data, 0, "")
    if not result.pickles:
        result.form = "none"
    return result


# joblib.dump(..., compress=...) writes its whole format through a compressor;
# joblib.load recognizes each by its first bytes (joblib/compressor.py).
_COMPRESSED = (
    (b"\x1f\x8b", "gzip"),
    (b"BZ", "bz2"),
    (b"\xfd7zXZ", "xz"),
    (b"]\x00\x00", "lzma"),
    (b"\x04\x22\x4d\x18", "lz4"),
    (b"x", "zlib"),
    (b"ZF", "zfile"),
)


def _walk_compressed(data: bytes, compression: str) -> Walk:
    """A file joblib compressed: walked after decompressing it, as joblib reads it.
    Offsets are in the decompressed bytes."""
    import bz2
    import gzip
    import lzma
    import zlib

    decompressors: Dict[str, Callable[[bytes], bytes]] = {
        "gzip": gzip.decompress,
        "bz2": bz2.decompress,
        "xz": lzma.decompress,
        "lzma": lzma.decompress,
        "zlib": zlib.decompress,
        "zfile": _zfile_decompress,
    }
    decompress = decompressors.get(compression)
    if decompress is None:
        result = Walk(compression)
        result.problem = f"{compression}-compressed, which pickleguard cannot decompress"
        return result
    try:
        inner = decompress(data)
    except Exception:  # not compressed after all: a file that starts like one
        return Walk("none")
    result = walk(inner)
    if result.form == "none":
        return result
    result.form = f"{compression}-compressed {result.form}"
    return result


def _zfile_decompress(data: bytes) -> bytes:
    """The pickle in joblib 0.9's "Z-file": "ZF", the length in hex padded to 19
    characters, maybe a space, then zlib data (joblib/numpy_pickle_compat.py)."""
    import zlib

    length = int(data[2:21], 16)
    start = 22 if data[21:22] == b" " else 21
    return zlib.decompress(data[start:], 15, length)


def _walk_plain(result: Walk, blob: bytes, offset: int, member: str) -> None:
    """Plain pickles one after another from ``offset`` to the end of ``blob``."""
    view = memoryview(blob)
    while offset < len(blob):
        try:
            length, _ = _core.delimit(blob, offset)
        except Exception as e:  # the reader's UnpicklingError, EOFError, OverflowError
            result.problem = f"no complete pickle at offset {offset}: {e}"
            return
        stream = view[offset : offset + length]
        found = Found(member, offset, length, _core.imports(stream), _core.hexdigest(stream))
        result.pickles.append(found)
        offset += length


def _torch_magic(first: bytes) -> bool:
    """Whether the pickle ``first`` is torch's magic number: an integer, nothing else."""
    import pickletools

    try:
        ops = [(op.name, arg) for op, arg, _ in pickletools.genops(first)]
    except Exception:
        return False
    ops = [(name, arg) for name, arg in ops if name not in ("PROTO", "FRAME")]
    return len(ops) == 2 and ops[0][1] == _TORCH_MAGIC and ops[1][0] == "STOP"


def _walk_torch_legacy(data: bytes) -> Walk:
    result = Walk("torch-legacy")
    view = memoryview(data)
    offset = 0
    for role in _TORCH_LEGACY_ROLES:
        try:
            length, _ = _core.delimit(data, offset)
        except Exception as e:
            result.problem = f"no complete pickle ({role}) at offset {offset}: {e}"
            return result
        stream = view[offset : offset + length]
        result.pickles.append(
            Found(
                "", offset, length, _core.imports(stream), _core.hexdigest(stream), f"torch: {role}"
            )
        )
        offset += length
    # torch reads the storages' bytes itself, as raw data: no pickle follows them.
    result.raw_bytes = len(data) - offset
    return result


def _walk_joblib(data: bytes) -> Walk:
    result = Walk("joblib")
    offset = 0
    view = memoryview(data)
    while offset < len(data):
        try:
            walked, spliced = _walk_one(data, offset)
        except _Unwalkable as e:
            result.problem = f"the joblib pickle at offset {offset} cannot be walked: {e}"
            return result
        except Exception as e:  # the reader's errors
            result.problem = f"no complete pickle at offset {offset}: {e}"
            return result
        result.raw_bytes += walked.raw_bytes
        plain = not walked.arrays
        whole = view[offset : walked.end]
        result.pickles.append(
            Found(
                "",
                offset,
                len(whole),
                _core.imports(spliced),
                _core.hexdigest(whole),
                "joblib",
                plain,
            )
        )
        for start, length in walked.nested:
            stream = view[start : start + length]
            result.pickles.append(
                Found(
                    "",
                    start,
                    length,
                    _core.imports(stream),
                    _core.hexdigest(stream),
                    "joblib: object array",
                )
            )
        offset = walked.end
    return result


def _walk_one(data: Any, offset: int) -> Tuple[_Walked, bytes]:
    """The joblib pickle at ``offset`` of ``data`` (bytes, or a ``_Recorded``
    stream), walked, and its opcodes with the raw array data taken out."""
    walker = _JoblibPickle(data, offset)
    walked = walker.walk()
    view = memoryview(walker.source.data)
    spliced = b"".join(view[a:b] for a, b in walked.opcodes)
    # The Rust reader must see those opcodes as one pickle ending where this walk
    # ends: else the walk is not trusted.
    length, _ = _core.delimit(spliced, 0)
    if length != len(spliced):
        raise _Unwalkable("the opcodes without the array data are not one pickle")
    return walked, spliced


class _Global:
    def __init__(self, name: str) -> None:
        self.name = name


class _Object:
    """What REDUCE, NEWOBJ, OBJ or INST would build: its callable, arguments and
    the state BUILD gives it (a dict merged into its attributes, or else the
    argument of its __setstate__)."""

    def __init__(self, callable_: Any, args: Any) -> None:
        self.callable = callable_
        self.args = args
        self.attributes: Dict[Any, Any] = {}
        self.setstate: Any = None

    def is_a(self, name: str) -> bool:
        return isinstance(self.callable, _Global) and self.callable.name == name


_MARK = object()
_UNKNOWN = object()  # a value the walk does not need to know


class _Walked:
    def __init__(self) -> None:
        self.end = 0
        self.opcodes: List[Tuple[int, int]] = []  # (start, end) of each run of opcodes
        self.raw_bytes = 0
        self.arrays = 0  # NumpyArrayWrapper objects built: data after each
        self.nested: List[Tuple[int, int]] = []  # (offset, size) of object arrays' pickles


class _JoblibPickle:
    """One pickle of a joblib file, walked as joblib's NumpyUnpickler reads it (see
    joblib/numpy_pickle.py): after each BUILD that leaves a NumpyArrayWrapper on
    the stack, the file holds the array's data, which numpy reads, or for an
    array of objects one more plain pickle. Only literal values are followed: any
    construct that could make joblib read differently is refused, not guessed."""

    def __init__(self, data: Any, offset: int) -> None:
        self.source = data if isinstance(data, _Recorded) else _Recorded(None, data)
        self.start = offset
        self.stack: List[Any] = []
        self.marks: List[int] = []
        self.memo: Dict[int, Any] = {}
        self.frame_end: Optional[int] = None
        self.protocol = 0

    def walk(self) -> _Walked:
        import pickletools

        walked = _Walked()
        stream = self.source
        stream.seek(self.start)
        run_start = self.start
        try:
            for opcode, arg, pos in pickletools.genops(stream):  # type: ignore[arg-type]
                here = stream.tell()
                if self.frame_end is not None and (pos or 0) >= self.frame_end:
                    self.frame_end = None
                name = opcode.name
                if name == "FRAME":
                    self.frame_end = here + int(arg or 0)
                elif name == "STOP":
                    walked.opcodes.append((run_start, here))
                    walked.end = here
                    return walked
                elif name == "BUILD":
                    wrapper = self._build()
                    if wrapper is not None:
                        if self.frame_end is not None and self.frame_end != here:
                            raise _Unwalkable(f"the array at offset {here} starts inside a frame")
                        walked.opcodes.append((run_start, here))
                        after = self._skip_array(wrapper, here, walked)
                        stream.seek(after)
                        run_start = after
                else:
                    self._step(name, arg)
        except _Unwalkable:
            raise
        except Exception as e:  # genops' ValueError for a bad opcode, a truncated one
            raise _Unwalkable(f"{e}") from None
        raise _Unwalkable("no STOP opcode")

    def _pop(self) -> Any:
        if not self.stack or (self.marks and len(self.stack) == self.marks[-1]):
            raise _Unwalkable("an opcode pops from an empty stack")
        return self.stack.pop()

    def _pop_mark(self) -> List[Any]:
        if not self.marks:
            raise _Unwalkable("no MARK")
        at = self.marks.pop()
        items = self.stack[at:]
        del self.stack[at:]
        return items

    def _top(self) -> Any:
        if not self.stack:
            raise _Unwalkable("an opcode uses an empty stack")
        return self.stack[-1]

    def _step(self, name: str, arg: Any) -> None:  # noqa: C901 (one branch per opcode)
        push = self.stack.append
        if name in _LITERALS:
            push({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}.get(name, arg))
        elif name == "EMPTY_TUPLE":
            push(())
        elif name == "EMPTY_LIST":
            push([])
        elif name == "EMPTY_DICT":
            push({})
        elif name in ("EMPTY_SET", "BYTEARRAY8", "NEXT_BUFFER", "PERSID"):
            push(_UNKNOWN)
        elif name == "MARK":
            self.marks.append(len(self.stack))
        elif name in ("TUPLE", "LIST", "FROZENSET", "POP_MARK", "ADDITEMS"):
            items = self._pop_mark()
            if name == "TUPLE":
                push(tuple(items))
            elif name == "LIST":
                push(items)
            elif name == "FROZENSET":
                push(_UNKNOWN)
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            count = int(name[-1])
            items = [self._pop() for _ in range(count)][::-1]
            push(tuple(items))
        elif name == "DICT":
            items = self._pop_mark()
            push(self._dict(items))
        elif name == "APPEND":
            value = self._pop()
            self._append(self._top(), [value])
        elif name == "APPENDS":
            items = self._pop_mark()
            self._append(self._top(), items)
        elif name == "SETITEM":
            value, key = self._pop(), self._pop()
            self._set(self._top(), [key, value])
        elif name == "SETITEMS":
            items = self._pop_mark()
            self._set(self._top(), items)
        elif name == "POP":
            if self.marks and len(self.stack) == self.marks[-1]:
                self.marks.pop()
            else:
                self._pop()
        elif name == "DUP":
            push(self._top())
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            self.memo[int(arg)] = self._top()
        elif name == "MEMOIZE":
            self.memo[len(self.memo)] = self._top()
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if int(arg) not in self.memo:
                raise _Unwalkable(f"memo key {arg} is not defined")
            push(self.memo[int(arg)])
        elif name == "GLOBAL":
            push(self._global(*arg.split(" ", 1)))
        elif name == "STACK_GLOBAL":
            attribute, module = self._pop(), self._pop()
            if not (isinstance(module, str) and isinstance(attribute, str)):
                raise _Unwalkable("an import computed at load time")
            push(self._global(module, attribute))
        elif name == "INST":
            self._pop_mark()
            push(_Object(self._global(*arg.split(" ", 1)), ()))
        elif name == "OBJ":
            items = self._pop_mark()
            if not items:
                raise _Unwalkable("OBJ with nothing to call")
            push(_Object(items[0], tuple(items[1:])))
        elif name in ("REDUCE", "NEWOBJ"):
            args, callable_ = self._pop(), self._pop()
            push(_Object(callable_, args))
        elif name == "NEWOBJ_EX":
            _kwargs, args, callable_ = self._pop(), self._pop(), self._pop()
            push(_Object(callable_, args))
        elif name == "BINPERSID":
            self._pop()
            push(_UNKNOWN)
        elif name == "PROTO":
            self.protocol = int(arg)
        elif name == "READONLY_BUFFER":
            pass
        else:  # EXT1/2/4: the object comes from copyreg's registry, not the file
            raise _Unwalkable(f"opcode {name}")

    def _global(self, module: str, name: str) -> _Global:
        """The global as the unpickler finds it: Python 2's names of protocols 0 to 2
        mapped to Python 3's, as pickle's fix_imports (joblib's default) does."""
        if self.protocol < 3:
            import _compat_pickle

            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        return _Global(f"{module}.{name}")

    @staticmethod
    def _dict(items: List[Any]) -> Any:
        result: Dict[Any, Any] = {}
        for key, value in zip(items[::2], items[1::2]):
            try:
                result[key] = value
            except TypeError:  # an unhashable key: not a wrapper's state
                return _UNKNOWN
        return result

    @staticmethod
    def _append(target: Any, items: List[Any]) -> None:
        if isinstance(target, list):
            target.extend(items)

    def _set(self, target: Any, items: List[Any]) -> None:
        if isinstance(target, dict):
            update = self._dict(items)
            if isinstance(update, dict):
                target.update(update)
                return
            target.clear()
            target[_UNKNOWN] = _UNKNOWN  # unknown keys: no longer a wrapper's state

    def _build(self) -> Optional[_Object]:
        """BUILD: the wrapper whose array data follows, if it built one."""
        state = self._pop()
        target = self._top()
        if not isinstance(target, _Object):
            return None
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = dict(state[0], **{str(k): v for k, v in dict(state[1] or {}).items()})
        if isinstance(state, dict):
            target.attributes.update(state)
        else:
            target.setstate = state
        name = _class_name(target)
        if name is None:
            return None
        if name == _JOBLIB_WRAPPER:
            self.stack[-1] = _UNKNOWN  # joblib replaces the wrapper with the array
            return target
        if name.endswith(".NumpyArrayWrapper"):  # another path to the same class
            raise _Unwalkable(f"an array wrapper imported as {name}")
        return None

    def _skip_array(self, wrapper: _Object, at: int, walked: _Walked) -> int:
        """The offset after the data of ``wrapper``'s array, which starts at ``at``."""
        walked.arrays += 1
        state = wrapper.attributes
        shape, dtype = state.get("shape"), state.get("dtype")
        if not (isinstance(shape, tuple) and all(_is_count(n) for n in shape)):
            raise _Unwalkable(f"an array wrapper with shape {shape!r}")
        itemsize, has_object = _dtype_layout(dtype)
        source = self.source
        if has_object:
            # joblib: pickle.load(file) reads the array of objects: a plain pickle.
            try:
                length = source.delimit(at)
            except Exception as e:
                raise _Unwalkable(f"no pickle for the object array at offset {at}: {e}") from None
            walked.nested.append((at, length))
            return at + length
        if state.get("numpy_array_alignment_bytes") is not None:
            if not source.has(at + 1):
                raise _Unwalkable(f"the array's padding at offset {at} is missing")
            at += 1 + source.byte(at)  # one byte: the padding's length
        count = 1
        for n in shape:
            count *= n
        size = count * itemsize
        if not source.has(at + size):
            raise _Unwalkable(f"the array at offset {at} needs {size} bytes: the file is too short")
        walked.raw_bytes += size
        return at + size


class _Recorded:
    """What a walk reads: complete bytes (``file`` None), or a stream read only as
    far as the walk asks, every byte kept, so that the walk never reads past the
    end of the pickle it walks (a socket's peer may be waiting for an answer)."""

    def __init__(self, file: Any, data: Any = b"") -> None:
        self.file = file
        self.data: Any = bytearray() if file is not None else data
        self.position = 0
        self.ended = file is None  # whether the stream has no more bytes

    def has(self, end: int) -> bool:
        """Whether the bytes up to ``end`` exist, reading the stream that far."""
        while self.file is not None and len(self.data) < end:
            chunk = self.file.read(min(end - len(self.data), 1 << 24))
            if not chunk:
                self.ended = True
                break
            self.data += chunk
        return len(self.data) >= end

    def byte(self, at: int) -> int:
        return int(self.data[at])

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            raise _Unwalkable("a read to the end of the stream")
        self.has(self.position + size)
        chunk = bytes(self.data[self.position : self.position + size])
        self.position += len(chunk)
        return chunk

    def readline(self) -> bytes:
        """A line of a text opcode (protocols 0 and 1): up to its newline only."""
        end = self.data.find(b"\n", self.position) if self.position < len(self.data) else -1
        while end < 0 and self.file is not None:
            line = self.file.readline() if hasattr(self.file, "readline") else self.file.read(1)
            if not line:
                self.ended = True
                break
            self.data += line
            end = self.data.find(b"\n", self.position)
        stop = len(self.data) if end < 0 else end + 1
        line = bytes(self.data[self.position : stop])
        self.position = stop
        return line

    def tell(self) -> int:
        return self.position

    def seek(self, position: int) -> None:
        self.position = position

    def delimit(self, at: int) -> int:
        """The length of the plain pickle at ``at``, as the Rust reader finds it."""
        if self.file is not None:
            import pickletools

            self.seek(at)
            for _ in pickletools.genops(self):  # type: ignore[arg-type]  # through its STOP
                pass
        length, _ = _core.delimit(self.data, at)
        return int(length)


def read_joblib_stream(file: Any) -> Tuple[bytes, str]:
    """Read from ``file``'s position the one joblib pickle (opcodes, and the raw
    array data between them) that joblib's unpickler would read, and no further,
    so that the stream stays where plain joblib leaves it. Returns the bytes read
    and what they are: "pickle" (exactly that pickle), "rest" (not one, and all
    the stream had: a truncated stream), or "head" (a construct the walk does not
    follow: the bytes read so far, which the caller must hand on ahead of the
    rest of the stream)."""
    recorded = _Recorded(file)
    try:
        walked, _ = _walk_one(recorded, 0)
        if walked.end == len(recorded.data):
            return bytes(recorded.data), "pickle"
    except Exception:  # _Unwalkable, the reader's errors
        pass
    return bytes(recorded.data), "rest" if recorded.ended else "head"


class Replay:
    """A binary stream that reads ``head`` first, then from ``file``: a stream's
    bytes that a walk read, handed back in front of the rest of it."""

    def __init__(self, head: bytes, file: Any) -> None:
        import io

        self._head = io.BytesIO(head)
        self._file = file
        self.name = getattr(file, "name", None)

    def read(self, size: int = -1) -> bytes:
        chunk = self._head.read(size)
        if size < 0:
            return chunk + self._file.read()
        if len(chunk) < size:
            chunk += self._file.read(size - len(chunk))
        return chunk

    def readline(self, size: int = -1) -> bytes:
        line = self._head.readline(size)
        if line.endswith(b"\n") or (size >= 0 and len(line) >= size):
            return line
        return line + self._file.readline(-1 if size < 0 else size - len(line))


# What protocols 0 and 1 (and copyreg) call to make an instance of a class given
# as the first argument.
_MAKERS = ("copyreg._reconstructor", "copyreg.__newobj__", "copyreg.__newobj_ex__")


def _class_name(made: _Object) -> Optional[str]:
    """The name of the class ``made`` is an instance of, if the walk knows it."""
    if not isinstance(made.callable, _Global):
        return None
    if made.callable.name in _MAKERS:
        args = made.args
        if isinstance(args, tuple) and args and isinstance(args[0], _Global):
            return args[0].name
        return None
    return made.callable.name


_LITERALS = {
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "STRING",
    "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
    "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "FLOAT", "BINFLOAT",
    "NONE", "NEWTRUE", "NEWFALSE",
}  # fmt: skip


def _is_count(n: Any) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def _dtype_layout(dtype: Any) -> Tuple[int, bool]:
    """(itemsize, whether it holds objects) of a pickled numpy dtype: numpy.dtype
    called with a type string, its state given by BUILD (numpy's
    arraydescr_setstate: version, byte order, subarray, names, fields, element
    size, alignment, flags[, metadata])."""
    if not (isinstance(dtype, _Object) and dtype.is_a("numpy.dtype")):
        raise _Unwalkable("an array wrapper whose dtype is not a numpy.dtype")
    args, state = dtype.args, dtype.setstate
    if not (isinstance(args, tuple) and args and isinstance(args[0], str)):
        raise _Unwalkable(f"a dtype made from {args!r}")
    if not (isinstance(state, tuple) and len(state) >= 8):
        raise _Unwalkable(f"a dtype with state {state!r}")
    kind = args[0].lstrip("<>|=")[:1]
    subarray, fields, elsize = state[2], state[4], state[5]
    has_object = kind == "O"
    for field in fields.values() if isinstance(fields, dict) else ():
        if not (isinstance(field, tuple) and field):
            raise _Unwalkable("a structured dtype with an unusual field")
        has_object = has_object or _dtype_layout(field[0])[1]
    if fields is not None and not isinstance(fields, dict):
        raise _Unwalkable("a structured dtype with unusual fields")
    if subarray is not None:
        if not (isinstance(subarray, tuple) and subarray):
            raise _Unwalkable("a dtype with an unusual subarray")
        has_object = has_object or _dtype_layout(subarray[0])[1]
    if _is_count(elsize):  # flexible types (strings, void, records) give their size
        return elsize, has_object
    digits = args[0].lstrip("<>|=")[1:]
    if elsize != -1 or not digits.isdigit():
        raise _Unwalkable(f"a dtype {args[0]!r} of unknown size")
    return int(digits), has_object
