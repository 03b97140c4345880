"""Shared fixtures and configuration.

Activation is process-wide and cannot be undone, so every test that activates
pickleguard runs its scenario in a fresh interpreter (the ``run_py`` fixture).

Hypothesis profiles, chosen with the HYPOTHESIS_PROFILE environment variable:

* ``dev`` (default): about 200 examples per property, for local runs.
* ``ci``: 1000 examples per property.

Neither has a deadline: timings vary with the machine, and some examples pickle
objects of tens of kilobytes on purpose (to cross frame and length-prefix
boundaries).
"""

from __future__ import annotations

import os
import pickle
import site
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from hypothesis import settings

settings.register_profile("dev", max_examples=200, deadline=None)
settings.register_profile("ci", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

REPO = Path(__file__).resolve().parent.parent


class Boom:
    """Pickles to a REDUCE of ``os.mkdir(sentinel)``: loading it creates the sentinel."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = str(sentinel)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.mkdir, (self.sentinel,))


def hostile(sentinel: Path, protocol: int = pickle.DEFAULT_PROTOCOL) -> bytes:
    """A payload whose only effect is to create ``sentinel``."""
    return pickle.dumps(Boom(sentinel), protocol=protocol)


def assert_fires(payload: bytes, sentinel: Path) -> None:
    """Show that `payload` runs its code when loaded without pickleguard: load it in
    a fresh interpreter, check the sentinel appeared, and remove it again."""
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import pickle, sys; pickle.loads(sys.stdin.buffer.read())",
        ],
        input=payload,
        check=True,
        capture_output=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("PICKLEGUARD_")},
    )
    assert sentinel.exists(), "the payload must fire without the guard"
    sentinel.rmdir()


@pytest.fixture
def wheel_installed() -> None:
    """Fail (never skip) unless pickleguard's .pth file is installed: the tests that
    use this start processes that only the .pth file activates."""
    dirs = {sysconfig.get_paths()["purelib"], *site.getsitepackages()}
    if not any((Path(d) / "00-pickleguard.pth").exists() for d in dirs):
        pytest.fail(
            "00-pickleguard.pth is not installed: install pickleguard from its wheel "
            "(pip install . or .ci/run), not in editable mode, to run these tests"
        )


def run_cli(*args: str, cwd: Optional[Path] = None, **kwargs: Any) -> subprocess.CompletedProcess:
    """Run `python -m pickleguard ARGS` in `cwd`, capturing text output; keyword
    arguments go to subprocess.run (`input`, `env`, ...)."""
    return subprocess.run(
        [sys.executable, "-m", "pickleguard", *args],
        cwd=cwd,
        text=True,
        timeout=120,
        **{"capture_output": True, **kwargs},
    )


def fresh_python(cwd: Path, code: str, **settings: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter in `cwd`, with no PICKLEGUARD_ variable but
    `settings`: activation at interpreter start sees exactly these."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICKLEGUARD_")}
    env.update(settings)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def run_py(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Run a Python snippet in a fresh interpreter, in tmp_path; return the result."""

    def run(
        code: str, *, env: Optional[dict] = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        full_env = dict(os.environ)
        full_env.pop("PICKLEGUARD_MANIFEST", None)
        full_env.pop("PICKLEGUARD_MODE", None)
        full_env.update(env or {})
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            cwd=tmp_path,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"snippet failed with {proc.returncode}\n"
                f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
            )
        return proc

    return run


def write_manifest(path: Path, *entries: dict) -> Path:
    """Write a version-1 manifest with the given [[pickle]] entries."""
    lines = ["version = 1", ""]
    for entry in entries:
        lines.append("[[pickle]]")
        for key, value in entry.items():
            if isinstance(value, list):
                rendered = "[" + ", ".join(f'"{v}"' for v in value) + "]"
            else:
                rendered = f'"{value}"'
            lines.append(f"{key} = {rendered}")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under PICKLEGUARD_FORBID_SKIPS (set by .ci/run) a skipped test fails the run:
    a security test that silently does not run proves nothing."""
    if not os.environ.get("PICKLEGUARD_FORBID_SKIPS"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        for report in skipped:
            print(f"\nerror: skipped under PICKLEGUARD_FORBID_SKIPS: {report.nodeid}")
        session.exitstatus = 1


# The multiprocessing channel rule as `pickleguard record` wrote it before it was
# narrowed (Connection.recv for any caller): manifests in the field still hold it.
OLD_MULTIPROCESSING_RULE = """version = 1
[[channel]]
name = "multiprocessing"
callers = [
    "multiprocessing.connection:Connection.recv",
    "multiprocessing.connection:_ConnectionBase.recv",
    "multiprocessing.connection:recv",
    "multiprocessing.forkserver:_serve_one",
    "multiprocessing.forkserver:main",
    "multiprocessing.managers:Server.serve_client",
    "multiprocessing.managers:dispatch",
    "multiprocessing.managers:serve_client",
    "multiprocessing.queues:Queue.get",
    "multiprocessing.queues:SimpleQueue.get",
    "multiprocessing.queues:get",
    "multiprocessing.resource_sharer:DupFd.detach",
    "multiprocessing.spawn:_main",
]
"""
