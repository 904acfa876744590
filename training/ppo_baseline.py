"""The PPO baseline: a model-free reference for the World Models agent.

    python -m training.ppo_baseline --env LunarLander-v3 --experiment ppo-lunar --eval-episodes 100
    python -m training.ppo_baseline --env ALE/Pong-v5 --preset smoke

Every hyperparameter is a field of `PPOConfig` (config.py), tuned per environment there. The loop is
CleanRL's `ppo.py` / `ppo_atari.py` / `ppo_continuous_action.py` restated on Gymnasium 1.x:

* Vector envs use `AutoresetMode.SAME_STEP`: a sub-env that ends an episode is reset inside the same
  `step()`, whose observation is already the next episode's first one, and the last observation of the
  ended episode comes in `infos["final_obs"]`. So every stored transition is a real one (no reset rows
  to mask), and a truncated episode bootstraps from V(final_obs), a terminated one from 0.
* Atari: the env is made with `frameskip=1` (ALE v5 would skip 4 frames itself), then
  AtariPreprocessing (30 no-op reset, max-pooled frame skip, 84x84 grayscale), and for training an
  episodic-life wrapper, fire-on-reset and sign-clipped rewards. Logged returns are whole games before
  clipping: `RecordEpisodeStatistics` sits below the training-only wrappers.
* Frame stacking lives in the env (`FrameStackObservation`), so `PPOAgent` is stateless.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import deque
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Optional, Union

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv
from gymnasium.wrappers import (
    AddRenderObservation,
    AtariPreprocessing,
    FrameStackObservation,
    GrayscaleObservation,
    RecordEpisodeStatistics,
    RepeatAction,
    ReshapeObservation,
    ResizeObservation,
    TransformObservation,
    TransformReward,
)
from tqdm import tqdm

from config import Config
from models.ppo_policy import ActorCritic, RunningMeanStd, ppo_loss
from training.train_utils import add_common_args, config_from_args, run_cli
from utils.files import checkpoint_config, checkpoint_path, load_checkpoint, make_writer, require_match, save_checkpoint
from utils.runtime import episode_seeds, resolve_device, seed_everything
from utils.environment import has_image_observation, is_atari, make_env, parse_env_kwargs, resolve_env_id, run_episode
from utils.errors import WorldModelsError

OBSERVATIONS = ("auto", "state", "pixels")
VECTOR_ENVS = ("auto", "sync", "async")
# torch's own choice, before any run narrows it for a state env.
DEFAULT_TORCH_THREADS = torch.get_num_threads()


# ------------------------------------------------------------------------------------------ wrappers
class EpisodicLife(gym.Wrapper):
    """Training only: a lost life ends the episode for the learner, but the game goes on.

    The next `reset()` then continues the same game with a no-op step instead of restarting it
    (Mnih et al. 2015); the real reset happens only when the game is over. Gymnasium's
    `AtariPreprocessing(terminal_on_life_loss=True)` would end the whole game instead.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.lives = 0
        self.game_over = True

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        self.game_over = terminated or truncated
        lives = self.env.unwrapped.ale.lives()
        if 0 < lives < self.lives:
            terminated = True
        self.lives = lives
        return observation, reward, terminated, truncated, info

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        if self.game_over:
            observation, info = self.env.reset(**kwargs)
        else:
            observation, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                observation, info = self.env.reset(**kwargs)
        self.lives = self.env.unwrapped.ale.lives()
        return observation, info


class FireReset(gym.Wrapper):
    """Press FIRE after every reset: games such as Breakout stand still until the player serves."""

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        self.env.reset(**kwargs)
        for action in (1, 2):
            observation, _, terminated, truncated, info = self.env.step(action)
            if terminated or truncated:
                observation, info = self.env.reset(**kwargs)
        return observation, info


class FireOnLifeLoss(gym.Wrapper):
    """Evaluation only: press FIRE after a lost life. In training a lost life ends the learner's episode
    and `FireReset` serves; in a whole-game evaluation nothing would, and a deterministic policy that
    never learned to press FIRE would stand still until the time limit (27,000 steps in Breakout)."""

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        observation, info = self.env.reset(**kwargs)
        self.lives = self.env.unwrapped.ale.lives()
        return observation, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        lives = self.env.unwrapped.ale.lives()
        if 0 < lives < self.lives and not (terminated or truncated):
            observation, serve_reward, terminated, truncated, info = self.env.step(1)
            reward += serve_reward
        self.lives = lives
        return observation, reward, terminated, truncated, info


