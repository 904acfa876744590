"""One CMA-ES generation on 1 and 2 env workers, local processes vs a local Ray instance, in one run.

    python benchmarks/scale.py            # LunarLander, population 16 x 2 rollouts (a few minutes)
    python benchmarks/scale.py --quick    # population 8 x 1, shorter episodes (under a minute of generations)

Stage 4's evaluator (`run_episodes` over an `EnvWorkerPool`, V, M and C batched in this process) plays the
same generation on each backend (`utils.workers.configure_backend`): local processes, and Ray
(`ray_address=local`: a Ray instance started on this machine, actors for the env workers). One worker
runs in this process on either backend (no IPC for one worker), so its row is the reference for the
speed-up of two, and the gap between its two rows shows the run's noise. Pool start-up (processes
forked, actors scheduled, envs made) is timed apart from the generations, as a stage starts its pool
once and then runs every generation on it; the Ray instance's own start (once per run) apart from both.
V and M are untrained (timing does not depend on their weights); every configuration must return
identical fitnesses, which the script checks.

RESULT lines: the speed-up of 2 workers over 1 on each backend (target 1.5 on the 2-core machine, where
the caller's model inference shares the cores) and Ray's overhead, Ray generation time / local
processes generation time at 2 workers (lower is better; target <= 1.2).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import untrained_policy  # noqa: E402
from config import ExperimentConfig, get_config  # noqa: E402
from training.population import run_episodes  # noqa: E402
from utils import ray_backend  # noqa: E402
from utils.env_workers import EnvWorkerPool  # noqa: E402
from utils.environment import make_frame_env  # noqa: E402
from utils.workers import configure_backend  # noqa: E402

BACKENDS = {"local processes": "", "ray (local instance)": "local"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--env", default="LunarLander-v3")
    parser.add_argument("--generations", type=int, default=0, help="generations timed per configuration (0 = 2 quick, 3 full)")
    args = parser.parse_args()
    population, rollouts, max_steps = (8, 1, 100) if args.quick else (16, 2, 200)
    generations = args.generations or (2 if args.quick else 3)
    cfg = get_config(args.env, overrides=[f"env.max_episode_steps={max_steps}"])
    env = make_frame_env(cfg.env)
    policy, num_params = untrained_policy(cfg, env.action_space)
    params = np.random.default_rng(0).normal(0, 0.1, (population, num_params)).astype(np.float32)
    episode_params, seeds = np.repeat(params, rollouts, axis=0), np.tile(np.arange(rollouts) + 1000, population)
    # As stage 4 does with env workers: they need the cores while V, M and C run.
    torch.set_num_threads(1)
    with EnvWorkerPool(cfg.env, population * rollouts, 1) as pool:  # warm-up: the first torch calls are slow
        run_episodes(policy, pool, episode_params[:1], seeds[:1])

    pools, startup, ray_start = {}, {}, 0.0
    for backend, address in BACKENDS.items():  # local first: its workers fork before Ray's threads exist
        configure_backend(ExperimentConfig(ray_address=address))
        if address:
            start = time.perf_counter()
            ray_backend.connect(address)
            ray_start = time.perf_counter() - start
        for workers in (1, 2):
            start = time.perf_counter()
            pools[backend, workers] = EnvWorkerPool(cfg.env, population * rollouts, workers)
            startup[backend, workers] = time.perf_counter() - start
    configure_backend(ExperimentConfig())
    # Round-robin over the configurations, median per configuration: load from other processes on the
    # machine then weighs on every configuration alike.
    seconds = {key: [] for key in pools}
    fitnesses, steps = [], 0
    for _ in range(generations):
        for key, pool in pools.items():
            start = time.perf_counter()
            returns, lengths, _ = run_episodes(policy, pool, episode_params, seeds)
            seconds[key].append(time.perf_counter() - start)
            fitnesses.append(returns.reshape(population, rollouts).mean(axis=1))
            steps = int(lengths.sum())
    for pool in pools.values():
        pool.close()
    same = all(np.array_equal(fitness, fitnesses[0]) for fitness in fitnesses)
    times = {key: float(np.median(values)) for key, values in seconds.items()}

    print(f"\n{args.env}: population {population} x {rollouts} rollouts, {steps} env steps per generation, "
          f"median of {generations} generation(s) per row, torch threads 1")
    print(f"{'backend':22s} {'workers':>7s} {'pool start s':>13s} {'generation s':>13s} {'env steps/s':>12s}")
    for (backend, workers), generation_seconds in times.items():
        print(f"{backend:22s} {workers:7d} {startup[backend, workers]:13.2f} {generation_seconds:13.2f} "
              f"{steps / generation_seconds:12.0f}")
    print(f"Ray instance start (once per run, not in the table): {ray_start:.1f} s")
    print(f"identical fitnesses on every backend and worker count: {same}\n")
    local, ray = BACKENDS
    print(f"RESULT scale_local_2_vs_1_workers ratio={times[local, 1] / times[local, 2]:.2f} target=1.5")
    print(f"RESULT scale_ray_2_vs_1_workers ratio={times[ray, 1] / times[ray, 2]:.2f} target=1.5")
    print(f"RESULT scale_ray_overhead_2_workers ratio={times[ray, 2] / times[local, 2]:.2f} target=1.2")


if __name__ == "__main__":
    main()
