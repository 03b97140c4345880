"""Guarded loads against plain pickle and other guards, measured side by side.

    python benchmarks/loads.py [--rounds N] [--seconds S] [--quick] [--configs a,b,...]

For each payload (about 50 B, a 10 KB and a 1 MB object graph, 10 KB of class
instances, 64 MB of bytes, 50 dataclasses x 200 instances, 256 MiB of bytes) and
each entry point (`pickle.loads`, `pickle.load` from a file on disk,
`Unpickler.load`; the dataclasses through `Unpickler` only, the 256 MiB through
`pickle.load` only), it times loads in fresh interpreters:

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
round, so noise hits them alike. Each worker measures the CPU time of the process
(a second thread's work counts) over many short batches of loads (about 2 ms
each), alternating with batches of hashlib's SHA-256 of the same bytes; a round
reports the medians. The tables show the median over rounds, and for each
configuration its ratio to plain and its overhead (configuration minus plain) as
a multiple of the SHA-256 time, each the median of the rounds' pairs (a round's
configuration against the same round's plain), with the spread of the overhead
over rounds. Last, each row with a target of issue 14, marked met or missed
(with --baseline, the other build's figure beside it).
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
    # 50 dataclasses x 200 instances (about 225 KB): a graph with many distinct globals.
    "50 dataclasses": (
        "[getattr(__import__('bench_classes'), 'C%d' % (i % 50))(i, str(i), float(i))"
        " for i in range(10_000)]"
    ),
    "256 MiB bytes": "b'\\x01' * (256 << 20)",
}
ENTRY_POINTS = ["loads", "load", "Unpickler"]
# The entry points each payload is measured at (default: all three).
PAYLOAD_ENTRIES = {"50 dataclasses": ["Unpickler"], "256 MiB bytes": ["load"]}
# The module the dataclasses live in, importable by the workers (PYTHONPATH).
CLASSES = "from dataclasses import dataclass\n" + "".join(
    f"@dataclass\nclass C{i}:\n    a: int\n    b: str\n    c: float\n\n" for i in range(50)
)

# The targets, by (payload, entry): ("ratio", x) for guarded/plain <= x,
# ("sha", x) for (guarded - plain) <= x times the SHA-256 time of the same bytes.
TARGETS: dict[tuple[str, str], tuple[str, float]] = {
    **{("50 B", e): ("ratio", 1.3) for e in ENTRY_POINTS},
    **{("10 KB graph", e): ("sha", 1.15) for e in ENTRY_POINTS},
    **{("1 MB graph", e): ("sha", 1.15) for e in ENTRY_POINTS},
    ("50 dataclasses", "Unpickler"): ("sha", 1.15),
    ("256 MiB bytes", "load"): ("sha", 1.1),
}
STACK_TARGETS = {("50 B", e): ("ratio", 1.8) for e in ENTRY_POINTS}

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
# CPU time of the whole process (a second thread's work counts), in short batches
# of loads (about 2 ms each, at least one load), alternating with batches of
# SHA-256 of the same bytes; each sample is the time per load in one batch.
clock = time.process_time
start = clock()
load_at_depth()
batch = max(1, int(0.002 / max(clock() - start, 1e-7)))
samples, hash_samples = [], []
deadline = time.perf_counter() + float(budget)
while time.perf_counter() < deadline or len(samples) < 3:
    start = clock()
    for _ in range(batch):
        load_at_depth()
    samples.append((clock() - start) / batch)
    start = clock()
    for _ in range(batch):
        hashlib.sha256(data).digest()
    hash_samples.append((clock() - start) / batch)
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
    env = {**os.environ, "PYTHONPATH": str(payload.parent)}
    out = subprocess.run([*command, str(budget)], capture_output=True, text=True, env=env)
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
        help="also run 'guarded' (and 'guarded+stack') with this interpreter, where another "
        "pickleguard build is installed (columns 'baseline', 'baseline+stack'), to compare "
        "two builds side by side",
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
        if "guarded+stack" in wanted:
            configs.append(
                Config("baseline+stack", "pickleguard", stack=True, python=args.baseline)
            )
    others = [c.name for c in configs if c.name != "plain"]
    print(
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores; "
        f"{args.rounds} interleaved rounds; command: {' '.join(sys.argv)}"
    )
    times: list[str] = []
    ratios: list[str] = []
    # (payload, entry, configuration): (median ratio, median overhead / SHA-256)
    results: dict[tuple[str, str, str], tuple[float, float]] = {}
    # Why each configuration refused a payload, and at which entry points.
    refusals: dict[tuple[str, str], tuple[list[str], str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "bench_classes.py").write_text(CLASSES)
        sys.path.insert(0, tmp)
        for name, expression in PAYLOADS.items():
            if (args.quick and "64 MB" in name) or name not in args.payloads.split(","):
                continue
            payload = Path(tmp) / "payload.pkl"
            payload.write_bytes(pickle.dumps(eval(expression), protocol=4))
            # The large loads take tens of milliseconds: give them more time per sample.
            budget = args.seconds if " bytes" not in name else args.seconds * 5
            # The other guards take minutes over 256 MiB: compare builds there only.
            row_configs = [
                c for c in configs if "256 MiB" not in name or c.guard in ("none", "pickleguard")
            ]
            for entry in PAYLOAD_ENTRIES.get(name, ENTRY_POINTS):
                try:
                    samples, refused = measure(
                        payload, row_configs, entry, args.rounds, budget, tmp
                    )
                except RuntimeError as e:
                    print(f"error: {e}", file=sys.stderr)
                    return 1
                sha = statistics.median(r["sha256"] for r in samples["plain"])
                time_cells, ratio_cells = [], []
                for config in configs:
                    if config not in row_configs:
                        time_cells.append(f"{'-':>15}")
                        ratio_cells.append(f"{'-':>24}")
                        continue
                    if config.name in refused:
                        time_cells.append(f"{'refused':>15}")
                        ratio_cells.append(f"{'refused':>24}")
                        reason = refused[config.name].splitlines()[0][:160]
                        refusals.setdefault((name, config.name), ([], reason))[0].append(entry)
                        continue
                    t = statistics.median(r["load"] for r in samples[config.name])
                    time_cells.append(f"{t * 1e6:15.1f}")
                    if config.name == "plain":
                        continue
                    # Paired by round: each round's configuration against that round's plain.
                    pairs = list(zip(samples[config.name], samples["plain"]))
                    ratio = [c["load"] / p["load"] for c, p in pairs]
                    over = [(c["load"] - p["load"]) / p["sha256"] for c, p in pairs]
                    results[(name, entry, config.name)] = (
                        statistics.median(ratio),
                        statistics.median(over),
                    )
                    ratio_cells.append(
                        f"{statistics.median(ratio):6.2f} ({statistics.median(over):6.2f}"
                        f" {max(over) - min(over):5.2f})"
                    )
                label = f"{name:14} {entry:9}"
                times.append(f"{label} {sha * 1e6:9.1f}{''.join(time_cells)}")
                ratios.append(f"{label}{''.join(ratio_cells)}")
                print(f"measured {name} {entry}", file=sys.stderr, flush=True)
    print("\nmedian CPU time per load, us (sha256: hashlib's SHA-256 of the same bytes):")
    header = "".join(f"{c.name:>15}" for c in configs)
    print(f"{'payload':14} {'entry':9} {'sha256':>9}{header}")
    print("\n".join(times))
    print(
        "\nratio to plain, median of the rounds' pairs (in brackets: the overhead as a "
        "multiple of the SHA-256 time, and its spread, max - min over rounds):"
    )
    print(f"{'payload':14} {'entry':9}{''.join(f'{n:>24}' for n in others)}")
    print("\n".join(ratios))
    if refusals:
        print("\nrefused (benign payloads):")
        for (name, config_name), (entries, reason) in refusals.items():
            print(f"  {config_name} refused {name} ({', '.join(entries)}): {reason}")
    print_targets(results)
    return 0


def print_targets(results: dict[tuple[str, str, str], tuple[float, float]]) -> None:
    """Each row with a target: the target, what guarded (and baseline) measured, met?"""
    rows = [(key, target, "guarded") for key, target in TARGETS.items()]
    rows += [(key, target, "guarded+stack") for key, target in STACK_TARGETS.items()]
    lines = []
    for (name, entry), (kind, limit), config in rows:
        measured = results.get((name, entry, config))
        if measured is None:
            continue
        value = measured[0] if kind == "ratio" else measured[1]
        what = "guarded/plain" if kind == "ratio" else "overhead/sha256"
        cell = f"{name:14} {entry:9} {config:13} {what:15} <= {limit:4.2f}   {value:6.2f}"
        baseline = results.get((name, entry, config.replace("guarded", "baseline")))
        if baseline is not None:
            cell += f"   (baseline {baseline[0] if kind == 'ratio' else baseline[1]:6.2f})"
        lines.append(f"{cell}   {'met' if value <= limit else 'MISSED'}")
    if lines:
        print("\ntargets (issue 14): row, what is compared, target, measured, met?")
        print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
