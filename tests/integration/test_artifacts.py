"""Artifact pins with the real torch and joblib: record, run, tamper, denied.

A torch checkpoint or a joblib file is pinned whole (``[[artifact]]``, the hash
``sha256sum`` prints): swapping its tensor or array bytes changes no pickle inside
it, so only the whole file can say it is the one that was reviewed.
"""

from __future__ import annotations

import hashlib
import json
import sys
import textwrap
from pathlib import Path

import joblib  # noqa: F401  (installed: these tests never skip)
import pytest
import torch  # noqa: F401

from ._harness import pg, run

PY = sys.executable


def write(path: Path, code: str) -> Path:
    path.write_text(textwrap.dedent(code))
    return path


MAKE = """
import os, sys
import joblib, numpy as np, torch

class Boom:
    def __reduce__(self):
        return (os.mkdir, ("PWNED",))

what = sys.argv[1]
weights = {"w": torch.arange(12.0).reshape(3, 4), "step": 7}
if what == "good":
    torch.save(weights, "ckpt.pt")
    torch.save(weights, "legacy.pt", _use_new_zipfile_serialization=False)
    joblib.dump({"coef": np.arange(1000.0), "name": "ranker"}, "model.joblib")
    joblib.dump({"coef": np.arange(1000.0), "name": "ranker"}, "model.joblib.gz", compress=3)
elif what == "hostile-torch":
    torch.save({"w": weights["w"], "step": Boom()}, "ckpt.pt")
elif what == "hostile-joblib":
    joblib.dump({"coef": np.arange(1000.0), "name": Boom()}, "model.joblib")
"""

