"""Stream pins through the libraries that load pickles for their users: numpy
(object arrays in .npy and .npz files, and np.load of a pickle file), pandas
(read_pickle, and the pickle_compat unpickler it falls back to), dill, cloudpickle
and shelve.

For each one, a small app makes its artifacts and loads them through the library.
`pickleguard record` must list what it loaded, `pickleguard run` must give the app
exactly the values a plain run gives it, and an artifact swapped for a payload
(shown to fire through the same library without the guard) must be refused with a
NoPickleError naming its sha256, before the payload runs.

Which entry point each library reaches:

- numpy: ``pickle.load(fp)`` on the open file, or on a ``zipfile.ZipExtFile`` for a
  member of an .npz; np.load of a pickle file re-raises every error as
  ``UnpicklingError`` (the NoPickleError stays in the chain).
- pandas.read_pickle: ``pickle.load`` on the open (possibly decompressing) file;
  on AttributeError, ImportError, TypeError or ValueError it seeks back and loads
  the same bytes again with ``pandas.compat.pickle_compat.Unpickler``, a
  ``pickle._Unpickler`` subclass.
- dill: ``dill.Unpickler``, a subclass of ``pickle.Unpickler`` (the guarded class when
  dill is imported after activation) whose ``load`` calls ``StockUnpickler.load(self)``,
  so every dill load is attributed to ``dill._dill:Unpickler.load``.
- cloudpickle: ``cloudpickle.loads`` is ``pickle.loads``, bound at import.
- shelve: ``Unpickler(BytesIO(value)).load()`` with ``pickle.Unpickler`` bound at import.
"""

from __future__ import annotations

import dbm
import gzip
import io
import pickle
import shelve
import subprocess
import sys
import zipfile
from pathlib import Path

import cloudpickle
import dill
import numpy as np
import pandas as pd
from numpy.lib import format as npy_format

import pickleguard
from conftest import Boom, hostile

from .conftest import clean_env, qualified


def identity(data: bytes) -> str:
    """The sha256 pickleguard gives the pickle at the start of `data`, as hex."""
    return pickleguard.identify(data)[len("sha256:") :]


def npy_pickle(f: io.BufferedIOBase) -> bytes:
    """The pickle numpy writes after the header of an .npy file holding an object array."""
    version = npy_format.read_magic(f)
    read_header = {
        (1, 0): npy_format.read_array_header_1_0,
        (2, 0): npy_format.read_array_header_2_0,
    }[version]
    _, _, dtype = read_header(f)
    assert dtype.hasobject
    return f.read()


def manifest_pins(path: Path) -> dict:
    """The manifest's entries, as {sha256: stack patterns}."""
    entries, _ = pickleguard._core.manifest_summary(str(path))
    return {
        identity.split(":", 1)[1]: stack
        for table, identities, stack in entries
        if table == "pickle"
        for identity in identities
    }


# ---------------------------------------------------------------------------
# numpy


NUMPY_NPY = """
    import numpy as np
    from fractions import Fraction
    from pathlib import Path

    def expected():
        objects = np.empty(5, dtype=object)
        objects[:] = [{"lr": 0.5}, Fraction(1, 3), "text", None, [1, (2, 3)]]
        return objects

    def load_objects():
        return np.load("objects.npy", allow_pickle=True)

    if not Path("objects.npy").exists():
        np.save("objects.npy", expected())
    objects = load_objects()
    print(objects.dtype, objects.shape, objects.tolist() == expected().tolist())
    print(repr(objects.tolist()), type(objects[1]).__name__)
"""


