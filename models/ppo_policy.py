"""The PPO baseline's networks and its loss (Schulman et al. 2017; details after Huang et al. 2022).

* `ActorCritic`: a Nature-CNN trunk shared by both heads for pixel observations
  `(B, C, H, W) uint8` (scaled by 1/255 inside), or two separate 64x64 tanh MLPs for state vectors
  `(B, D) float32`. A categorical head for Discrete actions, a Gaussian with a state-independent
  log-std for Box actions.
* `RunningMeanStd`: running observation statistics kept as buffers, so they travel with the
  `state_dict` into the checkpoint and the evaluation agent normalises exactly as training did.
* `ppo_loss`: the clipped surrogate, the (optionally clipped) value loss and the entropy bonus.

Nothing here knows about environments, rollouts or optimisers.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.distributions import Categorical, Normal


def layer_init(layer: nn.Module, std: float = math.sqrt(2), bias: float = 0.0) -> nn.Module:
    """Orthogonal weights with gain `std`, constant bias: sqrt(2) for ReLU/tanh hidden layers,
    0.01 for the policy head (near-uniform initial policy), 1 for the value head."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


class RunningMeanStd(nn.Module):
    """Running mean and variance of `(B, *shape)` batches (parallel Welford update, Chan et al.).

    `normalize` clips to +-`clip` as Gymnasium's NormalizeObservation does, so one outlier state cannot
    blow up the first layer's activations.
    """

    def __init__(self, shape: tuple[int, ...], epsilon: float = 1e-8, clip: float = 10.0):
        super().__init__()
        self.epsilon, self.clip = epsilon, clip
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        # A tiny prior count, as in Gymnasium, so the first update is not a division by zero.
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    @torch.no_grad()
    def update(self, batch: torch.Tensor) -> None:
        batch = batch.to(torch.float64)
        batch_mean, batch_var, batch_count = batch.mean(0), batch.var(0, unbiased=False), batch.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean += delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta.square() * self.count * batch_count / total
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, *shape) -> (B, *shape) float32, zero mean and unit variance under the running stats."""
        scaled = (batch.to(torch.float64) - self.mean) / torch.sqrt(self.var + self.epsilon)
        return scaled.clamp(-self.clip, self.clip).to(torch.float32)


class ActorCritic(nn.Module):
    """Policy and value function for one observation/action space.

    observation_shape: `(C, H, W)` for pixels (stacked grayscale frames, uint8) or `(D,)` for state
    vectors. `action_dim`: the number of choices (discrete) or the Box's dimension (continuous).
    `channels_last`: pixels only, run the convolutions in NHWC layout (same values, faster on a CPU).
    """

    def __init__(self, observation_shape: tuple[int, ...], action_dim: int, continuous: bool,
                 normalize_observation: bool = False, channels_last: bool = True):
        super().__init__()
        self.observation_shape = tuple(observation_shape)
        self.action_dim, self.continuous = action_dim, continuous
        self.pixels = len(self.observation_shape) == 3
        self.obs_rms: Optional[RunningMeanStd] = (
            RunningMeanStd(self.observation_shape) if normalize_observation and not self.pixels else None
        )
        if self.pixels:
            channels = self.observation_shape[0]
            # Nature DQN trunk (Mnih et al. 2015), shared by the actor and the critic.
            conv = nn.Sequential(
                layer_init(nn.Conv2d(channels, 32, 8, stride=4)), nn.ReLU(),
                layer_init(nn.Conv2d(32, 64, 4, stride=2)), nn.ReLU(),
                layer_init(nn.Conv2d(64, 64, 3, stride=1)), nn.ReLU(),
                nn.Flatten(),
            )
            with torch.no_grad():
                flat = conv(torch.zeros(1, *self.observation_shape)).shape[1]
            self.trunk = nn.Sequential(conv, layer_init(nn.Linear(flat, 512)), nn.ReLU())
            # NHWC convolutions: the update's forward + backward take about a third less time on a CPU
            # (benchmarks/ppo_pixels.py); the values are the same.
            self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
            self.trunk.to(memory_format=self.memory_format)
            self.actor_body, self.critic_body = nn.Identity(), nn.Identity()
            features = 512
        else:
            size = self.observation_shape[0]
            self.trunk = nn.Identity()
            # Separate actor and critic MLPs: a shared body lets the value loss's scale disturb the policy.
            self.actor_body = nn.Sequential(layer_init(nn.Linear(size, 64)), nn.Tanh(),
                                            layer_init(nn.Linear(64, 64)), nn.Tanh())
            self.critic_body = nn.Sequential(layer_init(nn.Linear(size, 64)), nn.Tanh(),
                                             layer_init(nn.Linear(64, 64)), nn.Tanh())
            features = 64
        self.actor_head = layer_init(nn.Linear(features, action_dim), std=0.01)
        self.critic_head = layer_init(nn.Linear(features, 1), std=1.0)
        if continuous:
            self.actor_logstd = nn.Parameter(torch.zeros(1, action_dim))

    def preprocess(self, observation: torch.Tensor, update_stats: bool = False) -> torch.Tensor:
        """Raw env observations `(B, *observation_shape)` -> what the rollout buffer stores and the
        network reads: normalised float32 state vectors, or the untouched uint8 frames (scaled in
        `_features`, so the buffer keeps 1 byte per pixel)."""
        if self.pixels:
            return observation
        observation = observation.to(torch.float32)
        if self.obs_rms is None:
            return observation
        if update_stats:
            self.obs_rms.update(observation)
        return self.obs_rms.normalize(observation)

    def _features(self, observation: torch.Tensor) -> torch.Tensor:
        if self.pixels:
            # Without the 1/255 the first update's KL explodes (Huang et al. 2022, Atari detail 9).
            return self.trunk((observation.to(torch.float32) / 255.0).contiguous(memory_format=self.memory_format))
        return observation

    def get_value(self, observation: torch.Tensor) -> torch.Tensor:
        """Preprocessed observation `(B, ...)` -> V(s) `(B,)`."""
        return self.critic_head(self.critic_body(self._features(observation))).squeeze(-1)

    def distribution(self, features: torch.Tensor) -> torch.distributions.Distribution:
        logits_or_mean = self.actor_head(self.actor_body(features))
        if self.continuous:
            return Normal(logits_or_mean, self.actor_logstd.expand_as(logits_or_mean).exp(), validate_args=False)
        # Argument validation costs a third of a small policy's forward pass in the rollout loop.
        return Categorical(logits=logits_or_mean, validate_args=False)

    def get_action_and_value(
        self, observation: torch.Tensor, action: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample (or score) actions. observation: preprocessed `(B, ...)`; action: `(B,)` long or
        `(B, A)` float, or None to sample. Returns action, log-prob `(B,)`, entropy `(B,)`, value `(B,)`."""
        features = self._features(observation)
        dist = self.distribution(features)
        if action is None:
            action = dist.sample()
        logprob, entropy = dist.log_prob(action), dist.entropy()
        if self.continuous:
            logprob, entropy = logprob.sum(-1), entropy.sum(-1)
        value = self.critic_head(self.critic_body(features)).squeeze(-1)
        return action, logprob, entropy, value

    def deterministic_action(self, observation: torch.Tensor) -> torch.Tensor:
        """The mode of the policy: argmax `(B,)` for discrete, the Gaussian mean `(B, A)` for continuous."""
        logits_or_mean = self.actor_head(self.actor_body(self._features(observation)))
        return logits_or_mean if self.continuous else logits_or_mean.argmax(-1)


