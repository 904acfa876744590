"""PPO's vector env on EnvPool: the same contract as `training/ppo_envs.make_vector_env`, stepped in C++.

What PPO's loop (`training/ppo_rollout.collect_rollout`) reads from a vector env, and how EnvPool gives it:
* Same-step autoreset. EnvPool resets an ended env on its *next* step (that step ignores the action and
  returns the new episode's first observation with reward 0). Here the ended envs are stepped once more
  at once, inside the same `step()`, so the observation returned is already the next episode's first one,
  the ended episode's last observation goes in `infos["final_obs"]`, and no reward-0 row ever reaches the
  rollout: the contract of Gymnasium's `AutoresetMode.SAME_STEP` that the Gymnasium path uses.
* Episode statistics. `infos["final_info"]["episode"]` holds `r` (the true return) and `l` (the length)
  with an `_episode` mask, as Gymnasium's `RecordEpisodeStatistics` gives them. On Atari an episode for
  the learner ends at a lost life (`episodic_life`) and its rewards are sign-clipped; the statistics
  count whole games and raw rewards (`info["reward"]`, and `info["terminated"]` for the game's end).
* Atari: EnvPool's own preprocessing is the PPO Atari recipe our Gymnasium wrappers build (30 no-op
  starts, max-pooled frame skip, 84x84 grayscale, FIRE on reset, episodic life, clipped rewards, frame
  stack), on ALE v5's sticky actions (0.25), which `make_ppo_env` keeps too.
* Seeds: EnvPool fixes them when the pool is made, so `reset(seed=s)` makes a new pool with env i
  seeded `s + i` (as Gymnasium's vector `reset(seed=s)` seeds its sub-envs).

Served: Atari with pixels, and state-vector envs EnvPool ports (LunarLander-v3). Pixel observations of
rendered or image envs (LunarLander from pixels, CarRacing) stay on Gymnasium's wrappers.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import batch_space

from config import Config
from utils.environment import is_atari, resolve_env_id
from utils.envpool_envs import ENVPOOL_TASKS, choose_backend, gymnasium_space


def envpool_serves_ppo(cfg: Config, observation: str) -> bool:
    """Whether this module can make PPO's envs for `cfg` with `observation` (pixels | state)."""
    env_id = resolve_env_id(cfg.env.env_id)
    if env_id not in ENVPOOL_TASKS or cfg.env.env_kwargs:
        return False
    return (observation == "pixels") == is_atari(env_id)


def resolve_ppo_backend(cfg: Config, observation: str) -> str:
    """`gymnasium` or `envpool` for PPO's training envs: `env.backend`, with `auto` taking EnvPool where it is
    installed and this module serves the env. Asking for EnvPool where it cannot serve is an error."""
    return choose_backend(cfg.env.backend, envpool_serves_ppo(cfg, observation), True,
                          f"PPO on EnvPool serves Atari from pixels and LunarLander-v3 from its state; "
                          f"{cfg.env.env_id} with ppo.observation={observation} needs --backend gymnasium")


def _pool_options(cfg: Config) -> dict[str, Any]:
    env_id = resolve_env_id(cfg.env.env_id)
    if not is_atari(env_id):
        return {}
    ppo = cfg.ppo
    return dict(img_height=ppo.frame_size, img_width=ppo.frame_size, gray_scale=ppo.grayscale,
                stack_num=ppo.frame_stack, frame_skip=ppo.frame_skip, noop_max=30, episodic_life=True,
                reward_clip=True, use_fire_reset=True, repeat_action_probability=0.25)


class EnvPoolVectorEnv:
    """`cfg.ppo.num_envs` envs of one EnvPool pool, with Gymnasium's same-step-autoreset vector API.

    reset(seed) -> observations (N, *obs_shape), info
    step(actions (N,) or (N, A)) -> observations, rewards (N,), terminated (N,), truncated (N,), infos
    """

    def __init__(self, cfg: Config, seed: int = 0):
        self.cfg = cfg
        self.num_envs = cfg.ppo.num_envs
        self.task = ENVPOOL_TASKS[resolve_env_id(cfg.env.env_id)].task
        self.atari = is_atari(resolve_env_id(cfg.env.env_id))
        self.pool: Any = None
        self._make_pool(seed)
        self.single_observation_space = gym.spaces.Box(0, 255, self.pool.observation_space.shape, np.uint8) \
            if self.atari else gym.spaces.Box(-np.inf, np.inf, self.pool.observation_space.shape, np.float32)
        self.single_action_space = gymnasium_space(self.pool.action_space)
        self.action_space = batch_space(self.single_action_space, self.num_envs)

    def _make_pool(self, seed: int) -> None:
        import envpool

        self.close()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EnvPool's notes on gym vs gymnasium spaces
            self.pool = envpool.make_gymnasium(self.task, num_envs=self.num_envs, batch_size=self.num_envs,
                                               env_seed=[int(seed) + i for i in range(self.num_envs)],
                                               **_pool_options(self.cfg))
        self.returns = np.zeros(self.num_envs, np.float64)
        self.lengths = np.zeros(self.num_envs, np.int64)

    def reset(self, seed: Optional[int] = None) -> tuple[np.ndarray, dict]:
        if seed is not None:
            self._make_pool(seed)
        observations, info = self.pool.reset()
        self.returns[:], self.lengths[:] = 0.0, 0
        return self._observations(observations), info

    def _observations(self, observations: np.ndarray) -> np.ndarray:
        return np.asarray(observations) if self.atari else np.asarray(observations, np.float32)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        observations, rewards, terminated, truncated, info = self.pool.step(np.asarray(actions))
        observations = self._observations(observations).copy()
        terminated, truncated = np.asarray(terminated, bool), np.asarray(truncated, bool)
        self.returns += info["reward"] if self.atari else rewards
        self.lengths += 1
        ended = np.flatnonzero(terminated | truncated)
        infos: dict[str, Any] = {}
        if ended.size:
            # The game is over at a truncation or, on Atari, when the last life is lost (not at every lost life).
            game_over = truncated[ended] | (np.asarray(info["terminated"], bool)[ended] if self.atari
                                            else terminated[ended])
            final_obs = np.empty(self.num_envs, dtype=object)
            final_obs[ended] = list(observations[ended])
            mask = np.zeros(self.num_envs, bool)
            mask[ended[game_over]] = True
            infos = {"final_obs": final_obs, "_final_obs": np.isin(np.arange(self.num_envs), ended),
                     "final_info": {"episode": {"r": self.returns.copy(), "l": self.lengths.copy()}, "_episode": mask}}
            finished = ended[game_over]
            self.returns[finished], self.lengths[finished] = 0.0, 0
            # EnvPool resets an ended env on its next step, whatever the action: take that step now.
            idle = np.zeros((len(ended), *np.shape(actions)[1:]), np.asarray(actions).dtype)
            first_observations, *_, first_info = self.pool.step(idle, env_id=ended.astype(np.int32))
            observations[np.asarray(first_info["env_id"])] = self._observations(first_observations)
        return observations, np.asarray(rewards, np.float64), terminated, truncated, infos

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None
