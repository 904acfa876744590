"""Stage 3: train M, the MDN-RNN, on V's latents of the rollouts -> `checkpoints/<experiment>/mdnrnn.pt`.

    python -m training.train_mdnrnn --env LunarLander-v3 --preset smoke

1. Latent cache. Every frame is encoded once with V into `checkpoints/<experiment>/latents.npz`
   (mu and logvar per frame, float32, plus each episode's actions, rewards and terminal flags). It
   stores fingerprints of V's weights and of the rollout files and is rebuilt when either changes.
2. Training. Random windows of `mdnrnn.sequence_length` steps within episodes (shorter episodes are
   padded and masked); z is re-sampled from N(mu, sigma^2) every time a window is drawn, as in the
   paper. Targets: z_{t+1} (masked at an episode's last step, whose next frame is not stored), r_t and
   terminated_t. Every epoch writes `mdnrnn.pt` (the resume point) and, when validation improves,
   `mdnrnn_best.pt` (what `load_mdnrnn` serves to the controller stage).

`mdnrnn.train=false` writes a seeded, untrained M instead: the paper's ablation.

Under `torchrun --nproc_per_node W` (see `training/distributed.py`) rank 0 builds the latent cache and
the others read it; every rank draws the epoch's shuffled windows from the same seed and takes windows
rank, rank + W, rank + 2W, ... of them, `mdnrnn.batch_size / W` per step, so step k's W per-rank batches
are together the very windows of one process's batch k. Latents are sampled with per-rank noise, and each
rank's loss is a mean over its own valid steps (windows of episodes shorter than L are padded), so the
step equals one process's in expectation. Rank 0 validates and writes the checkpoints and logs.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from config import Config
from models.loaders import env_action_size, load_mdnrnn, load_mdnrnn_checkpoint, load_vae, weights_fingerprint
from models.mdnrnn import MDNRNN, MDNOutput, masked_mean, mdnrnn_loss, mixture_mean
from models.vae import ConvVAE, frames_to_input
from training.distributed import DistributedContext, print_main
from training.epochs import EpochLoop, epoch_seed, run_data_parallel, split_for_validation
from training.latents import latent_cache_path, load_or_encode_latents
from training.sequences import SequenceBatch, SequenceSampler, sample_latents
from training.train_utils import autocast, run_cli, run_stage
from utils.data import load_episode, require_episodes
from utils.errors import WorldModelsError
from utils.files import best_checkpoint_path, checkpoint_path, experiment_dir, require_match, save_checkpoint
from utils.images import image_grid, save_png

IMAGE_SEQUENCES = 4  # validation sequences shown in the predicted-frames image
IMAGE_STEPS = 8  # time steps per sequence in that image


# ------------------------------------------------------------------------------- training step
def batch_loss(model: MDNRNN, batch: SequenceBatch, z: torch.Tensor, cfg: Config, device: torch.device) -> tuple[MDNOutput, dict[str, torch.Tensor]]:
    """M's outputs and losses on a batch already on `device`, with sampled latents z (B, L+1, Z)."""
    with autocast(device, cfg.mdnrnn.amp):
        output, _ = model(z[:, :-1], batch.actions)
    losses = mdnrnn_loss(
        output, z[:, 1:], batch.valid[:, 1:], batch.rewards, batch.dones, batch.valid[:, :-1],
        cfg.mdnrnn.reward_weight, cfg.mdnrnn.done_weight, cfg.mdnrnn.done_positive_weight,
    )
    return output, losses


