"""Environments: ids and aliases, `make_env`, the one frame preprocessing function, the action encoding,
random policies, the episode runner that collection and evaluation share, and stage 1's collection loop
(`collect_episodes`; `training/collect.py` adds the trained-agent policy to it).

Run `python -m utils.environment` to step every supported environment and check its frames.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Protocol, SupportsFloat

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from config import RANDOM_POLICIES, SUPPORTED_ENVS, Config, EnvConfig, canonical_env_id, get_config, parse_env_kwargs, valid_keys
from utils.actions import SERVE_STEPS, action_size, action_to_vector, fire_action, serves_left_after
from utils.data import Episode, episode_index, episode_path, list_episodes, load_episode, load_episode_metadata, rollout_dir, save_episode
from utils.envpool_envs import ENVPOOL_ONLY_ENVS, EnvPoolBatch, play_episodes, resolve_backend
from utils.errors import WorldModelsError
from utils.files import ensure_writable_dir, experiment_dir, make_writer
from utils.frames import has_image_observation, preprocess_frame
from utils.runtime import episode_seeds
from utils.video import log_video
from utils.workers import default_workers, parallel_map

# pygame (Box2D rendering) looks for a display unless told there is none.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
# SDL otherwise catches SIGTERM in every process that renders, and worker pools could not stop them.
os.environ.setdefault("SDL_NO_SIGNAL_HANDLERS", "1")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
warnings.filterwarnings("ignore", message=".*pkg_resources is deprecated.*")

_ATARI_REGISTERED = False


def register_atari_envs() -> None:
    """Register the `ALE/*` ids with Gymnasium (ale-py ships the ROMs). Idempotent."""
    global _ATARI_REGISTERED
    if not _ATARI_REGISTERED:
        import ale_py

        gym.register_envs(ale_py)
        _ATARI_REGISTERED = True


def resolve_env_id(env_id: str) -> str:
    """Canonical, registered env id; an unknown one fails with the list of supported envs."""
    register_atari_envs()
    env_id = canonical_env_id(env_id, notify=False)
    if env_id not in gym.envs.registry and env_id not in ENVPOOL_ONLY_ENVS:
        raise WorldModelsError(
            f"unknown environment {env_id!r}; supported: {', '.join(SUPPORTED_ENVS)} "
            "(or any id registered with gymnasium.register)"
        )
    return env_id


def is_atari(env_id: str) -> bool:
    return env_id.startswith("ALE/")


def make_env(env_id: str, render_mode: Optional[str] = None, max_episode_steps: Optional[int] = None, **kwargs: Any) -> gym.Env:
    """`gymnasium.make` for a supported or user-registered id (aliases accepted), unwrapped of nothing."""
    env_id = resolve_env_id(env_id)
    if env_id in ENVPOOL_ONLY_ENVS:  # every Gymnasium-only path (PPO, probes, --backend gymnasium) ends here
        raise WorldModelsError(f"{env_id} exists only on EnvPool, and this command plays Gymnasium envs only; "
                               "train.py, the stage scripts and evaluate.py play it on EnvPool")
    if max_episode_steps:
        kwargs["max_episode_steps"] = max_episode_steps
    return gym.make(env_id, render_mode=render_mode, **kwargs)


class FrameObservation(gym.ObservationWrapper):
    """Replace the observation with the (S, S, 3) uint8 frame of `preprocess_frame`.

    Envs whose observation is an image use it; the others (LunarLander's state vector) are rendered,
    so they must be made with `render_mode="rgb_array"`; their original observation (LunarLander's
    8-d state) stays in `info["state"]` of reset and step, for whoever wants it (a probe of what V encodes).
    """

    def __init__(self, env: gym.Env, env_cfg: EnvConfig):
        super().__init__(env)
        self.env_cfg = env_cfg
        self.uses_render = not has_image_observation(env.observation_space)
        if self.uses_render and env.render_mode != "rgb_array":
            raise WorldModelsError(f"{env_cfg.env_id} has no image observation and must render rgb_array frames")
        size = env_cfg.frame_size
        self.observation_space = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        observation, info = self.env.reset(**kwargs)
        return self.observation(observation), self._with_state(info, observation)

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        return self.observation(observation), reward, terminated, truncated, self._with_state(info, observation)

    def _with_state(self, info: dict[str, Any], observation: Any) -> dict[str, Any]:
        return {**info, "state": observation} if self.uses_render else info

    def observation(self, observation: np.ndarray) -> np.ndarray:
        image = self.env.render() if self.uses_render else observation
        return preprocess_frame(image, self.env_cfg.frame_size, self.env_cfg.crop_top, self.env_cfg.crop_bottom)


class ServeWithFire(gym.Wrapper):
    """`env.fire_to_serve` on Gymnasium: an episode's first `SERVE_STEPS` actions and the first
    `SERVE_STEPS` after a lost life are `fire` (FIRE's index), whatever the agent chose. The action played
    is in `info["played_action"]`, so a recorded episode holds what the game saw. `EnvPoolBatch` applies
    the same rule on EnvPool."""

    def __init__(self, env: gym.Env, fire: int):
        super().__init__(env)
        self.fire = fire
        self.serves_left, self.lives = SERVE_STEPS, 0

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        observation, info = self.env.reset(**kwargs)
        self.serves_left, self.lives = SERVE_STEPS, int(info["lives"])
        return observation, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        played = self.fire if self.serves_left else action
        observation, reward, terminated, truncated, info = self.env.step(played)
        self.serves_left = int(serves_left_after(self.serves_left, self.lives, info["lives"]))
        self.lives = int(info["lives"])
        return observation, reward, terminated, truncated, {**info, "played_action": played}


def make_frame_env(env_cfg: EnvConfig) -> gym.Env:
    """The env World Models sees: observations are (S, S, 3) uint8 frames, episodes capped at
    `env_cfg.max_episode_steps`."""
    # rgb_array costs nothing until render() is called, and lets state-vector envs be rendered.
    kwargs = parse_env_kwargs(env_cfg.env_kwargs)
    env = make_env(env_cfg.env_id, render_mode="rgb_array", max_episode_steps=env_cfg.max_episode_steps, **kwargs)
    if env_cfg.fire_to_serve:
        env = ServeWithFire(env, fire_action(resolve_env_id(env_cfg.env_id)))
    return FrameObservation(env, env_cfg)


def env_action_space(env_cfg: EnvConfig) -> gym.Space:
    """The action space agents see on `env_cfg`'s backend (EnvPool's ports keep Gymnasium's spaces)."""
    if resolve_backend(env_cfg) == "envpool":
        with EnvPoolBatch(env_cfg, [0]) as probe:
            return probe.action_space
    env = make_frame_env(env_cfg)
    space = env.action_space
    env.close()
    return space


# -------------------------------------------------------------------------------------- agents
class Agent(Protocol):
    """What every evaluated or collecting policy offers: world models, PPO and random alike."""

    def reset(self, seed: Optional[int] = None) -> None: ...

    def act(self, observation: np.ndarray) -> Any: ...


# Builds the agent that plays collection episodes: (config, the env's action space) -> Agent.
AgentFactory = Callable[[Config, gym.Space], Agent]


class RandomAgent:
    """Random exploration policies for collection (and the `random` baseline of evaluation).

    * ``uniform``: a fresh uniform action every step.
    * ``repeat``: a uniform action held for U[repeat_min, repeat_max] steps — smoother, reaches
      further from the start state than uniform noise.
    * ``random_walk`` (Box only): a Gaussian random walk clipped to the bounds, the smooth exploration
      the paper's continuous-control follow-ups use.
    """

    POLICIES = RANDOM_POLICIES

    def __init__(self, space: gym.Space, policy: str = "uniform", repeat_min: int = 1, repeat_max: int = 8, walk_sigma: float = 0.3):
        if policy not in self.POLICIES:
            raise WorldModelsError(f"unknown collect.policy {policy!r}; valid: {', '.join(self.POLICIES)}")
        if policy == "random_walk" and not isinstance(space, gym.spaces.Box):
            raise WorldModelsError("collect.policy=random_walk needs a continuous (Box) action space; use repeat")
        if not 1 <= repeat_min <= repeat_max:
            raise WorldModelsError(f"need 1 <= collect.repeat_min <= collect.repeat_max, got {repeat_min}, {repeat_max}")
        self.space, self.policy = space, policy
        self.repeat_min, self.repeat_max, self.walk_sigma = repeat_min, repeat_max, walk_sigma
        self.reset(None)

    def reset(self, seed: Optional[int] = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.current: Any = None
        self.hold = 0

    def _uniform(self) -> Any:
        if isinstance(self.space, gym.spaces.Discrete):
            return int(self.space.start + self.rng.integers(int(self.space.n)))
        low, high = self.space.low, self.space.high
        return self.rng.uniform(low, high).astype(self.space.dtype)

    def act(self, observation: np.ndarray) -> Any:
        if self.policy == "uniform":
            return self._uniform()
        if self.policy == "repeat":
            if self.hold <= 0:
                self.current = self._uniform()
                self.hold = int(self.rng.integers(self.repeat_min, self.repeat_max + 1))
            self.hold -= 1
            return self.current
        if self.current is None:
            self.current = self._uniform()
        else:
            step = self.rng.normal(0.0, self.walk_sigma, size=self.space.shape)
            self.current = np.clip(self.current + step, self.space.low, self.space.high).astype(self.space.dtype)
        return self.current


# ------------------------------------------------------------------------------------- episodes
def run_episode(env: gym.Env, agent: Agent, seed: int, max_steps: Optional[int] = None, record: bool = True) -> Episode:
    """Play one episode of `agent` in `env` from `env.reset(seed=seed)`; the agent is reset with the
    same seed, so the episode is a pure function of (env, agent, seed)."""
    observation, _ = env.reset(seed=seed)
    agent.reset(seed)
    frames, actions, rewards, terminals = [], [], [], []
    steps = 0
    while True:
        action = agent.act(observation)
        if record:
            frames.append(observation)
        observation, reward, terminated, truncated, info = env.step(action)
        if record:  # the action the game played: `env.fire_to_serve` may have pressed FIRE instead
            actions.append(action_to_vector(info.get("played_action", action), env.action_space))
        rewards.append(reward)
        terminals.append(terminated)
        steps += 1
        if terminated or truncated or (max_steps and steps >= max_steps):
            break
    size = env.observation_space.shape
    return Episode(
        obs=np.stack(frames) if record else np.zeros((0, *size), np.uint8),
        actions=np.stack(actions) if record else np.zeros((0, action_size(env.action_space)), np.float32),
        rewards=np.asarray(rewards, dtype=np.float32),
        terminated=np.asarray(terminals, dtype=bool),
        seed=seed,
    )


# ------------------------------------------------------------------------------------ collection
def collect_episode_seed(cfg: Config, index: int) -> int:
    """Collected episode `index` is always played from this env seed (disjoint from other stages' seeds)."""
    return int(episode_seeds(cfg, "collect", cfg.collect.seed_offset + index, 1)[0])


def make_random_agent(cfg: Config, action_space: gym.Space) -> RandomAgent:
    """The exploration policy `collect.policy` names (uniform | repeat | random_walk)."""
    c = cfg.collect
    return RandomAgent(action_space, c.policy, c.repeat_min, c.repeat_max, c.walk_sigma)


# Episodes that step together in one EnvPool batch during collection: enough to keep its threads busy,
# few enough that an interrupt loses little.
ENVPOOL_COLLECT_BATCH = 32

# Per-worker state, built once by `_init_collect_worker` in each worker process.
_collect_worker: dict = {}


def _init_collect_worker(cfg: Config, folder: Path, make_agent: AgentFactory) -> None:
    if multiprocessing.parent_process() is not None:  # a worker process: its siblings use the other cores
        torch.set_num_threads(1)
    env = make_frame_env(cfg.env)
    _collect_worker.update(cfg=cfg, env=env, agent=make_agent(cfg, env.action_space), folder=folder)


def _collect_one(index: int) -> tuple[int, int, float]:
    cfg: Config = _collect_worker["cfg"]
    episode = run_episode(_collect_worker["env"], _collect_worker["agent"], collect_episode_seed(cfg, index),
                          cfg.env.max_episode_steps)
    save_episode(episode_path(_collect_worker["folder"], index), episode, cfg.env.env_id, cfg.collect.policy,
                 cfg.collect.compress, cfg.env.fire_to_serve)
    return index, episode.length, episode.total_reward


def _collect_with_envpool(cfg: Config, folder: Path, pending: list[int],
                          make_agent: AgentFactory) -> Iterator[tuple[int, int, float]]:
    """`_collect_one` for EnvPool: the pending indices in batches, each episode saved as it ends."""
    action_space = env_action_space(cfg.env)
    for first in range(0, len(pending), ENVPOOL_COLLECT_BATCH):
        indices = pending[first : first + ENVPOOL_COLLECT_BATCH]
        agent = make_agent(cfg, action_space)
        # An agent that can play many episodes in one batch (a trained World Models agent) does; others
        # get one copy per episode.
        agents = (agent.for_episodes(len(indices)) if hasattr(agent, "for_episodes")
                  else [agent] + [make_agent(cfg, action_space) for _ in indices[1:]])
        seeds = [collect_episode_seed(cfg, index) for index in indices]
        for position, episode in play_episodes(cfg.env, agents, seeds):
            save_episode(episode_path(folder, indices[position]), episode, cfg.env.env_id, cfg.collect.policy,
                         cfg.collect.compress, cfg.env.fire_to_serve)
            yield indices[position], episode.length, episode.total_reward


def collection_config(cfg: Config) -> Config:
    """`cfg` as stage 1 plays it: episodes capped at `collect.max_episode_steps` where that is shorter than
    `env.max_episode_steps` (C's cap). A copy; `cfg` is left alone."""
    if 0 < cfg.collect.max_episode_steps < cfg.env.max_episode_steps:
        return dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, max_episode_steps=cfg.collect.max_episode_steps))
    return cfg


def collect_episodes(cfg: Config, make_agent: AgentFactory = make_random_agent, visualize: bool = False) -> Path:
    """Make sure `collect.num_rollouts` episodes of `make_agent(cfg, action_space)` exist on disk in
    `rollout_dir(cfg)`; returns that folder.

    On Gymnasium, episodes are spread over worker processes (each keeps one env and one agent alive);
    on EnvPool (`env.backend`), batches of `ENVPOOL_COLLECT_BATCH` episodes step together in this
    process. Either way episode i is played from `collect_episode_seed(cfg, i)` and written atomically,
    so a re-run after an interrupt plays only the missing indices and the data set is the same whatever
    the number of workers. `make_agent` must be a module-level function (workers rebuild the agent from it).
    """
    cfg = collection_config(cfg)
    backend = resolve_backend(cfg.env)
    make_agent(cfg, env_action_space(cfg.env))  # fails early on a bad env or policy, before anything is written
    folder = ensure_writable_dir(rollout_dir(cfg))
    for stale in folder.glob(".ep_*.tmp.npz"):  # left by a worker killed mid-write
        stale.unlink()
    on_disk = list_episodes(folder)
    existing = {episode_index(p) for p in on_disk}
    if on_disk:
        # Random-policy data is shared by every experiment on the env: never mix, or silently reuse, another
        # policy's or another --seed's (which would make a run depend on what ran before it).
        found = load_episode_metadata(on_disk[0])
        index = episode_index(on_disk[0])
        mismatch = (f"collect.policy={found['policy']}" if found["policy"] != cfg.collect.policy
                    else "other seeds (another --seed or collect.seed_offset)"
                    if found["seed"] != collect_episode_seed(cfg, index)
                    else f"env.fire_to_serve={str(found['fire_to_serve']).lower()}"
                    if found["fire_to_serve"] != cfg.env.fire_to_serve else None)
        if mismatch:
            raise WorldModelsError(f"{folder} holds episodes of {mismatch}, unlike this run's; give this data set "
                                   f"its own collect.rollout_folder=<name>, or move them away")
    pending = [i for i in range(cfg.collect.num_rollouts) if i not in existing]
    if backend == "envpool":
        where = f"EnvPool, {min(ENVPOOL_COLLECT_BATCH, max(1, len(pending)))} envs at a time"
        results = _collect_with_envpool(cfg, folder, pending, make_agent)
    else:
        workers = default_workers(cfg.collect.workers)
        where = f"Gymnasium, {min(workers, max(1, len(pending)))} worker process(es)"
        results = parallel_map(_collect_one, pending, workers, _init_collect_worker, (cfg, folder, make_agent))
    print(f"collect: {cfg.env.env_id}, {len(existing)} of {cfg.collect.num_rollouts} episodes on disk in {folder}, "
          f"{len(pending)} to play ({where})")
    writer = make_writer(cfg, "collect")
    start, frames = time.perf_counter(), 0
    with tqdm(results, total=cfg.collect.num_rollouts, initial=len(existing), desc="collect", unit="ep") as bar:
        for index, length, total_reward in bar:
            frames += length
            writer.add_scalar("collect/episode_return", total_reward, index)
            writer.add_scalar("collect/episode_length", length, index)
            bar.set_postfix(frames_per_s=f"{frames / (time.perf_counter() - start):.0f}")
    if pending:
        writer.add_scalar("collect/frames_per_second", frames / (time.perf_counter() - start), len(existing))
    if visualize:
        first = list_episodes(folder)[0]
        video = log_video(writer, "collect/episode", load_episode(first, keys=("obs",))["obs"], 0,
                          experiment_dir(cfg, "videos") / f"collect_{first.stem}.mp4", max_tensorboard_frames=200)
        print(f"collect: video of {first.name} at {video}")
    writer.close()
    return folder


def collect_random_rollouts(env_id: str, num_rollouts: int, visualize: bool = False, **options: Any) -> Path:
    """Collect `num_rollouts` random episodes of `env_id` into `data/<env-slug>/rollouts/` (stage 1).

    The seed README's entry point; options are `collect.*` / `env.*` / `experiment.*` fields, e.g.
    `collect_random_rollouts("LunarLander-v3", 100, workers=2, seed=1)`. `visualize=True` also
    writes an mp4 of the first episode under `videos/`. Returns the rollout folder.
    """
    keys = {key.split(".", 1)[1]: key for key in valid_keys(Config()) if key.split(".")[0] in ("collect", "env", "experiment")}
    overrides = [f"collect.num_rollouts={num_rollouts}"]
    for name, value in options.items():
        if name not in keys:
            raise WorldModelsError(f"unknown option {name!r}; valid: {', '.join(sorted(keys))}")
        overrides.append(f"{keys[name]}={value}")
    cfg = get_config(env_id, overrides=overrides)
    if cfg.collect.policy not in RandomAgent.POLICIES:
        raise WorldModelsError(f"collect_random_rollouts plays a random policy; collect.policy must be one of "
                               f"{', '.join(RandomAgent.POLICIES)}, not {cfg.collect.policy!r} (use python -m training.collect)")
    resolve_env_id(cfg.env.env_id)
    return collect_episodes(cfg, make_random_agent, visualize)


def _self_check() -> None:
    """Step every supported env and check it produces (64, 64, 3) uint8 frames."""
    import time

    for env_id in SUPPORTED_ENVS:
        if env_id in ENVPOOL_ONLY_ENVS:
            continue  # no Gymnasium env to step (tests/test_doom.py checks Doom's frames on EnvPool)
        env_cfg = EnvConfig(env_id=env_id, max_episode_steps=50)
        env = make_frame_env(env_cfg)
        agent = RandomAgent(env.action_space)
        start = time.perf_counter()
        episode = run_episode(env, agent, seed=0)
        elapsed = time.perf_counter() - start
        assert episode.obs.shape[1:] == (64, 64, 3) and episode.obs.dtype == np.uint8
        print(f"{env_id:18s} frames {episode.obs.shape} {episode.obs.dtype}  actions {episode.actions.shape}  "
              f"{episode.length / elapsed:7.0f} steps/s  return {episode.total_reward:+.1f}")
        env.close()
    print("ok: every supported environment produces (64, 64, 3) uint8 frames")


if __name__ == "__main__":
    _self_check()
