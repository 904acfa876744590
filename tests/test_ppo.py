"""PPO baseline: GAE, the clipped objective, episode boundaries, checkpoints, the agent, and learning."""

from __future__ import annotations

import itertools
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from config import Config, get_config
from models.ppo_agent import PPOAgent, build_policy
from models.ppo_policy import ActorCritic, ppo_loss
from training.ppo_baseline import evaluate_ppo, ppo_torch_threads, train_ppo
from training.ppo_envs import (ALE_V5_FRAMESKIP, EpisodicLife, env_steps_per_ppo_step, make_ppo_env, make_ppo_eval_env,
                               make_vector_env)
from training.ppo_rollout import Rollout, collect_rollout, compute_gae
from utils.errors import WorldModelsError
from utils.files import checkpoint_path, load_checkpoint
from utils.runtime import torch_threads

COUNTER_ENV = "PPOTestCounter-v0"
COUNTER_LIMIT = 5  # TimeLimit truncates every episode after this many steps...
COUNTER_TERMINAL = 3  # ...unless it is an odd-numbered one, which terminates after this many


class CounterEnv(gym.Env):
    """observation = [episode id, steps taken]; ids are unique across every instance in the process."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)
    _ids = itertools.count(1)

    def __init__(self, render_mode=None):
        self.render_mode = render_mode

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode, self.t = next(self._ids), 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        terminated = self.episode % 2 == 1 and self.t == COUNTER_TERMINAL
        return self._obs(), 1.0, terminated, False, {}

    def _obs(self) -> np.ndarray:
        return np.array([self.episode, self.t], dtype=np.float32)


if COUNTER_ENV not in gym.registry:
    gym.register(COUNTER_ENV, entry_point=CounterEnv, max_episode_steps=COUNTER_LIMIT)


def tiny_config(tmp_path: Path, env_id: str = "CartPole-v1", *overrides: str) -> Config:
    return get_config(env_id, preset="smoke", overrides=[
        f"experiment.checkpoint_dir={tmp_path / 'checkpoints'}", f"experiment.log_dir={tmp_path / 'logs'}",
        "experiment.device=cpu", "ppo.num_envs=2", "ppo.num_steps=64", "ppo.num_minibatches=2",
        "ppo.update_epochs=2", "ppo.checkpoint_every=1", *overrides,
    ])


# ------------------------------------------------------------------------------------------ GAE
def test_gae_matches_hand_computation_across_termination_and_truncation():
    # One env, four steps: step 1 terminates, step 2 is truncated (its final observation is worth 5.0),
    # step 3 is cut by the rollout's end (the next observation is worth 0.9).
    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    values = torch.tensor([[0.5], [0.6], [0.7], [0.8]])
    next_values = torch.tensor([[0.6], [123.0], [5.0], [0.9]])  # 123: must be ignored (terminated)
    terminated = torch.tensor([[False], [True], [False], [False]])
    ends = torch.tensor([[False], [True], [True], [False]])
    advantages, returns = compute_gae(rewards, values, next_values, terminated, ends, gamma, lam)
    delta3 = 4 + 0.9 * 0.9 - 0.8  # bootstraps past the rollout's end
    delta2 = 3 + 0.9 * 5.0 - 0.7  # truncation: bootstraps V(final_obs), takes nothing from step 3
    delta1 = 2 - 0.6  # termination: no bootstrap
    delta0 = 1 + 0.9 * 0.6 - 0.5
    expected = torch.tensor([[delta0 + gamma * lam * delta1], [delta1], [delta2], [delta3]])
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, expected + values)


# ------------------------------------------------------------------------------- clipped objective
def _policy_gradient(ratio: float, advantage: float, clip: float = 0.2) -> float:
    new_logprob = torch.tensor([np.log(ratio)], requires_grad=True, dtype=torch.float32)
    zero = torch.zeros(1)
    loss, _ = ppo_loss(new_logprob, zero, torch.tensor([advantage]), zero, zero, zero, zero,
                       clip_coef=clip, clip_vloss=False, ent_coef=0.0, vf_coef=0.0, normalize_advantages=False)
    loss.backward()
    return float(new_logprob.grad)


@pytest.mark.parametrize("ratio,advantage", [(1.5, 1.0), (1.21, 2.0), (0.5, -1.0), (0.79, -3.0)])
def test_clipped_surrogate_has_no_gradient_beyond_the_clip_in_the_advantage_direction(ratio, advantage):
    assert _policy_gradient(ratio, advantage) == 0.0


@pytest.mark.parametrize("ratio,advantage", [(1.0, 1.0), (1.1, -1.0), (0.9, 1.0), (1.5, -1.0), (0.5, 1.0)])
def test_clipped_surrogate_keeps_its_gradient_inside_the_clip_or_against_the_advantage(ratio, advantage):
    # d(-r A)/d(log r) = -r A
    assert _policy_gradient(ratio, advantage) == pytest.approx(-ratio * advantage, rel=1e-5)


def test_clipped_value_loss_stops_the_gradient_once_the_value_moved_past_the_clip():
    def value_gradient(new: float) -> float:
        new_value = torch.tensor([new], requires_grad=True)
        zero = torch.zeros(1)
        loss, _ = ppo_loss(zero, zero, zero, new_value, torch.tensor([0.0]), torch.tensor([10.0]), zero,
                           clip_coef=0.2, clip_vloss=True, ent_coef=0.0, vf_coef=1.0)
        loss.backward()
        return float(new_value.grad)

    assert value_gradient(0.1) != 0.0  # inside the clip range
    assert value_gradient(0.5) == 0.0  # moved 0.5 > 0.2 towards the return: clipped, no gradient


def test_channels_last_trunk_computes_what_the_nchw_trunk_computes():
    """The NHWC layout is a speed choice only: the same weights (loaded across layouts) give the same outputs
    and gradients."""
    torch.manual_seed(0)
    nhwc, nchw = ActorCritic((4, 84, 84), 6, False), ActorCritic((4, 84, 84), 6, False, channels_last=False)
    nchw.load_state_dict(nhwc.state_dict())
    assert nhwc.trunk[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert nchw.trunk[0][0].weight.is_contiguous()
    frames = torch.randint(0, 256, (5, 4, 84, 84), dtype=torch.uint8)
    actions = torch.arange(5)
    outputs = [net.get_action_and_value(frames, actions) for net in (nhwc, nchw)]
    for ours, reference in zip(*outputs):
        torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)
    for net, (_, logprob, _, value) in zip((nhwc, nchw), outputs):
        (logprob.sum() + value.sum()).backward()
    torch.testing.assert_close(nhwc.trunk[0][0].weight.grad, nchw.trunk[0][0].weight.grad, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- episode boundaries
def test_rollout_never_pairs_an_observation_with_the_next_episode(tmp_path):
    # One minibatch: get_config requires ppo.num_minibatches to divide the 3 x 23 batch (no update runs here).
    cfg = tiny_config(tmp_path, COUNTER_ENV, "ppo.num_envs=3", "ppo.num_steps=23", "ppo.num_minibatches=1")
    envs = make_vector_env(cfg, "sync")
    policy = build_policy(cfg, envs.single_observation_space, envs.single_action_space)
    rollout = Rollout.allocate(cfg.ppo.num_steps, cfg.ppo.num_envs, policy, torch.device("cpu"))
    obs, _ = envs.reset(seed=0)
    next_obs, episodes = collect_rollout(policy, envs, rollout, torch.as_tensor(obs))
    envs.close()

    observations = rollout.observations.numpy()
    @torch.no_grad()
    def value_of(observation: np.ndarray) -> float:
        return float(policy.get_value(torch.as_tensor(np.asarray(observation, np.float32))[None])[0])

    boundaries = {"terminated": 0, "truncated": 0}
    for t in range(cfg.ppo.num_steps):
        for i in range(cfg.ppo.num_envs):
            episode, taken = observations[t, i]
            reached = np.array([episode, taken + 1])  # the state this step really led to
            successor = observations[t + 1, i] if t + 1 < cfg.ppo.num_steps else next_obs[i].numpy()
            if rollout.episode_ends[t, i]:
                assert successor[0] != episode and successor[1] == 0, "the next row starts a new episode"
                if rollout.terminated[t, i]:
                    assert episode % 2 == 1 and taken + 1 == COUNTER_TERMINAL
                    assert rollout.next_values[t, i] == 0.0
                    boundaries["terminated"] += 1
                else:
                    assert taken + 1 == COUNTER_LIMIT
                    # truncation bootstraps from the ended episode's final observation
                    assert rollout.next_values[t, i].item() == pytest.approx(value_of(reached), abs=1e-6)
                    boundaries["truncated"] += 1
            else:
                np.testing.assert_array_equal(successor, reached)
                assert rollout.next_values[t, i].item() == pytest.approx(value_of(successor), abs=1e-6)
    assert boundaries["terminated"] > 0 and boundaries["truncated"] > 0
    assert sorted({length for _, _, length in episodes}) == [COUNTER_TERMINAL, COUNTER_LIMIT]
    assert len(episodes) == boundaries["terminated"] + boundaries["truncated"]


# ---------------------------------------------------------------------------------- Atari wrappers
def test_atari_envs_stack_84x84_frames_and_clip_rewards_only_for_training(tmp_path):
    cfg = tiny_config(tmp_path, "ALE/Pong-v5")
    train_env, eval_env = make_ppo_env(cfg, training=True), make_ppo_eval_env(cfg, seed=0)
    for env in (train_env, eval_env):
        assert env.observation_space.shape == (4, 84, 84) and env.observation_space.dtype == np.uint8
        assert env.unwrapped._frameskip == 1  # AtariPreprocessing does the skipping, not ALE v5
    layers = lambda env: {type(layer).__name__ for layer in _wrapper_chain(env)}
    assert {"EpisodicLife", "TransformReward", "FireReset"} <= layers(train_env)
    assert not {"EpisodicLife", "TransformReward"} & layers(eval_env)
    assert isinstance(next(w for w in _wrapper_chain(train_env) if isinstance(w, EpisodicLife)), EpisodicLife)


@pytest.mark.parametrize("env_id, overrides, cap, ppo_steps", [
    ("ALE/Pong-v5", (), 30, 30),  # ALE v5's step and PPO's are both 4 frames
    ("ALE/Pong-v5", ("ppo.frame_skip=2",), 30, 60),
    ("LunarLander-v3", ("ppo.observation=pixels", "ppo.frame_skip=4"), 30, 8),  # 4 Box2D steps a PPO step
    ("LunarLander-v3", (), 30, 30),  # state: one step each
    ("MountainCar-v0", (), 250, 250),  # longer than its registered 200: the command's cap wins, as for World Models
])
def test_evaluation_caps_ppo_at_the_env_steps_every_method_plays(tmp_path, env_id, overrides, cap, ppo_steps):
    env = make_ppo_eval_env(tiny_config(tmp_path, env_id, *overrides), max_episode_steps=cap)
    env.reset(seed=0)
    for step in itertools.count(1):
        _, _, terminated, truncated, _ = env.step(0)  # NOOP / push left: survives the cap in every case
        if terminated or truncated:
            break
    assert (step, terminated, truncated) == (ppo_steps, False, True)


@pytest.mark.parametrize("env_id, overrides", [
    ("ALE/Pong-v5", ()),
    ("ALE/Pong-v5", ("ppo.frame_skip=2",)),
    ("LunarLander-v3", ("ppo.observation=pixels", "ppo.frame_skip=4")),
    ("LunarLander-v3", ()),
])
def test_env_steps_per_ppo_step_counts_the_steps_every_other_method_plays(tmp_path, env_id, overrides):
    """The compare plot's x axis for PPO: base-env steps a PPO step takes, in the env's own steps (ALE v5's
    step is 4 frames; PPO's Atari env is made with frameskip 1 and skips frames itself)."""
    cfg = tiny_config(tmp_path, env_id, *overrides)
    env = make_ppo_eval_env(cfg)
    env.reset(seed=0)
    base, calls = env.unwrapped, []
    base_step = base.step
    base.step = lambda action: calls.append(1) or base_step(action)
    for _ in range(5):
        env.step(0)  # NOOP / do nothing: no episode ends within 5 steps
    per_ppo_step = len(calls) / 5 / (ALE_V5_FRAMESKIP if env_id.startswith("ALE/") else 1)
    assert env_steps_per_ppo_step(cfg) == per_ppo_step


def test_whole_game_evaluation_serves_after_a_lost_life(tmp_path):
    """A policy that never presses FIRE still loses its 5 Breakout lives quickly, instead of standing
    still after the first one until the 27,000-step time limit."""
    env = make_ppo_eval_env(tiny_config(tmp_path, "ALE/Breakout-v5"), seed=0)
    env.reset(seed=0)
    for step in itertools.count(1):
        _, _, terminated, truncated, _ = env.step(0)  # NOOP forever
        if terminated or truncated:
            break
    assert terminated and step < 3000 and env.unwrapped.ale.lives() == 0
    env.close()


def _wrapper_chain(env: gym.Env) -> list[gym.Env]:
    chain = [env]
    while hasattr(chain[-1], "env"):
        chain.append(chain[-1].env)
    return chain


# ------------------------------------------------------------------------- checkpoints and agent
def test_resume_continues_with_the_saved_step_and_optimizer_state(tmp_path, capsys):
    cfg = tiny_config(tmp_path, "CartPole-v1", "ppo.total_timesteps=256", "ppo.normalize_observation=true")
    path = train_ppo(cfg)
    assert path == checkpoint_path(cfg, "ppo")
    first = load_checkpoint(path, "ppo", "CartPole-v1")
    updates_per_iteration = cfg.ppo.update_epochs * cfg.ppo.num_minibatches
    assert (first["global_step"], first["iteration"]) == (256, 2)
    assert int(first["optimizer"]["state"][0]["step"]) == 2 * updates_per_iteration

    cfg.ppo.total_timesteps = 384
    train_ppo(cfg)
    second = load_checkpoint(path, "ppo", "CartPole-v1")
    assert (second["global_step"], second["iteration"]) == (384, 3)
    # a fresh optimizer would have counted only this run's updates
    assert int(second["optimizer"]["state"][0]["step"]) == 3 * updates_per_iteration
    assert second["model"]["obs_rms.count"] > first["model"]["obs_rms.count"]

    capsys.readouterr()
    train_ppo(cfg)
    assert "nothing to do" in capsys.readouterr().out


def test_training_restores_the_callers_torch_thread_count(tmp_path):
    cfg = tiny_config(tmp_path, "CartPole-v1", "ppo.total_timesteps=128")
    with torch_threads(3):
        before = torch.get_num_threads()
        assert ppo_torch_threads(cfg) != before  # training really runs on another count (1 for a state env)
        train_ppo(cfg)
        assert torch.get_num_threads() == before


def test_agent_round_trip_on_the_eval_env_uses_the_saved_normalisation(tmp_path):
    cfg = tiny_config(tmp_path, "CartPole-v1", "ppo.total_timesteps=128", "ppo.normalize_observation=true")
    train_ppo(cfg)
    agent = PPOAgent.from_checkpoint(cfg, "cpu")
    env = make_ppo_eval_env(cfg)
    agent.reset(seed=3)
    obs, _ = env.reset(seed=3)
    action = agent.act(obs)
    assert isinstance(action, int) and env.action_space.contains(action)

    checkpoint = load_checkpoint(checkpoint_path(cfg, "ppo"), "ppo")
    policy = ActorCritic((4,), 2, continuous=False, normalize_observation=True)
    policy.load_state_dict(checkpoint["model"])
    assert float(policy.obs_rms.count) > 1.0  # the statistics came from training, not the init
    normalized = (torch.as_tensor(obs, dtype=torch.float64) - policy.obs_rms.mean) / torch.sqrt(policy.obs_rms.var + 1e-8)
    expected = int(policy.deterministic_action(normalized.float()[None])[0])
    assert action == expected
    for _ in range(10):  # stateless and deterministic: the same observation, the same action
        assert agent.act(obs) == action
    with pytest.raises(WorldModelsError, match="make_ppo_eval_env"):
        agent.act(np.zeros(3, np.float32))
    env.close()


# ------------------------------------------------------------------------------------------ learning
@pytest.mark.slow
def test_cartpole_is_solved_within_60k_steps(tmp_path):
    # rl-zoo's tuned CartPole values: small rollouts, many epochs over one minibatch, short horizon.
    cfg = get_config("CartPole-v1", overrides=[
        f"experiment.checkpoint_dir={tmp_path / 'checkpoints'}", f"experiment.log_dir={tmp_path / 'logs'}",
        "experiment.device=cpu", "ppo.total_timesteps=60000", "ppo.num_envs=8", "ppo.num_steps=32",
        "ppo.num_minibatches=1", "ppo.update_epochs=20", "ppo.learning_rate=1e-3", "ppo.gamma=0.98",
        "ppo.gae_lambda=0.8", "ppo.clip_coef=0.2", "ppo.clip_vloss=false", "ppo.ent_coef=0.0",
        "ppo.checkpoint_every=1000",
    ])
    train_ppo(cfg)
    returns = evaluate_ppo(cfg, episodes=10)
    assert returns.mean() >= 195, f"CartPole eval returns {returns}"
