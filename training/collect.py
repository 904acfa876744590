"""Stage 1: rollouts -> `data/<env-slug>/rollouts/` (random policy) or `data/<env-slug>/<experiment>/rollouts/`.

    python -m training.collect --env LunarLander-v3 --set collect.num_rollouts=200 --set collect.workers=2
    python -m training.collect --env LunarLander-v3 --experiment more --set collect.policy=controller \
        --set collect.controller_experiment=wm-lunar --set collect.exploration=0.1   # a trained agent plays

Episodes are spread over worker processes (each keeps one env alive); episode i is played from env seed
`episode_seed(cfg, i)`, so a re-run after an interrupt plays only the missing indices and the data set
is the same whatever the number of workers.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import time
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from config import Config
from training.train_utils import (add_common_args, config_from_args, ensure_writable_dir, episode_seeds, experiment_dir,
                                  make_writer, run_cli)
from training.train_controller import load_world_model_agent
from utils.data import episode_path, list_episodes, load_episode, rollout_dir, save_episode
from utils.environment import Agent, RandomAgent, make_frame_env, resolve_env_id, run_episode
from utils.errors import WorldModelsError
from utils.video import add_video, upscale, write_mp4
from utils.workers import default_workers, parallel_map

def episode_seed(cfg: Config, index: int) -> int:
    """Episode `index` is always played from this env seed (disjoint from other stages' seeds)."""
    return int(episode_seeds(cfg, "collect", cfg.collect.seed_offset + index, 1)[0])


def make_collect_agent(cfg: Config, action_space) -> Agent:
    """A random policy, or with `collect.policy=controller` the trained agent of `collect.controller_experiment`
    with exploration noise (its V, M and C on the CPU: workers run one episode each)."""
    c = cfg.collect
    if c.policy != "controller":
        return RandomAgent(action_space, c.policy, c.repeat_min, c.repeat_max, c.walk_sigma)
    if not c.controller_experiment:
        raise WorldModelsError("collect.policy=controller needs collect.controller_experiment=<an experiment with a "
                               "trained controller>")
    source = copy.deepcopy(cfg)
    source.experiment.name = c.controller_experiment
    return load_world_model_agent(source, torch.device("cpu"), c.exploration)


# Per-worker state, built once by `_init_worker` in each worker process.
_worker: dict = {}


def _init_worker(cfg: Config, folder: Path) -> None:
    if multiprocessing.parent_process() is not None:  # a worker process: its siblings use the other cores
        torch.set_num_threads(1)
    env = make_frame_env(cfg.env)
    _worker.update(cfg=cfg, env=env, agent=make_collect_agent(cfg, env.action_space), folder=folder)


def _collect_one(index: int) -> tuple[int, int, float]:
    cfg: Config = _worker["cfg"]
    episode = run_episode(_worker["env"], _worker["agent"], episode_seed(cfg, index), cfg.env.max_episode_steps)
    save_episode(episode_path(_worker["folder"], index), episode, cfg.env.env_id, cfg.collect.policy, cfg.collect.compress)
    return index, episode.length, episode.total_reward


def collect(cfg: Config, visualize: bool = False) -> Path:
    """Make sure `cfg.collect.num_rollouts` episodes exist on disk; returns the rollout folder."""
    cfg.env.env_id = resolve_env_id(cfg.env.env_id)
    if cfg.collect.num_rollouts <= 0:
        raise WorldModelsError(f"collect.num_rollouts must be > 0, got {cfg.collect.num_rollouts}")
    probe_env = make_frame_env(cfg.env)  # fails early on a bad env or policy, before anything is written
    make_collect_agent(cfg, probe_env.action_space)
    probe_env.close()
    folder = ensure_writable_dir(rollout_dir(cfg))
    for stale in folder.glob(".ep_*.tmp.npz"):  # left by a worker killed mid-write
        stale.unlink()
    existing = {int(p.stem.split("_")[1]) for p in list_episodes(folder)}
    pending = [i for i in range(cfg.collect.num_rollouts) if i not in existing]
    workers = default_workers(cfg.collect.workers)
    print(f"collect: {cfg.env.env_id}, {len(existing)} of {cfg.collect.num_rollouts} episodes on disk in {folder}, "
          f"{len(pending)} to play on {min(workers, max(1, len(pending)))} worker(s)")
    writer = make_writer(cfg, "collect")
    start, frames = time.perf_counter(), 0
    results = parallel_map(_collect_one, pending, workers, _init_worker, (cfg, folder))
    with tqdm(results, total=cfg.collect.num_rollouts, initial=len(existing), desc="collect", unit="ep") as bar:
        for index, length, total_reward in bar:
            frames += length
            writer.add_scalar("collect/episode_return", total_reward, index)
            writer.add_scalar("collect/episode_length", length, index)
            bar.set_postfix(frames_per_s=f"{frames / (time.perf_counter() - start):.0f}")
    if pending:
        writer.add_scalar("collect/frames_per_second", frames / (time.perf_counter() - start), len(existing))
    if visualize:
        first = list_episodes(folder)[0]
        video_frames = upscale(load_episode(first, keys=("obs",))["obs"], 4)
        video = write_mp4(video_frames, experiment_dir(cfg, "videos") / f"collect_{first.stem}.mp4")
        add_video(writer, "collect/episode", video_frames[:: max(1, len(video_frames) // 200)], 0)
        print(f"collect: video of {first.name} at {video}")
    writer.close()
    return folder


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--num-rollouts", type=int, default=None, help="overrides collect.num_rollouts")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (0 = one per core)")
    parser.add_argument("--visualize", action="store_true", help="also write an mp4 of the first episode")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    if args.num_rollouts is not None:
        cfg.collect.num_rollouts = args.num_rollouts
    if args.workers is not None:
        cfg.collect.workers = args.workers
    collect(cfg, visualize=args.visualize)


if __name__ == "__main__":
    run_cli(main)
