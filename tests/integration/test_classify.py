"""A global the old denylist showed as harmless, with the real numpy: numpy.testing's
``runstring`` runs ``exec`` on its argument. A pickle that names it runs code when
loaded without pickleguard, and ``pickleguard inspect`` flags it RISKY without
loading it."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy  # noqa: F401  (installed: these tests never skip)
import pytest
from numpy.testing._private.utils import runstring

from conftest import assert_fires

from ._harness import pg

pytestmark = pytest.mark.integration


class _Runs:
    """Pickles to ``runstring(code, {})``."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (runstring, (self.code, {}))


@pytest.mark.parametrize("protocol", [2, 4])
def test_numpy_runstring_runs_code_and_inspect_flags_it(tmp_path: Path, protocol: int) -> None:
    sentinel = tmp_path / "sentinel"
    payload = pickle.dumps(_Runs(f"import os; os.mkdir({str(sentinel)!r})"), protocol=protocol)
    assert_fires(payload, sentinel)
    (tmp_path / "p.pkl").write_bytes(payload)
    proc = pg("inspect", "p.pkl", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "  RISKY numpy.testing._private.utils.runstring\n" in proc.stdout
    proc = pg("inspect", "--json", "p.pkl", cwd=tmp_path)
    result = json.loads(proc.stdout)["results"][0]
    assert result["classes"] == {"numpy.testing._private.utils.runstring": "risky"}
    assert not sentinel.exists()


def test_numpy_arrays_are_safe(tmp_path: Path) -> None:
    for protocol in (2, 5):
        path = tmp_path / f"a{protocol}.pkl"
        path.write_bytes(pickle.dumps([numpy.arange(3.0), numpy.float32(1)], protocol=protocol))
        proc = pg("inspect", "--json", path.name, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        classes = json.loads(proc.stdout)["results"][0]["classes"]
        assert classes and set(classes.values()) == {"safe"}, classes
