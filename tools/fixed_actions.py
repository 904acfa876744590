"""Where can a C exploit M? Each fixed action, repeated every step, scored inside M's dream and in the real env.

    python tools/fixed_actions.py --env DoomTakeCover-v0 --experiment doomtakecover-v0-iter2
    python tools/fixed_actions.py --env DoomTakeCover-v0 --experiment doomtakecover-v0 \
        --set experiment.checkpoint_dir=pretrained --dream-episodes 256 --real-episodes 16

For a discrete action space: for each action k, a C that always picks k (zero weights, a last-layer bias
that selects k under the config's `controller.action_mapping`) plays `--dream-episodes` episodes in the
experiment's M at `controller.temperature` (from its dream starts, as stage 4 does) and `--real-episodes`
episodes of the real env on the evaluation seeds. A policy that M scores far above the real env is a
hole CMA-ES can find: on Doom, round 1's M rated "always left" 747 frames where the game gives 183.

Needs the experiment's V and M (stages 1-3), not a C. Prints a table and writes it to
`results/<experiment>/fixed_actions.{md,json}`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import Config  # noqa: E402
from models.agent import WorldModelAgent, WorldModelPolicy  # noqa: E402
from models.controller import num_parameters, outputs_to_actions  # noqa: E402
from models.loaders import build_policy  # noqa: E402
from training.dream import dream_candidates, dream_generator, load_dream_starts  # noqa: E402
from training.train_utils import add_common_args, config_from_args, run_cli  # noqa: E402
from utils.envpool_envs import play_episodes, resolve_backend  # noqa: E402
from utils.environment import env_action_space, make_frame_env, run_episode  # noqa: E402
from utils.errors import WorldModelsError  # noqa: E402
from utils.files import experiment_dir, write_results_table  # noqa: E402
from utils.runtime import episode_seeds, resolve_device  # noqa: E402

BIAS = 5.0  # large enough that tanh or argmax settles the choice


def fixed_action_params(policy: WorldModelPolicy, action: int) -> np.ndarray:
    """C's parameters (N,) float32 for "always `action`": every weight 0, the last layer's bias chosen so
    that `outputs_to_actions` picks `action` whatever C's input."""
    n_in, n_out = policy.layer_shapes[-1]
    num_params = num_parameters(policy.layer_shapes)
    # One output per action (argmax): +BIAS on the action's own. One output in all (doom_paper's thirds of
    # tanh): whichever of -BIAS, 0, +BIAS lands in the action's third.
    candidates = ([np.eye(n_out)[action] * BIAS] if n_out > 1 else [np.array([b]) for b in (-BIAS, 0.0, BIAS)])
    for bias in candidates:
        chosen = outputs_to_actions(torch.as_tensor(bias, dtype=torch.float32)[None], policy.action_space,
                                    mapping=policy.action_mapping).argmax(-1).item()
        if chosen == action:
            params = np.zeros(num_params, np.float32)
            params[num_params - n_out:] = bias
            return params
    raise WorldModelsError(f"no bias of C's last layer makes action mapping {policy.action_mapping} pick action {action}")


def real_lengths_and_returns(cfg: Config, policy: WorldModelPolicy, params: np.ndarray,
                             seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fixed-action C in the real env, one episode per seed: (lengths, returns)."""
    if resolve_backend(cfg.env) == "envpool":
        agents = WorldModelAgent(policy, params).for_episodes(len(seeds))
        episodes = dict(play_episodes(cfg.env, agents, [int(s) for s in seeds], record=False))
        played = [episodes[i] for i in range(len(seeds))]
    else:
        env, agent = make_frame_env(cfg.env), WorldModelAgent(policy, params)
        played = [run_episode(env, agent, int(seed), cfg.env.max_episode_steps, record=False) for seed in seeds]
        env.close()
    return np.array([e.length for e in played]), np.array([e.total_reward for e in played])


def fixed_action_rows(cfg: Config, dream_episodes: int, real_episodes: int) -> list[dict[str, Any]]:
    """One row per action: its dream and real returns and lengths (mean, std)."""
    space = env_action_space(cfg.env)
    if not isinstance(space, gym.spaces.Discrete):
        raise WorldModelsError(f"{cfg.env.env_id} has a continuous action space; fixed actions need a discrete one")
    device = resolve_device(cfg.experiment.device)
    policy = build_policy(cfg, device, space)
    starts = load_dream_starts(cfg, policy.vae, device)
    seeds = episode_seeds(cfg, "evaluate", 0, real_episodes)
    rows = []
    for action in range(int(space.n)):
        params = fixed_action_params(policy, action)
        generator = dream_generator(cfg.experiment.seed, "evaluate", 0, device)  # every action: the same dreams
        dream = dream_candidates(policy, cfg, starts, params[None], dream_episodes, generator)
        lengths, returns = real_lengths_and_returns(cfg, policy, params, seeds)
        rows.append({"action": action,
                     "dream_return_mean": float(dream.returns.mean()), "dream_return_std": float(dream.returns.std()),
                     "dream_length_mean": float(dream.lengths.mean()),
                     "real_return_mean": float(returns.mean()), "real_return_std": float(returns.std()),
                     "real_length_mean": float(lengths.mean())})
        print(f"action {action}: dream {rows[-1]['dream_return_mean']:.1f}, real {rows[-1]['real_return_mean']:.1f}")
    return rows


def markdown_table(rows: list[dict[str, Any]], temperature: float, dream_episodes: int, real_episodes: int) -> str:
    lines = [f"| action (always) | dream return, tau {temperature:g} ({dream_episodes} episodes) | dream length | "
             f"real return ({real_episodes} episodes) | real length |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['action']} | {row['dream_return_mean']:.1f} ± {row['dream_return_std']:.1f} | "
                     f"{row['dream_length_mean']:.1f} | {row['real_return_mean']:.1f} ± {row['real_return_std']:.1f} | "
                     f"{row['real_length_mean']:.1f} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, default_env="DoomTakeCover-v0")
    parser.add_argument("--dream-episodes", type=int, default=256)
    parser.add_argument("--real-episodes", type=int, default=16)
    args = parser.parse_args(argv)
    for name in ("dream_episodes", "real_episodes"):
        if getattr(args, name) < 1:
            raise WorldModelsError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    cfg = config_from_args(args)
    rows = fixed_action_rows(cfg, args.dream_episodes, args.real_episodes)
    table = markdown_table(rows, cfg.controller.temperature, args.dream_episodes, args.real_episodes)
    print(table)
    written = write_results_table(experiment_dir(cfg, "results"), "fixed_actions", table,
                                  {"env_id": cfg.env.env_id, "temperature": cfg.controller.temperature, "rows": rows})
    print(f"table: {written}")


if __name__ == "__main__":
    run_cli(main)
