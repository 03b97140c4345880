"""A denial never tells a reviewer something false: a changed file that an entry
names as its source says it was pinned with another hash (both hashes, the entry's
line), and a hash that is in the manifest under the other kind of entry says so."""

from __future__ import annotations

import hashlib
import json
import pickle

import pytest

pytestmark = pytest.mark.usefixtures("wheel_installed")

LOAD_AND_REPORT = """
import json, pickle, pickleguard
pickleguard.activate("m.toml")
try:
    {load}
except pickleguard.NoPickleError as e:
    print(json.dumps({{"code": e.code, "message": str(e)}}))
"""


def test_a_changed_file_names_both_hashes_and_the_entry_line(run_py, tmp_path):
    old = pickle.dumps({"weights": [1, 2, 3]})
    new = pickle.dumps({"weights": [1, 2, 4]})
    (tmp_path / "m.toml").write_text(
        "version = 1\n\n[[pickle]]\n"
        f'sha256 = "{hashlib.sha256(old).hexdigest()}"\nsource = "model.pkl"\n'
    )
    (tmp_path / "model.pkl").write_bytes(new)
    proc = run_py(LOAD_AND_REPORT.format(load="pickle.load(open('model.pkl', 'rb'))"))
    result = json.loads(proc.stdout)
    assert result["code"] == "not-listed"
    message = result["message"]
    assert "model.pkl was pinned with another hash" in message, message
    assert f"m.toml:4 has sha256:{hashlib.sha256(old).hexdigest()}" in message
    assert f"the file now has sha256:{hashlib.sha256(new).hexdigest()}" in message


def test_a_hash_pinned_as_an_artifact_is_named_when_pickle_load_refuses_it(run_py, tmp_path):
    data = pickle.dumps([1, 2])
    (tmp_path / "m.toml").write_text(
        f'version = 1\n\n[[artifact]]\nsha256 = "{hashlib.sha256(data).hexdigest()}"\n'
    )
    proc = run_py(LOAD_AND_REPORT.format(load=f"pickle.loads({data!r})"))
    message = json.loads(proc.stdout)["message"]
    assert "as a [[pickle]] entry: its hash is there as an [[artifact]] entry" in message, message
    assert "m.toml:4" in message
