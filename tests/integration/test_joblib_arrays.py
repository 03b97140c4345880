"""joblib.load of a pinned path without mmap_mode keeps one copy of the file.

The verified copy is sealed memory; joblib's arrays are views of it, mapped
copy-on-write, instead of copies of its bytes. These tests show that every kind
of array comes back as plain joblib returns it (type, dtype, shape, strides,
flags, values), that writes to one stay private to it, that the arrays really
live in the sealed copy (the claim behind "one copy"), and that a file joblib
cannot read fails the same way guarded as plain.
"""

from __future__ import annotations

import hashlib
import struct
import sys
import textwrap
from pathlib import Path

import joblib  # noqa: F401  (installed: these tests never skip)
import pytest

from ._harness import clean_env, run

PY = sys.executable

MAKE = """
import joblib, numpy as np
arrays = {
    "c": np.arange(24.0).reshape(2, 3, 4),
    "f": np.asfortranarray(np.arange(24, dtype=np.int32).reshape(4, 6)),
    "big_endian": np.arange(10, dtype=">f8"),
    "scalar": np.array(3.5),
    "empty": np.zeros((0, 5)),
    "bool": np.array([True, False, True]),
    "complex": np.arange(6) * (1 + 2j),
    "structured": np.array([(1, 2.0), (3, 4.0)], dtype=[("a", "<i4"), ("b", "<f8")]),
    "objects": np.array([{"x": 1}, "s", 3], dtype=object),
    "chars": np.frombuffer(b"abcdefg", dtype="S1"),
    "strided": np.arange(100.0)[::3],
    "large": np.arange(300_000, dtype=np.float64),
}
joblib.dump(arrays, "arrays.joblib")
"""

# Prints each array as joblib returned it, and whether its data lies in the
# sealed copy (a mapping of pickleguard's memfd), then writes to one array and
# loads again.
APP = """
import hashlib, sys
import joblib, numpy as np

def in_copy(array):
    address = array.__array_interface__["data"][0]
    with open("/proc/self/maps") as f:
        for line in f:
            if "memfd:pickleguard-verified" in line:
                low, high = (int(x, 16) for x in line.split()[0].split("-"))
                if low <= address < high:
                    return "in-copy"
    return "own-memory"

def describe(name, a):
    flags = [k for k in ("C_CONTIGUOUS", "F_CONTIGUOUS", "WRITEABLE", "ALIGNED", "OWNDATA")
             if a.flags[k]]
    values = a.tolist() if a.dtype.hasobject else hashlib.sha256(a.tobytes()).hexdigest()[:12]
    return f"{name} {type(a).__name__} {a.dtype.str} {a.shape} {a.strides} {flags} {values}"

obj = joblib.load("arrays.joblib")
for name, a in obj.items():
    print(describe(name, a), in_copy(a))
obj["c"][0, 0, 0] = 99.0
obj["large"][:] = -1.0
again = joblib.load("arrays.joblib")
print("written", obj["c"][0, 0, 0], obj["large"][12345], "reloaded", again["c"][0, 0, 0],
      again["large"][12345], "shared", np.shares_memory(obj["large"], again["large"]))
print("file", hashlib.sha256(open("arrays.joblib", "rb").read()).hexdigest())
"""


# Loads the file and prints the exception it raises, if any.
LOAD_AND_SAY = """
import joblib
try:
    joblib.load("arrays.joblib")
except Exception as e:
    print(type(e).__name__, e)
"""

# Run first, makes every array of plain values a view of the copy, however small.
VIEW_ALL = "import pickleguard.adapters.joblib as j\nj._VIEW_FROM_SHARE = 10**9\n"


def write(path: Path, code: str) -> Path:
    path.write_text(textwrap.dedent(code))
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write(tmp_path / "make.py", MAKE)
    write(tmp_path / "app.py", APP)
    assert run([PY, "make.py"], tmp_path).returncode == 0
    digest = hashlib.sha256((tmp_path / "arrays.joblib").read_bytes()).hexdigest()
    (tmp_path / "pinned.toml").write_text(
        f'version = 1\n[[artifact]]\nsha256 = "{digest}"\nsource = "arrays.joblib"\n'
    )
    return tmp_path


