"""The standard library's worker processes under `pickleguard record` and `run`:
multiprocessing queues between processes (Queue, SimpleQueue, through a Manager's
proxies, with a Pipe end handed over by the resource sharer), Pool and
ProcessPoolExecutor, with each start method.

tests/test_deploy.py also covers Pool with every start method and
ProcessPoolExecutor with spawn on the example pipeline (artifacts swapped on disk),
and Pool with spawn for bytes a task unpickles. Each case here records
pools_app.py, runs it again under the manifest with other task data than the
recorded run's (so other transport messages), then sends a payload that the
worker's own code unpickles, which must be refused in that worker. The manifest's
channel rules are the ones record writes for multiprocessing, which
tests/redteam/test_channels.py shows refuse a program's own Connection.recv().
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

import pickleguard
from conftest import assert_fires, hostile
from pickleguard.cli._manifest import known_rules

from ._harness import (
    assert_all_exited,
    channels,
    denials,
    digest,
    enforce,
    pid_lines,
    pins,
    record,
    without_pids,
)

pytestmark = pytest.mark.integration

APP = str(Path(__file__).with_name("pools_app.py"))
TRUSTED = pickle.dumps(["trusted", 1])

METHODS = ["fork", "spawn", "forkserver"]
KINDS = ["queue", "simplequeue", "pipe", "manager", "pool", "executor"]
CASES = [(kind, method) for kind in KINDS for method in METHODS]


@pytest.mark.parametrize("kind, method", CASES, ids=[f"{k}-{m}" for k, m in CASES])
def test_record_then_run_then_a_worker_refuses_an_unlisted_pickle(kind, method, tmp_path):
    manifest = tmp_path / "pickleguard.toml"
    summary = record(manifest, [APP, kind, method, TRUSTED.hex()], tmp_path)
    assert summary["processes"] >= 2
    # Only the worker's own load is pinned; the transport's messages are the
    # multiprocessing channel's, with the rules record writes for it.
    assert pins(manifest) == {(digest(TRUSTED), ("__main__:decode",))}
    assert set(channels(manifest)) == {"multiprocessing"}
    _, rules = pickleguard._core.manifest_summary(str(manifest))
    assert sorted((callers, called_from or []) for _, callers, called_from in rules) == sorted(
        (sorted(callers), called_from) for callers, called_from in known_rules("multiprocessing")
    )

    log = tmp_path / "denials.jsonl"
    label = "other-run-" + "x" * 300
    trusted = enforce(manifest, [APP, kind, method, TRUSTED.hex(), label], tmp_path, log)
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    values = [[["trusted", 1], f"{label}-{n}"] for n in range(4)]
    assert without_pids(trusted.stdout) == [f"{kind}/{method}: {values}"]
    assert "NoPickleError" not in trusted.stderr and denials(log) == []
    assert_all_exited(pid_lines(trusted.stdout)["children"])

    # Technique: the work item carries a payload that the worker's code unpickles.
    sentinel = tmp_path / "sentinel"
    payload = hostile(sentinel)
    assert_fires(payload, sentinel)
    refused = enforce(manifest, [APP, kind, method, payload.hex()], tmp_path, log)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert without_pids(refused.stdout) == [
        f"{kind}/{method}: refused: pickleguard.errors.NoPickleError code=not-listed "
        f"caller=__main__:decode sha256={digest(payload)}"
    ]
    pids = pid_lines(refused.stdout)
    events = denials(log)
    assert events and {e["pid"] for e in events} <= set(pids["children"])
    assert pids["parent"][0] not in pids["children"]
    assert {(e["event"], e["caller"]) for e in events} == {("deny", "__main__:decode")}
    assert not sentinel.exists()
    assert_all_exited(pids["children"])
