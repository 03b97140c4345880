"""``pickleguard pin``: add manifest entries by hand, from files, sums listings or
bare hashes, all or nothing."""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from .. import _core
from .._pickles import Walk, is_zip, pickle_members, pickles_in, walk
from ..errors import ManifestError
from . import _manifest, _writes
from ._common import (
    add_identity_option,
    add_json_option,
    message_and_hint,
    plural,
    print_error,
    print_json,
)
from ._manifest import clean_text as _clean
from ._manifest import quoted as _quoted
from ._manifest import shown as _shown
from ._status import ExitStatus

_SUMS_FORMAT = (
    'sha256sum lines look like "<64 hex digits>  <name>" or "<64 hex digits> *<name>", '
    'or "SHA256 (<name>) = <64 hex digits>" (sha256sum --tag)'
)
# GNU sha256sum: the digest, a space, then " " (text) or "*" (binary) or nothing (the
# reversed BSD format), then the name. A leading backslash marks an escaped name.
_GNU_LINE = re.compile(r"(\\?)([0-9A-Fa-f]+) ([ *]?)(.*)", re.DOTALL)
# BSD and `sha256sum --tag`: "SHA256 (name) = digest"; OpenSSL writes "SHA2-256(name)= ".
_BSD_LINE = re.compile(r"(\\?)([A-Za-z0-9-]+) ?\((.*)\) ?= ?([0-9A-Fa-f]*)", re.DOTALL)
_HEX64 = re.compile(r"[0-9A-Fa-f]{64}")
_DIGEST_NAMES = {32: "MD5", 40: "SHA-1", 56: "SHA-224", 96: "SHA-384", 128: "SHA-512"}
_MAX_BAD_LINES = 10  # per sums file: a file that is no sums file at all says so quickly

HELP = "add entries for files, sha256sum lines or bare hashes to a manifest"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", metavar="MANIFEST", help="created if it does not exist")
    # default=[]: without a default, argparse before 3.13 calls FILE required in usage errors.
    parser.add_argument(
        "files", nargs="*", default=[], metavar="FILE", help="pin the whole file (default)"
    )
    parser.add_argument(
        "--sha256sum",
        dest="sums",
        action="append",
        default=[],
        metavar="SUMS",
        help="pin each file a sha256sum listing names, without reading it ('-': standard input)",
    )
    parser.add_argument(
        "--hash",
        dest="hashes",
        action="append",
        default=[],
        metavar="HEX",
        help="pin a bare hash: 64 hex digits, optionally prefixed sha256: or blake3:",
    )
    parser.add_argument(
        "--pickle",
        action="store_true",
        help="pin each pickle in FILE (as `pickleguard hash` shows them) as a [[pickle]] entry, "
        "instead of the whole file as an [[artifact]]",
    )
    add_identity_option(
        parser,
        "hash FILE with SHA-256 (default) or BLAKE3; bare --hash values are taken as this",
        default=None,  # not given: a bare --hash value is taken as its prefix says
    )
    parser.add_argument(
        "--stack",
        action="append",
        default=[],
        metavar="PATTERN",
        help="allow only callers matching PATTERN (repeat for several, outermost first)",
    )
    parser.add_argument("--note", metavar="TEXT", help="a note for reviewers in every new entry")
    parser.add_argument(
        "--source",
        metavar="NAME",
        help="the source of every new entry (default: the path, or the name in the sums line)",
    )
    parser.add_argument(
        "--allow-risky",
        action="store_true",
        help="write the entries even if what they pin imports RISKY globals (listed either way)",
    )
    parser.add_argument(
        "--from-log",
        dest="logs",
        action="append",
        default=[],
        metavar="LOG",
        help="pin each distinct load a warn-mode audit log (PICKLEGUARD_LOG) reported",
    )
    add_json_option(parser, "machine-readable summary")


@dataclass
class _Pin:
    """One entry that `pin` adds: what it pins, and where that came from."""

    kind: str  # the table: "pickle" or "artifact"
    identity: str  # "sha256:<hex>" or "blake3:<hex>", lowercase
    source: Optional[str]
    label: str  # the input, for messages: "model.pt, 417 bytes", "SUMS line 3: name", ...
    origin: str  # the comment above the entry: how it was pinned
    size: Optional[int] = None
    offset: Optional[int] = None  # of a stream pin in its file (or archive member)
    imports: List[str] = field(default_factory=list)
    risky: List[str] = field(default_factory=list)
    # Why its imports were not reviewed (no bytes to scan), for its comment.
    unscanned: Optional[str] = None
    stack: Optional[List[str]] = None  # its own stack patterns, instead of --stack
    # Where it came from, for its note (after --note): a Hugging Face repo and revision.
    note: Optional[str] = None


class _PinError(Exception):
    """An input that cannot be pinned; nothing is written when there is one."""

    def __init__(self, message: str, hint: str, status: ExitStatus = ExitStatus.FINDING) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.status = status


def _stack_problem(patterns: Sequence[str]) -> Optional[Tuple[str, str]]:
    """The manifest parser's complaint about ``--stack`` patterns, if it has one."""
    if not patterns:
        return None
    fd, temp = tempfile.mkstemp(prefix="pickleguard-stack-", suffix=".toml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(
                f'version = 1\n[[pickle]]\nsha256 = "{"0" * 64}"\n'
                f"stack = {_manifest.toml_list([_clean(p) for p in patterns])}\n"
            )
        _core.check_manifest(temp)
    except ManifestError as e:
        message, hint = message_and_hint(e)
        if message.startswith(temp + ":"):  # drop the scratch file's path and position
            message = re.sub(r"^\d+:\d+: ", "", message[len(temp) + 1 :])
        return message, hint
    finally:
        os.unlink(temp)
    return None


