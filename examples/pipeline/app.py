"""A small pipeline that loads pickles in three places: the parent process, a
multiprocessing pool's workers, and a subprocess.

    python app.py ARTIFACTS [--start-method fork|spawn|forkserver] [--executor]

It knows nothing about pickleguard: `pickleguard record` and `pickleguard run`
guard it from the outside.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import pickle
import subprocess
import sys
from pathlib import Path


def load_vocabulary(artifacts: Path) -> dict:
    with open(artifacts / "vocabulary.pkl", "rb") as f:
        return pickle.load(f)


def score_shard(path: str) -> float:
    """Runs in a pool worker."""
    with open(path, "rb") as f:
        shard = pickle.load(f)
    return sum(shard["values"]) * shard["weight"]


def report(artifacts: Path) -> None:
    """Runs in a subprocess."""
    with open(artifacts / "model.pkl", "rb") as f:
        model = pickle.load(f)
    print(f"report: model {model['name']} v{model['version']}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("--start-method", default=None)
    parser.add_argument("--executor", action="store_true", help="use ProcessPoolExecutor")
    parser.add_argument("--report", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.report:
        report(args.artifacts)
        return 0
    vocabulary = load_vocabulary(args.artifacts)
    print(f"parent: vocabulary of {len(vocabulary)} words")
    shards = sorted(str(p) for p in args.artifacts.glob("shard*.pkl"))
    context = multiprocessing.get_context(args.start_method)
    if args.executor:
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
            scores = list(pool.map(score_shard, shards))
    else:
        with context.Pool(2) as pool:
            scores = pool.map(score_shard, shards)
    print(f"workers: scored {len(scores)} shards, total {sum(scores):.1f}")
    subprocess.run([sys.executable, __file__, str(args.artifacts), "--report"], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
