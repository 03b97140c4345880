"""A small Ray app, for test_ray.py. It knows nothing about pickleguard.

    python ray_app.py setup DIR     write DIR/model.pkl, the app's artifact
    python ray_app.py run DIR [--seed N] [--payload HEX]

`run` starts a local Ray with two CPUs, then:

- model: a task per number loads DIR/model.pkl in a worker and scores it;
- actor: an actor keeps a running total of the numbers it is sent;
- store: an array put in the object store (its data travels out of band) is summed
  by a task, and a task's list of squares is read back;
- bytes (with --payload): a task unpickles bytes the driver sent it.

The numbers depend on --seed, so each run sends new objects. It prints one line
per step, `refused: ...` for a step that failed with an error named NoPickleError,
followed by its message on lines starting with `|` (and exits with status 1
then), and the pids of the driver and the workers on lines starting with `pid`.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
from pathlib import Path

import numpy
import ray


def load_model(path: str) -> dict:
    """Runs in a worker, inside a task."""
    with open(path, "rb") as f:
        return pickle.load(f)


@ray.remote
def score(x: int, path: str) -> tuple:
    model = load_model(path)
    return x * model["weight"] + model["bias"], os.getpid()


@ray.remote
class Total:
    def __init__(self, start: int) -> None:
        self.total = start

    def add(self, x: int) -> int:
        self.total += x
        return self.total

    def pid(self) -> int:
        return os.getpid()


@ray.remote
def array_sum(array: numpy.ndarray) -> float:
    return float(array.sum())


@ray.remote
def squares(n: int) -> list:
    return [i * i for i in range(n)]


@ray.remote
def unpickle(data: bytes) -> tuple:
    """User code in a task: loads bytes it was sent, not the engine's own message."""
    return pickle.loads(data), os.getpid()


def refused(step: str, error: BaseException) -> bool:
    """Report an error that pickleguard raised in a worker, as the driver sees it:
    Ray raises it as a RayTaskError that is also an instance of the cause's class."""
    cause = getattr(error, "cause", error)
    if type(cause).__name__ != "NoPickleError":
        return False
    print(
        f"{step}: refused: {type(cause).__module__}.{type(cause).__name__}"
        f" code={cause.code} caller={cause.caller} sha256={cause.sha256}"  # type: ignore[attr-defined]
    )
    # The whole message, hint and entry to paste included, as the worker wrote it.
    for line in str(cause).splitlines():
        print(f"| {line}")
    return True


def run(workdir: Path, seed: int, payload: bytes | None) -> int:
    status = 0
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True)
    try:
        print(f"pid driver {os.getpid()}", flush=True)
        numbers = [seed + i for i in range(4)]
        try:
            results = ray.get([score.remote(x, str(workdir / "model.pkl")) for x in numbers])
        except Exception as e:
            if not refused("model", e):
                raise
            status = 1
        else:
            print("pid workers " + " ".join(sorted({str(pid) for _, pid in results})))
            print(f"model: scores {[value for value, _ in results]}", flush=True)
        total = Total.remote(seed)
        for x in numbers:
            last = ray.get(total.add.remote(x))
        print(f"pid workers {ray.get(total.pid.remote())}")
        print(f"actor: total {last}", flush=True)
        array = ray.put(numpy.arange(seed, seed + 100_000, dtype=numpy.float64))
        listed = squares.remote(seed + 3)
        print(f"store: sum {ray.get(array_sum.remote(array)):.0f} squares {ray.get(listed)}")
        if payload is not None:
            try:
                value, pid = ray.get(unpickle.remote(payload))
            except Exception as e:
                if not refused("bytes", e):
                    raise
                status = 1
            else:
                print(f"pid workers {pid}")
                print(f"bytes: {value!r}")
    finally:
        ray.shutdown()
    return status


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["setup", "run"])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--payload", type=bytes.fromhex, default=None)
    args = parser.parse_args()
    if args.command == "setup":
        args.workdir.mkdir(parents=True, exist_ok=True)
        with open(args.workdir / "model.pkl", "wb") as f:
            pickle.dump({"name": "ranker", "weight": 3, "bias": 1}, f)
        return 0
    return run(args.workdir, args.seed, args.payload)


if __name__ == "__main__":
    sys.exit(main())