def _file_artifact(path: str, algorithm: str) -> _Pin:
    """The whole file as one [[artifact]] entry: what `sha256sum FILE` prints."""
    try:
        with open(path, "rb") as f:
            if algorithm == "sha256":
                # In chunks: a checkpoint may be larger than memory.
                digest, size = hashlib.sha256(), 0
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
                    size += len(chunk)
                hexdigest = digest.hexdigest()
            else:
                data = f.read()
                size, hexdigest = len(data), _core.hexdigest(data, algorithm)
    except OSError as e:
        raise _PinError(
            f"could not read {_shown(path)}: {e.strerror or e}", "check the path", ExitStatus.ERROR
        ) from None
    if size == 0:
        raise _PinError(
            f"{_shown(path)}: the file is empty",
            "an empty file holds no model or data: check that it was written or downloaded",
        )
    return _whole_file(path, f"{algorithm}:{hexdigest}", size)


def _whole_file(path: str, identity: str, size: int, note: Optional[str] = None) -> _Pin:
    """The [[artifact]] entry of the file at `path`, of `size` bytes."""
    return _Pin(
        kind="artifact",
        identity=identity,
        source=_clean(path),
        label=f"{_shown(path)}, {plural(size, 'byte')}",
        origin=f"from the file {_quoted(path)}, {plural(size, 'byte')}",
        size=size,
        note=note,
    )


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise _PinError(
            f"could not read {_shown(path)}: {e.strerror or e}", "check the path", ExitStatus.ERROR
        ) from None


def _file_pins(path: str, algorithm: str) -> List[_Pin]:
    """The entries a whole file needs: an [[artifact]] (torch.load, joblib.load),
    and, for a file that is exactly one pickle, a [[pickle]] with the same hash
    (pickle.load of the file checks that one). Both carry what its pickles
    import, walked as its loader reads it."""
    pin = _file_artifact(path, algorithm)
    return _data_pins(pin, _read(path))


def _data_pins(pin: _Pin, data: bytes, found: Optional[Walk] = None) -> List[_Pin]:
    """``pin`` (the whole file's [[artifact]]) with what the pickles of ``data``
    import, and its [[pickle]] twin if the file is one pickle."""
    found = found if found is not None else walk(data)
    imports = found.imports
    if found.problem and found.form != "none":
        # What the rest of the file imports is not known: as risky as it gets.
        imports.append((f"<not read: {found.problem}>", True))
    pin.imports = [name for name, _ in imports]
    pin.risky = [name for name, risky in imports if risky]
    pins = [pin]
    if found.one_pickle and _core.delimit(data)[1] == 0:  # no out-of-band buffers
        twin = _Pin(**{**pin.__dict__, "kind": "pickle"})
        twin.origin += ": the file is one pickle, which pickle.load reads"
        pins.append(twin)
    return pins


# joblib 0.9 and earlier saved each array of NAME in a file of its own next to it,
# NAME_01.npy, NAME_02.npy, ... (NAME_01.npy.z when compressed); the pickle names
# them, and joblib.load reads them, each judged as an artifact of its own.
_JOBLIB_ARRAY_FILE = r"_(\d{2,})\.npy(?:\.z)?"
_JOBLIB_WRAPPERS = {
    f"joblib.{module}.{name}"
    for module in ("numpy_pickle", "numpy_pickle_compat")
    for name in ("NDArrayWrapper", "ZNDArrayWrapper")
}


def _joblib_array_files(path: str) -> List[str]:
    """The array files next to ``path``, named as old joblib named them, if ``path``
    is a joblib file in that format: a zlib "Z-file", or a pickle that imports
    joblib's old array wrappers."""
    directory, name = os.path.split(path)
    pattern = re.compile(re.escape(name) + _JOBLIB_ARRAY_FILE)
    try:
        matches = [m for m in map(pattern.fullmatch, os.listdir(directory or ".")) if m]
    except OSError:
        return []
    files = [
        os.path.join(directory, m.group(0))
        for m in sorted(matches, key=lambda m: (int(m.group(1)), m.group(0)))
        if os.path.isfile(os.path.join(directory, m.group(0)))
    ]
    if not files:
        return []
    try:
        with open(path, "rb") as f:
            data = f.read()
        old = data.startswith(b"ZF") or any(g in _JOBLIB_WRAPPERS for g, _ in _core.imports(data))
    except Exception:  # unreadable, or no pickle: not joblib's old format
        return []
    return files if old else []


def _joblib_array_pins(path: str, algorithm: str) -> List[_Pin]:
    pins = []
    for array_file in _joblib_array_files(path):
        pin = _file_artifact(array_file, algorithm)
        pin.origin += f": an array file joblib.load reads for {_quoted(path)} (old format)"
        pins.append(pin)
    return pins


# ---------------------------------------------------------------------------
# A directory: the pickle-bearing files in it, and for a Hugging Face hub cache
# snapshot, each file's blob checked against its name.

# The first byte of every file a loader could find a pickle in: a pickle opcode
# (protocols 0 to 5), a zip archive (torch), or the compressions joblib reads.
_PICKLE_FIRST = frozenset(b"(.012FIJKLMNPQRSTUVXabcdeghijlopqrstu}])GBC") | frozenset(
    range(0x80, 0x99)
)
_ARCHIVE_FIRST = frozenset(b"P\x1fB\xfd]\x04xZ")
_HUB_REPO = re.compile(r"(model|dataset|space)s--(.+)")
_BLOB_NAME = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


@dataclass
class _Snapshot:
    """A snapshot folder of a Hugging Face hub cache: REPO/snapshots/REV/."""

    repo_dir: str  # the models--ORG--NAME folder, resolved
    snapshot_dir: str  # REPO/snapshots/REV, resolved
    kind: str  # model, dataset or space
    repo: str  # ORG/NAME
    revision: str  # the snapshot folder's name: the commit
    commit: Optional[str]  # the commit it is, if REV is one or a ref names it
    refs: List[str]  # the refs (main, pr/1, ...) that point at this commit

    @property
    def type_option(self) -> str:
        return "" if self.kind == "model" else f" --repo-type {self.kind}"

    def note(self, relative: str) -> str:
        where = f"revision {self.revision}"
        if self.commit and self.commit != self.revision:
            where += f" (commit {self.commit})"
        if self.refs:
            where += f" ({', '.join('refs/' + r for r in self.refs)})"
        return (
            f"Hugging Face {self.kind} {self.repo}, {where}, file {relative}, "
            "blob checked against its name"
        )


