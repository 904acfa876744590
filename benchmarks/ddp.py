"""Data-parallel VAE training throughput: 2 gloo processes against 1 process, measured in the same run.

    python benchmarks/ddp.py            # a few minutes on an idle 2-core machine
    python benchmarks/ddp.py --quick    # about a minute

Each setting runs `train_vae.training_step` as the stage does under torchrun (`training/distributed.py`:
DistributedDataParallel, each process reading its own episodes with `FrameChunkLoader`, batch
`--batch-size / processes` per process) and reports images/s of the global batch. The processes are
started as torchrun starts them (one per rank, WORLD_SIZE/RANK/LOCAL_RANK set), with gloo on CPU.
Settings: 1 process with 1 thread, 1 process with 2 threads (one process using both cores), 2 processes
with 1 thread each; for the latter also the time of one all_reduce of all the gradients (what DDP adds to
a step, apart from the processes sharing the cores).
Headline: 2 processes / 1 process of 1 thread: what a second process adds (target 1.7 on the 2-core
machine, as for 2 collection workers); also 2 processes / 1 process of 2 threads (target 1.0: DDP on
CPU pays when it beats intra-op threads).
Episodes are collected first (LunarLander-v3, random policy) into a temporary folder unless `--data-dir`
names one that already holds rollouts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import Config, get_config  # noqa: E402
from models.vae import ConvVAE  # noqa: E402
from training.collect import collect  # noqa: E402
from training.distributed import DistributedContext, distributed_session  # noqa: E402
from training.train_utils import make_grad_scaler  # noqa: E402
from training.train_vae import mean_frame, training_step  # noqa: E402
from utils.data import FrameChunkLoader, list_episodes, rollout_dir  # noqa: E402
from utils.runtime import seed_everything  # noqa: E402

ALL_REDUCE_REPEATS = 5


def rank_batches(paths: list[Path], batch_size: int, cfg: Config, world: DistributedContext) -> Iterator:
    """This rank's (batch_size / world_size, 64, 64, 3) uint8 batches, pass after pass (fresh seeds)."""
    per_rank = world.per_rank_batch(batch_size, "--batch-size")
    for seed in itertools.count():
        yield from FrameChunkLoader(paths, per_rank, cfg.vae.episodes_per_chunk, seed, rank=world.rank, world_size=world.world_size)


