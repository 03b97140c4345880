"""Helpers for the red-team suite: a small pickle assembler and the scenario runner.

Every technique is checked the same way, each step in a fresh interpreter:

1. control: the payload is loaded without pickleguard (not even imported) and must
   fire, creating the sentinel;
2. guarded: the same bytes are loaded after ``pickleguard.activate(<manifest>)``
   (enforce; an empty manifest unless a test lists something on purpose) and must
   be refused, with the sentinel absent afterwards.

The snippet prints one ``RESULT {json}`` line: ``outcome`` is ``refused`` (with the
NoPickleError ``code`` and ``sha256``), ``error`` (another exception: ``error`` is
its type name) or ``loaded``; ``sentinel`` says whether the sentinel exists.
"""

from __future__ import annotations

import json
import struct
import textwrap
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

from conftest import write_manifest

# ---------------------------------------------------------------------------
# A tiny assembler: each function returns the bytes of one opcode and its argument.

MARK = b"("
STOP = b"."
POP = b"0"
DUP = b"2"
NONE = b"N"
REDUCE = b"R"
BUILD = b"b"
OBJ = b"o"
TUPLE = b"t"
EMPTY_TUPLE = b")"
EMPTY_LIST = b"]"
EMPTY_DICT = b"}"
SETITEM = b"s"
APPEND = b"a"
TUPLE1 = b"\x85"
TUPLE2 = b"\x86"
NEWOBJ = b"\x81"
NEWOBJ_EX = b"\x92"
STACK_GLOBAL = b"\x93"
MEMOIZE = b"\x94"


def asm(*ops: bytes) -> bytes:
    return b"".join(ops)


def proto(n: int) -> bytes:
    return b"\x80" + bytes([n])


