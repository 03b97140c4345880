"""Hugging Face ``from_pretrained`` of ``pytorch_model.bin`` weights under a manifest.

transformers loads each ``.bin`` file twice through ``torch.load``: first with
``map_location="meta"`` and no mmap, then with ``mmap=True, weights_only=True``.
Both go through the verified copy of the file. The model here is a tiny BERT built
locally; nothing is downloaded (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import hashlib
import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers  # noqa: F401  (installed: these tests never skip)

from ._harness import run

PY = sys.executable

# A tiny BERT, built locally: nothing is downloaded.
TINY_BERT = """
import torch
from huggingface_hub import save_torch_state_dict
from transformers import BertConfig, BertModel

torch.manual_seed(0)
config = BertConfig(
    vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
    intermediate_size=24, max_position_embeddings=32,
)
model = BertModel(config)
state = model.state_dict()
"""

MAKE = (
    TINY_BERT
    + """
# One file: transformers would write safetensors, so the state dict is saved as
# torch.save writes it.
config.save_pretrained("single")
torch.save(state, "single/pytorch_model.bin")
# Sharded, with pytorch_model.bin.index.json.
config.save_pretrained("sharded")
save_torch_state_dict(state, "sharded", safe_serialization=False, max_shard_size="8KB")
"""
)

APP = """
import sys
from transformers import BertModel

model = BertModel.from_pretrained(sys.argv[1])
total = sum(float(p.double().sum()) for p in model.parameters())
print(sys.argv[1], len(list(model.parameters())), round(total, 6))
"""


def write(path: Path, code: str) -> Path:
    path.write_text(textwrap.dedent(code))
    return path


def offline_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICKLEGUARD_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME="hf-home")
    return env


def runs(project: Path, *args: str):
    return run([PY, *args], project, env=offline_env())


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hf")
    write(path / "make.py", MAKE)
    write(path / "app.py", APP)
    made = runs(path, "make.py")
    assert made.returncode == 0, made.stderr
    shards = sorted((path / "sharded").glob("pytorch_model-*.bin"))
    assert len(shards) >= 2 and (path / "sharded" / "pytorch_model.bin.index.json").exists()
    return path


def shards(project: Path):
    return sorted((project / "sharded").glob("pytorch_model-*.bin"))


def record(project: Path, folder: str, manifest: str) -> str:
    result = runs(
        project, "-m", "pickleguard", "record", "-o", manifest, "--", PY, "app.py", folder
    )
    assert result.returncode == 0, result.stderr
    return (project / manifest).read_text()


def enforce(project: Path, folder: str, manifest: str):
    return runs(
        project, "-m", "pickleguard", "run", "--manifest", manifest, "--", PY, "app.py", folder
    )


@pytest.mark.parametrize("folder", ["single", "sharded"])
def test_from_pretrained_loads_recorded_bin_weights_under_enforcement(project, folder):
    plain = runs(project, "app.py", folder)
    assert plain.returncode == 0, plain.stderr
    manifest = record(project, folder, f"{folder}.toml")
    files = [project / "single" / "pytorch_model.bin"] if folder == "single" else shards(project)
    for file in files:
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        assert f'sha256 = "{digest}"' in manifest
    assert "[[pickle]]" not in manifest
    enforced = enforce(project, folder, f"{folder}.toml")
    assert enforced.returncode == 0, enforced.stderr
    assert enforced.stdout == plain.stdout


def test_torch_loads_the_way_transformers_does_both_pass(project):
    """The meta load without mmap, then mmap=True with weights_only=True, of each
    shard, as transformers' load_state_dict calls them, under the same manifest."""
    write(
        project / "both.py",
        """
        import sys, torch
        for shard in sys.argv[1:]:
            meta = torch.load(shard, map_location="meta", weights_only=True)
            mapped = torch.load(shard, map_location="cpu", weights_only=True, mmap=True)
            assert meta.keys() == mapped.keys()
            assert all(t.is_meta for t in meta.values())
            print(shard.rsplit("/", 1)[-1], round(sum(float(t.double().sum()) for t in mapped.values()), 6))
        """,
    )
    names = [str(s) for s in shards(project)]
    plain = runs(project, "both.py", *names)
    assert plain.returncode == 0, plain.stderr
    guard = ["-m", "pickleguard"]
    recorded = runs(project, *guard, "record", "-o", "both.toml", "--", PY, "both.py", *names)
    assert recorded.returncode == 0, recorded.stderr
    enforced = runs(project, *guard, "run", "--manifest", "both.toml", "--", PY, "both.py", *names)
    assert enforced.returncode == 0, enforced.stderr
    assert enforced.stdout == plain.stdout


def test_a_shard_with_a_changed_tensor_value_is_refused_naming_it(project, tmp_path):
    record(project, "sharded", "sharded.toml")
    target = shards(project)[1]
    original = target.read_bytes()
    state = torch.load(target, weights_only=True)
    name = next(iter(state))
    state[name] = state[name] + 1.0
    torch.save(state, target)
    try:
        refused = enforce(project, "sharded", "sharded.toml")
        assert refused.returncode != 0
        assert "NoPickleError" in refused.stderr
        assert target.name in refused.stderr and "read by torch.load" in refused.stderr
    finally:
        target.write_bytes(original)


def test_a_shard_replaced_by_a_malicious_pickle_is_refused_before_it_runs(project):
    record(project, "sharded", "sharded.toml")
    target = shards(project)[0]
    original = target.read_bytes()
    write(
        project / "hostile.py",
        f"""
        import os, torch

        class Boom:
            def __reduce__(self):
                return (os.mkdir, ("PWNED",))

        state = torch.load({str(target)!r}, weights_only=True)
        state["pooler.dense.bias"] = Boom()
        torch.save(state, {str(target)!r})
        """,
    )
    try:
        assert runs(project, "hostile.py").returncode == 0
        # The payload fires when the shard is unpickled without the guard.
        fire = f"import torch; torch.load({str(target)!r}, weights_only=False)"
        fired = runs(project, "-c", fire)
        assert (project / "PWNED").exists(), fired.stderr
        (project / "PWNED").rmdir()
        refused = enforce(project, "sharded", "sharded.toml")
        assert refused.returncode != 0
        assert "NoPickleError" in refused.stderr and target.name in refused.stderr
        assert not (project / "PWNED").exists()
    finally:
        target.write_bytes(original)