def _hub_repo_dir(path: str) -> Optional[Tuple[str, str]]:
    """(kind, repo) if ``path`` is a hub cache repo folder, models--ORG--NAME."""
    m = _HUB_REPO.fullmatch(os.path.basename(path))
    if m and os.path.isdir(os.path.join(path, "snapshots")):
        return m.group(1), m.group(2).replace("--", "/")
    return None


def _hub_snapshot(directory: str) -> Optional[_Snapshot]:
    """The hub cache snapshot ``directory`` is, or is inside; None if none."""
    here = os.path.realpath(directory)
    while True:
        parent = os.path.dirname(here)
        if parent == here:
            return None
        if os.path.basename(parent) == "snapshots":
            repo_dir = os.path.dirname(parent)
            found = _hub_repo_dir(repo_dir)
            if found:
                break
        here = parent
    kind, repo = found
    revision = os.path.basename(here)
    refs: Dict[str, str] = {}
    refs_dir = os.path.join(repo_dir, "refs")
    for root, _, names in os.walk(refs_dir):
        for name in names:
            try:
                with open(os.path.join(root, name), encoding="ascii") as f:
                    value = f.read().strip()
            except (OSError, ValueError):
                continue
            refs[os.path.relpath(os.path.join(root, name), refs_dir).replace(os.sep, "/")] = value
    commit: Optional[str] = revision if re.fullmatch(r"[0-9a-f]{40}", revision) else None
    if commit is None and re.fullmatch(r"[0-9a-f]{40}", refs.get(revision, "")):
        commit = refs[revision]
    names = sorted(name for name, value in refs.items() if commit and value == commit)
    return _Snapshot(repo_dir, here, kind, repo, revision, commit, names)


def _in_snapshot(snapshot: _Snapshot, directory: str, path: str) -> str:
    """The name of ``path``, a file under ``directory``, in its snapshot: the
    repo's file name, as in ``from_pretrained(..., subfolder=...)``."""
    below = os.path.relpath(os.path.realpath(directory), snapshot.snapshot_dir)
    relative = os.path.normpath(os.path.join(below, os.path.relpath(path, directory)))
    return relative.replace(os.sep, "/")


def _dir_files(directory: str) -> Tuple[List[str], List[str], List[str]]:
    """The files under ``directory``, in order, the links that lead nowhere, and
    the hub cache repo folders met (not walked). Subdirectories are walked (a hub
    repo keeps models in subfolders); names that start with "." are skipped
    (.git, .cache), and links to directories are not followed; links to files
    are (a hub snapshot is made of them)."""
    files: List[str] = []
    dangling: List[str] = []
    repos: List[str] = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        repos += [os.path.join(root, d) for d in dirs if _hub_repo_dir(os.path.join(root, d))]
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in repos]
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = os.path.join(root, name)
            if os.path.isfile(path):
                files.append(path)
            elif os.path.islink(path) and not os.path.exists(path):
                dangling.append(path)
    return files, dangling, repos


def _may_hold_pickles(head: bytes) -> bool:
    """Whether a file starting with ``head`` could hold a pickle a loader reads:
    safetensors (an 8-byte header length, then its JSON), JSON and text start
    otherwise, and are not read whole."""
    if not head or head[0] not in _PICKLE_FIRST | _ARCHIVE_FIRST:
        return False
    return not (len(head) > 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1)


