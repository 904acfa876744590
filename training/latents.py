"""The latent cache: every collected frame encoded once by V, for M's training and the dream's starts.

`checkpoints/<experiment>/latents.npz` holds mu and logvar per frame (float32) plus each episode's
actions, rewards and terminal flags, and fingerprints of V's weights and of the rollout files: it is
rebuilt when either changes, and read back otherwise. A rebuild under the same V encodes only the
episodes that no cache it may reuse holds (this one's, or the last round's of the iterative procedure
with V kept: `mdnrnn.init_from`), each known by its file's path, size and modification time. Stage 3 trains M on it; stage 4 and evaluate.py
start dreams from its episodes' first frames.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
from tqdm import tqdm

from config import Config
from models.loaders import weights_fingerprint
from models.vae import ConvVAE, frames_to_input
from training.distributed import print_main
from utils.data import FrameChunkLoader, load_episode
from utils.errors import WorldModelsError
from utils.files import experiment_dir, read_fingerprinted_npz, write_fingerprinted_npz


def latent_cache_path(cfg: Config) -> Path:
    """`checkpoints/<experiment>/latents.npz`: beside the VAE whose latents it holds."""
    return experiment_dir(cfg, "checkpoints") / "latents.npz"


def rollouts_fingerprint(paths: list[Path]) -> str:
    """SHA-1 of the episode files' names, sizes and modification times: changes when data is added or re-collected."""
    digest = hashlib.sha1()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


