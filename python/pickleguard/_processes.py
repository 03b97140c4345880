"""What an in-code ``activate()`` does about processes started before it.

A layer added by ``activate()`` reaches the processes started after it: a fork
copies the guarded process, and ``spawn``, ``forkserver`` and ``subprocess``
children read ``PICKLEGUARD_LAYERS``. Two kinds of process escape it:

* a forkserver already running. It is an interpreter that started without the
  layer, and every worker it forks later is a copy of it. ``restart_forkserver``
  makes multiprocessing forget it, so that its next start happens from this
  process, with ``PICKLEGUARD_LAYERS`` set.
* multiprocessing children already alive (pool and executor workers, managers,
  processes). Nothing can add a layer to another process, so ``check_children``
  refuses to report enforcing while they live.

Activation from the environment runs before any user code, so neither exists then.
Nothing here imports multiprocessing: a program that has not imported it has
started neither.
"""

from __future__ import annotations

import os
import sys

from .errors import PickleGuardError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at interpreter start
    from typing import Any, List

# Forkservers this process let go of while their workers still ran; reaped once
# they exit (they exit when the last of their workers does).
_released: List[int] = []

_FORKSERVER_STATE = ("_lock", "_forkserver_pid", "_forkserver_alive_fd", "_forkserver_address")


def restart_forkserver() -> None:
    """Make multiprocessing start a new forkserver the next time it needs one.

    The running one is not stopped: ``ForkServer._stop`` waits until every
    process holding its "alive" pipe has exited, which includes its live workers
    (``check_children`` reports those). It exits by itself when they are gone, and
    until then it still reports their exit codes, so their pools keep working.
    """
    for pid in list(_released):
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                _released.remove(pid)
        except ChildProcessError:
            _released.remove(pid)
    forkserver = sys.modules.get("multiprocessing.forkserver")
    if forkserver is None:
        return
    server = getattr(forkserver, "_forkserver", None)
    if server is None or not all(hasattr(server, name) for name in _FORKSERVER_STATE):
        raise PickleGuardError(
            "pickleguard cannot tell whether a multiprocessing forkserver started "
            "before activate() is still running: multiprocessing.forkserver."
            "_forkserver does not have the attributes this Python version was "
            "expected to have. Workers it forks would not be guarded; this process is.\n"
            "hint: activate from the environment (PICKLEGUARD_MANIFEST or "
            "`pickleguard run`), which runs before any forkserver can start"
        )
    with server._lock:
        pid = server._forkserver_pid
        if pid is None:
            return
        try:
            exited = os.waitpid(pid, os.WNOHANG)[0] != 0
            ours = True
        except ChildProcessError:
            # This process was forked from the one that started it: leave the
            # server (and its socket) to that process, and start its own.
            exited, ours = True, False
        address = server._forkserver_address
        try:
            os.close(server._forkserver_alive_fd)
        except OSError:
            pass
        server._forkserver_pid = None
        server._forkserver_alive_fd = None
        server._forkserver_address = None
        if hasattr(server, "_forkserver_authkey"):
            server._forkserver_authkey = None
        if ours and isinstance(address, str) and address and not address.startswith("\0"):
            try:
                os.unlink(address)  # no process of ours asks it for a worker again
            except OSError:
                pass
        if ours and not exited:
            _released.append(pid)


def _describe(child: Any) -> str:
    method = getattr(getattr(child, "_popen", None), "method", None) or "unknown"
    return f"pid {child.pid} ({child.name}, {method})"


def check_children(mode: str, guarded_before: bool) -> None:
    """Refuse (enforce) or report (warn) live multiprocessing children.

    Called after the layer is installed: this process stays guarded either way.
    ``guarded_before`` says whether any layer was active before this activation.
    """
    process = sys.modules.get("multiprocessing.process")
    if process is None:
        return
    children = sorted(process.active_children(), key=lambda child: child.pid or 0)
    if not children:
        return
    one = len(children) == 1
    listed = ", ".join(_describe(child) for child in children)
    if guarded_before:
        effect = (
            ("It does" if one else "They do")
            + " not enforce the layer this call added, at most the layers that were "
            + ("active when it started" if one else "active when they started")
        )
    else:
        effect = (
            "It started before pickleguard was active and loads"
            if one
            else "They started before pickleguard was active and load"
        ) + " every pickle unguarded"
    message = (
        f"pickleguard activated in this process (pid {os.getpid()}), but "
        f"{len(children)} multiprocessing {'process' if one else 'processes'} "
        f"started before this activate() call cannot be reached: {listed}. {effect}; "
        "a layer added here does not reach another process, and pools and "
        "executors keep handing their tasks to the workers they have.\n"
        "hint: call pickleguard.activate() before creating pools, executors, "
        "managers or processes (or close and join them first), or activate from "
        "the environment (PICKLEGUARD_MANIFEST or `pickleguard run`), which runs "
        "before any user code"
    )
    if mode == "warn":
        import logging

        logging.getLogger("pickleguard").warning("warn mode, activating anyway: %s", message)
        return
    raise PickleGuardError(message)
