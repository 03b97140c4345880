"""Under activation from the environment the gate is installed when ``pickle`` or
``_pickle`` is first imported, not at interpreter start (see ``pickleguard._boot``).

Each way a program can first reach an unpickler is tried as the first thing a
fresh, enforcing process does, under a manifest that pins nothing: a hostile
payload (shown to fire without the guard) must be refused by the gate itself
(not only by the backstop, which would also stop it), and so must a pickle that
names no global, which the backstop never sees.
"""

from __future__ import annotations

import json

import pytest

from conftest import assert_fires, fresh_python, hostile

pytestmark = pytest.mark.usefixtures("wheel_installed")

# Each snippet is the program's first code: it binds LOAD, a callable that loads
# the bytes it is given, by one way of reaching an unpickler.
FIRST_REACH = {
    "import pickle": "import pickle\nLOAD = pickle.loads",
    "from pickle import loads": "from pickle import loads as LOAD",
    "from pickle import load": (
        "import io\nfrom pickle import load\nLOAD = lambda b: load(io.BytesIO(b))"
    ),
    "from pickle import Unpickler": (
        "import io\nfrom pickle import Unpickler\nLOAD = lambda b: Unpickler(io.BytesIO(b)).load()"
    ),
    "a subclass of pickle.Unpickler": (
        "import io, pickle\n"
        "class Mine(pickle.Unpickler):\n"
        "    pass\n"
        "LOAD = lambda b: Mine(io.BytesIO(b)).load()"
    ),
    "pickle._Unpickler (pure Python)": (
        "import io, pickle\nLOAD = lambda b: pickle._Unpickler(io.BytesIO(b)).load()"
    ),
    "import _pickle first": "import _pickle\nLOAD = _pickle.loads",
    "from _pickle import loads": "from _pickle import loads as LOAD",
    "from _pickle import Unpickler": (
        "import io\nfrom _pickle import Unpickler\nLOAD = lambda b: Unpickler(io.BytesIO(b)).load()"
    ),
    "a subclass of _pickle.Unpickler": (
        "import io, _pickle\n"
        "class Mine(_pickle.Unpickler):\n"
        "    pass\n"
        "LOAD = lambda b: Mine(io.BytesIO(b)).load()"
    ),
    "importlib.import_module('_pickle')": (
        "import importlib\nLOAD = importlib.import_module('_pickle').loads"
    ),
    "__import__('pickle')": "LOAD = __import__('pickle').loads",
    "a module that imports pickle (shelve's Unpickler)": (
        "import io, shelve\nLOAD = lambda b: shelve.Unpickler(io.BytesIO(b)).load()"
    ),
    "multiprocessing's ForkingPickler.loads": (
        "from multiprocessing.reduction import ForkingPickler\nLOAD = ForkingPickler.loads"
    ),
    "pickle imported on another thread": (
        "import threading\n"
        "box = {}\n"
        "t = threading.Thread(target=lambda: box.update(loads=__import__('_pickle').loads))\n"
        "t.start(); t.join()\n"
        "LOAD = box['loads']"
    ),
    "pickle imported anew after deleting both modules": (
        "import sys, pickle\n"
        "del sys.modules['pickle'], sys.modules['_pickle']\n"
        "import pickle as fresh\n"
        "LOAD = fresh.loads"
    ),
    "the pure-Python unpickler of pickle imported anew": (
        "import io, sys, pickle\n"
        "del sys.modules['pickle']\n"
        "import pickle as fresh\n"
        "assert fresh._Unpickler is not pickle._Unpickler\n"
        "LOAD = lambda b: fresh._Unpickler(io.BytesIO(b)).load()"
    ),
    "pickleguard's gate module imported first": (
        "import pickleguard._gate, pickle\nLOAD = pickle.loads"
    ),
    "a pinned load first": (
        "import pickleguard\n"
        "try:\n"
        "    pickleguard.loads(b'\\x80\\x04N.', sha256='0' * 64)\n"
        "except pickleguard.NoPickleError:\n"
        "    pass\n"
        "import pickle\n"
        "LOAD = pickle.loads"
    ),
    "pickleguard imported first": "import pickleguard, pickle\nLOAD = pickle.loads",
}

