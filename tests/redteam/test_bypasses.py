"""Red team: ways around the gate that the basic entry-point tests do not try.

Bypasses already covered elsewhere are not repeated: loaders bound before
activation, a second _pickle, reloading pickle (tests/test_backstop.py); copied or
pickled tokens (tests/test_tokens.py); a file whose read() changes between reads
(tests/test_transparency.py); a looser activation after a strict one
(tests/test_gate.py); a pickle importing pickleguard._core (tests/test_backstop.py).
"""

from __future__ import annotations

import json
import pickle
import struct

import pytest

import pickleguard

from ._harness import (
    REDUCE,
    STOP,
    TUPLE1,
    asm,
    binbytes,
    ext1,
    fire_then_refuse,
    global_,
    mkdir_reduce,
    proto,
    reduce_payload,
    scenario,
    unicode,
)


def hexdigest(data: bytes) -> str:
    return pickleguard.identify(data)[len("sha256:") :]


# ---------------------------------------------------------------------------
# Grants held by one thread or task do not reach another.

BENIGN = "pickle.loads(pickle.dumps([1])) == [1]"

THREAD_LOAD = f"""
import threading
box = {{}}
def victim():
    try:
        pickle.loads(DATA)
    except BaseException as e:
        box["error"] = e
with grant():
    result["grant works in the granting thread"] = {BENIGN}
    t = threading.Thread(target=victim)
    t.start()
    t.join()
if "error" in box:
    raise box["error"]
"""

TASK_CREATED_INSIDE_GRANT = f"""
import asyncio
async def victim():
    return pickle.loads(DATA)
async def main():
    with grant():
        result["grant works in the granting task"] = {BENIGN}
        return await asyncio.create_task(victim())
asyncio.run(main())
"""

CONCURRENT_TASK = f"""
import asyncio
async def main():
    ready, done = asyncio.Event(), asyncio.Event()
    async def holder():
        with grant():
            result["grant works in the granting task"] = {BENIGN}
            ready.set()
            await done.wait()  # the grant stays held while the victim loads
    async def victim():
        await ready.wait()
        try:
            return pickle.loads(DATA)
        finally:
            done.set()
    await asyncio.gather(holder(), victim())
asyncio.run(main())
"""

GRANT_SCENARIOS = {
    # Technique: load from another threading.Thread while the main thread holds an
    # allow_pickles() grant for the layer.
    "another thread": THREAD_LOAD,
    # Technique: load from an asyncio task created inside the grant (it copies the
    # context of the granting task).
    "asyncio task created inside the grant": TASK_CREATED_INSIDE_GRANT,
    # Technique: load from a concurrent asyncio task while another task holds the grant.
    "concurrent asyncio task": CONCURRENT_TASK,
}


@pytest.mark.parametrize("where", GRANT_SCENARIOS)
def test_a_grant_in_one_thread_or_task_does_not_admit_a_load_in_another(where, run_py, tmp_path):
    sentinel = tmp_path / "sentinel"
    result = fire_then_refuse(
        run_py, tmp_path, reduce_payload(sentinel), sentinel, load=GRANT_SCENARIOS[where]
    )
    granted = [key for key in result if key.startswith("grant works")]
    assert granted and all(result[key] is True for key in granted), result


def test_activation_hands_its_layer_to_child_processes_through_the_environment(run_py, tmp_path):
    # Technique: a child process (a subprocess of sys.executable) that does not call
    # activate() itself. Here only the hand-over is checked: activate() must put its
    # layer in PICKLEGUARD_LAYERS, which the child inherits. That the child then
    # refuses the payload needs the .pth file of a wheel install (this editable
    # install has none); tests/test_deploy.py
    # (test_activate_in_code_reaches_child_processes) covers that side.
    manifest = tmp_path / "empty.toml"
    manifest.write_text("version = 1\n")
    proc = run_py(
        f"""
import json, os, subprocess, sys
import pickleguard
os.environ.pop("PICKLEGUARD_LAYERS", None)
pickleguard.activate({str(manifest)!r})
child = subprocess.run(
    [sys.executable, "-c", "import os; print(os.environ['PICKLEGUARD_LAYERS'])"],
    capture_output=True, text=True, check=True,
)
print(json.dumps({{"parent": os.environ["PICKLEGUARD_LAYERS"], "child": child.stdout.strip()}}))
""",
    )
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads(seen["parent"]) == [["enforce", str(manifest)]]
    assert seen["child"] == seen["parent"]


