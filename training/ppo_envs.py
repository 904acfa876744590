"""The environments PPO trains and is evaluated on: one env's wrapper stack, and the vector env.

* Observations: `ppo.observation=auto` gives Atari and other image envs pixels, the others their own
  state vector. Pixels are `(frame_stack * C, S, S)` uint8 (C = 1 grayscale, 3 colour); frame stacking
  lives in the env (`FrameStackObservation`), so the policy and `PPOAgent` are stateless.
* Atari: the env is made with `frameskip=1` (ALE v5 would skip 4 frames itself), then
  AtariPreprocessing (30 no-op reset, max-pooled frame skip, 84x84 grayscale), and for training an
  episodic-life wrapper, fire-on-reset and sign-clipped rewards. Logged returns are whole games before
  clipping: `RecordEpisodeStatistics` sits below the training-only wrappers.
* Vector envs use `AutoresetMode.SAME_STEP`: a sub-env that ends an episode is reset inside the same
  `step()`, whose observation is already the next episode's first one, and the last observation of the
  ended episode comes in `infos["final_obs"]` (see `training/ppo_rollout.py` for how it is used).
"""

from __future__ import annotations

import os
from functools import lru_cache, partial
from typing import Any, Optional

import gymnasium as gym
import numpy as np
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

from config import PPO_OBSERVATIONS, PPO_VECTOR_ENVS, Config
from utils.environment import has_image_observation, is_atari, make_env, parse_env_kwargs, resolve_env_id
from training.ppo_envpool import EnvPoolVectorEnv, resolve_ppo_backend
from utils.errors import WorldModelsError


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


# ------------------------------------------------------------------------------------- observations
@lru_cache(maxsize=None)
def is_image_env(env_id: str) -> bool:
    """Whether the env's own observation is an RGB image (Atari, CarRacing) rather than a state vector."""
    if is_atari(env_id):
        return True
    probe = make_env(env_id)  # an EnvPool-only id stops here with one line
    image = has_image_observation(probe.observation_space)
    probe.close()
    return image


def resolve_observation(cfg: Config) -> str:
    """`ppo.observation` with `auto` decided: Atari and image envs -> pixels, the others -> state."""
    choice = cfg.ppo.observation
    if choice not in PPO_OBSERVATIONS:
        raise WorldModelsError(f"unknown ppo.observation {choice!r}; valid: {', '.join(PPO_OBSERVATIONS)}")
    env_id = resolve_env_id(cfg.env.env_id)
    image_env = is_image_env(env_id)
    if choice == "auto":
        return "pixels" if image_env else "state"
    if choice == "state" and image_env:
        raise WorldModelsError(f"{env_id} has only image observations; use ppo.observation=pixels or auto")
    return choice


# -------------------------------------------------------------------------------------- one env
def make_ppo_env(cfg: Config, training: bool, render_mode: Optional[str] = None,
                 max_episode_steps: Optional[int] = None) -> gym.Env:
    """One env as PPO sees it. Observations: `(frame_stack * C, S, S)` uint8 for pixels (C = 1
    grayscale, 3 colour), the env's own `(D,)` vector for state. `training` adds the wrappers that
    change the task the learner optimises (episodic life, reward sign clipping), never used at evaluation.
    `max_episode_steps` replaces a non-Atari env's registered step cap (in its own steps, before any
    action repeat); None keeps it.
    """
    env_id = resolve_env_id(cfg.env.env_id)
    ppo = cfg.ppo
    kwargs = parse_env_kwargs(cfg.env.env_kwargs)
    if resolve_observation(cfg) == "state":
        return RecordEpisodeStatistics(make_env(env_id, render_mode=render_mode, max_episode_steps=max_episode_steps,
                                                **kwargs))
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
        env = make_env(env_id, render_mode="rgb_array" if renders else render_mode, max_episode_steps=max_episode_steps,
                       **kwargs)
        # Below the action repeat, so an episode's length counts the env's own steps, as World Models
        # and random play them (the repeat passes its last step's info, which carries it, up).
        env = RecordEpisodeStatistics(env)
        if ppo.frame_skip > 1:
            env = RepeatAction(env, ppo.frame_skip)
        if renders:
            env = AddRenderObservation(env, render_only=True)
        # Shrink first: both steps are linear, so the order changes only rounding, and grayscale on the
        # full 600x400 render (LunarLander) would cost about 10 ms a step, more than the render itself.
        env = ResizeObservation(env, (ppo.frame_size, ppo.frame_size))
        if ppo.grayscale:
            env = GrayscaleObservation(env)
    if not ppo.grayscale:
        height, width, channels = env.observation_space.shape
        env = TransformObservation(env, lambda frame: np.moveaxis(frame, -1, 0),
                                   gym.spaces.Box(0, 255, (channels, height, width), np.uint8))
    env = FrameStackObservation(env, ppo.frame_stack)
    if not ppo.grayscale:
        stack, channels, height, width = env.observation_space.shape
        env = ReshapeObservation(env, (stack * channels, height, width))
    return env


