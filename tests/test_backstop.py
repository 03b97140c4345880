"""The backstop: an audit hook that refuses every global import by an unpickler the
gate did not admit. Each bypass below is first shown to work without pickleguard."""

from __future__ import annotations

import sys

import pytest

from conftest import hostile, write_manifest

# Each technique loads DATA (a payload) in a way that dodges the patched entry
# points. SETUP runs before activation; LOAD after it.
BYPASSES = {
    # A reference captured before activation, where no rebinding reaches it.
    "original loads captured in a dict": (
        "import pickle\ncaptured = {'loads': pickle.loads}",
        "captured['loads'](DATA)",
    ),
    # A subclass of the original C Unpickler, defined before activation.
    "subclass of the original C Unpickler": (
        "import io, _pickle\nclass Early(_pickle.Unpickler):\n    pass",
        "Early(io.BytesIO(DATA)).load()",
    ),
    # A second, fresh instance of the C accelerator module. On 3.12+ it has its own,
    # unpatched functions; before that the import system returns the patched one.
    "a second instance of _pickle": (
        "import importlib.util",
        "spec = importlib.util.find_spec('_pickle')\n"
        "second = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(second)\n"
        "second.loads(DATA)",
    ),
    # The pure-Python unpickler of a reloaded pickle module: a new, unpatched class.
    "importlib.reload(pickle)": (
        "import importlib, io, pickle",
        "importlib.reload(pickle)\npickle._loads(DATA)",
    ),
    # A fresh pickle module imported after deleting the patched one.
    'del sys.modules["pickle"]': (
        "import io, sys",
        "del sys.modules['pickle']\nimport pickle as fresh\nfresh._Unpickler(io.BytesIO(DATA)).load()",
    ),
    # The original pure-Python load, captured before activation.
    "original _Unpickler.load captured": (
        "import io, pickle\noriginal_load = pickle._Unpickler.load",
        "original_load(pickle._Unpickler(io.BytesIO(DATA)))",
    ),
}


def scenario(setup: str, load: str, guarded: bool, mode: str = "warn") -> str:
    activate = f"pickleguard.activate(mode={mode!r})" if guarded else "pass"
    return f"""
import json, os, pickle, sys
{setup}
import pickleguard
DATA = open('p.pkl', 'rb').read()
{activate}
try:
{chr(10).join("    " + line for line in load.splitlines())}
except pickleguard.NoPickleError as e:
    print(json.dumps({{"refused": e.code}}))
else:
    print(json.dumps({{"refused": None}}))
"""


@pytest.mark.parametrize("technique", BYPASSES)
def test_the_backstop_refuses_loads_that_dodge_the_gate(technique, run_py, tmp_path):
    setup, load = BYPASSES[technique]
    sentinel = tmp_path / "sentinel"
    (tmp_path / "p.pkl").write_bytes(hostile(sentinel, protocol=2))
    unguarded = run_py(scenario(setup, load, guarded=False))
    assert '"refused": null' in unguarded.stdout
    assert sentinel.exists(), "the bypass must work without pickleguard"
    sentinel.rmdir()
    if technique == "a second instance of _pickle" and sys.version_info < (3, 12):
        # The "second instance" is the patched module itself: the gate refuses it.
        guarded = run_py(scenario(setup, load, guarded=True, mode="enforce"))
        assert '"refused": "no-manifest"' in guarded.stdout, guarded.stdout + guarded.stderr
    else:
        # Warn mode allows every admitted load: only the backstop can refuse these.
        guarded = run_py(scenario(setup, load, guarded=True))
        assert '"refused": "backstop"' in guarded.stdout, guarded.stdout + guarded.stderr
    assert not sentinel.exists()


def test_an_allowed_pickle_cannot_reach_pickleguard_itself(run_py, tmp_path):
    # Technique: a listed (so admitted) pickle whose REDUCE calls pickleguard's own
    # functions to loosen the policy.
    import pickle

    import pickleguard._core as core

    class Loosen:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (core.record_layer, ())

    data = pickle.dumps(Loosen(), protocol=2)
    (tmp_path / "p.pkl").write_bytes(data)
    import pickleguard

    manifest = write_manifest(tmp_path / "m.toml", {"sha256": pickleguard.identify(data)})
    proc = run_py(
        f"""
import pickle, pickleguard, pickleguard._core as core
pickleguard.activate({str(manifest)!r})
try:
    pickle.load(open("p.pkl", "rb"))
except pickleguard.NoPickleError as e:
    print(e.code)
print(len(core.process_layers()))
"""
    )
    assert proc.stdout.split() == ["backstop-self", "1"]


def test_pickled_pickleguard_errors_still_load(run_py, tmp_path):
    # Workers send NoPickleError back to their parent as a pickle.
    run_py(
        """
import pickle, pickleguard
token = pickleguard.activate()
error = pickleguard.NoPickleError("refused", sha256="ab", code="not-listed")
data = pickle.dumps(error)
with pickleguard.allow_pickles(token):
    copy = pickle.loads(data)
assert copy.code == "not-listed" and copy.sha256 == "ab"
"""
    )


