"""Stage 2: train V, the ConvVAE, on the collected frames -> `checkpoints/<experiment>/vae.pt`.

    python -m training.train_vae --env LunarLander-v3 --preset smoke

Frames stream from the episode files (`FrameChunkLoader`), never the whole data set in RAM. Every epoch
writes `vae.pt` (the resume point) and, when validation improves, `vae_best.pt` (what `models.loaders.load_vae` serves
to the later stages). Re-running the same command after an interrupt continues at the next epoch.

Under `torchrun --nproc_per_node W` (see `training/distributed.py`) each of the W processes trains on
batches of `vae.batch_size / W` frames drawn from its own share of the epoch's episodes: every rank shuffles
the episode list with the epoch's seed and reads episodes rank, rank + W, rank + 2W, ... of it, so each
file is read by one rank only. The global batch is made of W such per-rank batches (one process's batch
shuffles frames across all of a chunk's episodes instead; the step is the same in expectation), and all
ranks take the steps of the smallest shard. Rank 0 validates and writes the checkpoints and logs.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from config import Config
from models.loaders import load_vae_checkpoint
from models.vae import ConvVAE, background_distance, foreground_weights, frames_to_input, vae_loss
from training.distributed import DistributedContext, print_main
from training.epochs import EpochLoop, epoch_seed, run_data_parallel, split_for_validation
from training.train_utils import autocast, run_cli, run_stage
from utils.data import FrameChunkLoader, episode_lengths, load_episode, require_episodes
from utils.errors import WorldModelsError
from utils.files import experiment_dir
from utils.images import image_grid, save_png

# A pixel counts as reconstructed when every channel is within this of the target (10 of 255 levels).
PIXEL_TOLERANCE = 10 / 255
# A latent dim is "active" when its posterior mean varies across the data (Burda et al. 2016).
ACTIVE_UNIT_THRESHOLD = 0.01
# A pixel is "foreground" when some channel is this far from the data's mean frame: what moves or
# varies (LunarLander's lander, Pong's ball and paddles), as opposed to the background that dominates
# plain pixel accuracy.
FOREGROUND_THRESHOLD = 0.25
GRID_FRAMES = 8
TRAVERSAL_DIMS = 8
TRAVERSAL_VALUES = np.linspace(-3.0, 3.0, 9)


def training_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    frames_uint8: np.ndarray,
    beta: float,
    cfg: Config,
    device: torch.device,
    precision: Optional[Callable[[], contextlib.AbstractContextManager]] = None,
    background: Optional[torch.Tensor] = None,
) -> dict[str, torch.Tensor]:
    """One Adam step of V (or its DistributedDataParallel wrapper) on a (B, 64, 64, 3) uint8 batch;
    returns the detached losses (no host sync).

    `precision` makes the forward pass's mixed-precision context (default: `train_utils.autocast`
    per `cfg.vae.amp`); the benchmark passes CPU bf16 autocast through it. `background` (3, 64, 64),
    the data's mean frame, is needed when `vae.foreground_weight` > 0.
    """
    frames = torch.from_numpy(frames_uint8)
    if device.type == "cuda":
        frames = frames.pin_memory()
    x = frames_to_input(frames, device, cfg.vae.channels_last)
    with precision() if precision else autocast(device, cfg.vae.amp):
        recon_logits, mu, logvar = model(x)
    # The loss sums 12,288 pixels per frame: it stays in fp32 whatever the forward pass ran in.
    losses = vae_loss(recon_logits, x, mu, logvar, beta, cfg.vae.recon_loss, cfg.vae.kl_tolerance,
                      pixel_weights(x, background, cfg))
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(losses["total_loss"]).backward()
    scaler.step(optimizer)
    scaler.update()
    return {name: value.detach() for name, value in losses.items()}


def pixel_weights(x: torch.Tensor, background: Optional[torch.Tensor], cfg: Config) -> Optional[torch.Tensor]:
    """The reconstruction loss's (B, 1, 64, 64) pixel weights for input x (B, 3, 64, 64); None when
    `vae.foreground_weight` is 0."""
    if cfg.vae.foreground_weight == 0:
        return None
    if background is None:
        raise WorldModelsError("vae.foreground_weight > 0 needs the data's mean frame (mean_frame)")
    return foreground_weights(x, background, cfg.vae.foreground_weight)


def mean_frame(paths: list[Path], device: torch.device, count: int = 512) -> torch.Tensor:
    """(3, 64, 64) float32 in [0, 1]: the mean of `count` frames spread over `paths` (the background
    that `vae.foreground_weight` measures a pixel's distance from). Deterministic, so a resumed or
    data-parallel run weighs pixels alike."""
    return frames_to_input(sample_frames(paths, count), device, channels_last=False).mean(0)


def annealed_beta(cfg: Config, fractional_epoch: float) -> float:
    """beta rises linearly from 0 to `vae.beta` over `vae.beta_warmup_epochs` (then stays)."""
    if cfg.vae.beta_warmup_epochs <= 0:
        return cfg.vae.beta
    return cfg.vae.beta * min(1.0, fractional_epoch / cfg.vae.beta_warmup_epochs)


@torch.no_grad()
def validate(model: ConvVAE, loader: FrameChunkLoader, cfg: Config, device: torch.device,
             background: Optional[torch.Tensor] = None) -> dict[str, Any]:
    """Validation metrics over every frame of `loader`, decoding the posterior mean (deterministic).

    Losses use the target `vae.beta` (not the annealed one), so epochs compare and the best checkpoint
    is not simply the one trained with the smallest beta. `background` (3, 64, 64), the training data's
    mean frame, adds `foreground_pixel_accuracy` (pixel accuracy over FOREGROUND_THRESHOLD pixels) and
    weighs the loss when `vae.foreground_weight` > 0. Returns floats plus per-dim statistics:
    `latent_mean`, `latent_mu_variance`, `latent_std` (each (latent_size,) numpy).
    """
    model.eval()
    sums = {"total_loss": 0.0, "recon_loss": 0.0, "kl_loss": 0.0}
    frames_seen, pixels_within, foreground_pixels, foreground_within = 0, 0, 0, 0
    mu_sum, mu_sq_sum, std_sum = (torch.zeros(cfg.vae.latent_size, dtype=torch.float64, device=device) for _ in range(3))
    for frames_uint8 in loader:
        frames = torch.from_numpy(frames_uint8)
        x = frames_to_input(frames.pin_memory() if device.type == "cuda" else frames, device, cfg.vae.channels_last)
        with autocast(device, cfg.vae.amp):
            recon_logits, mu, logvar = model(x, sample=False)
        losses = vae_loss(recon_logits, x, mu, logvar, cfg.vae.beta, cfg.vae.recon_loss, cfg.vae.kl_tolerance,
                          pixel_weights(x, background, cfg))
        batch = len(frames_uint8)
        for name in sums:
            sums[name] += losses[name].item() * batch
        error = (torch.sigmoid(recon_logits.float()) - x).abs().amax(dim=1)
        pixels_within += int((error <= PIXEL_TOLERANCE).sum())
        if background is not None:
            foreground = background_distance(x, background)[:, 0] > FOREGROUND_THRESHOLD
            foreground_pixels += int(foreground.sum())
            foreground_within += int((foreground & (error <= PIXEL_TOLERANCE)).sum())
        mu64 = mu.double()
        mu_sum = mu_sum + mu64.sum(0)
        mu_sq_sum = mu_sq_sum + mu64.pow(2).sum(0)
        std_sum = std_sum + torch.exp(0.5 * logvar.double()).sum(0)
        frames_seen += batch
    model.train()
    mean = mu_sum / frames_seen
    variance = (mu_sq_sum / frames_seen - mean.pow(2)).clamp(min=0)
    return {
        **{name: value / frames_seen for name, value in sums.items()},
        "pixel_accuracy": pixels_within / (frames_seen * x.shape[2] * x.shape[3]),
        # nan without a background, or when no frame differs from it: nothing to score.
        "foreground_pixel_accuracy": foreground_within / foreground_pixels if foreground_pixels else float("nan"),
        "active_units": int((variance > ACTIVE_UNIT_THRESHOLD).sum()),
        "latent_mean": mean.cpu().numpy(),
        "latent_mu_variance": variance.cpu().numpy(),
        "latent_std": (std_sum / frames_seen).cpu().numpy(),
    }


@torch.no_grad()
def reconstruction_grid(model: ConvVAE, frames_uint8: np.ndarray, cfg: Config, device: torch.device) -> torch.Tensor:
    """frames_uint8: (N, 64, 64, 3) -> a grid of the frames (top row) above their reconstructions."""
    model.eval()
    x = frames_to_input(frames_uint8, device, cfg.vae.channels_last)
    recon = model.decode(model.encode(x)[0]).float()
    model.train()
    return image_grid(torch.cat([x, recon]), columns=len(frames_uint8))


@torch.no_grad()
def latent_traversal(
    model: ConvVAE, frame_uint8: np.ndarray, latent_variance: np.ndarray, cfg: Config, device: torch.device
) -> torch.Tensor:
    """Decode one frame's mean code with each of the highest-variance dims set to -3 .. +3 in turn.

    frame_uint8: (64, 64, 3); latent_variance: (latent_size,). Row = one dim, column = one value.
    """
    model.eval()
    mu, _ = model.encode(frames_to_input(frame_uint8[None], device, cfg.vae.channels_last))
    dims = np.argsort(latent_variance)[::-1][:TRAVERSAL_DIMS]
    codes = mu.repeat(len(dims) * len(TRAVERSAL_VALUES), 1)
    for row, dim in enumerate(dims):
        for column, value in enumerate(TRAVERSAL_VALUES):
            codes[row * len(TRAVERSAL_VALUES) + column, dim] = float(value)
    images = model.decode(codes).float()
    model.train()
    return image_grid(images, columns=len(TRAVERSAL_VALUES))


def sample_frames(paths: list[Path], count: int) -> np.ndarray:
    """(count, 64, 64, 3) uint8 frames spread evenly over the first `count` episodes of `paths`.

    Consecutive frames look alike; frames from different episodes and times show what V has learnt.
    """
    chosen = paths[:count]
    picked = []
    for index, path in enumerate(chosen):
        obs = load_episode(path, keys=("obs",))["obs"]
        share = count // len(chosen) + (index < count % len(chosen))
        picked.append(obs[((np.arange(share) + 0.5) / share * len(obs)).astype(int)])
    return np.concatenate(picked)


def _steps_per_epoch(cfg: Config, loader: FrameChunkLoader, episode_lengths: np.ndarray) -> int:
    """The steps of `loader`'s next pass: full batches of the smallest rank's episodes (every rank must
    take as many steps as the others, or its gradient all_reduce would wait forever), capped by
    `vae.max_steps_per_epoch`. One process: training frames // vae.batch_size."""
    frames = min(int(episode_lengths[shard].sum()) for shard in loader.next_pass_shards())
    steps = frames // loader.batch_size
    if cfg.vae.max_steps_per_epoch > 0:
        steps = min(steps, cfg.vae.max_steps_per_epoch)
    if steps == 0:
        share = f" in the smallest of {loader.world_size} shards" if loader.world_size > 1 else ""
        raise WorldModelsError(
            f"only {frames} training frames{share}, fewer than a batch of {loader.batch_size} "
            f"(vae.batch_size={cfg.vae.batch_size}); collect more rollouts or lower vae.batch_size"
        )
    return steps


def train_vae(cfg: Config) -> Path:
    """Train (or resume training) V on `cfg`'s rollouts; returns `checkpoints/<experiment>/vae.pt`.
    Under `torchrun`, each process trains on its own share of the episodes (see the module docstring)."""
    return run_data_parallel(_train_vae, cfg)


def _train_vae(cfg: Config, world: DistributedContext) -> Path:
    v = cfg.vae
    device = world.device
    model = ConvVAE(v.latent_size, v.batch_norm)
    if v.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = model.to(device)
    loop = EpochLoop("vae", cfg, world, model, v.learning_rate, v.amp, v.epochs)
    if loop.last_path.is_file() and not loop.resume(load_vae_checkpoint(cfg, loop.last_path, device)):
        return loop.last_path  # all epochs already done
    train_model = world.wrap(model)  # `model` itself in one process; checkpoints and validation use `model`

    per_rank_batch = world.per_rank_batch(v.batch_size, "vae.batch_size")
    train_paths, val_paths = split_for_validation(require_episodes(cfg), v.val_fraction, "vae")
    lengths = episode_lengths(train_paths)

    def train_loader(epoch: int) -> FrameChunkLoader:
        # Seeded by epoch, so a resumed run sees the batches an uninterrupted one would have.
        return FrameChunkLoader(train_paths, per_rank_batch, v.episodes_per_chunk, epoch_seed(cfg.experiment.seed, epoch),
                                rank=world.rank, world_size=world.world_size)

    steps_per_epoch = _steps_per_epoch(cfg, train_loader(loop.start_epoch), lengths)
    val_loader = FrameChunkLoader(val_paths, v.batch_size, v.episodes_per_chunk, cfg.experiment.seed, shuffle=False, drop_last=False)
    grid_frames = sample_frames(val_paths, GRID_FRAMES)
    background = mean_frame(train_paths, device)
    processes = f", {world.world_size} processes of {per_rank_batch} frames per batch" if world.world_size > 1 else ""
    print_main(f"vae: {cfg.env.env_id} on {device}{processes}, {len(train_paths)} training episodes ({int(lengths.sum())} frames, "
               f"{steps_per_epoch} steps/epoch), {len(val_paths)} validation episodes; {v.recon_loss} loss, beta {v.beta}")

    writer = loop.open_writer()  # None on ranks other than 0
    png_dir = experiment_dir(cfg, "logs") / "vae"
    for epoch in loop.remaining_epochs():
        loader = train_loader(epoch)
        steps_per_epoch = _steps_per_epoch(cfg, loader, lengths)
        loop.begin_epoch(epoch, steps_per_epoch)
        for step, frames_uint8 in enumerate(loader):
            if step >= steps_per_epoch:
                break
            beta = annealed_beta(cfg, epoch + step / steps_per_epoch)
            losses = training_step(train_model, loop.optimizer, loop.scaler, frames_uint8, beta, cfg, device, background=background)
            logged = loop.end_step(step, losses)
            if logged is not None:
                writer.add_scalar("vae/beta", beta, loop.global_step)
                loop.bar.set_postfix(loss=f"{logged['total_loss']:.1f}", beta=f"{beta:.2f}")
        train_losses = loop.end_training()
        if not world.is_main:
            continue  # rank 0 validates and writes; this rank waits for it at the next epoch's first all_reduce

        val = validate(model, val_loader, cfg, device, background)
        for name in ("latent_mean", "latent_mu_variance", "latent_std"):
            writer.add_histogram(f"vae/val/{name}", val[name], loop.global_step)
        grid = reconstruction_grid(model, grid_frames, cfg, device)
        writer.add_image("vae/val/reconstructions", grid, epoch + 1)
        save_png(grid, png_dir / "reconstructions.png")
        images_per_second = steps_per_epoch * v.batch_size / loop.epoch_seconds
        val_scalars = {name: value for name, value in val.items() if not isinstance(value, np.ndarray)}
        improved = loop.end_epoch(epoch, train_losses, val_scalars, {"images_per_second": images_per_second})
        print(f"vae: epoch {epoch + 1}/{v.epochs}  train loss {train_losses['total_loss']:.1f}  "
              f"val loss {val['total_loss']:.1f} (recon {val['recon_loss']:.1f}, kl {val['kl_loss']:.1f})  "
              f"pixel acc {val['pixel_accuracy']:.3f} (foreground {val['foreground_pixel_accuracy']:.3f})  active units {val['active_units']}/{v.latent_size}  "
              f"{images_per_second:.0f} img/s{'  (best)' if improved else ''}")

    if world.is_main:
        traversal = latent_traversal(model, grid_frames[0], val["latent_mu_variance"], cfg, device)
        writer.add_image("vae/val/latent_traversal", traversal, loop.global_step)
        save_png(traversal, png_dir / "latent_traversal.png")
        print(f"vae: checkpoint {loop.last_path}, best {loop.best_path}, images in {png_dir}")
    loop.close()
    return loop.last_path


def main(argv: Optional[list[str]] = None) -> None:
    run_stage(train_vae, __doc__.split("\n")[0], argv)


if __name__ == "__main__":
    run_cli(main)
