"""joblib.load and pickle.load of a stream that never ends: a socket whose peer
keeps it open, waiting for an answer. Plain joblib reads exactly one joblib pickle
(opcodes, and the raw array data between them) and leaves the rest for the
caller; so must the guard, which judges those bytes and no more.

The app reads, from one socket, a joblib pickle (arrays, and an array of objects
whose own pickle sits inside it), then a plain pickle, then a few raw bytes, and
only then answers the peer, which closes its end after the answer. A guard that
read to EOF would wait forever: the app's alarm ends it with an error instead.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Dict

import joblib
import numpy as np
import pytest

from ._harness import clean_env

APP = """
import json, os, pickle, signal, socket, sys, threading
import joblib, numpy as np

signal.alarm(60)  # a load that waits for EOF never returns: fail instead

class Boom:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.mkdir, (self.sentinel,))

def payload():
    if os.path.exists("hostile.txt"):  # the peer turns hostile
        with open("hostile.txt") as f:
            return {"weights": Boom(f.read())}
    labels = np.array(["cat", 7, {"k": (1, 2)}], dtype=object)
    return {"weights": np.arange(12.0).reshape(3, 4), "labels": labels, "name": "ranker"}

reader, writer = socket.socketpair()

def peer():
    with writer.makefile("wb") as out:
        joblib.dump(payload(), out)
        pickle.dump(("after", [1, 2, 3]), out, protocol=2)
        out.write(b"TAIL")
    assert writer.recv(2) == b"ok"  # kept open until the app has read everything
    writer.close()

threading.Thread(target=peer, daemon=True).start()
with reader.makefile("rb") as stream:
    try:
        loaded = joblib.load(stream)
        after = pickle.load(stream)
        tail = stream.read(4)
    except Exception as e:
        print(json.dumps({"error": type(e).__name__, "message": str(e)}))
        sys.exit(0)
reader.sendall(b"ok")
print(json.dumps({
    "weights": loaded["weights"].tolist(),
    "labels": [repr(x) for x in loaded["labels"]],
    "name": loaded["name"],
    "after": after,
    "tail": tail.decode(),
}))
"""

EXPECTED = {
    "weights": np.arange(12.0).reshape(3, 4).tolist(),
    "labels": ["'cat'", "7", "{'k': (1, 2)}"],
    "name": "ranker",
    "after": ["after", [1, 2, 3]],
    "tail": "TAIL",
}


def test_a_socket_stream_loads_at_once_with_the_right_value_and_position(make_app):
    app = make_app(APP)
    output, _ = app.record_then_enforce()
    assert json.loads(output) == EXPECTED
    manifest = app.manifest()
    # The joblib pickle is pinned whole (its opcodes and array data, the object
    # array's pickle inside), the plain pickle after it as a pickle of its own.
    assert manifest.count("[[artifact]]") == 1 and manifest.count("[[pickle]]") == 1, manifest


def test_a_hostile_joblib_stream_is_refused_before_it_runs(make_app, tmp_path: Path):
    app = make_app(APP)
    app.record_then_enforce()
    sentinel = tmp_path / "fired"
    (tmp_path / "hostile.txt").write_text(str(sentinel))
    app.assert_fires(sentinel)
    proc = app.enforce()
    assert not sentinel.exists()
    result = json.loads(proc.stdout)
    assert result["error"] == "NoPickleError", proc.stdout + proc.stderr
    assert "is not in the manifest" in result["message"]


TRUNCATED = """
import io, sys, joblib
data = sys.stdin.buffer.read()
try:
    joblib.load(io.BufferedReader(io.BytesIO(data)))
except Exception as e:
    print(type(e).__name__, e)
"""


def _load_truncated(data: bytes, settings: Dict[str, str]) -> str:
    env = clean_env(**settings, PICKLEGUARD_WARN_STDERR="off") if settings else clean_env()
    proc = subprocess.run(
        [sys.executable, "-c", TRUNCATED], input=data, env=env, capture_output=True, timeout=120
    )
    return proc.stdout.decode()


@pytest.mark.parametrize("keep", [0, 1, 60, 200])
def test_a_truncated_stream_raises_and_loads_nothing(tmp_path: Path, keep: int):
    """A stream that ends inside the pickle is judged as plain pickle, which cannot
    be delimited: an empty or one-byte stream raises exactly what plain joblib
    raises; one that ends after the pickle's first globals raises the gate's
    "truncated", as for any truncated pickle (plain joblib would first import and
    call what the part before the cut names)."""
    whole = tmp_path / "model.joblib"
    joblib.dump({"weights": np.arange(100.0)}, whole)
    data = whole.read_bytes()[:keep]
    manifest = tmp_path / "empty.toml"
    manifest.write_text("version = 1\n")
    plain = _load_truncated(data, {})
    guarded = _load_truncated(
        data, {"PICKLEGUARD_MODE": "warn", "PICKLEGUARD_MANIFEST": str(manifest)}
    )
    assert plain, "plain joblib raises too"
    if keep <= 1:
        assert guarded == plain
    else:
        assert guarded == "UnpicklingError pickle data was truncated\n", guarded