def pin(project: Path, name: str) -> None:
    digest = hashlib.sha256((project / name).read_bytes()).hexdigest()
    (project / "pinned.toml").write_text(f'version = 1\n[[artifact]]\nsha256 = "{digest}"\n')


def guarded(project: Path, *args: str, mode: str = "enforce"):
    command = [PY, "-m", "pickleguard", "run", "--manifest", "pinned.toml", "--mode", mode]
    return run([*command, "--", PY, *args], project, env=clean_env())


def test_arrays_come_back_as_plain_joblib_returns_them_from_the_one_copy(project):
    plain = run([PY, "app.py"], project)
    assert plain.returncode == 0, plain.stderr
    checked = guarded(project, "app.py")
    assert checked.returncode == 0, checked.stderr
    plain_lines, guarded_lines = plain.stdout.splitlines(), checked.stdout.splitlines()
    # Everything but where the data lives is as plain.
    assert [line.rsplit(" ", 1)[0] for line in guarded_lines[:-2]] == [
        line.rsplit(" ", 1)[0] for line in plain_lines[:-2]
    ]
    assert guarded_lines[-2:] == plain_lines[-2:]
    assert "written 99.0 -1.0 reloaded 0.0 12345.0 shared False" in guarded_lines
    where = {line.split(" ", 1)[0]: line.rsplit(" ", 1)[1] for line in guarded_lines[:-2]}
    assert all(w == "own-memory" for w in (line.rsplit(" ", 1)[1] for line in plain_lines[:-2]))
    # The large array is a view of the sealed copy. The small ones are copied out
    # (a view would keep the whole copy alive), the object array is unpickled, and
    # a non-native byte order is swapped into new memory, as plain.
    assert where.pop("large") == "in-copy", checked.stdout
    assert set(where.values()) == {"own-memory"}, checked.stdout


def test_every_kind_of_array_as_a_view_is_as_plain(project):
    """The same arrays, each large enough to be a view of the copy."""
    (project / "make.py").write_text(
        MAKE.replace(
            "joblib.dump(arrays",
            "arrays = {k: v for k, v in arrays.items() if k != 'large'}\njoblib.dump(arrays",
        )
    )
    assert run([PY, "make.py"], project).returncode == 0
    pin(project, "arrays.joblib")
    app = (
        (project / "app.py")
        .read_text()
        .replace('obj["large"][:] = -1.0', "")
        .replace(
            'obj["large"][12345], "reloaded", again["c"][0, 0, 0],\n      again["large"][12345], "shared", np.shares_memory(obj["large"], again["large"]))',
            '"reloaded", again["c"][0, 0, 0], "shared", np.shares_memory(obj["c"], again["c"]))',
        )
    )
    write(project / "views.py", VIEW_ALL + app)
    plain = run([PY, "views.py"], project)
    assert plain.returncode == 0, plain.stderr
    checked = guarded(project, "views.py")
    assert checked.returncode == 0, checked.stderr
    plain_lines, guarded_lines = plain.stdout.splitlines(), checked.stdout.splitlines()
    assert [line.rsplit(" ", 1)[0] for line in guarded_lines] == [
        line.rsplit(" ", 1)[0] for line in plain_lines
    ]
    assert "written 99.0 reloaded 0.0 shared False" in guarded_lines
    where = {line.split(" ", 1)[0]: line.rsplit(" ", 1)[1] for line in guarded_lines[:-2]}
    for name in ("c", "f", "scalar", "bool", "complex", "structured", "chars", "strided"):
        assert where[name] == "in-copy", (name, checked.stdout)
    assert where["objects"] == "own-memory" and where["big_endian"] == "own-memory"


