"""Guarded loads against plain pickle and other guards, measured side by side.

    python benchmarks/loads.py [--rounds N] [--seconds S] [--quick] [--configs a,b,...]

For each payload (about 50 B, a 10 KB and a 1 MB object graph, 10 KB of class
instances, 64 MB of bytes) and each entry point (`pickle.loads`, `pickle.load`
from a file on disk, `Unpickler.load`), it times loads in fresh interpreters:

* plain: no guard;
* guarded: pickleguard enforcing a 10,000-entry manifest that lists the payload;
* guarded+stack: the same, the payload's entry restricted by a stack pattern;
* python-guard: a straightforward pure-Python guard for comparison (hashlib,
  a `sys._getframe` walk and a dict lookup), wrapped around plain pickle;
* fickling: fickling's recommended runtime hook, `fickling.always_check_safety()`,
  which decodes each pickle, analyses it and loads a re-serialised copy;
* fickling-ml: fickling's `fickling.hook.activate_safe_ml_environment()`, an
  unpickler whose `find_class` checks an allowlist of ML imports.

Both fickling hooks replace `pickle.load`, `pickle.loads` and `pickle.Unpickler`
(and the same names in `_pickle`), so they cover all three entry points here. A
configuration that refuses a payload is reported as refused, with its reason.

Loads run about 20 frames down the stack. Configurations alternate round by
round, so noise hits them alike; each round reports the median time per load.
The tables show the median over rounds, the ratio to plain, and the overhead
(configuration minus plain) as a multiple of hashlib's SHA-256 of the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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
ENTRY_POINTS = ["loads", "load", "Unpickler"]

# The hex digest a manifest key holds, by key (each payload file is one pickle).
IDENTITIES: dict[str, Callable[[bytes], str]] = {
    "sha256": lambda data: hashlib.sha256(data).hexdigest(),
    "blake3": lambda data: _blake3_hex(data),
}


def _blake3_hex(data: bytes) -> str:
    import pickleguard

    return pickleguard.identify(data, algorithm="blake3").split(":")[1]


@dataclass(frozen=True)
class Config:
    name: str
    guard: str  # what the worker installs: none, pickleguard, python, fickling, fickling-ml
    identity: str = "sha256"  # the manifest key that lists the payload
    stack: bool = False  # restrict the payload's entry to the loading function
    python: str = sys.executable  # the interpreter (and so the pickleguard build) to run


CONFIGS = [
    Config("plain", "none"),
    Config("guarded", "pickleguard"),
    Config("guarded+stack", "pickleguard", stack=True),
    Config("guarded-blake3", "pickleguard", identity="blake3"),
    Config("python-guard", "python"),
    Config("fickling", "fickling"),
    Config("fickling-ml", "fickling-ml"),
]

WORKER = r"""
import hashlib, io, json, pickle, statistics, sys, time
guard, payload_file, manifest, entry, budget = sys.argv[1:6]
data = open(payload_file, "rb").read()
expected = pickle.loads(data)  # before any guard, to check what the guarded loads return

if guard == "pickleguard":
    import pickleguard
    pickleguard.activate(manifest)
elif guard == "fickling":
    import fickling
    fickling.always_check_safety()
elif guard == "fickling-ml":
    import fickling.hook
    fickling.hook.activate_safe_ml_environment()
elif guard == "python":
    allowed = {}
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

try:
    first = load_at_depth()  # also warms up
except Exception as e:
    # fickling's UnsafeFileError keeps its findings in .info; its str() leads with a repr.
    info = getattr(e, "info", None) or str(e)
    if isinstance(info, dict):
        info = f"{info.get('severity')}: {info.get('analysis')}"
    print(json.dumps({"refused": f"{type(e).__name__}: {info}"}))
    sys.exit(0)
if first != expected:
    print(f"{guard} {entry} returned a different object", file=sys.stderr)
    sys.exit(1)
samples = []
deadline = time.perf_counter() + float(budget)
while time.perf_counter() < deadline or len(samples) < 3:
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


def make_manifest(path: Path, identity: str, digest: str, stack: bool, entries: int) -> None:
    """A manifest of `entries` entries, the last of which lists the payload by `identity`."""
    lines = ["version = 1", ""]
    for _ in range(entries - 1):
        lines += ["[[pickle]]", f'{identity} = "{secrets.token_hex(32)}"', ""]
    lines += ["[[pickle]]", f'{identity} = "{digest}"']
    if stack:
        lines.append('stack = ["__main__:load_at_depth"]')
    path.write_text("\n".join(lines) + "\n")