# ALE v5's frames per env step, which every other method's env keeps (PPO's Atari env skips frames itself).
ALE_V5_FRAMESKIP = 4


def env_steps_per_ppo_step(cfg: Config) -> float:
    """Steps of the env as World Models and random play it that one PPO step takes: `ppo.frame_skip` for a
    non-Atari pixel env (its action repeat), `ppo.frame_skip` frames over ALE v5's 4 on Atari, 1 for state.
    Not exact over a run: a non-Atari repeat stops early at an episode's end (fewer steps than this), and
    Atari resets play frames PPO's step count never sees (no-op starts, FIRE, a lost life's no-op)."""
    if resolve_observation(cfg) == "state":
        return 1.0
    if is_atari(resolve_env_id(cfg.env.env_id)):
        return cfg.ppo.frame_skip / ALE_V5_FRAMESKIP
    return float(cfg.ppo.frame_skip)


def episode_env_steps(env: gym.Env, cfg: Config) -> int:
    """How many steps of the env as World Models and random play it the episode `env` (made by
    `make_ppo_eval_env`) last played took, for the `length` every method reports. Read from
    `RecordEpisodeStatistics`' running count, which a reset zeroes and an outer time limit does not
    hide: on a non-Atari pixel env it sits below the action repeat and counts the env's own steps; on
    Atari it counts PPO steps of `ppo.frame_skip` frames (the FIRE presses that serve included), which
    are converted into ALE v5's 4-frame steps."""
    counted = int(env.get_wrapper_attr("episode_lengths"))
    if is_atari(resolve_env_id(cfg.env.env_id)):
        return round(counted * cfg.ppo.frame_skip / ALE_V5_FRAMESKIP)
    return counted


def make_ppo_eval_env(cfg: Config, seed: Optional[int] = None, render_mode: Optional[str] = None,
                      max_episode_steps: Optional[int] = None) -> gym.Env:
    """A single env with training's observation pipeline minus the training-only wrappers; rewards
    are the true ones and an Atari episode is a whole game. `seed` seeds its first reset.

    `max_episode_steps` caps an episode at that many steps *of the env itself*, as World Models and
    random play it (`env.max_episode_steps`), so every method plays the same task. Elsewhere it replaces
    the env's registered cap under PPO's action repeat; on Atari a PPO step is `ppo.frame_skip` frames
    where ALE v5's step is 4, so the cap is converted into PPO steps.
    """
    atari = is_atari(resolve_env_id(cfg.env.env_id))
    env = make_ppo_env(cfg, training=False, render_mode=render_mode, max_episode_steps=None if atari else max_episode_steps)
    if atari and max_episode_steps:
        env = gym.wrappers.TimeLimit(env, -(-max_episode_steps * ALE_V5_FRAMESKIP // cfg.ppo.frame_skip))
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


# ------------------------------------------------------------------------------------ vector env
def choose_vector_env(cfg: Config) -> str:
    """How PPO's training envs step: `envpool` where `resolve_ppo_backend` picks EnvPool, else
    `ppo.vector_env` with `auto` decided. Worker processes pay only where a step costs more than the
    inter-process round trip (pixel envs, not LunarLander's ~50 us Box2D step) and where spare cores
    exist: on 2 cores they fight the CNN update for the CPU and halve Pong's PPO SPS (benchmarks/ppo.py)."""
    if resolve_ppo_backend(cfg, resolve_observation(cfg)) == "envpool":
        return "envpool"
    choice = cfg.ppo.vector_env
    if choice not in PPO_VECTOR_ENVS:
        raise WorldModelsError(f"unknown ppo.vector_env {choice!r}; valid: {', '.join(PPO_VECTOR_ENVS)}")
    if choice == "auto":
        pays = resolve_observation(cfg) == "pixels" and cfg.ppo.num_envs > 1 and (os.cpu_count() or 1) >= 4
        return "async" if pays else "sync"
    return choice


def make_vector_env(cfg: Config, kind: Optional[str] = None) -> VectorEnv | EnvPoolVectorEnv:
    """`cfg.ppo.num_envs` training envs of `kind` (sync | async | envpool; None: `choose_vector_env`),
    autoreset in the same step (see the module docstring). Observations are batched: `(N, *obs_shape)`."""
    kind = kind or choose_vector_env(cfg)
    if kind == "envpool":
        return EnvPoolVectorEnv(cfg)
    thunks = [partial(make_ppo_env, cfg, True) for _ in range(cfg.ppo.num_envs)]
    vector_class = AsyncVectorEnv if kind == "async" else SyncVectorEnv
    return vector_class(thunks, autoreset_mode=AutoresetMode.SAME_STEP)