def test_numpy_load_of_an_object_array(make_app):
    app = make_app(NUMPY_NPY)
    output, summary = app.record_then_enforce()
    assert output.splitlines()[0] == "object (5,) True"
    with open(app.dir / "objects.npy", "rb") as f:
        recorded = identity(npy_pickle(f))
    caller = qualified(npy_format.read_array)
    assert summary["loads"] == 1
    assert [(a["sha256"], a["caller"], a["source"]) for a in summary["added"]] == [
        (recorded, caller, "objects.npy")
    ]
    assert manifest_pins(app.dir / "pickleguard.toml") == {recorded: [caller]}

    # Technique: swap the .npy for an object array whose element runs os.mkdir.
    sentinel = app.dir / "sentinel"
    np.save(app.dir / "objects.npy", np.array([Boom(sentinel), 1], dtype=object))
    with open(app.dir / "objects.npy", "rb") as f:
        payload = identity(npy_pickle(f))
    app.assert_fires(sentinel)
    app.assert_refused(payload, caller, sentinel)


NUMPY_NPZ = """
    import numpy as np
    from decimal import Decimal
    from pathlib import Path

    def expected():
        objects = np.empty((2, 2), dtype=object)
        objects[0] = ["a", Decimal("1.25")]
        objects[1] = [b"raw", {"k": [1, 2]}]
        return {"objects": objects, "numbers": np.linspace(0.0, 1.0, 5)}

    if not Path("bundle.npz").exists():
        np.savez("bundle.npz", **expected())
    with np.load("bundle.npz", allow_pickle=True) as bundle:
        objects, numbers = bundle["objects"], bundle["numbers"]
    print(objects.shape, objects.tolist() == expected()["objects"].tolist())
    print(repr(objects.tolist()))
    print(np.array_equal(numbers, expected()["numbers"]), numbers.tolist())
"""


def test_numpy_load_of_an_npz_with_an_object_array(make_app):
    app = make_app(NUMPY_NPZ)
    output, summary = app.record_then_enforce()
    assert output.splitlines()[0] == "(2, 2) True"
    with zipfile.ZipFile(app.dir / "bundle.npz") as z, z.open("objects.npy") as f:
        recorded = identity(npy_pickle(f))
    caller = qualified(npy_format.read_array)
    # Only the object array is a pickle; the numbers are raw array data.
    assert summary["loads"] == 1
    assert [(a["sha256"], a["caller"], a["source"]) for a in summary["added"]] == [
        (recorded, caller, "objects.npy")  # the zip member's name
    ]
    assert manifest_pins(app.dir / "pickleguard.toml") == {recorded: [caller]}

    # Technique: rewrite the archive with an object array whose element runs os.mkdir.
    sentinel = app.dir / "sentinel"
    np.savez(
        app.dir / "bundle.npz",
        objects=np.array([Boom(sentinel)], dtype=object),
        numbers=np.zeros(5),
    )
    with zipfile.ZipFile(app.dir / "bundle.npz") as z, z.open("objects.npy") as f:
        payload = identity(npy_pickle(f))
    app.assert_fires(sentinel)
    app.assert_refused(payload, caller, sentinel)


NUMPY_PICKLE_FILE = """
    import pickle
    from pathlib import Path
    import numpy as np

    def expected():
        return {"weights": [0.25, 0.5], "labels": ("cat", "dog")}

    if not Path("model.pkl").exists():
        Path("model.pkl").write_bytes(pickle.dumps(expected()))
    model = np.load("model.pkl", allow_pickle=True)
    print(model == expected(), repr(model))
"""


def test_numpy_load_of_a_pickle_file_keeps_the_denial_in_the_chain(make_app):
    app = make_app(NUMPY_PICKLE_FILE)
    _, summary = app.record_then_enforce()
    recorded = identity((app.dir / "model.pkl").read_bytes())
    caller = qualified(np.load)
    assert [(a["sha256"], a["caller"], a["source"]) for a in summary["added"]] == [
        (recorded, caller, "model.pkl")
    ]

    sentinel = app.dir / "sentinel"
    (app.dir / "model.pkl").write_bytes(hostile(sentinel))
    app.assert_fires(sentinel)
    refused = app.assert_refused(identity(hostile(sentinel)), caller, sentinel)
    # np.load turns every error of a pickle file into UnpicklingError: code that
    # catches it sees a denial as a damaged file, but the NoPickleError is its cause.
    assert (
        refused.stderr.rstrip()
        .splitlines()[-1]
        .startswith("_pickle.UnpicklingError: Failed to interpret file 'model.pkl' as a pickle")
    )
    assert "The above exception was the direct cause" in refused.stderr