def test_activation_fails_loudly_when_the_backstop_cannot_register(run_py):
    proc = run_py(
        """
import sys, pickle
def veto(event, args):
    if event == "sys.addaudithook":
        raise RuntimeError("no more hooks")
sys.addaudithook(veto)
import pickleguard
try:
    pickleguard.activate()
except pickleguard.PickleGuardError as e:
    print("refused to report enforcing:", e)
"""
    )
    assert "refused to report enforcing" in proc.stdout
    assert "backstop is not in place" in proc.stdout


def test_names_bound_before_activation_are_rebound(run_py, tmp_path):
    # multiprocessing binds ForkingPickler.loads = pickle.loads at import time;
    # shelve binds Unpickler. Activation in code after those imports still guards them.
    run_py(
        """
import io, shelve, multiprocessing.reduction as reduction
from pickle import loads as early_loads
import pickle, pickleguard
pickleguard.activate(mode="warn")
assert reduction.ForkingPickler.loads is pickle.loads
assert shelve.Unpickler is pickle.Unpickler
assert early_loads is pickle.loads
"""
    )


def test_multiprocessing_imported_before_activation_keeps_working(run_py, tmp_path):
    manifest = tmp_path / "m.toml"
    manifest.write_text(
        'version = 1\n[[channel]]\nname = "multiprocessing"\n'
        'callers = ["multiprocessing.connection:_ConnectionBase.recv",'
        ' "multiprocessing.connection:recv", "multiprocessing.queues:SimpleQueue.get",'
        ' "multiprocessing.queues:get", "multiprocessing.spawn:_main"]\n'
    )
    proc = run_py(
        f"""
import multiprocessing
import pickleguard

def square(x):
    return x * x

if __name__ == "__main__":
    pickleguard.activate({str(manifest)!r})
    with multiprocessing.get_context("fork").Pool(2) as pool:
        print(sum(pool.map(square, range(10))))
"""
    )
    assert proc.stdout.strip() == "285"


def test_putting_the_originals_back_does_not_loosen_the_policy(run_py, tmp_path):
    # Technique: restore the unpatched functions and class from where pickleguard
    # keeps them, then load. The originals run, but cannot import a global.
    sentinel = tmp_path / "sentinel"
    (tmp_path / "p.pkl").write_bytes(hostile(sentinel))
    run_py("from pickleguard import _gate; _gate._c_loads(open('p.pkl', 'rb').read())")
    assert sentinel.exists(), "the payload must fire through the original without the guard"
    sentinel.rmdir()
    proc = run_py(
        """
import io, pickle, _pickle, pickleguard
from pickleguard import _gate
pickleguard.activate(mode="warn")
pickle.loads, pickle.Unpickler = _gate._c_loads, pickleguard._gate.Unpickler.__bases__[0]
pickle._Unpickler.load = _gate._py_load
data = open("p.pkl", "rb").read()
codes = []
for load in (pickle.loads, lambda d: pickle.Unpickler(io.BytesIO(d)).load(), pickle._loads):
    try:
        load(data)
    except pickleguard.NoPickleError as e:
        codes.append(e.code)
print(codes)
"""
    )
    assert proc.stdout.strip() == "['backstop', 'backstop', 'backstop']"
    assert not sentinel.exists()


