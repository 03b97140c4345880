"""`pickleguard pin`: entries from files, sha256sum lines and bare hashes, added to a
manifest all or nothing, and honoured by the gate."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

import pickleguard
from conftest import assert_fires, hostile, run_cli
from pickleguard import _core


def cli(*args: str, cwd: Path, stdin: Optional[str] = None) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd, input=stdin)


def entries(manifest: Path) -> list:
    """(table, identities, stack) of each entry, as the manifest parser reads them."""
    assert _core.check_manifest(str(manifest)) >= 1
    return _core.manifest_summary(str(manifest))[0]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def files(tmp_path: Path) -> dict:
    """A checkpoint-like file (not a pickle), a pickle, and two concatenated pickles."""
    blobs = {
        "weights.bin": bytes(range(256)) * 64,
        "config.pkl": pickle.dumps({"lr": 0.001, "epochs": 10}, protocol=2),
        "two.pkl": pickle.dumps({"a": 1}) + pickle.dumps([2, 3], protocol=0),
    }
    for name, data in blobs.items():
        (tmp_path / name).write_bytes(data)
    return blobs


def test_files_become_artifact_entries_with_the_sha256sum_of_the_file(tmp_path, files):
    proc = cli("pin", "m.toml", "weights.bin", "two.pkl", "--note", "release 14", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "created m.toml: 2 new entries" in proc.stdout
    assert entries(tmp_path / "m.toml") == [
        ("artifact", [sha256(files["weights.bin"])], None),
        ("artifact", [sha256(files["two.pkl"])], None),
    ]
    text = (tmp_path / "m.toml").read_text()
    assert text.startswith("# ") and "\nversion = 1\n" in text
    assert text.count('note = "release 14"') == 2
    assert 'source = "weights.bin"' in text and 'source = "two.pkl"' in text
    # A comment above each entry says when and how it was pinned.
    assert text.count("# pinned ") == 2 and '"weights.bin", 16384 bytes' in text


def test_identity_blake3_writes_blake3_entries(tmp_path, files):
    proc = cli("pin", "m.toml", "--identity", "blake3", "weights.bin", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    digest = _core.hexdigest(files["weights.bin"], algorithm="blake3")
    assert entries(tmp_path / "m.toml") == [("artifact", [f"blake3:{digest}"], None)]
    assert f'blake3 = "{digest}"' in (tmp_path / "m.toml").read_text()


def test_pickle_pins_each_stream_as_identify_sees_it(tmp_path, files):
    proc = cli("pin", "m.toml", "--pickle", "two.pkl", "config.pkl", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    first = pickle.dumps({"a": 1})
    assert entries(tmp_path / "m.toml") == [
        ("pickle", [pickleguard.identify(files["two.pkl"])], None),
        ("pickle", [pickleguard.identify(files["two.pkl"][len(first) :])], None),
        ("pickle", [pickleguard.identify(files["config.pkl"])], None),
    ]
    assert "the pickle at offset 21" in (tmp_path / "m.toml").read_text()


def test_pickle_with_blake3_and_a_stack(tmp_path, files):
    proc = cli(
        "pin", "m.toml", "--pickle", "--identity", "blake3", "--stack", "app.train:load_*",
        "config.pkl", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    identity = _core.identify(files["config.pkl"], algorithm="blake3")
    assert entries(tmp_path / "m.toml") == [("pickle", [identity], ["app.train:load_*"])]


def test_pickle_of_a_file_with_no_pickle_says_to_drop_the_flag(tmp_path, files):
    proc = cli("pin", "m.toml", "--pickle", "weights.bin", cwd=tmp_path)
    assert proc.returncode == 1
    assert "error: weights.bin: no complete pickle at offset 0" in proc.stderr
    assert "drop --pickle" in proc.stderr
    assert not (tmp_path / "m.toml").exists()


def test_pickle_notes_the_imports_and_marks_risky_ones(tmp_path):
    (tmp_path / "cwd.pkl").write_bytes(pickle.dumps(os.getcwd))
    # A RISKY import is refused until the reviewer says --allow-risky.
    proc = cli("pin", "m.toml", "--pickle", "cwd.pkl", cwd=tmp_path)
    assert proc.returncode == 1
    assert "imports RISKY globals: posix.getcwd" in proc.stderr and "--allow-risky" in proc.stderr
    assert not (tmp_path / "m.toml").exists()
    proc = cli("pin", "m.toml", "--pickle", "--allow-risky", "cwd.pkl", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "m.toml").read_text()
    assert "# imports: posix.getcwd\n" in text
    assert "# RISKY imports, review before trusting: posix.getcwd\n" in text
    assert "warning: " in proc.stderr and "hint: review the entries marked RISKY" in proc.stderr


def test_pickle_marks_unknown_imports_for_review_without_a_warning(tmp_path):
    # A hand-written pickle of a class pickleguard knows nothing about.
    (tmp_path / "m.pkl").write_bytes(b"(ccollections\nOrderedDict\n)R(cmylib\nModel\nol.")
    proc = cli("pin", "m.toml", "--pickle", "m.pkl", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "m.toml").read_text()
    assert "# imports: collections.OrderedDict, mylib.Model\n" in text
    assert "# REVIEW imports, not known to be safe: mylib.Model\n" in text
    assert "RISKY" not in text and "warning: " not in proc.stderr


def test_sums_file_in_gnu_and_bsd_forms(tmp_path):
    a, b, c, d = (hashlib.sha256(bytes([i])).hexdigest() for i in range(4))
    sums = tmp_path / "SHA256SUMS"
    sums.write_bytes(
        (
            "# published with release 14\n"
            "\n"
            f"{a}  model.safetensors\n"  # sha256sum: text mode
            f"{b.upper()} *pytorch_model.bin\r\n"  # binary mode, uppercase hex, CRLF
            f"SHA256 (tokenizer (1).pkl) = {c}\n"  # sha256sum --tag, BSD
            f"\\{d}  dir\\\\odd\\nname.pt\n"  # an escaped name: a backslash and a newline
        ).encode()
    )
    proc = cli("pin", "m.toml", "--sha256sum", "SHA256SUMS", "--note", "hub", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert entries(tmp_path / "m.toml") == [
        ("artifact", [f"sha256:{h}"], None) for h in (a, b, c, d)
    ]
    text = (tmp_path / "m.toml").read_text()
    for source in ("model.safetensors", "pytorch_model.bin", "tokenizer (1).pkl"):
        assert f'source = "{source}"' in text
    assert 'source = "dir\\\\odd\\nname.pt"' in text
    assert "# pinned " in text and '"SHA256SUMS" line 3, without reading the file' in text


def test_sums_from_standard_input(tmp_path, files):
    lines = "".join(
        f"{hashlib.sha256(files[n]).hexdigest()}  {n}\n" for n in ("weights.bin", "config.pkl")
    )
    proc = cli("pin", "m.toml", "--sha256sum", "-", cwd=tmp_path, stdin=lines)
    assert proc.returncode == 0, proc.stderr
    assert entries(tmp_path / "m.toml") == [
        ("artifact", [sha256(files["weights.bin"])], None),
        ("artifact", [sha256(files["config.pkl"])], None),
    ]
    assert "<stdin> line 2: config.pkl" in proc.stdout


def test_a_bare_hash_with_note_and_source(tmp_path):
    digest = "ab" * 32
    proc = cli(
        "pin", "m.toml", "--hash", digest, "--hash", f"sha256:{'CD' * 32}", "--note",
        "resnet50, release 2", "--source", "hub:resnet50", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert entries(tmp_path / "m.toml") == [
        ("artifact", [f"sha256:{digest}"], None),
        ("artifact", [f"sha256:{'cd' * 32}"], None),
    ]
    text = (tmp_path / "m.toml").read_text()
    assert text.count('note = "resnet50, release 2"') == 2
    assert text.count('source = "hub:resnet50"') == 2
    # A blake3: prefix, or --identity blake3 for bare hex; --pickle for a stream pin.
    proc = cli("pin", "b.toml", "--pickle", "--hash", f"blake3:{digest}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = cli("pin", "b.toml", "--identity", "blake3", "--hash", "ef" * 32, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert entries(tmp_path / "b.toml") == [
        ("pickle", [f"blake3:{digest}"], None),
        ("artifact", [f"blake3:{'ef' * 32}"], None),
    ]


@pytest.mark.parametrize("value", ["ab" * 31, "zz" * 32, "md5:" + "ab" * 32, "", "ab" * 32 + "00"])
def test_a_bad_bare_hash_is_a_usage_error(tmp_path, value):
    proc = cli("pin", "m.toml", "--hash", value, cwd=tmp_path)
    assert proc.returncode == 2
    assert "error: --hash" in proc.stderr and "hint: " in proc.stderr
    assert not (tmp_path / "m.toml").exists()


def test_entries_already_present_are_skipped_and_said_so(tmp_path, files):
    assert cli("pin", "m.toml", "weights.bin", cwd=tmp_path).returncode == 0
    before = (tmp_path / "m.toml").read_bytes()
    proc = cli("pin", "m.toml", "weights.bin", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "already in m.toml" in proc.stdout and "m.toml is unchanged" in proc.stdout
    assert (tmp_path / "m.toml").read_bytes() == before
    # The same content given twice in one run is pinned once.
    (tmp_path / "copy.bin").write_bytes(files["weights.bin"])
    proc = cli("pin", "m.toml", "copy.bin", "config.pkl", "config.pkl", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "already in m.toml" in proc.stdout and "the same as config.pkl" in proc.stdout
    # config.pkl is one pickle: an [[artifact]] and a [[pickle]] entry.
    assert len(entries(tmp_path / "m.toml")) == 3
    # Another stack is another entry; one for every caller already covers a stack.
    proc = cli("pin", "m.toml", "--pickle", "--stack", "app:load", "two.pkl", cwd=tmp_path)
    assert proc.returncode == 0 and "2 new entries" in proc.stdout
    proc = cli("pin", "m.toml", "--stack", "app:load", "config.pkl", cwd=tmp_path)
    assert "already allowed for every caller" in proc.stdout
    assert len(entries(tmp_path / "m.toml")) == 5


def test_existing_text_is_kept_byte_for_byte(tmp_path, files):
    original = (
        "# Reviewed by the platform team.\r\n"
        "version = 1   # keep\r\n"
        "\r\n"
        "[[pickle]]\r\n"
        f'sha256 = "{"0" * 64}"  # the old config\r\n'
        'stack = ["app:main"]'  # no newline at the end
    )
    (tmp_path / "m.toml").write_bytes(original.encode())
    proc = cli("pin", "m.toml", "weights.bin", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "m.toml").read_bytes().decode()
    assert text.startswith(original + "\n")
    assert entries(tmp_path / "m.toml")[-1] == ("artifact", [sha256(files["weights.bin"])], None)


def test_a_malformed_sums_line_names_file_and_line_and_writes_nothing(tmp_path, files):
    assert cli("pin", "m.toml", "config.pkl", cwd=tmp_path).returncode == 0
    before = (tmp_path / "m.toml").read_bytes()
    good = hashlib.sha256(b"x").hexdigest()
    (tmp_path / "sums").write_text(
        f"{good}  fine.bin\n{good[:-1]}  short.bin\n{hashlib.sha1().hexdigest()}  sha1.bin\n"
    )
    proc = cli("pin", "m.toml", "weights.bin", "--sha256sum", "sums", cwd=tmp_path)
    assert proc.returncode == 1
    assert "error: sums:2: expected 64 hex digits (SHA-256), got 63" in proc.stderr
    assert "  short.bin" in proc.stderr  # the line itself is shown
    assert "error: sums:3: expected 64 hex digits (SHA-256), got 40 (a SHA-1 digest?)" in (
        proc.stderr
    )
    assert "nothing was pinned: m.toml is unchanged" in proc.stderr
    assert (tmp_path / "m.toml").read_bytes() == before
    report = json.loads(cli("pin", "m.toml", "--sha256sum", "sums", "--json", cwd=tmp_path).stdout)
    assert report["status"] == 1 and report["written"] is False and len(report["errors"]) == 2


def test_missing_inputs_are_usage_errors_and_write_nothing(tmp_path, files):
    proc = cli("pin", "m.toml", "weights.bin", "missing.bin", cwd=tmp_path)
    assert proc.returncode == 2
    assert "error: could not read missing.bin: No such file or directory" in proc.stderr
    assert not (tmp_path / "m.toml").exists()
    proc = cli("pin", "m.toml", "--sha256sum", "missing.sums", cwd=tmp_path)
    assert proc.returncode == 2 and "could not read missing.sums" in proc.stderr
    proc = cli("pin", "m.toml", cwd=tmp_path)
    assert proc.returncode == 2 and "error: nothing to pin" in proc.stderr
    assert cli("pin", cwd=tmp_path).returncode == 2  # argparse: no MANIFEST
    assert cli("pin", "m.toml", "x", "--bogus", cwd=tmp_path).returncode == 2
    assert not (tmp_path / "m.toml").exists()


def test_an_existing_manifest_that_does_not_parse_is_named_with_its_position(tmp_path, files):
    bad = 'version = 1\n\n[[artifact]]\nsha256 = "' + "a" * 64 + '"\nstak = ["x:y"]\n'
    (tmp_path / "bad.toml").write_text(bad)
    proc = cli("pin", "bad.toml", "weights.bin", cwd=tmp_path)
    assert proc.returncode == 1
    assert "error: cannot add to bad.toml: bad.toml:5:1: unknown field `stak`" in proc.stderr
    assert (tmp_path / "bad.toml").read_text() == bad


def test_bad_stack_patterns_and_conflicting_options_are_usage_errors(tmp_path, files):
    proc = cli("pin", "m.toml", "weights.bin", "--stack", "app/train.py:load", cwd=tmp_path)
    assert proc.returncode == 2
    assert "error: --stack: stack pattern \"app/train.py:load\" has the character '/'" in (
        proc.stderr
    )
    (tmp_path / "sums").write_text(hashlib.sha256(b"").hexdigest() + "  e\n")
    assert cli("pin", "m.toml", "--pickle", "--sha256sum", "sums", cwd=tmp_path).returncode == 2
    proc = cli("pin", "m.toml", "--identity", "blake3", "--sha256sum", "sums", cwd=tmp_path)
    assert proc.returncode == 2
    proc = cli(
        "pin", "m.toml", "--identity", "sha256", "--hash", "blake3:" + "a" * 64, cwd=tmp_path
    )
    assert proc.returncode == 2
    assert not (tmp_path / "m.toml").exists()


def test_options_may_come_before_the_files(tmp_path, files):
    proc = cli("pin", "m.toml", "--note", "n", "weights.bin", "config.pkl", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(entries(tmp_path / "m.toml")) == 3  # config.pkl: [[artifact]] and [[pickle]]


def test_json_summary(tmp_path, files):
    proc = cli("pin", "m.toml", "--json", "weights.bin", "weights.bin", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["status"] == 0 and report["created"] is True and report["written"] is True
    assert [a["identity"] for a in report["added"]] == [sha256(files["weights.bin"])]
    assert report["added"][0]["kind"] == "artifact"
    assert report["added"][0]["source"] == "weights.bin"
    assert report["added"][0]["size"] == len(files["weights.bin"])
    assert [s["reason"] for s in report["skipped"]] == ["the same as weights.bin, 16384 bytes"]
    assert report["errors"] == [] and proc.stderr == ""


def test_an_empty_file_is_a_finding(tmp_path):
    (tmp_path / "empty.bin").write_bytes(b"")
    proc = cli("pin", "m.toml", "empty.bin", cwd=tmp_path)
    assert proc.returncode == 1 and "empty.bin: the file is empty" in proc.stderr


# Injection through a name: a sums file is often downloaded next to the model it
# lists, so whoever publishes it controls its names. A name holding a newline must
# not end the comment it is quoted in and start a TOML table of its own, pinning a
# hash nobody reviewed.
def test_a_name_with_a_newline_cannot_inject_an_entry(tmp_path):
    planted = "f" * 64
    name = f'x\n[[pickle]]\nsha256 = "{planted}"\n#'
    escaped = name.replace("\\", "\\\\").replace("\n", "\\n")
    (tmp_path / "sums").write_text(f"\\{'1' * 64}  {escaped}\n")
    proc = cli("pin", "m.toml", "--sha256sum", "sums", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert entries(tmp_path / "m.toml") == [("artifact", ["sha256:" + "1" * 64], None)]
    assert "\n[[pickle]]" not in proc.stdout  # the name is shown quoted, escapes and all
    # An archive member's name goes into the comment above its stream pin.
    import zipfile

    with zipfile.ZipFile(tmp_path / "model.pt", "w") as archive:
        archive.writestr(f"{name}.pkl", pickle.dumps([1], protocol=2))
    proc = cli("pin", "z.toml", "--pickle", "model.pt", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert entries(tmp_path / "z.toml") == [
        ("pickle", [pickleguard.identify(pickle.dumps([1], protocol=2))], None)
    ]
    assert "warning: model.pt is a zip archive" in proc.stderr
    # A note with characters TOML needs escaped still gives a valid manifest.
    proc = cli("pin", "n.toml", "--hash", "1" * 64, "--note", 'a "b"\\\x7f\x01\n', cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(entries(tmp_path / "n.toml")) == 1


def test_a_pinned_artifact_is_admitted_and_another_file_is_refused(tmp_path, files, run_py):
    """The in-process API the torch and joblib adapters use: verify_artifact checks the
    whole file against [[artifact]] entries written by `pin`, from a file, a sums line
    (no file read) and a bare BLAKE3 hash."""
    (tmp_path / "other.bin").write_bytes(files["weights.bin"][:-1] + b"!")
    (tmp_path / "sums").write_text(f"{hashlib.sha256(files['config.pkl']).hexdigest()}  c\n")
    blake3 = _core.hexdigest(files["two.pkl"], algorithm="blake3")
    for args in (
        ["weights.bin"],
        ["--sha256sum", "sums"],
        ["--hash", f"blake3:{blake3}"],
    ):
        proc = cli("pin", "m.toml", *args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    run_py(
        """
        import pickle
        import pickleguard
        from pickleguard import _core
        pickleguard.activate("m.toml")
        def read(name):
            with open(name, "rb") as f:
                return f.read()
        with _core.verify_artifact(read("weights.bin"), source="weights.bin", loader="test"):
            pass
        # Inside the admitted artifact, its pickles load (a torch checkpoint's data.pkl).
        with _core.verify_artifact(read("config.pkl"), source="config.pkl", loader="test"):
            assert pickle.loads(read("config.pkl")) == {"lr": 0.001, "epochs": 10}
        with _core.verify_artifact(read("two.pkl"), source="two.pkl", loader="test"):
            assert pickle.loads(read("two.pkl")) == {"a": 1}
        try:
            _core.verify_artifact(read("other.bin"), source="other.bin", loader="test")
        except pickleguard.NoPickleError as e:
            assert e.code == "not-listed", e.code
        else:
            raise AssertionError("a file that is not pinned was admitted")
        try:  # an artifact pin is not a stream pin: outside verify_artifact, refused
            pickle.loads(read("config.pkl"))
        except pickleguard.NoPickleError:
            pass
        else:
            raise AssertionError("an [[artifact]] entry allowed a plain pickle load")
        """
    )


def test_pickle_pins_let_the_gate_load_each_stream(tmp_path, files, run_py):
    proc = cli("pin", "m.toml", "--pickle", "two.pkl", "--stack", "__main__:load_all", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run_py(
        """
        import pickle
        import pickleguard
        pickleguard.activate("m.toml")
        def load_all():
            with open("two.pkl", "rb") as f:
                return pickle.load(f), pickle.load(f)
        assert load_all() == ({"a": 1}, [2, 3])
        try:
            with open("two.pkl", "rb") as f:
                pickle.load(f)  # not from load_all: the stack does not match
        except pickleguard.NoPickleError as e:
            assert e.code == "stack-mismatch", e.code
        else:
            raise AssertionError("the stack was not enforced")
        """
    )


def readme_snippet(language: str) -> str:
    """The README's "From code" snippet in ``language`` ("sh" or "python")."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("From code:", 1)[1]
    return section.split(f"```{language}\n", 1)[1].split("```", 1)[0]


