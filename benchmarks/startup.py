"""What pickleguard's .pth file adds to interpreter start.

    python benchmarks/startup.py [--runs N]

Run it with the interpreter of an environment where pickleguard is installed from
its wheel. It builds a scratch virtual environment holding a copy of that
installation and times `python -c pass` there in three configurations,
interleaved run by run so machine noise hits them alike:

* absent: the .pth file removed;
* unconfigured: the .pth file present, no PICKLEGUARD_ variable set;
* enforcing: PICKLEGUARD_MANIFEST names a manifest of 10,000 entries.

It prints medians and the differences to "absent", measured in this one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path


def installed_package() -> Path:
    import pickleguard

    return Path(pickleguard.__file__).resolve().parent


def make_manifest(path: Path, entries: int) -> None:
    lines = ["version = 1", ""]
    for i in range(entries):
        lines += ["[[pickle]]", f'sha256 = "{secrets.token_hex(32)}"']
        if i % 2:
            lines.append(f'stack = ["app.module{i % 97}:load_*"]')
        lines.append("")
    path.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--entries", type=int, default=10_000)
    args = parser.parse_args()

    source_site = Path(sysconfig.get_paths()["purelib"])
    pth = source_site / "00-pickleguard.pth"
    if not pth.exists():
        print(f"error: {pth} not found", file=sys.stderr)
        print("hint: install pickleguard from its wheel (pip install .) and rerun", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        python = venv / "bin" / "python"
        site_dir = Path(
            subprocess.check_output(
                [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                text=True,
            ).strip()
        )
        shutil.copytree(installed_package(), site_dir / "pickleguard")
        installed_pth = site_dir / "00-pickleguard.pth"
        manifest = Path(tmp) / "manifest.toml"
        make_manifest(manifest, args.entries)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("PICKLEGUARD_")}
        configs = {
            "absent": (False, base_env),
            "unconfigured": (True, base_env),
            "enforcing": (True, {**base_env, "PICKLEGUARD_MANIFEST": str(manifest)}),
        }
        times: dict = {name: [] for name in configs}
        command = [str(python), "-c", "pass"]
        # Warm the page cache and check enforcement really happens.
        shutil.copy(pth, installed_pth)
        check = subprocess.run(
            [str(python), "-c", "import pickleguard._core as c; print(c.process_layers()[0][2])"],
            env=configs["enforcing"][1],
            capture_output=True,
            text=True,
            check=True,
        )
        assert int(check.stdout) == args.entries, check
        for _ in range(args.runs):
            for name, (with_pth, env) in configs.items():
                if with_pth and not installed_pth.exists():
                    shutil.copy(pth, installed_pth)
                elif not with_pth and installed_pth.exists():
                    installed_pth.unlink()
                start = time.perf_counter()
                subprocess.run(command, env=env, check=True)
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) * 1000 for name, t in times.items()}
    print(
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores; "
        f"{args.runs} interleaved runs each; manifest of {args.entries} entries"
    )
    print(f"command: {' '.join(sys.argv)}")
    for name, ms in medians.items():
        delta = ms - medians["absent"]
        print(f"  {name:13} median {ms:7.2f} ms   {delta:+6.2f} ms vs absent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
