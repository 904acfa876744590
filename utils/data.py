"""Rollout storage on disk and the frame loader that V's training reads.

Layout: `data/<env-slug>/rollouts/ep_000123.npz`, one file per episode, written atomically, holding

    obs        (T, 64, 64, 3) uint8     the frame before each action
    actions    (T, A) float32           one-hot for discrete action spaces
    rewards    (T,) float32
    terminated (T,) bool                True only on the last step of an episode the game ended
    env_id, policy (str), seed (int64)  metadata

Episode i is always played from the same env seed, so an interrupted collection resumes by playing
the missing indices only, and a file either exists whole or not at all.
"""

from __future__ import annotations

import copy
import queue
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from config import Config
from utils.errors import WorldModelsError
from utils.files import atomic_path

EPISODE_KEYS = ("obs", "actions", "rewards", "terminated")


@dataclass
class Episode:
    """One recorded episode in the rollout format of the design.

    obs: (T, S, S, 3) uint8 — the frame before each action; actions: (T, A) float32 (one-hot for
    discrete); rewards: (T,) float32; terminated: (T,) bool (True on the last step of a game that
    ended, False when the step cap truncated it).
    """

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    seed: int

    @property
    def length(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def total_reward(self) -> float:
        return float(self.rewards.sum())


def rollout_dir(cfg: Config) -> Path:
    """Where stage 1 writes and V and M first read: `data/<env-slug>/<collect.rollout_folder>/rollouts`
    when that is set; otherwise random-policy rollouts are shared by every experiment on the env with
    the same --seed (`data/<env-slug>/rollouts`, `.../rollouts-seed<k>` for seed k > 0: the episodes are
    the seed's) and a trained agent's belong to its experiment (`data/<env-slug>/<experiment>/rollouts`)."""
    root = Path(cfg.experiment.data_dir) / cfg.env_slug
    if cfg.collect.rollout_folder:
        return root / cfg.collect.rollout_folder / "rollouts"
    if not is_shared_rollout_dir(cfg):
        return root / cfg.experiment_name / "rollouts"
    return root / ("rollouts" if cfg.experiment.seed == 0 else f"rollouts-seed{cfg.experiment.seed}")


def is_shared_rollout_dir(cfg: Config) -> bool:
    """Whether `rollout_dir(cfg)` may hold other experiments' data: the env's random-data folder of this
    seed, or a named `collect.rollout_folder` (not an experiment's own trained-agent data)."""
    return bool(cfg.collect.rollout_folder) or cfg.collect.policy != "controller"


def episode_path(folder: Path, index: int) -> Path:
    return Path(folder) / f"ep_{index:06d}.npz"


def episode_index(path: Path) -> int:
    """`.../ep_000123.npz` -> 123, the episode's index in its collection (its seed is the seed of index
    `collect.seed_offset` + 123)."""
    return int(Path(path).stem.split("_")[1])


def save_episode(path: Path, episode: Episode, env_id: str, policy: str, compress: bool = False,
                 fire_to_serve: bool = False) -> None:
    """Write one episode atomically (temp file + rename), with what it was played under (`env.fire_to_serve`)."""
    save = np.savez_compressed if compress else np.savez
    with atomic_path(path) as tmp_path:
        with open(tmp_path, "wb") as handle:
            save(
                handle,
                obs=episode.obs,
                actions=episode.actions,
                rewards=episode.rewards,
                terminated=episode.terminated,
                seed=np.int64(episode.seed),
                env_id=np.str_(env_id),
                policy=np.str_(policy),
                fire_to_serve=np.bool_(fire_to_serve),
            )


# Keys that files written before them lack, with the value those files were played under.
KEYS_ADDED_LATER = {"fire_to_serve": np.bool_(False)}


def load_episode(path: Path, keys: Sequence[str] = EPISODE_KEYS) -> dict[str, np.ndarray]:
    """Read `keys` of one episode file; a corrupt or foreign file fails with its name."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            data = {key: archive[key] if key in archive.files or key not in KEYS_ADDED_LATER else KEYS_ADDED_LATER[key]
                    for key in keys}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as error:
        raise WorldModelsError(
            f"corrupt episode file {path} ({type(error).__name__}); delete it and re-run collection to replace it"
        ) from None
    if "obs" in data and (data["obs"].ndim != 4 or data["obs"].dtype != np.uint8 or len(data["obs"]) == 0):
        raise WorldModelsError(f"corrupt episode file {path}: obs has shape {data['obs'].shape} {data['obs'].dtype}")
    return data


def episode_lengths(paths: Sequence[Path]) -> np.ndarray:
    """(len(paths),) int64 frames per episode."""
    # The rewards array has one entry per frame and is tiny: reading it avoids loading any frames.
    return np.array([len(load_episode(path, keys=("rewards",))["rewards"]) for path in paths], dtype=np.int64)


def load_episode_metadata(path: Path) -> dict[str, object]:
    data = load_episode(path, keys=("seed", "env_id", "policy", "fire_to_serve"))
    return {"seed": int(data["seed"]), "env_id": str(data["env_id"]), "policy": str(data["policy"]),
            "fire_to_serve": bool(data["fire_to_serve"])}


def list_episodes(folder: Path) -> list[Path]:
    """The complete episode files in `folder`, in index order (temp files of a crash are ignored)."""
    return sorted(Path(folder).glob("ep_*.npz"))


def require_episodes(cfg: Config) -> list[Path]:
    """The episodes V and M train on: `rollout_dir(cfg)`'s first `collect.num_rollouts` (a shared folder
    may hold more, collected by a run that asked for more), then every episode of each
    `collect.extra_rollouts` folder; a missing set is one line naming the command that collects it."""
    paths = [path for path in list_episodes(rollout_dir(cfg)) if episode_index(path) < cfg.collect.num_rollouts]
    if not paths:
        raise WorldModelsError(
            f"no rollouts in {rollout_dir(cfg)}; collect them first: python -m training.collect --env {cfg.env.env_id}"
        )
    for folder in cfg.collect.extra_rollouts:
        extra = list_episodes(Path(folder))
        if not extra:
            raise WorldModelsError(f"collect.extra_rollouts names {folder}, which holds no episodes")
        paths += extra
    return paths


def split_episodes(paths: Sequence[Path], val_fraction: float) -> tuple[list[Path], list[Path]]:
    """Hold out the episodes whose index is a multiple of k = round(1 / val_fraction) for validation, in
    every folder. An episode's side depends on its own index only: it stays put when a folder grows or
    another round's folder joins the list, so a model warm-started from an earlier round
    (`mdnrnn.init_from`) never validates on episodes it trained on. Tiny sets where that would leave
    nothing to train on (every folder's episode 0 only) hold out every k-th position instead."""
    paths = list(paths)
    if len(paths) < 2 or val_fraction <= 0:
        return paths, paths[:0]
    stride = max(2, int(round(1.0 / val_fraction)))
    val = [p for p in paths if episode_index(p) % stride == 0]
    if len(val) == len(paths):
        val = paths[::stride]
    held_out = set(val)
    return [p for p in paths if p not in held_out], val


class FrameChunkLoader:
    """Shuffled batches of uint8 frames from episode files, never holding the whole data set.

    Each pass shuffles the episode order, loads `episodes_per_chunk` episodes at a time (a background
    thread reads the next chunk while the model trains on this one), shuffles the frames within the
    chunk and yields `(B, 64, 64, 3) uint8` numpy batches by one fancy-index per batch.

    Data-parallel training shards at the episode level: given the same seed, every one of `world_size`
    loaders draws the same episode order and reads episodes order[rank::world_size], so each file is
    read by one rank only, and each rank shuffles the frames of its own episodes.
    """

    def __init__(self, paths: Sequence[Path], batch_size: int, episodes_per_chunk: int, seed: int, shuffle: bool = True,
                 drop_last: bool = True, rank: int = 0, world_size: int = 1):
        if not paths:
            raise WorldModelsError("no episodes to load frames from")
        self.paths = list(paths)
        self.batch_size, self.episodes_per_chunk = batch_size, max(1, episodes_per_chunk)
        self.shuffle, self.drop_last = shuffle, drop_last
        self.rank, self.world_size = rank, world_size
        self.rng = np.random.default_rng(seed)

    def _episode_order(self, rng: np.random.Generator) -> np.ndarray:
        return rng.permutation(len(self.paths)) if self.shuffle else np.arange(len(self.paths))

    def next_pass_shards(self) -> list[np.ndarray]:
        """Indices into `paths` of the episodes each rank reads in the next pass (draws no randomness)."""
        order = self._episode_order(copy.deepcopy(self.rng))
        return [order[rank :: self.world_size] for rank in range(self.world_size)]

    def _chunks(self) -> Iterator[np.ndarray]:
        order = self._episode_order(self.rng)[self.rank :: self.world_size]
        for start in range(0, len(order), self.episodes_per_chunk):
            chunk = [self.paths[i] for i in order[start : start + self.episodes_per_chunk]]
            yield np.concatenate([load_episode(path, keys=("obs",))["obs"] for path in chunk])

    def __iter__(self) -> Iterator[np.ndarray]:
        carry: Optional[np.ndarray] = None
        for frames in _prefetch(self._chunks()):
            if carry is not None:
                frames = np.concatenate([carry, frames])
            if self.shuffle:
                frames = frames[self.rng.permutation(len(frames))]
            full = len(frames) // self.batch_size * self.batch_size
            for start in range(0, full, self.batch_size):
                yield frames[start : start + self.batch_size]
            carry = frames[full:] if full < len(frames) else None
        if carry is not None and len(carry) and not self.drop_last:
            yield carry


def _prefetch(iterator: Iterator[np.ndarray], depth: int = 1) -> Iterator[np.ndarray]:
    """Run `iterator` in a background thread, `depth` items ahead (file reads release the GIL)."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def produce() -> None:
        try:
            for item in iterator:
                buffer.put(item)
        except BaseException as error:  # re-raised in the consumer, with its message intact
            buffer.put(error)
            return
        buffer.put(done)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    while True:
        item = buffer.get()
        if item is done:
            break
        if isinstance(item, BaseException):
            raise item
        yield item
    thread.join()
