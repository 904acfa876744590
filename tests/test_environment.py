"""Environment ids, frame preprocessing and exploration policies."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from config import SUPPORTED_ENVS, EnvConfig, get_config
from utils.actions import action_to_vector, vector_to_action
from utils.environment import RandomAgent, make_frame_env, preprocess_frame, resolve_env_id, run_episode
from utils.envpool_envs import ENVPOOL_ONLY_ENVS
from utils.errors import WorldModelsError


# DoomTakeCover-v0 has no Gymnasium env: tests/test_doom.py checks its frames on EnvPool.
@pytest.mark.parametrize("env_id", [*(env for env in SUPPORTED_ENVS if env not in ENVPOOL_ONLY_ENVS), "CartPole-v1"])
def test_every_env_produces_64x64_uint8_frames(env_id):
    env = make_frame_env(EnvConfig(env_id=env_id, max_episode_steps=20))
    episode = run_episode(env, RandomAgent(env.action_space), seed=1)
    env.close()
    assert episode.obs.shape == (episode.length, 64, 64, 3) and episode.obs.dtype == np.uint8
    assert 1 <= episode.length <= 20
    # a real picture, not a blank: frames have structure
    assert episode.obs.std() > 5


def test_a_rendered_env_keeps_its_state_vector_in_info():
    env = make_frame_env(EnvConfig(env_id="LunarLander-v3"))
    state_env = gym.make("LunarLander-v3")
    frame, info = env.reset(seed=3)
    state, _ = state_env.reset(seed=3)
    assert frame.shape == (64, 64, 3) and np.array_equal(info["state"], state)
    for _ in range(5):
        frame, _, _, _, info = env.step(2)
        state, *_ = state_env.step(2)
    assert np.array_equal(info["state"], state)  # the same episode, step by step
    env.close()
    state_env.close()


def test_unknown_env_lists_the_supported_ones():
    with pytest.raises(WorldModelsError, match="unknown environment 'Pongg-v5'; supported: ALE/Pong-v5, ALE/Breakout-v5"):
        resolve_env_id("Pongg-v5")
    assert resolve_env_id("LunarLander-v2") == "LunarLander-v3"


def test_preprocess_frame_crops_then_resizes():
    image = np.zeros((210, 160, 3), np.uint8)
    image[:34] = 255  # a bright score bar that the crop must remove
    frame = preprocess_frame(image, 64, crop_top=34, crop_bottom=16)
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8 and frame.max() == 0
    assert preprocess_frame(image, 64).max() == 255


@pytest.mark.parametrize("policy", ["uniform", "repeat"])
def test_random_agent_is_a_function_of_its_seed(policy):
    space = gym.spaces.Discrete(6)
    agent = RandomAgent(space, policy, repeat_min=3, repeat_max=3)
    agent.reset(7)
    first = [agent.act(None) for _ in range(30)]
    agent.reset(7)
    assert [agent.act(None) for _ in range(30)] == first
    if policy == "repeat":  # held for exactly 3 steps
        assert all(first[i] == first[i - i % 3] for i in range(30))


def test_random_walk_is_smooth_and_inside_the_bounds():
    space = gym.spaces.Box(np.array([-1, 0, 0], np.float32), np.ones(3, np.float32))
    agent = RandomAgent(space, "random_walk", walk_sigma=0.1)
    agent.reset(0)
    actions = np.array([agent.act(None) for _ in range(500)])
    assert np.all(actions >= space.low) and np.all(actions <= space.high)
    assert np.abs(np.diff(actions, axis=0)).max() < 0.6  # steps are small, unlike uniform noise
    with pytest.raises(WorldModelsError, match="random_walk needs a continuous"):
        RandomAgent(gym.spaces.Discrete(4), "random_walk")


def test_action_vectors_round_trip():
    discrete = gym.spaces.Discrete(4)
    assert action_to_vector(2, discrete).tolist() == [0, 0, 1, 0] and vector_to_action(action_to_vector(2, discrete), discrete) == 2
    box = gym.spaces.Box(-1, 1, (3,), np.float32)
    assert np.array_equal(vector_to_action(action_to_vector(np.array([0.5, -1, 0]), box), box), [0.5, -1, 0])


class AlwaysNoop:
    def reset(self, seed=None):
        pass

    def act(self, observation):
        return 0  # NOOP: never serves by itself


@pytest.mark.parametrize("serves", [True, False])
def test_fire_to_serve_presses_fire_at_the_start_and_after_each_lost_life(serves):
    """Breakout stands still until the player serves. With `env.fire_to_serve` a NOOP agent loses its 5
    lives: FIRE is played twice at the start and twice after each of the first 4 losses (10 in all), and
    recorded as played. Without it the ball is never served: no life lost until the step cap."""
    cfg = EnvConfig(env_id="ALE/Breakout-v5", max_episode_steps=3000, fire_to_serve=serves, crop_top=32, crop_bottom=14)
    env = make_frame_env(cfg)
    episode = run_episode(env, AlwaysNoop(), seed=0)
    env.close()
    fires = int(episode.actions[:, 1].sum())  # Breakout's actions: NOOP, FIRE, RIGHT, LEFT
    if serves:
        assert episode.terminated[-1] and episode.length < 3000 and fires == 10 and episode.actions[:2, 1].all()
    else:
        assert not episode.terminated[-1] and episode.length == 3000 and fires == 0


def test_fire_to_serve_outside_atari_is_refused():
    with pytest.raises(WorldModelsError, match="env.fire_to_serve=true .* LunarLander-v3 is not an ALE/ game"):
        get_config("LunarLander-v3", overrides=["env.fire_to_serve=true"])
