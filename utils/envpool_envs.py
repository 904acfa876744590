"""EnvPool, the fast env backend: C++ ports of the Gymnasium envs, stepped by a thread pool, and the
home of the one env Gymnasium lacks, the paper's DoomTakeCover (ViZDoom: `DOOM_TAKE_COVER`, `OneEnvPools`).

`env.backend` picks who steps an environment: `gymnasium` (the reference, on which published numbers
are measured), `envpool`, or `auto` (EnvPool where it is installed, ports the env and is the faster of
the two: `AUTO_ENVPOOL_ENVS`; else Gymnasium).
Measured on this project's 2-core machine (docs/RESULTS.md, `benchmarks/backends.py`): CarRacing-v3 and
rendered LunarLander-v3 step several times faster; Atari does not.

What EnvPool changes, and how this module keeps the Gymnasium path's guarantees:
* Seeds are fixed when a pool is made (`env_seed`, one per env; `reset(seed=...)` is ignored). So an
  `EnvPoolBatch` is made for a set of episodes and plays exactly one episode per env from its seed:
  episode i is a pure function of its seed and its agent, as `run_episode` makes it on Gymnasium, and
  collection stays resumable by episode index. (EnvPool's tracks and landers for seed s are not
  Gymnasium's for seed s: the two backends play different episodes, equally distributed where the port
  is faithful; `port_difference` names where it is known not to be.)
* Autoreset: after an env's episode ends, EnvPool's next step on it would return the first frame of a
  new episode with reward 0 ("next-step" autoreset). An `EnvPoolBatch` never steps an env whose episode
  ended, so no transition joins two episodes.
* Frames: LunarLander's comes from `render()` (its observation is the state vector); Atari's from
  `render()` too, the last emulator frame as Gymnasium's ALE v5 returns it (EnvPool's observation is
  the max of the last two). Every image goes through `utils.frames.preprocess_frame`.
* Threads: EnvPool's pool must not be alive in a process that forks workers which make their own
  pools (they hang); batches are made and closed in the main process, inside `with`.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, NamedTuple, Optional, Protocol, Sequence

import gymnasium as gym
import numpy as np

from config import EnvConfig
from utils.actions import SERVE_STEPS, action_size, action_to_vector, fire_action, serves_left_after
from utils.data import Episode
from utils.errors import WorldModelsError
from utils.frames import preprocess_frames

INSTALL_COMMAND = "pip install envpool==1.2.5"

# Gymnasium ALE v5 as the World Models stages play it: full RGB 210x160 frames, frame skip 4, sticky
# actions 0.25, no no-op starts, no life-loss or reward tricks (those are the PPO baseline's own).
_ATARI_V5 = dict(img_height=210, img_width=160, stack_num=1, gray_scale=False, frame_skip=4,
                 repeat_action_probability=0.25, noop_max=1, episodic_life=False, reward_clip=False,
                 use_fire_reset=False, full_action_space=False)

class EnvPoolTask(NamedTuple):
    """How one of our env ids is made on EnvPool."""

    task: str  # EnvPool's task id
    options: dict[str, Any]  # envpool.make options
    image_source: str = "obs"  # where V's image comes from: "obs" (the observation) or "render"
    channels_first: bool = False  # the observation is (3, H, W) (ViZDoom), not (H, W, 3)
    reward_per_step: Optional[float] = None  # replaces EnvPool's reward when the task's score is time alive
    one_env_pools: bool = False  # one pool per env, made one after another (`OneEnvPools`: ViZDoom)
    differs: str = ""  # how the port is known to differ from Gymnasium's env, when it matters to a trained C


# The paper's DoomTakeCover (section 4): ViZDoom's take_cover scenario with one frame per step, episodes
# capped at 2,100 frames, Discrete(3) actions (left, stay, right: `use_combined_action`) and 64x64 RGB
# frames that EnvPool resizes itself. EnvPool's ViZDoom reward is 0 every step (its reward_config scores
# kills and pickups, not the scenario's living reward), so the reward is set to 1 per frame: an episode's
# return is the paper's score, the number of frames survived.
DOOM_TAKE_COVER = EnvPoolTask("TakeCover-v1", dict(use_combined_action=True, frame_skip=1, stack_num=1, img_height=64,
                                                   img_width=64), channels_first=True, reward_per_step=1.0,
                              one_env_pools=True)

# Our env id -> how EnvPool makes it. The Gymnasium ports mean to play what Gymnasium's env of that id plays;
# `differs` says where they are measured not to.
ENVPOOL_TASKS: dict[str, EnvPoolTask] = {
    "CarRacing-v3": EnvPoolTask(
        "CarRacing-v3", {},
        differs="EnvPool draws CarRacing's frame differently from Gymnasium (aliased shrink, skid marks): a C "
                "trained here can score less on Gymnasium's; check it there (docs/RESULTS.md, \"CarRacing: the "
                "long run\")"),
    "LunarLander-v3": EnvPoolTask("LunarLander-v3", {"render_mode": "rgb_array"}, "render"),
    "ALE/Pong-v5": EnvPoolTask("Pong-v5", {**_ATARI_V5, "render_mode": "rgb_array"}, "render"),
    "ALE/Breakout-v5": EnvPoolTask(
        "Breakout-v5", {**_ATARI_V5, "render_mode": "rgb_array"}, "render",
        differs="EnvPool's Breakout plays a different game from Gymnasium's from the same start (holding RIGHT "
                "scores far more here): a C trained here can learn the port's quirk instead of the game "
                "(docs/RESULTS.md, \"Breakout\")"),
    "DoomTakeCover-v0": DOOM_TAKE_COVER,
}

# Ids that exist on EnvPool only (Gymnasium has no ViZDoom env): every stage plays them on EnvPool.
ENVPOOL_ONLY_ENVS = ("DoomTakeCover-v0",)

# Where `auto` takes EnvPool: the ported envs it steps faster than Gymnasium on this machine
# (benchmarks/backends.py, docs/RESULTS.md), and the ones only EnvPool has. Atari is ported but not
# faster: ALE is C++ on both, and the frames V needs cost EnvPool a render copy per step.
# `--backend envpool` still plays it.
AUTO_ENVPOOL_ENVS = ("CarRacing-v3", "LunarLander-v3", *ENVPOOL_ONLY_ENVS)


def envpool_installed() -> bool:
    return importlib.util.find_spec("envpool") is not None


def choose_backend(choice: str, serves: bool, auto_takes_it: bool, cannot_serve: str) -> str:
    """`gymnasium` or `envpool` for an `env.backend` `choice`, given whether EnvPool `serves` the task
    and whether `auto` should take it there. Asking for EnvPool where it is not installed or cannot
    serve is a one-line error (`cannot_serve` says why and what to do)."""
    if choice == "gymnasium" or (choice == "auto" and not (serves and auto_takes_it and envpool_installed())):
        return "gymnasium"
    if not envpool_installed():
        raise WorldModelsError(f"env.backend=envpool but EnvPool is not installed; run `{INSTALL_COMMAND}` "
                               "or use --backend gymnasium")
    if not serves:
        raise WorldModelsError(cannot_serve)
    return "envpool"


def envpool_only_error(env_id: str) -> WorldModelsError:
    """The one-line error for an EnvPool-only env where EnvPool is not installed or not asked for."""
    how = f"install it with `{INSTALL_COMMAND}`" if not envpool_installed() else "use --backend envpool (or auto)"
    return WorldModelsError(f"{env_id} exists only on EnvPool (ViZDoom's {ENVPOOL_TASKS[env_id].task}), "
                            f"not on Gymnasium; {how}")


def port_difference(env_id: str) -> str:
    """How EnvPool's port of `env_id` is known to differ from Gymnasium's in a way that moves a trained C's
    score ("" where none is known); docs/RESULTS.md has the measurements."""
    task = ENVPOOL_TASKS.get(env_id)
    return task.differs if task else ""


def resolve_backend(env_cfg: EnvConfig) -> str:
    """`gymnasium` or `envpool`: what `env.backend` means for the World Models stages on this env and machine."""
    if env_cfg.env_id in ENVPOOL_ONLY_ENVS and (env_cfg.backend == "gymnasium" or not envpool_installed()):
        raise envpool_only_error(env_cfg.env_id)
    if env_cfg.env_id in ENVPOOL_ONLY_ENVS and env_cfg.env_kwargs:
        raise WorldModelsError(f"env.env_kwargs={env_cfg.env_kwargs!r}: {env_cfg.env_id} takes none (its EnvPool "
                               "options are the paper's set-up)")
    ported = env_cfg.env_id in ENVPOOL_TASKS and not env_cfg.env_kwargs
    extra = f" with env.env_kwargs={env_cfg.env_kwargs!r}" if env_cfg.env_kwargs else ""
    return choose_backend(env_cfg.backend, ported, env_cfg.env_id in AUTO_ENVPOOL_ENVS,
                          f"EnvPool has no port of {env_cfg.env_id}{extra}; it serves {', '.join(ENVPOOL_TASKS)}; "
                          "use --backend gymnasium")


class OneEnvPools:
    """N one-env EnvPool pools behind the calls `EnvPoolBatch` makes on one N-env pool.

    EnvPool starts a pool's envs in parallel threads. ViZDoom's game processes do not always survive
    that: a 4-env TakeCover pool made in stage 4 after its first dream generation hung for good in most
    tries (3 of 4 game processes up, the 4th never started), while pools made one env at a time never
    did. So each env gets its own pool, made in turn; a step sends every env's action before receiving
    any result, so the game processes still run side by side.
    """

    def __init__(self, make_pool: Any, seeds: Sequence[int]):
        self.pools: list[Any] = []
        try:
            for seed in seeds:
                self.pools.append(make_pool([int(seed)]))
        except BaseException:
            self.close()
            raise
        self.action_space = self.pools[0].action_space

    def reset(self) -> tuple[np.ndarray, dict[str, Any]]:
        for pool in self.pools:
            pool.async_reset()
        observation = np.concatenate([pool.recv()[0] for pool in self.pools])
        return observation, {"env_id": np.arange(len(self.pools))}

    def step(self, actions: np.ndarray, env_id: np.ndarray) -> tuple[Any, ...]:
        first = np.zeros(1, np.int32)
        for row, env in enumerate(env_id):
            self.pools[int(env)].send(actions[row : row + 1], first)
        results = [self.pools[int(env)].recv() for env in env_id]
        observation, rewards, terminated, truncated = (np.concatenate([r[k] for r in results]) for k in range(4))
        return observation, rewards, terminated, truncated, {"env_id": np.asarray(env_id)}

    def close(self) -> None:
        for pool in self.pools:
            pool.close()
        self.pools = []


class EnvPoolBatch:
    """len(seeds) envs in one EnvPool pool, env i playing one episode from seeds[i].

    reset() -> frames (N, S, S, 3) uint8
    step(env_ids, actions) -> frames (n, S, S, 3) uint8, rewards (n,) float64, terminated (n,) bool,
        truncated (n,) bool, in the order of `env_ids` (only those envs step; none may have ended)
    Episodes are truncated at `env_cfg.max_episode_steps`.
    """

    def __init__(self, env_cfg: EnvConfig, seeds: Sequence[int], num_threads: int = 0):
        import envpool

        self.task = ENVPOOL_TASKS[env_cfg.env_id]
        task, options = self.task.task, self.task.options
        self.env_cfg = env_cfg
        self.num_envs = len(seeds)
        def make_pool(pool_seeds: list[int]) -> Any:
            return envpool.make_gymnasium(task, num_envs=len(pool_seeds), batch_size=len(pool_seeds),
                                          num_threads=num_threads, env_seed=pool_seeds,
                                          max_episode_steps=env_cfg.max_episode_steps, **options)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EnvPool's notes on gym vs gymnasium spaces
            seeds = [int(seed) for seed in seeds]
            self.pool = OneEnvPools(make_pool, seeds) if self.task.one_env_pools else make_pool(seeds)
            self.action_space = gymnasium_space(self.pool.action_space)
        self.ended = np.zeros(self.num_envs, bool)
        # `env.fire_to_serve`: how many more steps each env plays FIRE (an episode's first SERVE_STEPS, and
        # the first SERVE_STEPS after a lost life), as `utils.environment.ServeWithFire` on Gymnasium.
        self.fire = fire_action(env_cfg.env_id) if env_cfg.fire_to_serve else None
        self.serves_left = np.zeros(self.num_envs, np.int64)
        self.lives = np.zeros(self.num_envs, np.int64)
        # Rendering (LunarLander, Atari) and resizing run in the caller's thread, one frame after another,
        # and both release the GIL: threads over the cores make them 1.8x faster on 2 cores (LunarLander,
        # 32 envs: 1,007 -> 1,812 frames/s). Made per batch and shut down with it, so no thread outlives a
        # batch into a later fork.
        self.thread_count = min(len(os.sched_getaffinity(0)), self.num_envs)  # the cores this process may use
        self.frame_threads = ThreadPoolExecutor(self.thread_count) if self.thread_count > 1 else None

    def _frames(self, observation: np.ndarray, env_ids: np.ndarray) -> np.ndarray:
        """The V frames of `env_ids` (their images: `observation` rows, or rendered), split over threads."""
        # Never an empty part: EnvPool refuses to render no env (fewer envs run as episodes end).
        parts = np.array_split(np.arange(len(env_ids)), min(self.thread_count, len(env_ids)))
        if len(parts) == 1:
            return self._frames_of(observation, env_ids, parts[0])
        return np.concatenate(list(self.frame_threads.map(lambda rows: self._frames_of(observation, env_ids, rows), parts)))

    def _frames_of(self, observation: np.ndarray, env_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        if self.task.image_source == "render":
            images = self.pool.render(env_ids=env_ids[rows].tolist())
        else:
            images = np.asarray(observation)[rows]
            if self.task.channels_first:
                images = images.transpose(0, 2, 3, 1)
        c = self.env_cfg
        return preprocess_frames(np.asarray(images), c.frame_size, c.crop_top, c.crop_bottom)

    def reset(self) -> np.ndarray:
        observation, info = self.pool.reset()
        self.ended[:] = False
        env_ids = np.asarray(info["env_id"])
        if self.fire is not None:
            self.serves_left[env_ids], self.lives[env_ids] = SERVE_STEPS, info["lives"]
        return self._frames(observation, env_ids)

    def served(self, env_ids: Sequence[int], actions: Sequence[Any]) -> list[Any]:
        """The actions `env_ids` will play on their next step: `actions`, with FIRE for an env that serves
        (`env.fire_to_serve`). `step` plays these; recorders call it to store what the game saw."""
        if self.fire is None:
            return list(actions)
        return [self.fire if self.serves_left[env] else action for env, action in zip(env_ids, actions)]

    def step(self, env_ids: Sequence[int], actions: Sequence[Any]) -> tuple[np.ndarray, ...]:
        env_ids = np.asarray(env_ids, dtype=np.int32)
        if self.ended[env_ids].any():
            raise WorldModelsError(f"envs {env_ids[self.ended[env_ids]].tolist()} already ended their episode; "
                                   "a next step would start a new one")
        observation, rewards, terminated, truncated, info = self.pool.step(
            _action_batch(self.served(env_ids, actions), self.action_space), env_id=env_ids)
        if self.fire is not None:
            lives = np.asarray(info["lives"])
            self.serves_left[env_ids] = serves_left_after(self.serves_left[env_ids], self.lives[env_ids], lives)
            self.lives[env_ids] = lives
        terminated, truncated = np.asarray(terminated, bool), np.asarray(truncated, bool)
        self.ended[env_ids] = terminated | truncated
        rewards = np.asarray(rewards, np.float64)
        if self.task.reward_per_step is not None:
            rewards = np.full(len(env_ids), self.task.reward_per_step)
        return self._frames(observation, env_ids), rewards, terminated, truncated

    def close(self) -> None:
        if self.pool is None:
            return
        self.pool.close()
        # ViZDoom's game processes end only when the pool object is freed, not on close(): drop it now, so
        # no game outlives its batch (a stale one made a later batch's start-up hang, seen in stage 4).
        self.pool = None
        if self.frame_threads is not None:
            self.frame_threads.shutdown()

    def __enter__(self) -> "EnvPoolBatch":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def gymnasium_space(space: Any) -> gym.Space:
    """EnvPool's action space as the Gymnasium space our agents branch on (Discrete or Box)."""
    if hasattr(space, "n"):
        return gym.spaces.Discrete(int(space.n))
    return gym.spaces.Box(np.asarray(space.low, np.float32), np.asarray(space.high, np.float32), dtype=np.float32)