# ---------------------------------------------------------------------------
# pandas


PANDAS = """
    from pathlib import Path
    import pandas as pd

    def expected():
        return pd.DataFrame(
            {
                "city": ["Oslo", "Lima", "Pune"],
                "temp": [3.5, 19.0, 31.25],
                "when": pd.to_datetime(["2024-01-02", "2024-02-03", "2024-03-04"]),
                "tag": pd.Categorical(["a", "b", "a"]),
            },
            index=pd.Index([10, 20, 30], name="id"),
        )

    if not Path("frame.pkl").exists():
        expected().to_pickle("frame.pkl")
        expected()["temp"].to_pickle("temps.pkl.gz")  # gzip, from the name
    frame = pd.read_pickle("frame.pkl")
    pd.testing.assert_frame_equal(frame, expected(), check_exact=True)
    temps = pd.read_pickle("temps.pkl.gz")
    pd.testing.assert_series_equal(temps, expected()["temp"], check_exact=True)
    print("frame", frame.dtypes.to_dict(), frame.to_dict("list"))
    print("temps", temps.name, temps.to_list())
"""


def test_pandas_read_pickle(make_app):
    app = make_app(PANDAS)
    _, summary = app.record_then_enforce()
    frame = identity((app.dir / "frame.pkl").read_bytes())
    temps = identity(gzip.decompress((app.dir / "temps.pkl.gz").read_bytes()))
    caller = qualified(pd.read_pickle)
    assert summary["loads"] == 2
    assert sorted((a["sha256"], a["caller"], a["source"]) for a in summary["added"]) == sorted(
        [(frame, caller, "frame.pkl"), (temps, caller, "temps.pkl.gz")]
    )
    assert manifest_pins(app.dir / "pickleguard.toml") == {frame: [caller], temps: [caller]}

    # Technique: swap the frame for one with an object column whose cell runs os.mkdir.
    sentinel = app.dir / "sentinel"
    pd.DataFrame({"city": [Boom(sentinel)]}).to_pickle(app.dir / "frame.pkl")
    payload = identity((app.dir / "frame.pkl").read_bytes())
    app.assert_fires(sentinel)
    app.assert_refused(payload, caller, sentinel)


# How pandas 1.x pickled an integer index: as pandas.core.indexes.numeric.Int64Index,
# a module pandas 2 removed. Plain pickle fails on it with ModuleNotFoundError, so
# read_pickle loads it again with pandas.compat.pickle_compat.Unpickler, which maps
# the old name to pandas.Index.
LEGACY_INDEX = b"cpandas.core.indexes.numeric\nInt64Index\n"

PANDAS_LEGACY = """
    import pickle
    from pathlib import Path
    import pandas as pd

    def expected():
        return pd.DataFrame(
            {"city": ["Oslo", "Lima"], "temp": [3.5, 19.0]}, index=pd.Index([10, 20])
        )

    def legacy_pickle():
        data = pickle.dumps(expected(), protocol=2)
        assert data.count(b"cpandas\\nIndex\\n") == 1
        return data.replace(b"cpandas\\nIndex\\n", LEGACY_INDEX)

    LEGACY_INDEX = {legacy!r}
    if not Path("legacy.pkl").exists():
        Path("legacy.pkl").write_bytes(legacy_pickle())
    frame = pd.read_pickle("legacy.pkl")
    pd.testing.assert_frame_equal(frame, expected(), check_exact=True)
    print(type(frame.index).__name__, frame.index.dtype, frame.to_dict("list"))
"""


