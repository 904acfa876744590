"""Stage 1: rollouts -> `data/<env-slug>/rollouts/` (random policy) or `data/<env-slug>/<experiment>/rollouts/`.

    python -m training.collect --env LunarLander-v3 --set collect.num_rollouts=200 --set collect.workers=2
    python -m training.collect --env LunarLander-v3 --experiment more --set collect.policy=controller \
        --set collect.controller_experiment=wm-lunar --set collect.exploration=0.1   # a trained agent plays

The loop itself (workers, seeds, resume, atomic files) is `utils.environment.collect_episodes`, which the
seed README's `collect_random_rollouts` also runs; this stage adds the policies that need V, M and C:
the paper's iterative procedure (`controller`: a trained agent with exploration noise) and the paper's
CarRacing data (`random_controller`: a randomly initialised C per episode behind an untrained V and M).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

import gymnasium as gym
import numpy as np
import torch

from config import Config
from models.agent import WorldModelAgent, WorldModelPolicy
from models.controller import num_parameters
from models.loaders import load_world_model_agent, make_controller
from models.mdnrnn import MDNRNN
from models.vae import ConvVAE
from utils.actions import action_size
from training.train_utils import add_common_args, config_from_args, run_cli
from utils.environment import Agent, collect_episodes, make_random_agent
from utils.errors import WorldModelsError
from utils.files import of_experiment


class RandomControllerAgent:
    """`collect.policy=random_controller`, the paper code's CarRacing data-collection policy. Every episode
    gets its own untrained V and M and a C whose parameters are standard Cauchy draws times a scale
    s ~ U(0, 0.01) (its `init_random_model_params(stdev=np.random.rand() * 0.01)`, which re-draws V's and
    M's weights too), all from the episode's seed. With such small scales most weights are tiny and C's
    outputs stay near 0 (CarRacing, paper mapping: ahead at half gas, no brake), but the Cauchy tails
    give a few large weights, so some episodes steer, brake or spin hard: a mix unlike uniform or
    random-walk noise."""

    def __init__(self, cfg: Config, action_space: gym.Space):
        self.cfg, self.action_space = cfg, action_space
        self.layer_shapes = make_controller(cfg, action_space).layer_shapes
        self.agent: Optional[WorldModelAgent] = None

    def reset(self, seed: Optional[int] = None) -> None:
        cfg, space = self.cfg, self.action_space
        seed = cfg.experiment.seed if seed is None else int(seed)
        with torch.random.fork_rng():  # this episode's random V and M, leaving the global stream alone
            torch.manual_seed(seed)
            vae = ConvVAE(cfg.vae.latent_size, cfg.vae.batch_norm)
            mdnrnn = MDNRNN(cfg.vae.latent_size, action_size(space), cfg.mdnrnn.hidden_size, cfg.mdnrnn.num_mixtures)
        policy = WorldModelPolicy(vae, mdnrnn, self.layer_shapes, space, cfg.controller.inputs, seed=seed,
                                  action_mapping=cfg.controller.action_mapping, sample_z=cfg.controller.sample_z)
        rng = np.random.default_rng(seed)
        scale = rng.uniform(0.0, 0.01)
        params = rng.standard_cauchy(num_parameters(self.layer_shapes)) * scale
        self.agent = WorldModelAgent(policy, params.astype(np.float32))
        self.agent.reset(seed)

    def act(self, frame: np.ndarray) -> Any:
        return self.agent.act(frame)


def make_collect_agent(cfg: Config, action_space: gym.Space) -> Agent:
    """A random policy; with `collect.policy=random_controller` a random C behind an untrained V and M;
    with `collect.policy=controller` the trained agent of `collect.controller_experiment` with exploration
    noise (its V, M and C on the CPU: workers run one episode each)."""
    c = cfg.collect
    if c.policy == "random_controller":
        return RandomControllerAgent(cfg, action_space)
    if c.policy != "controller":
        return make_random_agent(cfg, action_space)
    if not c.controller_experiment:
        raise WorldModelsError("collect.policy=controller needs collect.controller_experiment=<an experiment with a "
                               "trained controller>")
    return load_world_model_agent(of_experiment(cfg, c.controller_experiment), torch.device("cpu"), c.exploration)


def collect(cfg: Config, visualize: bool = False) -> Path:
    """Make sure `cfg.collect.num_rollouts` episodes exist on disk; returns the rollout folder."""
    return collect_episodes(cfg, make_collect_agent, visualize)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--num-rollouts", type=int, default=None, help="overrides collect.num_rollouts")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (0 = one per core)")
    parser.add_argument("--visualize", action="store_true", help="also write an mp4 of the first episode")
    args = parser.parse_args(argv)
    for flag, key in ((args.num_rollouts, "collect.num_rollouts"), (args.workers, "collect.workers")):
        if flag is not None:
            args.overrides.append(f"{key}={flag}")
    collect(config_from_args(args), visualize=args.visualize)


if __name__ == "__main__":
    run_cli(main)
