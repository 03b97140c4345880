"""Writes to a manifest lose nothing: `pin` and `record -o` running at the same time
take turns on a lock, a symlinked manifest is written through to its target, a
path that cannot be written is said before the command runs, and a manifest that
could not be written after it can be recovered from the kept journal."""

from __future__ import annotations

import fcntl
import hashlib
import os
import pickle
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Sequence

import pytest

from conftest import run_cli
from pickleguard import _core

# A fresh interpreter that waits for the go file, then runs the installed CLI: the
# processes of one round start their writes together, not one interpreter start apart.
_AT_ONCE = """
import os, sys, time
while not os.path.exists(sys.argv[1]):
    time.sleep(0.001)
from pickleguard.cli import main
sys.exit(main(sys.argv[2:]))
"""


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd, env=_clean_env())


def _clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("PICKLEGUARD_")}


def start_together(commands: Sequence[Sequence[str]], cwd: Path) -> List[subprocess.Popen]:
    go = cwd / f"go-{time.monotonic_ns()}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _AT_ONCE, str(go), *command],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_clean_env(),
        )
        for command in commands
    ]
    time.sleep(0.5)  # every interpreter has started and waits
    go.touch()
    return procs


def finish(procs: List[subprocess.Popen]) -> List[subprocess.CompletedProcess]:
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def identities(manifest: Path) -> List[str]:
    """Every identity the manifest's entries list, as the parser reads it."""
    _core.check_manifest(str(manifest))
    entries, _ = _core.manifest_summary(str(manifest))
    return [identity for _, ids, _ in entries for identity in ids]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("round", range(3))
def test_concurrent_pins_keep_every_entry(tmp_path, round):
    # Issue 13: eight concurrent `pin`s each said "1 new entry"; the file kept 2 to 4.
    # Half of them write through a symlink, which must take the same lock.
    blobs = [f"weights {round}-{i}\n".encode() * (i + 1) for i in range(12)]
    for i, blob in enumerate(blobs):
        (tmp_path / f"w{i}.bin").write_bytes(blob)
    (tmp_path / "link.toml").symlink_to("m.toml")
    commands = [["pin", "m.toml" if i % 2 else "link.toml", f"w{i}.bin"] for i in range(12)]
    results = finish(start_together(commands, tmp_path))
    for result in results:
        assert result.returncode == 0, result.stderr
        assert "1 new entry" in result.stdout
    assert sorted(identities(tmp_path / "m.toml")) == sorted(map(sha256, blobs))
    assert (tmp_path / "link.toml").is_symlink()
    # The lock file stays (deleting it would let two writers lock two files); the
    # temporary files do not.
    leftovers = sorted(p.name for p in tmp_path.glob(".*"))
    assert leftovers == [".m.toml.lock"]


def test_concurrent_pins_of_the_same_file_add_it_once(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"the same weights")
    results = finish(start_together([["pin", "m.toml", "w.bin"]] * 8, tmp_path))
    assert [r.returncode for r in results] == [0] * 8
    assert identities(tmp_path / "m.toml") == [sha256(b"the same weights")]
    # One of them wrote it; every other one found it there under the lock.
    assert sum("1 new entry" in r.stdout for r in results) == 1
    assert sum("nothing new to pin" in r.stdout for r in results) == 7


RECORDED_RUN = """
import pickle, sys
for name in sys.argv[1:]:
    with open(name, "rb") as f:
        pickle.load(f)
"""


@pytest.mark.parametrize("round", range(3))
def test_record_and_concurrent_pins_keep_every_entry(tmp_path, round):
    # `record -o` merges into the manifest the same way `pin` does: under the lock.
    pickles = [pickle.dumps({"round": round, "record": i}) for i in range(6)]
    for i, data in enumerate(pickles):
        (tmp_path / f"p{i}.pkl").write_bytes(data)
    blobs = [f"pinned {round}-{i}".encode() for i in range(8)]
    for i, blob in enumerate(blobs):
        (tmp_path / f"w{i}.bin").write_bytes(blob)
    (tmp_path / "app.py").write_text(RECORDED_RUN)
    records = [
        [
            "record",
            "-o",
            "m.toml",
            "--",
            sys.executable,
            "app.py",
            f"p{2 * i}.pkl",
            f"p{2 * i + 1}.pkl",
        ]
        for i in range(3)
    ]
    pins = [["pin", "m.toml", f"w{i}.bin"] for i in range(8)]
    results = finish(start_together(records + pins, tmp_path))
    for result in results:
        assert result.returncode == 0, result.stderr
    expected = list(map(sha256, pickles)) + list(map(sha256, blobs))
    assert sorted(identities(tmp_path / "m.toml")) == sorted(expected)