def _blob_digest(name: str, data: Optional[bytes], path: str) -> str:
    """The digest of a blob's content in the form its name has: SHA-256 (LFS
    files), or git's blob SHA-1 (small files kept in git), over ``data``, or
    over the file read in chunks when ``data`` is None."""
    if len(name) == 64:
        digest = hashlib.sha256()
    else:
        digest = hashlib.sha1()
        size = len(data) if data is not None else os.path.getsize(path)
        digest.update(b"blob %d\0" % size)
    if data is not None:
        digest.update(data)
    else:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _dir_pins(directory: str, algorithm: str) -> Tuple[List[_Pin], List[str], List[_PinError]]:
    """Pins for the pickle-bearing files under ``directory``, notes for the user,
    and the problems found (every file is looked at)."""
    shown = _shown(directory)
    repo = _hub_repo_dir(os.path.realpath(directory))
    if repo is not None:
        folder = os.path.join(directory, "snapshots")
        snapshots = ", ".join(_shown(os.path.join(folder, s)) for s in sorted(os.listdir(folder)))
        problem = _PinError(
            f"{shown} is a Hugging Face cache folder of the {repo[0]} {repo[1]}, "
            "not one of its snapshots",
            f"pin one snapshot: {snapshots}" if snapshots else f"{_shown(folder)} is empty",
        )
        return [], [], [problem]
    snapshot = _hub_snapshot(directory)
    blobs = os.path.join(snapshot.repo_dir, "blobs") if snapshot else ""
    files, dangling, repos = _dir_files(directory)
    errors: List[_PinError] = [
        _PinError(
            f"{_shown(repo_dir)} is a Hugging Face cache folder, inside {shown}",
            f"pin its snapshots one by one: {_shown(os.path.join(repo_dir, 'snapshots'))}/REV",
        )
        for repo_dir in repos
    ]
    notes: List[str] = []
    pins: List[_Pin] = []
    for path in dangling:
        if snapshot:
            errors.append(
                _PinError(
                    f"{_shown(path)}: links to {_shown(os.readlink(path))}, which does not exist",
                    "the cache lost a blob: download the file again",
                )
            )
        else:
            notes.append(f"{_shown(path)} links to nothing: skipped")
    looked, held = 0, []
    for path in files:
        looked += 1
        blob = os.path.realpath(path) if snapshot else path
        if snapshot:
            name = os.path.basename(blob)
            if os.path.dirname(blob) != os.path.realpath(blobs) or not _BLOB_NAME.fullmatch(name):
                errors.append(
                    _PinError(
                        f"{_shown(path)} is not a link into {_shown(blobs)} named by a hash "
                        f"(it is {_shown(blob)})",
                        "the hub cache links every file of a snapshot to its blob; "
                        "download the file again, or pin a copy of the folder as a plain directory",
                    )
                )
                continue
        try:
            with open(blob, "rb") as f:
                head = f.read(16)
            data = _read(blob) if _may_hold_pickles(head) else None
            if snapshot:
                actual = _blob_digest(name, data, blob)
                if actual != name:
                    kind = "SHA-256" if len(name) == 64 else "git blob SHA-1"
                    errors.append(
                        _PinError(
                            f"{_shown(path)}: its blob {_shown(blob)} does not hold what its "
                            f"name says: the {kind} of its content is {actual}",
                            "the file was changed after it was downloaded: delete the blob and "
                            f"download it again (hf download {snapshot.repo}{snapshot.type_option} "
                            f"--revision {snapshot.revision} --force-download)",
                        )
                    )
                    continue
        except OSError as e:
            errors.append(
                _PinError(
                    f"could not read {_shown(path)}: {e.strerror or e}",
                    "check the file's permissions",
                    ExitStatus.ERROR,
                )
            )
            continue
        except _PinError as e:
            errors.append(e)
            continue
        found = walk(data) if data else None
        if found is None or found.form == "none" or (found.form == "zip" and not found.pickles):
            if found is not None and found.problem and found.form == "zip":
                notes.append(f"{_shown(path)}: {found.problem}: skipped")
            continue
        held.append(path)
        assert data is not None
        size = len(data)
        hexdigest = (
            hashlib.sha256(data).hexdigest()
            if algorithm == "sha256"
            else _core.hexdigest(data, algorithm)
        )
        relative = _in_snapshot(snapshot, directory, path) if snapshot else ""
        pin = _whole_file(
            path, f"{algorithm}:{hexdigest}", size, snapshot.note(relative) if snapshot else None
        )
        pins += _data_pins(pin, data, found)
    # Old joblib files' array files (.npy) hold no pickle, but joblib.load judges them.
    companions = {p.source for p in pins}
    for path in held:
        for array in _joblib_array_files(path):
            if _clean(array) not in companions:
                try:
                    pin = _file_artifact(array, algorithm)
                except _PinError as e:
                    errors.append(e)
                    continue
                pin.origin += f": an array file joblib.load reads for {_quoted(path)} (old format)"
                if snapshot:
                    pin.note = snapshot.note(_in_snapshot(snapshot, directory, array))
                pins.append(pin)
                companions.add(pin.source)
    where = (
        f"the Hugging Face {snapshot.kind} {snapshot.repo} at revision {snapshot.revision}"
        if snapshot
        else shown
    )
    if not errors:  # else nothing is pinned, and the errors say why
        checked = ", every blob checked against its name" if snapshot else ""
        counted = f"{plural(len(held), 'pickle-bearing file')} of {plural(looked, 'file')}"
        notes.append(f"{where}: {counted}{checked}")
    return pins, notes, errors


