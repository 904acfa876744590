"""The epoch / resume / best-checkpoint skeleton that V's and M's stages share.

A stage script keeps what is its own: the model, the data, the training step and its loss, the
validation metrics and the images. `run_data_parallel` runs its training function in the process's
session (`torchrun` or one process), seeded per rank; `EpochLoop` holds the rest the two have in common:

    loop = EpochLoop("vae", cfg, world, model, cfg.vae.learning_rate, cfg.vae.amp, cfg.vae.epochs)
    if loop.last_path.is_file() and not loop.resume(checkpoint):  # False: all epochs already done
        return loop.last_path
    writer = loop.open_writer()
    for epoch in loop.remaining_epochs():
        loop.begin_epoch(epoch, steps_per_epoch)
        for step ...:
            losses = training_step(model, loop.optimizer, loop.scaler, ...)
            loop.end_step(step, losses)  # sums, counts, and logs the world-mean every LOG_EVERY steps
        train_losses = loop.end_training()
        val = validate(...)  # rank 0
        improved = loop.end_epoch(epoch, train_losses, val, throughput)  # logs, `<stage>.pt`, `<stage>_best.pt`
    loop.close()

Names are stable: TensorBoard tags `<stage>/train/<loss>`, `<stage>/val/<metric>`, `<stage>/learning_rate`,
`<stage>/<throughput>`, and the checkpoint's `metrics` keys `train_<loss>`, `val_<metric>`, `<throughput>`,
where <loss> are the keys of the stage's loss dict (`vae_loss`, `mdnrnn_loss`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
from torch import nn
from tqdm import tqdm

from config import Config
from training.distributed import DistributedContext, distributed_session, print_main
from training.train_utils import make_grad_scaler
from utils.data import split_episodes
from utils.files import best_checkpoint_path, checkpoint_path, make_writer, save_checkpoint
from utils.runtime import seed_everything

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

LOG_EVERY = 20  # steps between logged training losses (each log is one all_reduce under torchrun)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch `epoch`'s shuffling and sampling: a function of (--seed, epoch) only, so a resumed
    stage draws what an uninterrupted one would have."""
    return seed * 100_003 + epoch


def split_for_validation(paths: list[Path], val_fraction: float, stage: str) -> tuple[list[Path], list[Path]]:
    """(training, validation) episodes (`utils.data.split_episodes`); with none held out (one episode, or
    a val_fraction of 0) the stage validates on its training episodes, and says so."""
    train_paths, val_paths = split_episodes(paths, val_fraction)
    if not val_paths:
        print_main(f"{stage}: note: no episodes held out (one episode, or {stage}.val_fraction=0); validating on the "
                   f"training episodes")
        val_paths = train_paths
    return train_paths, val_paths


def run_data_parallel(train: Callable[[Config, DistributedContext], Path], cfg: Config) -> Path:
    """`train(cfg, world)` in this process's session: one of the processes `torchrun` started, or one
    process of rank 0 without it (`training/distributed.py`). torch, numpy and random are seeded first,
    per rank (`world.rank_seed`): rank 0 keeps `experiment.seed`, so one process is seeded as always."""
    with distributed_session(cfg.experiment.device) as world:
        seed_everything(world.rank_seed(cfg.experiment.seed))
        return train(cfg, world)