def test_pandas_read_pickle_through_its_fallback_unpickler(make_app):
    app = make_app(PANDAS_LEGACY.replace("{legacy!r}", repr(LEGACY_INDEX)))
    _, summary = app.record_then_enforce()
    # The first attempt, plain pickle.load, fails; read_pickle can only have
    # succeeded through pickle_compat.
    first = subprocess.run(
        [sys.executable, "-c", "import pickle; pickle.load(open('legacy.pkl', 'rb'))"],
        cwd=app.dir,
        env=clean_env(),
        capture_output=True,
        text=True,
    )
    assert "ModuleNotFoundError: No module named 'pandas.core.indexes.numeric'" in first.stderr
    legacy = identity((app.dir / "legacy.pkl").read_bytes())
    caller = qualified(pd.read_pickle)
    # Both attempts were judged, on the same bytes: one entry, two loads.
    assert summary["loads"] == 2
    assert [(a["sha256"], a["caller"], a["source"]) for a in summary["added"]] == [
        (legacy, caller, "legacy.pkl")
    ]
    assert manifest_pins(app.dir / "pickleguard.toml") == {legacy: [caller]}

    # Technique: a payload that fails plain pickle.load before it does anything, and
    # runs os.mkdir only in the fallback unpickler (which maps the legacy name).
    sentinel = app.dir / "sentinel"
    boom = pickle.dumps(Boom(sentinel), protocol=2)
    payload = boom[:2] + LEGACY_INDEX + pickle.POP + boom[2:]
    (app.dir / "legacy.pkl").write_bytes(payload)
    app.assert_fires(sentinel)
    # The guarded first attempt refuses it; NoPickleError is not one of the errors
    # read_pickle falls back on, so pickle_compat never sees the payload.
    refused = app.assert_refused(identity(payload), caller, sentinel)
    assert "pickle_compat" not in refused.stderr


def test_pandas_fallback_gets_no_second_chance_at_undelimited_input(make_app):
    app = make_app(PANDAS_LEGACY.replace("{legacy!r}", repr(LEGACY_INDEX)))
    app.record_then_enforce()
    # Technique: the fallback-only payload without its STOP. Plain pickle_compat runs
    # os.mkdir before it meets the end of the input; pickleguard cannot delimit it,
    # so neither the first attempt nor a fallback may run any of it.
    sentinel = app.dir / "sentinel"
    boom = pickle.dumps(Boom(sentinel), protocol=2)
    payload = boom[:2] + LEGACY_INDEX + pickle.POP + boom[2:-1]
    (app.dir / "legacy.pkl").write_bytes(payload)
    app.assert_fires(sentinel)
    refused = app.enforce()
    assert refused.returncode == 1
    assert refused.stderr.rstrip().splitlines()[-1] == "EOFError: Ran out of input"
    assert not sentinel.exists()


# ---------------------------------------------------------------------------
# dill and cloudpickle


DILL = """
    from pathlib import Path
    import dill

    def make_scaler(factor):
        offset = 1
        return lambda x: x * factor + offset  # a closure; plain pickle cannot dump it

    def load_scaler():
        with open("scaler.dill", "rb") as f:
            return dill.load(f)

    if not Path("scaler.dill").exists():
        with open("scaler.dill", "wb") as f:
            dill.dump(make_scaler(3), f)
        Path("square.dill").write_bytes(dill.dumps(lambda x: x**2))
    scale = load_scaler()
    square = dill.loads(Path("square.dill").read_bytes())
    print("scaler", [scale(x) for x in range(4)], [c.cell_contents for c in scale.__closure__])
    print("square", [square(x) for x in range(4)])
"""


