"""Red team: worker processes started before an in-code ``activate()``.

A fork worker is a copy of the process as it was when it forked, a spawn worker
read the environment as it was when it started, and a forkserver forks copies of
itself, an interpreter that started before the layer existed. None of them gets a
layer that ``activate()`` adds later. Techniques:

* start the forkserver before activating, then create a pool: its workers would
  be forked by the unguarded forkserver (activation makes multiprocessing start a
  new one);
* create a pool or executor before activating, and hand a worker the payload
  after (activation raises PickleGuardError naming the workers, so a program that
  does this stops before any task runs);
* catch that error and keep using the pool: a respawned worker must be guarded.

Each payload is a file that a worker task loads. It is shown to fire in the
worker without pickleguard first, in a fresh interpreter, then refused. These
scenarios need the .pth file (spawn and forkserver workers activate through it).
"""

from __future__ import annotations

import json
import pickle
import textwrap
from pathlib import Path
from typing import Any, Callable, Dict

import pytest

import pickleguard
from conftest import hostile, write_manifest

from ._harness import assert_fires, clear

pytestmark = pytest.mark.usefixtures("wheel_installed")

METHODS = ["fork", "spawn", "forkserver"]
LISTED = pickle.dumps({"listed": 1})

# The worker's code, importable by spawn and forkserver workers. It reports
# instead of raising, so that a refusal reads the same from every kind of pool.
TASKS = """
import os, pickle, sys


def load(path):
    core = sys.modules.get("pickleguard._core")
    report = {"pid": os.getpid(), "layers": len(core.process_layers()) if core else 0}
    try:
        with open(path, "rb") as f:
            report.update(outcome="loaded", value=repr(pickle.load(f)))
    except Exception as e:
        report.update(outcome=type(e).__name__, code=getattr(e, "code", None))
    return report


def pid():
    return os.getpid()
"""

_TEMPLATE = """
import json, os, sys
sys.path.insert(0, {tmp!r})
import multiprocessing, concurrent.futures
import pa_tasks

HOSTILE, LISTED, SENTINEL = {hostile!r}, {listed!r}, {sentinel!r}
ctx = multiprocessing.get_context({method!r})
result = {{}}
{before}
if {guarded!r}:
    import pickleguard
    from pickleguard import PickleGuardError
    try:
        pickleguard.activate({manifest!r}{mode})
    except PickleGuardError as e:
        result["activation"] = str(e)
    else:
        result["activation"] = "ok"
    import pickle
    try:
        pickle.loads(pickle.dumps([1]))
        result["parent refuses"] = False
    except pickleguard.NoPickleError:
        result["parent refuses"] = True
    stop = {stop!r} and result["activation"] != "ok"
else:
    stop = False
if not stop:
{after}
result["sentinel"] = os.path.exists(SENTINEL)
print("RESULT " + json.dumps(result))
"""


def manifest_for(tmp_path: Path) -> Path:
    """A manifest listing LISTED and the multiprocessing channel (task messages)."""
    path = write_manifest(
        tmp_path / "manifest.toml", {"sha256": pickleguard.identify(LISTED)[len("sha256:") :]}
    )
    callers = ", ".join(f'"{c}"' for c in pickleguard._core.channel_callers("multiprocessing"))
    with path.open("a") as f:
        f.write(f'[[channel]]\nname = "multiprocessing"\ncallers = [{callers}]\n')
    return path


