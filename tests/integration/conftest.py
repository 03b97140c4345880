"""Helpers for the integration tests with real libraries.

Each test writes a small program, ``app.py``, into its own directory. The program
makes its artifacts when they are missing, then loads them through a library and
prints what it loaded. The helpers drive it the way a deployment does: a plain run
(which makes the artifacts), ``pickleguard record``, ``pickleguard run``, and, once
an artifact is swapped for a hostile payload, a plain run (the payload fires) and a
guarded one (it is refused).

These tests need pickleguard installed from its wheel, which carries the .pth file
that activates it in every Python process started with PICKLEGUARD_ variables, and
the libraries themselves. CI installs them on CPython 3.11, where nothing here may
skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

import pytest

MANIFEST = "pickleguard.toml"


@pytest.fixture(autouse=True)
def _needs_the_wheel(wheel_installed: None) -> None:
    """Every test here runs processes that pickleguard's .pth file activates."""


def clean_env() -> Dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PICKLEGUARD_")}


def qualified(function: Any) -> str:
    """The name pickleguard gives a frame of `function`: ``module:qualname``."""
    return f"{function.__globals__['__name__']}:{function.__code__.co_qualname}"


@dataclass
class App:
    """``app.py`` in its own directory, and the ways to run it."""

    dir: Path

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *args],
            cwd=self.dir,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def plain(self) -> subprocess.CompletedProcess:
        """Run the app without pickleguard."""
        return self._run("app.py")

    def record(self) -> Tuple[subprocess.CompletedProcess, Dict[str, Any]]:
        """``pickleguard record -o pickleguard.toml --json -- python app.py``: the
        process, and the summary record printed after the app's own output."""
        proc = self._run(
            "-m", "pickleguard", "record", "-o", MANIFEST, "--json", "--", sys.executable, "app.py"
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        start = proc.stdout.rindex("\n{\n") + 1 if "\n{\n" in proc.stdout else 0
        return proc, json.loads(proc.stdout[start:])

    def enforce(self) -> subprocess.CompletedProcess:
        """``pickleguard run --manifest pickleguard.toml -- python app.py``."""
        return self._run(
            "-m", "pickleguard", "run", "--manifest", MANIFEST, "--", sys.executable, "app.py"
        )

    def manifest(self) -> str:
        return (self.dir / MANIFEST).read_text()

    def record_then_enforce(self) -> Tuple[str, Dict[str, Any]]:
        """Run the app plainly (it makes its artifacts), record it, then enforce the
        recorded manifest. The guarded runs must print exactly what the plain run
        printed. Returns that output and the record summary."""
        plain = self.plain()
        assert plain.returncode == 0, plain.stderr
        recorded, summary = self.record()
        assert recorded.stdout.startswith(plain.stdout)
        assert summary["command_exit"] == 0 and summary["processes"] == 1
        enforced = self.enforce()
        assert enforced.returncode == 0, enforced.stderr
        assert enforced.stdout == plain.stdout
        assert "pickleguard" not in enforced.stderr
        return plain.stdout, summary

    def assert_fires(self, sentinel: Path) -> None:
        """Show that the swapped-in payload runs its code when the app loads it
        through its library without pickleguard; remove the sentinel again."""
        assert not sentinel.exists()
        proc = self.plain()
        assert sentinel.exists(), "the payload must fire without the guard\n" + proc.stderr
        sentinel.rmdir()

    def assert_refused(
        self, sha256: str, caller: str, sentinel: Path
    ) -> subprocess.CompletedProcess:
        """Under ``pickleguard run`` the app fails with a NoPickleError naming the
        payload's sha256 and the frame that loaded it, and the payload never ran."""
        proc = self.enforce()
        assert proc.returncode == 1, proc.stdout + proc.stderr
        denial = f"pickle sha256:{sha256} ("
        assert f"pickleguard.errors.NoPickleError: {denial}" in proc.stderr, proc.stderr
        assert f"loaded by {caller} (" in proc.stderr, proc.stderr
        assert "is not in the manifest" in proc.stderr
        assert not sentinel.exists()
        return proc


@pytest.fixture
def make_app(tmp_path: Path) -> Callable[[str], App]:
    """Write ``app.py`` (dedented) into tmp_path; return the App."""

    def make(source: str) -> App:
        (tmp_path / "app.py").write_text(textwrap.dedent(source))
        return App(tmp_path)

    return make


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: runs an engine's processes under record and run (slow)"
    )
