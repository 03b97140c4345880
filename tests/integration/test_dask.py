"""Dask distributed under `pickleguard record` and `pickleguard run`.

dask_app.py starts a LocalCluster with two nanny-started worker processes; its tasks
load a model file on the workers. `record` pins that file and writes the `dask`
channel rule for the cluster's own messages (the app also runs a P2P rechunk and
forwards a warning, so that every caller of the channel loads something); under
`run`, the workers enforce the manifest: a swapped artifact, or bytes a task
unpickles itself, are refused in the worker and the client gets the NoPickleError.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import dask
import distributed
import pytest

import pickleguard
from conftest import assert_fires, hostile

from ._harness import (
    assert_all_exited,
    channels,
    denials,
    digest,
    enforce,
    journaled,
    pid_lines,
    pins,
    record,
    run,
    without_pids,
)

pytestmark = pytest.mark.integration

APP = Path(__file__).with_name("dask_app.py")
TRUSTED = pickle.dumps(["trusted", 1])  # what the recorded run's `bytes` task loads
MODEL_LINE = "model: scores [1, 4, 7, 10, 13, 16, 19, 22]"
OUTPUT = [MODEL_LINE, "rechunk: sum 1600", "warn: sent"]


@dataclass
class Recorded:
    work: Path
    summary: dict
    journal: List[dict]
    model: bytes


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """One recorded run of the app, shared by the tests (a cluster takes seconds)."""
    work = tmp_path_factory.mktemp("dask")
    assert run([sys.executable, str(APP), "setup", "work"], work).returncode == 0
    journal = tmp_path_factory.mktemp("dask-journal")
    app = [str(APP), "run", "work", "--payload", TRUSTED.hex()]
    summary = record(work / "pickleguard.toml", app, work, journal)
    model = (work / "work" / "model.pkl").read_bytes()
    return Recorded(work, summary, journaled(journal), model)


def copy_of(recorded: Recorded, tmp_path: Path) -> Path:
    """The recorded app's directory, for one test to change."""
    return Path(shutil.copytree(recorded.work, tmp_path / "app"))


# Callers whose code path is newer than the oldest Dask the tests run with (the last
# release for Python 3.9 is 2024.8.0): before it, that function does not load.
SINCE = {"dask.tokenize:_normalize_pickle": (2024, 9)}
# The callers of dask's local "processes" scheduler, which a cluster does not use.
LOCAL_SCHEDULER = {"dask.local:execute_task", "dask.local:get_async"}
VERSIONS = f"dask {dask.__version__}, distributed {distributed.__version__}"


def _function(caller: str):
    module, _, qualname = caller.partition(":")
    found = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return inspect.unwrap(found)


def dask_frames() -> Dict[str, str]:
    """Each dask channel caller that names a function of the installed Dask, with the
    name this Python gives that function's frames (`module:co_name` before 3.11).
    It fails for a caller that is neither such a function nor, for Python before
    3.11, the short spelling of a listed method."""
    callers = pickleguard._core.channel_callers("dask")
    assert callers, "no dask channel"
    frames = {}
    for caller in callers:
        if tuple(map(int, dask.__version__.split(".")[:2])) < SINCE.get(caller, (0,)):
            continue
        module, _, qualname = caller.partition(":")
        try:
            function = _function(caller)
        except AttributeError:
            longer = [
                c for c in callers if c.startswith(module + ":") and c.endswith("." + qualname)
            ]
            assert longer, f"{caller} is not in {VERSIONS}"
            continue
        assert (function.__module__, function.__qualname__) == (module, qualname), VERSIONS
        code = function.__code__
        frames[caller] = f"{module}:{getattr(code, 'co_qualname', code.co_name)}"
    return frames


def test_every_dask_channel_caller_is_a_function_of_the_installed_dask():
    # A function renamed in a new Dask release would leave its messages unallowed;
    # this names the entry to update.
    frames = dask_frames()
    assert "distributed.protocol.pickle:loads" in frames, VERSIONS
    for caller, frame in frames.items():
        assert frame in pickleguard._core.channel_callers("dask"), (caller, frame)


def test_record_pins_the_artifact_and_writes_the_dask_channel(recorded):
    manifest = recorded.work / "pickleguard.toml"
    # The client and scheduler process, and two workers.
    assert recorded.summary["processes"] >= 3
    # Only the app's own loads are pinned: every message of the cluster was
    # loaded by a channel caller, so nothing of it needs a pin.
    assert pins(manifest) == {
        (digest(recorded.model), ("__main__:load_model",)),
        (digest(TRUSTED), ("__main__:unpickle",)),
    }
    rules = channels(manifest)
    assert rules["dask"] == set(pickleguard._core.channel_callers("dask"))
    # Nannies start the workers through multiprocessing.
    assert "multiprocessing.spawn:_main" in rules["multiprocessing"]
    text = manifest.read_text()
    assert 'name = "dask"' in text and "work/model.pkl" in text


def test_every_dask_channel_caller_loaded_the_clusters_messages(recorded):
    # The list is no wider than the traffic: each caller (as this Python names its
    # frames) loaded some of this run's messages, and no other Dask function did.
    seen = {e["caller"] for e in recorded.journal if e["channel"] == "dask"}
    assert seen == set(dask_frames().values()) - LOCAL_SCHEDULER
    unlisted = {e["caller"] for e in recorded.journal if e["channel"] is None}
    assert unlisted == {"__main__:load_model", "__main__:unpickle"}


