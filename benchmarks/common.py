"""What several benchmarks build the same way: V, M and C at a config's sizes with seeded random weights.

Throughput does not depend on what the weights learned, so the controller, dream and scale benchmarks
time untrained models and need no checkpoints.
"""

from __future__ import annotations

import gymnasium as gym
import torch

from config import Config
from models.agent import WorldModelPolicy
from models.loaders import make_controller
from models.mdnrnn import MDNRNN
from models.vae import ConvVAE
from utils.actions import action_size


def untrained_policy(cfg: Config, action_space: gym.Space) -> tuple[WorldModelPolicy, int]:
    """A batched V -> C -> M policy with torch seed 0 weights, and C's number of parameters."""
    torch.manual_seed(0)
    vae = ConvVAE(cfg.vae.latent_size)
    mdnrnn = MDNRNN(cfg.vae.latent_size, action_size(action_space), cfg.mdnrnn.hidden_size, cfg.mdnrnn.num_mixtures)
    controller = make_controller(cfg, action_space)
    return WorldModelPolicy(vae, mdnrnn, controller.layer_shapes, action_space), controller.num_parameters