# ---------------------------------------------------------------------------
# Nested loads: a pickle whose REDUCE calls a loader on an inner pickle.


def nested(module: str, name: str, inner: bytes) -> bytes:
    return asm(proto(2), global_(module, name), binbytes(inner), TUPLE1, REDUCE, STOP)


def test_nested_load_is_refused_with_the_outer_pickle(run_py, tmp_path):
    # Technique: REDUCE of pickle.loads whose argument is an inner hostile pickle;
    # the outer pickle names no dangerous global itself. It is refused whole.
    sentinel = tmp_path / "sentinel"
    outer = nested("pickle", "loads", reduce_payload(sentinel))
    result = fire_then_refuse(run_py, tmp_path, outer, sentinel)
    assert result["sha256"] == hexdigest(outer)


@pytest.mark.parametrize(
    "loader", [("pickle", "loads"), ("_pickle", "loads"), ("pickle", "_loads")]
)
def test_a_listed_outer_pickle_cannot_load_an_unlisted_inner_one(loader, run_py, tmp_path):
    # Technique: the outer pickle (REDUCE of a loader on inner bytes) is LISTED in the
    # manifest; the inner hostile pickle is not. The inner load must be refused.
    sentinel = tmp_path / "sentinel"
    inner = reduce_payload(sentinel)
    outer = nested(*loader, inner)
    result = fire_then_refuse(
        run_py,
        tmp_path,
        outer,
        sentinel,
        manifest_entries=[{"sha256": pickleguard.identify(outer)}],
    )
    assert result["sha256"] == hexdigest(inner), "the inner load is the one refused"


# ---------------------------------------------------------------------------
# What the hash covers.

GARBAGE = b"garbage after STOP \x00\xff cos\nsystem\n" * 8


@pytest.mark.parametrize("load", ["pickle.loads(DATA)", "import io\npickle.load(io.BytesIO(DATA))"])
def test_trailing_garbage_does_not_change_the_outcome(load, run_py, tmp_path):
    # Technique: the hostile pickle followed by garbage. Plain pickle ignores what
    # follows STOP; the hash covers only the pickle, so it is still refused, and
    # with the digest of the pickle alone.
    sentinel = tmp_path / "sentinel"
    payload = reduce_payload(sentinel)
    result = fire_then_refuse(run_py, tmp_path, payload + GARBAGE, sentinel, load=load)
    assert result["sha256"] == hexdigest(payload)


SECOND_LOAD = {
    "pickle.Unpickler": "import io\nu = pickle.Unpickler(io.BytesIO(DATA))\nfirst = u.load()\nu.load()",
    "pickle._Unpickler": "import io\nu = pickle._Unpickler(io.BytesIO(DATA))\nfirst = u.load()\nu.load()",
    "pickle.load twice": "import io\nf = io.BytesIO(DATA)\nfirst = pickle.load(f)\npickle.load(f)",
}


@pytest.mark.parametrize("how", SECOND_LOAD)
def test_an_unlisted_pickle_after_a_listed_one_in_the_same_stream(how, run_py, tmp_path):
    # Technique: a listed, benign pickle followed in the same stream by a hostile
    # one, read by a second load() on the same Unpickler (or file).
    sentinel = tmp_path / "sentinel"
    first = pickle.dumps({"ok": 1}, protocol=2)
    hostile = reduce_payload(sentinel)
    load = SECOND_LOAD[how].replace("first = ", "result['first'] = ")
    result = fire_then_refuse(
        run_py,
        tmp_path,
        first + hostile,
        sentinel,
        load=load,
        manifest_entries=[{"sha256": pickleguard.identify(first)}],
    )
    assert result["first"] == {"ok": 1}
    assert result["sha256"] == hexdigest(hostile)


