"""MDN-RNN stage throughput: the encoding pass that builds the latent cache, and M's training steps.

    python benchmarks/mdnrnn.py            # a few minutes
    python benchmarks/mdnrnn.py --quick    # under a minute

Encoding: frames/s of `encode_rollouts` (episode files on disk -> uint8 batches -> V's encoder), with an
untrained ConvVAE (speed does not depend on the weights), against V's encoder alone on a batch already
in memory. Training: sequences/s of `train_mdnrnn.training_step` with the LunarLander-v3 default config
(hidden 256, 5 mixtures, 64-step windows, batch 32) on a synthetic latent cache, and the share of each
step spent cutting the batch out of the cache and moving it to the device (headline, target < 0.10).
The device is synchronised after every step, so the share is an upper bound: on CUDA the gather could
overlap the previous step. CPU always; CUDA too when present.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import Config, get_config  # noqa: E402
from models.mdnrnn import MDNRNN  # noqa: E402
from models.vae import ConvVAE, frames_to_input  # noqa: E402
from training.latents import LatentCache, encode_rollouts  # noqa: E402
from training.sequences import SequenceSampler  # noqa: E402
from training.train_mdnrnn import training_step  # noqa: E402
from training.train_utils import make_grad_scaler  # noqa: E402
from utils.data import episode_path, save_episode  # noqa: E402
from utils.environment import Episode  # noqa: E402
from utils.runtime import seed_everything  # noqa: E402

ACTIONS = 4  # LunarLander-v3's discrete actions


def write_episodes(folder: Path, episodes: int, length: int, rng: np.random.Generator) -> list[Path]:
    """Random-frame episodes in the rollout format (encoding speed does not depend on the pixels)."""
    paths = []
    for index in range(episodes):
        episode = Episode(
            obs=rng.integers(0, 256, (length, 64, 64, 3), dtype=np.uint8),
            actions=np.eye(ACTIONS, dtype=np.float32)[rng.integers(0, ACTIONS, length)],
            rewards=rng.normal(size=length).astype(np.float32),
            terminated=np.arange(length) == length - 1,
            seed=index,
        )
        paths.append(episode_path(folder, index))
        save_episode(paths[-1], episode, "LunarLander-v3", "uniform")
    return paths


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def encoding_rates(cfg: Config, paths: list[Path], frames: int, device: torch.device) -> tuple[float, float]:
    """(frames/s of encode_rollouts from disk, frames/s of the encoder on one in-memory batch)."""
    vae = ConvVAE(cfg.vae.latent_size, cfg.vae.batch_norm)
    if cfg.vae.channels_last:
        vae = vae.to(memory_format=torch.channels_last)
    vae = vae.to(device).eval()
    batch = torch.randint(0, 256, (cfg.mdnrnn.encode_batch_size, 64, 64, 3), dtype=torch.uint8)
    vae.encode(frames_to_input(batch, device, cfg.vae.channels_last))  # warm-up (cuDNN autotune, allocations)
    synchronize(device)
    start = time.perf_counter()
    encode_rollouts(vae, paths, device, cfg.mdnrnn.encode_batch_size, cfg.vae.channels_last, cfg.vae.episodes_per_chunk)
    from_disk = frames / (time.perf_counter() - start)
    repeats = max(1, frames // len(batch))
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        mu, _ = vae.encode(frames_to_input(batch, device, cfg.vae.channels_last))
    mu.sum().item()
    return from_disk, repeats * len(batch) / (time.perf_counter() - start)


def training_rates(cfg: Config, cache: LatentCache, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """(sequences/s, share of the step time spent gathering the batch and moving it to the device)."""
    seed_everything(cfg.experiment.seed)
    m = cfg.mdnrnn
    model = MDNRNN(cfg.vae.latent_size, ACTIONS, m.hidden_size, m.num_mixtures).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=m.learning_rate)
    scaler = make_grad_scaler(device, m.amp)
    sampler = SequenceSampler(cache, np.arange(len(cache.offsets) - 1), m.sequence_length)
    episodes, starts = sampler.epoch_windows(np.random.default_rng(0))
    data_seconds = step_seconds = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            data_seconds = step_seconds = 0.0
        window = slice((step * m.batch_size) % (len(episodes) - m.batch_size), None)
        start = time.perf_counter()
        batch = sampler.gather(episodes[window][: m.batch_size], starts[window][: m.batch_size]).to(device)
        synchronize(device)
        gathered = time.perf_counter()
        training_step(model, optimizer, scaler, batch, cfg, device)
        synchronize(device)
        data_seconds += gathered - start
        step_seconds += time.perf_counter() - gathered
    return steps * m.batch_size / (data_seconds + step_seconds), data_seconds / (data_seconds + step_seconds)


def synthetic_cache(episodes: int, length: int, latent_size: int, rng: np.random.Generator) -> LatentCache:
    total = episodes * length
    return LatentCache(
        mu=rng.normal(size=(total, latent_size)).astype(np.float32),
        logvar=np.full((total, latent_size), -2.0, np.float32),
        actions=np.eye(ACTIONS, dtype=np.float32)[rng.integers(0, ACTIONS, total)],
        rewards=rng.normal(size=total).astype(np.float32),
        terminated=(np.arange(total) % length) == length - 1,
        offsets=np.arange(0, total + 1, length),
        episode_names=np.array([f"ep_{i:06d}.npz" for i in range(episodes)]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames and steps: under a minute")
    args = parser.parse_args()
    episodes, steps, warmup = (6, 8, 1) if args.quick else (100, 100, 5)
    length = 100  # frames per episode, about a random LunarLander episode
    cfg = get_config("LunarLander-v3", preset="default")
    rng = np.random.default_rng(0)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    cache = synthetic_cache(200, 200, cfg.vae.latent_size, rng)

    rows, shares = [], {}
    with tempfile.TemporaryDirectory() as temp_dir:
        paths = write_episodes(Path(temp_dir), episodes, length, rng)
        for device in devices:
            cfg.mdnrnn.amp = device.type == "cuda"
            from_disk, in_memory = encoding_rates(cfg, paths, episodes * length, device)
            sequences, share = training_rates(cfg, cache, steps * (4 if device.type == "cuda" else 1), warmup, device)
            shares[device.type] = share
            rows.append((device.type, from_disk, in_memory, sequences, share))

    m = cfg.mdnrnn
    print(f"\nMDN-RNN stage, torch {torch.__version__}, {torch.get_num_threads()} CPU threads; encoding "
          f"{episodes * length} frames in batches of {m.encode_batch_size}; training hidden {m.hidden_size}, "
          f"{m.num_mixtures} mixtures, batch {m.batch_size} x {m.sequence_length} steps")
    print(f"{'device':8s} {'encode frames/s':>16s} {'encoder only':>13s} {'train seq/s':>12s} {'data wait':>10s}")
    for device, from_disk, in_memory, sequences, share in rows:
        print(f"{device:8s} {from_disk:16.0f} {in_memory:13.0f} {sequences:12.1f} {share:10.3f}")
    print(f"RESULT mdnrnn_data_wait ratio={shares['cpu']:.3f} target=0.10")
    if "cuda" in shares:
        print(f"RESULT mdnrnn_data_wait_cuda ratio={shares['cuda']:.3f} target=0.10")


if __name__ == "__main__":
    main()