def run_scenario(
    run_py: Callable[..., Any],
    tmp_path: Path,
    method: str,
    *,
    guarded: bool,
    before: str,
    after: str,
    stop: bool = True,
    mode: str = "enforce",
) -> Dict[str, Any]:
    """Run one step in a fresh interpreter: ``before`` runs unguarded, then
    (``guarded``) ``activate()`` runs, then ``after`` unless ``stop`` and
    activation raised. Returns its RESULT dict."""
    (tmp_path / "pa_tasks.py").write_text(TASKS)
    sentinel = tmp_path / "sentinel"
    (tmp_path / "hostile.pkl").write_bytes(hostile(sentinel))
    (tmp_path / "listed.pkl").write_bytes(LISTED)
    code = _TEMPLATE.format(
        tmp=str(tmp_path),
        hostile=str(tmp_path / "hostile.pkl"),
        listed=str(tmp_path / "listed.pkl"),
        sentinel=str(sentinel),
        method=method,
        before=textwrap.dedent(before).strip(),
        guarded=guarded,
        manifest=str(manifest_for(tmp_path)),
        mode="" if mode == "enforce" else f", mode={mode!r}",
        stop=stop,
        after=textwrap.indent(textwrap.dedent(after).strip(), "    "),
    )
    proc = run_py(code)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout + proc.stderr
    result: Dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    result["stderr"] = proc.stderr[-3000:]
    return result


def fires_in_the_worker(
    run_py: Callable[..., Any], tmp_path: Path, method: str, **steps: Any
) -> Dict[str, Any]:
    """The control: the same steps without pickleguard; the payload must fire."""
    control = run_scenario(run_py, tmp_path, method, guarded=False, **steps)
    assert_fires(control, tmp_path / "sentinel")
    clear(tmp_path / "sentinel")
    return control


def assert_refused_in_worker(report: Dict[str, Any]) -> None:
    assert report["outcome"] == "NoPickleError" and report["code"] == "not-listed", report
    assert report["layers"] >= 1, report


# ---------------------------------------------------------------------------
# A forkserver started before activation, with no worker alive.

FORKSERVER_STARTED = """
import multiprocessing.forkserver
p = ctx.Process(target=pa_tasks.pid)
p.start()
p.join()
result["old forkserver"] = multiprocessing.forkserver._forkserver._forkserver_pid
"""

POOL_LOADS = """
with ctx.Pool(1) as pool:
    result["hostile"] = pool.apply(pa_tasks.load, (HOSTILE,))
    result["listed"] = pool.apply(pa_tasks.load, (LISTED,))
"""


def test_a_forkserver_started_before_activation_is_replaced(run_py, tmp_path):
    # Technique: start the forkserver (any forkserver process does) before
    # activate(), then create a pool after it; its workers fork from the server.
    control = fires_in_the_worker(
        run_py, tmp_path, "forkserver", before=FORKSERVER_STARTED, after=POOL_LOADS
    )
    assert control["hostile"]["outcome"] == "loaded", control
    result = run_scenario(
        run_py,
        tmp_path,
        "forkserver",
        guarded=True,
        before=FORKSERVER_STARTED + "import multiprocessing.forkserver as fs\n",
        after=POOL_LOADS + 'result["new forkserver"] = fs._forkserver._forkserver_pid\n',
    )
    assert result["activation"] == "ok", result
    assert_refused_in_worker(result["hostile"])
    assert result["sentinel"] is False and not (tmp_path / "sentinel").exists()
    assert result["listed"]["outcome"] == "loaded", result
    assert result["listed"]["value"] == repr({"listed": 1})
    assert result["new forkserver"] != result["old forkserver"], result


# ---------------------------------------------------------------------------
# Workers alive at activation.

LIVE_WORKERS = {
    "pool": """
        pool = ctx.Pool(2)
        result["workers"] = sorted(p.pid for p in pool._pool)
    """,
    "executor": """
        pool = concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx)
        pool.submit(pa_tasks.pid).result()
        result["workers"] = sorted(p.pid for p in multiprocessing.active_children())
    """,
}

USE_LIVE_WORKERS = {
    "pool": 'result["hostile"] = pool.apply(pa_tasks.load, (HOSTILE,))\npool.close()\npool.join()',
    "executor": 'result["hostile"] = pool.submit(pa_tasks.load, HOSTILE).result()\npool.shutdown()',
}

WORKER_NAMES = {
    ("pool", "fork"): "ForkPoolWorker",
    ("pool", "spawn"): "SpawnPoolWorker",
    ("pool", "forkserver"): "ForkServerPoolWorker",
    ("executor", "fork"): "ForkProcess",
    ("executor", "spawn"): "SpawnProcess",
    ("executor", "forkserver"): "ForkServerProcess",
}