def test_opcodes_hidden_after_stop_in_the_same_frame_never_run(run_py, tmp_path):
    # Technique: a FRAME that holds `None STOP` and then a hidden REDUCE of os.mkdir.
    # The C unpickler buffers the whole frame, so a second load() on the same
    # Unpickler runs the hidden part without reading the file; pickletools.dis shows
    # only `None`. pickleguard rejects such a frame outright.
    sentinel = tmp_path / "sentinel"
    body = asm(b"N", STOP, mkdir_reduce(sentinel), STOP)
    data = asm(proto(4), b"\x95", struct.pack("<Q", len(body)), body)
    fire_then_refuse(
        run_py,
        tmp_path,
        data,
        sentinel,
        load="import io\nu = pickle.Unpickler(io.BytesIO(DATA))\nu.load()\nu.load()",
        code=None,
    )


# ---------------------------------------------------------------------------
# copyreg's extension cache. Once an EXT code has been loaded, CPython's
# unpicklers (C and pure-Python alike) take the object from
# copyreg._extension_cache without calling find_class, so without the
# `pickle.find_class` audit event the backstop relies on, and without the
# placeholder find_class the gate's dry run relies on.

EXT_CODE = 0xF1
REGISTER = f"import copyreg\ncopyreg.add_extension('os', 'mkdir', {EXT_CODE})"
# Loads os.mkdir itself, calling nothing: what a legitimate pickle using the
# extension leaves in the cache.
EXT_REFERENCE = asm(proto(2), ext1(EXT_CODE), STOP)


def ext_payload(sentinel) -> bytes:
    return asm(proto(2), ext1(EXT_CODE), unicode(str(sentinel)), TUPLE1, REDUCE, STOP)


def test_ext_through_a_loader_bound_before_activation_meets_the_backstop(run_py, tmp_path):
    # Technique: EXT1 (registered extension, cache empty) loaded by the original
    # pickle.loads, captured before activation so the gate never sees it.
    sentinel = tmp_path / "sentinel"
    setup = REGISTER + "\ncaptured = {'loads': pickle.loads}"
    fire_then_refuse(
        run_py,
        tmp_path,
        ext_payload(sentinel),
        sentinel,
        setup=setup,
        load="captured['loads'](DATA)",
        code="backstop",
    )


def test_ext_from_the_extension_cache_meets_the_backstop(run_py, tmp_path):
    # Technique: as above, but the extension cache was warmed before activation by a
    # legitimate load of a pickle using the same code (it only references os.mkdir).
    sentinel = tmp_path / "sentinel"
    setup = (
        REGISTER
        + "\ncaptured = {'loads': pickle.loads}"
        + f"\nassert pickle.loads({EXT_REFERENCE!r}) is os.mkdir"
    )
    fire_then_refuse(
        run_py,
        tmp_path,
        ext_payload(sentinel),
        sentinel,
        setup=setup,
        load="captured['loads'](DATA)",
        code="backstop",
    )


WARM_BEFORE = f"assert pickle.loads({EXT_REFERENCE!r}) is os.mkdir"
WARM_ALLOWED = (
    f"with grant({pickleguard.identify(EXT_REFERENCE)!r}):\n"
    f"    assert pickle.loads({EXT_REFERENCE!r}) is os.mkdir"
)


@pytest.mark.parametrize(
    "warmed", ["before activation", "by an allowed load"], ids=["warm-before", "warm-allowed"]
)
@pytest.mark.parametrize("loader", ["pickle.loads", "pickle._loads"])
def test_undelimited_ext_payload_never_runs_with_a_warm_extension_cache(
    loader, warmed, run_py, tmp_path
):
    # Technique: EXT1 REDUCE of os.mkdir with no STOP, after the extension cache was
    # warmed by a legitimate load (before activation, or allowed after it). The gate
    # cannot delimit it and dry-runs it to find plain pickle's exception.
    sentinel = tmp_path / "sentinel"
    setup, warm = REGISTER, WARM_ALLOWED
    if warmed == "before activation":
        setup, warm = REGISTER + "\n" + WARM_BEFORE, ""
    fire_then_refuse(
        run_py,
        tmp_path,
        ext_payload(sentinel)[:-1],
        sentinel,
        setup=setup,
        load=f"{warm}\n{loader}(DATA)",
        code=None,
    )