def test_the_readmes_from_code_snippet_works_as_written(tmp_path, run_py):
    """`pin` of a plain pickle writes the entries its loaders need: `pickle.load`
    checks a [[pickle]] entry, so a file that is one pickle gets one, and an
    [[artifact]] with the same hash for `joblib.load`."""
    model = {"weights": [0.5, 0.25], "name": "ranker"}
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(model))
    command = readme_snippet("sh").split("#", 1)[0].split()
    assert command[:2] == ["pickleguard", "pin"]
    proc = cli(*command[1:], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    digest = sha256((tmp_path / "model.pkl").read_bytes())
    assert sorted(entries(tmp_path / "manifest.toml")) == [
        ("artifact", [digest], None),
        ("pickle", [digest], None),
    ]
    assert (
        "the file is one pickle, which pickle.load reads"
        in (tmp_path / "manifest.toml").read_text()
    )
    snippet = readme_snippet("python")
    result = run_py(snippet + "\nprint(repr(model))\n")
    assert result.stdout.strip() == repr(model)
    # A file with another hash is still refused.
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(dict(model, name="other")))
    refused = run_py(snippet, check=False)
    assert refused.returncode != 0 and "NoPickleError" in refused.stderr


def test_pin_refuses_a_file_that_imports_risky_globals(tmp_path):
    """The whole file is scanned before it is pinned: a RISKY import is listed and
    nothing is written unless --allow-risky is given; the reviewer's comments say
    what it imports."""
    sentinel = tmp_path / "PWNED"
    payload = hostile(sentinel)
    assert_fires(payload, sentinel)
    (tmp_path / "evil.pkl").write_bytes(payload)
    proc = cli("pin", "m.toml", "evil.pkl", cwd=tmp_path)
    assert proc.returncode == 1
    assert "evil.pkl" in proc.stderr and "RISKY globals: posix.mkdir" in proc.stderr
    assert proc.stderr.count("imports RISKY") == 1  # its two entries are named once
    assert not (tmp_path / "m.toml").exists()
    proc = cli("pin", "m.toml", "--json", "evil.pkl", cwd=tmp_path)
    assert proc.returncode == 1 and json.loads(proc.stdout)["written"] is False
    proc = cli("pin", "m.toml", "--allow-risky", "evil.pkl", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "m.toml").read_text()
    assert text.count("# RISKY imports, review before trusting: posix.mkdir\n") == 2
    assert not sentinel.exists()


