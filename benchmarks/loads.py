"""Guarded loads against plain pickle, measured side by side.

    python benchmarks/loads.py [--rounds N] [--quick]

For each payload (about 50 B, a 10 KB and a 1 MB object graph, 10 KB of class
instances, 64 MB of bytes)
and each entry point (`pickle.loads`, `pickle.load` from a file on disk,
`Unpickler.load`), it times loads in fresh interpreters:

* plain: no pickleguard;
* guarded: enforcing a 10,000-entry manifest that lists the payload;
* guarded+stack: the same, the payload's entry restricted by a stack pattern;
* python-guard: a straightforward pure-Python guard for comparison (hashlib,
  a `sys._getframe` walk and a dict lookup), wrapped around plain pickle.

Loads run about 20 frames down the stack. Configurations alternate round by
round, so noise hits them alike; each round reports the median time per load,
and the table shows the median over rounds, the ratio to plain, and the
overhead (guarded minus plain) against hashlib's SHA-256 of the same bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PAYLOADS = {
    "50 B": "{'id': 7, 'name': 'x', 'ok': True}",
    "10 KB graph": "[{'k%d' % i: [i, float(i), str(i)] * 3} for i in range(120)]",
    "1 MB graph": "[{'k%d' % i: [i, float(i), str(i)] * 3} for i in range(12000)]",
    # Class instances: the pickle names globals, so the guard admits each import.
    "10 KB objects": (
        "[__import__('datetime').date(2000 + i % 50, 1 + i % 12, 1) for i in range(600)]"
    ),
    "64 MB bytes": "b'\\x01' * (64 << 20)",
}

WORKER = r"""
import hashlib, io, json, pickle, statistics, sys, time
config, payload_file, manifest, entry, budget = sys.argv[1:6]
data = open(payload_file, "rb").read()
digest = hashlib.sha256(data).hexdigest()

if config.startswith("guarded"):
    import pickleguard
    pickleguard.activate(manifest)
elif config == "python-guard":
    allowed = {digest: None}
    for line in open(manifest):
        if line.startswith("sha256"):
            allowed[line.split('"')[1]] = None
    plain_loads, plain_load, PlainUnpickler = pickle.loads, pickle.load, pickle.Unpickler

    def check(raw):
        if hashlib.sha256(raw).hexdigest() not in allowed:
            raise RuntimeError("refused")
        frame, names = sys._getframe(1), []
        while frame is not None:
            names.append(frame.f_globals.get("__name__", "?") + ":" + frame.f_code.co_name)
            frame = frame.f_back

    def loads(raw, **kw):
        check(raw)
        return plain_loads(raw, **kw)

    def load(file, **kw):
        raw = file.read()
        check(raw)
        return plain_loads(raw, **kw)

    class Unpickler:
        def __init__(self, file, **kw):
            self.file, self.kw = file, kw
        def load(self):
            return load(self.file, **self.kw)

    pickle.loads, pickle.load, pickle.Unpickler = loads, load, Unpickler

def one_load():
    if entry == "loads":
        return pickle.loads(data)
    with open(payload_file, "rb") as f:
        if entry == "load":
            return pickle.load(f)
        return pickle.Unpickler(f).load()

def deep(n):
    # About 20 frames down, as a load inside a framework would be.
    return deep(n - 1) if n else one_load()

def load_at_depth():
    return deep(18)

load_at_depth()  # warm up
samples = []
deadline = time.perf_counter() + float(budget)
while time.perf_counter() < deadline or len(samples) < 5:
    start = time.perf_counter()
    load_at_depth()
    samples.append(time.perf_counter() - start)
hash_samples = []
for _ in range(max(5, min(len(samples), 200))):
    start = time.perf_counter()
    hashlib.sha256(data).digest()
    hash_samples.append(time.perf_counter() - start)
print(json.dumps({"load": statistics.median(samples), "sha256": statistics.median(hash_samples)}))
"""


def make_manifest(path: Path, digest: str, stack: bool, entries: int) -> None:
    lines = ["version = 1", ""]
    for _ in range(entries - 1):
        lines += ["[[pickle]]", f'sha256 = "{secrets.token_hex(32)}"', ""]
    lines += ["[[pickle]]", f'sha256 = "{digest}"']
    if stack:
        lines.append('stack = ["__main__:load_at_depth"]')
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.4, help="time per measurement")
    parser.add_argument("--quick", action="store_true", help="skip the 64 MB payload")
    args = parser.parse_args()
    import hashlib
    import pickle

    configs = ["plain", "guarded", "guarded+stack", "python-guard"]
    entries = ["loads", "load", "Unpickler"]
    results: dict = {}
    print(
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores; "
        f"{args.rounds} interleaved rounds; command: {' '.join(sys.argv)}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name, expression in PAYLOADS.items():
            if args.quick and "64 MB" in name:
                continue
            payload = Path(tmp) / "payload.pkl"
            payload.write_bytes(pickle.dumps(eval(expression), protocol=4))
            digest = hashlib.sha256(payload.read_bytes()).hexdigest()
            manifests = {}
            for stack in (False, True):
                manifests[stack] = Path(tmp) / f"m-{stack}.toml"
                make_manifest(manifests[stack], digest, stack, 10_000)
            budget = str(args.seconds if "64 MB" not in name else args.seconds * 5)
            for entry in entries:
                rounds = {c: [] for c in configs}
                for _ in range(args.rounds):
                    for config in configs:
                        manifest = manifests[config == "guarded+stack"]
                        out = subprocess.run(
                            [
                                sys.executable,
                                "-c",
                                WORKER,
                                config,
                                str(payload),
                                str(manifest),
                                entry,
                                budget,
                            ],
                            capture_output=True,
                            text=True,
                        )
                        if out.returncode != 0:
                            print(out.stderr, file=sys.stderr)
                            return 1
                        rounds[config].append(json.loads(out.stdout))
                plain = statistics.median(r["load"] for r in rounds["plain"])
                sha = statistics.median(r["sha256"] for r in rounds["plain"])
                row = {}
                for config in configs:
                    t = statistics.median(r["load"] for r in rounds[config])
                    row[config] = (t, t / plain, (t - plain) / sha)
                results[(name, entry)] = row
                cells = "  ".join(
                    f"{c} {t * 1e6:9.1f} us x{ratio:5.2f} ({over:5.2f} sha)"
                    for c, (t, ratio, over) in row.items()
                    if c != "plain"
                )
                print(f"{name:12} {entry:9} plain {plain * 1e6:9.1f} us  {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
