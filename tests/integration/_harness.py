"""Running apps under `pickleguard record` and `pickleguard run`, and checking what
happened in their processes.

These tests need pickleguard installed from its wheel: the .pth file it carries
activates pickleguard in every Python process started with PICKLEGUARD_ variables.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import pickleguard

TIMEOUT = 300  # seconds for one app run; a cluster starts in a few


def clean_env(**settings: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICKLEGUARD_")}
    env.update(settings)
    return env


def run(
    args: List[str], cwd: Path, env: Optional[Dict[str, str]] = None
) -> subprocess.CompletedProcess:
    """Run `args` in its own process group; on timeout kill the whole group (the app
    and every worker it started) and fail."""
    proc = subprocess.Popen(
        args,
        cwd=cwd,
        env=env if env is not None else clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{args} timed out\n--- stdout\n{out}\n--- stderr\n{err}") from None
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def pg(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "pickleguard", *args], cwd)


def record(manifest: Path, app: List[str], cwd: Path, journal: Optional[Path] = None) -> dict:
    """`pickleguard record` the app (keeping its journal in `journal`, if given);
    return its --json summary."""
    keep = ["--journal", str(journal)] if journal else []
    proc = pg("record", "-o", str(manifest), *keep, "--json", "--", sys.executable, *app, cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout[proc.stdout.index("{") :])


def enforce(manifest: Path, app: List[str], cwd: Path, log: Path) -> subprocess.CompletedProcess:
    """`pickleguard run` the app, with denials written to `log` by every process."""
    return pg(
        "run", "--manifest", str(manifest), "--log", str(log), "--", sys.executable, *app, cwd=cwd
    )


def journaled(journal: Path) -> List[dict]:
    """Every load a recorded run journaled, in all its processes."""
    lines = []
    for path in sorted(journal.glob("journal-*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    return lines


def denials(log: Path) -> List[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def pins(manifest: Path) -> Set[Tuple[str, Tuple[str, ...]]]:
    """(sha256, stack) of each [[pickle]] entry."""
    entries, _ = pickleguard._core.manifest_summary(str(manifest))
    return {
        (identity.split(":", 1)[1], tuple(stack or ()))
        for table, identities, stack in entries
        if table == "pickle"
        for identity in identities
    }


def channels(manifest: Path) -> Dict[str, Set[str]]:
    _, rules = pickleguard._core.manifest_summary(str(manifest))
    found: Dict[str, Set[str]] = {}
    for name, callers, _called_from in rules:
        found.setdefault(name, set()).update(callers)
    return found


def digest(data: bytes) -> str:
    return pickleguard.identify(data)[len("sha256:") :]


def alive(pid: int) -> bool:
    """Whether `pid` is a running process (a zombie nobody reaped is not)."""
    if not os.path.exists("/proc/self/stat"):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def assert_all_exited(pids: List[int], wait: float = 20.0) -> None:
    """Every process the app started has exited: nothing leaked."""
    deadline = time.monotonic() + wait
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if alive(p)], f"processes left running: {pids}"


def pid_lines(stdout: str) -> Dict[str, List[int]]:
    """The app's `pid NAME N...` lines."""
    found: Dict[str, List[int]] = {}
    for line in stdout.splitlines():
        if line.startswith("pid "):
            _, name, *numbers = line.split()
            found.setdefault(name, []).extend(int(n) for n in numbers)
    return found


def without_pids(stdout: str) -> List[str]:
    return [line for line in stdout.splitlines() if not line.startswith("pid ")]
