"""Shared test fixtures: configs whose every output folder lives under pytest's tmp_path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

from config import Config, get_config  # noqa: E402


def isolate(cfg: Config, root: Path) -> Config:
    """Point every folder a stage writes to under `root`."""
    cfg.experiment.data_dir = str(root / "data")
    cfg.experiment.checkpoint_dir = str(root / "checkpoints")
    cfg.experiment.log_dir = str(root / "logs")
    cfg.experiment.video_dir = str(root / "videos")
    cfg.experiment.results_dir = str(root / "results")
    return cfg


# V and M for unit tests: a couple of optimiser steps on a few short episodes. Modules add their own
# episode count and lengths on top.
TINY_PIPELINE_OVERRIDES = [
    "collect.workers=1", "vae.epochs=1", "vae.max_steps_per_epoch=2", "vae.batch_size=16",
    "mdnrnn.epochs=1", "mdnrnn.batch_size=4", "mdnrnn.hidden_size=32", "mdnrnn.val_fraction=0.3",
    "experiment.device=cpu",
]


def tiny_pipeline_config(root: Path, name: str, overrides: Sequence[str] = ()) -> Config:
    """LunarLander smoke config with `TINY_PIPELINE_OVERRIDES` then `overrides`, experiment `name`, under `root`."""
    cfg = isolate(get_config("LunarLander-v3", preset="smoke", overrides=TINY_PIPELINE_OVERRIDES + list(overrides)), root)
    cfg.experiment.name = name
    return cfg


def kill_mid_collection(command: Sequence[str], cwd: Path, folder: Path, episodes: int = 3) -> int:
    """Start a collection `command` in `cwd`, SIGKILL it once `folder` holds `episodes` episode files
    (or after 90 s), and return how many it had written."""
    from utils.data import list_episodes

    process = subprocess.Popen(list(command), cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 90
    while len(list_episodes(folder)) < episodes and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return len(list_episodes(folder))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a 2-core machine: one thread is far faster than two fighting for busy cores, and
    the 2-process tests need one core each."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def smoke_config(tmp_path):
    """A factory: smoke-preset config for an env, isolated under tmp_path."""

    def make(env_id: str = "LunarLander-v3", overrides: list[str] | None = None) -> Config:
        return isolate(get_config(env_id, preset="smoke", overrides=overrides), tmp_path)

    return make


@pytest.fixture(scope="session")
def trained_lunar(tmp_path_factory):
    """Root folder of a LunarLander experiment trained by the smoke presets: train.py's whole World
    Models pipeline, then the PPO baseline. Shared by the tests that need trained agents."""
    from train import run_pipeline
    from training.ppo_baseline import train_ppo

    root = tmp_path_factory.mktemp("lunar")
    cfg = isolate(get_config("LunarLander-v3", preset="smoke", overrides=["env.max_episode_steps=60"]), root)
    run_pipeline(cfg)
    train_ppo(cfg)
    return root
