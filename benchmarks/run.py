"""Run the whole benchmark suite and print each table.

    python benchmarks/run.py [--quick] [NAME ...]

NAME is any of loads, startup, backstop, memory, artifacts (default: all, in that
order). Run it with the interpreter of an environment where pickleguard is
installed from its wheel (startup needs its .pth file), with fickling and numpy
installed for the comparisons they take part in, and torch and joblib for
artifacts. Each benchmark is also a script of its own; this
runs them one after the other with the arguments below and prints the machine
they ran on. --quick takes a few minutes, with fewer rounds, a 256 MiB pickle
for the memory benchmark instead of 1 GiB, and 64 MiB checkpoints for artifacts
instead of 256 MiB. loads and startup print each row with a target next to it,
marked met or missed; --baseline PYTHON adds another build's numbers to both.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent

# The arguments each benchmark runs with: (full, quick).
SUITE = {
    "loads": ([], ["--quick", "--rounds", "3", "--seconds", "0.1"]),
    "startup": ([], ["--runs", "40"]),
    "backstop": ([], ["--rounds", "5"]),
    "memory": ([], ["--size", "256M", "--rounds", "1"]),
    "artifacts": ([], ["--quick"]),
}


def cpu_model() -> str:
    # What `lscpu` reports as "Model name".
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, a smaller pickle")
    parser.add_argument(
        "--baseline",
        metavar="PYTHON",
        help="compare with the pickleguard build installed for PYTHON (loads and startup)",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(SUITE))
    args = parser.parse_args(argv)
    unknown = set(args.names) - set(SUITE)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    names = args.names or list(SUITE)

    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(f"date: {datetime.date.today().isoformat()}")
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}, {platform.platform()}")
    print(
        f"python {platform.python_version()} ({sys.executable}); "
        f"pickleguard {version('pickleguard-runtime')}, fickling {version('fickling')}, "
        f"numpy {version('numpy')}, torch {version('torch')}"
    )
    failed = []
    for name in names:
        full, quick = SUITE[name]
        command = [sys.executable, str(HERE / f"{name}.py"), *(quick if args.quick else full)]
        if args.baseline and name in ("loads", "startup"):
            command += ["--baseline", args.baseline]
        print(f"\n== {name}: {' '.join(command[1:])}", flush=True)
        start = time.monotonic()
        if subprocess.run(command).returncode != 0:
            failed.append(name)
        print(f"({name} took {time.monotonic() - start:.0f} s)", flush=True)
    if failed:
        print(f"error: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