def training_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    batch: SequenceBatch,
    cfg: Config,
    device: torch.device,
    generator: Optional[torch.Generator] = None,
) -> dict[str, torch.Tensor]:
    """One Adam step of M (or its DistributedDataParallel wrapper), gradients clipped to
    `mdnrnn.grad_clip`, on a batch on `device`; detached losses."""
    _, losses = batch_loss(model, batch, sample_latents(batch, generator), cfg, device)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(losses["total_loss"]).backward()
    scaler.unscale_(optimizer)
    nn.utils.clip_grad_norm_(model.parameters(), cfg.mdnrnn.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return {name: value.detach() for name, value in losses.items()}


# ---------------------------------------------------------------------------------- validation
@torch.no_grad()
def validate(model: MDNRNN, sampler: SequenceSampler, cfg: Config, device: torch.device) -> dict[str, float]:
    """Validation metrics over every step of the sampler's episodes, M fed z sampled as in training
    (with a fixed seed, so epochs compare). Squared errors are summed over latent dims and measured
    against the true posterior mean mu_{t+1}:

    prediction_error: |E[z_{t+1}] - mu_{t+1}|^2 for M's mixture mean; copy_baseline_error:
    |z_t - mu_{t+1}|^2, "copy the last z", the baseline that sees what M sees; copy_mean_baseline_error:
    |mu_t - mu_{t+1}|^2, copying the noise-free mean M never sees (how much the latent state moves per
    step). mixture_entropy (nats) and dominant_weight (largest pi) are averaged over latent dims; done
    precision/recall threshold the done logit at 0. The dream samples done from its probability instead,
    so calibration is what sets a dream episode's length: done_calibration = the deaths M expects (its
    probabilities summed over every step) / the deaths that happened (1 = dream episodes end as often as
    real ones), and done_probability_at_death is M's mean probability on the steps that did end.
    """
    model.eval()
    generator = torch.Generator(device).manual_seed(cfg.experiment.seed)
    episodes, starts = sampler.eval_windows()
    sums: dict[str, float] = {}
    counts = {"next": 0, "step": 0}
    true_positive = predicted = actual = 0
    expected_deaths = probability_at_deaths = 0.0
    for index in range(0, len(episodes), cfg.mdnrnn.batch_size):
        window = slice(index, index + cfg.mdnrnn.batch_size)
        batch = sampler.gather(episodes[window], starts[window]).to(device)
        z = sample_latents(batch, generator)
        output, losses = batch_loss(model, batch, z, cfg, device)
        next_mask, step_mask = batch.valid[:, 1:], batch.valid[:, :-1]
        next_count, step_count = int(next_mask.sum()), int(step_mask.sum())
        pi = output.log_pi.exp()
        weighted = {
            "nll": (losses["nll"], next_count),
            "reward_loss": (losses["reward_loss"], step_count),
            "done_loss": (losses["done_loss"], step_count),
            "prediction_error": (masked_mean(((mixture_mean(output.log_pi, output.mu) - batch.mu[:, 1:]) ** 2).sum(-1), next_mask), next_count),
            "copy_baseline_error": (masked_mean(((z[:, :-1] - batch.mu[:, 1:]) ** 2).sum(-1), next_mask), next_count),
            "copy_mean_baseline_error": (masked_mean(((batch.mu[:, :-1] - batch.mu[:, 1:]) ** 2).sum(-1), next_mask), next_count),
            "mixture_entropy": (masked_mean(-(pi * output.log_pi).sum(-2), step_mask), step_count),
            "dominant_weight": (masked_mean(pi.amax(-2), step_mask), step_count),
        }
        for name, (mean, count) in weighted.items():
            sums[name] = sums.get(name, 0.0) + mean.item() * count
        counts["next"] += next_count
        counts["step"] += step_count
        done_predicted = (output.done_logit > 0) & step_mask
        done_actual = (batch.dones > 0.5) & step_mask
        true_positive += int((done_predicted & done_actual).sum())
        predicted += int(done_predicted.sum())
        actual += int(done_actual.sum())
        probability = torch.sigmoid(output.done_logit.float())
        expected_deaths += float(probability[step_mask].sum())
        probability_at_deaths += float(probability[done_actual].sum())
    model.train()
    per_next = ("nll", "prediction_error", "copy_baseline_error", "copy_mean_baseline_error")
    metrics = {name: total / max(1, counts["next" if name in per_next else "step"]) for name, total in sums.items()}
    metrics["total_loss"] = metrics["nll"] + cfg.mdnrnn.reward_weight * metrics["reward_loss"] + cfg.mdnrnn.done_weight * metrics["done_loss"]
    metrics["done_precision"] = true_positive / predicted if predicted else 0.0
    metrics["done_recall"] = true_positive / actual if actual else 0.0
    metrics["done_calibration"] = expected_deaths / actual if actual else 0.0
    metrics["done_probability_at_death"] = probability_at_deaths / actual if actual else 0.0
    return metrics


@torch.no_grad()
def prediction_image(
    model: MDNRNN, vae: ConvVAE, sampler: SequenceSampler, frames: list[np.ndarray], cfg: Config, device: torch.device
) -> Optional[torch.Tensor]:
    """Per validation sequence (the first window of an episode, M fed the posterior means) three rows at
    up to IMAGE_STEPS times t: the real frame x_{t+1}, V's decoding of the true mu_{t+1}, and V's
    decoding of M's expected z_{t+1}. frames: each sequence's episode obs (T, 64, 64, 3).
    Returns the image grid, or None when no episode has a second frame."""
    model.eval()
    episodes = sampler.episode_ids[: len(frames)]
    batch = sampler.gather(episodes, np.zeros(len(episodes), dtype=np.int64)).to(device)
    with autocast(device, cfg.mdnrnn.amp):
        output, _ = model(batch.mu[:, :-1], batch.actions)
    expected = mixture_mean(output.log_pi, output.mu)
    rows = []
    for sequence, obs in enumerate(frames):
        predicted_steps = min(len(obs) - 1, sampler.sequence_length)  # steps t whose frame t+1 is stored
        if predicted_steps < 1:
            continue
        steps = np.unique(np.linspace(0, predicted_steps - 1, IMAGE_STEPS).round().astype(np.int64))
        real = frames_to_input(obs[steps + 1], device, channels_last=False)
        true_decoded = vae.decode(batch.mu[sequence, torch.from_numpy(steps + 1).to(device)]).float()
        predicted = vae.decode(expected[sequence, torch.from_numpy(steps).to(device)]).float()
        rows += [real, true_decoded, predicted]
    model.train()
    if not rows:
        return None
    columns = max(len(row) for row in rows)
    padded = [torch.cat([row, row.new_full((columns - len(row), *row.shape[1:]), 0.5)]) for row in rows]
    return image_grid(torch.cat(padded), columns=columns)


# ------------------------------------------------------------------------------------- training
def train_mdnrnn(cfg: Config) -> Path:
    """Train (or resume training) M on V's latents of `cfg`'s rollouts; returns `checkpoints/<experiment>/mdnrnn.pt`.

    With `mdnrnn.train=false`, writes a seeded untrained M there instead (the paper's ablation).
    Under `torchrun`, each process takes its own stride of the epoch's windows (see the module docstring).
    """
    return run_data_parallel(_train_mdnrnn, cfg)


def _train_mdnrnn(cfg: Config, world: DistributedContext) -> Path:
    m = cfg.mdnrnn
    device = world.device
    per_rank_batch = world.per_rank_batch(m.batch_size, "mdnrnn.batch_size")
    vae = load_vae(cfg, device)  # refuses a V of another env or latent size
    fingerprint = weights_fingerprint(vae)
    actions_width = env_action_size(cfg)
    model = MDNRNN(cfg.vae.latent_size, actions_width, m.hidden_size, m.num_mixtures).to(device)
    identity = dict(latent_size=cfg.vae.latent_size, action_size=actions_width, vae_fingerprint=fingerprint)

    if not m.train:
        last_path = checkpoint_path(cfg, "mdnrnn")
        if world.is_main:
            best_checkpoint_path(cfg, "mdnrnn").unlink(missing_ok=True)  # else load_mdnrnn would serve an older trained M
            save_checkpoint(last_path, "mdnrnn", cfg, model=model.state_dict(), epoch=0, global_step=0,
                            best_val_loss=float("inf"), metrics={}, trained=False, **identity)
            print(f"mdnrnn: mdnrnn.train=false: wrote an untrained M (seed {cfg.experiment.seed}) to {last_path}")
        return last_path

    loop = EpochLoop("mdnrnn", cfg, world, model, m.learning_rate, m.amp, m.epochs)
    resumed = False
    if loop.last_path.is_file():
        checkpoint = load_mdnrnn_checkpoint(cfg, loop.last_path, device)
        require_match("action_size", checkpoint["action_size"], actions_width, loop.last_path)
        if checkpoint["vae_fingerprint"] != fingerprint or not checkpoint.get("trained", True):
            print_main(f"mdnrnn: {loop.last_path} belongs to another VAE or is untrained; training M from scratch")
            if world.is_main:
                loop.best_path.unlink(missing_ok=True)
        elif not loop.resume(checkpoint):
            return loop.last_path
        else:
            resumed = True
    source = copy.deepcopy(cfg)  # the last round's experiment, with V kept (`mdnrnn.init_from`)
    source.experiment.name = m.init_from
    if m.init_from and not resumed:
        # The iterative procedure with V kept: M goes on learning from the last round's M on the new data
        # (its union with the old) rather than starting over. load_mdnrnn refuses an M of another V.
        model.load_state_dict(load_mdnrnn(source, device, vae).state_dict())
        print_main(f"mdnrnn: starting from the M of experiment {m.init_from!r}")
    train_model = world.wrap(model)  # `model` itself in one process; checkpoints and validation use `model`

    paths = require_episodes(cfg)
    with world.main_first():  # rank 0 encodes the cache once; the others read the file it wrote
        # The last round's cache holds the old rounds' episodes under this V: only the new ones are encoded.
        cache = load_or_encode_latents(cfg, vae, paths, device, [latent_cache_path(source)] if m.init_from else [])
    require_match("action_size (rollouts)", cache.actions.shape[1], actions_width, latent_cache_path(cfg))
    index_of = {path: index for index, path in enumerate(paths)}
    train_paths, val_paths = split_for_validation(paths, m.val_fraction, "mdnrnn")
    train_sampler = SequenceSampler(cache, np.array([index_of[p] for p in train_paths]), m.sequence_length)
    val_sampler = SequenceSampler(cache, np.array([index_of[p] for p in val_paths]), m.sequence_length)
    windows = int(train_sampler.windows_per_episode().sum())
    if windows < world.world_size:
        raise WorldModelsError(f"{windows} training windows cannot feed {world.world_size} processes; collect more rollouts")
    steps_per_epoch = max(1, windows // m.batch_size)
    if m.max_steps_per_epoch > 0:
        steps_per_epoch = min(steps_per_epoch, m.max_steps_per_epoch)
    image_frames = [load_episode(p, keys=("obs",))["obs"] for p in val_paths[:IMAGE_SEQUENCES]]
    processes = f", {world.world_size} processes of {per_rank_batch} windows per batch" if world.world_size > 1 else ""
    print_main(f"mdnrnn: {cfg.env.env_id} on {device}{processes}, {len(train_paths)} training episodes ({train_sampler.num_frames} frames, "
               f"{steps_per_epoch} steps/epoch of {m.batch_size} x {m.sequence_length}), {len(val_paths)} validation episodes")

    writer = loop.open_writer()  # None on ranks other than 0
    png_path = experiment_dir(cfg, "logs") / "mdnrnn" / "predictions.png"
    for epoch in loop.remaining_epochs():
        # Seeded by epoch, so a resumed run draws the windows and latents an uninterrupted one would have.
        # The windows are drawn alike on every rank (one seed), the latent noise is each rank's own.
        rng = np.random.default_rng([cfg.experiment.seed, epoch])
        generator = torch.Generator(device).manual_seed(world.rank_seed(epoch_seed(cfg.experiment.seed, epoch)))
        episodes, starts = (world.shard(array) for array in train_sampler.epoch_windows(rng))
        data_seconds = 0.0
        loop.begin_epoch(epoch, steps_per_epoch)
        for step in range(steps_per_epoch):
            data_start = time.perf_counter()
            window = slice(step * per_rank_batch, (step + 1) * per_rank_batch)
            batch = train_sampler.gather(episodes[window], starts[window]).to(device)
            data_seconds += time.perf_counter() - data_start
            losses = training_step(train_model, loop.optimizer, loop.scaler, batch, cfg, device, generator)
            logged = loop.end_step(step, losses)
            if logged is not None:
                loop.bar.set_postfix(nll=f"{logged['nll']:.3f}")
        train_losses = loop.end_training()
        if not world.is_main:
            continue  # rank 0 validates and writes; this rank waits for it at the next epoch's first all_reduce

        val = validate(model, val_sampler, cfg, device)
        grid = prediction_image(model, vae, val_sampler, image_frames, cfg, device)
        if grid is not None:
            writer.add_image("mdnrnn/val/predicted_frames", grid, epoch + 1)
            save_png(grid, png_path)
        sequences_per_second = steps_per_epoch * m.batch_size / loop.epoch_seconds
        throughput = dict(sequences_per_second=sequences_per_second, data_wait_share=data_seconds / loop.epoch_seconds)
        improved = loop.end_epoch(epoch, train_losses, val, throughput, trained=True, **identity)
        print(f"mdnrnn: epoch {epoch + 1}/{m.epochs}  train nll {train_losses['nll']:.3f}  val nll {val['nll']:.3f}  "
              f"val prediction error {val['prediction_error']:.3f} (copy z {val['copy_baseline_error']:.3f}, copy mu {val['copy_mean_baseline_error']:.3f})  "
              f"reward {val['reward_loss']:.3f}  done {val['done_loss']:.3f} (P {val['done_precision']:.2f} R {val['done_recall']:.2f}, "
              f"expected/actual deaths {val['done_calibration']:.2f}, p at death {val['done_probability_at_death']:.2f})  "
              f"{sequences_per_second:.0f} seq/s{'  (best)' if improved else ''}")
    loop.close()
    print_main(f"mdnrnn: checkpoint {loop.last_path}, best {loop.best_path}, predicted frames in {png_path}")
    return loop.last_path


def main(argv: Optional[list[str]] = None) -> None:
    run_stage(train_mdnrnn, __doc__.split("\n")[0], argv)


if __name__ == "__main__":
    run_cli(main)