@pytest.mark.parametrize("kind", ["pool", "executor"])
@pytest.mark.parametrize("method", METHODS)
def test_activation_with_workers_alive_raises_and_names_them(run_py, tmp_path, kind, method):
    # Technique: create a Pool or ProcessPoolExecutor (its workers started)
    # before activate(), then hand a worker the payload.
    steps = {"before": LIVE_WORKERS[kind], "after": USE_LIVE_WORKERS[kind]}
    control = fires_in_the_worker(run_py, tmp_path, method, **steps)
    assert control["hostile"]["outcome"] == "loaded" and len(control["workers"]) >= 1, control
    result = run_scenario(run_py, tmp_path, method, guarded=True, **steps)
    message = result["activation"]
    assert message.startswith("pickleguard activated in this process"), result
    for pid in result["workers"]:
        assert f"pid {pid} ({WORKER_NAMES[kind, method]}-" in message, message
    assert f", {method})" in message
    assert "load every pickle unguarded" in message or "loads every pickle unguarded" in message
    assert "hint: call pickleguard.activate() before creating pools" in message
    assert "hostile" not in result, result  # the program stopped at activation
    assert result["parent refuses"] is True, result  # the layer is installed anyway
    assert result["sentinel"] is False and not (tmp_path / "sentinel").exists()


RESPAWNING_POOL = """
pool = ctx.Pool(1, maxtasksperchild=1)
result["workers"] = [p.pid for p in pool._pool]
"""

# After a caught activation error: the first task goes to the worker the error
# named; it exits after one task and the pool starts another.
AFTER_THE_ERROR = """
result["first"] = pool.apply(pa_tasks.load, (LISTED,))
result["hostile"] = pool.apply(pa_tasks.load, (HOSTILE,))
pool.close()
pool.join()
"""


@pytest.mark.parametrize("method", METHODS)
def test_a_worker_respawned_after_activation_is_guarded(run_py, tmp_path, method):
    # Technique: catch the activation error and keep using the pool, whose
    # workers are replaced after each task (maxtasksperchild=1).
    steps = {"before": RESPAWNING_POOL, "after": AFTER_THE_ERROR, "stop": False}
    control = fires_in_the_worker(run_py, tmp_path, method, **steps)
    assert control["hostile"]["outcome"] == "loaded", control
    result = run_scenario(run_py, tmp_path, method, guarded=True, **steps)
    assert f"pid {result['workers'][0]} (" in result["activation"], result
    # The error was true: the worker it named runs without any layer.
    assert result["first"]["pid"] == result["workers"][0], result
    assert result["first"]["layers"] == 0, result
    # Its replacement was started by the guarded process (or a new forkserver).
    assert result["hostile"]["pid"] != result["workers"][0], result
    assert_refused_in_worker(result["hostile"])
    assert result["sentinel"] is False and not (tmp_path / "sentinel").exists()


def test_an_activation_that_adds_a_stricter_layer_names_the_workers_it_misses(run_py, tmp_path):
    # Technique: activate in warn mode, create a pool, then activate an enforcing
    # layer: the workers have only the warn layer, which lets the payload run.
    fires_in_the_worker(
        run_py, tmp_path, "fork", before=LIVE_WORKERS["pool"], after=USE_LIVE_WORKERS["pool"]
    )
    steps = {
        "before": "import pickleguard\npickleguard.activate(None, mode='warn')\n"
        + textwrap.dedent(LIVE_WORKERS["pool"]),
        "after": USE_LIVE_WORKERS["pool"],
    }
    # The warn layer alone lets it run in the workers.
    warned = run_scenario(run_py, tmp_path, "fork", guarded=False, **steps)
    assert_fires(warned, tmp_path / "sentinel")
    clear(tmp_path / "sentinel")
    result = run_scenario(run_py, tmp_path, "fork", guarded=True, **steps)
    assert "do not enforce the layer this call added" in result["activation"], result
    assert "hostile" not in result and result["parent refuses"] is True, result
    assert result["sentinel"] is False and not (tmp_path / "sentinel").exists()


