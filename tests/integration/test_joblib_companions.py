"""joblib's old format (0.9 and earlier): the arrays of ``model.pkl`` sit in files
next to it, ``model.pkl_01.npy``, ... (``model.pkl_01.npy.z``, zlib-compressed, in
its compressed variant), which the pickle names and joblib reads when it meets them.

pickleguard hands joblib the verified bytes of the pickle, not its path, so it must
resolve those array files itself, where plain joblib does (next to the pickle, not
in the current directory), and judge each one as an ``[[artifact]]`` of its own: a
swapped array file would otherwise change the loaded arrays, or run a payload,
under a pinned pickle.

Modern joblib cannot write the old format, so the files are written here as old
joblib wrote them: ``np.save`` (or a zlib "Z-file") for each array, and a protocol-2
pickle of ``NDArrayWrapper`` (``ZNDArrayWrapper``) objects, named from
``joblib.numpy_pickle`` where those classes lived then. Every run is a fresh
interpreter whose current directory is not the model's.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, Optional

import joblib
import numpy as np
import pytest
from joblib.numpy_pickle_compat import NDArrayWrapper, ZNDArrayWrapper, write_zfile

from conftest import Boom, hostile

from ._harness import clean_env, pg

PY = sys.executable

# What the app prints for the model: plain lists, so runs compare as text.
EXPECTED = {
    "npy": {
        "name": "ranker",
        "coef": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        "eye": [[1.0, 0.0], [0.0, 1.0]],
        "labels": ["cat", 7],
    },
    "zfile": {
        "name": "ranker",
        "coef": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        "eye": [[1.0, 0.0], [0.0, 1.0]],
    },
}

APP = """
import json, os, sys
if not any(k.startswith("PICKLEGUARD_") for k in os.environ):
    assert "pickleguard" not in sys.modules
import joblib
if os.environ.get("APP_MANIFEST"):  # in-code activation, after joblib is imported
    import pickleguard
    pickleguard.activate(os.environ["APP_MANIFEST"])
if os.environ.get("APP_SWAP"):  # a file that changes on disk right after its check
    from pickleguard import _core
    target, replacement = os.environ["APP_SWAP"].split(os.pathsep)
    admit = _core.verify_artifact

    def admit_then_swap(data, *args, **kwargs):
        scope = admit(data, *args, **kwargs)
        if kwargs.get("source") == target:
            os.replace(replacement, target)
        return scope

    _core.verify_artifact = admit_then_swap

def load_model(path, how):
    if how == "file":
        with open(path, "rb") as f:
            return joblib.load(f)
    if how == "mmap":
        return joblib.load(path, mmap_mode="r")
    if how == "mmap-where":  # what each value is, and the file a mapped one maps
        model = joblib.load(path, mmap_mode="r")
        return {k: [type(v).__name__, getattr(v, "filename", None)] for k, v in model.items()}
    return joblib.load(path)

try:
    model = load_model(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "path")
except Exception as e:
    print(json.dumps({"error": type(e).__name__, "code": getattr(e, "code", None),
                      "message": str(e)}))
else:
    print(json.dumps({k: v.tolist() if hasattr(v, "tolist") else v for k, v in model.items()}))
"""


def old_pickle(obj: Any) -> bytes:
    """``obj`` pickled as old joblib pickled it: protocol 2, the array wrappers named
    from ``joblib.numpy_pickle``, where they were defined before joblib 0.10."""
    data = pickle.dumps(obj, protocol=2)
    old = data.replace(b"cjoblib.numpy_pickle_compat\n", b"cjoblib.numpy_pickle\n")
    assert old != data
    return old


def write_old_format(directory: Path, layout: str) -> Path:
    """``model.pkl`` and its array files in ``directory``; returns the pickle's path."""
    main = directory / "model.pkl"
    arrays: Dict[str, Any] = {"coef": np.arange(6.0), "eye": np.eye(2)}
    if layout == "npy":
        arrays["labels"] = np.array(["cat", 7], dtype=object)
    content: Dict[str, Any] = {"name": "ranker"}
    for number, (key, array) in enumerate(arrays.items(), 1):
        name = f"{main.name}_{number:02d}.npy"
        if layout == "zfile":
            name += ".z"
            _, init_args, state = array.__reduce__()
            with open(directory / name, "wb") as f:
                write_zfile(f, state[-1])  # the raw array bytes
            content[key] = ZNDArrayWrapper(name, init_args, state[:-1])
        else:
            has_objects = array.dtype.hasobject
            np.save(directory / name, array, allow_pickle=has_objects)
            content[key] = NDArrayWrapper(name, np.ndarray, allow_mmap=not has_objects)
    data = old_pickle(content)
    with open(main, "wb") as f:
        if layout == "zfile":
            write_zfile(f, data)
        else:
            f.write(data)
    return main


