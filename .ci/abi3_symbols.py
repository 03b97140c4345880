"""Check that a built extension imports only CPython symbols of the stable ABI
that exist in CPython 3.9, so one abi3 wheel can serve 3.9 to 3.13.

    python .ci/abi3_symbols.py path/to/_core.abi3.so

Offline, from the interpreters on this machine (pyenv's or on PATH):
- the symbols the extension imports from CPython: `nm -D --undefined-only`,
  names starting with `Py` or `_Py`;
- the stable ABI: CPython 3.11+ install `test/test_stable_abi_ctypes.py`, a file
  generated from its `Misc/stable_abi.toml` that lists every stable-ABI symbol. A
  symbol must be listed by every such interpreter found (3.11, 3.12, 3.13);
- CPython 3.9 itself: each symbol must be exported by its libpython3.9.

What this cannot see: a symbol that 3.9 exports but that joined the stable ABI
only in 3.10 (the 3.9 install ships no such list). The CI runs the whole test suite
on 3.9 against the same wheel, and the extension is built with pyo3's
`abi3-py39`, whose bindings leave such functions out.
Exits 1 naming each offending symbol, 2 when the evidence is missing (never a pass
without it).
"""

from __future__ import annotations

import ast
import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

STABLE_LIST_VERSIONS = ("3.11", "3.12", "3.13")
OLDEST = "3.9"
C_API_NAME = re.compile(r"^_?Py")


def fail(status: int, message: str, hint: str = "") -> None:
    print(f"abi3_symbols: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    sys.exit(status)


def nm(path: Path, *flags: str) -> set[str]:
    if shutil.which("nm") is None:
        fail(2, "nm not found", "install binutils")
    out = subprocess.run(
        ["nm", "-D", *flags, str(path)], check=True, capture_output=True, text=True
    ).stdout
    names = set()
    for line in out.splitlines():
        parts = line.split()
        if parts:
            names.add(parts[-1].split("@")[0])
    return names


def prefix(version: str) -> Path | None:
    """The install prefix of CPython `version`: pyenv's, else one on PATH."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    for candidate in sorted(glob.glob(str(root / "versions" / f"{version}.*"))):
        if (Path(candidate) / "bin" / f"python{version}").exists():
            return Path(candidate)
    exe = shutil.which(f"python{version}")
    if exe:
        out = subprocess.run(
            [exe, "-c", "import sys; print(sys.base_prefix)"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return Path(out)
    return None


def stable_symbols(listing: Path) -> set[str]:
    """SYMBOL_NAMES of a generated test_stable_abi_ctypes.py, without the
    Windows-only additions."""
    tree = ast.parse(listing.read_text(encoding="utf-8"))
    names: set[str] = set()

    def collect(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.If):
                if "MS_WINDOWS" not in ast.unparse(node.test):
                    collect(node.body)
                continue
            targets = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AugAssign):
                targets = [node.target]
            if any(isinstance(t, ast.Name) and t.id == "SYMBOL_NAMES" for t in targets):
                value = node.value
                for const in ast.walk(value):
                    if isinstance(const, ast.Constant) and isinstance(const.value, str):
                        names.add(const.value)

    collect(tree.body)
    return names


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        fail(2, "usage: abi3_symbols.py EXTENSION.so")
    extension = Path(argv[0])
    if not extension.is_file():
        fail(2, f"{extension}: no such file")
    imported = {s for s in nm(extension, "--undefined-only") if C_API_NAME.match(s)}
    if not imported:
        fail(2, f"{extension}: imports no CPython symbol; is it the extension?")

    lists = []
    for version in STABLE_LIST_VERSIONS:
        base = prefix(version)
        if base is None:
            continue
        listing = base / "lib" / f"python{version}" / "test" / "test_stable_abi_ctypes.py"
        if listing.is_file():
            lists.append((version, stable_symbols(listing)))
    if not lists:
        fail(
            2,
            "no CPython 3.11+ with test/test_stable_abi_ctypes.py found",
            "install CPython 3.11, 3.12 or 3.13 with its test package (pyenv does)",
        )
    base = prefix(OLDEST)
    libs = sorted(glob.glob(str(base / "lib" / f"libpython{OLDEST}*.so*"))) if base else []
    if not libs:
        fail(
            2,
            f"no shared libpython{OLDEST} found",
            f"install CPython {OLDEST} built with --enable-shared (pyenv: "
            'PYTHON_CONFIGURE_OPTS="--enable-shared")',
        )
    exported_by_oldest = nm(Path(libs[0]), "--defined-only")

    bad = []
    for symbol in sorted(imported):
        missing = [v for v, names in lists if symbol not in names]
        if missing:
            bad.append(f"{symbol}: not in the stable ABI of CPython {', '.join(missing)}")
        elif symbol not in exported_by_oldest:
            bad.append(f"{symbol}: not exported by CPython {OLDEST}")
    checked = ", ".join(v for v, _ in lists)
    if bad:
        print(f"{extension}: {len(bad)} of {len(imported)} CPython symbols are not stable-ABI:")
        for line in bad:
            print(f"  {line}")
        print("hint: find a stable-ABI equivalent (docs/deployment.md, 'One abi3 wheel').")
        return 1
    print(
        f"{extension.name}: all {len(imported)} imported CPython symbols are in the stable ABI "
        f"(as listed by CPython {checked}) and exported by CPython {OLDEST}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
