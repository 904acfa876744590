"""One CMA-ES generation: batched population evaluation ÷ one candidate at a time, same seeds, one run.

    python benchmarks/controller.py            # LunarLander, population 16 x 2 rollouts (a few minutes)
    python benchmarks/controller.py --quick    # population 8 x 1, shorter episodes (under a minute)
    python benchmarks/controller.py --env ALE/Pong-v5 --repeats 3   # where V, not the env, is the cost

The batched evaluator (stage 4's `run_episodes`) steps every candidate x rollout together: envs in
worker processes, one VAE encode and one LSTM step for all running episodes, the candidates' linear
layers as one batched matmul. The reference plays the same episodes one after another in this process
through `WorldModelAgent` (the evaluation protocol), one frame at a time. V and M are untrained (timing
does not depend on their weights); both paths play identical episodes, which the script checks.
Each path plays the generation `--repeats` times and the median wall time counts: on 2 shared cores one
run of the batched path varied by 20% (9.4-11.3 s on Pong).
Also printed: env steps/s of the batched evaluator ÷ the raw step rate of one bare env (with render).
Target: >= 3x on the 2-core machine.
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
from config import get_config  # noqa: E402
from models.agent import WorldModelAgent  # noqa: E402
from training.population import run_episodes  # noqa: E402
from utils.env_workers import EnvWorkerPool  # noqa: E402
from utils.environment import make_env, make_frame_env, run_episode  # noqa: E402


def raw_step_rate(env_id: str, steps: int) -> float:
    env = make_env(env_id, render_mode="rgb_array")
    env.reset(seed=0)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        env.render()
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--env", default="LunarLander-v3")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="play the generation this many times per path; median")
    args = parser.parse_args()
    population, rollouts, max_steps = (8, 1, 100) if args.quick else (16, 2, 200)
    cfg = get_config(args.env, overrides=[f"env.max_episode_steps={max_steps}"])
    env = make_frame_env(cfg.env)
    policy, num_params = untrained_policy(cfg, env.action_space)
    params = np.random.default_rng(0).normal(0, 0.1, (population, num_params)).astype(np.float32)
    seeds = np.arange(rollouts) + 1000

    single_threads = torch.get_num_threads()
    single_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        single = [run_episode(env, WorldModelAgent(policy, params[p]), int(seed), record=False)
                  for p in range(population) for seed in seeds]
        single_times.append(time.perf_counter() - start)
    single_returns = np.array([episode.total_reward for episode in single])

    with EnvWorkerPool(cfg.env, population * rollouts, args.workers) as pool:
        if pool.workers > 1:
            torch.set_num_threads(1)  # as stage 4 does: the env workers need the cores
        batched_times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            batched_returns, lengths, _ = run_episodes(policy, pool, np.repeat(params, rollouts, axis=0),
                                                       np.tile(seeds, population))
            batched_times.append(time.perf_counter() - start)
        workers = pool.workers
    single_seconds, batched_seconds = float(np.median(single_times)), float(np.median(batched_times))
    steps = int(lengths.sum())
    raw = raw_step_rate(args.env, min(steps, 2000))
    same = np.allclose(batched_returns, single_returns, rtol=1e-5)

    print(f"\n{args.env}: population {population} x {rollouts} rollouts, {steps} env steps per generation, "
          f"{workers} env worker(s); torch threads {single_threads} one at a time, {torch.get_num_threads()} batched")
    print(f"{'evaluator':28s} {'generation s':>13s} {'env steps/s':>12s}  runs (s)")
    for name, seconds, times in (("one candidate at a time", single_seconds, single_times),
                                 ("batched (stage 4)", batched_seconds, batched_times)):
        print(f"{name:28s} {seconds:13.1f} {steps / seconds:12.0f}  {' '.join(f'{t:.1f}' for t in times)}")
    print(f"{'raw env (with render)':28s} {'':13s} {raw:12.0f}")
    print(f"identical returns on both paths: {same}\n")
    print(f"RESULT controller_batched_vs_single ratio={single_seconds / batched_seconds:.2f} target=3.0")
    print(f"RESULT controller_evaluator_vs_raw_env ratio={steps / batched_seconds / raw:.2f} target=1.0")


if __name__ == "__main__":
    main()
