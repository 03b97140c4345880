"""`pickleguard pin MANIFEST DIR`: the pickle-bearing files of a directory, and of a
Hugging Face hub cache snapshot, whose blobs are checked against their names and
whose repo and revision go into each entry's note."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
from pathlib import Path
from typing import Dict

import pytest

from conftest import run_cli as cli
from pickleguard import _core

REV = "0123456789abcdef0123456789abcdef01234567"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def pinned(manifest: Path) -> Dict[str, str]:
    """identity -> note of each [[artifact]] entry, as the manifest parser reads them."""
    assert _core.check_manifest(str(manifest)) >= 1
    text = manifest.read_text()
    found = {}
    for block in text.split("[[artifact]]")[1:]:
        lines = dict(
            line.split(" = ", 1) for line in block.splitlines() if " = " in line and "#" not in line
        )
        found[json.loads(lines["sha256"])] = json.loads(lines.get("note", '""'))
    return found


def safetensors_bytes() -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    return struct.pack("<Q", len(header)) + header + struct.pack("<2f", 1.0, 2.0)


def model_files() -> Dict[str, bytes]:
    """What a model repo holds: pickles (one at top level, one in a subfolder), and
    files that hold none (JSON, safetensors, text, raw bytes)."""
    return {
        "weights.pkl": pickle.dumps({"layer": [0.5] * 100}, protocol=4),
        "sub/extra.pkl": pickle.dumps(("a", 1), protocol=0),
        "config.json": json.dumps({"model_type": "toy", "hidden": 16}).encode(),
        "model.safetensors": safetensors_bytes(),
        "README.md": b"# toy model\n",
        "raw.bin": bytes(range(256)) * 8,
    }


def hub_cache(root: Path, files: Dict[str, bytes], repo: str = "acme/toy") -> Path:
    """A hub cache laid out as huggingface_hub lays it out, built here: each file of
    the snapshot a relative link to its blob, named by the SHA-256 of its content
    (LFS files: here .pkl, .bin, .safetensors) or by its git blob SHA-1 (the rest),
    and refs/main naming the revision. Returns the snapshot folder."""
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    blobs = repo_dir / "blobs"
    snapshot = repo_dir / "snapshots" / REV
    blobs.mkdir(parents=True)
    for name, data in files.items():
        lfs = name.endswith((".pkl", ".bin", ".safetensors"))
        blob = blobs / (sha256(data) if lfs else git_sha1(data))
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(REV)
    return snapshot


def test_a_directory_pins_its_pickle_bearing_files_and_no_others(tmp_path):
    files = model_files()
    files[".hidden/skipped.pkl"] = pickle.dumps("not walked")
    for name, data in files.items():
        (tmp_path / "model" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "model" / name).write_bytes(data)
    proc = cli("pin", "m.toml", "model", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = pinned(tmp_path / "m.toml")
    assert set(got) == {sha256(files["weights.pkl"]), sha256(files["sub/extra.pkl"])}
    assert set(got.values()) == {""}  # a plain directory adds no note
    text = (tmp_path / "m.toml").read_text()
    assert 'source = "model/sub/extra.pkl"' in text
    # A file that is one pickle also gets its [[pickle]] twin, as `pin FILE` does.
    assert text.count("[[pickle]]") == 2
    assert "model: 2 pickle-bearing files of 6 files" in proc.stderr


def test_a_directory_is_pinned_as_its_files_are_one_by_one(tmp_path):
    """The same entries as `pin FILE...` of the pickle-bearing files."""
    files = model_files()
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    assert cli("pin", "dir.toml", ".", cwd=tmp_path).returncode == 0
    assert cli("pin", "files.toml", "weights.pkl", "sub/extra.pkl", cwd=tmp_path).returncode == 0
    assert (
        _core.manifest_summary(str(tmp_path / "dir.toml"))[0]
        == _core.manifest_summary(str(tmp_path / "files.toml"))[0]
    )


def test_a_hub_snapshot_checks_every_blob_and_notes_repo_and_revision(tmp_path):
    files = model_files()
    snapshot = hub_cache(tmp_path / "hub", files)
    proc = cli("pin", "m.toml", str(snapshot), "--note", "reviewed", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = pinned(tmp_path / "m.toml")
    assert got == {
        sha256(files["weights.pkl"]): f"reviewed; Hugging Face model acme/toy, revision {REV} "
        "(refs/main), file weights.pkl, blob checked against its name",
        sha256(files["sub/extra.pkl"]): f"reviewed; Hugging Face model acme/toy, revision {REV} "
        "(refs/main), file sub/extra.pkl, blob checked against its name",
    }
    assert "every blob checked against its name" in proc.stderr


@pytest.mark.parametrize("victim", ["weights.pkl", "config.json", "model.safetensors"])
def test_a_blob_that_does_not_match_its_name_fails_naming_it_and_writes_nothing(tmp_path, victim):
    """LFS blobs (SHA-256 names) and git blobs (SHA-1 names) alike, pickle-bearing
    or not: a changed config.json changes what from_pretrained builds."""
    files = model_files()
    snapshot = hub_cache(tmp_path / "hub", files)
    (tmp_path / "m.toml").write_text("version = 1\n")
    blob = (snapshot / victim).resolve()
    blob.write_bytes(blob.read_bytes()[:-1] + b"!")
    proc = cli("pin", "m.toml", str(snapshot), cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert f"{snapshot / victim}: its blob {blob} does not hold what its name says" in proc.stderr
    assert f"hf download acme/toy --revision {REV} --force-download" in proc.stderr
    assert "nothing was pinned: m.toml is unchanged" in proc.stderr
    assert (tmp_path / "m.toml").read_text() == "version = 1\n"


def test_a_snapshot_file_that_is_not_a_link_to_a_blob_fails(tmp_path):
    snapshot = hub_cache(tmp_path / "hub", model_files())
    (snapshot / "weights.pkl").unlink()
    (snapshot / "weights.pkl").write_bytes(pickle.dumps("put here by hand"))
    proc = cli("pin", "m.toml", str(snapshot), cwd=tmp_path)
    assert proc.returncode == 1
    assert "weights.pkl is not a link into" in proc.stderr
    assert not (tmp_path / "m.toml").exists()


def test_a_snapshot_link_to_a_missing_blob_fails(tmp_path):
    snapshot = hub_cache(tmp_path / "hub", model_files())
    (snapshot / "weights.pkl").resolve().unlink()
    proc = cli("pin", "m.toml", str(snapshot), cwd=tmp_path)
    assert proc.returncode == 1
    assert "which does not exist" in proc.stderr and "weights.pkl" in proc.stderr


def test_a_subfolder_of_a_snapshot_is_pinned_with_the_snapshot_note(tmp_path):
    files = model_files()
    snapshot = hub_cache(tmp_path / "hub", files)
    assert cli("pin", "m.toml", str(snapshot / "sub"), cwd=tmp_path).returncode == 0
    got = pinned(tmp_path / "m.toml")
    assert list(got) == [sha256(files["sub/extra.pkl"])]
    assert "file sub/extra.pkl" in got[sha256(files["sub/extra.pkl"])]


def test_a_cache_repo_folder_or_the_cache_itself_is_refused_with_the_snapshots_named(tmp_path):
    snapshot = hub_cache(tmp_path / "hub", model_files())
    repo_dir = snapshot.parent.parent
    proc = cli("pin", "m.toml", str(repo_dir), cwd=tmp_path)
    assert proc.returncode == 1
    assert "not one of its snapshots" in proc.stderr and REV in proc.stderr
    proc = cli("pin", "m.toml", str(tmp_path / "hub"), cwd=tmp_path)
    assert proc.returncode == 1
    assert "is a Hugging Face cache folder, inside" in proc.stderr
    assert not (tmp_path / "m.toml").exists()


def test_a_risky_pickle_in_a_directory_is_refused_like_a_file(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, ("true",))

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "evil.pkl").write_bytes(pickle.dumps(Boom()))
    (tmp_path / "d" / "ok.pkl").write_bytes(pickle.dumps([1]))
    proc = cli("pin", "m.toml", "d", cwd=tmp_path)
    assert proc.returncode == 1
    assert "evil.pkl" in proc.stderr and "RISKY" in proc.stderr
    assert not (tmp_path / "m.toml").exists()


def test_pickle_option_with_a_directory_is_a_usage_error(tmp_path):
    (tmp_path / "d").mkdir()
    proc = cli("pin", "m.toml", "d", "--pickle", cwd=tmp_path)
    assert proc.returncode == 2
    assert "is a directory" in proc.stderr


def test_old_joblib_array_files_in_a_directory_are_pinned_with_their_pickle(tmp_path):
    """The .npy array files of joblib 0.9's format hold no pickle, but joblib.load
    judges each: pinned alongside the pickle that names them."""
    wrapper = pickle.PROTO + b"\x02" + b"cjoblib.numpy_pickle\nNDArrayWrapper\n)\x81."
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "old.pkl").write_bytes(wrapper)
    (tmp_path / "d" / "old.pkl_01.npy").write_bytes(b"\x93NUMPY array bytes")
    proc = cli("pin", "m.toml", "d", "--allow-risky", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = pinned(tmp_path / "m.toml")
    assert sha256(b"\x93NUMPY array bytes") in got
    assert sha256(wrapper) in got


def test_a_snapshot_reached_through_a_link_is_still_a_snapshot(tmp_path):
    """~/.cache is often a link: the snapshot is found from the real path, and
    the files are named as the repo names them."""
    files = model_files()
    snapshot = hub_cache(tmp_path / "hub", files)
    (tmp_path / "model").symlink_to(snapshot)
    proc = cli("pin", "m.toml", "model", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    note = pinned(tmp_path / "m.toml")[sha256(files["sub/extra.pkl"])]
    assert note.startswith("Hugging Face model acme/toy") and "file sub/extra.pkl," in note
    assert 'source = "model/sub/extra.pkl"' in (tmp_path / "m.toml").read_text()