def episode_keys(paths: Sequence[Path]) -> list[str]:
    """One key per episode file, "<absolute path>:<size>:<mtime ns>": the same file unchanged, the same key."""
    keys = []
    for path in paths:
        stat = Path(path).stat()
        keys.append(f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    return keys


# ------------------------------------------------------------------------------------ latent cache
class LatentCache(NamedTuple):
    """Every frame's V posterior, with the episode data M trains on, episodes concatenated.

    mu, logvar: (N, Z) float32; actions: (N, A) float32; rewards: (N,) float32; terminated: (N,) bool;
    offsets: (E + 1,) int64, episode e is rows offsets[e]:offsets[e+1]; episode_names: (E,) file names.
    """

    mu: np.ndarray
    logvar: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    offsets: np.ndarray
    episode_names: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


@torch.no_grad()
def encode_rollouts(
    vae: ConvVAE, paths: list[Path], device: torch.device, batch_size: int, channels_last: bool, episodes_per_chunk: int = 64
) -> LatentCache:
    """Encode every frame of `paths` (in order) with V: batches of `batch_size` uint8 frames go to the
    device, one encoder pass each. V runs in fp32: the cache serves every epoch, so precision beats a
    one-off speed-up."""
    episodes = [load_episode(path, keys=("actions", "rewards", "terminated")) for path in paths]
    lengths = np.array([len(episode["rewards"]) for episode in episodes], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    total = int(offsets[-1])
    mu = np.empty((total, vae.latent_size), dtype=np.float32)
    logvar = np.empty_like(mu)
    loader = FrameChunkLoader(paths, batch_size, episodes_per_chunk, seed=0, shuffle=False, drop_last=False)
    position = 0
    with tqdm(total=total, desc="mdnrnn encode", unit="frame") as bar:
        for frames_uint8 in loader:
            frames = torch.from_numpy(frames_uint8)
            if device.type == "cuda":
                frames = frames.pin_memory()
            batch_mu, batch_logvar = vae.encode(frames_to_input(frames, device, channels_last))
            mu[position : position + len(frames)] = batch_mu.float().cpu().numpy()
            logvar[position : position + len(frames)] = batch_logvar.float().cpu().numpy()
            position += len(frames)
            bar.update(len(frames))
    if position != total:
        raise WorldModelsError(f"episode files changed while encoding ({position} frames read, {total} expected); re-run")
    return LatentCache(
        mu=mu,
        logvar=logvar,
        actions=np.concatenate([episode["actions"] for episode in episodes]).astype(np.float32),
        rewards=np.concatenate([episode["rewards"] for episode in episodes]).astype(np.float32),
        terminated=np.concatenate([episode["terminated"] for episode in episodes]).astype(bool),
        offsets=offsets,
        episode_names=np.array([path.name for path in paths]),
    )


def load_or_encode_latents(cfg: Config, vae: ConvVAE, paths: list[Path], device: torch.device,
                           reuse: Sequence[Path] = ()) -> LatentCache:
    """The latent cache of `paths` under V, read from disk when its fingerprints still match, else
    built and written atomically: episodes that this experiment's old cache or a cache in `reuse` holds
    under the same V are copied from it, the others encoded."""
    path = latent_cache_path(cfg)
    vae_fingerprint = weights_fingerprint(vae)
    fingerprints = {"vae_fingerprint": vae_fingerprint, "rollouts_fingerprint": rollouts_fingerprint(paths)}
    saved, stale = read_fingerprinted_npz(path, fingerprints, LatentCache._fields)
    if saved is not None:
        print_main(f"mdnrnn: latent cache {path} is up to date")
        return LatentCache(**saved)
    if path.is_file():
        print(f"mdnrnn: latent cache {path} is stale ({' and '.join(n.split('_')[0] for n in stale)} changed); re-encoding")
    keys = episode_keys(paths)
    known = _cached_episodes([path, *reuse], vae_fingerprint, set(keys))
    new_keys, new_paths = [key for key in keys if key not in known], [p for p, key in zip(paths, keys) if key not in known]
    if known:
        print(f"mdnrnn: {len(paths) - len(new_paths)} of {len(paths)} episodes are in an earlier cache of this V; "
              f"encoding the other {len(new_paths)}")
    encoded = (encode_rollouts(vae, new_paths, device, cfg.mdnrnn.encode_batch_size, cfg.vae.channels_last,
                               cfg.vae.episodes_per_chunk) if new_paths else None)
    for index, key in enumerate(new_keys):  # listed before `known` grows below
        rows = slice(encoded.offsets[index], encoded.offsets[index + 1])
        known[key] = tuple(getattr(encoded, field)[rows] for field in _PER_FRAME)
    per_episode = [known[key] for key in keys]
    lengths = [len(columns[0]) for columns in per_episode]
    cache = LatentCache(*(np.concatenate([columns[i] for columns in per_episode]) for i in range(len(_PER_FRAME))),
                        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                        episode_names=np.array([episode.name for episode in paths]))
    write_fingerprinted_npz(path, fingerprints, **cache._asdict(), episode_keys=np.array(keys))
    print(f"mdnrnn: encoded {len(new_paths)} episodes ({len(cache.mu)} frames in all) into {path}")
    return cache


_PER_FRAME = ("mu", "logvar", "actions", "rewards", "terminated")  # LatentCache's per-frame columns, in order


def _cached_episodes(caches: Sequence[Path], vae_fingerprint: str, wanted: set[str]) -> dict[str, tuple[np.ndarray, ...]]:
    """Of the episodes keyed in `wanted`, those a cache file in `caches` holds under this V: key -> its
    rows of the `_PER_FRAME` columns. Caches of another V, or written before keys were kept, give none."""
    found: dict[str, tuple[np.ndarray, ...]] = {}
    for cache_path in caches:
        if not Path(cache_path).is_file():
            continue
        with np.load(cache_path, allow_pickle=False) as archive:
            if "episode_keys" not in archive.files or str(archive["vae_fingerprint"]) != vae_fingerprint:
                continue
            offsets, columns = archive["offsets"], [archive[field] for field in _PER_FRAME]
            for index, key in enumerate(archive["episode_keys"].tolist()):
                if key in wanted and key not in found:
                    rows = slice(offsets[index], offsets[index + 1])
                    found[key] = tuple(column[rows] for column in columns)
    return found
