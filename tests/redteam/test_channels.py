"""Red team: the multiprocessing channel rule is not a way in for pickles that reach
the program through multiprocessing.connection from anywhere else.

The manifest is recorded, by ``pickleguard record``, for a program that uses a Pool
and a Queue: its multiprocessing rule is exactly what record writes. Each technique
then hands the program a hostile pickle through multiprocessing's own receiving
code (``Connection.recv``), called by the program itself: from a Listener's TCP
peer, from a file, through a Connection subclass. Each is first shown to fire in a
fresh interpreter without pickleguard; then, with the manifest activated in code
(``activate()``) and from the environment (``PICKLEGUARD_MANIFEST``), the same
process runs real Pool and Queue traffic through the rule, and the hostile pickle
is refused with the sentinel absent.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Dict

import pytest

import pickleguard
from conftest import OLD_MULTIPROCESSING_RULE
from pickleguard.cli._manifest import known_rules

from ._harness import (
    _CONTROL,
    _GUARDED,
    _TEMPLATE,
    assert_fires,
    assert_refused,
    clear,
    reduce_payload,
    run_snippet,
)

# What the program does with multiprocessing, recorded and then run again with
# other data: a fork Pool's tasks and results, a Queue between two processes.
APP = """
import multiprocessing, sys

def square(x):
    return x * x

if __name__ == "__main__":
    start = int(sys.argv[1])
    context = multiprocessing.get_context("fork")
    with context.Pool(2) as pool:
        print(pool.map(square, range(start, start + 4)))
    queue = context.Queue()
    child = context.Process(target=queue.put, args=({"from": "child", "n": start},))
    child.start()
    print(queue.get(timeout=120))
    child.join(120)
"""

# Real multiprocessing traffic in the guarded process, before each technique: the
# rule admits it (with data the recorded run did not send).
TRAFFIC = """
import multiprocessing
context = multiprocessing.get_context("fork")
with context.Pool(2) as pool:
    result["pool"] = pool.map(abs, [-7, 8, -9])
queue = context.Queue()
child = context.Process(target=queue.put, args=(["queue", 10],))
child.start()
result["queue"] = queue.get(timeout=120)
child.join(120)
"""

# A Listener on a loopback TCP port; a raw TCP peer (no authkey, no
# multiprocessing) sends a pickle in Connection's framing.
LISTENER = """
import socket, threading
from multiprocessing.connection import Listener
with Listener(("127.0.0.1", 0)) as listener:
    def peer():
        with socket.create_connection(listener.address) as s:
            s.sendall(FRAMED)
    sender = threading.Thread(target=peer)
    sender.start()
    try:
        with listener.accept() as conn:
            conn.recv()
    finally:
        sender.join(60)
"""

# Connection on the descriptor of a file a user uploaded.
FILE_FD = """
from multiprocessing.connection import Connection
with Connection(os.open(UPLOAD, os.O_RDONLY), writable=False) as conn:
    conn.recv()
"""

# Subclasses: one that reads its messages from memory (multiprocessing's recv()
# decodes them), one whose own recv() calls multiprocessing's.
SUBCLASS_BUFFER = """
import io
from multiprocessing.connection import Connection
class BufferConnection(Connection):
    def __init__(self, data):
        super().__init__(os.open(os.devnull, os.O_RDONLY), writable=False)
        self._data = data
    def _recv_bytes(self, maxsize=None):
        return io.BytesIO(self._data)
with BufferConnection(DATA) as conn:
    conn.recv()
"""

SUBCLASS_RECV = """
from multiprocessing.connection import Connection
class UploadConnection(Connection):
    def recv(self):
        return super().recv()
with UploadConnection(os.open(UPLOAD, os.O_RDONLY), writable=False) as conn:
    conn.recv()
