"""EnvPool ÷ Gymnasium, per env: stage 1 collection and one CMA-ES generation, measured in one run.

    python benchmarks/backends.py              # 4 envs, a few minutes
    python benchmarks/backends.py --quick      # CarRacing and LunarLander, short episodes (about a minute)
    python benchmarks/backends.py --envs CarRacing-v3 --population 64

Per env and backend:
* collection: `collect_episodes` with the env's random policy into a temporary folder (Gymnasium: one
  worker process per core; EnvPool: batches in this process), frames written per second;
* one CMA-ES generation: stage 4's `run_episodes` over `make_env_slots` (the stage's own code path), an
  untrained V/M/C policy (timing does not depend on the weights), `--population` candidates x 1 rollout,
  env steps per second.
And, for EnvPool, the machine's limit for a generation: env and models share the cores, so it is
1 / (1 / env-only steps/s + 1 / models-only steps/s), each measured alone on all cores in this run
(env-only: random actions on the same batch; models-only: `policy.act` on that many frames). The
generation's share of time in V, M, C and env stepping is printed beside it.

Targets on the 2-core machine: collection >= 5x (CarRacing) and >= 4x (LunarLander), CarRacing
generation >= 4x, and an EnvPool generation >= 0.8 of the limit.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import untrained_policy  # noqa: E402
from config import get_config  # noqa: E402
from models.controller import controller_input, outputs_to_actions, population_forward  # noqa: E402
from models.vae import frames_to_input  # noqa: E402
from training.population import run_episodes  # noqa: E402
from utils.env_workers import make_env_slots  # noqa: E402
from utils.envpool_envs import EnvPoolBatch  # noqa: E402
from utils.environment import RandomAgent, collect_episodes, env_action_space  # noqa: E402
from utils.runtime import torch_threads  # noqa: E402

TARGETS = {("collect", "CarRacing-v3"): 5.0, ("collect", "LunarLander-v3"): 4.0, ("generation", "CarRacing-v3"): 4.0}


def collection_rate(env_id: str, backend: str, episodes: int, steps: int) -> float:
    """Frames per second of stage 1's loop writing `episodes` random episodes of at most `steps` frames."""
    with tempfile.TemporaryDirectory() as folder:
        cfg = get_config(env_id, overrides=[f"env.backend={backend}", f"collect.num_rollouts={episodes}",
                                            f"env.max_episode_steps={steps}", f"experiment.data_dir={folder}/data",
                                            f"experiment.log_dir={folder}/logs"])
        env_action_space(cfg.env)  # warm up: EnvPool's first import registers every env it ports (seconds)
        start = time.perf_counter()
        rollouts = collect_episodes(cfg)
        seconds = time.perf_counter() - start
        frames = sum(int(np.load(path)["rewards"].shape[0]) for path in rollouts.glob("ep_*.npz"))
    return frames / seconds


def generation_rate(cfg, policy, params: np.ndarray, seeds: np.ndarray) -> tuple[float, int]:
    """Env steps per second of one population evaluation as stage 4 runs it (same thread policy)."""
    with make_env_slots(cfg.env, len(seeds)) as pool, torch_threads(1 if pool.workers > 1 else 0):
        start = time.perf_counter()
        _, lengths, _ = run_episodes(policy, pool, params, seeds)
        seconds = time.perf_counter() - start
    return int(lengths.sum()) / seconds, int(lengths.sum())


def envpool_env_only_rate(cfg, seeds: np.ndarray, steps: int) -> float:
    """Env steps/s of the EnvPool batch alone: random actions, every running env stepped each call."""
    space = env_action_space(cfg.env)
    agents = [RandomAgent(space, "uniform") for _ in seeds]
    for agent, seed in zip(agents, seeds):
        agent.reset(int(seed))
    with EnvPoolBatch(cfg.env, seeds) as envs:
        frames = envs.reset()
        running, done_steps = np.arange(len(seeds)), 0
        start = time.perf_counter()
        for _ in range(steps):
            if not len(running):
                break
            new_frames, _, terminated, truncated = envs.step(running, [agents[i].act(frames[i]) for i in running])
            done_steps += len(running)
            running = running[~(terminated | truncated)]
        return done_steps / (time.perf_counter() - start)


