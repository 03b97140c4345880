"""Guarded against plain loads of pinned checkpoints, mapped and not, side by side.

    python benchmarks/artifacts.py [--size 256M] [--rounds N] [--quick] [--dir DIR]

It writes three files of about `--size` bytes to a scratch directory (removed
afterwards):

* state_dict: `torch.save` of a dict of 500 float32 tensors;
* module: `torch.save` of a whole `nn.Sequential` of `nn.Linear` layers
  (loaded with `weights_only=False`);
* joblib: `joblib.dump` of a dict holding one large float64 array.

Each is loaded in fresh interpreters, the configurations interleaved round by
round: plain (no guard), and guarded by a manifest pinning the three files with
SHA-256 or with BLAKE3 (`pickleguard.activate`, waited for before the load), for
each mmap setting: torch `mmap=False` and `mmap=True`, joblib `mmap_mode=None`
and `'r'`. After the load every tensor or array is summed, so that mapped pages
are really read, and the sum is checked against plain's.

Reported per row, medians over the rounds:

* time: the load call alone, in ms;
* overhead: guarded minus plain, as a multiple of the identity's own hash time
  for that file (pickleguard's hash of the file's bytes in memory, measured in
  the same worker);
* peak: the most memory the process held from just before the load until after
  the sums, above what it held just before, in MiB. Memory is the process's
  resident set without its shared-memory pages, plus the machine's shared memory
  (`Shmem` in /proc/meminfo) above its value before the load: a sealed copy is
  shared memory, counted once whether or not it is mapped (and whether it is
  mapped once or twice), and plain's file pages mapped by mmap count as resident.

Targets: overhead <= 1.1 x the hash time; guarded peak <= plain peak + 5% of the
file's size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

MIB = 1 << 20
TARGET_OVERHEAD = 1.1
TARGET_MEMORY = 0.05
CONFIGS = ["plain", "sha256", "blake3"]
# (file, how it is loaded): the rows of the table.
ROWS = [
    ("state_dict", "mmap=False"),
    ("state_dict", "mmap=True"),
    ("module", "mmap=False"),
    ("module", "mmap=True"),
    ("joblib", "mmap_mode=None"),
    ("joblib", "mmap_mode='r'"),
]

MAKE = r"""
import sys, joblib, numpy as np, torch
size, directory = int(sys.argv[1]), sys.argv[2]
count = 500
per = max(1, size // 4 // count)
torch.manual_seed(0)
torch.save({f"layer{i}.weight": torch.randn(per) for i in range(count)},
           f"{directory}/state_dict.pt")
width = 1024
layers = max(1, size // 4 // (width * width))
torch.save(torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)]),
           f"{directory}/module.pt")
