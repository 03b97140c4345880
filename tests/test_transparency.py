"""An allowed load behaves exactly like plain pickle: values, exceptions, positions."""

from __future__ import annotations

from conftest import assert_fires, hostile

PRELUDE = """
import io, os, pickle, _pickle, sys
import pickleguard
from pickleguard import NoPickleError, allow_pickles

class OneWayStream:
    "A non-seekable stream that records every call and how far it was read."
    def __init__(self, data):
        self._data, self.pos, self.calls = data, 0, []
    def read(self, n=-1):
        n = len(self._data) - self.pos if n is None or n < 0 else n
        chunk = self._data[self.pos:self.pos + n]
        self.pos += len(chunk)
        self.calls.append(("read", n))
        return chunk
    def readline(self):
        end = self._data.find(b"\\n", self.pos)
        end = len(self._data) if end < 0 else end + 1
        chunk = self._data[self.pos:end]
        self.pos = end
        self.calls.append(("readline",))
        return chunk
    def seekable(self):
        return False

def positions(load_one, data, count):
    "Load `count` pickles from one stream; return values, positions and the error."
    f = io.BytesIO(data)
    out = []
    for _ in range(count):
        try:
            out.append((repr(load_one(f)), f.tell()))
        except Exception as e:
            out.append((type(e).__name__, f.tell()))
    return out

# Concatenated pickles of every protocol, as a file of many pickles holds them.
OBJECTS = [None, 1, -(2**70), 3.5, "text", b"bytes", bytearray(b"ba"), [1, [2]], (1,), {"k": (1, 2)},
           {1, 2}, frozenset({3}), True, "x" * 70000, b"y" * 100000]
STREAM = b"".join(pickle.dumps(o, protocol=p) for p in range(pickle.HIGHEST_PROTOCOL + 1) for o in OBJECTS)
COUNT = (pickle.HIGHEST_PROTOCOL + 1) * len(OBJECTS) + 1  # one more: EOF

def plain_and_guarded(check):
    plain = check()
    token = pickleguard.activate()
    with allow_pickles(token):
        guarded = check()
    assert plain == guarded, (plain, guarded)
"""


def test_file_positions_match_plain_pickle_for_concatenated_pickles(run_py):
    run_py(
        PRELUDE
        + """
def check():
    return {
        "load": positions(lambda f: pickle.load(f), STREAM, COUNT),
        "_load": positions(lambda f: pickle._load(f), STREAM, COUNT),
        "_pickle.load": positions(lambda f: _pickle.load(f), STREAM, COUNT),
    }
plain_and_guarded(check)
"""
    )


def test_file_positions_match_plain_pickle_on_buffered_files(run_py):
    # open(path, "rb") buffers: a pickle that lies whole in the buffer is delimited
    # there; one that straddles the buffer's end (a small buffer here) is read
    # opcode by opcode. Either way the file ends up where plain pickle leaves it.
    run_py(
        PRELUDE
        + """
with open("stream.bin", "wb") as f:
    f.write(STREAM)

def on_file(load_one, buffering):
    f = open("stream.bin", "rb", buffering=buffering)
    out = []
    for _ in range(COUNT):
        try:
            out.append((repr(load_one(f)), f.tell()))
        except Exception as e:
            out.append((type(e).__name__, f.tell()))
    return out

def check():
    return {
        (name, buffering): on_file(load_one, buffering)
        for buffering in (-1, 64)
        for name, load_one in [
            ("load", lambda f: pickle.load(f)),
            ("Unpickler", lambda f: pickle.Unpickler(f).load()),
            ("_load", lambda f: pickle._load(f)),
        ]
    }
plain_and_guarded(check)
"""
    )


def test_short_reads_end_the_input_as_in_plain_pickle(run_py):
    # A file object whose read(n) returns less than asked (and never runs dry):
    # the C unpickler takes a short read as the end of the data. The guard must
    # too, not ask again and again: here it would never stop.
    run_py(
        PRELUDE
        + """
import signal, struct
signal.alarm(60)

class Dribble:
    "Serves the pickle's head in full, then one x per read(n), forever."
    def __init__(self, head):
        self.head, self.pos = head, 0
    def read(self, n=-1):
        if self.pos < len(self.head):
            chunk = self.head[self.pos:self.pos + n]
            self.pos += len(chunk)
            return chunk
        return b"x"
    def readline(self):
        return self.read(1)

HEAD = bytes([0x80, 4, 0x8E]) + struct.pack("<Q", 1 << 40)  # BINBYTES8 of 1 TiB, then x...

def outcome(load_one):
    try:
        return repr(load_one(Dribble(HEAD)))
    except Exception as e:
        return f"{type(e).__name__}: {e}"

token = pickleguard.activate()
with allow_pickles(token):
    outcomes = [
        outcome(lambda f: pickle.load(f)),
        outcome(lambda f: pickle.Unpickler(f).load()),
        outcome(lambda f: pickle._load(f)),
    ]
# Plain pickle raises MemoryError (C: it allocates the claimed 1 TiB first) or
# KeyError (Python: it reads on); the guard ends at the first short read.
assert outcomes == ["UnpicklingError: pickle data was truncated"] * 3, outcomes
"""
    )


