"""dill.__diff memorises every imported module's attributes when it is imported; under
the guard, that walk reaches pickleguard's own modules and must meet nothing that
raises at it (issue: the dry run's placeholder raised a BaseException on any access)."""

from __future__ import annotations

from conftest import fresh_python


def test_import_dill_diff_under_warn_mode(tmp_path):
    code = (
        "import sys, pickleguard._gate\n"
        "assert 'pickleguard._gate' in sys.modules\n"
        "import dill.__diff as diff\n"
        "import json\n"
        "diff.memorise(json)\n"
        "print('memorised', len(diff.memo) > 100)\n"
    )
    proc = fresh_python(tmp_path, code, PICKLEGUARD_MODE="warn")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "memorised True", proc.stdout + proc.stderr
