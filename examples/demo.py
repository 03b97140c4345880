"""pickleguard end to end: a pinned checkpoint loads; a tampered one never runs.

    python examples/demo.py [WORKDIR]

Writes a small checkpoint, activates pickleguard with manifests/demo.toml (which
pins that checkpoint's SHA-256 to the function that loads it), loads it, then swaps
in a hostile pickle and shows the refusal.
"""

from __future__ import annotations

import os
import pickle
import sys
import tempfile
from pathlib import Path

import pickleguard

MANIFEST = Path(__file__).resolve().parent.parent / "manifests" / "demo.toml"


def write_checkpoint(path: Path) -> None:
    weights = {
        "layer1.weight": [[0.25, -0.5], [1.0, 0.75]],
        "layer1.bias": [0.1, -0.1],
        "epoch": 3,
    }
    path.write_bytes(pickle.dumps(weights, protocol=4))


class Tampered:
    """What an attacker swaps in: loading it creates a directory named `sentinel`."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = str(sentinel)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.mkdir, (self.sentinel,))


def load_checkpoint(path: Path) -> object:
    with open(path, "rb") as f:
        return pickle.load(f)


def main(workdir: Path) -> int:
    checkpoint = workdir / "checkpoint.pkl"
    write_checkpoint(checkpoint)
    print(f"checkpoint: {pickleguard.identify(checkpoint.read_bytes())}")

    pickleguard.activate(os.path.relpath(MANIFEST))
    weights = load_checkpoint(checkpoint)
    print(f"loaded: epoch {weights['epoch']}, {len(weights)} keys")  # type: ignore[index]

    sentinel = workdir / "sentinel"
    checkpoint.write_bytes(pickle.dumps(Tampered(sentinel)))
    try:
        load_checkpoint(checkpoint)
    except pickleguard.NoPickleError as denial:
        print(f"refused: {denial}")
    else:
        print("error: the tampered checkpoint loaded", file=sys.stderr)
        return 1
    if sentinel.exists():
        print("error: the payload ran", file=sys.stderr)
        return 1
    print("the tampered checkpoint never ran: no sentinel was created")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1:
        sys.exit(main(Path(sys.argv[1])))
    with tempfile.TemporaryDirectory() as tmp:
        sys.exit(main(Path(tmp)))