def run_worker(config: Config, payload: Path, manifest: Path, entry: str, budget: float) -> dict:
    command = [config.python, "-c", WORKER, config.guard, str(payload), str(manifest), entry]
    out = subprocess.run([*command, str(budget)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{config.name} {entry} failed:\n{out.stderr}")
    return json.loads(out.stdout)


def measure(payload: Path, configs: list[Config], entry: str, rounds: int, budget: float, tmp):
    """Median time per load of each configuration, interleaved round by round."""
    data = payload.read_bytes()
    manifests: dict[tuple[str, bool], Path] = {}
    for config in configs:
        key = (config.identity, config.stack)
        if key not in manifests:
            manifests[key] = Path(tmp) / f"m-{config.identity}-{config.stack}.toml"
            digest = IDENTITIES[config.identity](data)
            make_manifest(manifests[key], config.identity, digest, config.stack, 10_000)
    samples: dict[str, list[dict]] = {c.name: [] for c in configs}
    refused: dict[str, str] = {}
    for _ in range(rounds):
        for config in configs:
            if config.name in refused:
                continue
            manifest = manifests[(config.identity, config.stack)]
            result = run_worker(config, payload, manifest, entry, budget)
            if "refused" in result:
                refused[config.name] = result["refused"]
            else:
                samples[config.name].append(result)
    return samples, refused


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # Many short rounds: on a shared machine, a burst of load then spoils few of them.
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--seconds", type=float, default=0.25, help="time per measurement")
    parser.add_argument("--quick", action="store_true", help="skip the 64 MB payload")
    parser.add_argument(
        "--payloads",
        default=",".join(PAYLOADS),
        help="comma-separated payloads to measure (default: all)",
    )
    parser.add_argument(
        "--configs",
        default=",".join(c.name for c in CONFIGS),
        help="comma-separated configurations to compare (plain is always included)",
    )
    parser.add_argument(
        "--baseline",
        metavar="PYTHON",
        help="also run 'guarded' with this interpreter, where another pickleguard build "
        "is installed (column 'baseline'), to compare two builds side by side",
    )
    args = parser.parse_args(argv)
    import pickle

    wanted = set(args.configs.split(",")) | {"plain"}
    unknown = wanted - {c.name for c in CONFIGS}
    if unknown:
        parser.error(f"unknown configuration(s): {', '.join(sorted(unknown))}")
    configs = [c for c in CONFIGS if c.name in wanted]
    if args.baseline:
        configs.append(Config("baseline", "pickleguard", python=args.baseline))
    others = [c.name for c in configs if c.name != "plain"]
    print(
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores; "
        f"{args.rounds} interleaved rounds; command: {' '.join(sys.argv)}"
    )
    times: list[str] = []
    ratios: list[str] = []
    # Why each configuration refused a payload, and at which entry points.
    refusals: dict[tuple[str, str], tuple[list[str], str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, expression in PAYLOADS.items():
            if (args.quick and "64 MB" in name) or name not in args.payloads.split(","):
                continue
            payload = Path(tmp) / "payload.pkl"
            payload.write_bytes(pickle.dumps(eval(expression), protocol=4))
            # The 64 MB loads take tens of milliseconds: give them more time per sample.
            budget = args.seconds if "64 MB" not in name else args.seconds * 5
            for entry in ENTRY_POINTS:
                try:
                    samples, refused = measure(payload, configs, entry, args.rounds, budget, tmp)
                except RuntimeError as e:
                    print(f"error: {e}", file=sys.stderr)
                    return 1
                plain = statistics.median(r["load"] for r in samples["plain"])
                sha = statistics.median(r["sha256"] for r in samples["plain"])
                time_cells, ratio_cells = [], []
                for config in configs:
                    if config.name in refused:
                        time_cells.append(f"{'refused':>15}")
                        ratio_cells.append(f"{'refused':>17}")
                        reason = refused[config.name].splitlines()[0][:160]
                        refusals.setdefault((name, config.name), ([], reason))[0].append(entry)
                        continue
                    t = statistics.median(r["load"] for r in samples[config.name])
                    time_cells.append(f"{t * 1e6:15.1f}")
                    if config.name != "plain":
                        ratio_cells.append(f"{t / plain:8.2f} ({(t - plain) / sha:6.1f})")
                label = f"{name:13} {entry:9}"
                times.append(f"{label} {sha * 1e6:9.1f}{''.join(time_cells)}")
                ratios.append(f"{label}{''.join(ratio_cells)}")
                print(f"measured {name} {entry}", file=sys.stderr, flush=True)
    print("\nmedian time per load, us (sha256: hashlib's SHA-256 of the same bytes):")
    header = "".join(f"{c.name:>15}" for c in configs)
    print(f"{'payload':13} {'entry':9} {'sha256':>9}{header}")
    print("\n".join(times))
    print("\nratio to plain (in brackets: the overhead as a multiple of the SHA-256 time):")
    print(f"{'payload':13} {'entry':9}{''.join(f'{n:>17}' for n in others)}")
    print("\n".join(ratios))
    if refusals:
        print("\nrefused (benign payloads):")
        for (name, config_name), (entries, reason) in refusals.items():
            print(f"  {config_name} refused {name} ({', '.join(entries)}): {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
