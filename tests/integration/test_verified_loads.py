"""Mapped and unmapped loads of pinned checkpoints, with the real torch and joblib.

A pinned file given by path is copied once, hashed on the way, into sealed memory
(a memfd on Linux), and the loader gets that copy: mapped with ``torch.load(mmap=
True)``, torch's default-mmap setting or ``joblib.load(mmap_mode='r'|'c')``, read
otherwise. These tests show the values equal plain loads, that the mappings are of
the sealed copy, that a changed byte is refused in every mode, and that a file
swapped at its path after the hash (renamed over, rewritten in place, or a FIFO
that would give other bytes on a second open) is never what loads.
"""

from __future__ import annotations

import hashlib
import sys
import textwrap
from pathlib import Path

import joblib  # noqa: F401  (installed: these tests never skip)
import pytest
import torch  # noqa: F401

from ._harness import run

PY = sys.executable

MAKE = """
import os, sys
import joblib, numpy as np, torch

class Boom:
    def __reduce__(self):
        return (os.mkdir, ("PWNED",))

good = {"w": torch.arange(12.0).reshape(3, 4), "step": 7}
hostile = {"w": torch.full((3, 4), 500.0), "step": Boom()}
arrays = {"coef": np.arange(1000.0), "name": "ranker"}
torch.save(good, "ckpt.pt")
torch.save(good, "legacy.pt", _use_new_zipfile_serialization=False)
joblib.dump(arrays, "model.joblib")
joblib.dump(arrays, "model.joblib.gz", compress=3)
os.makedirs("hostile", exist_ok=True)
torch.save(hostile, "hostile/ckpt.pt")
torch.save(hostile, "hostile/legacy.pt", _use_new_zipfile_serialization=False)
joblib.dump({"coef": np.full(1000, 500.0), "name": Boom()}, "hostile/model.joblib")
joblib.dump({"coef": np.full(1000, 500.0), "name": Boom()}, "hostile/model.joblib.gz", compress=3)
"""

# Each way of loading a pinned file, by name: (file, the call on `path`).
LOADS = {
    "torch-mmap": ("ckpt.pt", "torch.load(path, mmap=True, weights_only=False)"),
    "torch-default-mmap": ("ckpt.pt", "config_mmap(lambda: torch.load(path, weights_only=False))"),
    "torch-no-mmap": ("ckpt.pt", "torch.load(path, mmap=False, weights_only=False)"),
    "torch-weights-only-mmap": ("ckpt.pt", "torch.load(path, mmap=True)"),
    "torch-weights-only": ("ckpt.pt", "torch.load(path)"),
    "torch-meta": ("ckpt.pt", "torch.load(path, map_location='meta')"),
    "torch-legacy": ("legacy.pt", "torch.load(path, weights_only=False)"),
    "joblib-r": ("model.joblib", "joblib.load(path, mmap_mode='r')"),
    "joblib-c": ("model.joblib", "joblib.load(path, mmap_mode='c')"),
    "joblib": ("model.joblib", "joblib.load(path)"),
    "joblib-gz": ("model.joblib.gz", "joblib.load(path)"),
    "joblib-gz-r": ("model.joblib.gz", "quiet(lambda: joblib.load(path, mmap_mode='r'))"),
}

# Loads every way asked (argv: names), printing a summary of each result and
# whether its tensors or arrays are mapped from pickleguard's sealed copy.
APP = """
import json, os, shutil, sys, warnings
import joblib, numpy as np, torch
from torch.utils.serialization import config

LOADS = json.loads(os.environ["LOADS"])

def config_mmap(call):
    config.load.mmap = True
    try:
        return call()
    finally:
        config.load.mmap = False

def quiet(call):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call()

def summary(obj):
    def one(v):
        if getattr(v, "is_meta", False):
            return list(v.shape)
        return float(v.sum()) if hasattr(v, "sum") else v
    return {k: one(v) for k, v in obj.items()}

def mapped_from_copy():
    with open("/proc/self/maps") as f:
        return "memfd:pickleguard-verified" in f.read()

for name in sys.argv[1:]:
    file, call = LOADS[name]
    path = file
    obj = eval(call)
    print(name, summary(obj), "mapped-from-copy" if mapped_from_copy() else "in-memory")
    del obj
"""


def write(path: Path, code: str) -> Path:
    path.write_text(textwrap.dedent(code))
    return path


