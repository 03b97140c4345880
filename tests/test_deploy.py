"""Deployment: activation at interpreter start, `pickleguard record`, `pickleguard run`.

These tests need pickleguard installed from its wheel, which carries the .pth file
that activates it in every Python process started with PICKLEGUARD_ variables.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from conftest import REPO, assert_fires, hostile, write_manifest

PIPELINE = REPO / "examples" / "pipeline"


pytestmark = pytest.mark.usefixtures("wheel_installed")


def clean_env(**settings: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICKLEGUARD_")}
    env.update(settings)
    return env


def run(
    args: List[str], cwd: Path, env: Optional[Dict[str, str]] = None, timeout: int = 240
) -> subprocess.CompletedProcess:
    return subprocess.run(
        args,
        cwd=cwd,
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def pg(*args: str, cwd: Path, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "pickleguard", *args], cwd=cwd, env=env)


APP = [sys.executable, str(PIPELINE / "app.py"), "artifacts"]


@pytest.mark.parametrize(
    "variant",
    [
        ["--start-method", "fork"],
        ["--start-method", "spawn"],
        ["--start-method", "forkserver"],
        ["--executor", "--start-method", "spawn"],
    ],
    ids=["fork", "spawn", "forkserver", "ProcessPoolExecutor"],
)
def test_record_then_run_then_tamper(variant, tmp_path):
    make = [sys.executable, str(PIPELINE / "make_artifacts.py"), "artifacts"]
    assert run(make, tmp_path).returncode == 0
    app = APP + variant

    recorded = pg("record", "-o", "pickleguard.toml", "--json", "--", *app, cwd=tmp_path)
    assert recorded.returncode == 0, recorded.stderr
    summary = json.loads(recorded.stdout[recorded.stdout.index("{") :])
    assert summary["processes"] >= 3  # parent, workers, the report subprocess
    manifest = (tmp_path / "pickleguard.toml").read_text()
    assert "[[channel]]" in manifest and 'name = "multiprocessing"' in manifest
    for name in ("vocabulary", "shard0", "shard1", "shard2", "model"):
        assert f'source = "artifacts/{name}.pkl"' in manifest

    enforced = pg("run", "--manifest", "pickleguard.toml", "--", *app, cwd=tmp_path)
    assert enforced.returncode == 0, enforced.stderr
    assert "report: model ranker v14" in enforced.stdout
    assert "pickleguard" not in enforced.stderr

    by_env = run(app, tmp_path, clean_env(PICKLEGUARD_MANIFEST=str(tmp_path / "pickleguard.toml")))
    assert by_env.returncode == 0, by_env.stderr

    # Technique: swap one artifact for a payload; it is loaded in a pool worker.
    assert run(make + ["--tamper"], tmp_path).returncode == 0
    tampered = (tmp_path / "artifacts" / "shard1.pkl").read_bytes()
    import pickleguard

    digest = pickleguard.identify(tampered)[len("sha256:") :]
    refused = pg("run", "--manifest", "pickleguard.toml", "--", *app, cwd=tmp_path)
    assert refused.returncode != 0
    assert "NoPickleError" in refused.stderr
    assert digest in refused.stderr
    assert "loaded by __main__:score_shard" in refused.stderr
    assert not (tmp_path / "artifacts" / "PWNED").exists()
    # The same payload fires without the guard.
    fired = run(
        [sys.executable, "-c", "import pickle; pickle.load(open('artifacts/shard1.pkl', 'rb'))"],
        tmp_path,
    )
    assert fired.returncode == 0 and (tmp_path / "artifacts" / "PWNED").exists()


def test_user_code_in_a_worker_is_not_covered_by_the_channel_rule(tmp_path):
    (tmp_path / "app.py").write_text(
        "import multiprocessing, pickle, sys\n"
        "def task(data):\n    return pickle.loads(data)\n"
        "if __name__ == '__main__':\n"
        "    data = bytes.fromhex(sys.argv[1])\n"
        "    with multiprocessing.get_context('spawn').Pool(1) as pool:\n"
        "        print(pool.apply(task, (data,)))\n"
    )
    benign = pickle.dumps(["trusted"])
    recorded = pg(
        "record", "-o", "m.toml", "--", sys.executable, "app.py", benign.hex(), cwd=tmp_path
    )
    assert recorded.returncode == 0, recorded.stderr
    sentinel = tmp_path / "sentinel"
    payload = hostile(sentinel)
    assert_fires(payload, sentinel)
    refused = pg(
        "run", "--manifest", "m.toml", "--", sys.executable, "app.py", payload.hex(), cwd=tmp_path
    )
    assert refused.returncode != 0 and "NoPickleError" in refused.stderr
    assert "__main__:task" in refused.stderr
    assert not sentinel.exists()


def test_warn_mode_reports_to_the_audit_log(tmp_path):
    data = pickle.dumps({"unlisted": True})
    (tmp_path / "d.pkl").write_bytes(data)
    write_manifest(tmp_path / "m.toml")
    proc = pg(
        "run",
        "--manifest",
        "m.toml",
        "--mode",
        "warn",
        "--log",
        "audit.jsonl",
        "--",
        sys.executable,
        "-c",
        "import pickle; print(pickle.load(open('d.pkl', 'rb')))",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "{'unlisted': True}" in proc.stdout
    assert "warn mode, allowed anyway" in proc.stderr
    events = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert len(events) == 1
    import pickleguard

    assert events[0]["event"] == "warn"
    assert events[0]["code"] == "not-listed"
    assert events[0]["sha256"] == pickleguard.identify(data)[len("sha256:") :]
    assert events[0]["source"] == "d.pkl"


def test_record_keeps_existing_entries_and_comments(tmp_path):
    original = (
        "# Reviewed by the platform team, 2026-11.\n"
        "version = 1\n\n"
        "# the label map\n"
        "[[pickle]]\n"
        'sha256 = "' + "ab" * 32 + '"\n'
        'note = "kept as is"\n'
    )
    (tmp_path / "m.toml").write_text(original)
    first, second = pickle.dumps("first"), pickle.dumps("second")
    code = f"import pickle; pickle.loads({first!r}); pickle.loads({second!r})"
    proc = pg("record", "-o", "m.toml", "--", sys.executable, "-c", code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    merged = (tmp_path / "m.toml").read_text()
    assert merged.startswith(original)
    import pickleguard

    for data in (first, second):
        assert pickleguard.identify(data)[len("sha256:") :] in merged
    assert pickleguard._core.check_manifest(str(tmp_path / "m.toml")) == 3
    again = pg("record", "-o", "m.toml", "--", sys.executable, "-c", code, cwd=tmp_path)
    assert again.returncode == 0
    assert (tmp_path / "m.toml").read_text() == merged


def test_many_processes_recording_at_once_lose_no_entry(tmp_path):
    (tmp_path / "worker.py").write_text(
        "import pickle, sys\n"
        "base = int(sys.argv[1])\n"
        "for i in range(50):\n    pickle.loads(pickle.dumps(('item', base, i)))\n"
    )
    (tmp_path / "fanout.py").write_text(
        "import subprocess, sys\n"
        "procs = [subprocess.Popen([sys.executable, 'worker.py', str(n)]) for n in range(8)]\n"
        "sys.exit(max(p.wait() for p in procs))\n"
    )
    proc = pg("record", "-o", "m.toml", "--json", "--", sys.executable, "fanout.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["loads"] == 400 and summary["processes"] == 8
    assert pickleguard_entries(tmp_path / "m.toml") == 400


def pickleguard_entries(path: Path) -> int:
    import pickleguard

    entries, _ = pickleguard._core.manifest_summary(str(path))
    return len(entries)


def test_a_killed_command_loses_nothing_already_journaled(tmp_path):
    code = (
        "import os, pickle, signal\n"
        "for i in range(3):\n    pickle.loads(pickle.dumps(i))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = pg("record", "-o", "m.toml", "--", sys.executable, "-c", code, cwd=tmp_path)
    assert proc.returncode == 128 + 9  # as a shell reports SIGKILL
    assert pickleguard_entries(tmp_path / "m.toml") == 3


def test_record_flags_risky_imports_for_review(tmp_path):
    # os.getcwd pickles as posix.getcwd: harmless to run, but from a risky module.
    data = pickle.dumps(os.getcwd)
    code = f"import pickle; pickle.loads({data!r})"
    proc = pg("record", "-o", "m.toml", "--", sys.executable, "-c", code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    manifest = (tmp_path / "m.toml").read_text()
    assert "# RISKY imports, review before trusting: posix.getcwd" in manifest
    assert "review the entries marked RISKY" in proc.stderr


def test_record_marks_unknown_classes_for_review(tmp_path):
    (tmp_path / "mylib.py").write_text("class Model:\n    pass\n")
    code = "import pickle, mylib; pickle.loads(pickle.dumps(mylib.Model()))"
    proc = pg("record", "-o", "m.toml", "--", sys.executable, "-c", code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    manifest = (tmp_path / "m.toml").read_text()
    assert "# REVIEW imports, not known to be safe: mylib.Model\n" in manifest
    assert "RISKY" not in manifest and "RISKY" not in proc.stderr


def test_env_activation_is_idempotent_and_hands_out_no_token(tmp_path):
    write_manifest(tmp_path / "m.toml")
    code = (
        "import site, sysconfig, pickle, pickleguard, pickleguard._core as core\n"
        "site.addsitedir(sysconfig.get_paths()['purelib'])  # the .pth runs again\n"
        "assert len(core.process_layers()) == 1, core.process_layers()\n"
        "token = pickleguard.activate(mode='warn')  # a token for its own layer only\n"
        "with pickleguard.allow_pickles(token):\n"
        "    try:\n        pickle.loads(pickle.dumps(1))\n"
        "    except pickleguard.NoPickleError as e:\n        print(e.code)\n"
    )
    env = clean_env(PICKLEGUARD_MANIFEST=str(tmp_path / "m.toml"))
    proc = run([sys.executable, "-c", code], tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "not-listed"


def test_activate_in_code_reaches_child_processes(tmp_path):
    sentinel = tmp_path / "sentinel"
    (tmp_path / "p.pkl").write_bytes(hostile(sentinel))
    assert_fires(hostile(sentinel), sentinel)
    write_manifest(tmp_path / "m.toml")
    child = "import pickle; pickle.load(open('p.pkl', 'rb'))"
    code = (
        "import multiprocessing, pickle, subprocess, sys, pickleguard\n"
        "def spawned():\n    pickle.load(open('p.pkl', 'rb'))\n"
        "if __name__ == '__main__':\n"
        "    pickleguard.activate('m.toml')\n"
        f"    r = subprocess.run([sys.executable, '-c', {child!r}], capture_output=True, text=True)\n"
        "    print('subprocess', r.returncode != 0 and 'NoPickleError' in r.stderr)\n"
        "    p = multiprocessing.get_context('spawn').Process(target=spawned)\n"
        "    p.start(); p.join()\n"
        "    print('spawn', p.exitcode != 0)\n"
    )
    (tmp_path / "main.py").write_text(code)
    proc = run([sys.executable, "main.py"], tmp_path)
    assert proc.stdout.split() == ["subprocess", "True", "spawn", "True"], proc.stderr
    assert not sentinel.exists()


def test_a_bad_environment_refuses_to_start(tmp_path):
    proc = run(
        [sys.executable, "-c", "print('ran')"], tmp_path, clean_env(PICKLEGUARD_MODE="bogus")
    )
    assert proc.returncode == 70 and "ran" not in proc.stdout
    assert "PICKLEGUARD_MODE" in proc.stderr and "refusing to run unguarded" in proc.stderr


def test_a_broken_manifest_in_the_environment_denies_everything(tmp_path):
    (tmp_path / "bad.toml").write_text("version = 1\n[[pickle]]\nsha256 = 12\n")
    code = (
        "import pickle, pickleguard\n"
        "try:\n    pickle.loads(pickle.dumps(1))\n"
        "except pickleguard.NoPickleError as e:\n    print(e.code)\n"
    )
    proc = run([sys.executable, "-c", code], tmp_path, clean_env(PICKLEGUARD_MANIFEST="bad.toml"))
    assert proc.stdout.strip() == "broken-manifest"
    assert "bad.toml:3:" in proc.stderr


def test_run_refuses_an_invalid_manifest_and_a_missing_command(tmp_path):
    (tmp_path / "bad.toml").write_text("version = 1\n[[pickle]]\nsha = 1\n")
    proc = pg("run", "--manifest", "bad.toml", "--", sys.executable, "-c", "pass", cwd=tmp_path)
    assert proc.returncode == 1 and "bad.toml:3:1" in proc.stderr and "hint:" in proc.stderr
    write_manifest(tmp_path / "m.toml")
    assert pg("run", "--manifest", "m.toml", cwd=tmp_path).returncode == 2
    assert (
        pg("run", "--manifest", "m.toml", "--", "no-such-command-xyz", cwd=tmp_path).returncode == 2
    )


def test_the_readme_workflow_runs_end_to_end(tmp_path):
    # The README's main command ends with this script; keep it true.
    env = clean_env(PYTHON=sys.executable)
    proc = run(["bash", str(PIPELINE / "run.sh"), str(tmp_path / "work")], tmp_path, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"recorded \d+ loads in [3-9] processes", proc.stdout), proc.stdout
    assert "NoPickleError" in proc.stdout
    assert "its payload never ran" in proc.stdout
    assert not (tmp_path / "work" / "artifacts" / "PWNED").exists()


def test_an_empty_manifest_variable_refuses_to_start(tmp_path):
    proc = run([sys.executable, "-c", "print('ran')"], tmp_path, clean_env(PICKLEGUARD_MANIFEST=""))
    assert proc.returncode == 70 and "ran" not in proc.stdout
    assert "PICKLEGUARD_MANIFEST is set but empty" in proc.stderr


def test_a_relative_manifest_path_reaches_children_in_other_directories(tmp_path):
    data = pickle.dumps("listed")
    import pickleguard

    write_manifest(tmp_path / "m.toml", {"sha256": pickleguard.identify(data)})
    (tmp_path / "sub").mkdir()
    child = f"import pickle; print(pickle.loads({data!r}))"
    code = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}], cwd='sub', check=True)"
    proc = run([sys.executable, "-c", code], tmp_path, clean_env(PICKLEGUARD_MANIFEST="m.toml"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "listed"


def test_run_and_record_keep_the_layers_they_run_under(tmp_path):
    write_manifest(tmp_path / "m.toml")
    sentinel = tmp_path / "sentinel"
    (tmp_path / "p.pkl").write_bytes(hostile(sentinel))
    assert_fires(hostile(sentinel), sentinel)
    load = "import pickle; pickle.load(open('p.pkl', 'rb'))"
    enforcing = clean_env(PICKLEGUARD_MODE="enforce")  # nopickle around the CLI itself
    proc = pg(
        "run",
        "--manifest",
        "m.toml",
        "--mode",
        "warn",
        "--",
        sys.executable,
        "-c",
        load,
        cwd=tmp_path,
        env=enforcing,
    )
    assert proc.returncode != 0 and "NoPickleError" in proc.stderr
    assert not sentinel.exists()
    proc = pg(
        "record", "-o", "out.toml", "--", sys.executable, "-c", load, cwd=tmp_path, env=enforcing
    )
    assert proc.returncode == 2 and "record allows every load" in proc.stderr
    assert not sentinel.exists()


def test_a_manifest_recorded_with_fork_works_with_spawn(tmp_path):
    make = [sys.executable, str(PIPELINE / "make_artifacts.py"), "artifacts"]
    assert run(make, tmp_path).returncode == 0
    recorded = pg("record", "-o", "m.toml", "--", *APP, "--start-method", "fork", cwd=tmp_path)
    assert recorded.returncode == 0, recorded.stderr
    for method in ("spawn", "forkserver"):
        enforced = pg(
            "run", "--manifest", "m.toml", "--", *APP, "--start-method", method, cwd=tmp_path
        )
        assert enforced.returncode == 0, enforced.stderr


def test_run_with_a_missing_manifest_is_an_io_error(tmp_path):
    proc = pg("run", "--manifest", "missing.toml", "--", sys.executable, "-c", "pass", cwd=tmp_path)
    assert proc.returncode == 2 and "could not read the manifest" in proc.stderr


def test_forking_while_a_large_manifest_is_read_is_safe(tmp_path):
    # Activation at start reads the manifest on a background thread; a fork right
    # away must wait for it (the child has no such thread) and still enforce it.
    import secrets

    import pickleguard

    data = pickle.dumps("listed")
    lines = ["version = 1"]
    for _ in range(20_000):
        lines += ["[[pickle]]", f'sha256 = "{secrets.token_hex(32)}"']
    lines += ["[[pickle]]", f'sha256 = "{pickleguard.identify(data)[7:]}"']
    (tmp_path / "big.toml").write_text("\n".join(lines) + "\n")
    code = (
        "import os, pickle, sys\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        f"    ok = pickle.loads({data!r}) == 'listed'\n"
        "    try:\n        pickle.loads(pickle.dumps('other'))\n        ok = False\n"
        "    except Exception as e:\n        ok = ok and type(e).__name__ == 'NoPickleError'\n"
        "    os._exit(0 if ok else 1)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "sys.exit(os.waitstatus_to_exitcode(status))\n"
    )
    proc = run([sys.executable, "-c", code], tmp_path, clean_env(PICKLEGUARD_MANIFEST="big.toml"))
    assert proc.returncode == 0, proc.stderr


def test_names_from_a_recorded_pickle_cannot_add_entries(tmp_path):
    """A global's name comes from the pickle: a newline in it must not end the
    comment `record` writes and start an entry nobody reviewed."""
    planted = "ab" * 32
    module = f'x\n[[pickle]]\nsha256 = "{planted}"\n#'

    def short_binunicode(text: str) -> bytes:
        raw = text.encode()
        return b"\x8c" + bytes([len(raw)]) + raw

    payload = b"\x80\x04" + short_binunicode(module) + short_binunicode("y") + b"\x93."
    code = f"import pickle\ntry:\n    pickle.loads({payload!r})\nexcept Exception:\n    pass\n"
    proc = pg("record", "-o", "m.toml", "--", sys.executable, "-c", code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    import pickleguard

    entries, _ = pickleguard._core.manifest_summary(str(tmp_path / "m.toml"))
    assert [ids for _, ids, _ in entries] == [[pickleguard.identify(payload)]]
    assert planted not in {i.split(":")[1] for _, ids, _ in entries for i in ids}
    assert '"x\\n[[pickle]]' in (tmp_path / "m.toml").read_text()


def test_record_adds_no_pins_for_loads_a_hand_written_channel_allows(tmp_path):
    (tmp_path / "engine.py").write_text(
        "import pickle, sys\n"
        "def receive(message):\n    return pickle.loads(message)\n"
        "for i in range(3):\n    receive(pickle.dumps({'task': i, 'run': sys.argv[1]}))\n"
    )
    (tmp_path / "m.toml").write_text(
        'version = 1\n[[channel]]\nname = "toy"\ncallers = ["__main__:rec*"]\n'
    )
    for run_id in ("a", "b"):
        proc = pg("record", "-o", "m.toml", "--", sys.executable, "engine.py", run_id, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    assert "[[pickle]]" not in (tmp_path / "m.toml").read_text()
    enforced = pg(
        "run", "--manifest", "m.toml", "--", sys.executable, "engine.py", "c", cwd=tmp_path
    )
    assert enforced.returncode == 0, enforced.stderr


@pytest.mark.parametrize("order", ["good first", "other first"])
def test_record_pins_a_load_that_a_channel_rule_allows_from_one_caller_only(tmp_path, order):
    # The same pickle, loaded by the same function, called from two places; the
    # manifest's channel rule allows only one of them (called_from).
    calls = "good(); other()" if order == "good first" else "other(); good()"
    (tmp_path / "app.py").write_text(
        "import pickle\n"
        "DATA = pickle.dumps({'same': 'bytes'})\n"
        "def load_it():\n    return pickle.loads(DATA)\n"
        "def good():\n    return load_it()\n"
        "def other():\n    return load_it()\n"
        f"{calls}\n"
    )
    (tmp_path / "m.toml").write_text(
        'version = 1\n[[channel]]\nname = "toy"\ncallers = ["__main__:load_it"]\n'
        'called_from = ["__main__:good"]\n'
    )
    proc = pg("record", "-o", "m.toml", "--", sys.executable, "app.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "1 new entry" in proc.stdout + proc.stderr
    enforced = pg("run", "--manifest", "m.toml", "--", sys.executable, "app.py", cwd=tmp_path)
    assert enforced.returncode == 0, enforced.stderr