def _action_batch(actions: Sequence[Any], space: gym.Space) -> np.ndarray:
    """Per-env actions -> the array EnvPool steps: (n,) int32 indices or (n, A) float32."""
    if isinstance(space, gym.spaces.Discrete):
        return np.asarray(actions, dtype=np.int32).reshape(-1)
    return np.asarray(actions, dtype=np.float32).reshape(len(actions), *space.shape)


class EpisodeBatchAgent(Protocol):
    """An agent that acts in several episodes at once (`models.agent.WorldModelAgents`: one model call for
    all of them). Episode i must depend on its seed only, not on which episodes share the batch."""

    def reset(self, index: int, seed: int) -> None: ...

    def act(self, indices: Sequence[int], frames: np.ndarray) -> list[Any]: ...


class AgentPerEpisode:
    """`EpisodeBatchAgent` over one `reset(seed)` / `act(frame)` agent per episode."""

    def __init__(self, agents: Sequence[Any]):
        self.agents = agents

    def reset(self, index: int, seed: int) -> None:
        self.agents[index].reset(seed)

    def act(self, indices: Sequence[int], frames: np.ndarray) -> list[Any]:
        return [self.agents[i].act(frame) for i, frame in zip(indices, frames)]


def play_episodes(env_cfg: EnvConfig, agents: Sequence[Any] | EpisodeBatchAgent, seeds: Sequence[int], record: bool = True,
                  num_threads: int = 0) -> Iterator[tuple[int, Episode]]:
    """Play episode i from seeds[i] with agents[i] (or with a batch agent's episode i), all in one EnvPool
    batch; yield (i, Episode) as each ends. Each episode's agent is reset with its seed, as `run_episode`
    does, so an episode depends on (seed, agent) only. Without `record`, episodes carry rewards and
    terminal flags but no frames."""
    count = len(seeds)
    batch_agent = AgentPerEpisode(agents) if isinstance(agents, (list, tuple)) else agents
    with EnvPoolBatch(env_cfg, seeds, num_threads) as envs:
        frames = envs.reset()
        for index, seed in enumerate(seeds):
            batch_agent.reset(index, int(seed))
        observed: list[list[np.ndarray]] = [[] for _ in range(count)]
        action_vectors: list[list[np.ndarray]] = [[] for _ in range(count)]
        rewards: list[list[float]] = [[] for _ in range(count)]
        terminals: list[list[bool]] = [[] for _ in range(count)]
        running = np.arange(count)
        while len(running):
            actions = envs.served(running, batch_agent.act(running, frames[running]))  # as the game plays them
            if record:
                for i, action in zip(running, actions):
                    observed[i].append(frames[i].copy())  # `frames` is overwritten in place next step
                    action_vectors[i].append(action_to_vector(action, envs.action_space))
            new_frames, step_rewards, terminated, truncated = envs.step(running, actions)
            frames[running] = new_frames
            for position, i in enumerate(running):
                rewards[i].append(step_rewards[position])
                terminals[i].append(bool(terminated[position]))
            ended = terminated | truncated
            for i in running[ended]:
                yield int(i), Episode(
                    obs=np.stack(observed[i]) if record else np.zeros((0, *frames.shape[1:]), np.uint8),
                    actions=(np.stack(action_vectors[i]) if record
                             else np.zeros((0, action_size(envs.action_space)), np.float32)),
                    rewards=np.asarray(rewards[i], np.float32),
                    terminated=np.asarray(terminals[i], bool),
                    seed=int(seeds[i]),
                )
                observed[i], action_vectors[i] = [], []
            running = running[~ended]