def sha256sum(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_other_values(path: Path, layout: str) -> None:
    """An array file for ``coef`` with other values, in the layout's format."""
    if layout == "zfile":
        with open(path, "wb") as f:
            write_zfile(f, np.full(6, 666.0).tobytes())
    else:
        with open(path, "wb") as f:
            np.save(f, np.full(6, 666.0))


class Project:
    """``models/model.pkl`` and its array files, ``app.py``, and ``cwd/``, the
    directory every run starts in (the models are elsewhere)."""

    def __init__(self, root: Path, layout: str) -> None:
        self.root, self.layout = root, layout
        self.models, self.cwd = root / "models", root / "cwd"
        self.models.mkdir()
        self.cwd.mkdir()
        (root / "app.py").write_text(textwrap.dedent(APP))
        self.main = write_old_format(self.models, layout)
        suffix = ".npy.z" if layout == "zfile" else ".npy"
        self.arrays = sorted(self.models.glob(f"model.pkl_*{suffix}"))
        self.manifest = root / "pickleguard.toml"
        self.sentinel = root / "PWNED"

    def load(
        self,
        how: str = "path",
        activation: Optional[str] = None,
        cwd: Optional[Path] = None,
        manifest: Optional[Path] = None,
        swap: Optional[Path] = None,
    ) -> Dict[str, Any]:
        """Run the app in a fresh interpreter: unguarded, or with the manifest
        activated in code or from the environment (and, with ``swap``, the first
        array file replaced by that file right after pickleguard has judged it).
        Returns what it printed."""
        env = clean_env()
        if swap is not None:
            env["APP_SWAP"] = f"{self.arrays[0]}{os.pathsep}{swap}"
        manifest = manifest or self.manifest
        if activation == "code":
            env["APP_MANIFEST"] = str(manifest)
        elif activation == "env":
            env["PICKLEGUARD_MANIFEST"] = str(manifest)
        else:
            assert activation is None
        proc = subprocess.run(
            [PY, str(self.root / "app.py"), str(self.main), how],
            cwd=cwd or self.cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        result: Dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
        return result

    def record(self, how: str = "path", cwd: Optional[Path] = None) -> str:
        args = [str(self.root / "app.py"), str(self.main), how]
        result = pg("record", "-o", str(self.manifest), "--", PY, *args, cwd=cwd or self.cwd)
        assert result.returncode == 0, result.stdout + result.stderr
        return self.manifest.read_text()


@pytest.fixture(params=["npy", "zfile"])
def project(request: pytest.FixtureRequest, tmp_path: Path) -> Project:
    return Project(tmp_path, request.param)


@pytest.fixture
def npy_project(tmp_path: Path) -> Project:
    return Project(tmp_path, "npy")


ACTIVATIONS = pytest.mark.parametrize("activation", ["code", "env"])


def assert_refused_array_file(result: Dict[str, Any], path: Path) -> None:
    """Refused as an old-format array file whose hash is not pinned: the manifest
    names this file as an entry's source, so the denial says it changed."""
    assert result["error"] == "NoPickleError" and result["code"] == "not-listed", result
    assert f"artifact sha256:{sha256sum(path)} " in result["message"], result
    assert f"file {path}, read by joblib.load (an old-format array file)" in result["message"]
    assert f"{path} was pinned with another hash" in result["message"], result["message"]
    assert "hint: the file changed since it was pinned" in result["message"]


def test_plain_joblib_reads_the_hand_written_old_format(project):
    """(a) The files are joblib's old format as joblib itself reads them: from any
    current directory, with the arrays taken from the files next to the pickle."""
    assert project.load() == EXPECTED[project.layout]
    project.arrays[0].unlink()
    missing = project.load()
    assert missing["error"] == "FileNotFoundError", missing
    assert str(project.arrays[0]) in missing["message"]


@ACTIVATIONS
def test_record_pins_each_array_file_and_the_guarded_load_is_the_same(project, activation):
    """(b) record writes an [[artifact]] for the pickle and one for each array file
    it read, by whole-file hash; the guarded load returns the same arrays."""
    manifest = project.record()
    for path in [project.main, *project.arrays]:
        assert f'sha256 = "{sha256sum(path)}"' in manifest
        assert f'source = "{path}"' in manifest
    assert manifest.count("[[artifact]]") == 1 + len(project.arrays)
    assert manifest.count("read by joblib.load (an old-format array file)") == len(project.arrays)
    # The object array's pickle is covered by its file's entry, not pinned apart.
    assert "[[pickle]]" not in manifest
    assert project.load(activation=activation) == EXPECTED[project.layout]


def test_pin_pins_the_array_files_of_an_old_format_file(project):
    """`pickleguard pin` of the pickle also pins the array files next to it, so
    the pinned file loads under enforcement. The old format's wrappers name the
    file joblib reads (RISKY: an import that reads files), so the reviewer has to
    say --allow-risky."""
    refused = pg("pin", str(project.manifest), str(project.main), cwd=project.root)
    assert refused.returncode == 1 and "NDArrayWrapper" in refused.stderr, refused.stderr
    assert not project.manifest.exists()
    pinned = pg("pin", "--allow-risky", str(project.manifest), str(project.main), cwd=project.root)
    assert pinned.returncode == 0, pinned.stderr
    manifest = project.manifest.read_text()
    assert manifest.count("[[artifact]]") == 1 + len(project.arrays)
    for path in project.arrays:
        assert f'sha256 = "{sha256sum(path)}"' in manifest
        assert f"an array file joblib.load reads for {json.dumps(str(project.main))}" in manifest
    assert project.load(activation="env") == EXPECTED[project.layout]


def test_pin_does_not_pin_files_next_to_a_modern_joblib_file(tmp_path):
    """Files named like old array files, next to a file joblib 0.10 or later wrote
    (which names none), are not pinned with it."""
    joblib.dump({"coef": np.arange(3.0)}, tmp_path / "model.pkl")
    np.save(tmp_path / "model.pkl_01.npy", np.arange(3.0))
    pinned = pg("pin", "pins.toml", "model.pkl", cwd=tmp_path)
    assert pinned.returncode == 0, pinned.stderr
    assert (tmp_path / "pins.toml").read_text().count("[[artifact]]") == 1


@ACTIVATIONS
def test_a_swapped_array_file_is_refused(project, activation):
    """(c) New values in an array file, under the same pinned pickle: plain joblib
    loads them; the guard refuses the file."""
    project.record()
    swapped = project.arrays[0]
    write_other_values(swapped, project.layout)
    assert project.load()["coef"] == [666.0] * 6
    assert_refused_array_file(project.load(activation=activation), swapped)


@ACTIVATIONS
def test_numpy_reads_the_bytes_that_were_judged_not_the_file_again(project, activation):
    """An array file replaced on disk right after its check changes nothing: the
    bytes pickleguard judged are the ones numpy reads."""
    project.record()
    replacement = project.root / "replacement"
    write_other_values(replacement, project.layout)
    expected = EXPECTED[project.layout]
    assert project.load(activation=activation, swap=replacement) == expected
    assert not replacement.exists()  # it was swapped in, after the check
    assert project.load()["coef"] == [666.0] * 6


def hostile_object_array(path: Path, sentinel: Path) -> None:
    """An .npy file whose object array unpickles to ``os.mkdir(sentinel)``."""
    np.save(path, np.array([Boom(sentinel)], dtype=object), allow_pickle=True)


def hostile_pickle_file(path: Path, sentinel: Path) -> None:
    """A bare pickle of ``os.mkdir(sentinel)``: np.load(allow_pickle=True), which
    joblib calls for an array file, unpickles a file that is not an .npy."""
    path.write_bytes(hostile(sentinel))


@ACTIVATIONS
@pytest.mark.parametrize("write_payload", [hostile_object_array, hostile_pickle_file])
def test_a_hostile_array_file_is_refused_before_it_runs(npy_project, activation, write_payload):
    """(d) An array file swapped for a payload fires through plain joblib.load of
    the pinned pickle; under the guard it is refused and never runs. (A .npy.z file
    only holds raw array bytes, so the zfile layout has only (c) to fear.)"""
    project = npy_project
    project.record()
    labels = project.arrays[-1]  # the object array, which joblib loads with allow_pickle
    write_payload(labels, project.sentinel)
    fired = project.load()
    assert project.sentinel.exists(), f"the payload must fire without the guard: {fired}"
    project.sentinel.rmdir()
    assert_refused_array_file(project.load(activation=activation), labels)
    assert not project.sentinel.exists()


@ACTIVATIONS
def test_an_array_file_planted_in_the_current_directory_is_never_used(project, activation):
    """(e) joblib.load of a path reads its array files next to it, under the guard
    as without it: a file of the same name in the current directory is ignored,
    even one whose hash is pinned."""
    project.record()
    first = project.arrays[0]
    planted = project.cwd / first.name
    write_other_values(planted, project.layout)
    assert project.load() == EXPECTED[project.layout]
    assert project.load(activation=activation) == EXPECTED[project.layout]
    # The pinned file itself, moved to the current directory: not found.
    first.replace(planted)
    for guarded in (None, activation):
        missing = project.load(activation=guarded)
        assert missing["error"] == "FileNotFoundError", missing
        assert str(first) in missing["message"], missing


@ACTIVATIONS
def test_a_file_object_resolves_array_files_as_plain_joblib_does(npy_project, activation):
    """joblib.load of a file object knows no directory: plain joblib reads the
    array files from the current one. So does the guard, and judges them."""
    project = npy_project
    assert project.load("file")["error"] == "FileNotFoundError"
    project.record("file", cwd=project.models)
    assert project.load("file", activation, cwd=project.models) == EXPECTED["npy"]
    guarded = project.load("file", activation)
    assert guarded["error"] == "FileNotFoundError", guarded
    # In the current directory, an array file that is not pinned is refused.
    planted = project.cwd / project.arrays[0].name
    write_other_values(planted, "npy")
    for other in project.arrays[1:]:
        (project.cwd / other.name).write_bytes(other.read_bytes())
    assert project.load("file")["coef"] == [666.0] * 6
    refused = project.load("file", activation)
    assert refused["error"] == "NoPickleError", refused
    assert f"artifact sha256:{sha256sum(planted)} " in refused["message"], refused


def test_mmap_mode_records_the_array_files_and_maps_their_verified_copies(npy_project):
    """numpy maps an array file itself with mmap_mode: record journals each one,
    and under enforcement numpy maps the sealed copy of the bytes that were
    judged, and the load returns the same values."""
    project = npy_project
    mapped = project.load("mmap")
    assert mapped == EXPECTED["npy"]
    manifest = project.record("mmap")
    for path in [project.main, *project.arrays]:
        assert f'sha256 = "{sha256sum(path)}"' in manifest
    for activation in ("code", "env"):
        assert project.load("mmap", activation) == EXPECTED["npy"]
    plain = project.load("mmap-where")
    assert plain["coef"] == ["memmap", str(project.arrays[0])]
    assert plain["labels"] == ["ndarray", None]  # an object array is never mapped
    guarded = project.load("mmap-where", "env")
    assert guarded["coef"][0] == "memmap" and guarded["eye"][0] == "memmap"
    assert guarded["coef"][1].startswith("/proc/self/fd/"), guarded
    assert guarded["labels"] == ["ndarray", None]


@ACTIVATIONS
def test_mmap_mode_refuses_a_swapped_array_file(npy_project, activation):
    project = npy_project
    project.record("mmap")
    swapped = project.arrays[0]
    write_other_values(swapped, "npy")
    assert project.load("mmap")["coef"] == [666.0] * 6
    assert_refused_array_file(project.load("mmap", activation), swapped)


@ACTIVATIONS
def test_mmap_mode_maps_the_bytes_that_were_judged_not_the_file_again(npy_project, activation):
    """An array file replaced on disk right after its check: numpy maps the
    sealed copy of what was judged, not the new file."""
    project = npy_project
    project.record("mmap")
    replacement = project.root / "replacement"
    write_other_values(replacement, "npy")
    assert project.load("mmap", activation, swap=replacement) == EXPECTED["npy"]
    assert not replacement.exists()  # it was swapped in, after the check
    assert project.load("mmap")["coef"] == [666.0] * 6