def test_a_small_array_kept_alone_does_not_keep_the_copy(project):
    """A file that is mostly Python objects, with a small array and a large one:
    once only the small array is kept, the sealed copy is gone, as plain joblib
    would have freed the file's other objects."""
    write(
        project / "mixed.py",
        """
        import gc, sys, joblib, numpy as np
        if sys.argv[1] == "make":
            joblib.dump({"objects": [str(i) * 20 for i in range(100_000)],
                         "small": np.arange(10.0), "large": np.arange(200_000.0)},
                        "mixed.joblib")
            sys.exit()
        def mapped():
            return "memfd:pickleguard-verified" in open("/proc/self/maps").read()
        obj = joblib.load("mixed.joblib")
        large = obj["large"]
        small = obj["small"]
        del obj
        gc.collect()
        print("large kept", mapped())
        del large
        gc.collect()
        print("small kept", mapped(), small.sum())
        """,
    )
    assert run([PY, "mixed.py", "make"], project).returncode == 0
    pin(project, "mixed.joblib")
    checked = guarded(project, "mixed.py", "load")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.splitlines() == ["large kept True", "small kept False 45.0"]


def test_a_negative_dimension_fails_as_it_fails_plain(project):
    """A pinned file whose array claims a negative dimension: joblib's own error,
    never a view that runs backwards over the copy."""
    # Bytes (any offset is aligned for them: the 3 bytes added below move it).
    make = "import joblib, numpy as np; joblib.dump({'a': np.arange(4, dtype=np.uint8)}, 'arrays.joblib')"
    assert run([PY, "-c", make], project).returncode == 0
    data = (project / "arrays.joblib").read_bytes()
    # Its shape, (4,): BININT1 4, TUPLE1, in the first frame; made BININT -1 (the
    # frame grows by the 3 bytes).
    assert data.count(b"K\x04\x85") == 1
    data = data.replace(b"K\x04\x85", b"J\xff\xff\xff\xff\x85")
    frame = struct.unpack("<Q", data[3:11])[0]
    data = data[:3] + struct.pack("<Q", frame + 3) + data[11:]
    (project / "arrays.joblib").write_bytes(data)
    pin(project, "arrays.joblib")
    write(project / "negative.py", LOAD_AND_SAY)
    plain = run([PY, "negative.py"], project)
    assert "negative dimensions" in plain.stdout, plain.stdout + plain.stderr
    write(project / "negative_views.py", VIEW_ALL + LOAD_AND_SAY)
    checked = guarded(project, "negative_views.py")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout == plain.stdout


@pytest.mark.parametrize("cut", ["in-array-data", "before-array-data"])
def test_a_short_file_fails_as_it_fails_plain(project, cut):
    """Not enforcing (a cut file does not match its pin), the load reads the copy
    of the short file: joblib's own error, raised at the same place."""
    data = (project / "arrays.joblib").read_bytes()
    # The large array's data starts 8,000 bytes before its values 1000.0, 1001.0.
    start = data.index(struct.pack("<2d", 1000.0, 1001.0)) - 8000
    end = start + 4096 if cut == "in-array-data" else start - 1
    assert end > 0
    (project / "arrays.joblib").write_bytes(data[:end])
    write(project / "short.py", LOAD_AND_SAY)
    plain = run([PY, "short.py"], project)
    assert plain.returncode == 0 and plain.stdout, plain.stderr
    warned = guarded(project, "short.py", mode="warn")
    assert warned.returncode == 0, warned.stderr
    assert warned.stdout == plain.stdout


def test_a_copy_that_cannot_be_mapped_is_read_as_plain(project):
    """Where the mapping cannot be made (a commit limit, say), joblib copies the
    arrays out of the verified stream as it always did."""
    write(
        project / "nomap.py",
        """
        import errno, os
        real_open = os.open

        def refusing_open(path, *args, **kwargs):
            if str(path).startswith("/proc/self/fd/"):
                raise OSError(errno.ENOMEM, "no room to map")
            return real_open(path, *args, **kwargs)

        os.open = refusing_open
        exec(open("app.py").read())
        """,
    )
    plain = run([PY, "app.py"], project)
    checked = guarded(project, "nomap.py")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout == plain.stdout  # the same values, all in memory of their own
    assert "in-copy" not in checked.stdout
