"""The CI check for import cycles inside the package (.ci/import_cycles.py): it
names a cycle made of function-level imports, passes a package whose submodules
import their parent's other modules, and passes pickleguard as installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pickleguard
from conftest import REPO

SCRIPT = REPO / ".ci" / "import_cycles.py"


def check(package: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(package)], capture_output=True, text=True, timeout=60
    )


def check_package(root: Path, files: dict) -> subprocess.CompletedProcess:
    """Write the package ``files`` (path: source) under ``root``, then check it."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return check(root)


def test_a_cycle_through_a_function_level_import_fails(tmp_path):
    late = "def late():\n    from .a import thing\n    return thing\n"
    files = {"__init__.py": "from . import a\n", "a.py": "from . import b\n", "b.py": late}
    proc = check_package(tmp_path / "pkg", files)
    assert proc.returncode == 1, proc.stderr
    assert "error: import cycle: pkg.a -> pkg.b -> pkg.a" in proc.stderr
    assert f"{tmp_path / 'pkg' / 'b.py'}:2: pkg.b imports pkg.a" in proc.stderr


def test_a_cycle_under_type_checking_fails_too(tmp_path):
    typing_only = "TYPE_CHECKING = False\nif TYPE_CHECKING:\n    from ..a import x\n"
    files = {"__init__.py": "", "a.py": "import pkg.sub.b\n", "sub/__init__.py": ""}
    proc = check_package(tmp_path / "pkg", dict(files, **{"sub/b.py": typing_only}))
    assert proc.returncode == 1, proc.stderr
    assert "pkg.a -> pkg.sub.b -> pkg.a" in proc.stderr


def test_submodules_importing_their_parents_other_modules_pass(tmp_path):
    # pkg imports sub, whose modules import pkg's _native and each other one way:
    # the parent package Python imports first is not an edge.
    files = {
        "__init__.py": "from . import sub\nfrom ._native import f\n",
        "_native.pyi": "def f() -> None: ...\n",
        "sub/__init__.py": "def late():\n    from . import leaf\n",
        "sub/leaf.py": "from .. import _native\nfrom ._shared import g\n",
        "sub/_shared.py": "import os\nfrom pkg import _native\n",
    }
    proc = check_package(tmp_path / "pkg", files)
    assert proc.returncode == 0, proc.stderr
    assert "no import cycle among the 5 modules" in proc.stdout


def test_pickleguard_has_no_import_cycle():
    proc = check(Path(pickleguard.__file__).parent)
    assert proc.returncode == 0, proc.stderr
