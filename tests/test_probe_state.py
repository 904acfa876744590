"""tools/probe_state.py: the episodes it plays and the probe's R^2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from config import get_config
from models.mdnrnn import MDNRNN
from tools.probe_state import main, memory_states, play, ridge_r2
from utils.errors import WorldModelsError


def test_play_pairs_each_frame_with_the_state_it_shows():
    cfg = get_config("LunarLander-v3", overrides=["env.max_episode_steps=30"])
    frames, states, actions, episode_index = play(cfg, 4)
    assert frames.shape == (len(states), 64, 64, 3) and frames.dtype == np.uint8
    assert actions.shape == (len(states), 4) and np.all(actions.sum(1) == 1)  # one-hot
    assert states.shape[1] == 8 and set(episode_index.tolist()) == {0, 1, 2, 3}
    assert np.all(np.diff(episode_index) >= 0)  # episodes in order, none interleaved
    # A frame's state differs from its neighbour's: the lander moves every step.
    assert np.abs(np.diff(states[episode_index == 0, :2], axis=0)).sum(1).min() > 0


def test_ridge_r2_is_one_for_a_linear_function_and_near_zero_for_noise():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, 5))
    targets = np.stack([features @ rng.normal(size=5) + 3.0, rng.normal(size=400)], axis=1)
    r2 = ridge_r2(features, targets, np.arange(400) < 300)
    assert r2[0] > 0.999  # exactly linear in the features (plus an intercept)
    assert r2[1] < 0.05  # independent of them


def test_memory_states_are_the_h_an_agent_sees_step_by_step():
    torch.manual_seed(0)
    mdnrnn = MDNRNN(latent_size=4, action_size=2, hidden_size=8).eval()
    z, actions = torch.randn(7, 4), torch.randn(7, 2)
    episode_index = np.array([0, 0, 0, 1, 1, 1, 1])
    expected = []
    for episode in (0, 1):
        hidden = mdnrnn.initial_state(1, "cpu")
        for t in np.flatnonzero(episode_index == episode):
            expected.append(hidden[0][0, 0].detach().numpy())
            hidden = mdnrnn.step(z[t : t + 1], actions[t : t + 1], hidden)[-1]
    np.testing.assert_allclose(memory_states(mdnrnn, z, actions, episode_index), np.stack(expected), atol=1e-6)


class FullGas:
    """A driver that holds the gas down and steers straight."""

    def reset(self, seed=None):
        pass

    def act(self, frame):
        return np.array([0.0, 1.0, 0.0], np.float32)


def test_carracing_state_is_the_cars_speed_and_yaw_rate_played_by_the_given_driver():
    cfg = get_config("CarRacing-v3", overrides=["env.max_episode_steps=40", "env.backend=gymnasium"])
    frames, states, actions, episode_index = play(cfg, 2, FullGas())
    assert frames.shape == (80, 64, 64, 3) and states.shape == (80, 2)
    np.testing.assert_array_equal(actions, np.tile([0.0, 1.0, 0.0], (80, 1)))  # the driver's actions
    for episode in (0, 1):
        speed = states[episode_index == episode, 0]
        assert speed[0] == 0.0  # each frame is paired with the state it shows: at rest at the start
        assert np.all(np.diff(speed[5:]) > 0) and speed[-1] > 10  # full gas: faster every step


def test_probe_refuses_a_state_probe_of_carracing_on_envpool():
    with pytest.raises(WorldModelsError, match="--backend envpool"):
        main(["--env", "CarRacing-v3", "--backend", "envpool", "--memory"])
