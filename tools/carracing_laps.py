"""Where CarRacing's points go: lap or not, tiles left behind against tiles not reached, speed, gas, brake.

    python tools/carracing_laps.py --experiment carracing-v3 --set experiment.checkpoint_dir=pretrained \
        --episodes 20

CarRacing pays 1000/N for each of the track's N tiles and takes 0.1 a step; an episode ends early only when
every tile has been visited (Gymnasium's other way to end a lap, reaching tile 0 after 95% of the tiles,
never fires: reset already marks tile 0 visited) or when the car leaves the playfield (-100). An agent
that runs out of its 1,000 steps has lost points in one of two ways: it drove past tiles without touching
them (left behind: only a second pass would pay them), or it did not get round in time (not reached: too
slow). The returns alone do not tell which; the game's state does. This tool plays the
experiment's kept-best C on Gymnasium's CarRacing-v3 (the reference port, whose internals it reads) on
evaluate.py's evaluation seeds and, per episode, records the outcome, the tiles visited, left behind and
not reached, the car's mean speed, the mean gas and brake, how often it brakes at all and how often all
four wheels are off the road. Writes `results/<experiment>/laps.{md,json}`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.loaders import load_world_model_agent  # noqa: E402
from training.train_utils import add_common_args, config_from_args, run_cli  # noqa: E402
from utils.environment import Agent, make_frame_env, resolve_env_id  # noqa: E402
from utils.errors import WorldModelsError  # noqa: E402
from utils.files import experiment_dir, trained_config, write_results_table  # noqa: E402
from utils.runtime import episode_seeds  # noqa: E402

OUTCOMES = ("lap finished", "left the playfield", "ran out of steps")


def split_unvisited(visited: np.ndarray, progress: int) -> tuple[int, int]:
    """(left behind, not reached): the unvisited tiles the car has passed and the rest. `visited` is (N,)
    bool in track order, tile 0 at the start line; `progress` is the car's final place along the track in
    tiles, counted on from the start (`track_progress`): N or more once it has come round, so that every
    unvisited tile is behind it, and below 0 if it rolled back over the start line."""
    behind = int((~visited[:max(0, min(progress, len(visited)))]).sum())
    return behind, int((~visited).sum()) - behind


def track_progress(nearest_tiles: Sequence[int], tiles: int) -> int:
    """The car's place along the track in tiles, from the nearest track tile at each step: a jump of more
    than half the track between two steps is a crossing of the start line (forwards or back), which adds
    or takes away a lap."""
    laps, previous = 0, 0  # the car starts on tile 0
    for tile in nearest_tiles:
        if tile - previous < -tiles / 2:
            laps += 1
        elif tile - previous > tiles / 2:
            laps -= 1
        previous = tile
    return laps * tiles + previous


def play_and_read(env: Any, agent: Agent, seed: int, max_steps: int) -> dict[str, Any]:
    """One episode of `agent` on Gymnasium's CarRacing (`env` wraps it) from `seed`, with what the game's
    state says about it: outcome, return, steps, tiles (N, visited, left behind, not reached), mean speed
    (Box2D units/s), mean gas and brake (as the game clips them, 0..1), the fractions of steps with any
    brake and with all four wheels off the road."""
    observation, _ = env.reset(seed=seed)
    agent.reset(seed)
    game = env.unwrapped
    track_xy = np.array([(x, y) for _, _, x, y in game.track])  # (N, 2), track point i ends tile i
    total, steps, outcome = 0.0, 0, OUTCOMES[2]
    speeds, gas, brake, off_road, nearest = [], [], [], [], []
    while True:
        action = np.asarray(agent.act(observation), dtype=np.float64)
        observation, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        steps += 1
        velocity = game.car.hull.linearVelocity
        speeds.append(float(np.hypot(velocity[0], velocity[1])))
        gas.append(float(np.clip(action[1], 0.0, 1.0)))
        brake.append(float(np.clip(action[2], 0.0, 1.0)))
        off_road.append(all(len(wheel.tiles) == 0 for wheel in game.car.wheels))
        nearest.append(int(np.argmin(np.linalg.norm(track_xy - np.array(game.car.hull.position), axis=1))))
        if terminated:
            outcome = OUTCOMES[0] if info.get("lap_finished") else OUTCOMES[1]
            break
        if truncated or steps >= max_steps:
            break
    visited = np.array([tile.road_visited for tile in game.road], dtype=bool)  # game.road is in track order
    behind, ahead = split_unvisited(visited, track_progress(nearest, len(visited)))
    return {"seed": seed, "outcome": outcome, "return": total, "steps": steps, "tiles": len(visited),
            "visited": int(visited.sum()), "left_behind": behind, "not_reached": ahead,
            "mean_speed": float(np.mean(speeds)), "mean_gas": float(np.mean(gas)), "mean_brake": float(np.mean(brake)),
            "braking": float(np.mean(np.array(brake) > 0)), "off_road": float(np.mean(off_road))}


def markdown_table(episodes: Sequence[dict[str, Any]]) -> str:
    """One row per outcome that occurred and one for all episodes: means of the per-episode figures."""
    lines = ["| outcome | episodes | return | steps | tiles visited | left behind | not reached | mean speed | "
             "mean gas | mean brake | any brake | all wheels off road |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    groups = [(outcome, [e for e in episodes if e["outcome"] == outcome]) for outcome in OUTCOMES]
    for name, group in [*groups, ("all", list(episodes))]:
        if not group:
            continue
        mean = {key: float(np.mean([e[key] for e in group])) for key in group[0] if key not in ("seed", "outcome")}
        lines.append(f"| {name} | {len(group)} | {mean['return']:.1f} | {mean['steps']:.0f} | "
                     f"{mean['visited']:.1f} of {mean['tiles']:.1f} | {mean['left_behind']:.1f} | "
                     f"{mean['not_reached']:.1f} | {mean['mean_speed']:.1f} | {mean['mean_gas']:.2f} | "
                     f"{mean['mean_brake']:.3f} | {mean['braking']:.1%} | {mean['off_road']:.0%} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, default_env="CarRacing-v3")
    parser.add_argument("--episodes", type=int, default=20, help="evaluation episodes 0..N-1 (evaluate.py's seeds)")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        raise WorldModelsError(f"--episodes must be >= 1, got {args.episodes}")
    if resolve_env_id(args.env) != "CarRacing-v3":
        raise WorldModelsError(f"--env {args.env}: this tool reads CarRacing-v3's game state only")
    if args.backend not in (None, "gymnasium"):
        raise WorldModelsError(f"--backend {args.backend}: this tool reads Gymnasium's CarRacing only "
                               "(EnvPool does not expose the track; leave --backend out)")
    args.backend = "gymnasium"
    torch.set_num_threads(1)
    cfg = trained_config(config_from_args(args), "controller")  # the agent as evaluate.py builds it
    seeds = [int(seed) for seed in episode_seeds(cfg, "evaluate", 0, args.episodes)]
    agent = load_world_model_agent(cfg, "cpu")
    env = make_frame_env(cfg.env)
    episodes = []
    try:
        for index, seed in enumerate(seeds, 1):
            episodes.append(play_and_read(env, agent, seed, cfg.env.max_episode_steps))
            row = episodes[-1]
            print(f"{index}/{len(seeds)} seed {seed}: {row['outcome']}, {row['return']:.1f} in {row['steps']} steps, "
                  f"{row['left_behind']} left behind, {row['not_reached']} not reached", flush=True)
    finally:
        env.close()
    table = markdown_table(episodes)
    print(table)
    written = write_results_table(experiment_dir(cfg, "results"), "laps", table,
                                  {"env_id": cfg.env.env_id, "seeds": seeds, "episodes": episodes})
    print(f"table: {written}")


if __name__ == "__main__":
    run_cli(main)
