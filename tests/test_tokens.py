"""Tokens and scopes: no_pickles() / allow_pickles(), per thread and per asyncio task."""

from __future__ import annotations

import pickle

from conftest import hostile, write_manifest

PRELUDE = """
import asyncio, copy, io, json, os, pickle, sys, threading
import pickleguard
from pickleguard import BadTokenError, NoPickleError, allow_pickles, no_pickles

DATA = pickle.dumps({"ok": True})

def loads_ok():
    try:
        return pickle.loads(DATA) == {"ok": True}
    except NoPickleError:
        return False
"""


def test_no_pickles_scope_denies_until_its_token_allows(run_py, tmp_path):
    sentinel = tmp_path / "sentinel"
    payload = hostile(sentinel)
    (tmp_path / "p.pkl").write_bytes(payload)
    run_py(
        PRELUDE
        + """
assert loads_ok()  # no layer yet
with no_pickles() as token:
    assert not loads_ok()
    with allow_pickles(token):
        assert loads_ok()
    with allow_pickles(token, only_objects=[pickleguard.identify(DATA)]):
        assert loads_ok()
        try:
            pickle.load(open("p.pkl", "rb"))
        except NoPickleError as e:
            assert e.code == "scope"
        else:
            raise SystemExit("only_objects let the payload through")
    assert not loads_ok()
assert loads_ok()  # the scope ended with its block
"""
    )
    assert not sentinel.exists()
    pickle.loads(payload)
    assert sentinel.exists(), "the payload must fire without the guard"


def test_a_library_cannot_lift_the_operators_denial(run_py, tmp_path):
    manifest = write_manifest(tmp_path / "empty.toml")
    run_py(
        PRELUDE
        + f"""
pickleguard.activate({str(manifest)!r})
# A library opens its own scope and allows its own token ...
with no_pickles() as library_token:
    with allow_pickles(library_token):
        try:
            pickle.loads(DATA)
        except NoPickleError as e:
            # ... which never lifts the operator's layer.
            assert e.code == "not-listed", e.code
        else:
            raise SystemExit("a library lifted the operator's denial")
"""
    )


def test_scopes_nest_and_each_must_be_lifted(run_py):
    run_py(
        PRELUDE
        + """
with no_pickles() as outer:
    with no_pickles() as inner:
        with allow_pickles(inner):
            assert not loads_ok()
            with allow_pickles(outer):
                assert loads_ok()
    with allow_pickles(outer):
        assert loads_ok()
"""
    )


def test_forged_copied_pickled_and_expired_tokens_are_refused(run_py):
    proc = run_py(
        PRELUDE
        + """
def refused(action):
    try:
        action()
    except BadTokenError as e:
        return True
    return False

token = pickleguard.activate(mode="warn")
results = {
    "forged object": refused(lambda: allow_pickles(object())),
    "forged string": refused(lambda: allow_pickles("token")),
    "copy": refused(lambda: copy.copy(token)),
    "deepcopy": refused(lambda: copy.deepcopy(token)),
    "pickle": refused(lambda: pickle.dumps(token)),
}
try:
    type(token)()
except TypeError:
    results["construct"] = True
else:
    results["construct"] = False
with no_pickles() as scoped:
    pass
results["expired"] = refused(lambda: allow_pickles(scoped))
results["closed scope copy"] = refused(lambda: copy.copy(scoped))
print(json.dumps(results))
"""
    )
    import json

    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(results.values()), results


def test_a_scope_token_does_not_work_in_another_thread(run_py):
    run_py(
        PRELUDE
        + """
errors = []
with no_pickles() as token:
    def other():
        try:
            allow_pickles(token)
        except BadTokenError:
            errors.append("refused")
    t = threading.Thread(target=other)
    t.start(); t.join()
assert errors == ["refused"], errors
"""
    )


def test_a_grant_never_leaks_into_another_thread(run_py):
    run_py(
        PRELUDE
        + """
token = pickleguard.activate()
inside = threading.Event()
checked = threading.Event()
seen = {}

def other_thread():
    inside.wait()
    seen["other thread while granted"] = loads_ok()
    checked.set()

t = threading.Thread(target=other_thread)
t.start()
with allow_pickles(token):
    inside.set()
    checked.wait()
    seen["granting thread"] = loads_ok()
t.join()
seen["granting thread after the block"] = loads_ok()
assert seen == {
    "other thread while granted": False,
    "granting thread": True,
    "granting thread after the block": False,
}, seen
"""
    )


