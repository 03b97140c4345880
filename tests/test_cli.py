"""The command line: exit codes, messages with hints, --json, and the bundled demo."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest

from conftest import OLD_MULTIPROCESSING_RULE, REPO
from conftest import run_cli as cli

MANIFESTS = sorted((REPO / "manifests").glob("*.toml"))


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_every_bundled_manifest_loads(manifest):
    import pickleguard._core as core

    assert core.check_manifest(str(manifest)) >= 1
    assert cli("check", str(manifest)).returncode == 0


def test_check_reports_position_and_hint(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('version = 1\n\n[[pickle]]\nsha256 = "' + "a" * 64 + '"\nstak = ["x:y"]\n')
    proc = cli("check", str(bad))
    assert proc.returncode == 1
    assert f"error: {bad}:5:1: unknown field `stak`" in proc.stderr
    assert "hint: " in proc.stderr
    proc = cli("check", "--json", str(bad))
    report = json.loads(proc.stdout)
    assert report["status"] == 1 and report["results"][0]["ok"] is False


def test_check_bad_pattern_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('version = 1\n[[pickle]]\nsha256 = "' + "a" * 64 + '"\nstack = ["nocolon"]\n')
    proc = cli("check", str(bad))
    assert proc.returncode == 1 and f"{bad}:4:11:" in proc.stderr
    assert cli("check", str(tmp_path / "missing.toml")).returncode == 2


def test_hash_lists_each_pickle_of_a_concatenated_file(tmp_path):
    import pickleguard

    first, second = pickle.dumps({"a": 1}), pickle.dumps([2, 3], protocol=0)
    path = tmp_path / "many.pkl"
    path.write_bytes(first + second)
    report = json.loads(cli("hash", "--json", str(path)).stdout)
    pickles = report["results"][0]["pickles"]
    assert [p["size"] for p in pickles] == [len(first), len(second)]
    assert ["sha256:" + p["sha256"] for p in pickles] == [
        pickleguard.identify(first),
        pickleguard.identify(second),
    ]
    human = cli("hash", str(path))
    assert human.returncode == 0 and pickleguard.identify(second) in human.stdout


def test_hash_prints_blake3_identities_on_request(tmp_path):
    import pickleguard

    data = pickle.dumps({"a": 1})
    path = tmp_path / "one.pkl"
    path.write_bytes(data)
    report = json.loads(cli("hash", "--identity", "blake3", "--json", str(path)).stdout)
    result = report["results"][0]
    assert "sha256" not in result and len(result["blake3"]) == 64
    assert "blake3:" + result["pickles"][0]["blake3"] == pickleguard.identify(
        data, algorithm="blake3"
    )
    human = cli("hash", "--identity", "blake3", str(path)).stdout
    assert f"file blake3:{result['blake3']}" in human


def test_check_names_a_digest_under_the_wrong_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('version = 1\n[[pickle]]\nsha256 = "blake3:' + "a" * 64 + '"\n')
    proc = cli("check", str(bad))
    assert proc.returncode == 1
    assert "is a blake3 digest, but this is a sha256 value" in proc.stderr


def test_hash_of_a_damaged_file_is_a_finding(tmp_path):
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps(list(range(100)))[:-3])
    proc = cli("hash", str(path))
    assert proc.returncode == 1 and "hint:" in proc.stderr


def test_usage_errors_exit_2():
    assert cli().returncode == 2
    assert cli("frobnicate").returncode == 2
    assert cli("hash").returncode == 2


def test_demo_runs_end_to_end(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "demo.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "loaded: epoch 3" in proc.stdout
    assert "refused: pickle sha256:" in proc.stdout
    assert not (tmp_path / "sentinel").exists()


def test_inspect_lists_globals_without_loading(tmp_path):
    from conftest import assert_fires, hostile

    sentinel = tmp_path / "sentinel"
    (tmp_path / "p.pkl").write_bytes(hostile(sentinel, protocol=4))
    assert_fires(hostile(sentinel, protocol=4), sentinel)
    proc = cli("inspect", "p.pkl", cwd=tmp_path)
    assert proc.returncode == 1  # a risky import is a finding
    assert "RISKY posix.mkdir" in proc.stdout
    assert not sentinel.exists()
    import collections

    (tmp_path / "ok.pkl").write_bytes(pickle.dumps(collections.OrderedDict(a=1), protocol=2))
    proc = cli("inspect", "--json", "ok.pkl", cwd=tmp_path)
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["results"][0]["imports"] == ["collections.OrderedDict"]


def calling(module: str, name: str, protocol: int) -> bytes:
    """A pickle that imports ``module.name`` and calls it with one string, written
    by hand: for inspecting only (some of these modules are gone from Python 3.12)."""
    if protocol == 0:
        return f"c{module}\n{name}\n(S'x'\ntR.".encode()
    text = b"".join(b"\x8c" + bytes([len(s)]) + s.encode() for s in (module, name))
    return b"\x80\x04" + text + b"\x93\x8c\x01x\x85R."  # STACK_GLOBAL, then a call


# Shown as not risky by the old denylist; the first was confirmed to run exec (see
# tests/integration/test_classify.py for a load that does).
MISSED = [
    ("numpy.testing._private.utils", "runstring"),
    ("pydoc", "locate"),
    ("distutils.spawn", "spawn"),
    ("logging.config", "listen"),
    ("zipimport", "zipimporter"),
]


@pytest.mark.parametrize("protocol", [0, 4])
@pytest.mark.parametrize("module, name", MISSED, ids=[f"{m}.{n}" for m, n in MISSED])
def test_inspect_flags_globals_a_denylist_missed(tmp_path, module, name, protocol):
    (tmp_path / "p.pkl").write_bytes(calling(module, name, protocol))
    proc = cli("inspect", "p.pkl", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout  # a risky import is a finding
    assert f"  RISKY {module}.{name}\n" in proc.stdout
    report = json.loads(cli("inspect", "--json", "p.pkl", cwd=tmp_path).stdout)
    result = report["results"][0]
    assert result["risky"] == [f"{module}.{name}"] and result["review"] == []
    assert result["classes"] == {f"{module}.{name}": "risky"}


def test_inspect_passes_known_data_constructors(tmp_path):
    import collections

    (tmp_path / "ok.pkl").write_bytes(pickle.dumps(collections.OrderedDict(a=1)))
    proc = cli("inspect", "ok.pkl", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout
    assert "  collections.OrderedDict\n" in proc.stdout
    assert "RISKY" not in proc.stdout and "REVIEW" not in proc.stdout
    result = json.loads(cli("inspect", "--json", "ok.pkl", cwd=tmp_path).stdout)["results"][0]
    assert result["classes"] == {"collections.OrderedDict": "safe"}
    assert result["risky"] == [] and result["review"] == []


@pytest.mark.parametrize("protocol", [0, 4])
def test_inspect_shows_unknown_classes_for_review_without_a_finding(tmp_path, protocol):
    (tmp_path / "m.pkl").write_bytes(calling("mylib", "Model", protocol))
    proc = cli("inspect", "m.pkl", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout  # REVIEW alone is not a finding
    assert "  REVIEW mylib.Model\n" in proc.stdout and "RISKY" not in proc.stdout
    result = json.loads(cli("inspect", "--json", "m.pkl", cwd=tmp_path).stdout)["results"][0]
    assert result["risky"] == [] and result["review"] == ["mylib.Model"]
    assert result["classes"] == {"mylib.Model": "review"}


def test_inspect_classifies_a_defaultdict_factory_on_its_own(tmp_path):
    (tmp_path / "d.pkl").write_bytes(b"ccollections\ndefaultdict\n(cmylib\nmake\ntR.")
    (tmp_path / "e.pkl").write_bytes(b"ccollections\ndefaultdict\n(cposix\nsystem\ntR.")
    proc = cli("inspect", "d.pkl", "e.pkl", cwd=tmp_path)
    assert proc.returncode == 1
    assert "  collections.defaultdict\n  REVIEW mylib.make\n" in proc.stdout
    assert "  collections.defaultdict\n  RISKY posix.system\n" in proc.stdout


def test_hash_and_inspect_look_inside_zip_checkpoints(tmp_path):
    import zipfile

    import pickleguard

    inner = pickle.dumps({"state": [1, 2]}, protocol=2)
    with zipfile.ZipFile(tmp_path / "model.pt", "w") as archive:
        archive.writestr("model/data.pkl", inner)
        archive.writestr("model/data/0", b"\x00" * 16)
    report = json.loads(cli("hash", "--json", "model.pt", cwd=tmp_path).stdout)
    member = report["results"][0]["members"][0]
    assert member["name"] == "model/data.pkl"
    assert "sha256:" + member["pickles"][0]["sha256"] == pickleguard.identify(inner)
    assert cli("inspect", "model.pt", cwd=tmp_path).returncode == 0


def test_hash_of_an_empty_file_is_a_finding(tmp_path):
    (tmp_path / "empty.pkl").write_bytes(b"")
    proc = cli("hash", "empty.pkl", cwd=tmp_path)
    assert proc.returncode == 1 and "empty" in proc.stderr


def test_a_pickle_that_contains_a_zip_record_is_still_inspected(tmp_path):
    from conftest import assert_fires, hostile

    sentinel = tmp_path / "sentinel"
    payload = hostile(sentinel, protocol=2)
    assert_fires(payload, sentinel)
    # The payload, then a list holding bytes that look like a zip's end record.
    data = payload[:-1] + pickle.dumps(b"PK\x05\x06" + b"\0" * 18, protocol=2)[2:-1] + b"\x86."
    (tmp_path / "d.pkl").write_bytes(data)
    proc = cli("inspect", "d.pkl", cwd=tmp_path)
    assert proc.returncode == 1 and "RISKY posix.mkdir" in proc.stdout
    assert not sentinel.exists()


def test_a_damaged_zip_is_a_finding_not_a_crash(tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "m.pt", "w") as archive:
        archive.writestr("m/data.pkl", pickle.dumps([1]))
    raw = bytearray((tmp_path / "m.pt").read_bytes())
    at = raw.index(b"PK\x01\x02")
    raw[at : at + 4] = b"XXXX"
    (tmp_path / "m.pt").write_bytes(bytes(raw))
    for command in ("hash", "inspect"):
        proc = cli(command, "--json", "m.pt", cwd=tmp_path)
        assert proc.returncode == 1, (command, proc.stderr)
        assert "Traceback" not in proc.stderr
        json.loads(proc.stdout)


def test_check_warns_about_a_dask_channel_rule_without_called_from(tmp_path):
    # Written by a record from before called_from: it admits a task's own calls.
    old = tmp_path / "old.toml"
    old.write_text(
        'version = 1\n[[channel]]\nname = "dask"\ncallers = ["distributed.protocol.pickle:loads"]\n'
    )
    proc = cli("check", str(old))
    assert proc.returncode == 0
    assert "warning: " in proc.stderr and "called_from" in proc.stderr
    report = json.loads(cli("check", "--json", str(old)).stdout)
    assert report["results"][0]["warnings"]
    narrowed = tmp_path / "new.toml"
    narrowed.write_text(old.read_text() + 'called_from = ["distributed.*:*", "dask.*:*"]\n')
    proc = cli("check", str(narrowed))
    assert proc.returncode == 0 and proc.stderr == ""


def channel_rule(name: str, callers: list, called_from: list | None = None) -> str:
    text = f"[[channel]]\nname = {json.dumps(name)}\ncallers = {json.dumps(callers)}\n"
    if called_from:
        text += f"called_from = {json.dumps(called_from)}\n"
    return text


def test_check_warns_about_a_multiprocessing_rule_wider_than_record_writes(tmp_path):
    from pickleguard.cli._manifest import known_rules

    rules = known_rules("multiprocessing")
    assert rules and not rules[0][1]  # the queues' rule: any caller
    narrowed = [(callers, called_from) for callers, called_from in rules if called_from]
    assert len(narrowed) == 1
    recv_callers, recv_from = narrowed[0]
    # A manifest recorded before: still valid, and check says what to change.
    old = tmp_path / "old.toml"
    old.write_text(OLD_MULTIPROCESSING_RULE)
    proc = cli("check", str(old))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"ok: {old} (1 rule)\n"
    (warning,) = proc.stderr.splitlines()
    assert warning.startswith(
        f"warning: {old}: the 'multiprocessing' channel rule has no called_from"
    )
    for caller in recv_callers:
        assert caller in warning
    assert "Listener" in warning and "record into a fresh manifest" in warning
    assert "called_from = [" + ", ".join(f'"{p}"' for p in recv_from) + "]" in warning
    report = json.loads(cli("check", "--json", str(old)).stdout)
    assert report["results"][0]["ok"] and report["results"][0]["warnings"] == [
        warning[len(f"warning: {old}: ") :]
    ]
    # A wildcard written by hand is as wide.
    star = tmp_path / "star.toml"
    star.write_text("version = 1\n" + channel_rule("multiprocessing", ["multiprocessing.*:*"]))
    assert "the 'multiprocessing' channel rule" in cli("check", str(star)).stderr
    # What record writes now, and an operator's rule of their own name: no warning.
    for name, text in {
        "recorded": "".join(channel_rule("multiprocessing", c, f) for c, f in rules),
        "queues-only": channel_rule("multiprocessing", rules[0][0]),
        "own-name": channel_rule("our-pipes", recv_callers),
    }.items():
        path = tmp_path / f"{name}.toml"
        path.write_text("version = 1\n" + text)
        proc = cli("check", str(path))
        assert proc.returncode == 0 and proc.stderr == "", (name, proc.stderr)
