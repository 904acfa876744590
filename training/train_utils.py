"""Mechanics every stage shares: CLI arguments, checkpoints, TensorBoard writers, seeding, device/AMP.

Nothing here knows about a particular model; each stage script composes these pieces.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

from config import Config, config_from_dict, config_to_dict, get_config
from utils.errors import WorldModelsError
from utils.workers import configure_backend

CHECKPOINT_FORMAT_VERSION = 1

# The command that produces each stage's checkpoint, for "missing checkpoint" messages.
STAGE_COMMANDS = {
    "vae": "python -m training.train_vae --env {env}",
    "mdnrnn": "python -m training.train_mdnrnn --env {env}",
    "controller": "python -m training.train_controller --env {env}",
    "ppo": "python -m training.ppo_baseline --env {env}",
}


# --------------------------------------------------------------------------------------------- CLI
def add_common_args(parser: argparse.ArgumentParser, default_env: str = "ALE/Pong-v5") -> None:
    """The flags every stage script and train.py accept."""
    parser.add_argument("--env", default=default_env, help="Gymnasium env id (default: %(default)s)")
    parser.add_argument("--preset", default="default", help="smoke | default | paper")
    parser.add_argument("--experiment", default="", help="run name (default: the env's slug)")
    parser.add_argument("--seed", type=int, default=None, help="seeds envs, torch, numpy and CMA-ES")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--ray-address", default=None,
                        help="run rollout and evaluation workers on Ray: local (start one here) | auto | HOST:PORT")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
        help="override any config field, e.g. --set vae.beta=2.0 (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    """Build the Config from the common flags (explicit flags win over --set) and set the worker
    backend it names for this process."""
    cfg = get_config(args.env, preset=args.preset, overrides=args.overrides)
    if args.experiment:
        cfg.experiment.name = args.experiment
    if args.seed is not None:
        cfg.experiment.seed = args.seed
    if args.device is not None:
        cfg.experiment.device = args.device
    if args.ray_address is not None:
        cfg.experiment.ray_address = args.ray_address
    configure_backend(cfg.experiment)
    return cfg


def run_stage(stage: Callable[[Config], Any], description: str, argv: Optional[list[str]] = None) -> Any:
    """The command line of a stage script: the common flags, then `stage(config)`."""
    parser = argparse.ArgumentParser(description=description)
    add_common_args(parser)
    return stage(config_from_args(parser.parse_args(argv)))


def run_cli(main: Callable[[], Any]) -> None:
    """Run a CLI entry point: a WorldModelsError becomes one line on stderr and exit code 2."""
    try:
        main()
    except WorldModelsError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume from the last checkpoint", file=sys.stderr)
        sys.exit(130)


# ------------------------------------------------------------------------------------ seeding/device
def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA). Envs and CMA-ES take the seed explicitly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(spec: str = "auto") -> torch.device:
    """`auto` picks CUDA when available, else CPU; anything else must name a usable device."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise WorldModelsError(f"bad device {spec!r}; valid: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise WorldModelsError(f"device {spec!r} requested but CUDA is not available; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise WorldModelsError(f"bad device {spec!r}; valid: auto, cpu, cuda, cuda:N")
    return device


def amp_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for mixed precision on `device`: bf16 where supported, else fp16; None on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """Mixed-precision context for the forward pass (a no-op on CPU or when disabled)."""
    dtype = amp_dtype(device)
    if not enabled or dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(device: torch.device, enabled: bool) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 (bf16 has fp32's range and needs none)."""
    return torch.amp.GradScaler(device.type, enabled=enabled and amp_dtype(device) == torch.float16)


# Episode seeds: `purpose * 10^8 + experiment.seed * 10^6 + index`, so collection, controller training,
# the controller's re-evaluation and final evaluation never play the same episode, and each range
# depends on the one --seed. All stay below 2^31, which ALE requires.
SEED_PURPOSES = {"collect": 0, "controller": 1, "controller_eval": 2, "evaluate": 3, "ppo": 4}


def episode_seeds(cfg: Config, purpose: str, start: int, count: int) -> np.ndarray:
    """(count,) int64 env seeds for episodes start .. start+count-1 of `purpose`."""
    if not 0 <= start and start + count <= 10**6:
        raise WorldModelsError(f"episode indices {start}..{start + count} exceed the 10^6 per-purpose seed range")
    base = SEED_PURPOSES[purpose] * 10**8 + (cfg.experiment.seed % 100) * 10**6
    return base + np.arange(start, start + count, dtype=np.int64)


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


def checkpoint_path(cfg: Config, stage: str) -> Path:
    return experiment_dir(cfg, "checkpoints") / f"{stage}.pt"


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


def save_epoch_checkpoints(last_path: Path, best_path: Path, improved: bool, stage: str, cfg: Config,
                           **payload: Any) -> None:
    """End of an epoch: always the last checkpoint (for resume), and the best one when validation improved."""
    if improved:
        save_checkpoint(best_path, stage, cfg, **payload)
    save_checkpoint(last_path, stage, cfg, **payload)


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


def require_match(name: str, found: Any, expected: Any, path: Path) -> None:
    """Refuse a checkpoint whose `name` (e.g. vae.latent_size) differs from what this run expects."""
    if found != expected:
        raise WorldModelsError(f"{path} has {name}={found}, but this run expects {name}={expected}")