@torch.no_grad()
def model_times(policy, params: np.ndarray, frames: np.ndarray, repeats: int) -> dict[str, float]:
    """Seconds per batched step of V's encode, C and M's step, on `len(frames)` episodes (all cores)."""
    device = policy.device
    params_tensor = torch.as_tensor(params, dtype=torch.float32)
    hidden = policy.initial_state(len(frames))
    times = {"V": 0.0, "C": 0.0, "M": 0.0}
    for _ in range(repeats):
        start = time.perf_counter()
        z = policy.encoder(frames_to_input(frames, device, channels_last=True))
        middle = time.perf_counter()
        outputs = population_forward(policy.layer_shapes, params_tensor, controller_input(z, hidden, policy.inputs))
        actions = outputs_to_actions(outputs, policy.action_space, mapping=policy.action_mapping)
        after_c = time.perf_counter()
        policy.mdnrnn.step(z, actions, hidden)
        end = time.perf_counter()
        times["V"] += middle - start
        times["C"] += after_c - middle
        times["M"] += end - after_c
    return {name: value / repeats for name, value in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--envs", nargs="+", default=None)
    parser.add_argument("--population", type=int, default=None, help="candidates x 1 rollout per generation")
    args = parser.parse_args()
    envs = args.envs or (["CarRacing-v3", "LunarLander-v3"] if args.quick
                         else ["CarRacing-v3", "LunarLander-v3", "ALE/Pong-v5", "ALE/Breakout-v5"])
    population = args.population or (16 if args.quick else 32)
    steps = 150 if args.quick else 400
    collect_episodes_per_run = 8 if args.quick else 16
    results = []
    for env_id in envs:
        rates = {}
        for backend in ("gymnasium", "envpool"):
            rates["collect", backend] = collection_rate(env_id, backend, collect_episodes_per_run, steps)
        cfg = get_config(env_id, overrides=[f"env.max_episode_steps={steps}"])
        policy, num_params = untrained_policy(cfg, env_action_space(cfg.env))
        params = np.random.default_rng(0).normal(0, 0.1, (population, num_params)).astype(np.float32)
        seeds = 1000 + np.arange(population)
        for backend in ("gymnasium", "envpool"):
            cfg.env.backend = backend
            rates["generation", backend], env_steps = generation_rate(cfg, policy, params, seeds)
        env_only = envpool_env_only_rate(cfg, seeds, steps)
        with EnvPoolBatch(cfg.env, seeds) as batch:
            frames = batch.reset()
        times = model_times(policy, params, frames, repeats=20)
        models_only = population / sum(times.values())
        limit = 1.0 / (1.0 / env_only + 1.0 / models_only)
        env_share_seconds = population / env_only
        total = env_share_seconds + sum(times.values())
        shares = {name: seconds / total for name, seconds in {**times, "env": env_share_seconds}.items()}
        results.append((env_id, rates, env_only, models_only, limit, shares, env_steps))

    print(f"\npopulation {population} x 1 rollout, episodes capped at {steps} steps; "
          f"collection {collect_episodes_per_run} random episodes; torch threads {torch.get_num_threads()}")
    print(f"{'env':18s} {'what':12s} {'gymnasium/s':>12s} {'envpool/s':>10s} {'ratio':>6s}")
    for env_id, rates, *_ in results:
        for what, unit in (("collect", "frames"), ("generation", "steps")):
            gym_rate, pool_rate = rates[what, "gymnasium"], rates[what, "envpool"]
            print(f"{env_id:18s} {what:12s} {gym_rate:12.0f} {pool_rate:10.0f} {pool_rate / gym_rate:6.2f}  ({unit}/s)")
    print(f"\n{'env':18s} {'env only/s':>10s} {'models only/s':>13s} {'limit/s':>8s} {'generation/s':>12s} "
          f"{'of limit':>8s}   share of a step: V / C / M / env")
    for env_id, rates, env_only, models_only, limit, shares, _ in results:
        share = " / ".join(f"{shares[name]:.0%}" for name in ("V", "C", "M", "env"))
        print(f"{env_id:18s} {env_only:10.0f} {models_only:13.0f} {limit:8.0f} {rates['generation', 'envpool']:12.0f} "
              f"{rates['generation', 'envpool'] / limit:8.2f}   {share}")
    print()
    for env_id, rates, env_only, models_only, limit, shares, _ in results:
        slug = env_id.split("/")[-1].split("-")[0].lower()
        for what in ("collect", "generation"):
            ratio = rates[what, "envpool"] / rates[what, "gymnasium"]
            target = TARGETS.get((what, env_id))
            print(f"RESULT {what}_{slug}_envpool_vs_gymnasium ratio={ratio:.2f}" + (f" target={target}" if target else ""))
        print(f"RESULT generation_{slug}_envpool_of_limit ratio={rates['generation', 'envpool'] / limit:.2f} target=0.8")


if __name__ == "__main__":
    main()