# Runs LOAD on each payload and prints how each went; a refusal must come from the
# gate (a NoPickleError naming the manifest), and the program must not have had
# pickle imported before its first line.
PROGRAM = """
import sys
before = sorted(m for m in ("pickle", "_pickle", "pickleguard._gate") if m in sys.modules)
{reach}
import json, pickleguard
outcomes = {{}}
for name in ("hostile", "plain"):
    data = open(name + ".pkl", "rb").read()
    try:
        LOAD(data)
    except pickleguard.NoPickleError as e:
        outcomes[name] = e.code or "refused"
    else:
        outcomes[name] = "loaded"
print(json.dumps({{"before": before, "outcomes": outcomes}}))
"""


def _setup(tmp_path):
    sentinel = tmp_path / "sentinel"
    payload = hostile(sentinel)
    assert_fires(payload, sentinel)
    (tmp_path / "hostile.pkl").write_bytes(payload)
    (tmp_path / "plain.pkl").write_bytes(b"\x80\x04K\x07.")  # 7, no global
    manifest = tmp_path / "m.toml"
    manifest.write_text("version = 1\n")
    return sentinel, manifest


@pytest.mark.parametrize("reach", FIRST_REACH)
def test_every_first_way_to_an_unpickler_meets_the_gate(reach, tmp_path):
    sentinel, manifest = _setup(tmp_path)
    program = PROGRAM.format(reach=FIRST_REACH[reach])
    # Without pickleguard the same program loads both.
    plain = fresh_python(tmp_path, program)
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)["outcomes"] == {"hostile": "loaded", "plain": "loaded"}
    assert sentinel.exists()
    sentinel.rmdir()

    guarded = fresh_python(tmp_path, program, PICKLEGUARD_MANIFEST=str(manifest))
    assert guarded.returncode == 0, guarded.stderr
    result = json.loads(guarded.stdout)
    assert result["before"] == [], "start-up must not import pickle"
    assert not sentinel.exists()
    # "plain" names no global: only the gate can refuse it.
    assert result["outcomes"] == {"hostile": "not-listed", "plain": "not-listed"}


def test_start_up_imports_no_pickle_but_registers_the_backstop(tmp_path):
    _, manifest = _setup(tmp_path)
    # A global import by an unpickler the gate never saw (the original class,
    # reached before the gate exists) is still refused: the backstop is in place.
    program = (
        "import sys, json\n"
        "mods = sorted(m for m in sys.modules if m in ('pickle', '_pickle', 're', 'logging'))\n"
        "try:\n"
        "    sys.audit('pickle.find_class', 'os', 'system')\n"
        "    refused = False\n"
        "except Exception as e:\n"
        "    refused = type(e).__name__\n"
        "print(json.dumps([mods, refused]))"
    )
    guarded = fresh_python(tmp_path, program, PICKLEGUARD_MANIFEST=str(manifest))
    assert guarded.returncode == 0, guarded.stderr
    mods, refused = json.loads(guarded.stdout)
    assert "pickle" not in mods and "_pickle" not in mods
    assert refused == "NoPickleError"


def test_a_pinned_load_before_pickle_is_imported_works(tmp_path):
    _, manifest = _setup(tmp_path)
    program = (
        "import hashlib, pickleguard\n"
        "data = open('plain.pkl', 'rb').read()\n"
        "print(pickleguard.loads(data, sha256=hashlib.sha256(data).hexdigest()))"
    )
    # Pinned in code, refused by the operator's manifest all the same: a pin never
    # lifts a layer. Under warn mode it loads.
    guarded = fresh_python(tmp_path, program, PICKLEGUARD_MANIFEST=str(manifest))
    assert guarded.returncode == 1 and "NoPickleError" in guarded.stderr
    warned = fresh_python(
        tmp_path, program, PICKLEGUARD_MANIFEST=str(manifest), PICKLEGUARD_MODE="warn"
    )
    assert warned.returncode == 0, warned.stderr
    assert warned.stdout.strip() == "7"


def test_activate_in_code_before_pickle_is_imported_installs_the_gate(tmp_path):
    sentinel, manifest = _setup(tmp_path)
    # Under environment activation, a layer added in code imports pickle itself.
    program = (
        "import pickleguard\n"
        "pickleguard.activate()\n"
        "import pickle\n"
        "from pickleguard import _gate\n"
        "print(pickle.loads is _gate.loads, _gate.installed())\n"
        "pickle.loads(open('hostile.pkl', 'rb').read())"
    )
    guarded = fresh_python(tmp_path, program, PICKLEGUARD_MANIFEST=str(manifest))
    assert guarded.stdout.split() == ["True", "True"]
    assert guarded.returncode == 1 and "NoPickleError" in guarded.stderr
    assert not sentinel.exists()
