"""A library imported before ``pickleguard.activate()`` is called in code.

dill binds ``pickle.Unpickler`` as ``StockUnpickler`` at import, subclasses it, and
calls its methods through that name; activation rebinds the name to the guarded class.
"""

from __future__ import annotations

import subprocess
import sys

import dill

from conftest import Boom

from .conftest import clean_env


def test_dill_imported_before_activation_loads_listed_pickles_and_refuses_others(run_py, tmp_path):
    # Regression: dill subclasses the original C Unpickler and calls
    # `StockUnpickler.__init__(self, ...)` through a name activation rebinds to the
    # guarded class; its __init__ used super() and raised TypeError for an instance
    # of the original class, so every dill load failed, in warn mode too.
    sentinel = tmp_path / "sentinel"
    payload = dill.dumps(Boom(sentinel))
    fired = subprocess.run(
        [sys.executable, "-c", f"import dill; dill.loads({payload!r})"],
        env=clean_env(),
        capture_output=True,
    )
    assert fired.returncode == 0 and sentinel.exists(), "the payload must fire through dill"
    sentinel.rmdir()
    proc = run_py(
        f"""
        import dill, io, pickleguard

        def make_scaler(factor):
            return lambda x: x * factor

        scaler = dill.dumps(make_scaler(3))
        with open("m.toml", "w") as f:
            f.write(f'version = 1\\n[[pickle]]\\nsha256 = "{{pickleguard.identify(scaler)[7:]}}"\\n')
        pickleguard.activate("m.toml")
        print("loads", dill.loads(scaler)(2))
        stream = io.BytesIO(scaler + b"rest")
        print("load", dill.load(stream)(5), stream.read())
        try:
            dill.loads({payload!r})
        except pickleguard.NoPickleError as e:
            print("refused", e.code, e.sha256 == pickleguard.identify({payload!r})[7:], e.caller)
        """
    )
    assert proc.stdout.splitlines() == [
        "loads 6",
        "load 15 b'rest'",
        "refused not-listed True dill._dill:Unpickler.load",
    ]
    assert not sentinel.exists()