def test_run_enforces_the_manifest_and_gives_the_same_output(recorded, tmp_path):
    app = copy_of(recorded, tmp_path)
    log = tmp_path / "denials.jsonl"
    proc = enforce(
        app / "pickleguard.toml", [str(APP), "run", "work", "--payload", TRUSTED.hex()], app, log
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert without_pids(proc.stdout) == OUTPUT + ["bytes: ['trusted', 1]"]
    assert "NoPickleError" not in proc.stderr and denials(log) == []
    pids = pid_lines(proc.stdout)
    assert len(pids["workers"]) == 2 and pids["client"][0] not in pids["workers"]
    assert_all_exited(pids["workers"])


def test_a_swapped_artifact_is_refused_in_the_worker_that_loads_it(recorded, tmp_path):
    # Technique: replace an artifact the tasks load with a payload that runs code.
    app = copy_of(recorded, tmp_path)
    sentinel = tmp_path / "sentinel"
    payload = hostile(sentinel)
    assert_fires(payload, sentinel)
    (app / "work" / "model.pkl").write_bytes(payload)
    log = tmp_path / "denials.jsonl"
    proc = enforce(app / "pickleguard.toml", [str(APP), "run", "work"], app, log)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # The client got the worker's NoPickleError, with its facts.
    assert (
        "model: refused: pickleguard.errors.NoPickleError code=not-listed "
        f"caller=__main__:load_model sha256={digest(payload)}"
    ) in proc.stdout
    # Each refusal happened in a worker process, never in the client.
    pids = pid_lines(proc.stdout)
    events = denials(log)
    assert events and {e["pid"] for e in events} <= set(pids["workers"])
    assert {(e["event"], e["caller"], e["sha256"]) for e in events} == {
        ("deny", "__main__:load_model", digest(payload))
    }
    assert not sentinel.exists()
    assert_all_exited(pids["workers"])


# Technique, "pickle": a task loads attacker-supplied bytes that arrived inside the
# engine's own (allowed) message; the task's own load is judged by the manifest.
# Technique, "through dask": the task calls the very function every dask message is
# decoded through, distributed.protocol.pickle.loads; the channel admits that
# function only when dask's own code calls it.
TASK_LOADERS = {
    "pickle": ([], "__main__:unpickle"),
    "through dask": (["--through-dask"], "distributed.protocol.pickle:loads"),
}


@pytest.mark.parametrize("loader", TASK_LOADERS)
def test_a_task_unpickling_bytes_it_was_sent_is_not_covered_by_the_channel(
    recorded, tmp_path, loader
):
    flags, caller = TASK_LOADERS[loader]
    app = copy_of(recorded, tmp_path)
    sentinel = tmp_path / "sentinel"
    payload = hostile(sentinel)
    assert_fires(payload, sentinel)
    log = tmp_path / "denials.jsonl"
    command = [str(APP), "run", "work", "--payload", payload.hex(), *flags]
    proc = enforce(app / "pickleguard.toml", command, app, log)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert without_pids(proc.stdout) == OUTPUT + [
        "bytes: refused: pickleguard.errors.NoPickleError code=not-listed "
        f"caller={caller} sha256={digest(payload)}"
    ]
    pids = pid_lines(proc.stdout)
    events = denials(log)
    assert len(events) == 1 and events[0]["pid"] in pids["workers"]
    assert not sentinel.exists()
    assert_all_exited(pids["workers"])


def test_record_writes_the_dask_channel_for_dasks_own_calls_only(recorded):
    text = (recorded.work / "pickleguard.toml").read_text()
    assert 'called_from = ["distributed.*:*", "dask.*:*"]' in text
    # Every load through the channel's callers came from dask's own code.
    outer = {e["called_from"] for e in recorded.journal if e["channel"] == "dask"}
    assert outer and all(o.startswith(("distributed.", "dask.")) for o in outer), outer


PROCESSES_APP = """
import pickle, sys
import dask.bag as db

def square(x):
    return x * x

def unpickle(hex_payload):
    return pickle.loads(bytes.fromhex(hex_payload))

if __name__ == "__main__":
    if len(sys.argv) > 1:
        bag = db.from_sequence([sys.argv[1]], npartitions=1).map(unpickle)
        print(bag.compute(scheduler="processes"))
    else:
        bag = db.from_sequence(range(20), npartitions=4).map(square)
        print("sum", bag.sum().compute(scheduler="processes"))
"""


def test_the_processes_scheduler_runs_under_the_dask_channel(tmp_path):
    """dask's local processes scheduler (dask.multiprocessing) sends its workers
    `cloudpickle.loads` itself; its tasks and results are the dask channel's."""
    (tmp_path / "app.py").write_text(PROCESSES_APP)
    journal = tmp_path / "journal"
    summary = record(tmp_path / "m.toml", ["app.py"], tmp_path, journal)
    assert summary["added"] == []
    loaded = {e["caller"] for e in journaled(journal) if e["channel"] == "dask"}
    assert {"dask.local:execute_task", "dask.local:get_async"} <= loaded
    proc = enforce(tmp_path / "m.toml", ["app.py"], tmp_path, tmp_path / "log.jsonl")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "sum 2470"
    # A task that unpickles bytes itself is not the channel.
    sentinel = tmp_path / "PWNED"
    payload = hostile(sentinel)
    assert_fires(payload, sentinel)
    refused = enforce(
        tmp_path / "m.toml", ["app.py", payload.hex()], tmp_path, tmp_path / "d.jsonl"
    )
    assert refused.returncode != 0
    assert "NoPickleError" in refused.stderr and "__main__:unpickle" in refused.stderr
    assert not sentinel.exists()
