"""Process-wide settings a run controls: seeds, the device, and torch's CPU thread count.

Each is set from the config, never as a side effect that outlives the code that needed it: the thread
count in particular is scoped (`torch_threads`), so a stage that plays envs on one thread does not leave
the next stage of the same process (train.py runs all four) training on one thread.
"""

from __future__ import annotations

import contextlib
import random
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from config import Config
from utils.errors import WorldModelsError

# Episode seeds: `purpose * 10^8 + experiment.seed * 10^6 + index`, so collection, controller training,
# the controller's re-evaluation and final evaluation never play the same episode, and each range
# depends on the one --seed (0..99, checked by config.FIELD_RULES). All stay below 2^31, which ALE requires.
SEED_PURPOSES = {"collect": 0, "controller": 1, "controller_eval": 2, "evaluate": 3, "ppo": 4}


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA). Envs and CMA-ES take the seed explicitly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def episode_seeds(cfg: Config, purpose: str, start: int, count: int) -> np.ndarray:
    """(count,) int64 env seeds for episodes start .. start+count-1 of `purpose`."""
    if not 0 <= start and start + count <= 10**6:
        raise WorldModelsError(f"episode indices {start}..{start + count} exceed the 10^6 per-purpose seed range")
    base = SEED_PURPOSES[purpose] * 10**8 + cfg.experiment.seed * 10**6
    return base + np.arange(start, start + count, dtype=np.int64)


# Where a batch of episodes draws its random numbers: one generator for the whole batch, or one per episode
# (row). Per-episode generators make an episode's draws independent of which episodes share its batch.
RandomSource = Optional[Union[torch.Generator, Sequence[torch.Generator]]]


def draw_rows(source: RandomSource, rows: int, draw: Callable[[Optional[torch.Generator], range], torch.Tensor]) -> torch.Tensor:
    """`draw(generator, span)` returns random numbers for the rows in `span`, one per row along dim 0. With
    one generator (or None: torch's global one) that is one call for range(rows); with one generator per
    row, row i is `draw(source[i], range(i, i + 1))`, in row order."""
    if source is None or isinstance(source, torch.Generator):
        return draw(source, range(rows))
    if len(source) != rows:
        raise ValueError(f"{len(source)} generators for {rows} rows")
    return torch.cat([draw(generator, range(row, row + 1)) for row, generator in enumerate(source)])


def resolve_device(spec: str = "auto") -> torch.device:
    """`auto` picks CUDA when available, else CPU; anything else must name a usable device."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise WorldModelsError(f"bad device {spec!r}; valid: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise WorldModelsError(f"device {spec!r} requested but CUDA is not available; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise WorldModelsError(f"bad device {spec!r}; valid: auto, cpu, cuda, cuda:N")
    return device


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with torch on `count` CPU threads (0: leave it as it is), then restore the count.

    Env workers need the cores while the models run in the caller: extra OpenMP threads would spin
    against them. Restoring matters because one process runs several stages (train.py, --iterations).
    """
    previous = torch.get_num_threads()
    if count > 0:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
