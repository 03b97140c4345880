"""The manifest index (`pickleguard index`): enforcement reads it instead of the
TOML only when it was built from exactly the manifest's bytes and is owned and
writable like the manifest; otherwise the TOML is read, so an edit is never
missed and an index nobody could have written with the manifest is never used."""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import assert_fires, fresh_python, hostile, run_cli
from pickleguard import _core

pytestmark = pytest.mark.usefixtures("wheel_installed")

MAGIC_LENGTH = 16  # the index starts with a 16-byte tag, then the manifest's SHA-256

LOAD = """
import json, pickle, pickleguard
outcomes = {}
for name in NAMES:
    try:
        pickle.loads(open(name, "rb").read())
        outcomes[name] = "loaded"
    except pickleguard.NoPickleError as e:
        outcomes[name] = e.code
print(json.dumps(outcomes))
"""


def loads_under(tmp_path: Path, manifest: Path, *names: str) -> dict:
    import json

    result = fresh_python(
        tmp_path, f"NAMES = {list(names)!r}\n" + LOAD, PICKLEGUARD_MANIFEST=str(manifest)
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def pin_text(*payloads: bytes) -> str:
    blocks = [f'[[pickle]]\nsha256 = "{hashlib.sha256(p).hexdigest()}"\n' for p in payloads]
    return "version = 1\n\n" + "\n".join(blocks)


def index_of(manifest: Path) -> Path:
    return manifest.with_name(f".{manifest.name}.index")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICKLEGUARD_")}
    return run_cli(*args, cwd=cwd, env=env)


def status(manifest: Path) -> str:
    return _core.manifest_index_status(str(manifest))


@pytest.fixture
def payloads(tmp_path):
    """A benign pickle, and a hostile one shown to fire without the guard."""
    benign = pickle.dumps({"weights": [1, 2, 3]})
    sentinel = tmp_path / "sentinel"
    evil = hostile(sentinel)
    assert_fires(evil, sentinel)
    (tmp_path / "benign.pkl").write_bytes(benign)
    (tmp_path / "evil.pkl").write_bytes(evil)
    return benign, evil, sentinel


def forged_index(tmp_path: Path, manifest: Path, *allowed: bytes) -> bytes:
    """An index that decodes to a manifest allowing `allowed`, claiming to be built
    from `manifest`'s bytes: what someone able to write the index could plant."""
    other = tmp_path / "other.toml"
    other.write_text(pin_text(*allowed))
    body, _ = _core.manifest_index(str(other))
    claimed = hashlib.sha256(manifest.read_bytes()).digest()
    return body[:MAGIC_LENGTH] + claimed + body[MAGIC_LENGTH + 32 :]


def test_index_writes_an_index_that_check_calls_current(tmp_path, payloads):
    benign, _, _ = payloads
    manifest = tmp_path / "m.toml"
    manifest.write_text(pin_text(benign))
    manifest.chmod(0o640)
    assert status(manifest) == "absent"
    result = cli("index", "m.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"ok: wrote {index_of(manifest)} (1 rule)" in result.stdout
    assert status(manifest) == "current"
    assert index_of(manifest).stat().st_mode & 0o777 == 0o640
    checked = cli("check", "m.toml", cwd=tmp_path)
    assert checked.returncode == 0 and "index current" in checked.stdout
    assert loads_under(tmp_path, manifest, "benign.pkl") == {"benign.pkl": "loaded"}
    removed = cli("index", "--remove", "m.toml", cwd=tmp_path)
    assert removed.returncode == 0 and not index_of(manifest).exists()


def test_enforcement_reads_a_trusted_index_and_ignores_a_writable_one(tmp_path, payloads):
    benign, evil, sentinel = payloads
    manifest = tmp_path / "m.toml"
    manifest.write_text(pin_text(benign))
    manifest.chmod(0o644)
    index = index_of(manifest)
    index.write_bytes(forged_index(tmp_path, manifest, evil))
    # Owned and writable like the manifest: it stands for the manifest (whoever
    # could write it could as well rewrite the manifest). This shows it is read.
    index.chmod(0o644)
    assert status(manifest) == "current"
    assert loads_under(tmp_path, manifest, "evil.pkl", "benign.pkl") == {
        "evil.pkl": "loaded",
        "benign.pkl": "not-listed",
    }
    assert sentinel.exists()
    sentinel.rmdir()
    # Writable by the group or everyone, when the manifest is not: never used.
    for mode in (0o664, 0o646):
        index.chmod(mode)
        assert status(manifest) == "untrusted"
        assert loads_under(tmp_path, manifest, "evil.pkl", "benign.pkl") == {
            "evil.pkl": "not-listed",
            "benign.pkl": "loaded",
        }
        assert not sentinel.exists()
    checked = cli("check", "m.toml", cwd=tmp_path)
    assert "its index is untrusted" in checked.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file another owner")
def test_an_index_of_another_owner_is_never_used(tmp_path, payloads):
    benign, evil, sentinel = payloads
    manifest = tmp_path / "m.toml"
    manifest.write_text(pin_text(benign))
    index = index_of(manifest)
    index.write_bytes(forged_index(tmp_path, manifest, evil))
    index.chmod(manifest.stat().st_mode & 0o777)
    os.chown(index, 65534, -1)
    assert status(manifest) == "untrusted"
    assert loads_under(tmp_path, manifest, "evil.pkl")["evil.pkl"] == "not-listed"
    assert not sentinel.exists()


def test_a_stale_index_is_ignored_and_the_edit_is_enforced(tmp_path, payloads):
    benign, _, _ = payloads
    other = pickle.dumps("another")
    (tmp_path / "other.pkl").write_bytes(other)
    manifest = tmp_path / "m.toml"
    manifest.write_text(pin_text(benign))
    assert cli("index", "m.toml", cwd=tmp_path).returncode == 0
    manifest.write_text(pin_text(other))  # edited by hand, not re-indexed
    assert status(manifest) == "stale"
    assert loads_under(tmp_path, manifest, "benign.pkl", "other.pkl") == {
        "benign.pkl": "not-listed",
        "other.pkl": "loaded",
    }
    checked = cli("check", "m.toml", cwd=tmp_path)
    assert checked.returncode == 0 and "its index is stale" in checked.stderr


@pytest.mark.parametrize("damage", ["cut", "flipped", "garbage", "empty"])
def test_a_damaged_index_is_ignored(tmp_path, payloads, damage):
    benign, evil, sentinel = payloads
    manifest = tmp_path / "m.toml"
    manifest.write_text(pin_text(benign))
    index = index_of(manifest)
    good = forged_index(tmp_path, manifest, evil)
    damaged = {
        "cut": good[:-3],
        "flipped": good[:-1] + bytes([good[-1] ^ 1]),
        "garbage": os.urandom(len(good)),
        "empty": b"",
    }[damage]
    index.write_bytes(damaged)
    assert status(manifest) == "damaged"
    assert loads_under(tmp_path, manifest, "evil.pkl", "benign.pkl") == {
        "evil.pkl": "not-listed",
        "benign.pkl": "loaded",
    }
    assert not sentinel.exists()


def test_pin_keeps_an_existing_index_current_and_makes_none(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"weights a")
    (tmp_path / "b.bin").write_bytes(b"weights b")
    assert cli("pin", "m.toml", "a.bin", cwd=tmp_path).returncode == 0
    manifest = tmp_path / "m.toml"
    assert status(manifest) == "absent"  # pin makes no index of its own
    assert cli("index", "m.toml", cwd=tmp_path).returncode == 0
    assert cli("pin", "m.toml", "b.bin", cwd=tmp_path).returncode == 0
    assert status(manifest) == "current"
    body, _ = _core.manifest_index(str(manifest))
    assert index_of(manifest).read_bytes() == body


def test_an_invalid_manifest_gets_no_index(tmp_path):
    manifest = tmp_path / "m.toml"
    manifest.write_text('version = 1\n[[pickle]]\nsha256 = "abc"\n')
    result = cli("index", "m.toml", cwd=tmp_path)
    assert result.returncode == 1
    assert "m.toml:3" in result.stderr and "hint:" in result.stderr
    assert not index_of(manifest).exists()
    missing = cli("index", "nothing.toml", cwd=tmp_path)
    assert missing.returncode == 2 and "nothing.toml" in missing.stderr


def test_a_symlinked_manifest_is_indexed_beside_its_target(tmp_path, payloads):
    benign, _, _ = payloads
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "m.toml"
    target.write_text(pin_text(benign))
    link = tmp_path / "link.toml"
    link.symlink_to(target)
    assert cli("index", "link.toml", cwd=tmp_path).returncode == 0
    assert index_of(target).exists() and not index_of(link).exists()
    assert status(link) == "current"
    assert loads_under(tmp_path, link, "benign.pkl") == {"benign.pkl": "loaded"}


def test_index_and_pins_at_once_leave_a_current_index_of_every_entry(tmp_path):
    # Each writer holds the manifest's lock while it reads and replaces: whatever
    # the order, the last index written is of the last manifest written.
    manifest = tmp_path / "m.toml"
    manifest.write_text("version = 1\n")
    assert cli("index", "m.toml", cwd=tmp_path).returncode == 0
    blobs = [f"weights {i}\n".encode() * (i + 1) for i in range(6)]
    commands = []
    for i, blob in enumerate(blobs):
        (tmp_path / f"w{i}.bin").write_bytes(blob)
        commands += [["pin", "m.toml", f"w{i}.bin"], ["index", "m.toml"]]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pickleguard", *command],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in commands
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert status(manifest) == "current"
    body, rules = _core.manifest_index(str(manifest))
    assert rules == len(blobs)
    assert index_of(manifest).read_bytes() == body
