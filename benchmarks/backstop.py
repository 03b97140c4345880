"""What the audit-hook backstop costs code that raises many audit events.

    python benchmarks/backstop.py [--rounds N]

Two loops, each timed in fresh interpreters with and without the backstop
registered, interleaved round by round so machine noise hits both alike:

* sys.audit: a tight loop of `sys.audit("bench.event", i)`, the worst case; without
  any hook CPython returns early, with one it calls the hook for every event;
* open/close: opening and closing a small file, an "open" audit event each time,
  a realistic audit-heavy workload.

It prints the median time per iteration and the ratio (with / without).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile

LOOPS = {
    "sys.audit": ("import sys", "sys.audit('bench.event', i)", 200_000),
    "open/close": ("", "open(PATH, 'rb').close()", 20_000),
}

SCRIPT = """
import sys, time
PATH = {path!r}
{setup}
if {backstop}:
    import pickleguard._core
    pickleguard._core.install_backstop()
start = time.perf_counter()
for i in range({n}):
    {body}
print((time.perf_counter() - start) / {n})
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(b"x")
        path = f.name
    try:
        print(
            f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores; "
            f"{args.rounds} interleaved rounds; command: {' '.join(sys.argv)}"
        )
        for name, (setup, body, n) in LOOPS.items():
            samples = {False: [], True: []}
            for _ in range(args.rounds):
                for backstop in (False, True):
                    code = SCRIPT.format(path=path, setup=setup, backstop=backstop, n=n, body=body)
                    out = subprocess.run(
                        [sys.executable, "-c", code], capture_output=True, text=True, check=True
                    )
                    samples[backstop].append(float(out.stdout))
            without = statistics.median(samples[False]) * 1e9
            with_hook = statistics.median(samples[True]) * 1e9
            print(
                f"  {name:11} without {without:8.1f} ns/iter   with {with_hook:8.1f} ns/iter"
                f"   ratio {with_hook / without:.3f}"
            )
    finally:
        os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