def test_hashes_and_sums_lines_say_their_imports_were_not_reviewed(tmp_path):
    (tmp_path / "sums").write_text(f"{'ab' * 32}  model.pt\n")
    proc = cli("pin", "m.toml", "--sha256sum", "sums", "--hash", "cd" * 32, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "2 entries pinned without the files' bytes" in proc.stderr
    text = (tmp_path / "m.toml").read_text()
    assert text.count("# imports not reviewed: pinned from a") == 2


def guarded(*args: str, cwd: Path, **settings: str) -> subprocess.CompletedProcess:
    """A fresh interpreter with only the given PICKLEGUARD_ settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICKLEGUARD_")}
    env.update(settings)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


APP = """
import pickle, sys
def load_model(name):
    with open(name, "rb") as f:
        return pickle.load(f)
for name in sys.argv[1:]:
    print(load_model(name))
print(pickle.loads(pickle.dumps([1, 2])))
"""


def test_from_log_turns_a_warn_mode_audit_log_into_entries(tmp_path, wheel_installed):
    """Warn, review, pin from the log, enforce: one entry per distinct load, with
    the caller as its stack and the source; already pinned loads are skipped; the
    manifest then lets the program run enforced."""
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "model.pkl").write_bytes(pickle.dumps({"w": [1.5]}))
    (tmp_path / "m.toml").write_text("version = 1\n")
    warn = {"PICKLEGUARD_MANIFEST": "m.toml", "PICKLEGUARD_MODE": "warn"}
    for _ in range(2):  # the same loads twice: the same entries
        proc = guarded("app.py", "model.pkl", cwd=tmp_path, PICKLEGUARD_LOG="audit.log", **warn)
        assert proc.returncode == 0, proc.stderr
    assert guarded("app.py", "model.pkl", cwd=tmp_path, PICKLEGUARD_MANIFEST="m.toml").returncode
    proc = cli("pin", "m.toml", "--from-log", "audit.log", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "wrote m.toml: 2 new entries" in proc.stdout
    digest = sha256((tmp_path / "model.pkl").read_bytes())
    listed = entries(tmp_path / "m.toml")
    assert ("pickle", [digest], ["__main__:load_model"]) in listed and len(listed) == 2
    text = (tmp_path / "m.toml").read_text()
    assert 'source = "model.pkl"' in text
    # The pickle made in memory has no file to scan: its comment says so.
    assert "# imports not reviewed: the audit log holds no bytes, and names no source" in text
    assert "1 entry pinned without the files' bytes" in proc.stderr
    proc = cli("pin", "m.toml", "--from-log", "audit.log", cwd=tmp_path)
    assert proc.returncode == 0 and "m.toml is unchanged" in proc.stdout
    proc = guarded("app.py", "model.pkl", cwd=tmp_path, PICKLEGUARD_MANIFEST="m.toml")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["{'w': [1.5]}", "[1, 2]"]


def test_from_log_reviews_the_logged_source_like_pin(tmp_path, wheel_installed):
    """A load the log names a readable source for is scanned: a RISKY import is
    refused unless --allow-risky, as `pin FILE` does."""
    sentinel = tmp_path / "PWNED"
    (tmp_path / "evil.pkl").write_bytes(hostile(sentinel))
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "m.toml").write_text("version = 1\n")
    proc = guarded(
        "app.py", "evil.pkl", cwd=tmp_path, PICKLEGUARD_MANIFEST="m.toml",
        PICKLEGUARD_MODE="warn", PICKLEGUARD_LOG="audit.log",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sentinel.exists()  # warn mode refuses nothing: the payload ran
    sentinel.rmdir()
    before = (tmp_path / "m.toml").read_bytes()
    proc = cli("pin", "m.toml", "--from-log", "audit.log", cwd=tmp_path)
    assert proc.returncode == 1
    assert "audit.log:1" in proc.stderr and "RISKY globals: posix.mkdir" in proc.stderr
    assert (tmp_path / "m.toml").read_bytes() == before
    proc = cli("pin", "m.toml", "--from-log", "audit.log", "--allow-risky", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (
        "# RISKY imports, review before trusting: posix.mkdir" in (tmp_path / "m.toml").read_text()
    )


@pytest.mark.parametrize(
    "line, problem",
    [
        ("not json", "not a JSON line"),
        ("[1]", "not a JSON object"),
        ('{"event": "warn", "code": "not-listed", "kind": "pickle"}', 'no "identity" field'),
        (
            '{"event": "warn", "code": "not-listed", "kind": "pickle", "identity": 1, '
            '"caller": ""}',
            '"identity" is int, not a string',
        ),
        (
            '{"event": "warn", "code": "not-listed", "kind": "table", "identity": "", '
            '"caller": ""}',
            'unknown kind "table"',
        ),
        (
            '{"event": "warn", "code": "not-listed", "kind": "pickle", "identity": "sha256:ab", '
            '"caller": ""}',
            'identity "sha256:ab" is not sha256:<64 hex digits>',
        ),
    ],
)
def test_a_malformed_log_line_names_the_file_and_line_and_writes_nothing(tmp_path, line, problem):
    good = json.dumps(
        {"event": "warn", "code": "not-listed", "kind": "pickle", "identity": "sha256:" + "a" * 64,
         "caller": "app:load", "source": None, "size": 3}
    )  # fmt: skip
    (tmp_path / "audit.log").write_text(f"{good}\n{line}\n")
    proc = cli("pin", "m.toml", "--from-log", "audit.log", cwd=tmp_path)
    assert proc.returncode == 2
    assert f"error: audit.log:2: {problem}" in proc.stderr, proc.stderr
    assert not (tmp_path / "m.toml").exists()


def test_a_joblib_pickle_the_walk_cannot_follow_is_refused_not_guessed(tmp_path):
    """A NumpyArrayWrapper whose array size the walk cannot know: where its raw data
    ends (and the opcodes go on) is not known, so nothing after it was reviewed."""
    payload = (
        b"\x80\x04cjoblib.numpy_pickle\nNumpyArrayWrapper\n)\x81}(\x8c\x05shape"
        b"K\x02\x85\x8c\x05dtypecbuiltins\nstr\nu" + b"b" + b"\x00" * 16 + b"."
    )
    (tmp_path / "odd.pkl").write_bytes(payload)
    proc = cli("inspect", "odd.pkl", cwd=tmp_path)
    assert proc.returncode == 1 and "cannot be walked" in proc.stderr, proc.stderr
    proc = cli("pin", "m.toml", "odd.pkl", cwd=tmp_path)
    assert proc.returncode == 1 and "<not read: the joblib pickle" in proc.stderr, proc.stderr
    assert not (tmp_path / "m.toml").exists()
