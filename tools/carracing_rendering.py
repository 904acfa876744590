"""Is CarRacing's EnvPool-to-Gymnasium gap in the pixels? C on Gymnasium's own tracks, the frame drawn two ways.

    python tools/carracing_rendering.py --experiment carracing-v3 --set experiment.checkpoint_dir=pretrained \
        --episodes 20
    # the as-drawn arm from an earlier `evaluate.py --backend gymnasium` of the same agent, to save its time:
    python tools/carracing_rendering.py --experiment carracing-v3 --set experiment.checkpoint_dir=pretrained \
        --episodes 20 --gymnasium-returns results/carracing-v3/eval_world_models.json

EnvPool 1.2.5's CarRacing-v3 is Gymnasium's physics, track generator and reward, ported to C++ (its own
alignment test holds the car's state to Gymnasium's within 3e-4), but it draws the 96x96 observation
differently (envpool/box2d/car_racing_env.cc against gymnasium/envs/box2d/car_racing.py):

- it shrinks the 1000x800 canvas with OpenCV's INTER_LINEAR, a few samples per output pixel, so thin
  things (kerbs, wheels, grass edges) alias; Gymnasium averages the canvas with pygame's smoothscale;
- it draws the skid marks, which Gymnasium leaves out of the observation.

This tool plays the experiment's kept-best C (trained on either backend) on Gymnasium's CarRacing-v3 on the
evaluation seeds, once with the frame as Gymnasium draws it (`gymnasium`) and once drawn as EnvPool draws
it (`envpool`: Gymnasium's canvas shrunk with INTER_LINEAR, skid marks drawn; an approximation, since
EnvPool also fills polygons without anti-aliasing and prints the score in another font, which the
frame's crop cuts away). The tracks, the car and C are the same in both arms and C acts
deterministically (one torch thread, as `evaluate.py`'s workers), so the per-seed difference is the
drawing's effect. Writes `results/<experiment>/rendering.{md,json}`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import Config  # noqa: E402
from models.loaders import agent_fingerprint, load_world_model_agent  # noqa: E402
from training.train_utils import add_common_args, config_from_args, run_cli  # noqa: E402
from utils.environment import Agent, make_frame_env, resolve_env_id, run_episode  # noqa: E402
from utils.errors import WorldModelsError  # noqa: E402
from utils.files import experiment_dir, trained_config, write_results_table  # noqa: E402
from utils.runtime import episode_seeds  # noqa: E402
from utils.stats import mean_with_ci95  # noqa: E402

DRAWINGS = ("gymnasium", "envpool")


@contextlib.contextmanager
def envpool_drawing(skid_marks: bool = True) -> Iterator[None]:
    """Inside this block every Gymnasium CarRacing env draws its 96x96 observation as EnvPool 1.2.5 does:
    the canvas shrunk with cv2.INTER_LINEAR, and (`skid_marks`) the skid marks drawn. The human/video
    render is untouched."""
    import cv2
    import pygame
    from gymnasium.envs.box2d import car_dynamics, car_racing

    plain_image, plain_draw = car_racing.CarRacing._create_image_array, car_dynamics.Car.draw
    state_size = (car_racing.STATE_W, car_racing.STATE_H)

    def image(self: Any, screen: Any, size: Sequence[int]) -> np.ndarray:
        if tuple(size) != state_size:
            return plain_image(self, screen, size)
        canvas = np.transpose(np.array(pygame.surfarray.pixels3d(screen)), (1, 0, 2))  # (800, 1000, 3)
        return cv2.resize(canvas, state_size, interpolation=cv2.INTER_LINEAR)

    def draw(self: Any, surface: Any, zoom: float, translation: Any, angle: float, draw_particles: bool = True) -> None:
        plain_draw(self, surface, zoom, translation, angle, draw_particles or skid_marks)

    car_racing.CarRacing._create_image_array, car_dynamics.Car.draw = image, draw
    try:
        yield
    finally:
        car_racing.CarRacing._create_image_array, car_dynamics.Car.draw = plain_image, plain_draw


def returns_by_drawing(cfg: Config, agent: Agent, seeds: Sequence[int], drawings: Sequence[str]) -> dict[str, np.ndarray]:
    """{drawing: (len(seeds),) returns} of `agent` on Gymnasium's CarRacing, one episode per seed and drawing."""
    env = make_frame_env(cfg.env)
    returns: dict[str, np.ndarray] = {}
    try:
        for drawing in drawings:
            block = envpool_drawing() if drawing == "envpool" else contextlib.nullcontext()
            with block:
                returns[drawing] = np.array([run_episode(env, agent, int(seed), cfg.env.max_episode_steps,
                                                         record=False).total_reward for seed in seeds])
                print(f"{drawing}: {returns[drawing].mean():.1f} over {len(seeds)} episodes", flush=True)
    finally:
        env.close()
    return returns


