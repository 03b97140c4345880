"""The one error boundary: each kind of error the binding can meet reaches Python as
its own exception, with a message that says what went wrong (src/py/error.rs).

Each case triggers one GuardError variant through the public or private API and
checks the exception's type and text. Cases that need activation run in a fresh
interpreter.
"""

from __future__ import annotations

import json
import pickle

import pytest

import pickleguard
from pickleguard import _core

# variant -> (code run in a fresh interpreter, exception type, text in the message)
ACTIVATED = {
    "Denied": (
        "pickleguard.activate()\npickle.loads(pickle.dumps(1))",
        "NoPickleError",
        "pickleguard was activated with no manifest",
    ),
    "Manifest": (
        "open('m.toml', 'w').write('version = 1\\n[[pickle]]\\nsha256 = 5\\n')\n"
        "pickleguard.activate('m.toml')",
        "ManifestError",
        "m.toml:3",
    ),
    "BadToken": (
        "import copy\ncopy.copy(pickleguard.activate())",
        "BadTokenError",
        "cannot be copied or pickled",
    ),
    "Guard": (
        "with pickleguard.activate():\n    pass",
        "PickleGuardError",
        "cannot be used as a with-block",
    ),
    "NotInitialised": (
        "import io\n"
        "pickleguard.activate()\n"
        "class NoInit(pickle.Unpickler):\n"
        "    def __init__(self, file):\n"
        "        pass\n"
        "NoInit(io.BytesIO(b'N.')).load()",
        "UnpicklingError",
        "Unpickler.__init__() was not called by NoInit.__init__()",
    ),
    "Read, end of input": (
        "pickleguard.activate()\npickle.loads(b'')",
        "EOFError",
        "",
    ),
    "Read, damaged input": (
        "pickleguard.activate()\npickle.loads(b'z.')",
        "UnpicklingError",
        "invalid load key",
    ),
}


@pytest.mark.parametrize("variant", ACTIVATED)
def test_each_error_reaches_python_as_its_exception(variant, run_py):
    code, expected, text = ACTIVATED[variant]
    indented = "\n".join("    " + line for line in code.splitlines())
    proc = run_py(
        f"""
import json, pickle, pickleguard
try:
{indented}
except BaseException as e:
    print(json.dumps([type(e).__name__, str(e)]))
"""
    )
    name, message = json.loads(proc.stdout.strip().splitlines()[-1])
    assert name == expected, (name, message)
    assert text in message, message


def test_a_bad_mode_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match='mode must be "enforce" or "warn", not "nope"'):
        _core.activate(None, "nope")
    with pytest.raises(ValueError, match='not "loud"'):
        _core.activate_deferred("m.toml", "loud")


def test_a_bad_algorithm_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match='algorithm must be "sha256" or "blake3", not "md5"'):
        pickleguard.identify(pickle.dumps(1), algorithm="md5")


def test_a_bad_argument_is_a_value_error_saying_how():
    with pytest.raises(ValueError, match="pin: "):
        pickleguard.loads(pickle.dumps(1), sha256="not-hex")
    with pytest.raises(ValueError):
        _core.pattern_matches("no colon", "app:f")


def test_a_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="a bytes-like object is required, not 'int'"):
        pickleguard.identify(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="file must have 'read' and 'readline' attributes"):
        pickleguard.load(object(), sha256="00" * 32)


def test_a_file_that_cannot_be_opened_names_what_and_where(tmp_path):
    missing = tmp_path / "no" / "such" / "audit.log"
    with pytest.raises(pickleguard.PickleGuardError) as e:
        _core.set_audit_log(str(missing))
    assert str(e.value).startswith(f"could not open the audit log {missing}: ")
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with pytest.raises(pickleguard.PickleGuardError) as e:
        _core.start_journal(str(blocked / "journal"))
    assert str(e.value).startswith(f"could not create the record journal {blocked / 'journal'}: ")