# ------------------------------------------------------------------------------------- environments
@lru_cache(maxsize=None)
def is_image_env(env_id: str) -> bool:
    """Whether the env's own observation is an RGB image (Atari, CarRacing) rather than a state vector."""
    if is_atari(env_id):
        return True
    probe = gym.make(env_id)
    image = has_image_observation(probe.observation_space)
    probe.close()
    return image


def resolve_observation(cfg: Config) -> str:
    """`ppo.observation` with `auto` decided: Atari and image envs -> pixels, the others -> state."""
    choice = cfg.ppo.observation
    if choice not in OBSERVATIONS:
        raise WorldModelsError(f"unknown ppo.observation {choice!r}; valid: {', '.join(OBSERVATIONS)}")
    env_id = resolve_env_id(cfg.env.env_id)
    image_env = is_image_env(env_id)
    if choice == "auto":
        return "pixels" if image_env else "state"
    if choice == "state" and image_env:
        raise WorldModelsError(f"{env_id} has only image observations; use ppo.observation=pixels or auto")
    return choice


def make_ppo_env(cfg: Config, training: bool, render_mode: Optional[str] = None) -> gym.Env:
    """One env as PPO sees it. Observations: `(frame_stack * C, S, S)` uint8 for pixels (C = 1
    grayscale, 3 colour), the env's own `(D,)` vector for state. `training` adds the wrappers that
    change the task the learner optimises (episodic life, reward sign clipping), never used at evaluation.
    """
    env_id = resolve_env_id(cfg.env.env_id)
    ppo = cfg.ppo
    kwargs = parse_env_kwargs(cfg.env.env_kwargs)
    if resolve_observation(cfg) == "state":
        return RecordEpisodeStatistics(make_env(env_id, render_mode=render_mode, **kwargs))
    if is_atari(env_id):
        env = make_env(env_id, render_mode=render_mode, frameskip=1, **kwargs)
        env = AtariPreprocessing(env, noop_max=30, frame_skip=ppo.frame_skip, screen_size=ppo.frame_size,
                                 terminal_on_life_loss=False, grayscale_obs=ppo.grayscale)
        env = RecordEpisodeStatistics(env)
        if training:
            env = EpisodicLife(env)
        if "FIRE" in env.unwrapped.get_action_meanings():
            env = FireReset(env if training else FireOnLifeLoss(env))
        if training:
            env = TransformReward(env, lambda reward: float(np.sign(reward)))
    else:
        renders = not is_image_env(env_id)
        env = make_env(env_id, render_mode="rgb_array" if renders else render_mode, **kwargs)
        if ppo.frame_skip > 1:
            env = RepeatAction(env, ppo.frame_skip)
        if renders:
            env = AddRenderObservation(env, render_only=True)
        if ppo.grayscale:
            env = GrayscaleObservation(env)
        env = ResizeObservation(env, (ppo.frame_size, ppo.frame_size))
        env = RecordEpisodeStatistics(env)
    if not ppo.grayscale:
        height, width, channels = env.observation_space.shape
        env = TransformObservation(env, lambda frame: np.moveaxis(frame, -1, 0),
                                   gym.spaces.Box(0, 255, (channels, height, width), np.uint8))
    env = FrameStackObservation(env, ppo.frame_stack)
    if not ppo.grayscale:
        stack, channels, height, width = env.observation_space.shape
        env = ReshapeObservation(env, (stack * channels, height, width))
    return env


def make_ppo_eval_env(cfg: Config, seed: Optional[int] = None, render_mode: Optional[str] = None) -> gym.Env:
    """A single env with training's observation pipeline minus the training-only wrappers; rewards
    are the true ones and an Atari episode is a whole game. `seed` seeds its first reset."""
    env = make_ppo_env(cfg, training=False, render_mode=render_mode)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def choose_vector_env(cfg: Config) -> str:
    """`ppo.vector_env` with `auto` decided. Worker processes pay only where a step costs more than the
    inter-process round trip (pixel envs, not LunarLander's ~50 us Box2D step) and where spare cores
    exist: on 2 cores they fight the CNN update for the CPU and halve Pong's PPO SPS (benchmarks/ppo.py)."""
    choice = cfg.ppo.vector_env
    if choice not in VECTOR_ENVS:
        raise WorldModelsError(f"unknown ppo.vector_env {choice!r}; valid: {', '.join(VECTOR_ENVS)}")
    if choice == "auto":
        pays = resolve_observation(cfg) == "pixels" and cfg.ppo.num_envs > 1 and (os.cpu_count() or 1) >= 4
        return "async" if pays else "sync"
    return choice


