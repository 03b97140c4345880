"""Red team: the basic REDUCE payload is refused at every loading entry point.

Each entry point is shown to run the payload without pickleguard, then to refuse
it under ``pickleguard.activate(<empty manifest>)``, in fresh interpreters.
"""

from __future__ import annotations

import pytest

from ._harness import fire_then_refuse, reduce_payload, scenario

# Technique (all cases): REDUCE of os.mkdir, loaded through the named entry point.
# name -> (setup run before activation, code that loads DATA)
ENTRY_POINTS = {
    "pickle.loads": ("", "pickle.loads(DATA)"),
    "pickle.load": ("import io", "pickle.load(io.BytesIO(DATA))"),
    "pickle.Unpickler": ("import io", "pickle.Unpickler(io.BytesIO(DATA)).load()"),
    "_pickle.loads": ("import _pickle", "_pickle.loads(DATA)"),
    "_pickle.load": ("import io, _pickle", "_pickle.load(io.BytesIO(DATA))"),
    "_pickle.Unpickler": ("import io, _pickle", "_pickle.Unpickler(io.BytesIO(DATA)).load()"),
    "pickle._loads": ("", "pickle._loads(DATA)"),
    "pickle._Unpickler": ("import io", "pickle._Unpickler(io.BytesIO(DATA)).load()"),
    # multiprocessing binds ForkingPickler.loads = pickle.loads at import time,
    # here before activation.
    "multiprocessing.reduction.ForkingPickler.loads": (
        "import multiprocessing.reduction as reduction",
        "reduction.ForkingPickler.loads(DATA)",
    ),
    # The same, with the module imported only after activation.
    "ForkingPickler.loads imported after activation": (
        "",
        "import multiprocessing.reduction as reduction\nreduction.ForkingPickler.loads(DATA)",
    ),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_reduce_payload_is_refused_at_entry_point(entry, run_py, tmp_path):
    setup, load = ENTRY_POINTS[entry]
    sentinel = tmp_path / "sentinel"
    fire_then_refuse(run_py, tmp_path, reduce_payload(sentinel), sentinel, setup=setup, load=load)


# shelve: the control step writes the shelf without the guard, storing the raw
# hostile pickle in the underlying dbm (shelve would pickle a value itself), then
# reads it back through the shelf; the guarded step reads the same shelf.
SHELF_WRITE = """
db = shelve.open({shelf!r})
db.dict[b"k"] = DATA
db.close()
"""
SHELF_READ = """
with shelve.open({shelf!r}) as db:
    db["k"]
"""


@pytest.mark.parametrize("imported", ["before activation", "after activation"])
def test_reduce_payload_is_refused_through_shelve(imported, run_py, tmp_path):
    # Technique: REDUCE of os.mkdir stored as a shelf value, loaded by Shelf.__getitem__
    # (shelve's own `Unpickler`, bound at import time when imported before activation).
    sentinel = tmp_path / "sentinel"
    shelf = str(tmp_path / "shelf")
    payload = reduce_payload(sentinel)
    setup = "import shelve" if imported == "before activation" else ""
    write = "import shelve\n" + SHELF_WRITE.format(shelf=shelf)
    read = "import shelve\n" + SHELF_READ.format(shelf=shelf)
    control = scenario(
        run_py, tmp_path, payload, sentinel, guarded=False, setup=setup, load=write + read
    )
    assert control["sentinel"] is True, control
    sentinel.rmdir()
    result = scenario(run_py, tmp_path, payload, sentinel, guarded=True, setup=setup, load=read)
    assert result["outcome"] == "refused", result
    assert result["code"] == "not-listed", result
    assert result["sentinel"] is False, result
    assert not sentinel.exists()