joblib.dump({"weights": np.random.default_rng(0).standard_normal(size // 8), "name": "big"},
            f"{directory}/model.joblib")
"""

WORKER = r"""
import gc, json, re, sys, threading, time
config, file, how, manifest = sys.argv[1:5]
import joblib, numpy, torch
from pickleguard import _core

def status():
    text = open("/proc/self/status").read()
    field = lambda name: int(re.search(name + r":\s+(\d+) kB", text).group(1)) * 1024
    return field("VmRSS") - field("RssShmem")

def shmem():
    text = open("/proc/meminfo").read()
    return int(re.search(r"Shmem:\s+(\d+) kB", text).group(1)) * 1024

data = open(file, "rb").read()
algorithm = "blake3" if config == "blake3" else "sha256"
start = time.perf_counter()
_core.hexdigest(data, algorithm)
hash_time = time.perf_counter() - start
del data
gc.collect()
if config != "plain":
    import pickleguard
    pickleguard.activate(manifest)
    _core.settle_manifests()

base_rss, base_shm = status(), shmem()
peak = [0]
done = threading.Event()

def sample():
    while not done.is_set():
        peak[0] = max(peak[0], status() - base_rss + shmem() - base_shm)
        time.sleep(0.002)

sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
sys.setswitchinterval(0.001)
start = time.perf_counter()
if file.endswith(".joblib"):
    obj = joblib.load(file, mmap_mode=None if how == "mmap_mode=None" else "r")
    load_time = time.perf_counter() - start
    total = float(obj["weights"].sum())
else:
    mmap = how == "mmap=True"
    obj = torch.load(file, mmap=mmap, weights_only=not file.endswith("module.pt"))
    load_time = time.perf_counter() - start
    tensors = obj.values() if isinstance(obj, dict) else obj.parameters()
    total = float(sum(t.double().sum() for t in tensors))
peak[0] = max(peak[0], status() - base_rss + shmem() - base_shm)
done.set()
sampler.join()
print(json.dumps({"load": load_time, "hash": hash_time, "peak": peak[0], "sum": total}))
"""


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)([KMG]?)", text.upper())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (say 256M or 1G)")
    return int(match.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[match.group(2)]


def digests(path: Path) -> dict:
    from pickleguard import _core

    data = path.read_bytes()
    return {a: _core.hexdigest(data, a) for a in ("sha256", "blake3")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("256M"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="64 MiB files, 1 round")
    parser.add_argument("--dir", help="scratch directory (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.rounds = 64 * MIB, 1
    scratch = Path(tempfile.mkdtemp(prefix="pg-artifacts-", dir=args.dir))
    try:
        return run(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run(args: argparse.Namespace, scratch: Path) -> int:
    subprocess.run([sys.executable, "-c", MAKE, str(args.size), str(scratch)], check=True)
    files = {
        "state_dict": scratch / "state_dict.pt",
        "module": scratch / "module.pt",
        "joblib": scratch / "model.joblib",
    }
    hashes = {name: digests(path) for name, path in files.items()}
    for algorithm in ("sha256", "blake3"):
        entries = "".join(
            f'[[artifact]]\n{algorithm} = "{hashes[name][algorithm]}"\n' for name in files
        )
        (scratch / f"{algorithm}.toml").write_text("version = 1\n" + entries)

    results: dict = {}
    for _ in range(args.rounds):
        for file, how in ROWS:
            for config in CONFIGS:
                manifest = scratch / f"{config}.toml"
                out = subprocess.run(
                    [sys.executable, "-c", WORKER, config, str(files[file]), how, str(manifest)],
                    capture_output=True,
                    text=True,
                    env={k: v for k, v in os.environ.items() if not k.startswith("PICKLEGUARD_")},
                )
                if out.returncode != 0:
                    print(out.stderr, file=sys.stderr)
                    return 1
                results.setdefault((file, how, config), []).append(json.loads(out.stdout))

    print(
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores; "
        f"{args.rounds} interleaved rounds; command: benchmarks/artifacts.py "
        + " ".join(sys.argv[1:])
    )
    print(
        f"targets: overhead <= {TARGET_OVERHEAD} x the identity's hash time; "
        f"peak <= plain + {TARGET_MEMORY:.0%} of the file"
    )
    header = (
        f"{'file':<10} {'MiB':>5} {'load':<14} {'config':<7} | {'time ms':>8} "
        f"{'hash ms':>8} {'overhead':>9} {'met':>4} | {'peak MiB':>8} {'extra':>7} {'met':>4}"
    )
    print(header)
    failed = False
    for file, how in ROWS:
        size = files[file].stat().st_size
        plain = results[(file, how, "plain")]
        plain_time = statistics.median(r["load"] for r in plain)
        plain_peak = statistics.median(r["peak"] for r in plain)
        for config in CONFIGS:
            runs = results[(file, how, config)]
            if any(abs(r["sum"] - plain[0]["sum"]) > 1e-6 * abs(plain[0]["sum"]) for r in runs):
                print(f"error: {file} {how} {config}: the values differ from plain's")
                failed = True
            load = statistics.median(r["load"] for r in runs)
            peak = statistics.median(r["peak"] for r in runs)
            line = f"{file:<10} {size / MIB:>5.0f} {how:<14} {config:<7} | {load * 1e3:>8.1f} "
            if config == "plain":
                line += f"{'':>8} {'':>9} {'':>4} | {peak / MIB:>8.0f} {'':>7} {'':>4}"
            else:
                hash_time = statistics.median(r["hash"] for r in runs)
                overhead = (load - plain_time) / hash_time
                extra = (peak - plain_peak) / size
                line += (
                    f"{hash_time * 1e3:>8.1f} {overhead:>8.2f}x "
                    f"{'yes' if overhead <= TARGET_OVERHEAD else 'no':>4} | "
                    f"{peak / MIB:>8.0f} {extra:>+6.2f}x "
                    f"{'yes' if extra <= TARGET_MEMORY else 'no':>4}"
                )
            print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
