"""The PPO network for an env's spaces, and a trained one behind the evaluation protocol.

`build_policy` is how training makes the `ActorCritic`; `PPOAgent.from_checkpoint` rebuilds it from
`checkpoints/<experiment>/ppo.pt` for evaluation, the PPO counterpart of `models/loaders.py`.
"""

from __future__ import annotations

from typing import Optional, Union

import gymnasium as gym
import numpy as np
import torch

from config import Config
from models.ppo_policy import ActorCritic
from utils.environment import resolve_env_id
from utils.errors import WorldModelsError
from utils.files import checkpoint_config, checkpoint_path, load_checkpoint
from utils.runtime import resolve_device


def build_policy(cfg: Config, observation_space: gym.Space, action_space: gym.Space) -> ActorCritic:
    """The ActorCritic for these spaces: `(D,)` state or `(C, H, W)` frame observations, Discrete or
    1-D Box actions; any other space fails with what would be valid."""
    if isinstance(action_space, gym.spaces.Discrete):
        action_dim, continuous = int(action_space.n), False
    elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        action_dim, continuous = int(action_space.shape[0]), True
    else:
        raise WorldModelsError(f"PPO supports Discrete and 1-D Box action spaces, not {action_space}")
    if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) not in (1, 3):
        raise WorldModelsError(f"PPO supports (D,) state or (C, H, W) frame observations, not {observation_space}")
    return ActorCritic(observation_space.shape, action_dim, continuous, cfg.ppo.normalize_observation)


class PPOAgent:
    """A trained PPO policy behind the evaluation protocol: `reset(seed)`, `act(obs) -> env action`.

    `act` takes one observation of `make_ppo_eval_env(cfg)` (training/ppo_envs.py; frames already stacked
    there) and applies the training-time preprocessing, including the checkpoint's observation-normalisation
    statistics. Deterministic by default (argmax / Gaussian mean); `deterministic=False` samples, seeded by
    `reset`.
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
        """Start an episode: seeds the sampling of `deterministic=False` (None: a fresh random seed)."""
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
        batch = self.policy.preprocess(torch.as_tensor(observation[None], device=self.device))
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
