"""Training windows for M: sequences of `mdnrnn.sequence_length` steps cut out of the latent cache.

`SequenceSampler` draws an epoch's shuffled windows (`epoch_windows`) or the consecutive windows that
cover every step once (`eval_windows`) and gathers them into a `SequenceBatch`; `sample_latents` draws
z ~ N(mu, sigma^2) for a batch, re-sampled every time a window is drawn, as in the paper.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import torch

from models.vae import sample_latent
from training.latents import LatentCache


class SequenceBatch(NamedTuple):
    """Windows of L steps plus the frame after them. mu, logvar: (B, L+1, Z); actions: (B, L, A);
    rewards, dones: (B, L) float32; valid: (B, L+1) bool, false on padding past an episode's end."""

    mu: torch.Tensor
    logvar: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    dones: torch.Tensor
    valid: torch.Tensor

    def to(self, device: torch.device) -> "SequenceBatch":
        if device.type != "cuda":
            return self
        return SequenceBatch(*(tensor.pin_memory().to(device, non_blocking=True) for tensor in self))


class SequenceSampler:
    """Cuts windows out of a LatentCache's episodes with one vectorised gather per batch.

    A window starting at `start` of episode e covers rows start .. start+L of that episode (L inputs
    and the frame after the last one); rows past the episode's end repeat its last row and are masked.
    """

    def __init__(self, cache: LatentCache, episode_ids: np.ndarray, sequence_length: int):
        self.sequence_length = sequence_length
        self.episode_ids = np.asarray(episode_ids, dtype=np.int64)
        self.offsets, self.lengths = cache.offsets, cache.lengths
        # Torch views of the numpy arrays (no copy): index_select gathers a batch in one call per field.
        self.fields = {name: torch.from_numpy(getattr(cache, name)) for name in ("mu", "logvar", "actions", "rewards", "terminated")}

    @property
    def num_frames(self) -> int:
        return int(self.lengths[self.episode_ids].sum())

    def windows_per_episode(self) -> np.ndarray:
        """ceil(T / L) per episode: an epoch of that many windows shows about every frame once."""
        return np.ceil(self.lengths[self.episode_ids] / self.sequence_length).astype(np.int64)

    def epoch_windows(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(episode ids, starts), shuffled: ceil(T/L) windows per episode of length T.

        Starts are drawn uniformly from [-(L-1), T-1] and clipped to [0, T-L], so windows stay full and
        the first and last frames are covered as often as a frame mid-episode (a plain uniform start in
        [0, T-L] would almost never show M an episode's final, done-carrying step). The clipping piles
        the out-of-range starts onto the two end windows, so frames near, but not at, either end are
        covered more often: up to (2L-1)/L times as often, at L-1 steps from the first or last frame.
        """
        length = self.sequence_length
        counts = self.windows_per_episode()
        episode_lengths = self.lengths[self.episode_ids]
        episodes = np.repeat(self.episode_ids, counts)
        totals = np.repeat(episode_lengths, counts)
        raw = rng.integers(-(length - 1), totals)
        starts = np.clip(raw, 0, np.maximum(totals - length, 0))
        order = rng.permutation(len(episodes))
        return episodes[order], starts[order]

    def eval_windows(self) -> tuple[np.ndarray, np.ndarray]:
        """(episode ids, starts) of consecutive windows covering every step of every episode once."""
        counts = self.windows_per_episode()
        episodes = np.repeat(self.episode_ids, counts)
        first = np.repeat(np.cumsum(counts) - counts, counts)
        starts = (np.arange(len(episodes)) - first) * self.sequence_length
        return episodes, starts

    def gather(self, episodes: np.ndarray, starts: np.ndarray) -> SequenceBatch:
        """The windows (episodes[i], starts[i]) as a CPU SequenceBatch."""
        positions = starts[:, None] + np.arange(self.sequence_length + 1)
        lengths = self.lengths[episodes][:, None]
        valid = positions < lengths
        rows = torch.from_numpy(self.offsets[episodes][:, None] + np.minimum(positions, lengths - 1))
        flat = rows.reshape(-1)

        def take(name: str, steps: slice) -> torch.Tensor:
            values = self.fields[name].index_select(0, flat)
            return values.reshape(*rows.shape, *values.shape[1:])[:, steps]

        inputs = slice(0, self.sequence_length)
        return SequenceBatch(
            mu=take("mu", slice(None)),
            logvar=take("logvar", slice(None)),
            actions=take("actions", inputs),
            rewards=take("rewards", inputs),
            dones=take("terminated", inputs).float(),
            valid=torch.from_numpy(valid),
        )


def sample_latents(batch: SequenceBatch, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """z ~ N(mu, exp(logvar)) for every frame of the batch: (B, L+1, Z)."""
    return sample_latent(batch.mu, batch.logvar, generator)