class EnvPoolSlots:
    """`EnvWorkerPool`'s interface on EnvPool, for population evaluation (`training.population.run_episodes`).

    All slots live in one "worker" (this process; EnvPool's threads step them). `reset(slots, seeds)` makes
    a fresh batch whose env i plays the episode of seeds[i] (EnvPool fixes seeds at creation: about 50 ms
    for a CarRacing batch), `step_async` / `step_wait` step a subset of its envs.
    """

    workers = 1

    def __init__(self, env_cfg: EnvConfig, num_envs: int, num_threads: int = 0):
        self.env_cfg, self.num_envs, self.num_threads = env_cfg, num_envs, num_threads
        self.batch: Optional[EnvPoolBatch] = None
        self._result: Optional[tuple[np.ndarray, ...]] = None

    def reset(self, slots: Sequence[int], seeds: Sequence[int]) -> np.ndarray:
        slots = list(slots)
        if slots != list(range(len(slots))) or len(slots) > self.num_envs:
            raise WorldModelsError(f"EnvPoolSlots resets slots 0..n-1 (n <= {self.num_envs}) together, got {slots}")
        self.close()
        self.batch = EnvPoolBatch(self.env_cfg, seeds, self.num_threads)
        return self.batch.reset()

    def worker_of(self, slots: np.ndarray) -> np.ndarray:
        return np.zeros(len(np.asarray(slots)), np.int64)

    def step_async(self, worker: int, slots: Sequence[int], actions: Sequence[Any]) -> None:
        self._result = self.batch.step(slots, actions)

    def step_wait(self, worker: int) -> tuple[np.ndarray, ...]:
        result, self._result = self._result, None
        return result

    def close(self) -> None:
        if self.batch is not None:
            self.batch.close()
            self.batch = None

    def __enter__(self) -> "EnvPoolSlots":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