"""

# A multiprocessing.Pipe the program made, fed by a child process: multiprocessing's
# Connection all the same, so the rule cannot tell it from the above.
PIPE = """
import multiprocessing
context = multiprocessing.get_context("fork")
reader, writer = context.Pipe(duplex=False)
child = context.Process(target=writer.send_bytes, args=(DATA,))
child.start()
child.join(60)
reader.recv()
"""

TECHNIQUES = {
    "listener-tcp-peer": LISTENER,
    "connection-on-a-file": FILE_FD,
    "pipe-from-a-child": PIPE,
    "subclass-reading-memory": SUBCLASS_BUFFER,
    "subclass-recv-calling-super": SUBCLASS_RECV,
}

# Environment activation: the .pth file activated pickleguard at start-up.
_FROM_ENV = """
import pickleguard
from pickleguard import NoPickleError
TOKEN = None
assert pickleguard._core.process_layers(), "PICKLEGUARD_MANIFEST did not activate"
"""


def framed(data: bytes) -> bytes:
    """``data`` as one message of multiprocessing.connection: a 4-byte big-endian
    length, then the bytes."""
    return struct.pack("!i", len(data)) + data


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The manifest `pickleguard record` writes for APP."""
    directory = tmp_path_factory.mktemp("recorded")
    (directory / "app.py").write_text(APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICKLEGUARD_")}
    manifest = directory / "pickleguard.toml"
    proc = subprocess.run(
        [sys.executable, "-m", "pickleguard", "record", "-o", str(manifest), "--"]
        + [sys.executable, "app.py", "1"],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[1, 4, 9, 16]" in proc.stdout, proc.stdout
    return manifest


def test_the_recorded_manifest_is_the_multiprocessing_rules_record_writes(recorded):
    entries, rules = pickleguard._core.manifest_summary(str(recorded))
    # Every load of APP was multiprocessing's: nothing is pinned.
    assert entries == []
    written = [(callers, called_from or []) for name, callers, called_from in rules]
    assert {name for name, _, _ in rules} == {"multiprocessing"}
    assert sorted(written) == sorted(
        (sorted(callers), called_from) for callers, called_from in known_rules("multiprocessing")
    )
    # The rule for Connection.recv admits only multiprocessing's own callers of it.
    recv = [r for r in rules if "multiprocessing.connection:_ConnectionBase.recv" in r[1]]
    assert len(recv) == 1 and recv[0][2]
    proc = subprocess.run(
        [sys.executable, "-m", "pickleguard", "check", str(recorded)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def run_technique(
    run_py: Callable[..., Any],
    tmp_path: Path,
    load: str,
    payload: bytes,
    sentinel: Path,
    activation: str,
    manifest: Path,
) -> Dict[str, Any]:
    """One step in a fresh interpreter: `activation` is "none" (the control),
    "code" or "env"; a guarded step runs TRAFFIC first."""
    upload = tmp_path / "upload.bin"
    upload.write_bytes(framed(payload))
    (tmp_path / "payload.pkl").write_bytes(payload)
    env = None
    if activation == "none":
        activate = _CONTROL
    elif activation == "code":
        activate = _GUARDED.format(manifest=str(manifest))
    else:
        activate = _FROM_ENV
        env = {"PICKLEGUARD_MANIFEST": str(manifest)}
    body = textwrap.dedent(load).strip()
    if activation != "none":
        body = textwrap.dedent(TRAFFIC).strip() + "\n" + body
    code = _TEMPLATE.format(
        sentinel=str(sentinel),
        limits="",
        setup=f"UPLOAD = {str(upload)!r}\nFRAMED = {framed(payload)!r}",
        activate=activate,
        payload=str(tmp_path / "payload.pkl"),
        load=textwrap.indent(body, "    "),
        after="",
    )
    return run_snippet(run_py, code, env)


@pytest.mark.parametrize("activation", ["code", "env"])
@pytest.mark.parametrize("technique", sorted(TECHNIQUES))
def test_a_pickle_the_program_receives_itself_is_not_the_channel(
    technique, activation, recorded, run_py, tmp_path, wheel_installed
):
    sentinel = tmp_path / "sentinel"
    payload = reduce_payload(sentinel)
    load = TECHNIQUES[technique]
    control = run_technique(run_py, tmp_path, load, payload, sentinel, "none", recorded)
    assert_fires(control, sentinel)
    clear(sentinel)
    guarded = run_technique(run_py, tmp_path, load, payload, sentinel, activation, recorded)
    # The rule still admits multiprocessing's own traffic in the same process...
    assert guarded.get("pool") == [7, 8, 9], guarded
    assert guarded.get("queue") == ["queue", 10], guarded
    # ...but not the program's own recv() of a pickle from elsewhere.
    assert_refused(guarded, sentinel)
    assert guarded["sha256"] == pickleguard.identify(payload)[len("sha256:") :]


def test_a_rule_written_for_the_programs_own_pipe_admits_only_that_receiver(
    recorded, run_py, tmp_path, wheel_installed
):
    """docs/manifest.md's recipe: a hand-written rule naming the function that
    receives on the program's own Pipe admits it, and not a Listener's peer."""
    manifest = tmp_path / "own-pipes.toml"
    manifest.write_text(
        recorded.read_text()
        + "\n[[channel]]\n"
        + 'name = "our-pipes"\n'
        + 'callers = ["multiprocessing.connection:_ConnectionBase.recv", '
        + '"multiprocessing.connection:recv"]\n'
        + 'called_from = ["__main__:wait_for_results"]\n'
    )
    own = PIPE.replace("reader.recv()", "")
    own += "def wait_for_results():\n    return reader.recv()\nresult['got'] = wait_for_results()"
    benign = pickle.dumps(["pipe", 1])
    sentinel = tmp_path / "sentinel"
    result = run_technique(run_py, tmp_path, own, benign, sentinel, "code", manifest)
    assert result["outcome"] == "loaded" and result.get("got") == ["pipe", 1], result
    payload = reduce_payload(sentinel)
    control = run_technique(run_py, tmp_path, LISTENER, payload, sentinel, "none", manifest)
    assert_fires(control, sentinel)
    clear(sentinel)
    refused = run_technique(run_py, tmp_path, LISTENER, payload, sentinel, "code", manifest)
    assert_refused(refused, sentinel)


def test_an_old_wide_rule_still_loads_and_check_says_why_to_narrow_it(run_py, tmp_path):
    """A manifest recorded before the rule was narrowed still loads and runs the
    program's multiprocessing; it still admits a Listener's peer (the reason
    `pickleguard check` warns about it, tests/test_cli.py), which the recorded
    rule refuses (above)."""
    old = tmp_path / "old.toml"
    old.write_text(OLD_MULTIPROCESSING_RULE)
    sentinel = tmp_path / "sentinel"
    payload = reduce_payload(sentinel)
    result = run_technique(run_py, tmp_path, LISTENER, payload, sentinel, "code", old)
    assert result.get("pool") == [7, 8, 9] and result.get("queue") == ["queue", 10], result
    assert result["outcome"] == "loaded" and result["sentinel"] is True, result
    clear(sentinel)
