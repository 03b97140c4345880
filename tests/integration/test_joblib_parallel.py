"""joblib.Parallel with memmapping, on the loky and multiprocessing backends.

Arrays of 1 MB and more reach Parallel's workers as files in the parent's
temporary folder, which each worker maps in place with load_temporary_memmap as it
loads the task's message (joblib_app.py). Such a file is shared, so no hash pins
it: `record` writes the `joblib` channel rule, which admits it only while the
pool's transport loads a message, and a manifest recorded with one array admits
the same job on other data. A task that maps a file itself is refused.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import joblib
import pytest

import pickleguard
from conftest import Boom

from ._harness import channels, clean_env, denials, enforce, pg, record, run

pytestmark = pytest.mark.integration

APP = Path(__file__).with_name("joblib_app.py")
BACKENDS = ["loky", "multiprocessing"]
EXPECTED = ["sums True", "halves True ndarray"]


def app(backend: str, seed: int, *more: str):
    return [str(APP), backend, str(seed), *more]


def plain(backend: str, seed: int, cwd: Path, *more: str) -> subprocess.CompletedProcess:
    return run([sys.executable, *app(backend, seed, *more)], cwd)


@pytest.mark.parametrize("backend", BACKENDS)
def test_warn_mode_gives_the_plain_output(backend, tmp_path, wheel_installed):
    (tmp_path / "empty.toml").write_text("version = 1\n")
    unguarded = plain(backend, 1, tmp_path)
    assert unguarded.stdout.splitlines() == EXPECTED, unguarded.stderr
    guarded = pg(
        "run",
        "--mode",
        "warn",
        "--manifest",
        "empty.toml",
        "--log",
        "audit.jsonl",
        "--",
        sys.executable,
        *app(backend, 1),
        cwd=tmp_path,
    )
    assert guarded.returncode == 0, guarded.stderr
    assert guarded.stdout.splitlines() == EXPECTED, guarded.stderr
    # Every load was judged: the memmaps among them, as shared artifacts.
    warned = denials(tmp_path / "audit.jsonl")
    assert any(w["kind"] == "artifact" for w in warned), warned


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_recorded_manifest_admits_the_job_on_other_data(backend, tmp_path, wheel_installed):
    manifest = tmp_path / "pickleguard.toml"
    summary = record(manifest, app(backend, 1), tmp_path)
    assert summary["added"] == [], summary  # nothing of the job needs a pin
    rules = channels(manifest)
    assert "joblib.numpy_pickle:load_temporary_memmap" in rules["joblib"], rules
    # Other data: other arrays, other files, other messages.
    enforced = enforce(manifest, app(backend, 2), tmp_path, tmp_path / "denied.jsonl")
    assert enforced.returncode == 0, enforced.stderr
    assert enforced.stdout.splitlines() == EXPECTED, enforced.stderr
    assert denials(tmp_path / "denied.jsonl") == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_pinned_model_mapped_in_the_parent_is_mapped_by_the_workers(
    backend, tmp_path, wheel_installed
):
    # The parent maps the verified copy of the model; the memmap it passes on names
    # that copy by a path the workers can open (/proc/<parent>/fd/N), so they map
    # the same verified bytes, as plain workers map the same file.
    import numpy as np

    model = tmp_path / "model.joblib"
    joblib.dump(np.arange(300_000.0), model)
    expected = EXPECTED + ["model True"]
    unguarded = plain(backend, 1, tmp_path, "--model", str(model))
    assert unguarded.stdout.splitlines() == expected, unguarded.stderr
    manifest = tmp_path / "pickleguard.toml"
    summary = record(manifest, app(backend, 1, "--model", str(model)), tmp_path)
    assert [entry["kind"] for entry in summary["added"]] == ["artifact"], summary
    enforced = enforce(
        manifest, app(backend, 1, "--model", str(model)), tmp_path, tmp_path / "denied.jsonl"
    )
    assert enforced.returncode == 0, enforced.stderr
    assert enforced.stdout.splitlines() == expected, enforced.stderr
    assert denials(tmp_path / "denied.jsonl") == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_task_mapping_a_file_itself_is_refused(backend, tmp_path, wheel_installed):
    manifest = tmp_path / "pickleguard.toml"
    record(manifest, app(backend, 1), tmp_path)
    sentinel = tmp_path / "fired"
    hostile = tmp_path / "hostile.joblib"
    joblib.dump(Boom(sentinel), hostile)
    # Without the guard, the task's load runs the payload.
    fired = plain(backend, 1, tmp_path, "--task-loads", str(hostile))
    assert sentinel.exists(), fired.stdout + fired.stderr
    sentinel.rmdir()
    enforced = enforce(
        manifest, app(backend, 1, "--task-loads", str(hostile)), tmp_path, tmp_path / "denied.jsonl"
    )
    assert enforced.returncode == 0, enforced.stderr
    assert enforced.stdout.splitlines() == [
        *EXPECTED,
        "task load: refused NoPickleError not-listed",
    ]
    assert not sentinel.exists()
    (denial,) = denials(tmp_path / "denied.jsonl")
    assert denial["kind"] == "artifact" and denial["caller"].endswith(
        "numpy_pickle:load_temporary_memmap"
    ), denial


def test_a_temporary_memmap_is_refused_outside_a_pools_message(tmp_path):
    # In this process, under a manifest that pins the file's very hash and has
    # the joblib rule: the direct call is neither the channel nor a hash it
    # trusts (the file stays writable after the check).
    sentinel = tmp_path / "fired"
    hostile = tmp_path / "hostile.joblib"
    joblib.dump(Boom(sentinel), hostile)
    manifest = tmp_path / "m.toml"
    digest = pickleguard.identify(hostile.read_bytes()).split(":", 1)[1]
    manifest.write_text(
        f'version = 1\n[[artifact]]\nsha256 = "{digest}"\n'
        '[[channel]]\nname = "joblib"\ncallers = ["joblib.numpy_pickle:load_temporary_memmap"]\n'
        'called_from = ["multiprocessing.queues:Queue.get"]\n'
    )
    code = (
        "import sys, pickleguard\n"
        "pickleguard.activate(sys.argv[1])\n"
        "from joblib.numpy_pickle import load_temporary_memmap\n"
        "try:\n"
        "    load_temporary_memmap(sys.argv[2], 'r', False)\n"
        "except pickleguard.NoPickleError as e:\n"
        "    print(e.code, e.kind)\n"
        "    print(str(e).splitlines()[0])\n"
    )
    guarded = run([sys.executable, "-c", code, str(manifest), str(hostile)], tmp_path, clean_env())
    assert guarded.returncode == 0, guarded.stderr
    lines = guarded.stdout.splitlines()
    assert lines[0] == "not-listed artifact", guarded.stdout
    assert "no hash pins it" in lines[1], lines[1]
    assert not sentinel.exists()
    unguarded = run(
        [
            sys.executable,
            "-c",
            code.replace("pickleguard.activate(sys.argv[1])", ""),
            "x",
            str(hostile),
        ],
        tmp_path,
        clean_env(),
    )
    assert sentinel.exists(), unguarded.stderr
