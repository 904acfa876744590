"""Controller fitness in the dream ÷ in the real environment: env steps/s of each, same V/M/C sizes, one run.

    python benchmarks/dream.py            # about a minute
    python benchmarks/dream.py --quick    # under a minute

Dream: stage 4's `dream_rollouts`, population 64 x 16 rollouts (the paper's generation) stepping together
inside M on the CPU, from start latents drawn as stage 4 draws them. Real: stage 4's batched evaluator
`run_episodes` over an `EnvWorkerPool` (envs in worker processes, one VAE encode + one LSTM step per step for
all episodes), population 16 x 2 (8 x 1 with --quick): its steps/s no longer grow once every worker is
busy, and 1024 real episodes would take minutes. V, M and C are untrained with the LunarLander-v3
default sizes (z 32, h 256, 5 mixtures, linear C on [z, h]); speed does not depend on the weights, except
through episode lengths: M's done bias is set to -10 (done probability 5e-5 per step, as a trained M gives
mid-episode) so the dream episodes run to the step cap instead of ending after ~2 steps at p = 0.5.
Both rates count only steps of running episodes. Target: >= 100x. On a CPU that other jobs also use,
`--threads 1` is faster for both evaluators (torch's threads wait on each other for contended cores).
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
from training.dream import dream_generator, dream_rollouts, sample_start_latents  # noqa: E402
from training.population import run_episodes  # noqa: E402
from utils.env_workers import EnvWorkerPool  # noqa: E402
from utils.environment import make_frame_env  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, default=0, help="env worker processes for the real evaluator (0 = one per core)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads for both evaluators (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dream_population, dream_rollouts_per, dream_steps = 64, 16, (50 if args.quick else 200)
    real_population, real_rollouts, real_steps = (8, 1, 100) if args.quick else (16, 2, 200)
    cfg = get_config("LunarLander-v3", overrides=[f"env.max_episode_steps={real_steps}"])
    env = make_frame_env(cfg.env)
    action_space = env.action_space
    env.close()
    policy, num_params = untrained_policy(cfg, action_space)
    with torch.no_grad():
        policy.mdnrnn.head.bias[-1] = -10.0
    rng = np.random.default_rng(0)

    # Dream: the whole generation as one batch.
    episodes = dream_population * dream_rollouts_per
    params = torch.as_tensor(rng.normal(0, 0.1, (episodes, num_params)), dtype=torch.float32)
    generator = dream_generator(0, "fitness", 0, "cpu")
    start_mu, start_logvar = torch.randn(100, cfg.vae.latent_size), torch.full((100, cfg.vae.latent_size), -2.0)
    start_z = sample_start_latents(start_mu, start_logvar, dream_rollouts_per, generator).repeat(dream_population, 1)
    start = time.perf_counter()
    _, dream_lengths, _ = dream_rollouts(policy.mdnrnn, policy.layer_shapes, params, start_z, action_space,
                                         cfg.controller.temperature, dream_steps, generator)
    dream_seconds = time.perf_counter() - start
    dream_rate = dream_lengths.sum() / dream_seconds

    # Real: the batched evaluator of stage 4's real mode.
    real_episodes = real_population * real_rollouts
    real_params = rng.normal(0, 0.1, (real_episodes, num_params)).astype(np.float32)
    seeds = np.tile(np.arange(real_rollouts) + 1000, real_population)
    with EnvWorkerPool(cfg.env, real_episodes, args.workers) as pool:
        start = time.perf_counter()
        _, real_lengths, _ = run_episodes(policy, pool, real_params, seeds)
        real_seconds = time.perf_counter() - start
        workers = pool.workers
    real_rate = real_lengths.sum() / real_seconds

    print(f"\nLunarLander-v3 sizes (z {cfg.vae.latent_size}, h {cfg.mdnrnn.hidden_size}, {cfg.mdnrnn.num_mixtures} mixtures), "
          f"CPU, torch threads {torch.get_num_threads()}")
    print(f"{'evaluator':34s} {'episodes':>9s} {'steps':>8s} {'seconds':>8s} {'env steps/s':>12s}")
    print(f"{'dream (dream_rollouts)':34s} {episodes:9d} {int(dream_lengths.sum()):8d} {dream_seconds:8.2f} {dream_rate:12.0f}")
    print(f"{f'real (run_episodes, {workers} worker(s))':34s} {real_episodes:9d} {int(real_lengths.sum()):8d} "
          f"{real_seconds:8.2f} {real_rate:12.0f}\n")
    print(f"RESULT dream_vs_real ratio={dream_rate / real_rate:.1f} target=100")


if __name__ == "__main__":
    main()