def _file_pickles(path: str, algorithm: str) -> Tuple[List[_Pin], Optional[str]]:
    """Each pickle in the file as a [[pickle]] entry, delimited as `pickleguard hash`
    does, and a warning for a zip archive (whose loaders check the whole file)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise _PinError(
            f"could not read {_shown(path)}: {e.strerror or e}", "check the path", ExitStatus.ERROR
        ) from None
    name = _shown(path)
    members, damaged = pickle_members(data)
    if damaged:
        raise _PinError(f"{name}: {damaged}", "the file is damaged; check it or download it again")
    if is_zip(data) and not members:
        raise _PinError(
            f"{name}: a zip archive with no .pkl member",
            "pin the whole file: drop --pickle",
        )
    pins: List[_Pin] = []
    for member, blob in members:
        pickles, problem = pickles_in(blob)
        source = f"{_clean(path)}:{_clean(member)}" if member else _clean(path)
        where = _shown(source)
        if problem:
            raise _PinError(
                f"{where}: {problem}",
                "pin the whole file instead: drop --pickle"
                if not pickles
                else "the file has bytes after its last complete pickle, or is damaged: "
                "pin the whole file without --pickle, or check it with `pickleguard hash`",
            )
        for p in pickles:
            offset, size = p["offset"], p["size"]
            stream = memoryview(blob)[offset : offset + size]
            hexdigest = p["sha256"] if algorithm == "sha256" else _core.hexdigest(stream, algorithm)
            found = _core.imports(stream)
            in_member = f", member {_quoted(member)}" if member else ""
            pins.append(
                _Pin(
                    kind="pickle",
                    identity=f"{algorithm}:{hexdigest}",
                    source=source,
                    label=f"{where} at offset {offset}, {plural(size, 'byte')}",
                    origin=f"from the file {_quoted(path)}{in_member}: "
                    f"the pickle at offset {offset}, {plural(size, 'byte')}",
                    size=size,
                    offset=offset,
                    imports=[g for g, _ in found],
                    risky=[g for g, bad in found if bad],
                )
            )
    warning = None
    if is_zip(data):
        warning = (
            f"{name} is a zip archive: its .pkl members are pinned as pickle streams, "
            "but torch.load checks the whole file"
        )
    return pins, warning


def _unescape(name: str) -> Optional[str]:
    """A name sha256sum escaped (\\\\, \\n, \\r), or None if it holds another escape."""
    out: List[str] = []
    chars = iter(name)
    for c in chars:
        if c != "\\":
            out.append(c)
            continue
        escaped = {"\\": "\\", "n": "\n", "r": "\r"}.get(next(chars, ""))
        if escaped is None:
            return None
        out.append(escaped)
    return "".join(out)


def _sums_line(line: str) -> Tuple[str, str]:
    """The digest (lowercase hex) and the name of one checksum line, or ValueError."""
    gnu = _GNU_LINE.fullmatch(line)
    bsd = _BSD_LINE.fullmatch(line)
    if gnu and len(gnu.group(2)) == 64 and gnu.group(4):
        escaped, digest, _, name = gnu.groups()
    elif bsd and not (gnu and len(gnu.group(2)) == 64):
        escaped, algorithm, name, digest = bsd.groups()
        if algorithm.upper() not in ("SHA256", "SHA2-256"):
            raise ValueError(f"only SHA256 lines can be pinned, not {algorithm}")
        if len(digest) != 64:
            raise ValueError(f"expected 64 hex digits after '=', got {len(digest)}")
    elif gnu and len(gnu.group(2)) != 64:
        length = len(gnu.group(2))
        guess = f" (a {_DIGEST_NAMES[length]} digest?)" if length in _DIGEST_NAMES else ""
        raise ValueError(f"expected 64 hex digits (SHA-256), got {length}{guess}")
    elif _HEX64.fullmatch(line.strip()):
        raise ValueError("a digest with no file name (pin a bare hash with --hash)")
    elif gnu:
        raise ValueError("no file name after the digest")
    else:
        raise ValueError("not a checksum line")
    if not name:
        raise ValueError("an empty file name")
    if escaped:
        unescaped = _unescape(name)
        if unescaped is None:
            raise ValueError("an unknown escape in the file name (only \\\\, \\n and \\r)")
        name = unescaped
    return digest.lower(), name


def _sums_pins(path: str) -> Tuple[List[_Pin], List[_PinError]]:
    """An [[artifact]] entry for each line of a sha256sum file ('-': standard input),
    and the problem of each malformed line."""
    label = "<stdin>" if path == "-" else _shown(path)
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as e:
        error = _PinError(
            f"could not read {label}: {e.strerror or e}",
            "give a file that `sha256sum` wrote, or '-' for standard input",
            ExitStatus.ERROR,
        )
        return [], [error]
    pins: List[_Pin] = []
    problems: List[_PinError] = []
    text = data.decode("utf-8", "surrogateescape")
    text = text[1:] if text.startswith("\ufeff") else text
    bad = 0
    for number, line in enumerate(text.split("\n"), 1):
        line = line[:-1] if line.endswith("\r") else line
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            digest, name = _sums_line(line)
        except ValueError as e:
            bad += 1
            if bad <= _MAX_BAD_LINES:
                shown = line if len(line) <= 100 else line[:100] + "..."
                problems.append(_PinError(f"{label}:{number}: {e}: {_quoted(shown)}", _SUMS_FORMAT))
            continue
        pins.append(
            _Pin(
                kind="artifact",
                identity=f"sha256:{digest}",
                source=_clean(name),
                label=f"{label} line {number}: {_shown(name)}",
                origin=f"from {_quoted(label)} line {number}, without reading the file",
                unscanned="pinned from a sums line, without the file's bytes",
            )
        )
    if bad > _MAX_BAD_LINES:
        problems.append(
            _PinError(
                f"{label}: {bad - _MAX_BAD_LINES} more malformed lines",
                "is this the output of `sha256sum`?",
            )
        )
    if not pins and not problems:
        problems.append(
            _PinError(
                f"{label}: no checksum lines",
                "give the output of `sha256sum FILE...`; blank lines and # comments are skipped",
            )
        )
    return pins, problems


def _hash_pin(value: str, kind: str, identity: Optional[str]) -> _Pin:
    """A bare hash from the command line: 64 hex digits, maybe sha256: or blake3:."""
    text = value.strip()
    prefix, colon, digest = text.partition(":")
    if colon:
        algorithm = prefix.lower()
        if algorithm not in ("sha256", "blake3"):
            raise _PinError(
                f"--hash {_quoted(value)}: unknown hash algorithm {_quoted(prefix)}",
                "write 64 hex digits, optionally prefixed sha256: or blake3:",
                ExitStatus.ERROR,
            )
        if identity is not None and identity != algorithm:
            raise _PinError(
                f"--hash {_quoted(value)} is a {algorithm} hash, and --identity says {identity}",
                "drop --identity, or the prefix",
                ExitStatus.ERROR,
            )
    else:
        algorithm, digest = identity or "sha256", text
    if not _HEX64.fullmatch(digest):
        problem = (
            f"{len(digest)} characters"
            if len(digest) != 64
            else "characters that are not hex digits"
        )
        raise _PinError(
            f"--hash {_quoted(value)}: expected 64 hex digits, got {problem}",
            "copy the digest whole, as `sha256sum` or the model's publisher prints it",
            ExitStatus.ERROR,
        )
    return _Pin(
        kind=kind,
        identity=f"{algorithm}:{digest.lower()}",
        source=None,
        label="--hash",
        origin="from a hash given on the command line, without reading a file",
        unscanned="pinned from a bare hash, without the file's bytes",
    )


# The denials a manifest entry can turn into an allowed load; the others (a
# call-site pin that does not match, a no_pickles() scope, the backstop) are
# decided in code, and an entry would change nothing.
_PINNABLE_CODES = ("not-listed", "stack-mismatch", "no-manifest", "broken-manifest")
_LOG_HINT = (
    "give an audit log that PICKLEGUARD_LOG wrote: one JSON object a line, with "
    "event, code, kind, identity, caller and source"
)


def _log_pins(path: str) -> Tuple[List[_Pin], List[str]]:
    """An entry for each distinct (kind, identity, caller) an audit log reported,
    with the caller as its stack and the logged source, and notes on the lines
    that cannot become entries. _PinError for a malformed line: nothing is pinned
    from a log that is not what pickleguard wrote."""
    shown = _shown(path)
    try:
        with open(path, "rb") as f:
            raw_lines = f.read().splitlines()
    except OSError as e:
        raise _PinError(
            f"could not read {shown}: {e.strerror or e}",
            "give the path PICKLEGUARD_LOG named",
            ExitStatus.ERROR,
        ) from None
    pins: Dict[Tuple[str, str, str], _Pin] = {}
    notes: List[str] = []
    for number, raw in enumerate(raw_lines, 1):
        if not raw.strip():
            continue
        where = f"{shown}:{number}"
        line = _log_line(raw, where)
        kind, identity, caller = line["kind"], line["identity"], line["caller"]
        if line["code"] not in _PINNABLE_CODES or not identity:
            notes.append(
                f"{where}: a {line['event']} with code {_quoted(line['code'])} is decided in "
                "code (a call-site pin, a no_pickles() scope, the backstop): no entry changes it"
            )
            continue
        if (kind, identity, caller) in pins:
            continue
        if caller:
            problem = _stack_problem([caller])
            if problem:
                raise _PinError(f"{where}: caller {_quoted(caller)}: {problem[0]}", _LOG_HINT)
        source = line["source"]
        pin = _Pin(
            kind=kind,
            identity=identity,
            source=_clean(source) if source is not None else None,
            label=f"{where}: {kind} {identity[:23]}...",
            origin=f"from the audit log {_quoted(path)} line {number}: {line['event']} "
            f"({line['code']}), loaded by {_quoted(caller or '<no Python caller>')}",
            size=line["size"],
            stack=[caller] if caller else [],
        )
        _review_logged(pin)
        pins[(kind, identity, caller)] = pin
    return list(pins.values()), notes


def _log_line(raw: bytes, where: str) -> Dict[str, Any]:
    """The fields of one audit-log line, checked; _PinError naming the line if not."""
    import json

    try:
        line = json.loads(raw)
    except ValueError as e:
        raise _PinError(f"{where}: not a JSON line: {e}", _LOG_HINT, ExitStatus.ERROR) from None
    if not isinstance(line, dict):
        raise _PinError(f"{where}: not a JSON object", _LOG_HINT, ExitStatus.ERROR)
    checked: Dict[str, Any] = {}
    for name, types in (
        ("event", str),
        ("code", str),
        ("kind", str),
        ("identity", str),
        ("caller", str),
        ("source", (str, type(None))),
        ("size", int),
    ):
        if name not in line:
            if name in ("source", "size"):  # optional
                line[name] = None if name == "source" else 0
            else:
                raise _PinError(f"{where}: no {_quoted(name)} field", _LOG_HINT, ExitStatus.ERROR)
        if not isinstance(line[name], types) or isinstance(line[name], bool):
            raise _PinError(
                f"{where}: {_quoted(name)} is {type(line[name]).__name__}, not "
                f"{'a string' if types is str else 'as expected'}",
                _LOG_HINT,
                ExitStatus.ERROR,
            )
        checked[name] = line[name]
    if checked["event"] not in ("warn", "deny"):
        raise _PinError(
            f"{where}: unknown event {_quoted(checked['event'])}, expected warn or deny",
            _LOG_HINT,
            ExitStatus.ERROR,
        )
    if checked["kind"] not in ("pickle", "artifact"):
        raise _PinError(
            f"{where}: unknown kind {_quoted(checked['kind'])}, expected pickle or artifact",
            _LOG_HINT,
            ExitStatus.ERROR,
        )
    identity = checked["identity"]
    algorithm, _, digest = identity.partition(":")
    if identity and not (algorithm in ("sha256", "blake3") and _HEX64.fullmatch(digest)):
        raise _PinError(
            f"{where}: identity {_quoted(identity)} is not sha256:<64 hex digits> "
            "or blake3:<64 hex digits>",
            _LOG_HINT,
            ExitStatus.ERROR,
        )
    checked["identity"] = identity.lower()
    return checked


def _review_logged(pin: _Pin) -> None:
    """The log holds no bytes: scan the file it names as the source, if that file
    still has the logged hash; otherwise say that nothing was reviewed."""
    if pin.source is None:
        pin.unscanned = "the audit log holds no bytes, and names no source file"
        return
    try:
        with open(pin.source, "rb") as f:
            data = f.read()
    except OSError as e:
        pin.unscanned = (
            f"the audit log holds no bytes, and its source {pin.source} cannot be read "
            f"({e.strerror or e})"
        )
        return
    algorithm, _, digest = pin.identity.partition(":")
    found = walk(data)
    if pin.kind == "artifact" and _core.hexdigest(data, algorithm) == digest:
        imports = found.imports
        if found.problem and found.form != "none":
            imports.append((f"<not read: {found.problem}>", True))
    else:
        view = memoryview(data)
        matching = [
            p
            for p in found.pickles
            if pin.kind == "pickle"
            and p.standalone
            and _core.hexdigest(view[p.offset : p.offset + p.size], algorithm) == digest
        ]
        if not matching:
            pin.unscanned = (
                f"the audit log holds no bytes, and its source {pin.source} "
                "no longer holds them (another hash)"
            )
            return
        imports = matching[0].imports
    pin.imports = [name for name, _ in imports]
    pin.risky = [name for name, risky in imports if risky]


def _pin_block(pin: _Pin, stamp: str, args: argparse.Namespace) -> str:
    lines = [f"# pinned {stamp} {pin.origin}"]
    lines += _manifest.review_comments(pin.kind, pin.imports, pin.risky)
    if pin.unscanned:
        lines.append(f"# imports not reviewed: {_shown(pin.unscanned)}")
    algorithm, _, digest = pin.identity.partition(":")
    lines.append(f"[[{pin.kind}]]")
    lines.append(f"{algorithm} = {_manifest.toml_string(digest)}")
    stack = pin.stack if pin.stack is not None else [_clean(p) for p in args.stack]
    if stack:
        lines.append(f"stack = {_manifest.toml_list(stack)}")
    notes = [_clean(n) for n in (args.note, pin.note) if n is not None]
    if notes:
        lines.append(f"note = {_manifest.toml_string('; '.join(notes))}")
    if pin.source is not None:
        lines.append(f"source = {_manifest.toml_string(pin.source)}")
    return "\n".join(lines) + "\n"


def _pin_inputs(
    args: argparse.Namespace,
) -> Tuple[List[_Pin], List[str], List[_PinError], List[str]]:
    """The entries the inputs ask for, warnings, the problems found (every input is
    looked at, so that one run reports every problem), and notes on directories."""
    errors: List[_PinError] = []
    warnings: List[str] = []
    notes: List[str] = []
    pins: List[_Pin] = []
    if not (args.files or args.sums or args.hashes or args.logs):
        errors.append(
            _PinError(
                "nothing to pin",
                "give FILE..., --sha256sum SUMS, --hash HEX or --from-log LOG "
                "(see pickleguard pin --help)",
                ExitStatus.ERROR,
            )
        )
    if args.sums and args.pickle:
        errors.append(
            _PinError(
                "--sha256sum lines hash whole files; they cannot be pinned with --pickle",
                "pin sums lines without --pickle, as [[artifact]] entries",
                ExitStatus.ERROR,
            )
        )
    if args.sums and args.identity == "blake3":
        errors.append(
            _PinError(
                "--sha256sum lines are SHA-256 digests, and --identity says blake3",
                "drop --identity blake3 (it applies to FILE and bare --hash values)",
                ExitStatus.ERROR,
            )
        )
    stack_problem = _stack_problem(args.stack)
    if stack_problem:
        errors.append(_PinError(f"--stack: {stack_problem[0]}", stack_problem[1], ExitStatus.ERROR))
    algorithm = args.identity or "sha256"
    for path in args.files:
        try:
            if os.path.isdir(path):
                if args.pickle:
                    raise _PinError(
                        f"{_shown(path)} is a directory: --pickle pins the pickles of one file",
                        "pin the directory's files whole: drop --pickle",
                        ExitStatus.ERROR,
                    )
                found_pins, found_notes, problems = _dir_pins(path, algorithm)
                pins += found_pins
                notes += found_notes
                errors += problems
            elif args.pickle:
                found, warning = _file_pickles(path, algorithm)
                pins += found
                if warning:
                    warnings.append(warning)
            else:
                pins += _file_pins(path, algorithm)
                pins += _joblib_array_pins(path, algorithm)
        except _PinError as e:
            errors.append(e)
    for path in args.sums:
        found, problems = _sums_pins(path)
        pins += found
        errors += problems
    for value in args.hashes:
        try:
            pins.append(_hash_pin(value, "pickle" if args.pickle else "artifact", args.identity))
        except _PinError as e:
            errors.append(e)
    for path in args.logs:
        try:
            found, notes = _log_pins(path)
            pins += found
            warnings += notes
        except _PinError as e:
            errors.append(e)
    if args.source is not None:
        for pin in pins:
            pin.source = _clean(args.source)
    return pins, warnings, errors, notes


_Have = Set[Tuple[str, str, Optional[Tuple[str, ...]]]]


def _pinned_already(manifest: Path) -> Tuple[Optional[str], _Have]:
    """The manifest's text (None if it does not exist) and the (table, identity, stack)
    of each of its entries; _PinError if it cannot be read or does not parse."""
    shown = _shown(str(manifest))
    try:
        raw = manifest.read_bytes()
    except FileNotFoundError:
        return None, set()
    except OSError as e:
        raise _PinError(
            f"could not read {shown}: {e.strerror or e}",
            "give the path of a manifest file; it is created if it does not exist",
            ExitStatus.ERROR,
        ) from None
    try:
        _core.check_manifest(str(manifest))
        entries, _ = _core.manifest_summary(str(manifest))
    except ManifestError as e:
        message, hint = message_and_hint(e)
        raise _PinError(f"cannot add to {shown}: {message}", hint) from None
    have: _Have = set()
    for table, identities, stack in entries:
        for identity in identities:
            have.add((table, identity, tuple(stack) if stack else None))
    return raw.decode("utf-8"), have


def run(args: argparse.Namespace) -> ExitStatus:
    manifest = Path(args.manifest)
    existing: Optional[str] = None
    have: _Have = set()
    manifest_errors: List[_PinError] = []
    try:
        existing, have = _pinned_already(manifest)
    except _PinError as e:
        manifest_errors.append(e)
    pins, warnings, errors, notes = _pin_inputs(args)
    errors = manifest_errors + errors
    if not args.json:
        for line in notes:
            print(f"note: {line}", file=sys.stderr)
    if errors:  # all or nothing: one bad input, and nothing is written
        return _refuse(args, errors)
    added, skipped = _new_pins(pins, have, args)
    risky = _risky_refusals(added, args)
    if risky:
        return _refuse(args, risky)
    status = ExitStatus.OK
    problem = None
    if added:  # what is new is decided again under the lock, on what is there then
        try:
            existing, added, skipped = _add_locked(manifest, pins, args)
        except _PinError as e:
            problem = e
            status = problem.status
            if not args.json:
                print_error(problem.message, problem.hint)
    written = bool(added) and problem is None
    if args.json:
        summary = _summary(args, status, added if written else [], skipped, warnings)
        summary["created"] = written and existing is None
        summary["written"] = written
        summary["notes"] = notes
        if problem is not None:
            summary["errors"].append({"error": problem.message, "hint": problem.hint})
        print_json(summary)
    elif written or not added:
        _print_pinned(args, added, skipped, warnings, created=written and existing is None)
    return status


def _risky_refusals(added: List[_Pin], args: argparse.Namespace) -> List[_PinError]:
    """A refusal for each new entry whose pickles import RISKY globals, unless
    --allow-risky says the reviewer has looked; the same file's two entries are
    named once."""
    if args.allow_risky:
        return []
    refusals: Dict[Tuple[str, Optional[str]], _PinError] = {}
    for pin in added:
        if pin.risky and (pin.identity, pin.source) not in refusals:
            refusals[(pin.identity, pin.source)] = _PinError(
                f"{pin.label}: imports RISKY globals: {', '.join(map(_shown, pin.risky))}",
                "loading it can run code: review it with `pickleguard inspect`; "
                "if you trust it, pin it with --allow-risky",
            )
    return list(refusals.values())


def _summary(
    args: argparse.Namespace,
    status: ExitStatus,
    added: List[_Pin],
    skipped: List[Tuple[_Pin, str]],
    warnings: List[str],
    errors: Sequence[_PinError] = (),
) -> Dict[str, Any]:
    """The --json document; ``added`` holds what was written."""
    return {
        "status": int(status),
        "manifest": _shown(args.manifest),
        "created": False,
        "written": False,
        "added": [_described(pin) for pin in added],
        "skipped": [dict(_described(pin), reason=why) for pin, why in skipped],
        "risky": [
            {"identity": pin.identity, "input": pin.label, "imports": pin.risky}
            for pin in added
            if pin.risky
        ],
        "warnings": warnings,
        "errors": [{"error": problem.message, "hint": problem.hint} for problem in errors],
    }


def _described(pin: _Pin) -> Dict[str, Any]:
    return {
        "kind": pin.kind,
        "identity": pin.identity,
        "source": pin.source,
        "input": pin.label,
        "size": pin.size,
        "offset": pin.offset,
        "imports": pin.imports,
        "risky": pin.risky,
        "scanned": pin.unscanned is None,
        "note": pin.note,
    }


def _refuse(args: argparse.Namespace, errors: List[_PinError]) -> ExitStatus:
    """Report every problem of the inputs; nothing is written."""
    status = max(problem.status for problem in errors)
    if args.json:
        print_json(_summary(args, status, [], [], [], errors))
        return status
    for problem in errors:
        print_error(problem.message, problem.hint)
    shown = _shown(args.manifest)
    state = "is unchanged" if Path(args.manifest).exists() else "was not created"
    print(f"nothing was pinned: {shown} {state}", file=sys.stderr)
    return status


def _new_pins(
    pins: List[_Pin], have: _Have, args: argparse.Namespace
) -> Tuple[List[_Pin], List[Tuple[_Pin, str]]]:
    """The pins to add, and those skipped with why: already in the manifest, or the
    same as another input's."""
    shown = _shown(args.manifest)
    given = tuple(_clean(p) for p in args.stack) or None
    seen: Dict[Tuple[str, str, Optional[Tuple[str, ...]]], _Pin] = {}
    added: List[_Pin] = []
    skipped: List[Tuple[_Pin, str]] = []
    for pin in pins:
        wanted = given if pin.stack is None else (tuple(pin.stack) or None)
        key = (pin.kind, pin.identity)
        if key + (wanted,) in have:
            skipped.append((pin, f"already in {shown}"))
        elif key + (None,) in have:
            skipped.append((pin, f"already allowed for every caller by {shown}"))
        elif key + (wanted,) in seen:
            skipped.append((pin, f"the same as {seen[key + (wanted,)].label}"))
        else:
            seen[key + (wanted,)] = pin
            added.append(pin)
    return added, skipped


