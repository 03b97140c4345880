"""Red team: each opcode-level way of running code from a pickle is refused.

Every payload is hand-assembled here; its only effect is to create a sentinel path
under tmp_path. Each is first shown to fire without pickleguard, then refused by
``pickleguard.activate(<empty manifest>)`` with the sentinel absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Tuple

import pytest

from ._harness import (
    BUILD,
    EMPTY_DICT,
    EMPTY_TUPLE,
    MARK,
    MEMOIZE,
    NEWOBJ,
    NEWOBJ_EX,
    NONE,
    OBJ,
    POP,
    REDUCE,
    SETITEM,
    STACK_GLOBAL,
    STOP,
    TUPLE,
    TUPLE1,
    asm,
    binbytes,
    binget,
    ext1,
    ext2,
    ext4,
    fire_then_refuse,
    global_,
    inst,
    proto,
    reduce_payload,
    string,
    unicode,
    write_hooks_module,
)

# name -> builder(sentinel, tmp_path) -> (payload, setup code run before activation)
Builder = Callable[[Path, Path], Tuple[bytes, str]]
TECHNIQUES: Dict[str, Builder] = {}


def technique(name: str) -> Callable[[Builder], Builder]:
    def register(builder: Builder) -> Builder:
        TECHNIQUES[name] = builder
        return builder

    return register


@technique("REDUCE")
def _reduce(sentinel: Path, tmp_path: Path) -> Tuple[bytes, str]:
    # Technique: REDUCE of a GLOBAL (os.mkdir) on an argument tuple, protocol 0.
    return reduce_payload(sentinel, protocol=0), ""


@technique("INST")
def _inst(sentinel: Path, tmp_path: Path) -> Tuple[bytes, str]:
    # Technique: INST calls the named global on the marked arguments
    # (MARK 'path' INST os mkdir), no REDUCE opcode at all.
    return asm(MARK, string(str(sentinel)), inst("os", "mkdir"), STOP), ""


@technique("OBJ")
def _obj(sentinel: Path, tmp_path: Path) -> Tuple[bytes, str]:
    # Technique: OBJ calls the first marked item (os.mkdir) on the rest.
    return asm(MARK, global_("os", "mkdir"), string(str(sentinel)), OBJ, STOP), ""


@technique("OBJ with its result POPped")
def _obj_popped(sentinel: Path, tmp_path: Path) -> Tuple[bytes, str]:
    # Technique: OBJ whose result is POPped, so the pickle's value (None, pushed
    # after) shows no trace of the call.
    return asm(MARK, global_("os", "mkdir"), string(str(sentinel)), OBJ, POP, NONE, STOP), ""


@technique("NEWOBJ")
def _newobj(sentinel: Path, tmp_path: Path) -> Tuple[bytes, str]:
    # Technique: NEWOBJ runs cls.__new__(cls, *args) of a class whose __new__ has
    # a side effect (rt_hooks.MkdirOnNew).
    setup = write_hooks_module(tmp_path)
    payload = asm(
        proto(2), global_("rt_hooks", "MkdirOnNew"), unicode(str(sentinel)), TUPLE1, NEWOBJ, STOP
    )
    return payload, setup


@technique("NEWOBJ_EX")
def _newobj_ex(sentinel: Path, tmp_path: Path) -> Tuple[bytes, str]:
    # Technique: NEWOBJ_EX runs cls.__new__(cls, *args, **kwargs); the path is in kwargs.
    setup = write_hooks_module(tmp_path)
    payload = asm(
        proto(4),
        unicode("rt_hooks"),
        unicode("MkdirOnNew"),
        STACK_GLOBAL,
        EMPTY_TUPLE,
        EMPTY_DICT,
        unicode("kwpath"),
        unicode(str(sentinel)),
        SETITEM,
        NEWOBJ_EX,
        STOP,
    )
    return payload, setup


@technique("BUILD calling __setstate__")
def _build(sentinel: Path, tmp_path: Path) -> Tuple[bytes, str]:
    # Technique: NEWOBJ with no arguments builds a harmless instance, then BUILD
    # hands the state to its __setstate__, which has the side effect.
    setup = write_hooks_module(tmp_path)
    payload = asm(
        proto(2),
        global_("rt_hooks", "MkdirOnSetstate"),
        EMPTY_TUPLE,
        NEWOBJ,
        unicode(str(sentinel)),
        BUILD,
        STOP,
    )
    return payload, setup


@technique("STACK_GLOBAL with memoized operands")
def _stack_global_memo(sentinel: Path, tmp_path: Path) -> Tuple[bytes, str]:
    # Technique: the module and name strings are MEMOIZEd, POPped, and fetched back
    # with BINGET right before STACK_GLOBAL, so they are not adjacent to it.
    payload = asm(
        proto(4),
        unicode("os"),
        MEMOIZE,
        POP,
        unicode("mkdir"),
        MEMOIZE,
        POP,
        binget(0),
        binget(1),
        STACK_GLOBAL,
        unicode(str(sentinel)),
        TUPLE1,
        REDUCE,
        STOP,
    )
    return payload, ""


@technique("STACK_GLOBAL with a dotted qualname")
def _stack_global_dotted(sentinel: Path, tmp_path: Path) -> Tuple[bytes, str]:
    # Technique: protocol 4 resolves dotted names attribute by attribute: module
    # "os", name "path.os.mkdir" (os.path is posixpath, whose .os is os).
    payload = asm(
        proto(4),
        unicode("os"),
        unicode("path.os.mkdir"),
        STACK_GLOBAL,
        unicode(str(sentinel)),
        TUPLE1,
        REDUCE,
        STOP,
    )
    return payload, ""


def _ext(opcode: Callable[[int], bytes], code: int) -> Builder:
    def build(sentinel: Path, tmp_path: Path) -> Tuple[bytes, str]:
        # Registered in the control and in the guarded interpreter alike.
        setup = f"import copyreg\ncopyreg.add_extension('os', 'mkdir', {code})"
        payload = asm(proto(2), opcode(code), unicode(str(sentinel)), TUPLE1, REDUCE, STOP)
        return payload, setup

    return build


# Technique: EXT1/EXT2/EXT4 name os.mkdir through the copyreg extension registry,
# with no module or attribute name in the pickle at all.
technique("EXT1 after copyreg.add_extension")(_ext(ext1, 0xF0))
technique("EXT2 after copyreg.add_extension")(_ext(ext2, 0xF00F))
technique("EXT4 after copyreg.add_extension")(_ext(ext4, 0x0F00F00F))


@technique("Python 2 __builtin__.open remapped by fix_imports")
def _py2_builtin(sentinel: Path, tmp_path: Path) -> Tuple[bytes, str]:
    # Technique: a Python 2 style GLOBAL `__builtin__ open` (protocol 0), which
    # fix_imports remaps to builtins.open; open(path, "w") creates the file.
    payload = asm(
        global_("__builtin__", "open"),
        MARK,
        string(str(sentinel)),
        string("w"),
        TUPLE,
        REDUCE,
        STOP,
    )
    return payload, ""


@technique("Python 2 posix.mkdir at protocol 2")
def _py2_posix(sentinel: Path, tmp_path: Path) -> Tuple[bytes, str]:
    # Technique: os.mkdir as Python 2 pickled it (`posix mkdir`), protocol 2 with
    # fix_imports on (the default).
    payload = asm(proto(2), global_("posix", "mkdir"), unicode(str(sentinel)), TUPLE1, REDUCE, STOP)
    return payload, ""


@technique("Python 2 cPickle.loads remapped to pickle.loads")
def _py2_cpickle(sentinel: Path, tmp_path: Path) -> Tuple[bytes, str]:
    # Technique: `cPickle loads` (fix_imports maps cPickle to pickle) called on an
    # inner hostile pickle, so the outer names no dangerous global itself.
    inner = reduce_payload(sentinel, protocol=2)
    payload = asm(proto(2), global_("cPickle", "loads"), binbytes(inner), TUPLE1, REDUCE, STOP)
    return payload, ""


@pytest.mark.parametrize("name", TECHNIQUES)
def test_opcode_technique_fires_without_the_guard_and_is_refused(name, run_py, tmp_path):
    sentinel = tmp_path / "sentinel"
    payload, setup = TECHNIQUES[name](sentinel, tmp_path)
    fire_then_refuse(run_py, tmp_path, payload, sentinel, setup=setup)


@pytest.mark.parametrize("name", TECHNIQUES)
def test_opcode_technique_without_stop_is_never_run(name, run_py, tmp_path):
    # Technique: the same payload with its STOP cut off. Plain pickle runs every
    # opcode before failing; pickleguard cannot delimit it, so it runs nothing and
    # raises what plain pickle would (EOFError or UnpicklingError).
    sentinel = tmp_path / "sentinel"
    payload, setup = TECHNIQUES[name](sentinel, tmp_path)
    assert payload.endswith(STOP)
    # When the dry run stops at a placeholder the exception type can differ from
    # plain pickle's (documented in docs/model.md): NEWOBJ calls the placeholder's
    # __new__, which raises TypeError. What matters here is that nothing ran.
    fire_then_refuse(
        run_py,
        tmp_path,
        payload[:-1],
        sentinel,
        setup=setup,
        code=None,
        undelimited_errors=("EOFError", "UnpicklingError", "TypeError"),
    )
