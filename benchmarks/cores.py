"""How one CMA-ES generation on EnvPool scales with CPU cores, measured in one run, and the 16-core projection.

    python benchmarks/cores.py                                  # CarRacing-v3, 64 x 1 rollout of 300 steps
    python benchmarks/cores.py --env LunarLander-v3 --steps 400 --population 32

For k = 1 .. the cores this process may use, a fresh process pinned to the first k of them
(`os.sched_setaffinity` before torch or EnvPool start their threads), with k torch threads and k EnvPool
threads, plays one generation through stage 4's `run_episodes` over `EnvPoolSlots` (untrained V, M and C:
timing does not depend on what the weights learned; the same candidates and seeds for every k) after one
warm-up generation. Printed: env steps/s per k and the speed-up over one core.

A machine with more cores than this one is projected, not measured: Amdahl's law, speed-up(k) =
1 / (s + (1 - s) / k), fitted to the measured speed-ups (least squares on its linear form
1/speed-up - 1/k = s (1 - 1/k)), gives the serial share s and the 16-core figure. With 2 cores the fit rests on one ratio, so take the projection as an order of
magnitude: it ignores memory bandwidth, EnvPool's thread scheduling and batch sizes at 16 cores.

RESULT lines: speedup_<n>cores for this machine's n cores (target 1.5 on the 2-core machine: the
generation's env stepping and V/M/C both spread over threads) and projected_speedup_16cores (no target).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def one_generation(env_id: str, population: int, steps: int, threads: int) -> dict[str, float]:
    """Env steps/s of one generation (after a warm-up one) with `threads` torch and EnvPool threads."""
    import numpy as np
    import torch

    from benchmarks.common import untrained_policy
    from config import get_config
    from training.population import run_episodes
    from utils.envpool_envs import EnvPoolSlots
    from utils.environment import env_action_space

    torch.set_num_threads(threads)
    cfg = get_config(env_id, overrides=["env.backend=envpool", f"env.max_episode_steps={steps}"])
    policy, num_params = untrained_policy(cfg, env_action_space(cfg.env))
    params = np.random.default_rng(0).normal(0, 0.1, (population, num_params)).astype(np.float32)
    seeds = 1000 + np.arange(population)
    pool = EnvPoolSlots(cfg.env, population, num_threads=threads)
    try:
        run_episodes(policy, pool, params, seeds)  # warm-up: EnvPool's first batch, torch's first kernels
        start = time.perf_counter()
        _, lengths, _ = run_episodes(policy, pool, params, seeds)
        seconds = time.perf_counter() - start
    finally:
        pool.close()
    return {"threads": threads, "steps": int(lengths.sum()), "seconds": seconds, "rate": int(lengths.sum()) / seconds}


def amdahl_serial_share(cores: list[int], speedups: list[float]) -> float:
    """Least-squares s in [0, 1] of speed-up(k) = 1 / (s + (1 - s) / k): linear in s as 1/speed-up - 1/k =
    s (1 - 1/k)."""
    xs = [1 - 1 / k for k in cores]
    ys = [1 / speedup - 1 / k for k, speedup in zip(cores, speedups)]
    denominator = sum(x * x for x in xs)
    return min(1.0, max(0.0, sum(x * y for x, y in zip(xs, ys)) / denominator)) if denominator else 1.0


def projected_speedup(serial_share: float, cores: int) -> float:
    """Amdahl's speed-up on `cores` cores of work whose `serial_share` does not spread over cores."""
    return 1.0 / (serial_share + (1 - serial_share) / cores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="CarRacing-v3")
    parser.add_argument("--population", type=int, default=64, help="candidates x 1 rollout per generation")
    parser.add_argument("--steps", type=int, default=300, help="episode cap")
    parser.add_argument("--project", type=int, default=16, help="cores to project to")
    parser.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)  # internal: the pinned child
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_generation(args.env, args.population, args.steps, args.one)))
        return
    available = sorted(os.sched_getaffinity(0))
    rows = []
    for k in range(1, len(available) + 1):
        cores = set(available[:k])
        env = {**os.environ, "OMP_NUM_THREADS": str(k), "MKL_NUM_THREADS": str(k)}
        child = subprocess.run(
            [sys.executable, __file__, "--env", args.env, "--population", str(args.population), "--steps",
             str(args.steps), "--one", str(k)],
            env=env, preexec_fn=lambda cores=cores: os.sched_setaffinity(0, cores), stdout=subprocess.PIPE, text=True)
        if child.returncode != 0:  # its traceback went to stderr, above
            raise SystemExit(f"the {k}-core generation failed (exit {child.returncode})")
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(f"{k} core(s): {rows[-1]['rate']:.0f} env steps/s ({rows[-1]['steps']} steps in {rows[-1]['seconds']:.1f} s)",
              flush=True)
    base = rows[0]["rate"]
    cores = [row["threads"] for row in rows]
    speedups = [row["rate"] / base for row in rows]
    print(f"\n{args.env}, EnvPool, {args.population} candidates x 1 rollout, episodes capped at {args.steps} steps")
    for k, speedup in zip(cores, speedups):
        print(f"  {k} core(s): speed-up {speedup:.2f} over 1 core")
    if len(cores) > 1:
        share = amdahl_serial_share(cores[1:], speedups[1:])
        projected = projected_speedup(share, args.project)
        print(f"  Amdahl fit: serial share {share:.3f}; projected on {args.project} cores: {projected:.1f}x one core, "
              f"{projected / speedups[-1]:.1f}x this machine's {cores[-1]} (a projection, not a measurement)")
        print(f"RESULT speedup_{cores[-1]}cores ratio={speedups[-1]:.2f} target=1.5")
        print(f"RESULT projected_speedup_{args.project}cores ratio={projected:.2f}")


if __name__ == "__main__":
    main()
