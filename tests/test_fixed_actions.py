"""tools/fixed_actions.py: each action repeated, scored inside M and in the real env."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from config import get_config
from models.agent import WorldModelAgent
from models.loaders import build_policy
from tests.conftest import isolate
from utils.environment import env_action_space, make_frame_env, run_episode
from utils.errors import WorldModelsError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import fixed_actions  # noqa: E402


def lunar_config(root, overrides=()):
    return isolate(get_config("LunarLander-v3", preset="smoke", overrides=["env.max_episode_steps=60", *overrides]), root)


def test_each_fixed_action_c_plays_its_action_on_every_step(trained_lunar):
    cfg = lunar_config(trained_lunar)
    space = env_action_space(cfg.env)
    policy = build_policy(cfg, torch.device("cpu"), space)
    env = make_frame_env(cfg.env)
    for action in range(space.n):
        episode = run_episode(env, WorldModelAgent(policy, fixed_actions.fixed_action_params(policy, action)), 5, 30)
        assert episode.actions.argmax(axis=1).tolist() == [action] * episode.length
    env.close()


def test_doom_paper_mapping_gets_a_bias_in_each_third():
    # One tanh output: left, stay and right need biases in three different thirds.
    class Policy:  # what fixed_action_params reads of a WorldModelPolicy
        layer_shapes, action_mapping = [(10, 1)], "doom_paper"
        action_space = gym.spaces.Discrete(3)

    biases = {action: float(fixed_actions.fixed_action_params(Policy, action)[-1]) for action in range(3)}
    assert sorted(biases.values()) == [-fixed_actions.BIAS, 0.0, fixed_actions.BIAS]
    assert biases[2] < biases[0] < biases[1]  # DOOM_PAPER_ACTIONS: low tanh = left (2), middle = stay (0), high = right (1)


def test_the_tool_writes_a_row_per_action_with_dream_and_real_scores(trained_lunar, capsys):
    cfg = lunar_config(trained_lunar)
    folders = [f"experiment.{key}={getattr(cfg.experiment, key)}"
               for key in ("data_dir", "checkpoint_dir", "log_dir", "video_dir", "results_dir")]
    args = ["--env", "LunarLander-v3", "--preset", "smoke", "--experiment", cfg.experiment_name,
            "--dream-episodes", "6", "--real-episodes", "2", "--set", "env.max_episode_steps=60",
            *[item for override in folders for item in ("--set", override)]]
    fixed_actions.main(args)
    table = json.loads((trained_lunar / "results" / cfg.experiment_name / "fixed_actions.json").read_text())
    rows = table["rows"]
    assert [row["action"] for row in rows] == [0, 1, 2, 3]
    for row in rows:
        assert 1 <= row["dream_length_mean"] <= cfg.controller.dream_max_steps
        assert 1 <= row["real_length_mean"] <= 60 and np.isfinite(row["real_return_mean"])
    assert "| 3 |" in capsys.readouterr().out


def test_refuses_a_continuous_action_space(tmp_path):
    cfg = isolate(get_config("CarRacing-v3", preset="smoke"), tmp_path)
    with pytest.raises(WorldModelsError, match="continuous action space"):
        fixed_actions.fixed_action_rows(cfg, 2, 1)
