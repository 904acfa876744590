"""What the stage scripts share: their command line, and mixed precision for V and M.

Files, checkpoints and seeds are in `utils/` (`utils.files`, `utils.runtime`), rebuilding models from
checkpoints in `models/loaders.py`, the epoch / resume / best-checkpoint loop of V and M in `training/epochs.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any, Callable, Optional

import torch

from config import Config, get_config
from utils.environment import resolve_env_id
from utils.envpool_envs import resolve_backend
from utils.errors import WorldModelsError
from utils.workers import configure_backend


# --------------------------------------------------------------------------------------------- CLI
def add_common_args(parser: argparse.ArgumentParser, default_env: str = "ALE/Pong-v5") -> None:
    """The flags every stage script and train.py accept."""
    parser.add_argument("--env", default=default_env, help="Gymnasium env id (default: %(default)s)")
    parser.add_argument("--preset", default="default", help="smoke | default | paper")
    parser.add_argument("--experiment", default="", help="run name (default: the env's slug)")
    parser.add_argument("--seed", type=int, default=None, help="0..99: seeds envs, torch, numpy and CMA-ES")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--backend", default=None,
                        help="who steps the env: auto (EnvPool where installed and it ports the env) | gymnasium | envpool")
    parser.add_argument("--ray-address", default=None,
                        help="run rollout and evaluation workers on Ray: local (start one here) | auto | HOST:PORT")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
        help="override any config field, e.g. --set vae.beta=2.0 (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    """Build and validate the Config from the common flags (explicit flags win over --set), check the
    env id once, and set the worker backend it names for this process. Everything a bad flag can
    break fails here, before any stage writes a file."""
    overrides = list(args.overrides)
    for key, value in (("env.backend", args.backend), ("experiment.name", args.experiment), ("experiment.seed", args.seed),
                       ("experiment.device", args.device), ("experiment.ray_address", args.ray_address)):
        if value not in (None, ""):
            overrides.append(f"{key}={value}")
    cfg = get_config(args.env, preset=args.preset, overrides=overrides)
    resolve_env_id(cfg.env.env_id)  # an unknown env fails now, not after a stage has started
    resolve_backend(cfg.env)  # and so does EnvPool asked for where it cannot serve
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


# ---------------------------------------------------------------------------------- mixed precision
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