def test_a_manager_started_before_activation_is_named(run_py, tmp_path):
    result = run_scenario(
        run_py,
        tmp_path,
        "spawn",
        guarded=True,
        before="manager = ctx.Manager()\nresult['manager'] = manager._process.pid",
        after="pass",
    )
    assert f"pid {result['manager']} (SyncManager-1, spawn)" in result["activation"], result
    assert "It started before pickleguard was active" in result["activation"]


def test_warn_mode_reports_the_workers_and_activates(run_py, tmp_path):
    result = run_scenario(
        run_py,
        tmp_path,
        "fork",
        guarded=True,
        mode="warn",
        before=LIVE_WORKERS["pool"],
        after="pool.close()\npool.join()",
    )
    assert result["activation"] == "ok", result
    warning = "warn mode, activating anyway: pickleguard activated in this process"
    assert warning in result["stderr"], result
    for pid in result["workers"]:
        assert f"pid {pid} (ForkPoolWorker-" in result["stderr"], result


# ---------------------------------------------------------------------------
# Executors and pools that start their workers after activation.

EXECUTOR_WITHOUT_WORKERS = """
pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx)
result["children before"] = len(multiprocessing.active_children())
"""

EXECUTOR_LOADS = """
result["hostile"] = pool.submit(pa_tasks.load, HOSTILE).result()
result["listed"] = pool.submit(pa_tasks.load, LISTED).result()
pool.shutdown()
"""


@pytest.mark.parametrize("method", METHODS)
def test_an_executor_created_before_activation_starts_guarded_workers(run_py, tmp_path, method):
    # Technique: create the ProcessPoolExecutor before activate(); it starts its
    # workers only on the first submit, after activation.
    steps = {"before": EXECUTOR_WITHOUT_WORKERS, "after": EXECUTOR_LOADS}
    control = fires_in_the_worker(run_py, tmp_path, method, **steps)
    assert control["hostile"]["outcome"] == "loaded", control
    result = run_scenario(run_py, tmp_path, method, guarded=True, **steps)
    assert result["children before"] == 0 and result["activation"] == "ok", result
    assert_refused_in_worker(result["hostile"])
    assert result["listed"]["outcome"] == "loaded", result
    assert result["sentinel"] is False and not (tmp_path / "sentinel").exists()


@pytest.mark.parametrize("method", METHODS)
def test_a_pool_created_after_activation_is_guarded(run_py, tmp_path, method):
    # The supported order: activate() first, then the pool.
    steps = {"before": "", "after": POOL_LOADS}
    control = fires_in_the_worker(run_py, tmp_path, method, **steps)
    assert control["hostile"]["outcome"] == "loaded", control
    result = run_scenario(run_py, tmp_path, method, guarded=True, **steps)
    assert result["activation"] == "ok", result
    assert_refused_in_worker(result["hostile"])
    assert result["listed"]["outcome"] == "loaded", result
    assert result["sentinel"] is False and not (tmp_path / "sentinel").exists()


def test_activation_in_a_forked_child_leaves_the_parents_forkserver_alone(run_py, tmp_path):
    # The child inherits the parent's forkserver state, but not the server: it
    # must start its own, and the parent must keep using the one it has.
    result = run_scenario(
        run_py,
        tmp_path,
        "forkserver",
        guarded=False,
        before=FORKSERVER_STARTED
        + textwrap.dedent(
            """
            import multiprocessing.forkserver as fs

            def activate_in_child():
                import pickleguard
                pickleguard.activate(None, mode="warn")
                assert fs._forkserver._forkserver_pid is None

            child = multiprocessing.get_context("fork").Process(target=activate_in_child)
            child.start()
            child.join()
            result["child exit"] = child.exitcode
            p = ctx.Process(target=pa_tasks.pid)
            p.start()
            p.join()
            result["parent exit"] = p.exitcode
            result["forkserver kept"] = fs._forkserver._forkserver_pid == result["old forkserver"]
            """
        ),
        after="pass",
    )
    assert result["child exit"] == 0 and result["parent exit"] == 0, result
    assert result["forkserver kept"] is True, result