def test_pin_through_a_symlink_updates_its_target_and_keeps_the_link(tmp_path):
    # Issue 13: `pin` on a link wrote a plain file in its place; the enforced
    # manifest, the link's target, was left unchanged.
    real = tmp_path / "etc" / "pickleguard.toml"
    real.parent.mkdir()
    real.write_text("# the fleet's manifest\nversion = 1\n")
    real.chmod(0o640)
    (tmp_path / "app").mkdir()
    # A chain of links, one of them relative.
    (tmp_path / "app" / "first.toml").symlink_to(real)
    (tmp_path / "app" / "m.toml").symlink_to("first.toml")
    (tmp_path / "w.bin").write_bytes(b"weights")
    result = cli("pin", "app/m.toml", "w.bin", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert os.readlink(tmp_path / "app" / "m.toml") == "first.toml"
    assert (tmp_path / "app" / "first.toml").is_symlink()
    assert identities(real) == [sha256(b"weights")]
    assert real.read_text().startswith("# the fleet's manifest\nversion = 1\n")
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert (real.parent / ".pickleguard.toml.lock").exists()
    assert not (tmp_path / "app" / ".m.toml.lock").exists()


def test_record_through_a_symlink_updates_its_target(tmp_path):
    real = tmp_path / "real.toml"
    real.write_text("version = 1\n")
    (tmp_path / "m.toml").symlink_to("real.toml")
    data = pickle.dumps(["recorded"])
    (tmp_path / "p.pkl").write_bytes(data)
    (tmp_path / "app.py").write_text(RECORDED_RUN)
    result = cli("record", "-o", "m.toml", "--", sys.executable, "app.py", "p.pkl", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m.toml").is_symlink()
    assert identities(real) == [sha256(data)]


def test_a_dangling_link_gets_its_target_created(tmp_path):
    (tmp_path / "m.toml").symlink_to("made-later.toml")
    (tmp_path / "w.bin").write_bytes(b"weights")
    result = cli("pin", "m.toml", "w.bin", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "created m.toml: 1 new entry" in result.stdout
    assert (tmp_path / "m.toml").is_symlink()
    assert identities(tmp_path / "made-later.toml") == [sha256(b"weights")]


def test_a_lock_held_too_long_is_an_error_naming_the_lock_file(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"weights")
    (tmp_path / "m.toml").write_text("version = 1\n")
    lock = tmp_path / ".m.toml.lock"
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from pickleguard.cli import _writes, main; "
                "_writes.LOCK_TIMEOUT = 0.5; sys.exit(main(sys.argv[1:]))",
                "pin",
                "m.toml",
                "w.bin",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            env=_clean_env(),
        )
    assert result.returncode == 2
    assert "error: could not lock m.toml" in result.stderr
    assert str(lock) in result.stderr
    assert (tmp_path / "m.toml").read_text() == "version = 1\n"


def test_record_checks_the_manifest_can_be_written_before_running(tmp_path):
    # Issue 13: the command ran to the end before `record` found it could not write.
    (tmp_path / "not-a-dir").write_text("")
    ran = tmp_path / "ran"
    code = f"open({str(ran)!r}, 'w')"
    for output in ("not-a-dir/m.toml", "missing-dir/m.toml", "."):
        result = cli("record", "-o", output, "--", sys.executable, "-c", code, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"error: cannot write the manifest {output}: ")
        assert not ran.exists()


def test_run_checks_the_log_can_be_written_before_running(tmp_path):
    (tmp_path / "m.toml").write_text("version = 1\n")
    (tmp_path / "not-a-dir").write_text("")
    ran = tmp_path / "ran"
    code = f"open({str(ran)!r}, 'w')"
    for log in ("not-a-dir/audit.jsonl", ".", "missing-dir/audit.jsonl"):
        result = cli(
            "run",
            "--manifest",
            "m.toml",
            "--log",
            log,
            "--",
            sys.executable,
            "-c",
            code,
            cwd=tmp_path,
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"error: cannot write the audit log {log}: ")
        assert not ran.exists()


SABOTAGE = """
import pickle, shutil, sys
pickle.loads(pickle.dumps({"kept": "in the journal"}))
shutil.rmtree("out")  # the manifest's directory goes away while the command runs
"""


@pytest.mark.parametrize("journal", [None, "kept"])
def test_a_failed_record_write_prints_the_command_that_recovers_it(tmp_path, journal):
    (tmp_path / "out").mkdir()
    (tmp_path / "app.py").write_text(SABOTAGE)
    options = ["--journal", journal] if journal else []
    result = cli(
        "record", "-o", "out/m.toml", *options, "--", sys.executable, "app.py", cwd=tmp_path
    )
    assert result.returncode == 2
    assert "error: could not write out/m.toml" in result.stderr
    hint = [line for line in result.stderr.splitlines() if line.startswith("hint: ")]
    assert len(hint) == 1
    recover = shlex.split(hint[0].partition("written: ")[2])
    assert recover[:3] == ["pickleguard", "record", "--from-journal"]
    assert recover[4:] == ["-o", "out/m.toml"]
    journal_dir = Path(recover[3])
    if journal:
        assert recover[3] == journal
    assert list((tmp_path / journal_dir).glob("journal-*.jsonl"))
    # Fix the cause, then run the command it printed: the run's load is in the manifest.
    (tmp_path / "out").mkdir()
    again = cli(*recover[1:], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "recorded 1 load in 1 process: 1 new entry" in again.stdout
    assert identities(tmp_path / "out" / "m.toml") == [
        sha256(pickle.dumps({"kept": "in the journal"}))
    ]
    # Running it twice adds nothing twice.
    twice = cli(*recover[1:], cwd=tmp_path)
    assert twice.returncode == 0, twice.stderr
    assert "0 new entries" in twice.stdout
    assert len(identities(tmp_path / "out" / "m.toml")) == 1
    if not journal:
        subprocess.run(["rm", "-r", str(journal_dir)], check=True)


def test_from_journal_refuses_a_command_and_a_directory_with_no_journal(tmp_path):
    (tmp_path / "empty").mkdir()
    result = cli("record", "--from-journal", "empty", "-o", "m.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert "error: empty holds no journal" in result.stderr
    result = cli("record", "--from-journal", "empty", "--", "true", cwd=tmp_path)
    assert result.returncode == 2
    assert "error: --from-journal runs no command" in result.stderr
    assert not (tmp_path / "m.toml").exists()
