"""Red team: who may have a global import admitted (issue 10, bypasses 1 and 2).

The backstop admits an import only for the find_class call of a load that the gate
itself started on judged bytes, for that very unpickler, innermost on its thread.
Each test attacks that rule from another side: an unguarded unpickler calling the
guarded class's find_class by name, a load() loop of its own, a direct call, and
each of those nested inside a load the gate did admit. Every payload is first shown
to fire without pickleguard.
"""

from __future__ import annotations

import pytest

from conftest import hostile

from ._harness import fire_then_refuse, scenario

# A library module, imported before an in-code activate(), as a library would be.
LIBRARY = '''
import io, pickle
from pickle import Unpickler


class ByName(pickle.Unpickler):
    """find_class through the module-level name, not super()."""

    def find_class(self, module, name):
        return Unpickler.find_class(self, module, name)


class ByAttribute(pickle.Unpickler):
    """find_class through pickle.Unpickler, looked up at call time."""

    def find_class(self, module, name):
        return pickle.Unpickler.find_class(self, module, name)


class OwnLoad(pickle.Unpickler):
    """As ByAttribute, with a load() of its own calling the C base's."""

    def load(self):
        return super().load()

    def find_class(self, module, name):
        return pickle.Unpickler.find_class(self, module, name)


class Loop(pickle._Unpickler):
    """A load() loop of its own over the dispatch table, as profilers and
    opcode counters write it."""

    def load(self):
        self._unframer = pickle._Unframer(self._file_read, self._file_readline)
        self.read = self._unframer.read
        self.readinto = self._unframer.readinto
        self.readline = self._unframer.readline
        self.metastack = []
        self.stack = []
        self.append = self.stack.append
        self.proto = 0
        read, dispatch = self.read, self.dispatch
        try:
            while True:
                key = read(1)
                if not key:
                    raise EOFError
                dispatch[key[0]](self)
        except pickle._Stop as stop:
            return stop.value


def load_with(kind, path):
    """What a pinned pickle's REDUCE calls in the nested tests."""
    with open(path, "rb") as f:
        return globals()[kind](f).load()
'''


def _library(tmp_path) -> str:
    (tmp_path / "rt_unpicklers.py").write_text(LIBRARY)
    return f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\nimport rt_unpicklers"


# class -> the code of the refusal under in-code activation. ByName and ByAttribute
# inherit the C load(), which activation replaces with a refusal: it reads its
# file past the gate. OwnLoad's load() is its own, so only the backstop can stop
# its import; Loop never calls the gate at all.
EARLY_CLASSES = {
    "ByName": "early-unpickler",
    "ByAttribute": "early-unpickler",
    "OwnLoad": "backstop",
    "Loop": "backstop",
}


@pytest.mark.parametrize("kind", EARLY_CLASSES)
def test_an_unpickler_made_before_activation_gets_no_admission(kind, run_py, tmp_path):
    # Technique: a library's Unpickler subclass, made before activate(), calls the
    # guarded class's find_class by name (or runs its own load loop), so its
    # unchecked load once had every import admitted.
    sentinel = tmp_path / "sentinel"
    fire_then_refuse(
        run_py,
        tmp_path,
        hostile(sentinel, protocol=2),
        sentinel,
        code=EARLY_CLASSES[kind],
        setup=_library(tmp_path),
        load=f"rt_unpicklers.{kind}(open({str(tmp_path / 'payload.pkl')!r}, 'rb')).load()",
    )


@pytest.mark.parametrize("kind", ["ByName", "ByAttribute", "OwnLoad", "Loop"])
def test_the_same_classes_under_activation_from_the_environment(
    kind, run_py, tmp_path, wheel_installed
):
    # Activated before the library is imported: the C subclasses are subclasses of
    # the guarded class, so their loads are judged (and refused unlisted); the
    # loop's imports get no admission.
    sentinel = tmp_path / "sentinel"
    result = fire_then_refuse(
        run_py,
        tmp_path,
        hostile(sentinel, protocol=2),
        sentinel,
        code="backstop" if kind == "Loop" else "not-listed",
        setup=_library(tmp_path),
        load=f"rt_unpicklers.{kind}(open({str(tmp_path / 'payload.pkl')!r}, 'rb')).load()",
        activation="env",
    )
    assert result["sentinel"] is False


