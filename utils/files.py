"""Files every stage writes and reads: run folders, atomic writes, checkpoints, TensorBoard writers.

Nothing here knows about a particular model: a checkpoint is a dict of tensors and plain values that a
stage fills, and the loaders in `models/loaders.py` rebuild V, M and C from it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from config import Config, config_from_dict, config_to_dict
from utils.errors import WorldModelsError

CHECKPOINT_FORMAT_VERSION = 1

# The command that produces each stage's checkpoint, for "missing checkpoint" messages.
STAGE_COMMANDS = {
    "vae": "python -m training.train_vae --env {env}",
    "mdnrnn": "python -m training.train_mdnrnn --env {env}",
    "controller": "python -m training.train_controller --env {env}",
    "ppo": "python -m training.ppo_baseline --env {env}",
}


# ----------------------------------------------------------------------------------------- paths
def experiment_dir(cfg: Config, kind: str) -> Path:
    """`checkpoints/<experiment>`, `logs/<experiment>`, `videos/<experiment>` or `results/<experiment>`."""
    roots = {
        "checkpoints": cfg.experiment.checkpoint_dir,
        "logs": cfg.experiment.log_dir,
        "videos": cfg.experiment.video_dir,
        "results": cfg.experiment.results_dir,
    }
    return Path(roots[kind]) / cfg.experiment_name


def of_experiment(cfg: Config, name: str) -> Config:
    """A copy of `cfg` whose folders are experiment `name`'s (another run's checkpoints and logs to read)."""
    other = copy.deepcopy(cfg)
    other.experiment.name = name
    return other


def checkpoint_path(cfg: Config, stage: str) -> Path:
    """`checkpoints/<experiment>/<stage>.pt`: the last checkpoint of a stage (its resume point)."""
    return experiment_dir(cfg, "checkpoints") / f"{stage}.pt"


def best_checkpoint_path(cfg: Config, stage: str) -> Path:
    """`checkpoints/<experiment>/<stage>_best.pt`: the weights of a stage's lowest validation loss."""
    return experiment_dir(cfg, "checkpoints") / f"{stage}_best.pt"


def served_checkpoint(folder: Path, stage: str) -> Path:
    """What a later stage loads from a checkpoint folder: `<stage>_best.pt` (`best_checkpoint_path`) if
    validation ever improved, else `<stage>.pt`; tools/export_weights.py copies the same file."""
    best = Path(folder) / f"{stage}_best.pt"
    return best if best.is_file() else Path(folder) / f"{stage}.pt"


def make_writer(cfg: Config, stage: str):
    """A TensorBoard SummaryWriter under `logs/<experiment>/<stage>/`."""
    from torch.utils.tensorboard import SummaryWriter

    log_dir = experiment_dir(cfg, "logs") / stage
    log_dir.mkdir(parents=True, exist_ok=True)
    return SummaryWriter(log_dir=str(log_dir))


