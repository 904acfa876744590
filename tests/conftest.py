"""Shared test fixtures: configs whose every output folder lives under pytest's tmp_path."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

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
