"""What PPO learns from: one rollout of `T` steps from `N` envs, its advantages, and reward scaling.

The envs autoreset in the same step (`training/ppo_envs.py`), so every stored transition is a real one:
no reset rows to mask. A truncated episode bootstraps from V(final_obs), a terminated one from 0, and
the advantage never flows back across an episode boundary (`compute_gae`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from gymnasium.vector import VectorEnv

from models.ppo_policy import ActorCritic, RunningMeanStd


def observations_to_tensor(observations: np.ndarray, device: torch.device) -> torch.Tensor:
    """Env observations `(N, *obs_shape)` as a tensor on `device`, dtype kept (uint8 frames stay uint8)."""
    return torch.as_tensor(np.asarray(observations), device=device)


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
        """Zeroed buffers for `steps` x `num_envs` transitions of `policy`'s observation and action shapes."""
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
        next_obs = policy.preprocess(observations_to_tensor(next_obs_raw, device), update_stats=True)
        # A terminated step bootstraps from nothing; a truncated one from its episode's final observation.
        rollout.next_values[step] = 0.0
        truncated_only = np.flatnonzero(truncated & ~terminated)
        if truncated_only.size:
            final_obs = np.stack([infos["final_obs"][i] for i in truncated_only])
            final_values = policy.get_value(policy.preprocess(observations_to_tensor(final_obs, device)))
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
    """1 - Var(target - predicted) / Var(target) over tensors of one shape: 1 is a perfect critic,
    <= 0 no better than a constant; nan when the target does not vary."""
    target_var = target.var()
    return float("nan") if target_var == 0 else float(1 - (target - predicted).var() / target_var)