def torch_threads(cfg: Config) -> int:
    """`ppo.torch_threads` with 0 decided: one thread for state observations, whose 64-unit MLP only
    loses to thread synchronisation, torch's default for the CNN."""
    if cfg.ppo.torch_threads > 0:
        return cfg.ppo.torch_threads
    return 1 if resolve_observation(cfg) == "state" else DEFAULT_TORCH_THREADS


def make_vector_env(cfg: Config, kind: Optional[str] = None) -> VectorEnv:
    """`cfg.ppo.num_envs` training envs, autoreset in the same step (see the module docstring)."""
    kind = kind or choose_vector_env(cfg)
    thunks = [partial(make_ppo_env, cfg, True) for _ in range(cfg.ppo.num_envs)]
    vector_class = AsyncVectorEnv if kind == "async" else SyncVectorEnv
    return vector_class(thunks, autoreset_mode=AutoresetMode.SAME_STEP)


def build_policy(cfg: Config, observation_space: gym.Space, action_space: gym.Space) -> ActorCritic:
    """The ActorCritic for these spaces; unsupported spaces fail with what would be valid."""
    if isinstance(action_space, gym.spaces.Discrete):
        action_dim, continuous = int(action_space.n), False
    elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        action_dim, continuous = int(action_space.shape[0]), True
    else:
        raise WorldModelsError(f"PPO supports Discrete and 1-D Box action spaces, not {action_space}")
    if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) not in (1, 3):
        raise WorldModelsError(f"PPO supports (D,) state or (C, H, W) frame observations, not {observation_space}")
    return ActorCritic(observation_space.shape, action_dim, continuous, cfg.ppo.normalize_observation)


