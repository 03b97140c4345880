"""torch.distributed and torch.multiprocessing.spawn under `pickleguard record` and
`pickleguard run`.

torch_app.py spawns two ranks (torch.multiprocessing.spawn) that join a gloo group on
loopback; each loads the app's model file, then runs every object collective with
both of torch's decoders (pickle, and torch.load with weights_only=True). `record`
pins the model and writes the channel rules for the collectives' messages and for
spawn's error reports; under `run`, new data passes, a swapped model is refused in
the rank that loads it and the parent reports the denial, and a failing rank's own
exception reaches the parent.
"""

from __future__ import annotations

import importlib
import inspect
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List

import pytest
import torch

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

APP = Path(__file__).with_name("torch_app.py")
DECODE = "torch.distributed.distributed_c10d:_tensor_to_object"
COLLECTIVES = [
    "broadcast_object_list",
    "all_gather_object",
    "gather_object",
    "scatter_object_list",
    "recv_object_list",
]


def lines_for(seed: int, decoders: List[str]) -> List[str]:
    """What rank 0 prints for a run with `seed` (the model's bias, 1, is added)."""
    s = seed + 1
    line = (
        f"config seed={s} lr={s / 100} all_gather [{s * 10}, {s * 10 + 1}] "
        f"gather 2 scatter 0 recv 'from rank 1, seed {s}'"
    )
    return [f"{decoder}: {line}" for decoder in decoders]


@dataclass
class Recorded:
    work: Path
    summary: dict
    journal: List[dict]
    model: bytes


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    work = tmp_path_factory.mktemp("torch")
    assert run([sys.executable, str(APP), "setup", "work"], work).returncode == 0
    journal = tmp_path_factory.mktemp("torch-journal")
    summary = record(work / "pickleguard.toml", [str(APP), "run", "work"], work, journal)
    model = (work / "work" / "model.pkl").read_bytes()
    return Recorded(work, summary, journaled(journal), model)


def copy_of(recorded: Recorded, tmp_path: Path) -> Path:
    return Path(shutil.copytree(recorded.work, tmp_path / "app"))


def test_every_torch_channel_caller_is_a_function_of_the_installed_torch():
    # A function renamed in a new torch release would leave its messages unallowed.
    c10d = importlib.import_module("torch.distributed.distributed_c10d")
    spawn = importlib.import_module("torch.multiprocessing.spawn")
    for name in ["_tensor_to_object", *COLLECTIVES]:
        function = inspect.unwrap(getattr(c10d, name))
        assert function.__code__.co_qualname == name, torch.__version__
    assert "weights_only" in inspect.signature(c10d._tensor_to_object).parameters
    assert spawn.ProcessContext.join.__code__.co_qualname == "ProcessContext.join"
    assert hasattr(spawn, "start_processes") and hasattr(spawn, "_wrap")
    assert pickleguard._core.channel_callers("torch.distributed") == [DECODE]
    assert "torch.multiprocessing.spawn:ProcessContext.join" in (
        pickleguard._core.channel_callers("torch.multiprocessing")
    )


def test_record_pins_the_model_and_writes_the_torch_channels(recorded):
    manifest = recorded.work / "pickleguard.toml"
    assert recorded.summary["processes"] >= 2
    # Only the app's own load is pinned: every collective's message, decoded by
    # either decoder, was the channel's.
    assert pins(manifest) == {(digest(recorded.model), ("__main__:load_model",))}
    rules = channels(manifest)
    assert rules["torch.distributed"] == {DECODE}
    # No rank failed, yet spawn's error-report rule is written: a later run's
    # failing rank must show its own exception.
    assert rules["torch.multiprocessing"] == set(
        pickleguard._core.channel_callers("torch.multiprocessing")
    )
    assert "multiprocessing.spawn:_main" in rules["multiprocessing"]
    text = manifest.read_text()
    assert "[[artifact]]" not in text


