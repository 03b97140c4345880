"""A small Dask distributed app, for test_dask.py. It knows nothing about pickleguard.

    python dask_app.py setup DIR             write DIR/model.pkl, the app's artifact
    python dask_app.py run DIR [--payload HEX [--through-dask]]

`run` starts a LocalCluster whose nanny starts two worker processes, then:

- model: maps `score` over eight numbers; each task loads DIR/model.pkl on a worker;
- rechunk: a P2P rechunk of a small array, whose workers exchange shards;
- warn: a task sends the client a warning through distributed.warn;
- bytes (with --payload): one task unpickles bytes the client sent it as an argument
  (with --through-dask, by calling dask's own distributed.protocol.pickle.loads).

It prints one line per step, `refused: ...` for a step that failed with an error
named NoPickleError (it exits with status 1 then), and the pids of the client and
the workers on lines starting with `pid`.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
from pathlib import Path

import dask.array
import distributed


def load_model(path: str) -> dict:
    """Runs in a worker, inside a task."""
    with open(path, "rb") as f:
        return pickle.load(f)


def score(x: int, path: str) -> tuple:
    model = load_model(path)
    return x * model["weight"] + model["bias"], os.getpid()


def warn(message: str) -> int:
    distributed.warn(message)
    return os.getpid()


def unpickle(data: bytes, through_dask: bool) -> tuple:
    """User code in a task: loads bytes it was sent, not the engine's own message."""
    if through_dask:
        return distributed.protocol.pickle.loads(data), os.getpid()
    return pickle.loads(data), os.getpid()


def refused(step: str, error: BaseException) -> bool:
    """Report an error that pickleguard raised in a worker, as the client sees it."""
    if type(error).__name__ != "NoPickleError":
        return False
    print(
        f"{step}: refused: {type(error).__module__}.{type(error).__name__}"
        f" code={error.code} caller={error.caller} sha256={error.sha256}"  # type: ignore[attr-defined]
    )
    return True


def run(workdir: Path, payload: bytes | None, through_dask: bool) -> int:
    status = 0
    with (
        distributed.LocalCluster(
            processes=True,
            n_workers=2,
            threads_per_worker=1,
            host="127.0.0.1",
            scheduler_port=0,
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        print(f"pid client {os.getpid()}")
        workers = sorted(client.run(os.getpid).values())
        print("pid workers " + " ".join(map(str, workers)))
        futures = client.map(score, range(8), path=str(workdir / "model.pkl"))
        try:
            results = client.gather(futures)
        except Exception as e:
            if not refused("model", e):
                raise
            status = 1
        else:
            assert {pid for _, pid in results} <= set(workers), "a task ran outside the workers"
            print(f"model: scores {[value for value, _ in results]}")
        array = dask.array.ones((40, 40), chunks=(40, 1))
        total = array.rechunk((1, 40), method="p2p").sum().compute()
        print(f"rechunk: sum {total:.0f}")
        assert client.submit(warn, "from a task").result() in workers
        print("warn: sent")
        if payload is not None:
            try:
                value, pid = client.submit(unpickle, payload, through_dask).result()
            except Exception as e:
                if not refused("bytes", e):
                    raise
                status = 1
            else:
                assert pid in workers
                print(f"bytes: {value!r}")
    return status


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["setup", "run"])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--payload", type=bytes.fromhex, default=None)
    parser.add_argument("--through-dask", action="store_true")
    args = parser.parse_args()
    if args.command == "setup":
        args.workdir.mkdir(parents=True, exist_ok=True)
        with open(args.workdir / "model.pkl", "wb") as f:
            pickle.dump({"name": "ranker", "weight": 3, "bias": 1}, f)
        return 0
    return run(args.workdir, args.payload, args.through_dask)


if __name__ == "__main__":
    sys.exit(main())