# --------------------------------------------------------------------------------------- algorithm
@dataclass
class Rollout:
    """One rollout of `T` steps from `N` envs; every field is `(T, N, ...)` on the training device.

    Row t holds the observation the action was chosen from, and what that action led to:
    `next_values[t]` is V of the state it reached (V(final_obs) when the episode was truncated there;
    unused when it terminated), so no row ever pairs an observation with the next episode's first one.
    """

    observations: torch.Tensor  # (T, N, *obs_shape) uint8 frames or normalised float32 states
    actions: torch.Tensor  # (T, N) long, or (T, N, A) float32 unclipped Gaussian samples
    logprobs: torch.Tensor  # (T, N)
    rewards: torch.Tensor  # (T, N), after reward normalisation if on
    values: torch.Tensor  # (T, N) V(observations)
    next_values: torch.Tensor  # (T, N)
    terminated: torch.Tensor  # (T, N) bool
    episode_ends: torch.Tensor  # (T, N) bool: terminated or truncated

    @classmethod
    def allocate(cls, steps: int, num_envs: int, policy: ActorCritic, device: torch.device) -> "Rollout":
        def zeros(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.zeros((steps, num_envs, *shape), dtype=dtype, device=device)

        return cls(
            observations=zeros(*policy.observation_shape, dtype=torch.uint8 if policy.pixels else torch.float32),
            actions=zeros(policy.action_dim) if policy.continuous else zeros(dtype=torch.long),
            logprobs=zeros(), rewards=zeros(), values=zeros(), next_values=zeros(),
            terminated=zeros(dtype=torch.bool), episode_ends=zeros(dtype=torch.bool),
        )


@torch.no_grad()
def collect_rollout(
    policy: ActorCritic,
    envs: VectorEnv,
    rollout: Rollout,
    next_obs: torch.Tensor,
    reward_normalizer: Optional[RewardNormalizer] = None,
) -> tuple[torch.Tensor, list[tuple[int, float, int]]]:
    """Fill `rollout` by stepping `envs` (made with `AutoresetMode.SAME_STEP`) from `next_obs`, the
    preprocessed `(N, *obs_shape)` current observations.

    Returns the observations to continue from and the finished episodes as
    `(step index, true return, length)`, read from `RecordEpisodeStatistics` in `final_info`.
    """
    device = next_obs.device
    space = envs.single_action_space
    bounds = (torch.as_tensor(space.low, device=device), torch.as_tensor(space.high, device=device)) \
        if policy.continuous else None
    episodes: list[tuple[int, float, int]] = []
    for step in range(rollout.rewards.shape[0]):
        rollout.observations[step] = next_obs
        action, logprob, _, value = policy.get_action_and_value(next_obs)
        rollout.actions[step], rollout.logprobs[step], rollout.values[step] = action, logprob, value
        if step > 0:
            _fill_successor_values(rollout, step - 1, value)
        # The Gaussian's unclipped sample is what was scored; only the env sees the clipped one.
        env_action = torch.clamp(action, *bounds) if bounds else action
        next_obs_raw, reward, terminated, truncated, infos = envs.step(env_action.cpu().numpy())
        episode_ends = np.logical_or(terminated, truncated)
        if reward_normalizer is not None:
            reward = reward_normalizer(reward, episode_ends)
        rollout.rewards[step] = torch.as_tensor(reward, dtype=torch.float32, device=device)
        rollout.terminated[step] = torch.as_tensor(terminated, device=device)
        rollout.episode_ends[step] = torch.as_tensor(episode_ends, device=device)
        next_obs = policy.preprocess(_torch_obs(next_obs_raw, device), update_stats=True)
        # A terminated step bootstraps from nothing; a truncated one from its episode's final observation.
        rollout.next_values[step] = 0.0
        truncated_only = np.flatnonzero(truncated & ~terminated)
        if truncated_only.size:
            final_obs = np.stack([infos["final_obs"][i] for i in truncated_only])
            final_values = policy.get_value(policy.preprocess(_torch_obs(final_obs, device)))
            rollout.next_values[step, torch.as_tensor(truncated_only, device=device)] = final_values
        if episode_ends.any():
            final_info = infos.get("final_info", {})
            for i in np.flatnonzero(final_info.get("_episode", [])):
                episodes.append((step, float(final_info["episode"]["r"][i]), int(final_info["episode"]["l"][i])))
    _fill_successor_values(rollout, rollout.rewards.shape[0] - 1, policy.get_value(next_obs))
    return next_obs, episodes


def _fill_successor_values(rollout: Rollout, step: int, values: torch.Tensor) -> None:
    """For the envs whose episode went on after `step`, its successor is the next observation,
    valued `values` `(N,)`; the envs that ended there keep the value set from `final_obs` (or 0)."""
    rollout.next_values[step] = torch.where(rollout.episode_ends[step], rollout.next_values[step], values)


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    episode_ends: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over a rollout; all inputs `(T, N)`.

    `next_values[t]` is V of the state reached by step t: the next stored observation, or the ended
    episode's final observation. `terminated[t]` zeroes that bootstrap (a true end); `episode_ends[t]`
    (terminated or truncated) stops the advantage from flowing back across the boundary. A truncated
    step therefore bootstraps from V(final_obs) but takes nothing from the next episode.

    Returns advantages `(T, N)` and returns = advantages + values `(T, N)`.
    """
    not_terminated = 1.0 - terminated.float()
    continues = 1.0 - episode_ends.float()
    deltas = rewards + gamma * next_values * not_terminated - values
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        running = deltas[t] + gamma * gae_lambda * continues[t] * running
        advantages[t] = running
    return advantages, advantages + values


class RewardNormalizer:
    """Scale rewards by the running std of the discounted return, per env (Huang et al. detail 5 of
    continuous control; Gymnasium's NormalizeReward). Training-only; its statistics go in the checkpoint
    so a resumed run scales rewards as before."""

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0):
        self.gamma, self.clip = gamma, clip
        self.return_rms = RunningMeanStd(())
        self.discounted_returns = np.zeros(num_envs, dtype=np.float64)

    def __call__(self, rewards: np.ndarray, episode_ends: np.ndarray) -> np.ndarray:
        """rewards, episode_ends: `(N,)` -> scaled rewards `(N,)` float32."""
        self.discounted_returns = self.discounted_returns * self.gamma + rewards
        self.return_rms.update(torch.as_tensor(self.discounted_returns))
        self.discounted_returns[episode_ends] = 0.0
        scale = float(torch.sqrt(self.return_rms.var + self.return_rms.epsilon))
        return np.clip(rewards / scale, -self.clip, self.clip).astype(np.float32)


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var(target - predicted) / Var(target): 1 is a perfect critic, <= 0 no better than a constant."""
    target_var = target.var()
    return float("nan") if target_var == 0 else float(1 - (target - predicted).var() / target_var)


def _validate(cfg: Config) -> None:
    ppo = cfg.ppo
    batch_size = ppo.num_envs * ppo.num_steps
    if ppo.num_envs < 1 or ppo.num_steps < 1:
        raise WorldModelsError(f"need ppo.num_envs >= 1 and ppo.num_steps >= 1, got {ppo.num_envs}, {ppo.num_steps}")
    if ppo.num_minibatches < 1 or batch_size % ppo.num_minibatches:
        raise WorldModelsError(
            f"ppo.num_minibatches={ppo.num_minibatches} must divide the batch of "
            f"ppo.num_envs x ppo.num_steps = {batch_size}")
    if ppo.total_timesteps < batch_size:
        raise WorldModelsError(f"ppo.total_timesteps={ppo.total_timesteps} is less than one batch ({batch_size})")
    if ppo.checkpoint_every < 1:
        raise WorldModelsError(f"ppo.checkpoint_every must be >= 1, got {ppo.checkpoint_every}")


def _torch_obs(observation: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(observation), device=device)


def train_ppo(cfg: Config) -> Path:
    """Train (or resume) PPO on `cfg.env.env_id`; returns `checkpoints/<experiment>/ppo.pt`."""
    cfg.env.env_id = resolve_env_id(cfg.env.env_id)
    _validate(cfg)
    ppo = cfg.ppo
    observation_kind, vector_kind = resolve_observation(cfg), choose_vector_env(cfg)
    batch_size = ppo.num_envs * ppo.num_steps
    minibatch_size = batch_size // ppo.num_minibatches
    num_iterations = ppo.total_timesteps // batch_size
    path = checkpoint_path(cfg, "ppo")
    checkpoint = load_checkpoint(path, "ppo", cfg.env.env_id) if path.is_file() else None
    if checkpoint is not None and checkpoint["iteration"] >= num_iterations:
        print(f"ppo: {path} already holds {checkpoint['global_step']} steps "
              f"(ppo.total_timesteps={ppo.total_timesteps}); nothing to do")
        return path

    device = resolve_device(cfg.experiment.device)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(torch_threads(cfg))
    seed_everything(cfg.experiment.seed)
    envs = make_vector_env(cfg, vector_kind)
    observation_space, action_space = envs.single_observation_space, envs.single_action_space
    policy = build_policy(cfg, observation_space, action_space).to(device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=ppo.learning_rate, eps=1e-5)
    reward_normalizer = RewardNormalizer(ppo.num_envs, ppo.gamma) if ppo.normalize_reward else None
    global_step, iteration = 0, 0
    if checkpoint is not None:
        require_match("observation shape", tuple(checkpoint["observation_shape"]), observation_space.shape, path)
        policy.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        global_step, iteration = checkpoint["global_step"], checkpoint["iteration"]
        torch.set_rng_state(checkpoint["torch_rng_state"])
        if reward_normalizer is not None and "reward_rms" in checkpoint:
            reward_normalizer.return_rms.load_state_dict(checkpoint["reward_rms"])
    continuous = policy.continuous

    def save(metrics: dict[str, float]) -> None:
        payload: dict[str, Any] = dict(
            model=policy.state_dict(), optimizer=optimizer.state_dict(), global_step=global_step,
            iteration=iteration, observation=observation_kind, observation_shape=list(observation_space.shape),
            action_dim=policy.action_dim, continuous=continuous, torch_rng_state=torch.get_rng_state(),
            metrics=metrics,
        )
        if continuous:
            payload.update(action_low=torch.as_tensor(action_space.low), action_high=torch.as_tensor(action_space.high))
        if reward_normalizer is not None:
            payload["reward_rms"] = reward_normalizer.return_rms.state_dict()
        save_checkpoint(path, "ppo", cfg, **payload)

    rollout = Rollout.allocate(ppo.num_steps, ppo.num_envs, policy, device)
    writer = make_writer(cfg, "ppo")
    print(f"ppo: {cfg.env.env_id} ({observation_kind} observations {tuple(observation_space.shape)}, "
          f"{ppo.num_envs} {vector_kind} envs x {ppo.num_steps} steps, {num_iterations} iterations) on {device}"
          + (f"; resuming at step {global_step}" if global_step else ""))
    recent_returns: deque[float] = deque(maxlen=20)
    # A resumed run restarts its episodes; fresh seeds keep it from replaying the first run's ones.
    next_obs_raw, _ = envs.reset(seed=int(episode_seeds(cfg, "ppo", iteration * ppo.num_envs % 10**6, 1)[0]))
    next_obs = policy.preprocess(_torch_obs(next_obs_raw, device), update_stats=True)
    start_time, start_step = time.perf_counter(), global_step
    metrics: dict[str, float] = {}
    bar = tqdm(total=num_iterations * batch_size, initial=global_step, desc="ppo", unit="step", dynamic_ncols=True)
    try:
        while iteration < num_iterations:
            iteration += 1
            learning_rate = ppo.learning_rate * (1.0 - (iteration - 1) / num_iterations if ppo.anneal_lr else 1.0)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate

            next_obs, episodes = collect_rollout(policy, envs, rollout, next_obs, reward_normalizer)
            for step_index, episode_return, episode_length in episodes:
                recent_returns.append(episode_return)
                episode_step = global_step + (step_index + 1) * ppo.num_envs
                writer.add_scalar("charts/episodic_return", episode_return, episode_step)
                writer.add_scalar("charts/episodic_length", episode_length, episode_step)
            global_step += batch_size
            advantages, returns = compute_gae(rollout.rewards, rollout.values, rollout.next_values,
                                              rollout.terminated, rollout.episode_ends, ppo.gamma, ppo.gae_lambda)
            metrics = ppo_update(policy, optimizer, cfg, minibatch_size, rollout, advantages, returns)

            sps = (global_step - start_step) / (time.perf_counter() - start_time)
            for name, value in metrics.items():
                writer.add_scalar(f"losses/{name}", value, global_step)
            writer.add_scalar("charts/learning_rate", learning_rate, global_step)
            writer.add_scalar("charts/SPS", sps, global_step)
            if recent_returns:
                metrics["episodic_return_mean"] = float(np.mean(recent_returns))
            bar.update(batch_size)
            bar.set_postfix(ret=f"{np.mean(recent_returns):.1f}" if recent_returns else "-", sps=f"{sps:.0f}")
            if iteration % ppo.checkpoint_every == 0 or iteration == num_iterations:
                save(metrics)
    finally:
        bar.close()
        writer.close()
        envs.close()
        torch.set_num_threads(previous_threads)
    print(f"ppo: {global_step} steps done; checkpoint {path}")
    return path


def ppo_update(policy: ActorCritic, optimizer: torch.optim.Optimizer, cfg: Config, minibatch_size: int,
            rollout: Rollout, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:
    """`update_epochs` passes of shuffled minibatches over one rollout, flattened to `T*N` samples.

    Returns the losses averaged over minibatches, plus the explained variance of the rollout's values.
    """
    ppo = cfg.ppo
    observations = rollout.observations.flatten(0, 1)
    actions, old_logprobs = rollout.actions.flatten(0, 1), rollout.logprobs.flatten(0, 1)
    old_values, advantages, returns = rollout.values.flatten(0, 1), advantages.flatten(0, 1), returns.flatten(0, 1)
    batch_size = observations.shape[0]
    totals: dict[str, torch.Tensor] = {}
    count = 0
    for _ in range(ppo.update_epochs):
        order = torch.randperm(batch_size, device=observations.device)
        for start in range(0, batch_size, minibatch_size):
            index = order[start:start + minibatch_size]
            _, new_logprob, entropy, new_value = policy.get_action_and_value(observations[index], actions[index])
            loss, stats = ppo_loss(new_logprob, old_logprobs[index], advantages[index], new_value, old_values[index],
                                   returns[index], entropy, ppo.clip_coef, ppo.clip_vloss, ppo.ent_coef, ppo.vf_coef)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), ppo.max_grad_norm)
            optimizer.step()
            for name, value in stats.items():
                totals[name] = totals.get(name, 0.0) + value
            count += 1
        # Stop the epochs early once the policy has moved too far (Huang et al. 2022, detail 11 option).
        if ppo.target_kl > 0 and float(stats["approx_kl"]) > ppo.target_kl:
            break
    metrics = {name: float(total) / count for name, total in totals.items()}
    metrics["explained_variance"] = explained_variance(old_values, returns)
    return metrics


# ------------------------------------------------------------------------------------------ agent
class PPOAgent:
    """A trained PPO policy behind the evaluation protocol: `reset(seed)`, `act(obs) -> env action`.

    `act` takes one observation of `make_ppo_eval_env(cfg)` (frames already stacked there) and applies
    the training-time preprocessing, including the checkpoint's observation-normalisation statistics.
    Deterministic by default (argmax / Gaussian mean); `deterministic=False` samples, seeded by `reset`.
    """

    def __init__(self, policy: ActorCritic, config: Config, device: torch.device, deterministic: bool = True,
                 action_bounds: Optional[tuple[np.ndarray, np.ndarray]] = None):
        self.policy = policy.to(device).eval()
        self.config, self.device, self.deterministic = config, device, deterministic
        self.action_bounds = action_bounds
        self.generator = torch.Generator()

    @classmethod
    def from_checkpoint(cls, cfg: Config, device: Union[str, torch.device] = "cpu",
                        deterministic: bool = True) -> "PPOAgent":
        """Load `checkpoints/<experiment>/ppo.pt`; `agent.config` is the config it was trained with."""
        env_id = resolve_env_id(cfg.env.env_id)
        checkpoint = load_checkpoint(checkpoint_path(cfg, "ppo"), "ppo", env_id)
        trained = checkpoint_config(checkpoint)
        policy = ActorCritic(tuple(checkpoint["observation_shape"]), checkpoint["action_dim"],
                             checkpoint["continuous"], trained.ppo.normalize_observation)
        policy.load_state_dict(checkpoint["model"])
        bounds = None
        if checkpoint["continuous"]:
            bounds = (checkpoint["action_low"].numpy(), checkpoint["action_high"].numpy())
        device = resolve_device(device) if isinstance(device, str) else device
        return cls(policy, trained, device, deterministic, bounds)

    def reset(self, seed: Optional[int] = None) -> None:
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    @torch.no_grad()
    def act(self, observation: np.ndarray) -> Union[int, np.ndarray]:
        """observation: one env observation (`(C, H, W)` uint8 or `(D,)`) -> an int or a `(A,)` array."""
        observation = np.asarray(observation)
        if observation.shape != self.policy.observation_shape:
            raise WorldModelsError(
                f"PPO agent expects observations of shape {self.policy.observation_shape}, got {observation.shape}; "
                "build the env with make_ppo_eval_env(agent.config)")
        batch = self.policy.preprocess(_torch_obs(observation[None], self.device))
        if self.deterministic:
            action = self.policy.deterministic_action(batch)[0].cpu()
        else:
            dist = self.policy.distribution(self.policy._features(batch))
            if self.policy.continuous:
                noise = torch.randn(dist.mean.shape, generator=self.generator)
                action = (dist.mean.cpu() + dist.stddev.cpu() * noise)[0]
            else:
                action = torch.multinomial(dist.probs.cpu(), 1, generator=self.generator)[0, 0]
        if not self.policy.continuous:
            return int(action)
        low, high = self.action_bounds
        return np.clip(action.numpy(), low, high).astype(np.float32)


def evaluate_ppo(cfg: Config, episodes: int, device: Union[str, torch.device] = "cpu") -> np.ndarray:
    """Returns `(episodes,)` of the deterministic agent on `make_ppo_eval_env`, on the same seeded
    episodes as `evaluate.py` (disjoint from every training seed)."""
    agent = PPOAgent.from_checkpoint(cfg, device)
    env = make_ppo_eval_env(agent.config)
    seeds = episode_seeds(cfg, "evaluate", 0, episodes)
    returns = [run_episode(env, agent, int(seed), record=False).total_reward for seed in seeds]
    env.close()
    return np.asarray(returns, dtype=np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--eval-episodes", type=int, default=0,
                        help="after training, evaluate the deterministic policy on this many episodes")
    args = parser.parse_args()
    cfg = config_from_args(args)
    train_ppo(cfg)
    if args.eval_episodes > 0:
        start = time.perf_counter()
        returns = evaluate_ppo(cfg, args.eval_episodes)
        print(f"ppo eval: {cfg.env.env_id} mean return {returns.mean():.1f} +- {returns.std():.1f} "
              f"(min {returns.min():.1f}, max {returns.max():.1f}) over {args.eval_episodes} episodes "
              f"in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    run_cli(main)