@pytest.mark.parametrize("activation", ["code", "env"])
def test_an_original_c_unpickler_reached_through_the_guarded_class(
    activation, run_py, tmp_path, request
):
    # Technique: after activation, subclass the original C Unpickler (reached as the
    # guarded class's base) and route find_class through the guarded class by name.
    if activation == "env":
        request.getfixturevalue("wheel_installed")
    sentinel = tmp_path / "sentinel"
    load = """
    import io
    Base = pickle.Unpickler.__mro__[-2]  # the original C class, guarded or not
    Guarded = pickle.Unpickler
    class Late(Base):
        def find_class(self, module, name):
            return Guarded.find_class(self, module, name)
    Late(io.BytesIO(DATA)).load()
    """
    fire_then_refuse(
        run_py,
        tmp_path,
        hostile(sentinel, protocol=2),
        sentinel,
        code="backstop",
        load=load,
        activation=activation,
    )


@pytest.mark.parametrize("flavor", ["Unpickler", "_Unpickler"])
@pytest.mark.parametrize("activation", ["code", "env"])
def test_find_class_called_outside_any_load_is_refused(
    flavor, activation, run_py, tmp_path, request
):
    # A direct call cannot be told apart from a load loop of one's own, which reads
    # the module and name from pickle data: neither is a load the gate judged.
    if activation == "env":
        request.getfixturevalue("wheel_installed")
    sentinel = tmp_path / "sentinel"
    load = f"""
    import io
    mkdir = pickle.{flavor}(io.BytesIO(b"")).find_class("os", "mkdir")
    mkdir(SENTINEL)
    """
    control = scenario(
        run_py, tmp_path, b"", sentinel, guarded=False, load=load, activation=activation
    )
    assert control["sentinel"] is True, control
    sentinel.rmdir()
    result = scenario(
        run_py, tmp_path, b"", sentinel, guarded=True, load=load, activation=activation
    )
    assert result["outcome"] == "refused" and result["code"] == "backstop", result
    assert result["sentinel"] is False


@pytest.mark.parametrize("kind", ["ByName", "ByAttribute", "OwnLoad", "Loop"])
def test_an_admitted_load_does_not_admit_the_unpicklers_it_starts(kind, run_py, tmp_path):
    # Technique: a listed pickle's REDUCE hands an unlisted file to a library
    # unpickler. The outer load is admitted; the inner unpickler is another object,
    # so none of its imports is (the old rule admitted any find_class call, or any
    # call under an admitted pure-Python load's frame).
    import pickle

    import pickleguard

    sentinel = tmp_path / "sentinel"
    inner = tmp_path / "inner.pkl"
    inner.write_bytes(hostile(sentinel, protocol=2))

    class Outer:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            import importlib

            module = importlib.import_module("rt_unpicklers")
            return (module.load_with, (kind, str(inner)))

    setup = _library(tmp_path)
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        (tmp_path / "rt_unpicklers.py").write_text(LIBRARY)
        outer = pickle.dumps(Outer(), protocol=2)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("rt_unpicklers", None)
    code = "backstop" if kind in ("OwnLoad", "Loop") else "early-unpickler"
    fire_then_refuse(
        run_py,
        tmp_path,
        outer,
        sentinel,
        code=code,
        setup=setup,
        manifest_entries=[{"sha256": pickleguard.identify(outer)[len("sha256:") :]}],
    )


GUARDED_SUBCLASSES = """
import io
class ByAttribute(pickle.Unpickler):
    def find_class(self, module, name):
        return pickle.Unpickler.find_class(self, module, name)
class BySuper(pickle.Unpickler):
    def find_class(self, module, name):
        return super().find_class(module, name)
class PyBySuper(pickle._Unpickler):
    def load(self):
        return super().load()
    def find_class(self, module, name):
        return super().find_class(module, name)
values = [cls(io.BytesIO(DATA)).load() for cls in (ByAttribute, BySuper, PyBySuper)]
values.append(pickle.loads(DATA))
result["values"] = [sorted(v.items()) for v in values]
"""


def test_subclasses_of_the_guarded_classes_still_load_a_listed_pickle(run_py, tmp_path):
    # The rule is not too tight: a listed pickle with globals loads through every
    # ordinary kind of subclass, find_class called by name, by super() or inherited.
    import collections
    import pickle

    import pickleguard

    data = pickle.dumps(collections.OrderedDict(a=1), protocol=2)
    result = scenario(
        run_py,
        tmp_path,
        data,
        tmp_path / "unused",
        guarded=True,
        load=GUARDED_SUBCLASSES,
        manifest_entries=[{"sha256": pickleguard.identify(data)[len("sha256:") :]}],
    )
    assert result["outcome"] == "loaded", result
    assert result["values"] == [[["a", 1]]] * 4
