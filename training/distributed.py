"""Data-parallel training of V and M under `torchrun`: the plumbing both stages share.

    torchrun --nproc_per_node 4 -m training.train_vae --env CarRacing-v3
    torchrun --nproc_per_node 4 -m training.train_mdnrnn --env CarRacing-v3

`torchrun` starts one process per GPU (or per CPU slot) and sets WORLD_SIZE, RANK and LOCAL_RANK in each;
`distributed_session` reads them, joins the process group (nccl on CUDA, one GPU per process, cuda:LOCAL_RANK;
gloo on CPU) and leaves it at the end. Under a plain `python -m ...` there are no such variables: the
session is one process of rank 0, every helper below is the identity, and the stage runs exactly as
without this module.

Each process trains a replica of the model; DistributedDataParallel averages the gradients after every
backward pass, so W processes on batches of `batch_size / W` take the step one process takes on the
whole batch (both stages' losses are batch means). Every rank draws the epoch's shuffled order from the
same seed and keeps its own stride of it (`shard`), so the ranks' data are disjoint and together are the
epoch. Rank 0 alone writes checkpoints, TensorBoard logs, images and progress bars, and validates; the
losses it logs are means over all ranks (`mean`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from utils.errors import WorldModelsError
from utils.runtime import resolve_device

Items = TypeVar("Items", bound=Sequence)

# How long a rank waits for the others at a collective. Rank 0 alone encodes M's latent cache (every frame
# through V) while the others wait at a barrier: at the paper's scale that is minutes of disk reads,
# beyond the 10-minute default of nccl. A crashed rank does not make the others wait this long: torchrun
# stops every process of the run when one fails.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)

# Rank r > 0 seeds its noise (the VAE's reparameterisation, M's latent samples) with seed + r * this, so
# ranks draw independent noise; rank 0 keeps the configured seed, so a 1-process run is unchanged.
RANK_SEED_STRIDE = 1_000_003


def is_main_process() -> bool:
    """True outside torchrun and on rank 0: the one process that writes files, logs and progress bars."""
    return not dist.is_initialized() or dist.get_rank() == 0


def print_main(message: str) -> None:
    """print on rank 0 only, so a W-process run shows each line once."""
    if is_main_process():
        print(message)


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the run: rank of world_size, and the device it trains on."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to train with: DistributedDataParallel around `model` under torchrun, else `model`.

        Checkpoints and evaluation keep using `model` itself, so its state_dict has no `module.` prefix
        and a checkpoint moves freely between 1-process and W-process runs. On CUDA, BatchNorm layers
        become SyncBatchNorm (statistics of the whole batch, as in one process; it reuses the same
        parameter tensors, so the optimizer built on `model` still holds them); on CPU, where
        SyncBatchNorm does not run, each rank normalises with its own `batch_size / W` frames.
        """
        if self.world_size == 1:
            return model
        if self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            return DistributedDataParallel(model, device_ids=[self.device.index])
        return DistributedDataParallel(model)

    def per_rank_batch(self, batch_size: int, name: str) -> int:
        """`batch_size / world_size`: each rank's share of the configured (effective) batch."""
        if batch_size % self.world_size:
            raise WorldModelsError(
                f"{name}={batch_size} does not split over {self.world_size} processes; "
                f"use a multiple of {self.world_size}"
            )
        return batch_size // self.world_size

    def shard(self, items: Items) -> Items:
        """This rank's items of a sequence in the same order on every rank: items[rank::world_size].

        Strided rather than contiguous: batch k of every rank's shard, taken together, is batch k of the
        whole sequence, so the global batches are those one process would see.
        """
        return items[self.rank :: self.world_size]

    def mean(self, scalars: dict[str, torch.Tensor]) -> dict[str, float]:
        """Each 0-d tensor of `scalars` averaged over all ranks, as floats: the losses of the global batch.

        One all_reduce for them all; a collective, so every rank must call it at the same point.
        """
        stacked = torch.stack(list(scalars.values()))
        if self.world_size > 1:
            dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
            stacked = stacked / self.world_size
        return dict(zip(scalars, stacked.tolist()))

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. writes a cache file); the others run it once that is done."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def rank_seed(self, seed: int) -> int:
        """A seed for this rank's noise: `seed` on rank 0, distinct on every other rank."""
        return seed + RANK_SEED_STRIDE * self.rank

    def barrier(self) -> None:
        """Wait until every rank gets here (e.g. until rank 0 has written a file the others read)."""
        if self.world_size > 1:
            dist.barrier()


@contextlib.contextmanager
def distributed_session(device_spec: str = "auto") -> Iterator[DistributedContext]:
    """The DistributedContext of this process, within the torchrun process group when there is one.

    Joins the group (and leaves it on exit) when torchrun's WORLD_SIZE > 1 and no group exists yet; a
    group made by the caller is reused and left alone. `device_spec` is the configured device: under
    torchrun `cuda` means cuda:LOCAL_RANK. Keep the DDP wrapper in a function called inside the block
    (as the stages do), so it is freed before the group is destroyed.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_spec)
    if world_size == 1:
        yield DistributedContext(device)
        return
    if device.type == "cuda":
        local_rank = int(os.environ["LOCAL_RANK"])
        if local_rank >= torch.cuda.device_count():
            raise WorldModelsError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs on this node; "
                "use --nproc_per_node <= the GPU count"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns_group = not dist.is_initialized()
    if owns_group:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT, device_id=device if device.type == "cuda" else None)
    try:
        yield DistributedContext(device, rank=dist.get_rank(), world_size=dist.get_world_size())
    finally:
        if owns_group:
            dist.destroy_process_group()
