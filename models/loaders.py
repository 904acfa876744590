"""Rebuild V, M, C and the World Models agent from their checkpoints.

Every stage and every script loads models here, the same way: a checkpoint is refused with one line
when it belongs to another environment, latent size, architecture, or (for M) another V.

    vae = load_vae(cfg, device)                      # best weights if present, else the last epoch's
    mdnrnn = load_mdnrnn(cfg, device, vae=vae)       # refuses an M trained on another V's latents
    agent = load_world_model_agent(cfg, device)      # V + M + the kept-best C behind reset()/act()
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Optional

import gymnasium as gym
import torch
from torch import nn

from config import Config
from models.agent import WorldModelAgent, WorldModelPolicy
from models.controller import Controller, controller_input_size, controller_output_size
from models.mdnrnn import MDNRNN
from models.vae import ConvVAE
from utils.actions import action_size
from utils.environment import env_action_space
from utils.errors import WorldModelsError
from utils.files import checkpoint_config, checkpoint_path, load_checkpoint, require_match, served_checkpoint


def _served_path(cfg: Config, stage: str) -> Path:
    return served_checkpoint(checkpoint_path(cfg, stage).parent, stage)


# ------------------------------------------------------------------------------------------------ V
def load_vae_checkpoint(cfg: Config, path: Path, device: Any = "cpu") -> dict[str, Any]:
    """Load a VAE checkpoint, refusing one of another env, latent size or architecture."""
    checkpoint = load_checkpoint(path, "vae", env_id=cfg.env.env_id, map_location=device)
    saved = checkpoint_config(checkpoint).vae
    require_match("vae.latent_size", saved.latent_size, cfg.vae.latent_size, path)
    require_match("vae.batch_norm", saved.batch_norm, cfg.vae.batch_norm, path)
    return checkpoint


def load_vae(cfg: Config, device: torch.device | str) -> ConvVAE:
    """The trained V for `cfg`'s experiment, in eval mode on `device` (best weights if present, else last).

    Fails with one line when there is no checkpoint, or it was trained on another env or latent size.
    """
    device = torch.device(device)
    return vae_from_checkpoint(load_vae_checkpoint(cfg, _served_path(cfg, "vae"), device), device, cfg.vae.channels_last)


def vae_from_checkpoint(checkpoint: dict[str, Any], device: torch.device | str, channels_last: bool) -> ConvVAE:
    """The V of a loaded V checkpoint, built as its saved config says, in eval mode on `device`."""
    saved = checkpoint_config(checkpoint).vae
    model = ConvVAE(saved.latent_size, saved.batch_norm)
    model.load_state_dict(checkpoint["model"])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.to(device).eval()


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-1 of a model's weights (names, dtypes, shapes, bytes): identifies the latents a V produces, and
    the V and M a C was trained with.

    Hashing the weights rather than the file's size and mtime survives copies and ignores what
    changes nothing (optimizer state, metrics).
    """
    digest = hashlib.sha1()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def agent_fingerprint(vae: nn.Module, mdnrnn: nn.Module, params: torch.Tensor) -> str:
    """SHA-1 of a World Models agent: its V's and M's weights and C's parameters (N,). An evaluation
    records it, so that another tool can check it is pairing its episodes with the same agent's."""
    digest = hashlib.sha1(f"{weights_fingerprint(vae)}:{weights_fingerprint(mdnrnn)}:".encode())
    digest.update(torch.as_tensor(params).detach().cpu().float().contiguous().reshape(-1).numpy().tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ M
def env_action_size(cfg: Config) -> int:
    """A: the action vector width of `cfg`'s env (with its env_kwargs, e.g. continuous=True)."""
    return action_size(env_action_space(cfg.env))


def load_mdnrnn_checkpoint(cfg: Config, path: Path, device: Any = "cpu") -> dict[str, Any]:
    """Load an M checkpoint, refusing one of another env, latent size or architecture."""
    checkpoint = load_checkpoint(path, "mdnrnn", env_id=cfg.env.env_id, map_location=device)
    saved = checkpoint_config(checkpoint)
    require_match("vae.latent_size", checkpoint["latent_size"], cfg.vae.latent_size, path)
    require_match("mdnrnn.hidden_size", saved.mdnrnn.hidden_size, cfg.mdnrnn.hidden_size, path)
    require_match("mdnrnn.num_mixtures", saved.mdnrnn.num_mixtures, cfg.mdnrnn.num_mixtures, path)
    return checkpoint


def load_mdnrnn(cfg: Config, device: torch.device | str, vae: Optional[ConvVAE] = None) -> MDNRNN:
    """The trained M for `cfg`'s experiment, in eval mode on `device` (best weights if present, else last).

    Fails with one line when there is no checkpoint, or it was trained on another env, latent size,
    action size or architecture; given `vae`, also when M was trained on another V's latents.
    """
    device = torch.device(device)
    path = _served_path(cfg, "mdnrnn")
    checkpoint = load_mdnrnn_checkpoint(cfg, path, device)
    require_match("action_size", checkpoint["action_size"], env_action_size(cfg), path)
    if vae is not None and checkpoint["vae_fingerprint"] != weights_fingerprint(vae):
        raise WorldModelsError(f"{path} was trained on the latents of another VAE; retrain it: python -m training.train_mdnrnn --env {cfg.env.env_id}")
    model = MDNRNN(cfg.vae.latent_size, checkpoint["action_size"], cfg.mdnrnn.hidden_size, cfg.mdnrnn.num_mixtures)
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval()


# ------------------------------------------------------------------------------------------------ C
def make_controller(cfg: Config, action_space: gym.Space) -> Controller:
    """C's architecture for `cfg` (its input per `controller.inputs`), with fresh parameters."""
    input_size = controller_input_size(cfg.vae.latent_size, cfg.mdnrnn.hidden_size, cfg.controller.inputs)
    return Controller(input_size, controller_output_size(action_space, cfg.controller.action_mapping),
                      cfg.controller.hidden_sizes)


def load_controller_checkpoint(cfg: Config, device: Any = "cpu") -> dict[str, Any]:
    """Stage 4's checkpoint (kept-best and mean parameters, CMA-ES history), refused when its C has
    other inputs or layers than `cfg`'s."""
    path = checkpoint_path(cfg, "controller")
    checkpoint = load_checkpoint(path, "controller", cfg.env.env_id, map_location=device)
    saved = checkpoint["config"]["controller"]
    require_match("controller.inputs", saved["inputs"], cfg.controller.inputs, path)
    require_match("controller.hidden_sizes", tuple(saved["hidden_sizes"]), tuple(cfg.controller.hidden_sizes), path)
    return checkpoint


def build_policy(cfg: Config, device: torch.device, action_space: gym.Space, exploration: float = 0.0) -> WorldModelPolicy:
    """V and M from their checkpoints (checked against cfg and each other) and C's architecture."""
    vae = load_vae(cfg, device)
    mdnrnn = load_mdnrnn(cfg, device, vae=vae)
    controller = make_controller(cfg, action_space)
    return WorldModelPolicy(vae, mdnrnn, controller.layer_shapes, action_space, cfg.controller.inputs,
                            cfg.controller.sample_actions, device, cfg.experiment.seed, exploration,
                            cfg.controller.action_mapping, cfg.controller.sample_z)


def chosen_controller_params(checkpoint: dict[str, Any], cfg: Config) -> torch.Tensor:
    """The C of a stage-4 checkpoint that `experiment.controller_params` names: the kept best or CMA-ES's mean. (N,)"""
    return checkpoint[f"{cfg.experiment.controller_params}_params"]


def load_world_model_agent(cfg: Config, device: torch.device | str, exploration: float = 0.0) -> WorldModelAgent:
    """The trained World Models agent of `cfg`'s experiment: V, M and C, the kept best or CMA-ES's mean
    (`experiment.controller_params`), its actions perturbed by `explore_actions` when `exploration` > 0."""
    device = torch.device(device)
    policy = build_policy(cfg, device, env_action_space(cfg.env), exploration)
    checkpoint = load_controller_checkpoint(cfg, device)
    return WorldModelAgent(policy, chosen_controller_params(checkpoint, cfg))