def saved_returns(path: Path, seeds: Sequence[int], agent: str) -> np.ndarray:
    """The world_models returns on `seeds` from an evaluate.py JSON of a Gymnasium CarRacing-v3 evaluation
    of the agent whose `agent_fingerprint` is `agent` (JSONs from before evaluate.py recorded it are taken
    on trust, with a notice)."""
    data = json.loads(Path(path).read_text())
    if data.get("env_id") != "CarRacing-v3":
        raise WorldModelsError(f"{path} is an evaluation of {data.get('env_id')}, not CarRacing-v3")
    summaries = [summary for summary in data["summaries"] if summary["method"] == "world_models"]
    backends = {summary.get("backend") for summary in summaries}
    if backends != {"gymnasium"}:
        raise WorldModelsError(f"{path} is not a Gymnasium evaluation of world_models (backends {sorted(map(str, backends))})")
    played = {summary.get("agent", "") for summary in summaries}
    if played == {""}:
        print(f"notice: {path} does not record which agent played; pairing it with this one on trust")
    elif played != {agent}:
        raise WorldModelsError(f"{path} was played by another agent (V, M or C changed since): "
                               f"leave out --gymnasium-returns to play both arms")
    by_seed = {row["seed"]: row["return"] for row in data["episodes"] if row["method"] == "world_models"}
    missing = [seed for seed in seeds if seed not in by_seed]
    if missing:
        raise WorldModelsError(f"{path} has no world_models episode for seed {missing[0]}; use fewer --episodes")
    return np.array([by_seed[seed] for seed in seeds])


def markdown_table(returns: dict[str, np.ndarray]) -> str:
    """Each drawing's mean ± std, 95% CI and median, and the paired difference when both were played."""
    lines = ["| frame drawn as | mean ± std | 95% CI | median |", "|---|---|---|---|"]
    for drawing, values in returns.items():
        mean, std, low, high = mean_with_ci95(values)
        lines.append(f"| {drawing} | {mean:.1f} ± {std:.1f} | {low:.1f}-{high:.1f} | {np.median(values):.1f} |")
    if set(DRAWINGS) <= set(returns):
        mean, std, low, high = mean_with_ci95(returns["envpool"] - returns["gymnasium"])
        lines.append(f"| envpool - gymnasium, paired by seed | {mean:+.1f} ± {std:.1f} | {low:+.1f} to {high:+.1f} | |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, default_env="CarRacing-v3")
    parser.add_argument("--episodes", type=int, default=20,
                        help="evaluation episodes 0..N-1 (evaluate.py's seeds), one per drawing")
    parser.add_argument("--gymnasium-returns", type=Path, default=None,
                        help="an evaluate.py JSON of this agent on --backend gymnasium: its returns stand in for the "
                             "`gymnasium` arm instead of playing it again")
    args = parser.parse_args(argv)
    if args.episodes < 2:
        raise WorldModelsError(f"--episodes must be >= 2 (a confidence interval needs two), got {args.episodes}")
    if resolve_env_id(args.env) != "CarRacing-v3":
        raise WorldModelsError(f"--env {args.env}: this tool redraws CarRacing-v3's frame only")
    if args.backend not in (None, "gymnasium"):
        raise WorldModelsError(f"--backend {args.backend}: this tool plays Gymnasium's CarRacing only (leave --backend out)")
    args.backend = "gymnasium"
    torch.set_num_threads(1)
    cfg = trained_config(config_from_args(args), "controller")  # the agent as evaluate.py builds it
    seeds = [int(seed) for seed in episode_seeds(cfg, "evaluate", 0, args.episodes)]
    agent = load_world_model_agent(cfg, "cpu")
    if args.gymnasium_returns is not None:
        fingerprint = agent_fingerprint(agent.policy.vae, agent.policy.mdnrnn, agent.params)
        returns = {"gymnasium": saved_returns(args.gymnasium_returns, seeds, fingerprint)}
        returns.update(returns_by_drawing(cfg, agent, seeds, ["envpool"]))
    else:
        returns = returns_by_drawing(cfg, agent, seeds, DRAWINGS)
    table = markdown_table(returns)
    print(table)
    written = write_results_table(experiment_dir(cfg, "results"), "rendering", table,
                                  {"env_id": cfg.env.env_id, "seeds": seeds,
                                   "returns": {k: v.tolist() for k, v in returns.items()}})
    print(f"table: {written}")


if __name__ == "__main__":
    run_cli(main)
