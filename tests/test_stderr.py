"""What reaches stderr: an enforced denial once (its traceback), warn mode's reports
once per payload and caller, or one summary line at exit when an audit log keeps
them all, or nothing with PICKLEGUARD_WARN_STDERR=off. An application that
configures logging still gets every record on the `pickleguard` logger."""

from __future__ import annotations

import json

import pytest

from conftest import fresh_python as fresh
from conftest import write_manifest

pytestmark = pytest.mark.usefixtures("wheel_installed")


# Four refused loads: three of one payload from one caller, one of another payload.
LOADS = (
    "import pickle\n"
    "def load(value):\n"
    "    return pickle.loads(pickle.dumps(value))\n"
    "print(load(1), load(1), load(1), load(2))\n"
)


def test_an_enforced_denial_reaches_stderr_once(tmp_path):
    write_manifest(tmp_path / "m.toml")
    proc = fresh(tmp_path, LOADS, PICKLEGUARD_MANIFEST="m.toml")
    assert proc.returncode == 1 and "NoPickleError" in proc.stderr
    assert proc.stderr.count("is not in the manifest") == 1, proc.stderr


def test_an_application_that_configures_logging_gets_every_record(tmp_path):
    write_manifest(tmp_path / "m.toml")
    code = (
        "import logging, pickle, pickleguard\n"
        "records = []\n"
        "class Keep(logging.Handler):\n"
        "    def emit(self, record): records.append((record.levelname, record.getMessage()))\n"
        "logging.getLogger().addHandler(Keep())\n"
        "for value in (1, 2):\n"
        "    try:\n"
        "        pickle.loads(pickle.dumps(value))\n"
        "    except pickleguard.NoPickleError:\n"
        "        pass\n"
        "print([level for level, message in records if 'is not in the manifest' in message])\n"
    )
    proc = fresh(tmp_path, code, PICKLEGUARD_MANIFEST="m.toml")
    assert proc.stdout.strip() == "['ERROR', 'ERROR']", proc.stdout + proc.stderr
    # The program caught both denials, so no traceback showed them: one line at exit.
    (line,) = proc.stderr.splitlines()
    assert line.startswith(
        "pickleguard: 2 refused loads raised NoPickleError that the program caught"
    )


def test_a_denial_a_library_swallows_is_said_once_at_exit(tmp_path):
    write_manifest(tmp_path / "m.toml")
    code = (
        "import pickle\n"
        "def read_cache(data):\n"
        "    try:\n"
        "        return pickle.loads(data)\n"
        "    except Exception:\n"
        "        return None\n"
        "print('result:', read_cache(pickle.dumps({'cached': True})))\n"
    )
    proc = fresh(tmp_path, code, PICKLEGUARD_MANIFEST="m.toml")
    assert proc.returncode == 0 and proc.stdout.strip() == "result: None"
    (line,) = proc.stderr.splitlines()
    assert line.startswith(
        "pickleguard: 1 refused load raised NoPickleError that the program caught"
    )
    assert "loaded by __main__:read_cache" in line and "is not in the manifest" in line


def test_an_uncaught_denial_after_a_caught_one_is_not_said_again(tmp_path):
    write_manifest(tmp_path / "m.toml")
    code = (
        "import pickle\n"
        "try:\n"
        "    pickle.loads(pickle.dumps(1))\n"
        "except Exception:\n"
        "    pass\n"
        "try:\n"
        "    pickle.loads(pickle.dumps(2))\n"
        "except Exception as e:\n"
        "    raise RuntimeError('could not read the cache') from e\n"
    )
    proc = fresh(tmp_path, code, PICKLEGUARD_MANIFEST="m.toml")
    assert proc.returncode == 1 and "RuntimeError: could not read the cache" in proc.stderr
    assert proc.stderr.count("is not in the manifest") == 2, proc.stderr
    assert "pickleguard: 1 refused load raised NoPickleError" in proc.stderr


def test_warn_mode_says_each_payload_and_caller_once(tmp_path):
    write_manifest(tmp_path / "m.toml")
    proc = fresh(tmp_path, LOADS, PICKLEGUARD_MANIFEST="m.toml", PICKLEGUARD_MODE="warn")
    assert proc.returncode == 0 and proc.stdout.split() == ["1", "1", "1", "2"]
    lines = proc.stderr.splitlines()
    assert len(lines) == 2, proc.stderr
    assert all(
        line.startswith("pickleguard: warn mode, allowed anyway: pickle sha256:") for line in lines
    )
    assert all("loaded by __main__:load" in line for line in lines)


def test_warn_mode_with_an_audit_log_prints_one_summary_at_exit(tmp_path):
    write_manifest(tmp_path / "m.toml")
    proc = fresh(
        tmp_path,
        LOADS,
        PICKLEGUARD_MANIFEST="m.toml",
        PICKLEGUARD_MODE="warn",
        PICKLEGUARD_LOG="audit.jsonl",
    )
    assert proc.returncode == 0 and proc.stdout.split() == ["1", "1", "1", "2"]
    (line,) = proc.stderr.splitlines()
    assert "4 loads that the policy would refuse (2 distinct" in line and "audit.jsonl" in line
    events = [json.loads(e) for e in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["warn"] * 4


def test_warn_stderr_off_prints_nothing_and_keeps_the_log(tmp_path):
    write_manifest(tmp_path / "m.toml")
    for log in ({}, {"PICKLEGUARD_LOG": "audit.jsonl"}):
        proc = fresh(
            tmp_path,
            LOADS,
            PICKLEGUARD_MANIFEST="m.toml",
            PICKLEGUARD_MODE="warn",
            PICKLEGUARD_WARN_STDERR="off",
            **log,
        )
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert len((tmp_path / "audit.jsonl").read_text().splitlines()) == 4


def test_a_bad_warn_stderr_setting_refuses_to_start(tmp_path):
    proc = fresh(tmp_path, "print('ran')", PICKLEGUARD_MODE="warn", PICKLEGUARD_WARN_STDERR="quiet")
    assert proc.returncode == 70 and "ran" not in proc.stdout
    assert "PICKLEGUARD_WARN_STDERR" in proc.stderr