def _worker(rank: int, world_size: int, threads: int, port: int, paths: list[Path], cfg: Config,
            batch_size: int, steps: int, warmup: int, result: str) -> None:
    """One rank, started as torchrun starts it; rank 0 writes the measurements (JSON)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    torch.set_num_threads(threads)
    with distributed_session("cpu") as world:
        # In a function of its own, so the DDP wrapper is gone before the session leaves the group.
        measurements = _measure_rank(world, paths, cfg, batch_size, steps, warmup)
    if rank == 0:
        Path(result).write_text(json.dumps(measurements))


def _measure_rank(world: DistributedContext, paths: list[Path], cfg: Config, batch_size: int, steps: int,
                  warmup: int) -> dict[str, float]:
    """`warmup` untimed then `steps` timed training steps, then (with 2 or more ranks) all_reduces of a
    gradient-sized tensor: images/s of the global batch, seconds per step and per all_reduce."""
    seed_everything(cfg.experiment.seed)
    model = ConvVAE(cfg.vae.latent_size, cfg.vae.batch_norm)
    if cfg.vae.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.vae.learning_rate)
    scaler = make_grad_scaler(world.device, enabled=False)
    train_model = world.wrap(model)
    batches = rank_batches(paths, batch_size, cfg, world)
    background = mean_frame(paths, world.device)  # as the stage weighs pixels (vae.foreground_weight)
    for _ in range(warmup):
        training_step(train_model, optimizer, scaler, next(batches), 1.0, cfg, world.device, background=background)
    world.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        training_step(train_model, optimizer, scaler, next(batches), 1.0, cfg, world.device, background=background)
    world.barrier()  # the clock stops when the slowest rank is done
    seconds_per_step = (time.perf_counter() - start) / steps
    batches.close()
    # DDP's own cost apart from the cores the processes share: one all_reduce of every gradient.
    all_reduce_seconds = 0.0
    if world.world_size > 1:
        gradients = torch.zeros(sum(parameter.numel() for parameter in model.parameters()))
        start = time.perf_counter()
        for _ in range(ALL_REDUCE_REPEATS):
            dist.all_reduce(gradients)
        world.barrier()
        all_reduce_seconds = (time.perf_counter() - start) / ALL_REDUCE_REPEATS
    return {"images_per_second": batch_size / seconds_per_step, "seconds_per_step": seconds_per_step,
            "all_reduce_seconds": all_reduce_seconds}


def measure(world_size: int, threads: int, paths: list[Path], cfg: Config, batch_size: int,
            steps: int, warmup: int, folder: Path) -> dict[str, float]:
    """`world_size` spawned processes of `threads` torch threads each: the global images/s, seconds per
    step, and seconds per all_reduce of the gradients (0 for one process)."""
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = folder / "measurements.json"
    mp.spawn(_worker, args=(world_size, threads, port, paths, cfg, batch_size, steps, warmup, str(result)), nprocs=world_size)
    return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, one repeat: about a minute")
    parser.add_argument("--data-dir", default="", help="a data folder that already holds LunarLander-v3 rollouts")
    parser.add_argument("--batch-size", type=int, default=64, help="the global batch (default: %(default)s)")
    args = parser.parse_args()
    steps, warmup, repeats = (8, 2, 1) if args.quick else (30, 3, 3)

    with tempfile.TemporaryDirectory() as temp_dir:
        cfg = get_config("LunarLander-v3", preset="smoke")
        cfg.experiment.data_dir = args.data_dir or str(Path(temp_dir) / "data")
        cfg.experiment.log_dir = str(Path(temp_dir) / "logs")
        if not args.data_dir:
            cfg.collect.num_rollouts, cfg.collect.workers = 8, 2  # passes repeat: a few episodes suffice
            print(f"collecting {cfg.collect.num_rollouts} LunarLander-v3 episodes into {rollout_dir(cfg)} ...")
            collect(cfg)
        paths = list_episodes(rollout_dir(cfg))
        settings = {"1 process, 1 thread": (1, 1), "1 process, 2 threads": (1, 2), "2 gloo processes, 1 thread each": (2, 1)}
        # Alternate the settings so drift in machine load hits all alike; keep each one's best run.
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in settings}
        for _ in range(repeats):
            for name, (world_size, threads) in settings.items():
                runs[name].append(measure(world_size, threads, paths, cfg, args.batch_size, steps, warmup, Path(temp_dir)))
    best = {name: max(values, key=lambda run: run["images_per_second"]) for name, values in runs.items()}

    print(f"\nVAE training step, global batch {args.batch_size}, {steps} timed steps (best of {repeats}), "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs")
    print(f"{'setting':34s} {'images/s':>10s} {'ms/step':>8s} {'all_reduce ms':>14s}")
    for name, run in best.items():
        print(f"{name:34s} {run['images_per_second']:10.1f} {1000 * run['seconds_per_step']:8.0f} {1000 * run['all_reduce_seconds']:14.1f}")
    two = best["2 gloo processes, 1 thread each"]
    print(f"gradient all_reduce: {100 * two['all_reduce_seconds'] / two['seconds_per_step']:.0f}% of a 2-process step")
    two = two["images_per_second"]
    print(f"RESULT ddp_vae_vs_2_threads ratio={two / best['1 process, 2 threads']['images_per_second']:.2f} target=1.0")
    print(f"RESULT ddp_vae ratio={two / best['1 process, 1 thread']['images_per_second']:.2f} target=1.7")


if __name__ == "__main__":
    main()