# Loads every artifact the way ML code does; prints a digest of what it got.
APP = """
import sys
import joblib, torch

def summary(obj):
    return {k: (v.sum().item() if hasattr(v, "sum") else v) for k, v in obj.items()}

which = sys.argv[1:] or ["ckpt", "legacy", "file", "joblib", "joblib-gz"]
for name in which:
    if name == "ckpt":
        print(name, summary(torch.load("ckpt.pt")))
    elif name == "unsafe":
        print(name, summary(torch.load("ckpt.pt", weights_only=False)))
    elif name == "legacy":
        print(name, summary(torch.load("legacy.pt", weights_only=False)))
    elif name == "file":
        with open("ckpt.pt", "rb") as f:
            obj = torch.load(f, map_location="cpu")
            print(name, summary(obj), "at end:", f.tell() == len(open("ckpt.pt", "rb").read()))
    elif name == "joblib":
        print(name, summary(joblib.load("model.joblib")))
    elif name == "joblib-gz":
        print(name, summary(joblib.load("model.joblib.gz")))
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write(tmp_path / "make.py", MAKE)
    write(tmp_path / "app.py", APP)
    assert run([PY, "make.py", "good"], tmp_path).returncode == 0
    return tmp_path


def recorded(project: Path, *extra: str) -> str:
    result = pg("record", "-o", "pickleguard.toml", *extra, "--", PY, "app.py", cwd=project)
    assert result.returncode == 0, result.stderr
    return (project / "pickleguard.toml").read_text()


def sha256sum(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_record_pins_whole_files_and_run_loads_them_unchanged(project):
    plain = run([PY, "app.py"], project)
    assert plain.returncode == 0, plain.stderr
    manifest = recorded(project)
    for name in ("ckpt.pt", "legacy.pt", "model.joblib", "model.joblib.gz"):
        # The number sha256sum prints, in an [[artifact]] entry.
        assert f'sha256 = "{sha256sum(project / name)}"' in manifest
        assert f'source = "{name}"' in manifest
    assert manifest.count("[[artifact]]") == 4
    # The pickles inside the files are covered by their artifact, not pinned apart.
    assert "[[pickle]]" not in manifest
    assert "read by torch.load" in manifest and "read by joblib.load" in manifest

    enforced = pg("run", "--manifest", "pickleguard.toml", "--", PY, "app.py", cwd=project)
    assert enforced.returncode == 0, enforced.stderr
    # Same values, and a file object is left where plain torch.load leaves it.
    assert enforced.stdout == plain.stdout


def test_swapped_tensor_bytes_no_longer_match(project):
    recorded(project)
    # Change one stored float in the zip archive: every pickle inside stays the same.
    data = bytearray((project / "ckpt.pt").read_bytes())
    offset = data.index(bytes(torch.tensor([5.0]).numpy().tobytes()))
    data[offset : offset + 4] = torch.tensor([500.0]).numpy().tobytes()
    before = run([PY, "app.py", "ckpt"], project).stdout
    (project / "ckpt.pt").write_bytes(bytes(data))
    after = run([PY, "app.py", "ckpt"], project).stdout
    assert before != after and "561.0" in after  # 66 + 495: the weights really changed
    refused = pg("run", "--manifest", "pickleguard.toml", "--", PY, "app.py", "ckpt", cwd=project)
    assert refused.returncode != 0
    assert "NoPickleError" in refused.stderr
    assert f"artifact sha256:{sha256sum(project / 'ckpt.pt')}" in refused.stderr
    assert "read by torch.load" in refused.stderr
    # The denial says exactly what to add.
    assert "[[artifact]]" in refused.stderr and 'source = "ckpt.pt"' in refused.stderr


@pytest.mark.parametrize(
    "kind, load",
    [
        ("hostile-torch", "unsafe"),
        ("hostile-joblib", "joblib"),
    ],
)
def test_a_swapped_hostile_file_is_refused_before_anything_runs(project, kind, load):
    recorded(project)
    assert run([PY, "make.py", kind], project).returncode == 0
    # Without the guard the payload fires.
    fired = run([PY, "app.py", load], project)
    assert (project / "PWNED").exists(), fired.stderr
    (project / "PWNED").rmdir()
    refused = pg("run", "--manifest", "pickleguard.toml", "--", PY, "app.py", load, cwd=project)
    assert refused.returncode != 0
    assert "NoPickleError" in refused.stderr
    assert not (project / "PWNED").exists()


def test_weights_only_has_its_own_gate(project, tmp_path):
    """torch's weights_only unpickler calls neither pickle nor the audit event; a
    pickle handed to it directly is judged like any other."""
    write(
        project / "direct.py",
        """
        import io, pickle, sys
        import torch
        from torch import _weights_only_unpickler as wou
        data = pickle.dumps({"a": 1, "b": [2, 3]}, protocol=2)
        print(wou.load(io.BytesIO(data), encoding="utf-8"))
        print(wou.Unpickler(io.BytesIO(data), encoding="utf-8").load())
        """,
    )
    plain = run([PY, "direct.py"], project)
    assert plain.returncode == 0, plain.stderr
    (project / "empty.toml").write_text("version = 1\n")
    refused = pg("run", "--manifest", "empty.toml", "--", PY, "direct.py", cwd=project)
    assert refused.returncode != 0
    assert "NoPickleError" in refused.stderr and "pickle sha256:" in refused.stderr
    manifest = recorded_for(project, "direct.py")
    assert "[[pickle]]" in manifest
    allowed = pg("run", "--manifest", "direct.toml", "--", PY, "direct.py", cwd=project)
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout == plain.stdout


def recorded_for(project: Path, script: str) -> str:
    result = pg("record", "-o", "direct.toml", "--", PY, script, cwd=project)
    assert result.returncode == 0, result.stderr
    return (project / "direct.toml").read_text()


@pytest.mark.parametrize(
    "call",
    [
        "torch.load('ckpt.pt', mmap=True)",
        "joblib.load('model.joblib', mmap_mode='r')",
    ],
)
def test_a_recorded_mapped_load_maps_the_verified_copy_under_enforcement(project, call):
    write(project / "mapped.py", f"import joblib, torch\nprint(type({call}).__name__)\n")
    result = pg("record", "-o", "mapped.toml", "--", PY, "mapped.py", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "[[artifact]]" in (project / "mapped.toml").read_text()
    enforced = pg("run", "--manifest", "mapped.toml", "--", PY, "mapped.py", cwd=project)
    assert enforced.returncode == 0, enforced.stderr
    assert enforced.stdout == run([PY, "mapped.py"], project).stdout


def test_record_can_pin_with_blake3(project):
    manifest = recorded(project, "--identity", "blake3")
    assert "blake3 = " in manifest and "sha256 = " not in manifest
    enforced = pg("run", "--manifest", "pickleguard.toml", "--", PY, "app.py", cwd=project)
    assert enforced.returncode == 0, enforced.stderr


def test_a_denied_artifact_in_code_names_the_entry(project):
    """In-process: the exception carries the entry to paste, and nothing loads."""
    write(
        project / "inproc.py",
        """
        import json, pickleguard, torch
        pickleguard.activate("empty.toml")
        try:
            torch.load("ckpt.pt")
        except pickleguard.NoPickleError as e:
            print(json.dumps({"kind": e.kind, "sha256": e.sha256, "code": e.code,
                              "entry": e.entry}))
        """,
    )
    (project / "empty.toml").write_text("version = 1\n")
    result = run([PY, "inproc.py"], project)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["kind"] == "artifact" and report["code"] == "not-listed"
    assert report["sha256"] == sha256sum(project / "ckpt.pt")
    assert report["entry"].startswith(f'[[artifact]]\nsha256 = "{report["sha256"]}"\n')


def test_loaders_bound_before_activation_are_wrapped_too(project):
    """`from torch import load` before activate() in code: the name is rebound."""
    (project / "empty.toml").write_text("version = 1\n")
    write(
        project / "early.py",
        """
        import torch
        from torch import load as early_load
        from joblib import load as early_joblib_load
        import pickleguard
        pickleguard.activate("empty.toml")
        for call in (lambda: early_load("ckpt.pt"), lambda: torch.load("ckpt.pt"),
                     lambda: early_joblib_load("model.joblib")):
            try:
                call()
                print("loaded")
            except pickleguard.NoPickleError as e:
                print(e.kind, e.code)
        """,
    )
    result = run([PY, "early.py"], project)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["artifact not-listed"] * 3


def test_mmap_mode_on_a_compressed_joblib_file_loads_the_verified_bytes(project):
    """joblib maps nothing for a compressed file (it warns and reads it), so the
    guard loads the verified bytes instead of refusing."""
    write(
        project / "gz.py",
        """
        import warnings, joblib
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            obj = joblib.load("model.joblib.gz", mmap_mode="r")
        print(obj["name"], int(obj["coef"].sum()), [str(w.message)[:30] for w in caught])
        """,
    )
    plain = run([PY, "gz.py"], project)
    assert plain.returncode == 0, plain.stderr
    result = pg("record", "-o", "gz.toml", "--", PY, "gz.py", cwd=project)
    assert result.returncode == 0, result.stderr
    enforced = pg("run", "--manifest", "gz.toml", "--", PY, "gz.py", cwd=project)
    assert enforced.returncode == 0, enforced.stderr
    assert enforced.stdout == plain.stdout


def test_record_flags_risky_imports_inside_a_checkpoint(project):
    """The pickles inside a pinned checkpoint are scanned when it is recorded, so a
    reviewer sees what it imports before trusting it."""
    assert run([PY, "make.py", "hostile-torch"], project).returncode == 0
    torch.save(  # also a legacy-format file with the same payload
        {"w": torch.zeros(1)}, project / "legacy.pt", _use_new_zipfile_serialization=False
    )
    result = pg("record", "-o", "r.toml", "--", PY, "app.py", "unsafe", "legacy", cwd=project)
    assert (project / "PWNED").exists()  # recording runs the program as it is
    (project / "PWNED").rmdir()
    manifest = (project / "r.toml").read_text()
    assert result.returncode == 0, result.stderr
    assert "# RISKY imports, review before trusting: posix.mkdir" in manifest
    assert "torch._utils._rebuild_tensor_v2" in manifest  # the legacy file's pickles
    assert "RISKY" in result.stderr


def test_files_a_pinned_artifact_loads_from_elsewhere_are_judged_on_their_own(project):
    """joblib's old format names an array file next to the pickle, which numpy may
    read with pickle: it is not part of the pinned bytes, so the artifact's entry
    does not cover it."""
    write(
        project / "old.py",
        """
        import os, pickle, sys
        import numpy as np
        from joblib.numpy_pickle_compat import NDArrayWrapper

        class Boom:
            def __reduce__(self):
                return (os.mkdir, ("PWNED",))

        if sys.argv[1] == "make":
            np.save("old.pkl_01.npy", np.arange(5))
            with open("old.pkl", "wb") as f:
                pickle.dump({"w": NDArrayWrapper("old.pkl_01.npy", np.ndarray)}, f, protocol=2)
        elif sys.argv[1] == "swap":
            with open("old.pkl_01.npy", "wb") as f:
                pickle.dump(Boom(), f)
        else:
            import joblib
            print(joblib.load("old.pkl"))
        """,
    )
    assert run([PY, "old.py", "make"], project).returncode == 0
    assert run([PY, "old.py", "swap"], project).returncode == 0
    fired = run([PY, "old.py", "load"], project)
    assert (project / "PWNED").exists(), fired.stderr
    (project / "PWNED").rmdir()
    digest = sha256sum(project / "old.pkl")
    (project / "old.toml").write_text(f'version = 1\n[[artifact]]\nsha256 = "{digest}"\n')
    refused = pg("run", "--manifest", "old.toml", "--", PY, "old.py", "load", cwd=project)
    assert refused.returncode != 0
    assert "NoPickleError" in refused.stderr
    assert not (project / "PWNED").exists()


def test_code_running_inside_an_artifact_load_cannot_load_other_bytes(project):
    """Inside a pinned checkpoint's load, bytes that are not part of the checkpoint
    are judged as usual, through the C and the pure-Python unpicklers, and a
    no_pickles() scope opened there still applies."""
    write(
        project / "inside.py",
        """
        import io, os, pickle, sys, torch, pickleguard

        class Boom:
            def __reduce__(self):
                return (os.mkdir, ("PWNED",))

        payload = pickle.dumps(Boom())
        if sys.argv[1:] == ["plain"]:  # the payload fires without the guard
            pickle.loads(payload)
            raise SystemExit
        original = torch.serialization._load

        def hooked(*args, **kwargs):
            with pickleguard.no_pickles():
                for load in (pickle.loads, pickle._loads):
                    try:
                        load(payload)
                        print("loaded")
                    except pickleguard.NoPickleError as e:
                        print("refused", e.code)
            return original(*args, **kwargs)

        torch.serialization._load = hooked
        pickleguard.activate("pickleguard.toml")
        print(type(torch.load("ckpt.pt")).__name__)
        """,
    )
    recorded(project)
    assert run([PY, "inside.py", "plain"], project).returncode == 0
    assert (project / "PWNED").exists()
    (project / "PWNED").rmdir()
    result = run([PY, "inside.py"], project)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["refused not-listed"] * 2 + ["dict"]
    assert not (project / "PWNED").exists()


def test_torch_default_mmap_setting_is_treated_as_mmap(project):
    """torch.utils.serialization.config.load.mmap = True makes torch.load map the
    file when mmap is not given: recorded, then mapped from the verified copy."""
    write(
        project / "config_mmap.py",
        """
        import torch
        from torch.utils.serialization import config
        config.load.mmap = True
        print(torch.load("ckpt.pt")["w"].sum().item())
        """,
    )
    result = pg("record", "-o", "c.toml", "--", PY, "config_mmap.py", cwd=project)
    assert result.returncode == 0, result.stderr
    enforced = pg("run", "--manifest", "c.toml", "--", PY, "config_mmap.py", cwd=project)
    assert enforced.returncode == 0, enforced.stderr
    assert enforced.stdout == "66.0\n"
