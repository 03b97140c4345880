"""What every command of the `pickleguard` CLI owes its operator: a broken pipe
never changes the exit status, a version, a description and help for every option
of every command, and messages in plain words."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import assert_fires, hostile
from conftest import run_cli as cli
from pickleguard.cli import _parser

COMMANDS = ["check", "hash", "index", "inspect", "pin", "record", "run"]


def closed_stdout(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the CLI with standard output a pipe whose reader is gone before it starts,
    so that its first write fails with EPIPE whatever the size of the output."""
    read, write = os.pipe()
    os.close(read)
    try:
        return cli(*args, cwd=cwd, stdout=write, stderr=subprocess.PIPE, capture_output=False)
    finally:
        os.close(write)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    sentinel = tmp_path / "fired"
    payload = hostile(sentinel)
    assert_fires(payload, sentinel)
    (tmp_path / "evil.pkl").write_bytes(payload)
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"lr": 0.1}))
    return tmp_path


@pytest.mark.parametrize(
    "args,status",
    [
        (["inspect", "evil.pkl"], 1),
        (["inspect", "--json", "evil.pkl"], 1),
        (["inspect", "plain.pkl"], 0),
        (["hash", "plain.pkl", "missing.pkl"], 2),
        (["check", "--help"], 0),
    ],
)
def test_a_closed_pipe_keeps_the_exit_status_and_prints_nothing(files, args, status):
    # Issue 13: `pickleguard inspect evil.pkl | head -1` exited 0, hiding the finding.
    result = closed_stdout(*args, cwd=files)
    assert result.returncode == status
    assert "Traceback" not in result.stderr
    assert "BrokenPipe" not in result.stderr and "Exception ignored" not in result.stderr
    assert not (files / "fired").exists()


def test_head_of_a_long_listing_keeps_the_finding(files):
    # More output than a pipe holds, so that the CLI is still writing when head exits.
    shell = shutil.which("bash")
    assert shell is not None
    names = " ".join(["plain.pkl"] * 3000 + ["evil.pkl"])
    result = subprocess.run(
        [
            shell,
            "-c",
            f'{sys.executable} -m pickleguard inspect {names} | head -1; exit "${{PIPESTATUS[0]}}"',
        ],
        cwd=files,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stdout.count("\n") == 1
    assert result.stderr == ""
    assert not (files / "fired").exists()


def test_version_is_the_package_version(tmp_path):
    result = cli("--version", cwd=tmp_path)
    assert result.returncode == 0
    version = importlib.metadata.version("pickleguard-runtime")
    assert result.stdout == f"pickleguard {version}\n"
    in_module = subprocess.run(
        [sys.executable, "-c", "import pickleguard; print(pickleguard.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert in_module.stdout == f"{version}\n"


def _subcommands() -> dict:
    parser = _parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(commands.choices)


def test_every_command_is_listed_and_has_a_description_and_help_for_each_option():
    commands = _subcommands()
    assert sorted(commands) == sorted(COMMANDS)
    for name, parser in commands.items():
        assert parser.description and "\n" not in parser.description, name
        for action in parser._actions:
            assert action.help and action.help.strip(), (
                f"{name} {action.option_strings or action.dest}"
            )


@pytest.mark.parametrize("command", COMMANDS)
def test_help_starts_with_the_description(tmp_path, command):
    result = cli(command, "--help", cwd=tmp_path)
    assert result.returncode == 0
    usage, description = result.stdout.split("\n\n")[:2]
    assert usage.startswith(f"usage: pickleguard {command} ")
    assert description == _subcommands()[command].description


def test_pin_usage_does_not_call_its_optional_files_required(tmp_path):
    result = cli("pin", cwd=tmp_path)
    assert result.returncode == 2
    assert "the following arguments are required: MANIFEST\n" in result.stderr
    assert "FILE" not in result.stderr.splitlines()[-1]


def test_manifest_read_errors_are_in_plain_words(tmp_path):
    # Rust's io::Error said "stream did not contain valid UTF-8" and "(os error 2)".
    (tmp_path / "latin1.toml").write_bytes(b"version = 1\n# caf\xe9\n")
    result = cli("check", "latin1.toml", cwd=tmp_path)
    assert result.returncode == 1
    assert "error: latin1.toml: could not read the manifest: the file is not UTF-8 text\n" in (
        result.stderr
    )
    result = cli("run", "--manifest", "latin1.toml", "--", "true", cwd=tmp_path)
    assert result.returncode == 1
    assert "the file is not UTF-8 text" in result.stderr
    for text in (result.stderr, cli("check", "missing.toml", cwd=tmp_path).stderr):
        assert "os error" not in text and "stream did not" not in text
