"""What pickleguard's .pth file adds to interpreter start.

    python benchmarks/startup.py [--runs N]

Run it with the interpreter of an environment where pickleguard is installed from
its wheel. It builds a scratch virtual environment holding a copy of that
installation and times `python -c pass` there in three configurations,
interleaved run by run so machine noise hits them alike:

* absent: the .pth file removed;
* unconfigured: the .pth file present, no PICKLEGUARD_ variable set;
* enforcing: PICKLEGUARD_MANIFEST names a manifest of 10,000 entries;
* enforcing, indexed: the same manifest with its index (`pickleguard index`);

and the first load of a small pickle right after start (`pickle.loads` as the
first thing the program does), plain (no .pth file) and enforcing that manifest,
which pins it. With --baseline PYTHON, the enforcing rows are also run with the
pickleguard installed for that interpreter (another build), in the same rounds.

It prints medians, the spread (25th to 75th percentile) and the differences to
"absent" (start) and to the plain first load, measured in this one run, next to
their targets.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The first load: a small pickle, loaded as soon as the program starts.
PAYLOAD = pickle.dumps({"id": 7, "name": "x", "ok": True}, protocol=4)
FIRST_LOAD = (
    "import pickle, time; start = time.perf_counter(); "
    f"pickle.loads({PAYLOAD!r}); print(time.perf_counter() - start)"
)
COUNT_ENTRIES = "import pickleguard._core as c; print(c.process_layers()[0][2])"
TARGET_MS = 5.0  # both targets: start + <= 5 ms, first load + <= 5 ms beyond plain


def installed(python: str) -> tuple[Path, Path]:
    """The pickleguard package and the .pth file installed for `python`."""
    out = subprocess.check_output(
        [
            python,
            "-c",
            "import pickleguard, sysconfig; print(pickleguard.__file__); "
            "print(sysconfig.get_paths()['purelib'])",
        ],
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("PICKLEGUARD_")},
    ).split("\n")
    return Path(out[0]).resolve().parent, Path(out[1]) / "00-pickleguard.pth"


def make_manifest(path: Path, entries: int) -> None:
    """`entries` entries (random digests, half with a stack), the last pinning PAYLOAD."""
    lines = ["version = 1", ""]
    for i in range(entries - 1):
        lines += ["[[pickle]]", f'sha256 = "{secrets.token_hex(32)}"']
        if i % 2:
            lines.append(f'stack = ["app.module{i % 97}:load_*"]')
        lines.append("")
    lines += ["[[pickle]]", f'sha256 = "{hashlib.sha256(PAYLOAD).hexdigest()}"', ""]
    path.write_text("\n".join(lines))


def scratch_venv(base_python: str, directory: Path) -> tuple[Path, Path, Path]:
    """A virtual environment of `base_python` holding a copy of its pickleguard:
    (its python, the .pth file to copy in, where the .pth file goes)."""
    package, pth = installed(base_python)
    if not pth.exists():
        raise SystemExit(
            f"error: {pth} not found\n"
            "hint: install pickleguard from its wheel (pip install .) and rerun"
        )
    subprocess.run([base_python, "-m", "venv", "--without-pip", str(directory)], check=True)
    python = directory / "bin" / "python"
    site_dir = Path(
        subprocess.check_output(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            text=True,
        ).strip()
    )
    shutil.copytree(package, site_dir / "pickleguard")
    return python, pth, site_dir / "00-pickleguard.pth"


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4)
    return q[0], statistics.median(values), q[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument(
        "--baseline",
        metavar="PYTHON",
        help="also run the enforcing rows with the pickleguard installed for PYTHON",
    )
    args = parser.parse_args()

    base_env = {k: v for k, v in os.environ.items() if not k.startswith("PICKLEGUARD_")}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "manifest.toml"
        make_manifest(manifest, args.entries)
        enforcing = {**base_env, "PICKLEGUARD_MANIFEST": str(manifest)}
        builds = {"": scratch_venv(sys.executable, Path(tmp) / "venv")}
        if args.baseline:
            builds["baseline "] = scratch_venv(args.baseline, Path(tmp) / "venv-baseline")
        # name: (build, with the .pth file, environment, program)
        configs: dict[str, tuple[str, bool, dict, str]] = {
            "absent": ("", False, base_env, "pass"),
            "unconfigured": ("", True, base_env, "pass"),
        }
        # The same manifest with its index beside it (`pickleguard index`), which
        # this build reads instead of the TOML.
        indexed_manifest = Path(tmp) / "indexed" / "manifest.toml"
        indexed_manifest.parent.mkdir()
        shutil.copy(manifest, indexed_manifest)
        subprocess.run(
            [sys.executable, "-m", "pickleguard", "index", str(indexed_manifest)],
            env=base_env,
            check=True,
            capture_output=True,
        )
        indexed = {**base_env, "PICKLEGUARD_MANIFEST": str(indexed_manifest)}
        for build in builds:
            configs[f"{build}enforcing"] = (build, True, enforcing, "pass")
        configs["enforcing, indexed"] = ("", True, indexed, "pass")
        configs["plain first load"] = ("", False, base_env, FIRST_LOAD)
        for build in builds:
            configs[f"{build}enforcing first load"] = (build, True, enforcing, FIRST_LOAD)
        configs["enforcing first load, indexed"] = ("", True, indexed, FIRST_LOAD)
        for python, pth, installed_pth in builds.values():
            # Warm the page cache and check enforcement really happens.
            shutil.copy(pth, installed_pth)
            check = subprocess.run(
                [
                    str(python),
                    "-c",
                    COUNT_ENTRIES,
                ],
                env=enforcing,
                capture_output=True,
                text=True,
                check=True,
            )
            assert int(check.stdout) == args.entries, check
            subprocess.run(
                [str(python), "-c", FIRST_LOAD], env=enforcing, check=True, capture_output=True
            )
        times: dict = {name: [] for name in configs}
        # The first pickle.loads call itself, as the program times it.
        first_loads: dict = {name: [] for name in configs if "first load" in name}
        for _ in range(args.runs):
            for name, (build, with_pth, env, program) in configs.items():
                python, pth, installed_pth = builds[build]
                if with_pth and not installed_pth.exists():
                    shutil.copy(pth, installed_pth)
                elif not with_pth and installed_pth.exists():
                    installed_pth.unlink()
                start = time.perf_counter()
                out = subprocess.run(
                    [str(python), "-c", program], env=env, check=True, capture_output=True
                )
                times[name].append(time.perf_counter() - start)
                if name in first_loads:
                    first_loads[name].append(float(out.stdout))
    stats = {name: [v * 1000 for v in quartiles(t)] for name, t in times.items()}
    print(
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores; "
        f"{args.runs} interleaved runs each; manifest of {args.entries} entries"
    )
    print(f"command: {' '.join(sys.argv)}")
    print("wall time of the whole process, median [25th-75th percentile]; target: + <= 5 ms")
    for name, (low, median, high) in stats.items():
        reference = "plain first load" if "first load" in name else "absent"
        delta = median - stats[reference][1]
        line = f"  {name:32} median {median:7.2f} ms [{low:6.2f}-{high:6.2f}]"
        if name != reference:
            line += f"   {delta:+6.2f} ms vs {reference}"
            if "enforcing" in name:
                met = "met" if delta <= TARGET_MS else "missed"
                line += f"   target +{TARGET_MS:.0f} ms: {met}"
        print(line)
    print("the first pickle.loads call alone, as the program times it:")
    load_stats = {name: [v * 1000 for v in quartiles(t)] for name, t in first_loads.items()}
    for name, (low, median, high) in load_stats.items():
        line = f"  {name:32} median {median:7.2f} ms [{low:6.2f}-{high:6.2f}]"
        if name != "plain first load":
            delta = median - load_stats["plain first load"][1]
            met = "met" if delta <= TARGET_MS else "missed"
            line += f"   {delta:+6.2f} ms vs plain   target +{TARGET_MS:.0f} ms: {met}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
