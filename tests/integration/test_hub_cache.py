"""`pickleguard pin MANIFEST SNAPSHOT` of a Hugging Face hub cache, then
``from_pretrained`` of that snapshot under enforcement.

The cache is laid out here as huggingface_hub lays it out (nothing is downloaded,
HF_HUB_OFFLINE=1): models--acme--tiny-bert/snapshots/REV/ holds links to
../../blobs/<hash>, the .bin and .safetensors blobs named by the SHA-256 of their
content (LFS files), config.json and the index by their git blob SHA-1.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
import transformers  # noqa: F401  (installed: these tests never skip)

from ._harness import run
from .test_transformers import TINY_BERT, offline_env, write

PY = sys.executable
REV = "4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e"

MAKE = (
    TINY_BERT
    + """
from safetensors.torch import save_file
config.save_pretrained("repo")
# Sharded .bin weights with pytorch_model.bin.index.json, and the same weights
# as safetensors, as a repo that publishes both.
save_torch_state_dict(state, "repo", safe_serialization=False, max_shard_size="8KB")
save_file({k: v.contiguous() for k, v in state.items()}, "repo/model.safetensors")
"""
)

# use_safetensors=False: the .bin shards, through torch.load, as a model without
# safetensors loads (transformers maps them itself: mmap=True after a meta load).
APP = """
import sys
from transformers import BertModel

model = BertModel.from_pretrained(sys.argv[1], use_safetensors=False)
total = sum(float(p.double().sum()) for p in model.parameters())
print(len(list(model.parameters())), round(total, 6))
"""


def lfs(name: str) -> bool:
    return name.endswith((".bin", ".safetensors"))


def blob_name(name: str, data: bytes) -> str:
    if lfs(name):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def runs(project: Path, *args: str):
    return run([PY, *args], project, env=offline_env())


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> Path:
    project = tmp_path_factory.mktemp("hub")
    write(project / "make.py", MAKE)
    write(project / "app.py", APP)
    made = runs(project, "make.py")
    assert made.returncode == 0, made.stderr
    repo_dir = project / "cache" / "models--acme--tiny-bert"
    blobs = repo_dir / "blobs"
    snap = repo_dir / "snapshots" / REV
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for file in sorted((project / "repo").iterdir()):
        data = file.read_bytes()
        blob = blobs / blob_name(file.name, data)
        blob.write_bytes(data)
        (snap / file.name).symlink_to(os.path.relpath(blob, snap))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(REV)
    names = sorted(p.name for p in snap.iterdir())
    assert "config.json" in names and "model.safetensors" in names
    assert "pytorch_model.bin.index.json" in names
    assert len([n for n in names if n.startswith("pytorch_model-")]) >= 2
    return snap


def shards(snapshot: Path):
    return sorted(snapshot.glob("pytorch_model-*.bin"))


def pin(snapshot: Path, manifest: str):
    return runs(snapshot.parents[3], "-m", "pickleguard", "pin", manifest, str(snapshot))


def enforce(snapshot: Path, manifest: str):
    project = snapshot.parents[3]
    return runs(
        project, "-m", "pickleguard", "run", "--manifest", manifest, "--",
        PY, "app.py", str(snapshot),
    )  # fmt: skip


def test_pin_of_a_snapshot_pins_the_shards_and_from_pretrained_loads_under_it(snapshot):
    project = snapshot.parents[3]
    plain = runs(project, "app.py", str(snapshot))
    assert plain.returncode == 0, plain.stderr
    pinned = pin(snapshot, "hub.toml")
    assert pinned.returncode == 0, pinned.stderr
    text = (project / "hub.toml").read_text()
    # Every shard, and nothing else: not config.json, the index or the safetensors.
    for shard in shards(snapshot):
        assert f'sha256 = "{hashlib.sha256(shard.read_bytes()).hexdigest()}"' in text
        assert (
            f'note = "Hugging Face model acme/tiny-bert, revision {REV} (refs/main), '
            f'file {shard.name}, blob checked against its name"'
        ) in text
    assert text.count("[[artifact]]") == len(shards(snapshot))
    assert "[[pickle]]" not in text
    for name in ("config.json", "model.safetensors", "index.json"):
        assert name not in text
    enforced = enforce(snapshot, "hub.toml")
    assert enforced.returncode == 0, enforced.stderr
    assert enforced.stdout == plain.stdout


def test_without_the_pins_the_enforced_load_is_refused(snapshot):
    """The enforced run above passes because of the pins: without them it fails."""
    project = snapshot.parents[3]
    (project / "empty.toml").write_text("version = 1\n")
    refused = enforce(snapshot, "empty.toml")
    assert refused.returncode != 0
    assert "NoPickleError" in refused.stderr and shards(snapshot)[0].name in refused.stderr


def test_a_tampered_shard_blob_fails_pin_naming_it_and_the_manifest_is_unchanged(snapshot):
    project = snapshot.parents[3]
    assert pin(snapshot, "kept.toml").returncode == 0
    before = (project / "kept.toml").read_bytes()
    target = shards(snapshot)[1]
    blob = target.resolve()
    original = blob.read_bytes()
    # One byte of tensor data, near the end of the zip's data records.
    changed = bytearray(original)
    changed[len(changed) // 2] ^= 0x01
    blob.write_bytes(bytes(changed))
    try:
        again = pin(snapshot, "kept.toml")
        assert again.returncode == 1, again.stderr
        assert f"{target}: its blob {blob} does not hold what its name says" in again.stderr
        assert "nothing was pinned: kept.toml is unchanged" in again.stderr
        assert (project / "kept.toml").read_bytes() == before
        # And the load of the tampered shard under the earlier pins is refused.
        refused = enforce(snapshot, "kept.toml")
        assert refused.returncode != 0
        assert "NoPickleError" in refused.stderr and target.name in refused.stderr
    finally:
        blob.write_bytes(original)