def test_one_unpickler_reads_many_pickles_and_keeps_its_memo(run_py):
    run_py(
        PRELUDE
        + """
def check():
    shared = ["shared"]
    buf = io.BytesIO()
    p = pickle.Pickler(buf, protocol=2)
    p.dump(shared)
    p.dump({"again": shared})  # refers to the first dump through the memo
    p.dump(shared)
    results = []
    for cls in (pickle.Unpickler, pickle._Unpickler):
        u = cls(io.BytesIO(buf.getvalue()))
        a, b, c = u.load(), u.load(), u.load()
        results.append((a, b, a is b["again"], a is c))
        try:
            u.load()
        except EOFError:
            results.append("EOF")
    return results
plain_and_guarded(check)
"""
    )


def test_non_seekable_stream_is_never_read_past_the_pickle(run_py):
    run_py(
        PRELUDE
        + """
def check():
    out = []
    for load in (pickle.load, pickle._load, lambda f: pickle.Unpickler(f).load()):
        s = OneWayStream(STREAM)
        for _ in range(COUNT - 1):
            before = s.pos
            load(s)
            out.append(s.pos)
    return out
plain_and_guarded(check)
"""
    )


def test_a_file_that_changes_between_reads_cannot_smuggle_bytes(run_py, tmp_path):
    # Technique: TOCTOU. The source serves a benign pickle to the first reader and a
    # payload to any second one. pickleguard reads once and runs only those bytes.
    sentinel = tmp_path / "sentinel"
    (tmp_path / "p.pkl").write_bytes(hostile(sentinel))
    assert_fires(hostile(sentinel), sentinel)
    run_py(
        PRELUDE
        + """
BENIGN = pickle.dumps(["benign"], protocol=2)
EVIL = open("p.pkl", "rb").read()

class Shifty:
    "Serves BENIGN to the first pass over the data, EVIL afterwards."
    def __init__(self):
        self.passes = 0
        self.stream = OneWayStream(BENIGN)
    def read(self, n=-1):
        chunk = self.stream.read(n)
        if self.stream.pos >= len(BENIGN):
            self.passes += 1
            self.stream = OneWayStream(EVIL)
        return chunk
    def readline(self):
        return self.stream.readline()

manifest = open("m.toml", "w")
manifest.write('version = 1\\n[[pickle]]\\nsha256 = "%s"\\n' % pickleguard.identify(BENIGN))
manifest.close()
pickleguard.activate("m.toml")
f = Shifty()
assert pickle.load(f) == ["benign"]
assert pickle.Unpickler(Shifty()).load() == ["benign"]
assert pickle._Unpickler(Shifty()).load() == ["benign"]
"""
    )
    assert not sentinel.exists()


def test_out_of_band_buffers_are_part_of_the_identity(run_py, tmp_path):
    run_py(
        PRELUDE
        + """
buffers = []
data = pickle.dumps([pickle.PickleBuffer(bytearray(b"weights")), "meta"], protocol=5,
                    buffer_callback=buffers.append)
digest = pickleguard.identify(data, buffers)
assert digest != pickleguard.identify(data)
with open("m.toml", "w") as m:
    m.write('version = 1\\n[[pickle]]\\nsha256 = "%s"\\n' % digest)
pickleguard.activate("m.toml")
value = pickle.loads(data, buffers=buffers)
assert bytes(value[0]) == b"weights" and value[1] == "meta"
value = pickle.load(io.BytesIO(data), buffers=iter(buffers))
assert bytes(value[0]) == b"weights"
value = pickle.Unpickler(io.BytesIO(data), buffers=buffers).load()
assert bytes(value[0]) == b"weights"
# Swapping the buffer's contents changes the identity: refused.
for load in (lambda: pickle.loads(data, buffers=[bytearray(b"tampers")]),
             lambda: pickle.Unpickler(io.BytesIO(data), buffers=[bytearray(b"tampers")]).load()):
    try:
        load()
    except NoPickleError:
        pass
    else:
        raise SystemExit("tampered out-of-band buffer loaded")
"""
    )


