"""A small torch.distributed app, for test_torch_engines.py. It knows nothing about
pickleguard.

    python torch_app.py setup DIR     write DIR/model.pkl, the app's artifact
    python torch_app.py run DIR [--seed N] [--decoder pickle|weights_only|both]
                                [--fail] [--through-torch HEX]

`run` starts two ranks with torch.multiprocessing.spawn; they join a gloo process
group on loopback. Each rank loads DIR/model.pkl itself (the app's own worker
code), then, for each decoder asked for (the default pickle one and torch.load
with weights_only=True), runs every object collective: broadcast_object_list,
all_gather_object, gather_object, scatter_object_list and send/recv_object_list.
The objects depend on --seed, so each run sends new bytes. Rank 0 prints one line
per decoder. With --fail, rank 1 raises a ValueError; with --through-torch, rank 1
decodes the given bytes itself through torch's own decoder (both before the group
forms). The parent prints `pid` lines and, if a rank failed, `failed:` and the
child's report as torch raised it; it exits with status 1 then.
"""

from __future__ import annotations

import argparse
import os
import pickle
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def load_model(path: str) -> dict:
    """Runs in each rank: the app's own load of its artifact."""
    with open(path, "rb") as f:
        return pickle.load(f)


def collectives(rank: int, seed: int, weights_only: bool) -> str:
    mine = {"rank": rank, "value": seed * 10 + rank}
    config = [{"seed": seed, "lr": seed / 100}] if rank == 0 else [None]
    dist.broadcast_object_list(config, src=0, weights_only=weights_only)
    everyone: list = [None, None]
    dist.all_gather_object(everyone, mine, weights_only=weights_only)
    gathered: list = [None, None] if rank == 0 else []
    dist.gather_object(mine, gathered if rank == 0 else None, dst=0, weights_only=weights_only)
    scattered: list = [None]
    shards = [{"shard": i, "seed": seed} for i in range(2)] if rank == 0 else None
    dist.scatter_object_list(scattered, shards, src=0, weights_only=weights_only)
    message = [f"from rank 1, seed {seed}"]
    if rank == 1:
        dist.send_object_list(message, dst=0, weights_only=weights_only)
    else:
        dist.recv_object_list(message, src=1, weights_only=weights_only)
    values = [e["value"] for e in everyone]
    return (
        f"config seed={config[0]['seed']} lr={config[0]['lr']} all_gather {values} "
        f"gather {len(gathered)} "
        f"scatter {scattered[0]['shard']} recv {message[0]!r}"
    )


def rank_main(rank: int, port: int, workdir: str, seed: int, decoders: list, options: dict):
    # One write, so the two ranks' lines never interleave.
    sys.stdout.write(f"pid ranks {os.getpid()}\n")
    sys.stdout.flush()
    model = load_model(os.path.join(workdir, "model.pkl"))
    # Rank 1 fails, if asked to, before the group forms: rank 0 then waits to be
    # stopped, and the parent reports rank 1's own error, not one it caused.
    if rank == 1 and options.get("through_torch") is not None:
        payload = options["through_torch"]
        tensor = torch.tensor(list(payload), dtype=torch.uint8)
        decoded = dist.distributed_c10d._tensor_to_object(tensor, len(payload), None)
        print(f"through torch: {decoded!r}", flush=True)
    if rank == 1 and options.get("fail"):
        raise ValueError("rank 1 failed on purpose")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        for decoder in decoders:
            line = collectives(rank, seed + model["bias"], decoder == "weights_only")
            if rank == 0:
                print(f"{decoder}: {line}", flush=True)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["setup", "run"])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--decoder", choices=["pickle", "weights_only", "both"], default="both")
    parser.add_argument("--fail", action="store_true")
    parser.add_argument("--through-torch", type=bytes.fromhex, default=None)
    args = parser.parse_args()
    if args.command == "setup":
        args.workdir.mkdir(parents=True, exist_ok=True)
        with open(args.workdir / "model.pkl", "wb") as f:
            pickle.dump({"name": "ranker", "bias": 1}, f)
        return 0
    decoders = ["pickle", "weights_only"] if args.decoder == "both" else [args.decoder]
    options = {"fail": args.fail, "through_torch": args.through_torch}
    print(f"pid parent {os.getpid()}", flush=True)
    try:
        mp.spawn(
            rank_main,
            args=(free_port(), str(args.workdir), args.seed, decoders, options),
            nprocs=2,
        )
    except mp.ProcessRaisedException as e:
        print(f"failed: rank {e.error_index}", flush=True)
        print(str(e), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
