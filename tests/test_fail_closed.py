"""Fail-closed settings: a bad setting stops the start (exit 70) before any code runs,
and an audit log that cannot be written is said once, without changing a decision."""

from __future__ import annotations

import hashlib
import pickle

import pytest

from conftest import fresh_python as fresh
from conftest import write_manifest

pytestmark = pytest.mark.usefixtures("wheel_installed")


def test_a_missing_manifest_stops_the_start(tmp_path):
    proc = fresh(tmp_path, "print('ran')", PICKLEGUARD_MANIFEST="missing.toml")
    assert proc.returncode == 70 and "ran" not in proc.stdout
    assert str(tmp_path / "missing.toml") in proc.stderr
    assert "PICKLEGUARD_MANIFEST" in proc.stderr and "refusing to run unguarded" in proc.stderr


def test_an_unreadable_manifest_stops_the_start(tmp_path):
    # A directory cannot be read as a file, even by root (chmod 000 would not stop root).
    (tmp_path / "dir.toml").mkdir()
    proc = fresh(tmp_path, "print('ran')", PICKLEGUARD_MANIFEST="dir.toml")
    assert proc.returncode == 70 and "ran" not in proc.stdout
    assert "dir.toml" in proc.stderr and "cannot be read" in proc.stderr


def test_a_missing_inherited_layer_manifest_stops_the_start(tmp_path):
    layers = '[["enforce", "%s"]]' % (tmp_path / "gone.toml")
    proc = fresh(tmp_path, "print('ran')", PICKLEGUARD_LAYERS=layers)
    assert proc.returncode == 70 and "ran" not in proc.stdout
    assert "gone.toml" in proc.stderr and "PICKLEGUARD_LAYERS" in proc.stderr


def test_an_empty_log_variable_stops_the_start(tmp_path):
    proc = fresh(tmp_path, "print('ran')", PICKLEGUARD_MODE="warn", PICKLEGUARD_LOG="")
    assert proc.returncode == 70 and "ran" not in proc.stdout
    assert "PICKLEGUARD_LOG is set but empty" in proc.stderr


LOADS = (
    "import pickle, pickleguard\n"
    "for value in (1, 2, 3):\n"
    "    try:\n"
    "        print(pickle.loads(pickle.dumps(value)))\n"
    "    except pickleguard.NoPickleError as e:\n"
    "        print('refused', e.code)\n"
)


def test_a_log_that_cannot_be_written_is_said_once_in_warn_mode(tmp_path):
    proc = fresh(tmp_path, LOADS, PICKLEGUARD_MODE="warn", PICKLEGUARD_LOG="/dev/full")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "2", "3"]
    assert proc.stderr.count("could not write the audit log /dev/full") == 1, proc.stderr
    assert "No space left on device" in proc.stderr


def test_a_log_that_cannot_be_written_changes_no_decision_under_enforcement(tmp_path):
    write_manifest(tmp_path / "m.toml", {"sha256": hashlib.sha256(pickle.dumps(2)).hexdigest()})
    proc = fresh(tmp_path, LOADS, PICKLEGUARD_MANIFEST="m.toml", PICKLEGUARD_LOG="/dev/full")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["refused not-listed", "2", "refused not-listed"]
    assert proc.stderr.count("could not write the audit log /dev/full") == 1, proc.stderr