def test_out_of_band_buffer_objects_are_passed_through_unchanged(run_py):
    run_py(
        PRELUDE
        + """
def check():
    buffers = []
    obj = pickle.PickleBuffer(bytearray(b"zero-copy"))
    data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    new = pickle.loads(data, buffers=buffers)
    missing = None
    try:
        pickle.loads(data)
    except Exception as e:
        missing = type(e).__name__
    return (new is buffers[0], bytes(new), missing)
plain_and_guarded(check)
"""
    )


def test_subclass_overrides_of_find_class_and_persistent_load(run_py):
    run_py(
        PRELUDE
        + """
class Remap:
    pass

def check():
    out = []
    for base in (pickle.Unpickler, pickle._Unpickler):
        class Custom(base):
            def find_class(self, module, name):
                if name == "Remap":
                    return dict
                return super().find_class(module, name)
            def persistent_load(self, pid):
                return ("persisted", pid)
        class Pick(pickle.Pickler):
            def persistent_id(self, obj):
                return "pid-1" if obj == "external" else None
        buf = io.BytesIO()
        Pick(buf, protocol=2).dump([Remap, "external"])
        out.append(Custom(io.BytesIO(buf.getvalue())).load())
    return out
plain_and_guarded(check)
"""
    )


def test_unpickler_init_not_called_raises_like_plain(run_py):
    run_py(
        PRELUDE
        + """
def check():
    out = []
    for base in (pickle.Unpickler, pickle._Unpickler):
        class NoInit(base):
            def __init__(self, file):
                pass
        try:
            NoInit(io.BytesIO(pickle.dumps(1))).load()
        except Exception as e:
            out.append((type(e).__name__, str(e)))
    return out
plain_and_guarded(check)
"""
    )


def test_keyword_arguments_pass_through(run_py):
    run_py(
        PRELUDE
        + """
PY2_STR = b"U\\x05hello."  # a protocol-0/1 str from Python 2
PY2_GLOBAL = b"c__builtin__\\nset\\n(]K\\x01a\\x85R."  # fix_imports maps __builtin__
def check():
    out = []
    for kwargs in ({}, {"encoding": "bytes"}, {"encoding": "latin1"}, {"fix_imports": False},
                   {"errors": "ignore", "encoding": "ascii"}, {"bogus": 1}):
        for data in (PY2_STR, PY2_GLOBAL):
            for load in (lambda d: pickle.loads(d, **kwargs), lambda d: pickle.load(io.BytesIO(d), **kwargs),
                         lambda d: pickle.Unpickler(io.BytesIO(d), **kwargs).load()):
                try:
                    out.append(repr(load(data)))
                except Exception as e:
                    out.append(type(e).__name__)
    for bad in ("text", 3, None):
        try:
            pickle.loads(bad)
        except Exception as e:
            out.append((type(e).__name__, str(e)))
    try:
        pickle.load(object())
    except Exception as e:
        out.append((type(e).__name__, str(e)))
    return out
plain_and_guarded(check)
"""
    )


def test_a_subclass_that_skips_the_guarded_init_cannot_load(run_py):
    # Technique: initialise the C base class directly, leaving the guarded
    # Unpickler with no verified input, then call load().
    run_py(
        PRELUDE
        + """
token = pickleguard.activate()
class Sneaky(pickle.Unpickler):
    def __init__(self, f):
        pickle.Unpickler.__base__.__init__(self, f)
try:
    Sneaky(io.BytesIO(pickle.dumps([1]))).load()
except pickle.UnpicklingError as e:
    assert "__init__() was not called" in str(e), e
else:
    raise SystemExit("loaded without verification")
"""
    )


def test_the_guarded_loaders_pickle_by_reference_as_pickles_own(run_py):
    """Code that pickles `pickle.loads` (dask sends `cloudpickle.loads` to its
    workers) must get the guarded function back, not a reference to pickleguard's
    internals that the backstop refuses."""
    result = run_py(
        """
        import pickle, pickleguard
        token = pickleguard.activate(None)
        for obj in (pickle.loads, pickle.load, pickle.Unpickler):
            data = pickle.dumps(obj)
            assert b"pickleguard" not in data, data
            with pickleguard.allow_pickles(token):
                print(pickle.loads(data) is obj)
        """
    )
    assert result.stdout.split() == ["True"] * 3
