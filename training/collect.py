"""Stage 1: rollouts -> `data/<env-slug>/rollouts/` (random policy) or `data/<env-slug>/<experiment>/rollouts/`.

    python -m training.collect --env LunarLander-v3 --set collect.num_rollouts=200 --set collect.workers=2
    python -m training.collect --env LunarLander-v3 --experiment more --set collect.policy=controller \
        --set collect.controller_experiment=wm-lunar --set collect.exploration=0.1   # a trained agent plays

The loop itself (workers, seeds, resume, atomic files) is `utils.environment.collect_episodes`, which the
seed README's `collect_random_rollouts` also runs; this stage adds the policy of the paper's iterative
procedure: a trained World Models agent with exploration noise.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Optional

import gymnasium as gym
import torch

from config import Config
from models.loaders import load_world_model_agent
from training.train_utils import add_common_args, config_from_args, run_cli
from utils.environment import Agent, collect_episodes, make_random_agent
from utils.errors import WorldModelsError


def make_collect_agent(cfg: Config, action_space: gym.Space) -> Agent:
    """A random policy, or with `collect.policy=controller` the trained agent of `collect.controller_experiment`
    with exploration noise (its V, M and C on the CPU: workers run one episode each)."""
    c = cfg.collect
    if c.policy != "controller":
        return make_random_agent(cfg, action_space)
    if not c.controller_experiment:
        raise WorldModelsError("collect.policy=controller needs collect.controller_experiment=<an experiment with a "
                               "trained controller>")
    source = copy.deepcopy(cfg)
    source.experiment.name = c.controller_experiment
    return load_world_model_agent(source, torch.device("cpu"), c.exploration)


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
