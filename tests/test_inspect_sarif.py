"""`pickleguard inspect --format sarif` (SARIF 2.1.0 for code-scanning dashboards)
and the pre-commit hooks that run `check` and `inspect`."""

from __future__ import annotations

import json
import pickle
import subprocess
import zipfile
from pathlib import Path

import yaml

from conftest import REPO, assert_fires, hostile
from conftest import run_cli as cli


def sarif(*files: str, cwd: Path) -> tuple[int, dict]:
    proc = cli("inspect", "--format", "sarif", *files, cwd=cwd)
    assert proc.stderr == ""
    return proc.returncode, json.loads(proc.stdout)


def assert_valid_sarif(log: dict) -> list:
    """The parts of SARIF 2.1.0 that code-scanning uploads require."""
    assert log["version"] == "2.1.0"
    assert log["$schema"].endswith("sarif-2.1.0.json")
    (run,) = log["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "pickleguard"
    rule_ids = [r["id"] for r in driver["rules"]]
    assert len(set(rule_ids)) == len(rule_ids)
    for rule in driver["rules"]:
        assert rule["shortDescription"]["text"]
        assert rule["defaultConfiguration"]["level"] in ("error", "warning", "note")
    for result in run["results"]:
        assert result["ruleId"] in rule_ids
        assert rule_ids[result["ruleIndex"]] == result["ruleId"]
        assert result["level"] in ("error", "warning", "note")
        assert result["message"]["text"]
        for location in result["locations"]:
            physical = location["physicalLocation"]
            assert physical["artifactLocation"]["uri"]
            region = physical.get("region", {})
            assert all(isinstance(region[k], int) and region[k] >= 0 for k in region)
    return run["results"]


def test_a_risky_pickle_is_a_result_at_its_file_and_byte_offset(tmp_path):
    sentinel = tmp_path / "sentinel"
    payload = hostile(sentinel, protocol=4)
    assert_fires(payload, sentinel)
    # A harmless pickle first, so the risky one starts past byte 0.
    head = pickle.dumps([1, 2, 3], protocol=4)
    (tmp_path / "data.pkl").write_bytes(head + payload)
    (tmp_path / "ok.pkl").write_bytes(pickle.dumps({"a": 1}))

    status, log = sarif("ok.pkl", "data.pkl", cwd=tmp_path)
    assert status == 1  # a RISKY import is a finding, as in text and json
    results = assert_valid_sarif(log)
    assert not sentinel.exists()
    assert [r["ruleId"] for r in results] == ["PG001"]
    (result,) = results
    assert result["properties"]["global"] == "posix.mkdir"
    (location,) = result["locations"]
    assert location["physicalLocation"]["artifactLocation"]["uri"] == "data.pkl"
    region = location["physicalLocation"]["region"]
    assert region == {"byteOffset": len(head), "byteLength": len(payload)}
    assert "posix.mkdir" in result["message"]["text"]


def test_a_clean_file_gives_a_valid_log_with_no_results(tmp_path):
    (tmp_path / "ok.pkl").write_bytes(pickle.dumps({"a": [1.5, "x"]}))
    status, log = sarif("ok.pkl", cwd=tmp_path)
    assert status == 0
    assert assert_valid_sarif(log) == []


def test_a_stored_archive_member_is_located_in_the_file_itself(tmp_path):
    sentinel = tmp_path / "sentinel"
    payload = hostile(sentinel, protocol=2)
    assert_fires(payload, sentinel)
    with zipfile.ZipFile(tmp_path / "model.pt", "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("model/version", "3\n")
        archive.writestr("model/data.pkl", payload)
    status, log = sarif("model.pt", cwd=tmp_path)
    assert status == 1
    (result,) = assert_valid_sarif(log)
    (location,) = result["locations"]
    region = location["physicalLocation"]["region"]
    data = (tmp_path / "model.pt").read_bytes()
    start = region["byteOffset"]
    assert data[start : start + region["byteLength"]] == payload
    assert location["logicalLocations"] == [{"name": "model/data.pkl", "kind": "member"}]
    assert result["properties"]["offsetInMember"] == 0
    assert not sentinel.exists()


def test_a_damaged_file_is_a_result_and_an_unreadable_one_fails(tmp_path):
    (tmp_path / "cut.pkl").write_bytes(pickle.dumps(list(range(50)))[:-5])
    status, log = sarif("cut.pkl", cwd=tmp_path)
    assert status == 1
    (result,) = assert_valid_sarif(log)
    assert result["ruleId"] == "PG002"
    uri = result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert uri == "cut.pkl"

    status, log = sarif("missing.pkl", cwd=tmp_path)
    assert status == 2
    assert [r["ruleId"] for r in assert_valid_sarif(log)] == ["PG002"]


def test_json_and_another_format_contradict(tmp_path):
    (tmp_path / "ok.pkl").write_bytes(pickle.dumps(1))
    proc = cli("inspect", "--json", "--format", "sarif", "ok.pkl", cwd=tmp_path)
    assert proc.returncode == 2
    assert "contradict" in proc.stderr and "hint:" in proc.stderr
    proc = cli("inspect", "--format", "json", "ok.pkl", cwd=tmp_path)
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["results"][0]["imports"] == []


def hooks() -> dict:
    document = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    assert isinstance(document, list)
    for hook in document:
        # The keys pre-commit requires of a hook, and the entry it runs.
        assert {"id", "name", "entry", "language"} <= set(hook)
        assert hook["entry"].split()[0] == "pickleguard"
    return {hook["id"]: hook for hook in document}


def run_hook(hook: dict, files: list, cwd: Path) -> subprocess.CompletedProcess:
    """What pre-commit runs: the entry, then the staged files that match."""
    import re

    command = hook["entry"].split()[1:]
    matched = [f for f in files if re.search(hook["files"], f)]
    assert matched, f"{hook['id']} matches none of {files}"
    return cli(*command, *matched, cwd=cwd)


def test_pre_commit_check_hook_fails_on_a_broken_manifest(tmp_path):
    hook = hooks()["pickleguard-check"]
    (tmp_path / "pickleguard.toml").write_text((REPO / "manifests" / "example.toml").read_text())
    assert run_hook(hook, ["pickleguard.toml"], tmp_path).returncode == 0
    (tmp_path / "pickleguard.toml").write_text('version = 1\n[[pickle]]\nsha256 = "zz"\n')
    proc = run_hook(hook, ["pickleguard.toml"], tmp_path)
    assert proc.returncode == 1
    assert "pickleguard.toml" in proc.stderr


def test_pre_commit_inspect_hook_fails_on_risky_and_damaged_pickles(tmp_path):
    hook = hooks()["pickleguard-inspect"]
    sentinel = tmp_path / "sentinel"
    payload = hostile(sentinel)
    assert_fires(payload, sentinel)
    (tmp_path / "ok.pkl").write_bytes(pickle.dumps({"w": [0.5]}))
    (tmp_path / "bad.pkl").write_bytes(payload)
    (tmp_path / "cut.pickle").write_bytes(pickle.dumps(list(range(9)))[:-3])
    assert run_hook(hook, ["ok.pkl", "README.md"], tmp_path).returncode == 0
    assert run_hook(hook, ["ok.pkl", "bad.pkl"], tmp_path).returncode == 1
    assert run_hook(hook, ["cut.pickle"], tmp_path).returncode == 1
    assert not sentinel.exists()