def global_(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def inst(module: str, name: str) -> bytes:
    return b"i" + module.encode() + b"\n" + name.encode() + b"\n"


def string(text: str) -> bytes:
    """Protocol-0 STRING (a quoted repr); loads as str with the default encoding."""
    return b"S" + repr(text).encode("ascii") + b"\n"


def unicode(text: str) -> bytes:
    """SHORT_BINUNICODE or BINUNICODE."""
    data = text.encode("utf-8")
    if len(data) < 256:
        return b"\x8c" + bytes([len(data)]) + data
    return b"X" + struct.pack("<I", len(data)) + data


def binbytes(data: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(data)) + data


def binget(i: int) -> bytes:
    return b"h" + bytes([i])


def long_binput(i: int) -> bytes:
    return b"r" + struct.pack("<I", i)


def long_binget(i: int) -> bytes:
    return b"j" + struct.pack("<I", i)


def ext1(code: int) -> bytes:
    return b"\x82" + struct.pack("<B", code)


def ext2(code: int) -> bytes:
    return b"\x83" + struct.pack("<H", code)


def ext4(code: int) -> bytes:
    return b"\x84" + struct.pack("<i", code)


def mkdir_reduce(sentinel: Path, protocol: int = 2) -> bytes:
    """``os.mkdir(sentinel)`` as GLOBAL + args + REDUCE (no STOP)."""
    if protocol == 0:
        return asm(global_("os", "mkdir"), MARK, string(str(sentinel)), TUPLE, REDUCE)
    return asm(global_("os", "mkdir"), unicode(str(sentinel)), TUPLE1, REDUCE)


def reduce_payload(sentinel: Path, protocol: int = 2) -> bytes:
    """The basic hostile pickle: REDUCE of ``os.mkdir(sentinel)``."""
    head = proto(protocol) if protocol >= 2 else b""
    return asm(head, mkdir_reduce(sentinel, protocol), STOP)


# A module the NEWOBJ / NEWOBJ_EX / BUILD payloads name; each hook creates `path`.
HOOKS_MODULE = """
import os


class MkdirOnNew:
    def __new__(cls, path=None, *, kwpath=None):
        os.mkdir(path or kwpath)
        return object.__new__(cls)


class MkdirOnSetstate:
    def __setstate__(self, state):
        os.mkdir(state)
"""


def write_hooks_module(tmp_path: Path) -> str:
    """Write ``rt_hooks.py`` into tmp_path; return setup code that makes it importable."""
    (tmp_path / "rt_hooks.py").write_text(HOOKS_MODULE)
    return f"sys.path.insert(0, {str(tmp_path)!r})"


# ---------------------------------------------------------------------------
# The scenario runner.

_TEMPLATE = """
import contextlib, json, os, sys
SENTINEL = {sentinel!r}
{limits}
import pickle
{setup}
{activate}

def grant(*digests):
    "Lift the guard's layer in this thread/task (a no-op in the control)."
    if TOKEN is None:
        return contextlib.nullcontext()
    if digests:
        return pickleguard.allow_pickles(TOKEN, only_objects=list(digests))
    return pickleguard.allow_pickles(TOKEN)

DATA = open({payload!r}, "rb").read()
result = {{}}
try:
{load}
except NoPickleError as e:
    result.update(outcome="refused", code=e.code, sha256=e.sha256)
except BaseException as e:
    result.update(outcome="error", error=type(e).__name__, message=str(e)[:300])
else:
    result.update(outcome="loaded")
result["sentinel"] = os.path.exists(SENTINEL)
{after}
print("RESULT " + json.dumps(result))
"""

_CONTROL = """
assert "pickleguard" not in sys.modules
TOKEN = None
class NoPickleError(Exception):
    "Never raised: pickleguard is not imported in the control."
"""

_GUARDED = """
import pickleguard
from pickleguard import NoPickleError
TOKEN = pickleguard.activate({manifest!r})
"""

# Activation from the environment: the .pth file activated pickleguard before this
# snippet's first line, so its setup code runs after activation and no token exists.
_GUARDED_FROM_ENV = """
import pickleguard
from pickleguard import NoPickleError
assert pickleguard._core.enforcing(), "PICKLEGUARD_MANIFEST did not activate the guard"
TOKEN = None
"""

# Address-space cap for the resource tests: a load that tries to allocate more
# fails with MemoryError instead of taking the machine down.
RLIMIT_1GIB = "import resource\nresource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))"

# Peak RSS of this process's own memory (VmHWM): ru_maxrss on Linux keeps the peak
# of the forked copy of the parent across exec, so a large test runner would show.
MAXRSS = (
    "result['maxrss_mib'] = next(int(line.split()[1]) // 1024 for line in "
    "open('/proc/self/status') if line.startswith('VmHWM:'))"
)


def scenario(
    run_py: Callable[..., Any],
    tmp_path: Path,
    payload: bytes,
    sentinel: Path,
    *,
    guarded: bool,
    load: str = "pickle.loads(DATA)",
    setup: str = "",
    manifest_entries: Iterable[Dict[str, Any]] = (),
    limits: str = "",
    after: str = "",
    name: str = "payload.pkl",
    activation: str = "code",
) -> Dict[str, Any]:
    """Run one step in a fresh interpreter and return its RESULT dict.

    ``activation`` is ``"code"`` (``pickleguard.activate()`` after ``setup``) or
    ``"env"`` (``PICKLEGUARD_MANIFEST``, so the .pth file activates pickleguard
    before ``setup`` runs; needs the wheel installed)."""
    path = tmp_path / name
    path.write_bytes(payload)
    env = None
    if guarded:
        manifest = write_manifest(tmp_path / "manifest.toml", *manifest_entries)
        if activation == "env":
            activate = _GUARDED_FROM_ENV
            env = {"PICKLEGUARD_MANIFEST": str(manifest)}
        else:
            activate = _GUARDED.format(manifest=str(manifest))
    else:
        activate = _CONTROL
    code = _TEMPLATE.format(
        sentinel=str(sentinel),
        limits=limits,
        setup=setup,
        activate=activate,
        payload=str(path),
        load=textwrap.indent(textwrap.dedent(load).strip(), "    "),
        after=after,
    )
    return run_snippet(run_py, code, env)


def run_snippet(
    run_py: Callable[..., Any], code: str, env: Optional[Dict[str, str]]
) -> Dict[str, Any]:
    """Run a snippet built from _TEMPLATE and return its RESULT dict, with the tail
    of its stderr."""
    proc = run_py(code, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout + proc.stderr
    result: Dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    result["stderr"] = proc.stderr[-2000:]
    return result


def clear(sentinel: Path) -> None:
    if sentinel.is_dir():
        sentinel.rmdir()
    elif sentinel.exists():
        sentinel.unlink()


def assert_fires(result: Dict[str, Any], sentinel: Path) -> None:
    assert result["sentinel"] is True, f"the payload must fire without the guard: {result}"
    assert sentinel.exists()


def assert_refused(result: Dict[str, Any], sentinel: Path, code: str = "not-listed") -> None:
    assert result["outcome"] == "refused", result
    assert result["code"] == code, result
    assert result["sentinel"] is False, result
    assert not sentinel.exists()


def fire_then_refuse(
    run_py: Callable[..., Any],
    tmp_path: Path,
    payload: bytes,
    sentinel: Path,
    *,
    code: Optional[str] = "not-listed",
    undelimited_errors: Tuple[str, ...] = ("EOFError", "UnpicklingError"),
    **options: Any,
) -> Dict[str, Any]:
    """Show the payload fires without the guard, then that the guard refuses it.

    With ``code=None`` the guarded step must instead fail with one of
    ``undelimited_errors``: input pickleguard cannot delimit (a pickle with no
    STOP) is never run; it raises what plain pickle would, as far as a dry run
    with inert placeholders for every global can tell (docs/model.md).
    """
    control = scenario(run_py, tmp_path, payload, sentinel, guarded=False, **options)
    assert_fires(control, sentinel)
    clear(sentinel)
    result = scenario(run_py, tmp_path, payload, sentinel, guarded=True, **options)
    if code is None:
        assert result["outcome"] == "error", result
        assert result["error"] in undelimited_errors, result
        assert result["sentinel"] is False, result
        assert not sentinel.exists()
    else:
        assert_refused(result, sentinel, code)
    return result
