"""Writing a manifest so that no entry is ever lost: ``pin`` and ``record`` that run
at the same time take turns, and a symlinked manifest is written through.

A writer holds an exclusive ``flock`` on a lock file next to the manifest's real
path (``.NAME.lock``, never deleted: removing it would let two writers lock two
different files) while it reads the manifest, merges into it and replaces it.
The new text goes to a temporary file in the same directory, is synced, and
replaces the manifest in one ``rename``; then the directory is synced, so that
after a crash the manifest is the old one or the new one, never a part of one.
"""

from __future__ import annotations

import errno
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, Tuple

from .. import _core

if sys.platform != "win32":
    import fcntl

# Other writers hold the lock only to read, merge and replace one manifest, which
# takes milliseconds; a lock held this long is held by something that is stuck.
LOCK_TIMEOUT = 30.0
_LOCK_POLL = 0.05


class LockTimeout(Exception):
    """The manifest's lock file could not be locked in time."""

    def __init__(self, lock: Path, waited: float) -> None:
        super().__init__(f"{lock} is still locked after {waited:g} seconds")
        self.lock = lock
        self.waited = waited


def real_path(manifest: Path) -> Path:
    """The file a write to ``manifest`` must replace: the target of a symlink (of a
    chain of them), so that the link stays and the manifest it names is updated.
    A dangling link gives the path of the target to create."""
    return Path(os.path.realpath(manifest))


def lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


@contextmanager
def locked(manifest: Path) -> Iterator[Path]:
    """Hold the lock of ``manifest``; yields the real path to read and replace.

    It raises LockTimeout if another writer keeps the lock for LOCK_TIMEOUT
    seconds, and OSError if the lock file cannot be created or opened.
    """
    target = real_path(manifest)
    lock = lock_path(target)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        # A lock file made by another user, readable by us: flock works on it.
        fd = os.open(lock, os.O_RDONLY)
    try:
        _lock(fd, lock)
        yield target
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _lock(fd: int, lock: Path) -> None:
    if sys.platform == "win32":
        raise OSError(errno.ENOSYS, "manifest writes need flock (Linux or macOS)", str(lock))
    deadline = time.monotonic() + LOCK_TIMEOUT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise LockTimeout(lock, LOCK_TIMEOUT) from None
            time.sleep(_LOCK_POLL)


def replace(target: Path, text: str) -> None:
    """Replace ``target`` (a real path, from ``locked``) with ``text`` in one step,
    after checking that the new manifest parses. The file keeps its mode; a new
    one gets the mode the umask allows. An index beside it is rewritten for the
    new text, so that it never goes stale through pickleguard's own writes."""
    _replace_bytes(target, text.encode("utf-8"), _mode(target), check=_core.check_manifest)
    if index_path(target).exists():
        try:
            write_index(target)
        except OSError as e:
            # A stale index is never used, only slower: the manifest stands.
            print(
                f"warning: could not rewrite {index_path(target)}: {e.strerror or e}; "
                "until it is rewritten, enforcement reads the manifest's text\n"
                f"hint: pickleguard index {target}",
                file=sys.stderr,
            )


def index_path(target: Path) -> Path:
    """Where the index of the manifest at ``target`` (a real path) lives."""
    return target.with_name(f".{target.name}.index")


def write_index(target: Path) -> int:
    """Write the index of the manifest at ``target`` (a real path, under its lock)
    from its text as it is now; returns the number of rules in it. The index gets
    the manifest's mode and, when root writes it, the manifest's owner: enforcement
    trusts an index only if it is owned and writable like its manifest."""
    data, rules = _core.manifest_index(str(target))
    manifest = os.stat(target)
    owner = None
    if hasattr(os, "geteuid") and os.geteuid() == 0 and manifest.st_uid != 0:
        owner = (manifest.st_uid, manifest.st_gid)
    _replace_bytes(index_path(target), data, manifest.st_mode & 0o7777, owner=owner)
    return rules


def _replace_bytes(
    target: Path,
    data: bytes,
    mode: int,
    *,
    check: Optional[Callable[[str], object]] = None,
    owner: Optional[Tuple[int, int]] = None,
) -> None:
    """Replace ``target`` with ``data`` in one rename of a synced temporary file of
    mode ``mode`` (and owner ``owner``), after ``check`` accepts the temporary file."""
    directory = target.parent
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if owner is not None:
            os.chown(temp, *owner)
        os.chmod(temp, mode)
        if check is not None:
            check(temp)
        os.replace(temp, target)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    _sync_directory(directory)


def _mode(target: Path) -> int:
    try:
        return os.stat(target).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _sync_directory(directory: Path) -> None:
    """Make the rename durable. Some file systems cannot sync a directory; the
    rename itself is still atomic there."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_writable(manifest: Path) -> None:
    """Raise OSError if a manifest could not be written at ``manifest``: its real
    directory must take new files (the temporary file and the lock file), and an
    existing manifest must not be a directory. Nothing is left behind."""
    target = real_path(manifest)
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(manifest))
    with tempfile.TemporaryFile(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent):
        pass


__all__ = [
    "LOCK_TIMEOUT",
    "LockTimeout",
    "check_writable",
    "index_path",
    "lock_path",
    "locked",
    "replace",
    "write_index",
]