class EpochLoop:
    """Adam, the GradScaler and the progress of one stage's training: epoch, global step, best validation
    loss; resuming them from `<stage>.pt`, and writing `<stage>.pt` / `<stage>_best.pt` after each epoch.

    `model` is the bare module (not its DistributedDataParallel wrapper): its state is what is saved.
    Rank 0 alone writes logs and checkpoints; every rank must call `end_step` and `end_training`, which
    average the losses over the ranks.
    """

    def __init__(self, stage: str, cfg: Config, world: DistributedContext, model: nn.Module,
                 learning_rate: float, amp: bool, epochs: int):
        self.stage, self.cfg, self.world, self.model = stage, cfg, world, model
        self.learning_rate, self.epochs = learning_rate, epochs
        self.last_path, self.best_path = checkpoint_path(cfg, stage), best_checkpoint_path(cfg, stage)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
        self.scaler = make_grad_scaler(world.device, amp)
        self.start_epoch, self.global_step, self.best_val_loss = 0, 0, float("inf")
        self.writer: Optional[SummaryWriter] = None
        # The current epoch's, set by begin_epoch and end_training.
        self.bar: Optional[tqdm] = None
        self.steps_per_epoch, self.epoch_start, self.epoch_seconds = 0, 0.0, 0.0
        self.loss_sums: dict[str, torch.Tensor] = {}

    def resume(self, checkpoint: dict[str, Any]) -> bool:
        """Continue from `checkpoint` (the stage's last one, already checked by its loader): weights,
        optimizer and scaler state, epoch, global step, best validation loss. Returns False when its
        epochs already reach `epochs`: nothing is left to train."""
        self.model.load_state_dict(checkpoint["model"])
        if "optimizer" in checkpoint:  # absent from a weights-only export (tools/export_weights.py):
            self.optimizer.load_state_dict(checkpoint["optimizer"])  # more epochs then start Adam afresh
            if checkpoint["grad_scaler"]:  # a disabled scaler (CPU, bf16) saved {}: an fp16 resume starts afresh
                self.scaler.load_state_dict(checkpoint["grad_scaler"])
        self.start_epoch, self.global_step = checkpoint["epoch"], checkpoint["global_step"]
        self.best_val_loss = checkpoint["best_val_loss"]
        if self.start_epoch >= self.epochs:
            print_main(f"{self.stage}: all {self.epochs} epochs already done in {self.last_path}; nothing to train")
            return False
        print_main(f"{self.stage}: resuming from {self.last_path} at epoch {self.start_epoch + 1} of {self.epochs}")
        # A learning rate changed with --set applies on resume too.
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate
        return True

    def open_writer(self) -> Optional[SummaryWriter]:
        """The stage's TensorBoard writer (`logs/<experiment>/<stage>/`) on rank 0; None on the others."""
        self.writer = make_writer(self.cfg, self.stage) if self.world.is_main else None
        return self.writer

    def remaining_epochs(self) -> range:
        return range(self.start_epoch, self.epochs)

    # ------------------------------------------------------------------------------------ training
    def begin_epoch(self, epoch: int, steps_per_epoch: int) -> None:
        """Start the epoch's clock, loss sums and progress bar (shown on rank 0)."""
        self.steps_per_epoch = steps_per_epoch
        self.loss_sums = {}
        self.bar = tqdm(total=steps_per_epoch, desc=f"{self.stage} epoch {epoch + 1}/{self.epochs}", unit="step",
                        disable=not self.world.is_main)
        self.epoch_start = time.perf_counter()

    def end_step(self, step: int, losses: dict[str, torch.Tensor]) -> Optional[dict[str, float]]:
        """Count a training step with its detached losses (0-d tensors, summed on the device: no host sync).

        Every LOG_EVERY steps, logs the losses averaged over the ranks as `<stage>/train/<name>` and
        returns them on rank 0 (for the progress bar); returns None otherwise.
        """
        for name, value in losses.items():
            self.loss_sums.setdefault(name, torch.zeros((), device=value.device))
            self.loss_sums[name] += value
        self.global_step += 1
        self.bar.update(1)
        if step % LOG_EVERY != 0:
            return None
        global_losses = self.world.mean(losses)  # a collective: every rank logs at the same steps
        if not self.world.is_main:
            return None
        for name, value in global_losses.items():
            self.writer.add_scalar(f"{self.stage}/train/{name}", value, self.global_step)
        return global_losses

    def end_training(self) -> dict[str, float]:
        """Close the epoch's bar; the epoch's mean losses over all ranks. Sets `epoch_seconds`."""
        self.bar.close()
        self.epoch_seconds = time.perf_counter() - self.epoch_start
        return self.world.mean({name: value / self.steps_per_epoch for name, value in self.loss_sums.items()})

    # --------------------------------------------------------------------------------- end of epoch
    def end_epoch(self, epoch: int, train_losses: dict[str, float], val: dict[str, float],
                  throughput: dict[str, float], **identity: Any) -> bool:
        """Rank 0, after validation: log `val` and `throughput`, write `<stage>.pt` (the resume point) and,
        when val["total_loss"] improved on the best so far, `<stage>_best.pt`. `identity`: more
        checkpoint fields the stage's loader checks. Returns whether validation improved."""
        metrics = {f"train_{name}": value for name, value in train_losses.items()}
        metrics.update({f"val_{name}": value for name, value in val.items()})
        metrics.update(throughput)
        for name, value in val.items():
            self.writer.add_scalar(f"{self.stage}/val/{name}", value, self.global_step)
        self.writer.add_scalar(f"{self.stage}/learning_rate", self.optimizer.param_groups[0]["lr"], self.global_step)
        for name, value in throughput.items():
            self.writer.add_scalar(f"{self.stage}/{name}", value, self.global_step)

        improved = val["total_loss"] < self.best_val_loss
        self.best_val_loss = min(self.best_val_loss, val["total_loss"])
        payload = dict(
            model=self.model.state_dict(), optimizer=self.optimizer.state_dict(), grad_scaler=self.scaler.state_dict(),
            epoch=epoch + 1, global_step=self.global_step, best_val_loss=self.best_val_loss, metrics=metrics, **identity,
        )
        save_epoch_checkpoints(self.last_path, self.best_path, improved, self.stage, self.cfg, **payload)
        return improved

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def save_epoch_checkpoints(last_path: Path, best_path: Path, improved: bool, stage: str, cfg: Config,
                           **payload: Any) -> None:
    """End of an epoch: always the last checkpoint (for resume), and the best one when validation improved."""
    if improved:
        save_checkpoint(best_path, stage, cfg, **payload)
    save_checkpoint(last_path, stage, cfg, **payload)