def test_a_grant_never_leaks_into_another_asyncio_task(run_py):
    run_py(
        PRELUDE
        + """
token = pickleguard.activate()
seen = {}

async def granted(ready, done):
    with allow_pickles(token):
        ready.set()
        # A task created inside the grant inherits the context, not the grant.
        seen["child task"] = await asyncio.create_task(child())
        await done.wait()
        seen["granting task"] = loads_ok()
    seen["granting task after the block"] = loads_ok()

async def child():
    return loads_ok()

async def bystander(ready, done):
    await ready.wait()
    seen["other task"] = loads_ok()
    done.set()

async def main():
    ready, done = asyncio.Event(), asyncio.Event()
    await asyncio.gather(granted(ready, done), bystander(ready, done))
    # Work pushed to a thread with the task's context copied (asyncio.to_thread).
    if hasattr(asyncio, "to_thread"):
        with allow_pickles(token):
            seen["to_thread"] = await asyncio.to_thread(loads_ok)

asyncio.run(main())
assert seen == {
    "child task": False,
    "other task": False,
    "granting task": True,
    "granting task after the block": False,
    "to_thread": False,
}, seen
"""
    )


def test_deny_scopes_follow_tasks_created_inside_them(run_py):
    run_py(
        PRELUDE
        + """
async def main():
    with no_pickles():
        return await asyncio.create_task(async_loads())

async def async_loads():
    return loads_ok()

assert asyncio.run(main()) is False
"""
    )


def test_the_process_token_cannot_close_the_process_layer(run_py):
    run_py(
        PRELUDE
        + """
from pickleguard import PickleGuardError
token = pickleguard.activate()
for attempt in (lambda: token.close(), lambda: token.__enter__()):
    try:
        attempt()
    except PickleGuardError:
        pass
    else:
        raise SystemExit("closed the process layer")
assert not loads_ok()
"""
    )


def test_only_objects_must_be_digests(run_py):
    run_py(
        PRELUDE
        + """
token = pickleguard.activate()
for bad in (["md5:abc"], ["sha256:xyz"], "sha256:" + "0" * 64):
    try:
        allow_pickles(token, only_objects=bad)
    except (ValueError, TypeError):
        pass
    else:
        raise SystemExit(f"accepted {bad!r}")
"""
    )


def test_call_site_pins(run_py, tmp_path):
    data = pickle.dumps([1, 2])
    import pickleguard

    digest = pickleguard.identify(data)
    empty = write_manifest(tmp_path / "empty.toml")
    run_py(
        PRELUDE
        + f"""
DATA = {data!r}
DIGEST = {digest!r}
assert pickleguard.loads(DATA, sha256=DIGEST) == [1, 2]
assert pickleguard.load(io.BytesIO(DATA), sha256=DIGEST[len("sha256:"):]) == [1, 2]
try:
    pickleguard.loads(pickle.dumps([1, 3]), sha256=DIGEST)
except NoPickleError as e:
    assert e.code == "pin-mismatch", e.code
else:
    raise SystemExit("a pin mismatch loaded")
# A pin never lifts the operator's layers.
pickleguard.activate({str(empty)!r})
try:
    pickleguard.loads(DATA, sha256=DIGEST)
except NoPickleError as e:
    assert e.code == "not-listed", e.code
else:
    raise SystemExit("a pin lifted the operator's denial")
"""
    )


def test_one_grant_object_shared_by_overlapping_tasks(run_py):
    run_py(
        PRELUDE
        + """
token = pickleguard.activate()
grant = allow_pickles(token)
seen = {}

async def worker(name, enter, leave):
    await enter.wait()
    with grant:
        seen[name + " inside"] = loads_ok()
        await leave.wait()
        seen[name + " inside at the end"] = loads_ok()
    seen[name + " after"] = loads_ok()

async def main():
    a_in, b_in, a_out, b_out = (asyncio.Event() for _ in range(4))
    ta = asyncio.create_task(worker("a", a_in, a_out))
    tb = asyncio.create_task(worker("b", b_in, b_out))
    a_in.set(); await asyncio.sleep(0.01)
    b_in.set(); await asyncio.sleep(0.01)
    a_out.set(); await asyncio.sleep(0.01)   # a leaves first: b's grant must survive
    b_out.set()
    await asyncio.gather(ta, tb)

asyncio.run(main())
assert seen == {"a inside": True, "b inside": True,
                "a inside at the end": True, "b inside at the end": True,
                "a after": False, "b after": False}, seen
"""
    )
