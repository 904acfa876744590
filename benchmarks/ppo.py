"""PPO throughput: full iterations (rollout + GAE + update) against the raw vector-env step rate.

    python benchmarks/ppo.py            # a few minutes: LunarLander-v3 (state) and ALE/Pong-v5 (pixels)
    python benchmarks/ppo.py --quick    # under a minute
    python benchmarks/ppo.py --curve logs/ppo-lunar/ppo --out docs/ppo_lunarlander_curve.png

For each env and each vector-env kind (sync: Gymnasium in one process; async: one Gymnasium worker
process per env; envpool: EnvPool's C++ pool, `training/ppo_envpool.py`) it measures, in the same run
and on the same env object:

* raw SPS: env steps per second of the vector env stepping random actions, nothing else;
* PPO SPS: env steps per second of whole PPO iterations with the env's tuned `PPOConfig`.

ratio = PPO SPS / raw SPS of the same kind: the share of the env's own speed that training keeps.
The `ppo_<env>` RESULT lines report the Gymnasium kind `ppo.vector_env=auto` picks; the
`ppo_<env>_envpool_vs_gymnasium` lines, PPO SPS on EnvPool / PPO SPS on that Gymnasium kind (same
hyperparameters, same network).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import Config, get_config  # noqa: E402
from models.ppo_agent import build_policy  # noqa: E402
from training.ppo_baseline import ppo_torch_threads, ppo_update  # noqa: E402
from training.ppo_envs import choose_vector_env, make_vector_env  # noqa: E402
from training.ppo_rollout import Rollout, collect_rollout, compute_gae  # noqa: E402
from utils.runtime import resolve_device, seed_everything, torch_threads  # noqa: E402

# What training keeps of the env's raw speed, at least. LunarLander: a Box2D step (~50 us) against a
# batched 64-unit MLP forward (~10 us per env step) and 4 epochs of minibatch-64 updates (~50 us per
# sample on one core): about 0.45 at best, 0.35 leaves room for load. Pong on a CPU: the Nature-CNN
# update (4 epochs over 84x84x4 frames) costs several times the emulator's step, so 0.15; on a GPU
# the update is nearly free and the ratio should be above 0.5.
TARGETS = {"cpu": {"lunarlander": 0.35, "pong": 0.15}, "cuda": {"lunarlander": 0.35, "pong": 0.5}}
CASES = (("lunarlander", "LunarLander-v3"), ("pong", "ALE/Pong-v5"))


def raw_sps(envs, steps: int) -> float:
    """Env steps per second of `envs` stepping uniformly random actions for `steps` vector steps."""
    envs.reset(seed=0)
    envs.action_space.seed(0)
    actions = [envs.action_space.sample() for _ in range(steps)]
    start = time.perf_counter()
    for action in actions:
        envs.step(action)
    return steps * envs.num_envs / (time.perf_counter() - start)


def ppo_sps(cfg: Config, envs, iterations: int) -> float:
    """Env steps per second of `iterations` full PPO iterations, after one untimed warm-up iteration."""
    device = resolve_device(cfg.experiment.device)
    policy = build_policy(cfg, envs.single_observation_space, envs.single_action_space).to(device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.ppo.learning_rate, eps=1e-5)
    rollout = Rollout.allocate(cfg.ppo.num_steps, cfg.ppo.num_envs, policy, device)
    minibatch_size = cfg.ppo.num_envs * cfg.ppo.num_steps // cfg.ppo.num_minibatches
    obs, _ = envs.reset(seed=0)
    next_obs = policy.preprocess(torch.as_tensor(obs, device=device), update_stats=True)

    def iteration() -> None:
        nonlocal next_obs
        next_obs, _ = collect_rollout(policy, envs, rollout, next_obs)
        advantages, returns = compute_gae(rollout.rewards, rollout.values, rollout.next_values, rollout.terminated,
                                          rollout.episode_ends, cfg.ppo.gamma, cfg.ppo.gae_lambda)
        ppo_update(policy, optimizer, cfg, minibatch_size, rollout, advantages, returns)

    iteration()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iterations):
        iteration()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return iterations * cfg.ppo.num_envs * cfg.ppo.num_steps / (time.perf_counter() - start)


def plot_learning_curve(log_dir: Path, out: Path, title: str = "", env_steps_per_step: float = 1.0) -> Path:
    """PNG of `charts/episodic_return` from a run's TensorBoard events: every episode, and the mean of
    the last 100 (the usual 'solved' criterion), against env steps: PPO's global step times
    `env_steps_per_step` (`training.ppo_envs.env_steps_per_ppo_step`: 4 for pixels with action repeat 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    scalars = events.Scalars("charts/episodic_return")
    steps = np.array([s.step for s in scalars]) * env_steps_per_step
    returns = np.array([s.value for s in scalars])
    moving = np.array([returns[max(0, i - 99):i + 1].mean() for i in range(len(returns))])
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(steps, returns, ".", markersize=2, alpha=0.3, label="episode return")
    axis.plot(steps, moving, linewidth=2, label="mean of the last 100 episodes")
    axis.set_xlabel("environment steps")
    axis.set_ylabel("episodic return")
    axis.set_title(title or str(log_dir))
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter rollouts and one timed iteration")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--kinds", default="sync,async,envpool", help="vector-env kinds to measure")
    parser.add_argument("--curve", type=Path, help="instead: plot the learning curve of this TensorBoard log dir")
    parser.add_argument("--out", type=Path, default=Path("docs/ppo_curve.png"), help="PNG path for --curve")
    parser.add_argument("--title", default="", help="plot title for --curve")
    parser.add_argument("--env-steps-per-step", type=float, default=1.0,
                        help="--curve: env steps per PPO step (its action repeat for pixels, e.g. 4)")
    args = parser.parse_args()
    if args.curve:
        print(f"wrote {plot_learning_curve(args.curve, args.out, args.title, args.env_steps_per_step)}")
        return
    seed_everything(0)
    rows, results = [], []
    for name, env_id in CASES:
        overrides = [f"experiment.device={args.device}"]
        if args.quick:
            # Shorter rollouts with the same minibatch size: the per-step costs, hence the ratio, stay.
            base = get_config(env_id)
            minibatch = base.ppo.num_envs * base.ppo.num_steps // base.ppo.num_minibatches
            steps = 64 if name == "lunarlander" else 32
            overrides += [f"ppo.num_steps={steps}", f"ppo.num_minibatches={base.ppo.num_envs * steps // minibatch}"]
        cfg = get_config(env_id, overrides=overrides)
        device = resolve_device(cfg.experiment.device)
        threads = ppo_torch_threads(cfg)
        iterations = 1 if args.quick else 2
        ratios, speeds = {}, {}
        # Scoped, so each case starts from torch's own count rather than the previous case's choice.
        with torch_threads(threads):
            for kind in args.kinds.split(","):
                envs = make_vector_env(cfg, kind)
                raw = raw_sps(envs, cfg.ppo.num_steps * (1 if args.quick else 2))
                trained = ppo_sps(cfg, envs, iterations)
                envs.close()
                ratios[kind], speeds[kind] = trained / raw, trained
                rows.append((env_id, kind, cfg.ppo.num_envs, cfg.ppo.num_steps, raw, trained, trained / raw))
                print(f"  {env_id:16s} {kind:5s}: raw {raw:8.0f} steps/s   ppo {trained:7.0f} steps/s", flush=True)
        gymnasium_cfg = get_config(env_id, overrides=[*overrides, "env.backend=gymnasium"])
        chosen = choose_vector_env(gymnasium_cfg)
        best = max(speeds, key=speeds.get)
        target = TARGETS["cuda" if device.type == "cuda" else "cpu"][name]
        results.append(f"RESULT ppo_{name} ratio={ratios.get(chosen, ratios[best]):.2f} target={target}")
        if "envpool" in speeds and chosen in speeds:
            results.append(f"RESULT ppo_{name}_envpool_vs_gymnasium ratio={speeds['envpool'] / speeds[chosen]:.2f}")
        if best != choose_vector_env(cfg):
            print(f"  note: {best} trained faster than the default {choose_vector_env(cfg)} here")

    print(f"\n{'env':16s} {'kind':5s} {'envs':>4s} {'steps':>5s} {'raw SPS':>9s} {'PPO SPS':>9s} {'ratio':>6s}")
    for env_id, kind, envs_n, steps, raw, trained, ratio in rows:
        print(f"{env_id:16s} {kind:5s} {envs_n:4d} {steps:5d} {raw:9.0f} {trained:9.0f} {ratio:6.2f}")
    print(f"device: {device}, CPU cores: {os.cpu_count()}, torch threads (last case): {threads}")
    for line in results:
        print(line)


if __name__ == "__main__":
    main()