def test_dill_load_and_loads_of_a_closure_and_a_lambda(make_app):
    app = make_app(DILL)
    output, summary = app.record_then_enforce()
    assert output.splitlines() == [
        "scaler [1, 4, 7, 10] [3, 1]",
        "square [0, 1, 4, 9]",
    ]
    scaler = identity((app.dir / "scaler.dill").read_bytes())
    square = identity((app.dir / "square.dill").read_bytes())
    # Every dill load is attributed to dill's own Unpickler.load, which calls the
    # guarded pickle.Unpickler.load: the app's call site is not the caller.
    caller = qualified(dill.Unpickler.load)
    assert summary["loads"] == 2
    assert sorted((a["sha256"], a["caller"], a["source"]) for a in summary["added"]) == sorted(
        [(scaler, caller, "scaler.dill"), (square, caller, None)]
    )
    manifest = app.manifest()
    assert (
        manifest.count("# RISKY imports, review before trusting: dill._dill._create_function") == 2
    )
    assert manifest_pins(app.dir / "pickleguard.toml") == {scaler: [caller], square: [caller]}

    # Technique: swap the closure for a payload dill itself pickled.
    sentinel = app.dir / "sentinel"
    payload = dill.dumps(Boom(sentinel))
    (app.dir / "scaler.dill").write_bytes(payload)
    app.assert_fires(sentinel)
    app.assert_refused(identity(payload), caller, sentinel)


CLOUDPICKLE = """
    from pathlib import Path
    import cloudpickle

    def load_transform():
        return cloudpickle.loads(Path("transform.pkl").read_bytes())

    if not Path("transform.pkl").exists():
        suffix = "!"
        Path("transform.pkl").write_bytes(cloudpickle.dumps(lambda s: s.strip().title() + suffix))
    transform = load_transform()
    print([transform(s) for s in ["  ada lovelace", "alan turing "]], transform.__name__)
"""


def test_cloudpickle_loads_of_a_lambda(make_app):
    app = make_app(CLOUDPICKLE)
    output, summary = app.record_then_enforce()
    assert output == "['Ada Lovelace!', 'Alan Turing!'] <lambda>\n"
    recorded = identity((app.dir / "transform.pkl").read_bytes())
    # cloudpickle.loads is pickle.loads itself: the app's function is the caller.
    caller = "__main__:load_transform"
    assert summary["loads"] == 1
    assert [(a["sha256"], a["caller"]) for a in summary["added"]] == [(recorded, caller)]
    assert manifest_pins(app.dir / "pickleguard.toml") == {recorded: [caller]}

    # Technique: swap the lambda for a payload cloudpickle itself pickled.
    sentinel = app.dir / "sentinel"
    payload = cloudpickle.dumps(Boom(sentinel))
    (app.dir / "transform.pkl").write_bytes(payload)
    app.assert_fires(sentinel)
    app.assert_refused(identity(payload), caller, sentinel)


# ---------------------------------------------------------------------------
# shelve


SHELVE = """
    import dbm
    import shelve
    from fractions import Fraction

    def expected():
        return {"lr": Fraction(1, 2), "layers": (3, 4), "names": ["in", "out"]}

    def read_config():
        with shelve.open("settings", flag="r") as db:
            return db["config"], sorted(db)

    if dbm.whichdb("settings") is None:
        with shelve.open("settings") as db:
            db["config"] = expected()
            db["unused"] = "never read"
    config, keys = read_config()
    print(config == expected(), repr(config), keys)
"""


def test_shelve_read_of_a_value(make_app):
    app = make_app(SHELVE)
    output, summary = app.record_then_enforce()
    assert output.startswith("True {'lr': Fraction(1, 2)")
    with dbm.open(str(app.dir / "settings"), "r") as db:
        recorded = identity(db[b"config"])
    caller = qualified(shelve.Shelf.__getitem__)
    # Only the value read is unpickled; listing the keys loads nothing.
    assert summary["loads"] == 1
    assert [(a["sha256"], a["caller"]) for a in summary["added"]] == [(recorded, caller)]
    assert manifest_pins(app.dir / "pickleguard.toml") == {recorded: [caller]}

    # Technique: write a payload into the shelf under the key the app reads.
    sentinel = app.dir / "sentinel"
    with shelve.open(str(app.dir / "settings")) as db:
        db["config"] = Boom(sentinel)
    with dbm.open(str(app.dir / "settings"), "r") as db:
        payload = identity(db[b"config"])
    app.assert_fires(sentinel)
    app.assert_refused(payload, caller, sentinel)
