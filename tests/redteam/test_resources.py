"""Red team: memo-expansion and reference bombs are refused before they allocate.

The guarded step runs under RLIMIT_AS = 1 GiB and must end in a clean refusal
(NoPickleError, or EOFError/UnpicklingError for input with no STOP), never in a
MemoryError, with a peak RSS far below what the bomb allocates in plain pickle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Tuple

import pytest

from ._harness import (
    DUP,
    EMPTY_LIST,
    MAXRSS,
    MEMOIZE,
    NONE,
    POP,
    RLIMIT_1GIB,
    STOP,
    TUPLE2,
    asm,
    assert_fires,
    binget,
    clear,
    long_binget,
    long_binput,
    mkdir_reduce,
    proto,
    scenario,
)

# Peak RSS (MiB) a guarded refusal may reach: the interpreter and pickleguard take
# about 20 MiB; every allocating bomb below asks for 256 MiB or more.
QUIET_RSS_MIB = 128


def _fire(sentinel: Path) -> bytes:
    return asm(mkdir_reduce(sentinel), POP)


def long_binput_256mib(sentinel: Path) -> bytes:
    # Technique: LONG_BINPUT at index 2**24. The C unpickler grows its memo array to
    # twice the index and zeroes it: 2**25 pointers, 256 MiB, from 6 bytes.
    return asm(proto(2), EMPTY_LIST, long_binput(1 << 24), POP, _fire(sentinel), NONE)


def long_binput_64gib(sentinel: Path) -> bytes:
    # Technique: LONG_BINPUT at index 2**32 - 1: a 64 GiB memo array (MemoryError
    # in plain pickle before anything after it runs).
    return asm(proto(2), EMPTY_LIST, long_binput(0xFFFFFFFF), POP, _fire(sentinel), NONE)


def put_64gib(sentinel: Path) -> bytes:
    # Technique: protocol-0 PUT with a huge decimal index (same memo growth as above).
    return asm(b"(l", b"p4294967295\n", POP, mkdir_reduce(sentinel, protocol=0), POP, NONE)


def long_binget_huge(sentinel: Path) -> bytes:
    # Technique: LONG_BINGET of index 2**32 - 16, far past anything memoized (after
    # the REDUCE, so plain pickle runs it first and then fails on the lookup).
    return asm(proto(2), _fire(sentinel), long_binget(0xFFFFFFF0), NONE)


def dup_nesting(sentinel: Path) -> bytes:
    # Technique: "billion laughs" by DUP: 64 times DUP + TUPLE2 builds a tuple whose
    # expansion holds 2**64 references to one list, in 129 opcodes.
    return asm(proto(2), EMPTY_LIST, (DUP + TUPLE2) * 64, POP, _fire(sentinel), NONE)


def binget_nesting(sentinel: Path) -> bytes:
    # Technique: "billion laughs" by memo: each level is MEMOIZEd and fetched twice
    # with BINGET into the next (2**64 references to one list after 64 levels).
    levels = b"".join(asm(binget(i), binget(i), TUPLE2, MEMOIZE, POP) for i in range(64))
    return asm(proto(4), EMPTY_LIST, MEMOIZE, POP, levels, _fire(sentinel), NONE)


# name -> (builder of the payload without STOP, what plain pickle does with it)
# "fires": creates the sentinel; "allocates": also reaches QUIET_RSS_MIB and more;
# "memoryerror": raises MemoryError before reaching the sentinel (the bomb fired).
BOMBS: Dict[str, Tuple[Callable[[Path], bytes], str]] = {
    "LONG_BINPUT 2**24 (256 MiB memo)": (long_binput_256mib, "allocates"),
    "LONG_BINPUT 2**32-1 (64 GiB memo)": (long_binput_64gib, "memoryerror"),
    "PUT 4294967295 (64 GiB memo)": (put_64gib, "memoryerror"),
    "LONG_BINGET 2**32-16": (long_binget_huge, "fires"),
    "DUP/TUPLE2 nesting": (dup_nesting, "fires"),
    "MEMOIZE/BINGET nesting": (binget_nesting, "fires"),
}

CASES = []
for _name, (_build, _plain) in BOMBS.items():
    CASES.append(pytest.param(_name, True, id=f"{_name}-with STOP"))
    CASES.append(pytest.param(_name, False, id=f"{_name}-no STOP"))


@pytest.mark.parametrize("name, with_stop", CASES)
def test_memory_bomb_is_refused_before_it_allocates(name, with_stop, run_py, tmp_path):
    # Technique: the bomb named by `name` (see its builder), with or without STOP.
    build, plain = BOMBS[name]
    sentinel = tmp_path / "sentinel"
    payload = build(sentinel) + (STOP if with_stop else b"")
    options = dict(limits=RLIMIT_1GIB, after=MAXRSS)

    control = scenario(run_py, tmp_path, payload, sentinel, guarded=False, **options)
    if plain == "memoryerror":
        # The bomb fires first: plain pickle never gets to the sentinel.
        assert control["outcome"] == "error" and control["error"] == "MemoryError", control
    else:
        assert_fires(control, sentinel)
        clear(sentinel)
    if plain == "allocates":
        assert control["maxrss_mib"] >= 256, f"peak RSS {control['maxrss_mib']} MiB: {control}"

    result = scenario(run_py, tmp_path, payload, sentinel, guarded=True, **options)
    assert result["sentinel"] is False, result
    assert not sentinel.exists()
    if with_stop:
        assert result["outcome"] == "refused" and result["code"] == "not-listed", result
    else:
        assert result["outcome"] == "error", result
        assert result["error"] in ("EOFError", "UnpicklingError"), result
    assert result["maxrss_mib"] < QUIET_RSS_MIB, f"peak RSS {result['maxrss_mib']} MiB: {result}"