# ----------------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path` (atomic on POSIX).

    A crash mid-write leaves at most a `*.tmp` file, never a half-written `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The suffix stays last: writers such as ffmpeg pick the format from it.
    tmp_path = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_fingerprinted_npz(path: Path, fingerprints: dict[str, str], **arrays: Any) -> None:
    """Write `arrays` to the .npz `path` atomically, with each fingerprint (what the arrays were derived
    from, e.g. V's weights) stored beside them as a string entry for `read_fingerprinted_npz`."""
    with atomic_path(path) as tmp_path:
        with open(tmp_path, "wb") as handle:
            np.savez(handle, **arrays, **{name: np.str_(value) for name, value in fingerprints.items()})


def read_fingerprinted_npz(path: Path, fingerprints: dict[str, str],
                           keys: Sequence[str]) -> tuple[Optional[dict[str, Any]], list[str]]:
    """A derived file that is still valid: `({key: array}, [])` when `path` holds every fingerprint with
    the given value; otherwise `(None, the names of the missing or changed fingerprints)` (all of them
    when there is no file), so the caller rebuilds it."""
    if not Path(path).is_file():
        return None, list(fingerprints)
    with np.load(path, allow_pickle=False) as archive:
        stale = [name for name, value in fingerprints.items() if name not in archive.files or str(archive[name]) != value]
        return (None, stale) if stale else ({key: archive[key] for key in keys}, [])


def write_results_table(folder: Path, stem: str, markdown: str, data: dict[str, Any]) -> Path:
    """Write a results table twice, atomically: `folder/<stem>.md` for people, `folder/<stem>.json` for tools.

    Returns the markdown file's path.
    """
    markdown_path = Path(folder) / f"{stem}.md"
    with atomic_path(markdown_path) as tmp:
        tmp.write_text(markdown + "\n")
    with atomic_path(markdown_path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(data, indent=1))
    return markdown_path


def ensure_writable_dir(path: Path) -> Path:
    """Create `path` if needed and fail with one clear line if it cannot be written."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise WorldModelsError(f"cannot write to {path}: {error.strerror}; choose another folder") from None
    return path


# ------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, stage: str, cfg: Config, **payload: Any) -> Path:
    """Write a checkpoint atomically: format_version, stage, env_id, config, plus `payload`.

    `payload` holds tensors and plain values only (state_dicts, progress, metrics), so the file loads
    with `torch.load(weights_only=True)` and can never run code.
    """
    checkpoint = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "stage": stage,
        "env_id": cfg.env.env_id,
        "config": config_to_dict(cfg),
        **payload,
    }
    with atomic_path(Path(path)) as tmp_path:
        torch.save(checkpoint, tmp_path)
    return Path(path)


def load_checkpoint(
    path: Path, stage: str, env_id: Optional[str] = None, map_location: Any = "cpu"
) -> dict[str, Any]:
    """Load and validate a checkpoint written by `save_checkpoint`.

    Refuses, with one line naming the problem and the fix: a missing file, a corrupt file, another
    format version, another stage's checkpoint, or a checkpoint of another environment.
    """
    path = Path(path)
    make = STAGE_COMMANDS.get(stage, "").format(env=env_id or "<env>")
    if not path.is_file():
        hint = f"; create it with: {make}" if make else ""
        raise WorldModelsError(f"no {stage} checkpoint at {path}{hint}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise WorldModelsError(f"cannot read checkpoint {path}: {type(error).__name__}: {error}".splitlines()[0]) from None
    if not isinstance(checkpoint, dict) or "format_version" not in checkpoint:
        raise WorldModelsError(f"{path} is not a checkpoint of this project")
    if checkpoint["format_version"] != CHECKPOINT_FORMAT_VERSION:
        raise WorldModelsError(
            f"{path} has format version {checkpoint['format_version']}, this code reads {CHECKPOINT_FORMAT_VERSION}"
        )
    if checkpoint.get("stage") != stage:
        raise WorldModelsError(f"{path} is a {checkpoint.get('stage')!r} checkpoint, expected {stage!r}")
    if env_id is not None and checkpoint.get("env_id") != env_id:
        raise WorldModelsError(
            f"{path} was trained on {checkpoint.get('env_id')}, not {env_id}; use --experiment to pick another run"
        )
    return checkpoint


def checkpoint_config(checkpoint: dict[str, Any]) -> Config:
    """The Config a checkpoint was trained with."""
    return config_from_dict(checkpoint["config"])


def trained_config(cfg: Config, stage: str, missing_hint: str = "") -> Config:
    """The config `stage`'s checkpoint of `cfg`'s experiment was trained with, as a run that plays it needs
    it: how frames look and how C acts are the checkpoint's (V's crop, C's inputs and action mapping);
    the folders, device, episode cap, serve rule (`env.fire_to_serve`) and backend are this run's, so every
    method plays the same task even when C was trained on shortened episodes or on the other backend. `missing_hint` ends the error when
    there is no checkpoint (e.g. the command that trains one)."""
    path = checkpoint_path(cfg, stage)
    if not path.is_file():
        raise WorldModelsError(f"no {stage} checkpoint at {path}" + (f"; {missing_hint}" if missing_hint else ""))
    trained = checkpoint_config(load_checkpoint(path, stage, cfg.env.env_id))
    trained.experiment = cfg.experiment
    trained.env.max_episode_steps = cfg.env.max_episode_steps
    trained.env.fire_to_serve = cfg.env.fire_to_serve
    trained.env.backend = cfg.env.backend
    return trained


def require_match(name: str, found: Any, expected: Any, path: Path) -> None:
    """Refuse a checkpoint whose `name` (e.g. vae.latent_size) differs from what this run expects."""
    if found != expected:
        raise WorldModelsError(f"{path} has {name}={found}, but this run expects {name}={expected}")