def sha256sum(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write(tmp_path / "make.py", MAKE)
    write(tmp_path / "app.py", APP)
    assert run([PY, "make.py"], tmp_path).returncode == 0
    entries = "".join(
        f'[[artifact]]\nsha256 = "{sha256sum(tmp_path / name)}"\nsource = "{name}"\n'
        for name in ("ckpt.pt", "legacy.pt", "model.joblib", "model.joblib.gz")
    )
    (tmp_path / "pinned.toml").write_text("version = 1\n" + entries)
    return tmp_path


def app(project: Path, *names: str, guard: bool = True, script: str = "app.py"):
    import json
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("PICKLEGUARD_")}
    env["LOADS"] = json.dumps(LOADS)
    args = [PY, script, *names]
    if guard:
        args = [PY, "-m", "pickleguard", "run", "--manifest", "pinned.toml", "--", *args]
    return run(args, project, env=env)


def test_every_mapped_and_unmapped_load_returns_what_plain_returns(project):
    names = list(LOADS)
    plain = app(project, *names, guard=False)
    assert plain.returncode == 0, plain.stderr
    guarded = app(project, *names)
    assert guarded.returncode == 0, guarded.stderr
    strip = [line.rsplit(" ", 1)[0] for line in plain.stdout.splitlines()]
    assert [line.rsplit(" ", 1)[0] for line in guarded.stdout.splitlines()] == strip
    found = dict(line.split(" ", 1) for line in guarded.stdout.splitlines())
    # Mapped loads map the sealed copy, never the file at the path; so do a zip
    # checkpoint loaded without mmap (its tensors live in the verified copy) and a
    # joblib file loaded without mmap_mode (its arrays are views of the copy).
    for name in (
        "torch-mmap",
        "torch-default-mmap",
        "torch-no-mmap",
        "joblib-r",
        "joblib-c",
        "joblib",
    ):
        assert found[name].endswith("mapped-from-copy"), (name, found[name])
    assert "mapped-from-copy" not in plain.stdout


@pytest.mark.parametrize(
    "name", ["torch-mmap", "torch-default-mmap", "torch-no-mmap", "torch-weights-only-mmap"]
)
def test_a_flipped_tensor_byte_is_refused_under_every_mmap_setting(project, name):
    data = bytearray((project / "ckpt.pt").read_bytes())
    offset = data.index(torch.tensor([5.0]).numpy().tobytes())
    data[offset : offset + 4] = torch.tensor([500.0]).numpy().tobytes()
    (project / "ckpt.pt").write_bytes(bytes(data))
    assert "561.0" in app(project, name, guard=False).stdout  # the change is real
    refused = app(project, name)
    assert refused.returncode != 0
    assert "NoPickleError" in refused.stderr and "ckpt.pt" in refused.stderr
    assert f"artifact sha256:{sha256sum(project / 'ckpt.pt')}" in refused.stderr


@pytest.mark.parametrize("name", ["joblib-r", "joblib-c", "joblib"])
def test_a_flipped_array_byte_is_refused_under_every_mmap_mode(project, name):
    data = bytearray((project / "model.joblib").read_bytes())
    offset = data.index(np_bytes(5.0))
    data[offset : offset + 8] = np_bytes(500.0)
    (project / "model.joblib").write_bytes(bytes(data))
    assert "499995.0" in app(project, name, guard=False).stdout
    refused = app(project, name)
    assert refused.returncode != 0
    assert "NoPickleError" in refused.stderr and "model.joblib" in refused.stderr


def np_bytes(value: float) -> bytes:
    import struct

    return struct.pack("<d", value)


def test_writable_shared_mappings_are_refused_with_what_to_do(project):
    write(
        project / "shared.py",
        """
        import mmap, sys, joblib, torch
        if sys.argv[1] == "joblib":
            joblib.load("model.joblib", mmap_mode="r+")
        else:
            torch.serialization.set_default_mmap_options(mmap.MAP_SHARED)
            torch.load("ckpt.pt", mmap=True)
        print("loaded")
        """,
    )
    for which, option, hint in (
        ("joblib", "mmap_mode='r+'", "hint: use mmap_mode='c'"),
        ("torch", "mmap.MAP_SHARED", "hint: keep the default mmap options"),
    ):
        assert app(project, which, guard=False, script="shared.py").stdout == "loaded\n"
        refused = app(project, which, script="shared.py")
        assert refused.returncode != 0
        assert "PickleGuardError" in refused.stderr and option in refused.stderr
        assert "writes" in refused.stderr and hint in refused.stderr


