"""Dask distributed under `pickleguard record` and `pickleguard run`.

dask_app.py starts a LocalCluster with two nanny-started worker processes; its tasks
load a model file on the workers. `record` pins that file and writes the `dask`
channel rule for the cluster's own messages; under `run`, the workers enforce the
manifest: a swapped artifact, or bytes a task unpickles itself, are refused in the
worker and the client gets the NoPickleError.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

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


@dataclass
class Recorded:
    work: Path
    summary: dict
    model: bytes


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """One recorded run of the app, shared by the tests (a cluster takes seconds)."""
    work = tmp_path_factory.mktemp("dask")
    assert run([sys.executable, str(APP), "setup", "work"], work).returncode == 0
    summary = record(
        work / "pickleguard.toml", [str(APP), "run", "work", "--payload", TRUSTED.hex()], work
    )
    return Recorded(work, summary, (work / "work" / "model.pkl").read_bytes())


def copy_of(recorded: Recorded, tmp_path: Path) -> Path:
    """The recorded app's directory, for one test to change."""
    return Path(shutil.copytree(recorded.work, tmp_path / "app"))


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


def test_run_enforces_the_manifest_and_gives_the_same_output(recorded, tmp_path):
    app = copy_of(recorded, tmp_path)
    log = tmp_path / "denials.jsonl"
    proc = enforce(
        app / "pickleguard.toml", [str(APP), "run", "work", "--payload", TRUSTED.hex()], app, log
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert without_pids(proc.stdout) == [MODEL_LINE, "bytes: ['trusted', 1]"]
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


def test_a_task_unpickling_bytes_it_was_sent_is_not_covered_by_the_channel(recorded, tmp_path):
    # Technique: a task loads attacker-supplied bytes that arrived inside the
    # engine's own (allowed) message; the task's own load is judged by the manifest.
    app = copy_of(recorded, tmp_path)
    sentinel = tmp_path / "sentinel"
    payload = hostile(sentinel)
    assert_fires(payload, sentinel)
    log = tmp_path / "denials.jsonl"
    proc = enforce(
        app / "pickleguard.toml", [str(APP), "run", "work", "--payload", payload.hex()], app, log
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = without_pids(proc.stdout)
    assert lines[0] == MODEL_LINE
    assert lines[1] == (
        "bytes: refused: pickleguard.errors.NoPickleError code=not-listed "
        f"caller=__main__:unpickle sha256={digest(payload)}"
    )
    pids = pid_lines(proc.stdout)
    events = denials(log)
    assert len(events) == 1 and events[0]["pid"] in pids["workers"]
    assert not sentinel.exists()
    assert_all_exited(pids["workers"])


def _function(caller: str):
    module, _, qualname = caller.partition(":")
    found = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return inspect.unwrap(found)


def test_every_dask_channel_caller_is_a_function_of_the_installed_dask():
    # A renamed function in a new Dask release would silently leave its messages
    # unallowed; this names the caller to update.
    callers = pickleguard._core.channel_callers("dask")
    assert callers, "no dask channel"
    versions = f"dask {dask.__version__}, distributed {distributed.__version__}"
    for caller in callers:
        module, _, qualname = caller.partition(":")
        try:
            function = _function(caller)
        except AttributeError:
            # Python before 3.11 names a method's frame without its class; such an
            # entry must be the short spelling of a listed method.
            longer = [
                c for c in callers if c.startswith(module + ":") and c.endswith("." + qualname)
            ]
            assert longer, f"{caller} is not in {versions}"
            continue
        assert function.__module__ == module, f"{caller} in {versions}"
        assert function.__qualname__ == qualname, f"{caller} in {versions}"
        assert function.__code__.co_name == qualname.rsplit(".", 1)[-1], caller
