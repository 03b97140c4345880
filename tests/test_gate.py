"""The gate: every loading entry point is guarded, listed pickles load, others never run."""

from __future__ import annotations

import json
import pickle

import pytest

from conftest import Boom, assert_fires, hostile, write_manifest

PRELUDE = """
import io, json, os, pickle, _pickle, sys
import pickleguard
from pickleguard import NoPickleError

class EarlyPy(pickle._Unpickler):
    "A pure-Python subclass defined before activation."
"""

# name -> expression that loads the pickle held in DATA
ENTRY_POINTS = {
    "pickle.loads": "pickle.loads(DATA)",
    "pickle.load": "pickle.load(io.BytesIO(DATA))",
    "pickle.Unpickler": "pickle.Unpickler(io.BytesIO(DATA)).load()",
    "pickle._loads": "pickle._loads(DATA)",
    "pickle._load": "pickle._load(io.BytesIO(DATA))",
    "pickle._Unpickler": "pickle._Unpickler(io.BytesIO(DATA)).load()",
    "_pickle.loads": "_pickle.loads(DATA)",
    "_pickle.load": "_pickle.load(io.BytesIO(DATA))",
    "_pickle.Unpickler": "_pickle.Unpickler(io.BytesIO(DATA)).load()",
    "pure-Python subclass defined before activation": "EarlyPy(io.BytesIO(DATA)).load()",
    # torch.load defines its UnpicklerWrapper like this, at call time.
    "subclass of pickle.Unpickler defined after activation": (
        "type('UnpicklerWrapper', (pickle.Unpickler,), {})(io.BytesIO(DATA)).load()"
    ),
    "loads with a memoryview": "pickle.loads(memoryview(DATA))",
    "loads with a bytearray": "pickle.loads(bytearray(DATA))",
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_unlisted_hostile_pickle_is_refused_at_every_entry_point(entry, run_py, tmp_path):
    # Technique: plain REDUCE of os.mkdir, the simplest code-execution payload.
    fired = tmp_path / "fired-without-guard"
    guarded = tmp_path / "fired-under-guard"
    (tmp_path / "control.pkl").write_bytes(hostile(fired, protocol=2))
    (tmp_path / "payload.pkl").write_bytes(hostile(guarded, protocol=2))
    manifest = write_manifest(tmp_path / "empty.toml")
    expr = ENTRY_POINTS[entry]
    proc = run_py(
        PRELUDE
        + f"""
DATA = open("control.pkl", "rb").read()
{expr}
assert os.path.exists({str(fired)!r}), "the payload must fire without the guard"
pickleguard.activate({str(manifest)!r})
DATA = open("payload.pkl", "rb").read()
try:
    {expr}
except NoPickleError as e:
    print(json.dumps({{"code": e.code, "sha256": e.sha256, "message": str(e)}}))
else:
    print(json.dumps({{"code": None}}))
"""
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == "not-listed"
    assert not guarded.exists()
    assert fired.exists()
    assert result["sha256"] in result["message"]
    assert "[[pickle]]" in result["message"]


def test_listed_pickle_loads_at_every_entry_point(run_py, tmp_path):
    value = {"weights": [1.0, 2.5], "name": "model", "shape": (2,)}
    data = pickle.dumps(value, protocol=4)
    import pickleguard

    digest = pickleguard.identify(data)
    manifest = write_manifest(tmp_path / "m.toml", {"sha256": digest, "note": "test weights"})
    (tmp_path / "ok.pkl").write_bytes(data)
    checks = "\n".join(
        f"assert {expr} == EXPECTED, {name!r}" for name, expr in ENTRY_POINTS.items()
    )
    run_py(
        PRELUDE
        + f"""
pickleguard.activate({str(manifest)!r})
DATA = open("ok.pkl", "rb").read()
EXPECTED = {value!r}
{checks}
"""
    )


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_every_protocol_is_refused_and_allowed_by_hash(protocol, run_py, tmp_path):
    sentinel = tmp_path / "sentinel"
    payload = hostile(sentinel, protocol=protocol)
    pickle.loads(payload)
    assert sentinel.exists(), "the payload must fire without the guard"
    sentinel.rmdir()
    (tmp_path / "p.pkl").write_bytes(payload)
    benign = pickle.dumps([1, "two", b"three", {4: 5.0}], protocol=protocol)
    (tmp_path / "b.pkl").write_bytes(benign)
    import pickleguard

    manifest = write_manifest(tmp_path / "m.toml", {"sha256": pickleguard.identify(benign)})
    run_py(
        PRELUDE
        + f"""
pickleguard.activate({str(manifest)!r})
assert pickle.loads(open("b.pkl", "rb").read()) == [1, "two", b"three", {{4: 5.0}}]
try:
    pickle.loads(open("p.pkl", "rb").read())
except NoPickleError:
    pass
else:
    raise SystemExit("not refused")
"""
    )
    assert not sentinel.exists()


def test_stack_pattern_restricts_where_a_pickle_loads(run_py, tmp_path):
    data = pickle.dumps({"a": 1})
    import pickleguard

    manifest = write_manifest(
        tmp_path / "m.toml",
        {"sha256": pickleguard.identify(data), "stack": ["app.models:load_*"]},
    )
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__init__.py").write_text("")
    (tmp_path / "app" / "models.py").write_text(
        "import pickle\n"
        "def load_weights(data):\n    return pickle.loads(data)\n"
        "def save_and_peek(data):\n    return pickle.loads(data)\n"
    )
    (tmp_path / "d.pkl").write_bytes(data)
    proc = run_py(
        PRELUDE
        + f"""
sys.path.insert(0, ".")
from app import models
pickleguard.activate({str(manifest)!r})
DATA = open("d.pkl", "rb").read()
assert models.load_weights(DATA) == {{"a": 1}}
try:
    models.save_and_peek(DATA)
except NoPickleError as e:
    print(e.code, e.caller)
try:
    pickle.loads(DATA)
except NoPickleError as e:
    print(e.code, e.caller)
"""
    )
    assert proc.stdout.split("\n")[:2] == [
        "stack-mismatch app.models:save_and_peek",
        "stack-mismatch __main__:<module>",
    ]


def test_manifest_none_is_nopickle_and_the_process_token_lifts_it(run_py, tmp_path):
    sentinel = tmp_path / "sentinel"
    (tmp_path / "p.pkl").write_bytes(hostile(sentinel))
    assert_fires(hostile(sentinel), sentinel)
    run_py(
        PRELUDE
        + """
token = pickleguard.activate()
data = pickle.dumps([1, 2, 3])
try:
    pickle.loads(data)
except NoPickleError as e:
    assert e.code == "no-manifest", e.code
else:
    raise SystemExit("nopickle allowed a load")
with pickleguard.allow_pickles(token):
    assert pickle.loads(data) == [1, 2, 3]
with pickleguard.allow_pickles(token, only_objects=[pickleguard.identify(data)]):
    assert pickle.loads(data) == [1, 2, 3]
    try:
        pickle.load(open("p.pkl", "rb"))
    except NoPickleError:
        pass
    else:
        raise SystemExit("only_objects let another pickle through")
try:
    pickle.loads(data)
except NoPickleError:
    pass
else:
    raise SystemExit("the grant outlived its block")
"""
    )
    assert not sentinel.exists()


def test_warn_mode_allows_and_reports(run_py, tmp_path):
    proc = run_py(
        PRELUDE
        + """
import logging
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
pickleguard.activate(mode="warn")
assert pickle.loads(pickle.dumps({"x": 1})) == {"x": 1}
"""
    )
    assert "WARNING pickleguard warn mode, allowed anyway" in proc.stderr
    assert "sha256:" in proc.stderr


def test_denials_are_logged_at_error(run_py):
    proc = run_py(
        PRELUDE
        + """
import logging
logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s %(message)s")
pickleguard.activate()
try:
    pickle.loads(pickle.dumps(1))
except NoPickleError:
    pass
"""
    )
    assert "ERROR pickleguard pickle sha256:" in proc.stderr


def test_allowed_loads_are_logged_at_debug(run_py, tmp_path):
    data = pickle.dumps(7)
    import pickleguard

    manifest = write_manifest(tmp_path / "m.toml", {"sha256": pickleguard.identify(data)})
    proc = run_py(
        PRELUDE
        + f"""
import logging
logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s %(message)s")
pickleguard.activate({str(manifest)!r})
assert pickle.loads({data!r}) == 7
"""
    )
    assert "DEBUG pickleguard allowed pickle sha256:" in proc.stderr


def test_broken_manifest_denies_everything_and_says_why(run_py, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('version = 1\n[[pickle]]\nsha256 = "not-hex"\n')
    proc = run_py(
        PRELUDE
        + f"""
from pickleguard import ManifestError
try:
    pickleguard.activate({str(bad)!r})
except ManifestError as e:
    print("activate:", str(e).splitlines()[0])
try:
    pickle.loads(pickle.dumps(1))
except NoPickleError as e:
    print("load:", e.code)
"""
    )
    out = proc.stdout.splitlines()
    assert out[0].startswith(f"activate: {bad}:3:10: sha256 must be 64 hex digits")
    assert out[1] == "load: broken-manifest"


def test_missing_manifest_file_denies_everything(run_py, tmp_path):
    proc = run_py(
        PRELUDE
        + """
from pickleguard import ManifestError
try:
    pickleguard.activate("does-not-exist.toml")
except ManifestError as e:
    print("activate:", e)
try:
    pickle.loads(pickle.dumps(1))
except NoPickleError as e:
    print("load:", e.code)
"""
    )
    assert "could not read the manifest" in proc.stdout
    assert "load: broken-manifest" in proc.stdout


def test_later_activation_can_only_tighten(run_py, tmp_path):
    data = pickle.dumps("ok")
    import pickleguard

    listed = write_manifest(tmp_path / "m.toml", {"sha256": pickleguard.identify(data)})
    empty = write_manifest(tmp_path / "empty.toml")
    run_py(
        PRELUDE
        + f"""
pickleguard.activate({str(listed)!r})
assert pickle.loads({data!r}) == "ok"
pickleguard.activate({str(empty)!r})
try:
    pickle.loads({data!r})
except NoPickleError:
    pass
else:
    raise SystemExit("a stricter layer was ignored")
# A looser activation (warn mode, or a manifest listing everything) does not loosen.
pickleguard.activate(mode="warn")
pickleguard.activate({str(listed)!r})
try:
    pickle.loads({data!r})
except NoPickleError:
    pass
else:
    raise SystemExit("a later activation loosened the policy")
"""
    )


def test_malformed_input_is_never_run_and_raises_like_plain_pickle(run_py, tmp_path):
    # Technique: a payload with no STOP. Plain pickle runs the REDUCE, then fails.
    fired = tmp_path / "fired"
    guarded = tmp_path / "guarded"
    with pytest.raises((pickle.UnpicklingError, EOFError)):
        pickle.loads(hostile(fired, protocol=0)[:-1])
    assert fired.exists(), "the truncated payload must fire without the guard"
    (tmp_path / "truncated.pkl").write_bytes(hostile(guarded, protocol=0)[:-1])
    run_py(
        PRELUDE
        + r"""
TRUNCATED = open("truncated.pkl", "rb").read()
MALFORMED = [b"", b"\x80\x04", b"zz", b"(.", b"0.", b"\x80\x02]\x94.", b"Vlist\n\x93",
             b"cbuiltins\nlist\n)(R", b"S'abc\n.", b"I12x\n."]
# Truncated checkpoints: class instances cut before STOP, at and inside an opcode.
# Matched exactly for the C unpickler; the pure-Python one accepts a last line with
# no newline, so there only "an EOFError or UnpicklingError" is required.
import collections, fractions
TRUNCATED_CHECKPOINTS = []
for obj in (collections.OrderedDict(a=1), fractions.Fraction(1, 3)):
    for proto in (0, 2, 4):
        full = pickle.dumps(obj, protocol=proto)
        TRUNCATED_CHECKPOINTS += [full[:-1], full[:-3]]
# A FRAME longer than the data: the C unpickler calls it truncated, the pure-Python
# one reads what is there. pickleguard refuses it like the C unpickler, everywhere.
SHORT_FRAME = b"\x95\x09\x00\x00\x00\x00\x00\x00\x00N."

def outcome(load, data):
    try:
        return ("value", repr(load(data)))
    except Exception as e:
        return ("error", type(e).__name__)

def loaders():
    return {
        "loads": pickle.loads,
        "py": pickle._loads,
        "load": lambda d: pickle.load(io.BytesIO(d)),
        "Unpickler": lambda d: pickle.Unpickler(io.BytesIO(d)).load(),
    }

plain = {(name, d): outcome(f, d) for name, f in loaders().items() for d in MALFORMED}
for extra in [SHORT_FRAME] + TRUNCATED_CHECKPOINTS:
    plain.update({(name, extra): outcome(f, extra) for name, f in loaders().items() if name != "py"})
pickleguard.activate(mode="warn")
for (name, d), expected in plain.items():
    got = outcome(loaders()[name], d)
    assert got == expected, (name, d, got, expected)
for name, load in loaders().items():
    assert outcome(load, TRUNCATED)[0] == "error", name
    for data in TRUNCATED_CHECKPOINTS:
        assert outcome(load, data)[1] in ("EOFError", "UnpicklingError"), (name, data)
    assert outcome(load, SHORT_FRAME) == ("error", "UnpicklingError"), name
"""
    )
    assert not guarded.exists()


def test_undelimited_input_is_explained_without_allocating(run_py):
    # Technique: a truncated pickle whose REDUCE would build bytearray(2**40). The
    # dry run that explains undelimited input must not call it.
    run_py(
        PRELUDE
        + r"""
pickleguard.activate()
data = b"cbuiltins\nbytearray\n(\x8a\x06\x00\x00\x00\x00\x00\x01tR"
for load in (pickle.loads, pickle._loads):
    try:
        load(data)
    except (pickle.UnpicklingError, EOFError):
        pass
"""
    )


def test_errors_do_not_derive_from_exceptions_libraries_swallow():
    from pickleguard import BadTokenError, ManifestError, NoPickleError, PickleGuardError

    swallowed = (pickle.UnpicklingError, ValueError, TypeError, AttributeError, ImportError)
    for cls in (PickleGuardError, NoPickleError, BadTokenError, ManifestError):
        assert not issubclass(cls, swallowed), cls
        assert issubclass(cls, PickleGuardError)


def test_guarded_functions_do_not_bind_as_methods(run_py):
    # multiprocessing's ForkingPickler and test suites store pickle.loads on classes.
    run_py(
        PRELUDE
        + """
pickleguard.activate(mode="warn")
class Holder:
    loads = pickle.loads
    load = pickle.load
assert Holder().loads(pickle.dumps(3)) == 3
assert Holder().load(io.BytesIO(pickle.dumps(4))) == 4
"""
    )


# Readers of large inputs: the whole input is judged first, then (if that does not
# allow it) the delimited pickle. `bytes`, and for `load` files of io's own types
# at their start (BytesIO; open(path, "rb") for a framed pickle), are looked at
# whole; any other input is read pickle by pickle.
LARGE_READERS = {
    "loads": "pickle.loads(open(PATH, 'rb').read() + TAIL)",
    "load, buffered file": "pickle.load(F := open(PATH, 'rb'))",
    "load, raw file": "pickle.load(F := open(PATH, 'rb', buffering=0))",
    "Unpickler, BytesIO": "pickle.Unpickler(F := io.BytesIO(open(PATH, 'rb').read())).load()",
}


@pytest.mark.parametrize("reader", LARGE_READERS)
def test_large_inputs_are_judged_by_the_pickle_they_hold(reader, run_py, tmp_path):
    # Technique: put a hostile pickle right after a listed one, in one file or one
    # bytes object, and hope the guard judges (or runs) more than the first pickle.
    sentinel = tmp_path / "sentinel"
    big_hostile = pickle.dumps(["padding" * 1000, Boom(sentinel)], protocol=4)
    assert len(big_hostile) > 4096
    assert_fires(big_hostile, sentinel)
    benign_value = [{"k%d" % i: [i, float(i), str(i)] * 3} for i in range(200)]
    benign = pickle.dumps(benign_value, protocol=4)
    assert len(benign) > 4096
    import pickleguard

    manifest = write_manifest(tmp_path / "m.toml", {"sha256": pickleguard.identify(benign)})
    (tmp_path / "listed-then-hostile.pkl").write_bytes(benign + big_hostile)
    (tmp_path / "hostile.pkl").write_bytes(big_hostile)
    expr = LARGE_READERS[reader]
    proc = run_py(
        PRELUDE
        + f"""
pickleguard.activate({str(manifest)!r})
F = None
PATH, TAIL = "listed-then-hostile.pkl", b""
assert {expr} == {benign_value!r}
# The position is right after the listed pickle, as plain pickle leaves it.
assert F is None or F.tell() == {len(benign)}, F.tell()
if F is not None:
    try:
        pickle.load(F)
    except NoPickleError as e:
        assert e.identity == pickleguard.identify(open("hostile.pkl", "rb").read())
    else:
        raise SystemExit("the second pickle was not refused")
PATH, TAIL = "hostile.pkl", b"more bytes"
try:
    {expr}
except NoPickleError as e:
    # The identity is the pickle's own, not the whole input's.
    assert e.identity == pickleguard.identify(open("hostile.pkl", "rb").read()), e.identity
    print("refused")
"""
    )
    assert proc.stdout.strip().splitlines()[-1] == "refused"
    assert not sentinel.exists()


def test_an_entry_for_a_pickle_with_bytes_after_it_leaves_the_file_after_the_pickle(
    run_py, tmp_path
):
    # An entry is the hash of exactly one pickle. One made by hand for a whole file
    # that holds more (`sha256sum` pasted into a [[pickle]] entry) admits that file
    # to `load` and `Unpickler.load`, which still read only the pickle and leave the
    # file right after it. The pickle alone is not what the entry names, and a second
    # load of the same unpickler reads only the bytes after it, as plain pickle does.
    import hashlib

    pickled = pickle.dumps(list(range(3000)), protocol=4)
    data = pickled + b"trailing bytes"
    manifest = write_manifest(tmp_path / "m.toml", {"sha256": hashlib.sha256(data).hexdigest()})
    (tmp_path / "f.bin").write_bytes(data)
    run_py(
        PRELUDE
        + f"""
pickleguard.activate({str(manifest)!r})
assert pickle.loads(open("f.bin", "rb").read()) == list(range(3000))
for f in (open("f.bin", "rb"), io.BytesIO(open("f.bin", "rb").read())):
    assert pickle.load(f) == list(range(3000))
    assert f.read() == b"trailing bytes"
    f.seek(0)
    unpickler = pickle.Unpickler(f)
    assert unpickler.load() == list(range(3000))
    assert f.tell() == {len(pickled)}
    try:
        unpickler.load()
    except pickle.UnpicklingError as e:
        # What plain pickle raises on the bytes left.
        assert "invalid load key" in str(e), e
    else:
        raise SystemExit("the bytes after the pickle loaded")
    f.seek({len(pickled)})
    try:
        pickle.loads(f.read())
    except pickle.UnpicklingError:
        pass
try:
    pickle.loads(open("f.bin", "rb").read()[:{len(pickled)}])
except NoPickleError:
    pass
else:
    raise SystemExit("the pickle alone was admitted by the entry of more bytes")
"""
    )


def test_large_pickles_load_from_a_pipe(run_py, tmp_path):
    # A pipe cannot tell its position: it is read pickle by pickle, as ever.
    value = list(range(5000))
    data = pickle.dumps(value, protocol=4) * 2
    import pickleguard

    digest = pickleguard.identify(pickle.dumps(value, protocol=4))
    manifest = write_manifest(tmp_path / "m.toml", {"sha256": digest})
    (tmp_path / "two.pkl").write_bytes(data)
    run_py(
        PRELUDE
        + f"""
import threading
pickleguard.activate({str(manifest)!r})
r, w = os.pipe()
def write():
    with os.fdopen(w, "wb") as f:
        f.write(open("two.pkl", "rb").read())
threading.Thread(target=write).start()
with os.fdopen(r, "rb") as f:
    assert pickle.load(f) == {value!r}
    assert pickle.Unpickler(f).load() == {value!r}
    assert f.read() == b""
"""
    )


class _Call:
    """Pickles to a REDUCE of `function(*args)`."""

    def __init__(self, function, *args):  # type: ignore[no-untyped-def]
        self.function, self.args = function, args

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (self.function, self.args)


def test_bytes_changed_after_the_whole_look_are_never_run(run_py, tmp_path):
    # Technique: TOCTOU. A warn layer makes the whole look fall through to
    # delimiting; meanwhile another thread overwrites the BytesIO (through
    # getbuffer, while the whole input is hashed without the GIL) with a hostile
    # pickle of the same length, hoping the second look reuses the first hash.
    import os

    sentinel = tmp_path / "sentinel"
    padding = ["x%d" % i for i in range(20_000)]  # over 64 KiB: hashed without the GIL
    # fspath is one letter longer than mkdir, its argument one letter shorter.
    listed = pickle.dumps([_Call(os.fspath, str(sentinel)[:-1]), padding], protocol=4)
    evil = pickle.dumps([_Call(os.mkdir, str(sentinel)), padding], protocol=4)
    assert len(listed) == len(evil)
    assert_fires(evil, sentinel)
    import pickleguard

    manifest = write_manifest(tmp_path / "m.toml", {"sha256": pickleguard.identify(listed)})
    (tmp_path / "listed.pkl").write_bytes(listed)
    (tmp_path / "evil.pkl").write_bytes(evil)
    proc = run_py(
        PRELUDE
        + f"""
import threading
pickleguard.activate({str(manifest)!r})
pickleguard.activate(mode="warn")
LISTED, EVIL = open("listed.pkl", "rb").read(), open("evil.pkl", "rb").read()
outcomes = []
for _ in range(5):
    f = io.BytesIO(LISTED)
    def overwrite():
        while f.tell() != len(LISTED):
            pass
        with f.getbuffer() as view:
            view[:] = EVIL
    t = threading.Thread(target=overwrite)
    t.start()
    try:
        outcomes.append(pickle.load(f)[0])
    except NoPickleError:
        outcomes.append("refused")
    t.join()
print(json.dumps(outcomes))
"""
    )
    outcomes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(outcomes) <= {str(sentinel)[:-1], "refused"}, outcomes
    assert not sentinel.exists()


def test_a_frame_running_past_stop_never_runs_its_tail(run_py, tmp_path):
    # Technique: a listed input (here pinned by hand, by its whole hash) whose one
    # frame holds "N." and then more opcodes: a reused unpickler keeps the rest of
    # the frame and would run it on its next load.
    import struct
    import subprocess
    import sys

    sentinel = tmp_path / "sentinel"
    body = b"N0" * 2100 + b"N." + b"cposix\nmkdir\n(V" + str(sentinel).encode() + b"\ntR."
    data = b"\x80\x04\x95" + struct.pack("<Q", len(body)) + body
    (tmp_path / "frame.pkl").write_bytes(data)
    plain = "import io, pickle; u = pickle.Unpickler(io.BytesIO(open('frame.pkl', 'rb').read()))\n"
    plain += "u.load(); u.load()"
    subprocess.run([sys.executable, "-c", plain], cwd=tmp_path, check=True)
    assert sentinel.exists(), "the hidden tail must run without the guard"
    sentinel.rmdir()
    import hashlib

    manifest = write_manifest(tmp_path / "m.toml", {"sha256": hashlib.sha256(data).hexdigest()})
    run_py(
        PRELUDE
        + f"""
pickleguard.activate({str(manifest)!r})
DATA = open("frame.pkl", "rb").read()
u = pickle.Unpickler(io.BytesIO(DATA))
for _ in range(2):
    try:
        u.load()
    except (pickle.UnpicklingError, EOFError):
        pass
assert pickle.load(io.BytesIO(DATA)) is None
assert pickle.loads(DATA) is None
"""
    )
    assert not sentinel.exists()


def _frame(body: bytes) -> bytes:
    import struct

    return b"\x95" + struct.pack("<Q", len(body)) + body


# A whole file pinned by its hash (by hand) and fed to Unpickler at once: each
# hides opcodes past STOP in the frame STOP is read in, where a reused unpickler
# (its next load(), or the C base's load() called by name) would run them.
def _hidden_tails(sentinel) -> dict:
    tail = b"cposix\nmkdir\n(V" + str(sentinel).encode() + b"\ntR."
    filler = b"N0" * 2100
    return {
        "one frame": b"\x80\x04" + _frame(filler + b"N." + tail),
        "the last of two frames": b"\x80\x04" + _frame(filler) + _frame(b"N." + tail),
        # The pickle imports a callable and keeps it in the memo; the tail calls it
        # from there, importing nothing itself.
        "a callable in the memo": b"\x80\x04"
        + _frame(filler + b"cposix\nmkdir\n\x940N.h\x00(V" + str(sentinel).encode() + b"\ntR."),
        # The load raises before STOP (a bad memo get), and the next one stops at
        # STOP: the tail waits in the frame for the third.
        "a load that raises": b"\x80\x04" + _frame(filler + b"h\x07N." + tail),
    }


@pytest.mark.parametrize(
    "case", ["one frame", "the last of two frames", "a callable in the memo", "a load that raises"]
)
@pytest.mark.parametrize("opener", ["open", "BytesIO"])
@pytest.mark.parametrize("second", ["load()", "the C base's load(u)"])
def test_a_whole_file_fed_at_once_leaves_no_tail_past_stop(case, opener, second, run_py, tmp_path):
    import hashlib
    import subprocess
    import sys

    sentinel = tmp_path / "sentinel"
    data = _hidden_tails(sentinel)[case]
    (tmp_path / "tail.pkl").write_bytes(data)
    plain = (
        "import io, pickle\nu = pickle.Unpickler(io.BytesIO(open('tail.pkl', 'rb').read()))\n"
        "for _ in range(3):\n    try:\n        u.load()\n    except Exception:\n        pass\n"
    )
    subprocess.run([sys.executable, "-c", plain], cwd=tmp_path, check=True)
    assert sentinel.exists(), "the hidden tail must run without the guard"
    sentinel.rmdir()
    manifest = write_manifest(tmp_path / "m.toml", {"sha256": hashlib.sha256(data).hexdigest()})
    f = (
        "open('tail.pkl', 'rb')"
        if opener == "open"
        else "io.BytesIO(open('tail.pkl', 'rb').read())"
    )
    # The C class itself (`_pickle.Unpickler` names the guarded one once active).
    second_load = "u.load()" if second == "load()" else "pickle.Unpickler.__mro__[1].load(u)"
    run_py(
        PRELUDE
        + f"""
pickleguard.activate({str(manifest)!r})
assert pickle.Unpickler.__mro__[1] is sys.modules["_pickle"].__dict__["Unpickler"].__mro__[1]
assert type(pickle.Unpickler.__mro__[1].load).__name__ == "method_descriptor"
class Sub(pickle.Unpickler):
    def load(self):
        return super().load()
for cls in (pickle.Unpickler, Sub):
    u = cls({f})
    try:
        u.load()
    except (pickle.UnpicklingError, EOFError, KeyError):
        pass
    else:
        raise SystemExit("a pickle with opcodes past its STOP loaded")
    for _ in range(2):
        try:
            value = {second_load}
        except (pickle.UnpicklingError, EOFError, KeyError, NoPickleError):
            pass
        else:
            # The C base, which the gate does not start, may still build the literal
            # left before the tail (here None), but imports nothing and finds no
            # callable in the memo; a guarded load refuses.
            if {second == "load()"} or value is not None:
                raise SystemExit("a later load of that unpickler loaded")
"""
    )
    assert not sentinel.exists()


def test_a_whole_file_fed_at_once_keeps_the_memo_for_the_next_load(run_py, tmp_path):
    # Two pickles from one Pickler (the second refers to the first's memo) in a
    # file pinned whole by hand, and the second pinned too: the unpickler loads
    # the first from the whole file, then the second from where the first ended,
    # with the memo plain pickle keeps between loads.
    import hashlib
    import io

    shared = [str(i) for i in range(2000)]
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=4)
    pickler.dump(shared)
    first = buffer.tell()
    pickler.dump({"again": shared})
    data = buffer.getvalue()
    (tmp_path / "two.pkl").write_bytes(data)
    manifest = write_manifest(
        tmp_path / "m.toml",
        {"sha256": hashlib.sha256(data).hexdigest()},
        {"sha256": hashlib.sha256(data[first:]).hexdigest()},
    )
    run_py(
        PRELUDE
        + f"""
pickleguard.activate({str(manifest)!r})
for f in (open("two.pkl", "rb"), io.BytesIO(open("two.pkl", "rb").read())):
    u = pickle.Unpickler(f)
    one = u.load()
    assert one == [str(i) for i in range(2000)] and f.tell() == {first}
    two = u.load()
    assert two == {{"again": one}} and two["again"] is one
    assert f.tell() == {len(data)}
    try:
        u.load()
    except EOFError:
        pass
    else:
        raise SystemExit("a load past the end")
"""
    )
