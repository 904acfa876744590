"""VAE training throughput: is the data pipeline fast enough, and what does each precision give?

    python benchmarks/vae.py            # a few minutes
    python benchmarks/vae.py --quick    # under a minute

Headline: images/s of `train_vae.training_step` fed by `FrameChunkLoader` reading episode files from
disk, divided by images/s of the same steps on the same batches already in memory (target >= 0.9: the
loader, running in its background thread, should cost the model less than 10%). Also absolute images/s
for CPU fp32, CPU bf16 autocast and, when present, CUDA with the training's AMP setting.
Episodes are collected first (LunarLander-v3, random policy) into a temporary folder unless
`--data-dir` names one that already holds rollouts.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import Config, get_config  # noqa: E402
from models.vae import ConvVAE  # noqa: E402
from training.collect import collect  # noqa: E402
from training.train_utils import make_grad_scaler  # noqa: E402
from training.train_vae import mean_frame, training_step  # noqa: E402
from utils.data import FrameChunkLoader, list_episodes, rollout_dir  # noqa: E402
from utils.runtime import seed_everything  # noqa: E402


def make_trainer(cfg: Config, device: torch.device):
    """A fresh model, optimizer and scaler, so each measurement starts from the same state."""
    seed_everything(cfg.experiment.seed)
    model = ConvVAE(cfg.vae.latent_size, cfg.vae.batch_norm)
    if cfg.vae.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = model.to(device)
    return model, torch.optim.Adam(model.parameters(), lr=cfg.vae.learning_rate), make_grad_scaler(device, cfg.vae.amp)


def images_per_second(cfg: Config, device: torch.device, batches, steps: int, warmup: int, background: torch.Tensor,
                      precision=None) -> float:
    """Run `warmup` + `steps` training steps on the batches `batches` yields; images/s of the timed ones.
    `background`: the data's mean frame, which the stage's loss weighs pixels by (`vae.foreground_weight`)."""
    model, optimizer, scaler = make_trainer(cfg, device)
    iterator = iter(batches)
    for _ in range(warmup):
        training_step(model, optimizer, scaler, next(iterator), 1.0, cfg, device, precision, background)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    images = 0
    for _ in range(steps):
        frames_uint8 = next(iterator)
        losses = training_step(model, optimizer, scaler, frames_uint8, 1.0, cfg, device, precision, background)
        images += len(frames_uint8)
    losses["total_loss"].item()  # waits for the device's queue, so the clock covers every step
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps: under a minute")
    parser.add_argument("--data-dir", default="", help="a data folder that already holds LunarLander-v3 rollouts")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    steps, warmup, repeats = (8, 2, 1) if args.quick else (30, 3, 3)

    with tempfile.TemporaryDirectory() as temp_dir:
        cfg = get_config("LunarLander-v3", preset="smoke")
        cfg.experiment.data_dir = args.data_dir or str(Path(temp_dir) / "data")
        cfg.experiment.log_dir = str(Path(temp_dir) / "logs")
        cfg.vae.batch_size = args.batch_size
        frames_needed = (steps + warmup) * args.batch_size
        if not args.data_dir:
            # Random LunarLander episodes last ~80-100 frames; collect enough for every step.
            cfg.collect.num_rollouts = frames_needed // 60 + 4
            cfg.collect.workers = 2
            print(f"collecting {cfg.collect.num_rollouts} LunarLander-v3 episodes into {rollout_dir(cfg)} ...")
            collect(cfg)
        paths = list_episodes(rollout_dir(cfg))

        def disk_batches():
            return FrameChunkLoader(paths, args.batch_size, cfg.vae.episodes_per_chunk, seed=0)

        in_memory = [batch.copy() for batch, _ in zip(disk_batches(), range(steps + warmup))]
        if len(in_memory) < steps + warmup:
            sys.exit(f"only {len(in_memory)} batches of {args.batch_size} in {rollout_dir(cfg)}; need {steps + warmup}")

        cpu = torch.device("cpu")
        background = mean_frame(paths, cpu)
        cfg.vae.amp = False
        # Alternate the two feeds so drift in machine load hits both alike; keep each one's best run.
        pipeline_runs, memory_runs = [], []
        for _ in range(repeats):
            memory_runs.append(images_per_second(cfg, cpu, in_memory, steps, warmup, background))
            pipeline_runs.append(images_per_second(cfg, cpu, disk_batches(), steps, warmup, background))
        memory_fp32, pipeline_fp32 = max(memory_runs), max(pipeline_runs)
        cpu_bf16 = functools.partial(torch.autocast, device_type="cpu", dtype=torch.bfloat16)
        bf16 = max(images_per_second(cfg, cpu, in_memory, steps, warmup, background, cpu_bf16) for _ in range(repeats))
        rows = [
            ("CPU fp32, batches in memory", memory_fp32),
            ("CPU fp32, FrameChunkLoader from disk", pipeline_fp32),
            ("CPU bf16 autocast, batches in memory", bf16),
        ]
        cuda_ratio = None
        if torch.cuda.is_available():
            cuda = torch.device("cuda")
            cfg.vae.amp = True
            cuda_steps = steps * 4
            many = in_memory * (cuda_steps // len(in_memory) + 2)
            cuda_memory = images_per_second(cfg, cuda, many, cuda_steps, warmup, background.to(cuda))
            cuda_pipeline = images_per_second(cfg, cuda, _cycle(disk_batches), cuda_steps, warmup, background.to(cuda))
            cuda_ratio = cuda_pipeline / cuda_memory
            rows += [("CUDA AMP, batches in memory", cuda_memory), ("CUDA AMP, FrameChunkLoader from disk", cuda_pipeline)]

    print(f"\nVAE training step, batch {args.batch_size}, {steps} timed steps (best of {repeats}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"{'setting':42s} {'images/s':>10s}")
    for name, value in rows:
        print(f"{name:42s} {value:10.0f}")
    print(f"{'CPU bf16 / fp32':42s} {bf16 / memory_fp32:10.2f}x")
    print(f"RESULT vae_pipeline ratio={pipeline_fp32 / memory_fp32:.2f} target=0.9")
    if cuda_ratio is not None:
        print(f"RESULT vae_pipeline_cuda ratio={cuda_ratio:.2f} target=0.9")


def _cycle(make_loader):
    """Endless batches from fresh passes of a loader (CUDA runs need more steps than one pass holds)."""
    while True:
        yield from make_loader()


if __name__ == "__main__":
    main()
