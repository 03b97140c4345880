"""An allowed load does not import `logging` (7 to 10 ms at the first load) while
nothing has imported it, since no handler could want its record; once the program
imports logging and asks for DEBUG records, the next allowed load is logged."""

from __future__ import annotations

import hashlib
import pickle

import pytest

from conftest import fresh_python as fresh
from conftest import write_manifest

pytestmark = pytest.mark.usefixtures("wheel_installed")

PAYLOAD = pickle.dumps({"id": 7}, protocol=4)


def test_allowed_loads_import_logging_only_when_the_program_does(tmp_path):
    write_manifest(tmp_path / "m.toml", {"sha256": hashlib.sha256(PAYLOAD).hexdigest()})
    code = (
        "import pickle, sys\n"
        f"data = {PAYLOAD!r}\n"
        "assert pickle.loads(data) == {'id': 7}\n"
        "print('logging' in sys.modules)\n"
        "import logging\n"
        "records = []\n"
        "class Keep(logging.Handler):\n"
        "    def emit(self, record): records.append(record.getMessage())\n"
        "logging.getLogger().addHandler(Keep())\n"
        "logging.getLogger().setLevel(logging.DEBUG)\n"
        "assert pickle.loads(data) == {'id': 7}\n"
        "print([m.split()[0] for m in records])\n"
    )
    proc = fresh(tmp_path, code, PICKLEGUARD_MANIFEST="m.toml")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["False", "['allowed']"], proc.stdout + proc.stderr


def test_a_denial_is_still_logged_when_nothing_imported_logging(tmp_path):
    # A record that must be emitted (a denial) imports logging as before, so a
    # handler the program adds later sees the next one.
    write_manifest(tmp_path / "m.toml")
    code = (
        "import pickle, sys\n"
        "try:\n"
        "    pickle.loads(pickle.dumps(1))\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, 'logging' in sys.modules)\n"
    )
    proc = fresh(tmp_path, code, PICKLEGUARD_MANIFEST="m.toml")
    assert proc.stdout.strip() == "NoPickleError True", proc.stdout + proc.stderr