def test_both_decoders_loaded_through_the_channel(recorded):
    decoded = {
        (e["kind"], e["called_from"])
        for e in recorded.journal
        if e["channel"] == "torch.distributed"
    }
    c10d = "torch.distributed.distributed_c10d:"
    # The pickle decoder loads a pickle; the weights_only one, torch.load of a
    # buffer in memory, which is judged as an artifact read from memory.
    assert decoded == {
        (kind, c10d + name) for kind in ("pickle", "artifact") for name in COLLECTIVES
    }
    unlisted = {e["caller"] for e in recorded.journal if e["channel"] is None}
    assert unlisted == {"__main__:load_model"}


@pytest.mark.parametrize("decoder", ["pickle", "weights_only"])
def test_run_with_new_data_passes_with_either_decoder(recorded, tmp_path, decoder):
    app = copy_of(recorded, tmp_path)
    log = tmp_path / "denials.jsonl"
    command = [str(APP), "run", "work", "--seed", "7", "--decoder", decoder]
    proc = enforce(app / "pickleguard.toml", command, app, log)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert without_pids(proc.stdout) == lines_for(7, [decoder])
    assert "NoPickleError" not in proc.stdout + proc.stderr and denials(log) == []
    pids = pid_lines(proc.stdout)
    assert len(pids["ranks"]) == 2
    assert_all_exited(pids["ranks"])


def test_a_failing_ranks_own_exception_reaches_the_parent(recorded, tmp_path):
    app = copy_of(recorded, tmp_path)
    log = tmp_path / "denials.jsonl"
    command = [str(APP), "run", "work", "--seed", "4", "--fail"]
    proc = enforce(app / "pickleguard.toml", command, app, log)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "failed: rank 1" in proc.stdout
    assert "ValueError: rank 1 failed on purpose" in proc.stdout
    assert "NoPickleError" not in proc.stdout + proc.stderr and denials(log) == []
    assert_all_exited(pid_lines(proc.stdout)["ranks"])


def test_a_swapped_model_is_refused_in_the_rank_and_the_parent_reports_it(recorded, tmp_path):
    # Technique: replace the file the ranks load with a payload that runs code.
    app = copy_of(recorded, tmp_path)
    sentinel = tmp_path / "sentinel"
    payload = hostile(sentinel)
    assert_fires(payload, sentinel)
    (app / "work" / "model.pkl").write_bytes(payload)
    log = tmp_path / "denials.jsonl"
    proc = enforce(app / "pickleguard.toml", [str(APP), "run", "work"], app, log)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # The parent shows the rank's denial, with the entry to paste.
    assert "failed: rank" in proc.stdout
    assert f"NoPickleError: pickle sha256:{digest(payload)}" in proc.stdout
    assert "loaded by __main__:load_model" in proc.stdout
    assert f'sha256 = "{digest(payload)}"' in proc.stdout
    pids = pid_lines(proc.stdout)
    events = denials(log)
    assert events and {e["pid"] for e in events} <= set(pids["ranks"])
    assert {(e["caller"], e["sha256"]) for e in events} == {
        ("__main__:load_model", digest(payload))
    }
    assert not sentinel.exists()
    assert_all_exited(pids["ranks"])


def test_a_rank_decoding_bytes_itself_through_torchs_decoder_is_refused(recorded, tmp_path):
    # Technique: call the very function every collective decodes through on bytes
    # of the rank's own; the channel admits it only when a collective calls it.
    app = copy_of(recorded, tmp_path)
    sentinel = tmp_path / "sentinel"
    payload = hostile(sentinel)
    assert_fires(payload, sentinel)
    log = tmp_path / "denials.jsonl"
    command = [str(APP), "run", "work", "--decoder", "pickle", "--through-torch", payload.hex()]
    proc = enforce(app / "pickleguard.toml", command, app, log)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "failed: rank 1" in proc.stdout
    assert f"loaded by {DECODE}" in proc.stdout
    events = denials(log)
    assert [(e["caller"], e["sha256"]) for e in events] == [(DECODE, digest(payload))]
    assert events[0]["pid"] in pid_lines(proc.stdout)["ranks"]
    assert not sentinel.exists()