def _add_locked(
    manifest: Path, pins: List[_Pin], args: argparse.Namespace
) -> Tuple[Optional[str], List[_Pin], List[Tuple[_Pin, str]]]:
    """Add the pins that are new, with the manifest locked: it is read again under
    the lock, so that what another writer added since it was first read is kept
    and not added twice. The text it had (None: it did not exist) and the pins
    added and skipped; _PinError if it could not be written."""
    shown = _shown(args.manifest)
    try:
        with _writes.locked(manifest) as target:
            existing, have = _pinned_already(target)
            added, skipped = _new_pins(pins, have, args)
            # An entry removed since the first read is new again: reviewed again.
            refusals = _risky_refusals(added, args)
            if refusals:
                raise refusals[0]
            if added:
                _write(target, existing, added, args)
            return existing, added, skipped
    except _writes.LockTimeout as e:
        raise _PinError(
            f"could not lock {shown}: {e}",
            "another `pickleguard pin` or `record` is writing it, or is stuck; "
            f"try again once it is done (the lock file is {_shown(str(e.lock))})",
            ExitStatus.ERROR,
        ) from None
    except OSError as e:
        raise _PinError(
            f"could not write {shown}: {e.strerror or e}",
            "check that its directory exists and is writable",
            ExitStatus.ERROR,
        ) from None
    except ManifestError as e:  # not expected: every input was checked
        raise _PinError(
            "the new manifest would not parse: " + message_and_hint(e)[0],
            f"{shown} is unchanged; please report this",
        ) from None


