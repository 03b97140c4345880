"""`hash`, `inspect` and `pin` on real joblib and torch files: walked as joblib and
torch read them (pickles with raw array or storage data among them), never run,
and a RISKY import inside refuses the pin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch

from ._harness import clean_env, pg


class Boom:
    """Loading it creates the directory ``path``: os.mkdir(path)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.mkdir, (self.path,))


def valid_files(directory: Path) -> dict:
    """A joblib file of several protocols and array kinds, compressed and not, and
    torch checkpoints in the zip and the legacy format."""
    data = {
        "arrays": np.arange(12.0).reshape(3, 4),
        "fortran": np.asfortranarray(np.ones((2, 3), dtype="f4")),
        "objects": np.array([1, "x", None], dtype=object),
        "records": np.zeros(2, dtype=[("x", "i4"), ("y", "U3")]),
        "empty": np.zeros((0, 3)),
        "label": "model",
    }
    names = {}
    for protocol in (2, 4, 5):
        names[f"p{protocol}.joblib"] = lambda p, protocol=protocol: joblib.dump(
            data, p, protocol=protocol
        )
    names["z.joblib"] = lambda p: joblib.dump(data, p, compress=("zlib", 3))
    names["gz.joblib"] = lambda p: joblib.dump(data, p, compress=("gzip", 3))
    state = {"w": torch.ones(3, 2), "b": torch.zeros(4, dtype=torch.int64)}
    names["legacy.pt"] = lambda p: torch.save(state, p, _use_new_zipfile_serialization=False)
    names["zip.pt"] = lambda p: torch.save(state, p)
    for name, make in names.items():
        make(str(directory / name))
    return names


def test_valid_joblib_and_torch_files_are_recognized_not_damaged(tmp_path):
    names = valid_files(tmp_path)
    for name in names:
        proc = pg("hash", "--json", name, cwd=tmp_path)
        assert proc.returncode == 0, (name, proc.stdout, proc.stderr)
        (item,) = json.loads(proc.stdout)["results"]
        assert "error" not in item and item["size"] == (tmp_path / name).stat().st_size
        proc = pg("inspect", name, cwd=tmp_path)
        assert proc.returncode == 0, (name, proc.stdout, proc.stderr)
        assert "RISKY" not in proc.stdout and "REVIEW" not in proc.stdout, proc.stdout
    # What each format holds, as its loader reads it.
    proc = pg("inspect", "--json", "legacy.pt", cwd=tmp_path)
    roles = [r.get("role") for r in json.loads(proc.stdout)["results"] if "role" in r]
    assert roles == [
        "torch: magic number", "torch: protocol version", "torch: system info",
        "torch: object", "torch: storage keys",
    ]  # fmt: skip
    proc = pg("hash", "p4.joblib", cwd=tmp_path)
    assert "joblib, " in proc.stdout and "bytes of raw data" in proc.stdout
    proc = pg("inspect", "p4.joblib", cwd=tmp_path)
    assert "joblib.numpy_pickle.NumpyArrayWrapper" in proc.stdout
    assert "(joblib: object array)" in proc.stdout  # the object array's own pickle


def hostile_files(directory: Path) -> dict:
    """Each format with a pickle that creates a sentinel directory when loaded, and
    the call that loads it without pickleguard."""
    boom = {"w": np.arange(64.0), "x": Boom(str(directory / "PWNED"))}
    joblib.dump(boom, directory / "evil.joblib")
    joblib.dump(boom, directory / "evil.z.joblib", compress=3)
    tensors = {"w": torch.ones(8), "x": Boom(str(directory / "PWNED"))}
    torch.save(tensors, directory / "evil.legacy.pt", _use_new_zipfile_serialization=False)
    torch.save(tensors, directory / "evil.pt")
    return {
        "evil.joblib": "import joblib; joblib.load('evil.joblib')",
        "evil.z.joblib": "import joblib; joblib.load('evil.z.joblib')",
        "evil.legacy.pt": "import torch; torch.load('evil.legacy.pt', weights_only=False)",
        "evil.pt": "import torch; torch.load('evil.pt', weights_only=False)",
    }


def assert_loader_fires(code: str, directory: Path) -> None:
    subprocess.run(
        [sys.executable, "-c", code], cwd=directory, env=clean_env(), check=True,
        capture_output=True, timeout=300,
    )  # fmt: skip
    assert (directory / "PWNED").exists(), "the payload must fire without the guard"
    (directory / "PWNED").rmdir()


@pytest.mark.parametrize("name", ["evil.joblib", "evil.z.joblib", "evil.legacy.pt", "evil.pt"])
def test_pin_scans_checkpoints_and_refuses_risky_imports(tmp_path, name):
    loads = hostile_files(tmp_path)
    assert_loader_fires(loads[name], tmp_path)
    proc = pg("inspect", name, cwd=tmp_path)
    assert proc.returncode == 1 and "RISKY posix.mkdir" in proc.stdout, proc.stdout
    proc = pg("pin", "m.toml", name, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout
    assert f"{name}, " in proc.stderr and "RISKY globals: posix.mkdir" in proc.stderr
    assert not (tmp_path / "m.toml").exists() and not (tmp_path / "PWNED").exists()
    proc = pg("pin", "m.toml", "--allow-risky", name, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "m.toml").read_text()
    assert "# RISKY imports, review before trusting: posix.mkdir" in text
    assert not (tmp_path / "PWNED").exists()


def test_a_pinned_joblib_file_of_one_pickle_loads_with_joblib_and_pickle(tmp_path):
    """joblib.dump of plain data is one pickle: pin writes both entries, and both
    loaders load it under enforcement."""
    joblib.dump({"lr": 0.1}, tmp_path / "config.joblib")
    proc = pg("pin", "m.toml", "config.joblib", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "2 new entries" in proc.stdout
    code = (
        "import pickle, joblib\n"
        "print(joblib.load('config.joblib'), pickle.load(open('config.joblib', 'rb')))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
        env=clean_env(PICKLEGUARD_MANIFEST="m.toml"), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "{'lr': 0.1} {'lr': 0.1}"


def test_record_lists_the_imports_of_a_joblib_artifact(tmp_path):
    joblib.dump({"w": np.arange(4)}, tmp_path / "model.joblib")
    (tmp_path / "app.py").write_text("import joblib\nprint(joblib.load('model.joblib'))\n")
    proc = pg("record", "-o", "r.toml", "--", sys.executable, "app.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "r.toml").read_text()
    assert "# imports: joblib.numpy_pickle.NumpyArrayWrapper, numpy.ndarray, numpy.dtype" in text