def ppo_loss(
    new_logprob: torch.Tensor,
    old_logprob: torch.Tensor,
    advantages: torch.Tensor,
    new_value: torch.Tensor,
    old_value: torch.Tensor,
    returns: torch.Tensor,
    entropy: torch.Tensor,
    clip_coef: float,
    clip_vloss: bool,
    ent_coef: float,
    vf_coef: float,
    normalize_advantages: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The PPO objective on one minibatch; every input is `(M,)`.

    loss = -min(r A, clip(r, 1-c, 1+c) A) - ent_coef H + vf_coef * 0.5 (V - R)^2, with
    r = exp(new_logprob - old_logprob). Advantages are normalised per minibatch (Huang et al. detail 7).
    With `clip_vloss` the value may move at most `clip_coef` from its rollout-time estimate before its
    gradient stops (the pessimistic max of the clipped and unclipped errors).

    Returns the scalar loss and detached diagnostics: policy_loss, value_loss, entropy, approx_kl
    (the low-variance estimator (r - 1) - log r), old_approx_kl (-log r) and clipfrac.
    """
    log_ratio = new_logprob - old_logprob
    ratio = log_ratio.exp()
    if normalize_advantages and advantages.numel() > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    policy_loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef)).mean()
    if clip_vloss:
        value_clipped = old_value + (new_value - old_value).clamp(-clip_coef, clip_coef)
        value_loss = 0.5 * torch.max((new_value - returns).square(), (value_clipped - returns).square()).mean()
    else:
        value_loss = 0.5 * (new_value - returns).square().mean()
    entropy_mean = entropy.mean()
    loss = policy_loss - ent_coef * entropy_mean + vf_coef * value_loss
    with torch.no_grad():
        stats = {
            "policy_loss": policy_loss.detach(),
            "value_loss": value_loss.detach(),
            "entropy": entropy_mean.detach(),
            "old_approx_kl": (-log_ratio).mean(),
            "approx_kl": ((ratio - 1) - log_ratio).mean(),
            "clipfrac": ((ratio - 1.0).abs() > clip_coef).float().mean(),
        }
    return loss, stats