def _write(
    target: Path, existing: Optional[str], added: List[_Pin], args: argparse.Namespace
) -> None:
    """Append the new entries to the manifest (create it if ``existing`` is None).
    ``target`` is the real path, and its lock is held."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if existing is None:
        text = (
            "# Pickles and files this program may load. Written by `pickleguard pin`; "
            "review it.\nversion = 1\n"
        )
    else:
        text = existing if existing.endswith("\n") else existing + "\n"
    text += "\n" + "\n".join(_pin_block(pin, stamp, args) for pin in added)
    _writes.replace(target, text)


def _print_pinned(
    args: argparse.Namespace,
    added: List[_Pin],
    skipped: List[Tuple[_Pin, str]],
    warnings: List[str],
    created: bool,
) -> None:
    """What was pinned and skipped, for humans; ``added`` was written."""
    shown = _shown(args.manifest)
    for pin in added:
        print(f"pinned [[{pin.kind}]] {pin.identity} ({pin.label})")
    for pin, why in skipped:
        print(f"skipped [[{pin.kind}]] {pin.identity} ({pin.label}): {why}")
    if added:
        verb = "created" if created else "wrote"
        new = f"{len(added)} new {'entry' if len(added) == 1 else 'entries'}"
        present = f", {len(skipped)} skipped" if skipped else ""
        print(f"{verb} {shown}: {new}{present}")
    else:
        print(f"{shown} is unchanged: nothing new to pin")
    for pin in added:
        if pin.risky:
            print(
                f"warning: {pin.identity[:23]}... ({pin.label}) imports {', '.join(pin.risky)}",
                file=sys.stderr,
            )
    if any(pin.risky for pin in added):
        print("hint: review the entries marked RISKY before you trust them", file=sys.stderr)
    unscanned = [pin for pin in added if pin.unscanned]
    if unscanned:
        print(
            f"note: {plural(len(unscanned), 'entry')} pinned without the files' bytes: "
            "what their pickles import was not reviewed (pin the files themselves to scan them)",
            file=sys.stderr,
        )
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
        if " is a zip archive: " in warning:
            print("hint: for torch.load, pin the whole file: drop --pickle", file=sys.stderr)