def test_a_refused_undelimited_ext_payload_leaves_the_extension_cache_intact(run_py, tmp_path):
    # Technique: an undelimited EXT1 payload (no STOP, cache empty) is dry-run and
    # refused; then an allowed pickle using the same extension code must still
    # load the real object.
    sentinel = tmp_path / "sentinel"
    load = f"""
try:
    pickle.loads(DATA)
except Exception as e:
    result["first"] = type(e).__name__
with grant({pickleguard.identify(EXT_REFERENCE)!r}):
    result["allowed"] = repr(pickle.loads({EXT_REFERENCE!r}))
"""
    control = scenario(
        run_py,
        tmp_path,
        ext_payload(sentinel)[:-1],
        sentinel,
        guarded=False,
        setup=REGISTER,
        load=load,
    )
    assert control["sentinel"] is True and control["first"] == "EOFError", control
    sentinel.rmdir()
    result = scenario(
        run_py,
        tmp_path,
        ext_payload(sentinel)[:-1],
        sentinel,
        guarded=True,
        setup=REGISTER,
        load=load,
    )
    assert result["sentinel"] is False, result
    assert result["first"] in ("EOFError", "UnpicklingError"), result
    assert result["outcome"] == "loaded", result
    assert result["allowed"] == control["allowed"] == "<built-in function mkdir>", result


# Technique: a file object whose raw stream keeps the buffer it is asked to fill,
# then rewrites the listed pickle's frame after it was hashed and before it runs.
# The gate reads straight into its own buffer only for io's own C file types over
# a real file; a BufferedReader over any other raw stream is read with read().
RAW_KEEPS_THE_VIEW = r"""
import io, os, struct, sys, threading, time, pickle, hashlib
sentinel = sys.argv[1]
body = b"ccollections\nOrderedDict\n)R" + b"X" + struct.pack("<I", 70000) + b"A" * 70000 + b"\x86."
listed = b"\x80\x04\x95" + struct.pack("<Q", len(body)) + body
evil = b"cos\nmkdir\n(" + b"X" + struct.pack("<I", len(sentinel)) + sentinel.encode() + b"tR."
evil_body = evil + b"\0" * (len(body) - len(evil))
open("m.toml", "w").write(
    f'version = 1\n[[pickle]]\nsha256 = "{hashlib.sha256(listed).hexdigest()}"\n'
)
if sys.argv[2] == "guard":
    import pickleguard
    pickleguard.activate("m.toml")

class Raw(io.RawIOBase):
    def __init__(self):
        self.pos = 0
        self.kept = None
        self.go = threading.Event()
        threading.Thread(target=self.rewrite, daemon=True).start()
    def readable(self):
        return True
    def readinto(self, b):
        n = 11 if self.pos == 0 else min(len(b), len(listed) - self.pos)
        b[:n] = listed[self.pos:self.pos + n]
        if n > 60000:
            self.kept = b
            self.go.set()
        self.pos += n
        return n
    def rewrite(self):
        self.go.wait()
        time.sleep(0.0005)
        try:
            self.kept[: len(evil_body)] = evil_body
        except Exception:
            pass

try:
    pickle.load(io.BufferedReader(Raw(), buffer_size=8192))
except Exception:
    pass
"""


def test_a_raw_stream_that_keeps_the_read_buffer_cannot_rewrite_the_pickle(tmp_path):
    import subprocess
    import sys

    from conftest import assert_fires as fires_without_the_guard

    script = tmp_path / "raw.py"
    script.write_text(RAW_KEEPS_THE_VIEW)
    sentinel = tmp_path / "PWNED"
    # The rewrite's opcodes fire when loaded without the guard.
    path = str(sentinel).encode()
    evil = b"cos\nmkdir\n(X" + struct.pack("<I", len(path)) + path + b"tR."
    fires_without_the_guard(evil, sentinel)
    # The race: it fired in 15 of 20 runs against the gate that trusted any
    # BufferedReader; here it must never fire.
    for _ in range(10):
        subprocess.run(
            [sys.executable, str(script), str(sentinel), "guard"], cwd=tmp_path, timeout=60
        )
        assert not sentinel.exists()