# Swaps the file at the path right after pickleguard has copied and hashed it, then
# lets the load go on: renamed over by a hostile file, or rewritten in place.
SWAP = """
import json, os, shutil, sys
import pickleguard.adapters._verified as verified

how = sys.argv[1]
made = verified.copy_of

def copy_then_swap(path):
    copy = made(path)
    hostile = os.path.join("hostile", os.path.basename(path))
    if how == "rename":
        shutil.copy(hostile, str(path) + ".new")
        os.replace(str(path) + ".new", path)
    else:
        with open(path, "r+b") as f:
            f.truncate(0)
            f.write(open(hostile, "rb").read())
    print("swapped", path, file=sys.stderr)
    return copy

verified.copy_of = copy_then_swap
sys.argv[1:] = sys.argv[2:]
exec(open("app.py").read())
"""

SWAPPABLE = [n for n in LOADS if "weights-only" not in n and n != "torch-meta"]


@pytest.mark.parametrize("how", ["rename", "rewrite"])
@pytest.mark.parametrize("name", SWAPPABLE)
def test_a_file_swapped_after_the_hash_is_never_what_loads(project, how, name):
    file = LOADS[name][0]
    # The hostile file fires when loaded the same way without the guard.
    shutil_copy(project / "hostile" / file, project / "fires" / file)
    fired = app(project, name, guard=False, script="fires.py")
    assert (project / "fires" / "PWNED").exists(), fired.stderr
    expected = app(project, name, guard=False).stdout
    write(project / "swap.py", SWAP)
    swapped = app(project, how, name, script="swap.py")
    assert swapped.returncode == 0, swapped.stderr
    assert "swapped" in swapped.stderr  # the file at the path did change
    assert sha256sum(project / file) == sha256sum(project / "hostile" / file)
    # Only the verified bytes loaded: the good values, and the payload never ran.
    assert swapped.stdout.rsplit(" ", 1)[0] == expected.rsplit(" ", 1)[0]
    assert not (project / "PWNED").exists()


def shutil_copy(source: Path, target: Path) -> None:
    import shutil

    target.parent.mkdir(exist_ok=True)
    shutil.copy(source, target)
    # The app, run from `fires/`, loads the hostile file under the good name.
    write(
        target.parent.parent / "fires.py",
        """
        import os, sys
        os.chdir("fires")
        sys.argv[0] = "app.py"
        exec(open("../app.py").read())
        """,
    )


@pytest.mark.parametrize(
    "name", ["torch-mmap", "torch-no-mmap", "torch-legacy", "joblib-r", "joblib"]
)
def test_a_fifo_is_read_once_and_its_second_reader_would_get_other_bytes(project, name):
    """A FIFO gives each opener what its writer writes then: the good file to the
    first, the hostile one to a second. Only the first is read, the copy is what
    loads (plain torch and joblib cannot load a FIFO at all: they seek)."""
    file = LOADS[name][0]
    write(
        project / "fifo.py",
        f"""
        import os, sys, threading, time
        good = open({file!r}, "rb").read()
        hostile = open(os.path.join("hostile", {file!r}), "rb").read()
        os.replace({file!r}, {file!r} + ".good")
        os.mkfifo({file!r})
        opened = []

        def writer():
            for data in (good, hostile):
                with open({file!r}, "wb") as f:
                    opened.append(len(data))
                    f.write(data)
                # Until the first reader has seen the end and closed: a reopen by
                # the loader would then block here, and get the hostile bytes.
                time.sleep(1.0)

        threading.Thread(target=writer, daemon=True).start()
        sys.argv[1:] = [{name!r}]
        exec(open("app.py").read())
        time.sleep(1.5)  # a second opener would have been let in by now
        print("openings", len(opened))
        """,
    )
    expected = app(project, name, guard=False).stdout
    result = app(project, "fifo", script="fifo.py")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].rsplit(" ", 1)[0] == expected.strip().rsplit(" ", 1)[0]
    # The writer was let in once (a second open would have been the hostile one).
    assert lines[-1] == "openings 1"
    assert not (project / "PWNED").exists()
