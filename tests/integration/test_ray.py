"""Ray under `pickleguard record` and `pickleguard run`.

ray_app.py starts a local Ray with two CPUs (the driver, a raylet and the worker
processes it starts, on loopback); its tasks load a model file in the workers, an
actor keeps a total, and an array travels through the object store with its data
out of band. Ray pickles each remote function and actor class anew on every run, so
a pin of one never matches the next run: `record` writes the `ray` channel rules
instead and pins only the app's own loads. Under `run`, new data passes; a swapped
model, or bytes a task unpickles itself, are refused in the worker, the driver gets
the worker's NoPickleError with its whole message, and Ray does not retry the task.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List

import pytest
import ray

import pickleguard
from conftest import assert_fires, hostile

from ._harness import (
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

APP = Path(__file__).with_name("ray_app.py")
TRUSTED = pickle.dumps(["trusted", 1])  # what the recorded run's `bytes` task loads
NUMBERS = 4  # tasks the model step starts


def output(seed: int) -> List[str]:
    """What the app prints for `seed` (weight 3, bias 1)."""
    numbers = [seed + i for i in range(NUMBERS)]
    total = seed + sum(numbers)
    array_sum = sum(range(seed, seed + 100_000))
    squares = [i * i for i in range(seed + 3)]
    return [
        f"model: scores {[3 * x + 1 for x in numbers]}",
        f"actor: total {total}",
        f"store: sum {array_sum} squares {squares}",
    ]


@dataclass
class Recorded:
    work: Path
    summary: dict
    journal: List[dict]
    model: bytes


@pytest.fixture(scope="module", autouse=True)
def _no_usage_stats() -> Iterator[None]:
    """Ray asks nothing of the network with its usage report off."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_DISABLE_USAGE_STATS", "1")
        yield


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    work = tmp_path_factory.mktemp("ray")
    assert run([sys.executable, str(APP), "setup", "work"], work).returncode == 0
    journal = tmp_path_factory.mktemp("ray-journal")
    app = [str(APP), "run", "work", "--payload", TRUSTED.hex()]
    summary = record(work / "pickleguard.toml", app, work, journal)
    model = (work / "work" / "model.pkl").read_bytes()
    return Recorded(work, summary, journaled(journal), model)


def copy_of(recorded: Recorded, tmp_path: Path) -> Path:
    return Path(shutil.copytree(recorded.work, tmp_path / "app"))


def _function(name: str):
    module, _, qualname = name.partition(":")
    found = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return inspect.unwrap(found)


def test_every_ray_channel_function_is_a_function_of_the_installed_ray():
    # A function renamed in a new Ray release would leave its traffic unallowed.
    rules = pickleguard._core.channel_rules("ray")
    assert rules, "no ray channel"
    for callers, called_from in rules:
        assert called_from, "every ray rule names Ray's own calling functions"
        # The Python 3.11 spellings, `module:Class.method` (the short ones are
        # for earlier Pythons).
        for name in [n for n in callers + called_from if "." in n.partition(":")[2]]:
            function = _function(name)
            assert function.__code__.co_qualname == name.partition(":")[2], ray.__version__


def test_record_pins_only_the_apps_own_loads_and_writes_the_ray_channel(recorded):
    manifest = recorded.work / "pickleguard.toml"
    # The driver and at least the two task workers and the actor's.
    assert recorded.summary["processes"] >= 3
    # No pin of a function, an actor class or an object: they change every run.
    assert pins(manifest) == {
        (digest(recorded.model), ("__main__:load_model",)),
        (digest(TRUSTED), ("__main__:unpickle",)),
    }
    assert channels(manifest)["ray"] == set(pickleguard._core.channel_callers("ray"))


def test_functions_actors_and_objects_loaded_through_the_channel(recorded):
    seen = {e["caller"] for e in recorded.journal if e["channel"] == "ray"}
    manager = "ray._private.function_manager:FunctionActorManager."
    assert seen == {
        "ray._private.serialization:SerializationContext._deserialize_pickle5_data",
        manager + "fetch_registered_method",
        manager + "fetch_and_register_remote_function",
        manager + "_load_actor_class_from_gcs",
    }
    unlisted = {e["caller"] for e in recorded.journal if e["channel"] is None}
    assert unlisted == {"__main__:load_model", "__main__:unpickle"}


def test_run_with_new_data_passes(recorded, tmp_path):
    app = copy_of(recorded, tmp_path)
    log = tmp_path / "denials.jsonl"
    command = [str(APP), "run", "work", "--seed", "9", "--payload", TRUSTED.hex()]
    proc = enforce(app / "pickleguard.toml", command, app, log)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert without_pids(proc.stdout) == output(9) + ["bytes: ['trusted', 1]"]
    assert "NoPickleError" not in proc.stdout + proc.stderr and denials(log) == []
    pids = pid_lines(proc.stdout)
    assert pids["driver"][0] not in pids["workers"]


def test_a_swapped_model_is_refused_in_the_worker_and_the_driver_gets_the_denial(
    recorded, tmp_path
):
    # Technique: replace the file the tasks load with a payload that runs code.
    app = copy_of(recorded, tmp_path)
    sentinel = tmp_path / "sentinel"
    payload = hostile(sentinel)
    assert_fires(payload, sentinel)
    (app / "work" / "model.pkl").write_bytes(payload)
    log = tmp_path / "denials.jsonl"
    proc = enforce(app / "pickleguard.toml", [str(APP), "run", "work"], app, log)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # The driver got the worker's NoPickleError itself, its whole message intact.
    assert (
        "model: refused: pickleguard.errors.NoPickleError code=not-listed "
        f"caller=__main__:load_model sha256={digest(payload)}"
    ) in proc.stdout
    assert f'| sha256 = "{digest(payload)}"' in proc.stdout
    assert "UnserializableException" not in proc.stdout + proc.stderr
    # Each task was refused once, in a worker: Ray retries an application error
    # only when the task asks for it (retry_exceptions), so no retry loaded it again.
    events = denials(log)
    assert len(events) == NUMBERS
    assert {(e["caller"], e["sha256"]) for e in events} == {
        ("__main__:load_model", digest(payload))
    }
    assert pid_lines(proc.stdout)["driver"][0] not in {e["pid"] for e in events}
    # The rest of the app ran on.
    assert output(1)[1:] == [line for line in without_pids(proc.stdout) if line[:1] != "|"][1:]
    assert not sentinel.exists()


def test_a_task_unpickling_bytes_it_was_sent_is_not_covered_by_the_channel(recorded, tmp_path):
    # Technique: attacker-supplied bytes arrive inside Ray's own (allowed) message,
    # as a task's argument; the task's own load is judged by the manifest.
    app = copy_of(recorded, tmp_path)
    sentinel = tmp_path / "sentinel"
    payload = hostile(sentinel)
    assert_fires(payload, sentinel)
    log = tmp_path / "denials.jsonl"
    command = [str(APP), "run", "work", "--payload", payload.hex()]
    proc = enforce(app / "pickleguard.toml", command, app, log)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert (
        "bytes: refused: pickleguard.errors.NoPickleError code=not-listed "
        f"caller=__main__:unpickle sha256={digest(payload)}"
    ) in proc.stdout
    events = denials(log)
    assert [(e["caller"], e["sha256"]) for e in events] == [("__main__:unpickle", digest(payload))]
    assert not sentinel.exists()
