"""Peak memory of loading a large pickle, guarded against plain.

    python benchmarks/memory.py [--size 1G] [--rounds N] [--payloads bytes,numpy] [--dir DIR]

It writes one pickle of about `--size` bytes to a scratch directory (removed
afterwards), then loads it in fresh interpreters, interleaving the configurations
round by round:

* plain: no guard;
* guarded: `pickleguard.activate(manifest)`, the manifest listing the pickle's SHA-256.

Each load goes through one entry point: `pickle.loads(data)` on the file's bytes
read beforehand (the caller holds them, so they are not counted), `pickle.load(f)`
on the open file, or `pickle.Unpickler(f).load()`. The payloads, pickled with
protocol 5:

* bytes: one `bytes` object of `--size` bytes (a BINBYTES8 opcode);
* numpy: a uint8 array of `--size` elements, its data in-band (BYTEARRAY8), the
  way `pickle.dump(array, f, protocol=5)` writes it; this pickle names globals.

Peak is the process's peak resident set (VmHWM, reset just before the load
through /proc/self/clear_refs) minus its resident set just before the load; kept
is the resident set right after the load, with the loaded object (and for
Unpickler, the unpickler) still referenced, minus the same. The target is
guarded peak <= plain peak + 1.1 x the pickle's size.
"""

from __future__ import annotations

import argparse
import hashlib
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

ENTRY_POINTS = ["loads", "load", "Unpickler"]
CONFIGS = ["plain", "guarded"]
TARGET_FACTOR = 1.1
MIB = 1 << 20

WORKER = r"""
import json, pickle, re, resource, sys, time
guard, path, manifest, entry, payload_kind = sys.argv[1:6]
if payload_kind == "numpy":
    import numpy  # imported before the baseline in both configurations

def status(field):
    # kB, from the kernel's own accounting
    text = open("/proc/self/status").read()
    return int(re.search(field + r":\s+(\d+) kB", text).group(1)) * 1024

if guard == "guarded":
    import pickleguard, pickleguard._core
    pickleguard.activate(manifest)
    # Waits for the manifest to be read, so that is not part of the load.
    assert pickleguard._core.process_layers()[0][2] == 1

data = open(path, "rb").read() if entry == "loads" else None
try:
    # Resets VmHWM to the current RSS (Linux 4.0+), so the peak is this load's.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    peak_field = "VmHWM"
except OSError:
    peak_field = None
before = status("VmRSS")
start = time.perf_counter()
if entry == "loads":
    obj = pickle.loads(data)
else:
    with open(path, "rb") as f:
        if entry == "load":
            obj = pickle.load(f)
        else:
            # Kept, as by a caller reading several pickles from one stream.
            unpickler = pickle.Unpickler(f)
            obj = unpickler.load()
seconds = time.perf_counter() - start
if peak_field:
    peak = status(peak_field)
else:
    # ru_maxrss (kB) also covers anything before the load; an upper bound.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
after = status("VmRSS")
size = obj.nbytes if payload_kind == "numpy" else len(obj)
print(json.dumps({
    "peak": peak - before, "retained": after - before, "seconds": seconds,
    "object_size": size, "exact_peak": bool(peak_field),
}))
"""


def parse_size(text: str) -> int:
    """Bytes in `text`: a number with an optional binary unit (K, M, G; KiB, MiB, GiB)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]?)(?:i?B)?", text.strip(), re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 1G or 256M)")
    number, unit = match.groups()
    return int(float(number) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit.upper()])


def write_payload(kind: str, size: int, path: Path) -> None:
    import pickle

    if kind == "numpy":
        import numpy

        obj = numpy.full(size, 0x5A, dtype=numpy.uint8)
    else:
        obj = b"\x5a" * size
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=5)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def run_worker(config: str, path: Path, manifest: Path, entry: str, kind: str) -> dict:
    command = [sys.executable, "-c", WORKER, config, str(path), str(manifest), entry, kind]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{config} {entry} failed:\n{out.stderr}")
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("1G"), help="e.g. 1G, 256M")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--payloads", default="bytes,numpy", help="bytes, numpy or both")
    parser.add_argument("--dir", default=None, help="scratch directory (default: the temp dir)")
    args = parser.parse_args(argv)
    kinds = args.payloads.split(",")
    if set(kinds) - {"bytes", "numpy"}:
        parser.error(f"unknown payload in {args.payloads!r}")
    if "numpy" in kinds:
        try:
            import numpy  # noqa: F401
        except ImportError:
            print("numpy is not installed: measuring the bytes payload only", file=sys.stderr)
            kinds.remove("numpy")

    print(
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores; "
        f"{args.rounds} interleaved rounds; command: {' '.join(sys.argv)}"
    )
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        free = shutil.disk_usage(tmp).free
        if free < args.size + 256 * MIB:
            print(f"error: {tmp} has {free // MIB} MiB free", file=sys.stderr)
            print("hint: pass --dir with more room, or a smaller --size", file=sys.stderr)
            return 2
        for kind in kinds:
            path = Path(tmp) / f"{kind}.pkl"
            write_payload(kind, args.size, path)
            pickle_size = path.stat().st_size
            manifest = Path(tmp) / "manifest.toml"
            manifest.write_text(f'version = 1\n\n[[pickle]]\nsha256 = "{file_sha256(path)}"\n')
            for entry in ENTRY_POINTS:
                results: dict[str, list[dict]] = {c: [] for c in CONFIGS}
                for _ in range(args.rounds):
                    for config in CONFIGS:
                        try:
                            result = run_worker(config, path, manifest, entry, kind)
                        except RuntimeError as e:
                            print(f"error: {e}", file=sys.stderr)
                            return 1
                        assert result["object_size"] == args.size, result
                        results[config].append(result)
                rows.append((kind, entry, pickle_size, results))
                print(f"measured {kind} {entry}", file=sys.stderr, flush=True)
            path.unlink()

    exact = all(r["exact_peak"] for *_, res in rows for rs in res.values() for r in rs)
    if not exact:
        print("note: /proc/self/clear_refs was not writable; peaks are ru_maxrss, upper bounds")
    print(
        f"peak RSS during the load above the RSS just before it, median of {args.rounds}; "
        f"size = the pickle file's size\n"
        f"target: guarded <= plain + {TARGET_FACTOR} x size"
    )
    print(
        f"{'payload':7} {'size MiB':>8} {'entry':9} | {'peak MiB':>8} {'guarded':>8} "
        f"{'extra':>6} {'met':>3} | {'kept MiB':>8} {'guarded':>8} | {'time s':>6} {'guarded':>7}"
    )

    def median(results: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in results)

    for kind, entry, pickle_size, results in rows:
        plain, guarded = results["plain"], results["guarded"]
        peak, guarded_peak = median(plain, "peak"), median(guarded, "peak")
        extra = (guarded_peak - peak) / pickle_size
        met = "yes" if guarded_peak <= peak + TARGET_FACTOR * pickle_size else "no"
        print(
            f"{kind:7} {pickle_size / MIB:8.0f} {entry:9} | {peak / MIB:8.0f} "
            f"{guarded_peak / MIB:8.0f} {extra:5.2f}x {met:>3} | "
            f"{median(plain, 'retained') / MIB:8.0f} {median(guarded, 'retained') / MIB:8.0f} | "
            f"{median(plain, 'seconds'):6.2f} {median(guarded, 'seconds'):7.2f}"
        )
    print("(peak and kept: plain, then guarded; extra: (guarded - plain) peak / size)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
