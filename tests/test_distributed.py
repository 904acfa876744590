"""Data-parallel V and M (training/distributed.py) on CPU with gloo: a 2-process step equals one process's
step on the combined batch, each rank reads its own episodes, and checkpoints move between 2-process
(`torchrun`) and 1-process runs in both directions."""

from __future__ import annotations

import contextlib
import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import tiny_pipeline_config

from config import Config, get_config
from models.loaders import load_mdnrnn, load_vae
from models.vae import ConvVAE
from training.collect import collect
from training.distributed import DistributedContext, distributed_session
from training.train_mdnrnn import train_mdnrnn
from training.train_utils import make_grad_scaler
from training.train_vae import train_vae, training_step
from utils.data import FrameChunkLoader, list_episodes, load_episode, rollout_dir
from utils.errors import WorldModelsError
from utils.files import checkpoint_path, experiment_dir, load_checkpoint

OVERRIDES = ["collect.num_rollouts=6", "env.max_episode_steps=40", "mdnrnn.sequence_length=8"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_cfg(root: Path, name: str, overrides: list[str] = ()) -> Config:
    return tiny_pipeline_config(root, name, OVERRIDES + list(overrides))


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Rollouts (6 LunarLander episodes of <= 40 frames) and the runs the tests inspect, made once:

    experiment "one_two": V and M trained 1 epoch by one process, then M's epoch 2 by two processes;
    experiment "ddp": V trained 1 epoch by two processes. The two processes (spawned as torchrun would
    start them, gloo on CPU) first take the optimiser steps `test_two_process_steps...` compares; each
    writes its stdout and stderr to rank<r>.log and its parameters after those steps to rank<r>.pt.
    """
    root = tmp_path_factory.mktemp("ddp")
    one_two = make_cfg(root, "one_two")
    collect(one_two)
    train_vae(one_two)
    train_mdnrnn(one_two)
    mp.spawn(_two_process_worker, args=(free_port(), root, combined_batches(one_two)), nprocs=2, join=True)
    return root


def combined_batches(cfg: Config) -> list[np.ndarray]:
    """Three fixed batches of 8 frames, (8, 64, 64, 3) uint8 each."""
    frames = np.concatenate([load_episode(path, keys=("obs",))["obs"] for path in list_episodes(rollout_dir(cfg))])
    return [frames[np.random.default_rng(step).choice(len(frames), 8, replace=False)] for step in range(3)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _two_process_worker(rank: int, port: int, root: Path, batches: list[np.ndarray]) -> None:
    """Rank `rank` of 2: joins the group from torchrun's variables, takes the steps on its shard of each
    batch, then runs the V and M stages, which reuse the group it made."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    with open(root / f"rank{rank}.log", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        with distributed_session("cpu") as world:
            assert world.world_size == 2 and world.rank == rank and world.is_main == (rank == 0)
            model = tiny_posterior_vae()
            # The DDP wrapper lives only in this call: it must be gone before the session leaves the group.
            train_steps(world.wrap(model), model, [world.shard(batch) for batch in batches])
            torch.save(model.state_dict(), root / f"rank{rank}.pt")
            train_vae(make_cfg(root, "ddp"))
            train_mdnrnn(make_cfg(root, "one_two", ["mdnrnn.epochs=2"]))


# ------------------------------------------------------------------------------- sharding helpers
def test_shards_are_strided_disjoint_and_refuse_an_uneven_batch():
    sequence = np.arange(10)
    shards = [DistributedContext(torch.device("cpu"), rank, 3).shard(sequence) for rank in range(3)]
    assert [shard.tolist() for shard in shards] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert DistributedContext(torch.device("cpu"), 1, 4).per_rank_batch(32, "vae.batch_size") == 8
    with pytest.raises(WorldModelsError, match=r"vae.batch_size=30 does not split over 4 processes"):
        DistributedContext(torch.device("cpu"), 0, 4).per_rank_batch(30, "vae.batch_size")
    one = DistributedContext(torch.device("cpu"))
    assert one.is_main and one.shard(sequence).tolist() == sequence.tolist() and one.rank_seed(7) == 7
    assert one.mean({"loss": torch.tensor(2.5)}) == {"loss": 2.5}


def test_each_rank_reads_its_own_episodes_of_the_same_shuffled_order(root):
    paths = list_episodes(rollout_dir(make_cfg(root, "ddp")))
    episodes = [load_episode(path, keys=("obs",))["obs"] for path in paths]
    loaders = [FrameChunkLoader(paths, 4, 2, seed=11, rank=rank, world_size=2) for rank in range(2)]
    shards = loaders[0].next_pass_shards()
    assert [s.tolist() for s in shards] == [s.tolist() for s in loaders[1].next_pass_shards()]  # one order on all ranks
    assert sorted(np.concatenate(shards).tolist()) == list(range(len(paths)))  # disjoint, and together every episode
    (one_process_order,) = FrameChunkLoader(paths, 8, 2, seed=11).next_pass_shards()
    assert shards[0].tolist() == one_process_order[0::2].tolist() and shards[1].tolist() == one_process_order[1::2].tolist()
    for rank, loader in enumerate(loaders):
        # The peek drew nothing: the pass reads the predicted shard's frames, all but the last partial batch.
        expected = {frame.tobytes() for index in shards[rank] for frame in episodes[index]}
        frames = [frame.tobytes() for batch in loader for frame in batch]
        assert set(frames) <= expected and len(frames) == sum(len(episodes[i]) for i in shards[rank]) // 4 * 4


# --------------------------------------------------------------------- (a) step equals combined batch
STEP_CONFIG = get_config("LunarLander-v3", preset="smoke", overrides=["vae.channels_last=false", "vae.foreground_weight=0"])


def tiny_posterior_vae() -> ConvVAE:
    """A seeded V without BatchNorm (CPU runs cannot sync its statistics across ranks) whose posterior
    sigma is e^-30: the reparameterisation noise, drawn differently by each rank, is far below float32
    precision, so a 2-process run and a 1-process run compute the same numbers."""
    torch.manual_seed(0)
    model = ConvVAE(latent_size=8, batch_norm=False)
    with torch.no_grad():
        model.fc_logvar.weight.zero_()
        model.fc_logvar.bias.fill_(-60.0)
    return model


def train_steps(model: torch.nn.Module, parameters: ConvVAE, batches: list[np.ndarray]) -> None:
    """train_vae.training_step on each batch, with SGD: the parameters are then linear in the gradients,
    which differ only by float rounding (Adam's normalisation would magnify rounding wherever a gradient
    is near zero)."""
    optimizer = torch.optim.SGD(parameters.parameters(), lr=1e-3)
    scaler = make_grad_scaler(torch.device("cpu"), enabled=False)
    for frames_uint8 in batches:
        training_step(model, optimizer, scaler, frames_uint8, 1.0, STEP_CONFIG, torch.device("cpu"))


def test_two_process_steps_equal_one_process_steps_on_the_combined_batch(root):
    reference = tiny_posterior_vae()
    train_steps(reference, reference, combined_batches(make_cfg(root, "one_two")))
    initial = tiny_posterior_vae().state_dict()
    ranks = [torch.load(root / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    for name, expected in reference.state_dict().items():
        moved = (expected - initial[name]).abs().max().item()
        error = max((state[name] - expected).abs().max().item() for state in ranks)
        # Each tensor moved (so the comparison means something), and both ranks ended where one process
        # did, to float32 rounding: a few ulps of the values plus 0.1% of the distance moved.
        assert moved > 1e-6 and error <= 1e-8 + 1e-3 * moved, (name, moved, error)


# ----------------------------------------------------------- (b, c) checkpoints cross process counts
def test_only_rank_0_prints_shows_progress_and_logs(root):
    main, other = ((root / f"rank{rank}.log").read_text() for rank in range(2))
    assert main.count("vae: epoch 1/1") == 1 and "2 processes of 8 frames per batch" in main and "vae epoch 1/1:" in main
    assert main.count("mdnrnn: epoch 2/2") == 1 and "2 processes of 2 windows per batch" in main
    assert other == ""  # no lines, no progress bars
    assert len(list((experiment_dir(make_cfg(root, "ddp"), "logs") / "vae").glob("events.*"))) == 1


def test_two_process_vae_checkpoint_resumes_in_one_process(root):
    cfg = make_cfg(root, "ddp", ["vae.epochs=2"])
    first = load_checkpoint(checkpoint_path(cfg, "vae"), "vae")
    assert first["epoch"] == 1 and first["global_step"] == 2
    assert not any(name.startswith("module.") for name in first["model"])
    resumed = load_checkpoint(train_vae(cfg), "vae")
    assert resumed["epoch"] == 2 and resumed["global_step"] == 4
    assert all(int(state["step"]) == 4 for state in resumed["optimizer"]["state"].values())  # Adam continued
    assert all(math.isfinite(value) for key, value in resumed["metrics"].items() if key.endswith("loss"))
    load_vae(cfg, "cpu")


def test_mdnrnn_checkpoint_moves_from_one_to_two_processes_and_back(root):
    cfg = make_cfg(root, "one_two", ["mdnrnn.epochs=3"])
    second = load_checkpoint(checkpoint_path(cfg, "mdnrnn"), "mdnrnn")  # epoch 1 by 1 process, 2 by 2
    steps = second["global_step"] // 2
    assert second["epoch"] == 2 and steps > 0 and "resuming from" in (root / "rank0.log").read_text()
    assert not any(name.startswith("module.") for name in second["model"])
    third = load_checkpoint(train_mdnrnn(cfg), "mdnrnn")  # 1 process again, from the 2-process checkpoint
    assert third["epoch"] == 3 and third["global_step"] == 3 * steps
    assert all(int(state["step"]) == 3 * steps for state in third["optimizer"]["state"].values())
    assert all(math.isfinite(value) for value in third["metrics"].values())
    load_mdnrnn(cfg, "cpu", vae=load_vae(cfg, "cpu"))
