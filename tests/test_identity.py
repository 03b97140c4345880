"""BLAKE3 as an alternative identity, beside SHA-256, and [[artifact]] pins in code."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import pytest

import pickleguard
from conftest import assert_fires, hostile


def test_identify_speaks_both_algorithms():
    data = pickle.dumps({"a": 1})
    sha = pickleguard.identify(data)
    assert sha == "sha256:" + hashlib.sha256(data).hexdigest()
    b3 = pickleguard.identify(data, algorithm="blake3")
    assert b3.startswith("blake3:") and len(b3) == len("blake3:") + 64
    assert b3[7:] != sha[7:]
    # Only the pickle at the start counts, for both.
    assert pickleguard.identify(data + b"trailing", algorithm="blake3") == b3
    with pytest.raises(ValueError, match="sha256.*blake3"):
        pickleguard.identify(data, algorithm="md5")


def test_blake3_entries_allow_and_sha256_entries_keep_working(run_py, tmp_path: Path):
    good_b3 = pickle.dumps(["b3"])
    good_sha = pickle.dumps(["sha"])
    evil = hostile(tmp_path / "PWNED")
    assert_fires(evil, tmp_path / "PWNED")
    b3 = pickleguard.identify(good_b3, algorithm="blake3").split(":")[1]
    sha = pickleguard.identify(good_sha).split(":")[1]
    (tmp_path / "m.toml").write_text(
        f'version = 1\n[[pickle]]\nblake3 = "{b3}"\n[[pickle]]\nsha256 = "{sha}"\n'
    )
    result = run_py(
        f"""
        import pickle, pickleguard
        pickleguard.activate("m.toml")
        print(pickle.loads({good_b3!r}), pickle.loads({good_sha!r}))
        try:
            pickle.loads({evil!r})
        except pickleguard.NoPickleError as e:
            print(e.code, e.kind, e.identity.split(":")[0], e.sha256 in e.entry)
        """
    )
    assert result.stdout.split("\n")[0] == "['b3'] ['sha']"
    # A manifest that pins with both suggests SHA-256, the default.
    assert result.stdout.split("\n")[1] == "not-listed pickle sha256 True"
    assert not (tmp_path / "PWNED").exists()


def test_a_blake3_manifest_suggests_blake3_entries(run_py, tmp_path: Path):
    listed = pickle.dumps(1)
    evil = hostile(tmp_path / "PWNED")
    assert_fires(evil, tmp_path / "PWNED")
    b3 = pickleguard.identify(listed, algorithm="blake3").split(":")[1]
    (tmp_path / "m.toml").write_text(f'version = 1\n[[pickle]]\nblake3 = "{b3}"\n')
    result = run_py(
        f"""
        import pickle, pickleguard
        pickleguard.activate("m.toml")
        try:
            pickle.loads({evil!r})
        except pickleguard.NoPickleError as e:
            print(e.identity)
            print(e.entry)
        """
    )
    expected = pickleguard.identify(evil, algorithm="blake3")
    assert result.stdout.startswith(expected + "\n[[pickle]]\nblake3 = ")
    assert not (tmp_path / "PWNED").exists()


def test_grants_and_pins_take_either_algorithm(run_py, tmp_path: Path):
    data = pickle.dumps({"x": 2})
    b3 = pickleguard.identify(data, algorithm="blake3")
    result = run_py(
        f"""
        import pickle, pickleguard
        token = pickleguard.activate(None)
        with pickleguard.allow_pickles(token, only_objects=[{b3!r}]):
            print(pickle.loads({data!r}))
        """
    )
    assert result.stdout.split("\n")[0] == "{'x': 2}"
    pinned = run_py(
        f"""
        import pickleguard
        print(pickleguard.loads({data!r}, sha256={b3!r}))
        try:
            pickleguard.loads({data!r}, sha256="blake3:" + "0" * 64)
        except pickleguard.NoPickleError as e:
            print(e.code)
        """
    )
    assert pinned.stdout.split() == ["{'x':", "2}", "pin-mismatch"]


def test_artifact_pins_in_code(run_py, tmp_path: Path):
    """The adapter protocol, without any ML library: admit the whole file, then
    the pickles read out of it inside the block are covered; outside they are not."""
    blob = pickle.dumps("header") + b"\x00raw array bytes\xff" + pickle.dumps("tail")
    (tmp_path / "model.bin").write_bytes(blob)
    digest = hashlib.sha256(blob).hexdigest()
    (tmp_path / "m.toml").write_text(
        f'version = 1\n[[artifact]]\nsha256 = "{digest}"\nsource = "model.bin"\n'
    )
    result = run_py(
        """
        import io, pickle, pickleguard
        from pickleguard import _core
        pickleguard.activate("m.toml")
        data = open("model.bin", "rb").read()
        with _core.verify_artifact(data, source="model.bin", loader="test"):
            f = io.BytesIO(data)
            print(pickle.load(f), _core.in_artifact())
            f.read(17)  # the raw bytes between the pickles
            print(pickle._Unpickler(f).load())
        print(_core.in_artifact())
        try:
            pickle.loads(data)
        except pickleguard.NoPickleError as e:
            print(e.code, e.kind)
        try:
            _core.verify_artifact(data + b"!", source="model.bin", loader="test")
        except pickleguard.NoPickleError as e:
            print(e.code, e.kind, "[[artifact]]" in e.entry, "read by test" in str(e))
        """
    )
    assert result.stdout.split("\n")[:5] == [
        "header True",
        "tail",
        "False",
        "not-listed pickle",
        "not-listed artifact True True",
    ]


def test_an_admitted_artifact_block_is_entered_once(run_py):
    result = run_py(
        """
        import pickleguard
        from pickleguard import _core
        pickleguard.activate(None, mode="warn")
        scope = _core.verify_artifact(b"weights")
        with scope:
            pass
        try:
            with scope:
                print("entered twice")
        except pickleguard.BadTokenError as e:
            print("refused:", e)
        """
    )
    assert result.stdout.startswith(
        "refused: an admitted artifact's block can be entered only once"
    )