def _sbu(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def test_a_listed_pickle_cannot_run_a_file_through_the_original_unpickler(run_py, tmp_path):
    # Technique (found in review): a listed pickle reaches the original C Unpickler
    # as pickle.Unpickler.__base__ (a dotted protocol-4 name) and loads an attacker
    # file with it, inside its own admitted load.
    sentinel = tmp_path / "sentinel"
    (tmp_path / "attacker.pkl").write_bytes(hostile(sentinel, protocol=2))
    run_py("import pickle; pickle.load(open('attacker.pkl', 'rb'))")
    assert sentinel.exists(), "the attacker file must fire without the guard"
    sentinel.rmdir()
    outer = (
        b"\x80\x04"
        + _sbu("pickle")
        + _sbu("Unpickler.__base__.load")
        + b"\x93"
        + _sbu("pickle")
        + _sbu("Unpickler.__base__")
        + b"\x93"
        + _sbu("builtins")
        + _sbu("open")
        + b"\x93"
        + _sbu(str(tmp_path / "attacker.pkl"))
        + _sbu("rb")
        + b"\x86R"
        + b"\x85R\x85R."
    )
    import pickleguard

    manifest = write_manifest(tmp_path / "m.toml", {"sha256": pickleguard.identify(outer)})
    proc = run_py(
        f"""
import pickle, pickleguard
pickleguard.activate({str(manifest)!r})
try:
    pickle.loads({outer!r})
except pickleguard.NoPickleError as e:
    print(e.code)
"""
    )
    assert proc.stdout.strip() == "backstop-self"
    assert not sentinel.exists()


def test_a_listed_pickle_cannot_reach_pickleguard_through_a_dotted_name(run_py, tmp_path):
    # Technique (found in review): "pickle" / "loads.__self__.record_layer" resolves
    # to pickleguard._core.record_layer, because pickle.loads is the core's builtin.
    loosen = b"\x80\x04" + _sbu("pickle") + _sbu("loads.__self__.record_layer") + b"\x93)R."
    import pickleguard

    manifest = write_manifest(tmp_path / "m.toml", {"sha256": pickleguard.identify(loosen)})
    proc = run_py(
        f"""
import pickle, pickleguard, pickleguard._core as core
pickleguard.activate({str(manifest)!r})
try:
    pickle.loads({loosen!r})
except pickleguard.NoPickleError as e:
    print(e.code)
print(len(core.process_layers()))
"""
    )
    assert proc.stdout.split() == ["backstop-self", "1"]


def test_a_nested_load_through_a_loader_bound_before_activation_is_not_admitted(run_py, tmp_path):
    # Technique (found in review): a listed pickle's persistent_load fetches a side
    # file through a library's loader bound before activation (a class attribute,
    # which activation does not rebind). Admission belongs to the outer load's own
    # imports, not to everything that runs while it does.
    sentinel = tmp_path / "sentinel"
    (tmp_path / "side.pkl").write_bytes(hostile(sentinel, protocol=2))
    side = str(tmp_path / "side.pkl")
    raw = side.encode()
    outer = b"\x80\x02X" + len(raw).to_bytes(4, "little") + raw + b"Q."
    import pickleguard

    manifest = write_manifest(tmp_path / "m.toml", {"sha256": pickleguard.identify(outer)})
    script = f"""
import io, pickle
class SideStore:
    _loads = staticmethod(pickle.loads)  # bound before activation
    def fetch(self, pid):
        return self._loads(open(pid, "rb").read())
GUARD = {{guard}}
if GUARD:
    import pickleguard
    pickleguard.activate({str(manifest)!r})
class U(pickle.Unpickler):
    def persistent_load(self, pid):
        return SideStore().fetch(pid)
try:
    U(io.BytesIO({outer!r})).load()
    print("loaded")
except Exception as e:
    print(getattr(e, "code", type(e).__name__))
"""
    assert run_py(script.replace("{guard}", "False")).stdout.strip() == "loaded"
    assert sentinel.exists(), "the side file must fire without the guard"
    sentinel.rmdir()
    assert run_py(script.replace("{guard}", "True")).stdout.strip() == "backstop"
    assert not sentinel.exists()


# An outer unpickler whose persistent_load reads a nested pickle with a fresh
# unpickler that routes its find_class to the outer's, as joblib does for the
# pickle inside an object array (``inner.find_class = outer.find_class``).
ROUTED = """
import collections, io, pickle, sys
captured_load = pickle._Unpickler.load  # the original, bound before activation
GUARD = {guard}
if GUARD:
    import pickleguard
    pickleguard.activate(mode="warn")
nested = open("nested.pkl", "rb").read()

class Outer(pickle._Unpickler):
    def persistent_load(self, pid):
        inner = {inner}(io.BytesIO(nested))
        inner.find_class = self.find_class
        return inner.load()

outer = Outer(io.BytesIO({outer!r}))
try:
    value = captured_load(outer) if {unadmitted} else outer.load()
    print(type(value).__name__)
except Exception as e:
    print(getattr(e, "code", type(e).__name__))
"""
_PERSISTENT_ID = b"\x80\x02X\x06\x00\x00\x00nestedQ."


# A subclass of the C one: its instances, unlike the C class's, take attributes.
@pytest.mark.parametrize("inner", ["pickle._Unpickler", "type('C', (pickle.Unpickler,), {})"])
def test_a_nested_unpickler_routed_to_a_judged_load_imports_as_plain(inner, run_py, tmp_path):
    import collections
    import pickle

    (tmp_path / "nested.pkl").write_bytes(pickle.dumps(collections.OrderedDict(a=1), 2))
    script = ROUTED.format(guard="{guard}", inner=inner, outer=_PERSISTENT_ID, unadmitted=False)
    assert run_py(script.replace("{guard}", "False")).stdout.strip() == "OrderedDict"
    assert run_py(script.replace("{guard}", "True")).stdout.strip() == "OrderedDict"


def test_a_judged_nested_load_routed_to_an_unadmitted_unpickler_is_refused(run_py, tmp_path):
    # The routing admits only toward a load the gate runs: here the outer unpickler
    # runs the original load() captured before activation, on bytes never judged.
    sentinel = tmp_path / "sentinel"
    (tmp_path / "nested.pkl").write_bytes(hostile(sentinel, protocol=2))
    script = ROUTED.format(
        guard="{guard}", inner="pickle._Unpickler", outer=_PERSISTENT_ID, unadmitted=True
    )
    assert run_py(script.replace("{guard}", "False")).stdout.strip() == "NoneType"
    assert sentinel.exists(), "the nested payload must fire without the guard"
    sentinel.rmdir()
    assert run_py(script.replace("{guard}", "True")).stdout.strip() == "backstop"
    assert not sentinel.exists()
