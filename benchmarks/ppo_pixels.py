"""PPO's env step from rendered pixels: our wrapper order (shrink, then grayscale) against the other order.

    python benchmarks/ppo_pixels.py            # about 20 s: LunarLander-v3, 84x84 gray, action repeat 4

`training.ppo_envs.make_ppo_env` resizes the 600x400 render to 84x84 before converting it to grayscale:
both are linear, so the order changes only rounding, but Gymnasium's grayscale is a float multiply-add
over every pixel it is given. This prints ms per PPO step of each order, measured alternately in the same
run on the same seeds, and their ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import gymnasium as gym
from gymnasium.wrappers import (AddRenderObservation, FrameStackObservation, GrayscaleObservation,
                                RecordEpisodeStatistics, RepeatAction, ResizeObservation)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import Config, get_config  # noqa: E402
from training.ppo_envs import make_ppo_env  # noqa: E402


def grayscale_first(cfg: Config) -> gym.Env:
    """`make_ppo_env`'s chain for a rendered env (grayscale, frame stack), with grayscale on the full render."""
    env = gym.make(cfg.env.env_id, render_mode="rgb_array")
    env = AddRenderObservation(RepeatAction(env, cfg.ppo.frame_skip), render_only=True)
    env = ResizeObservation(GrayscaleObservation(env), (cfg.ppo.frame_size, cfg.ppo.frame_size))
    return FrameStackObservation(RecordEpisodeStatistics(env), cfg.ppo.frame_stack)


def ms_per_step(env: gym.Env, steps: int) -> float:
    """Milliseconds per `env.step` of uniformly random actions over `steps` steps (resets not timed apart);
    closes `env`."""
    env.reset(seed=0)
    env.action_space.seed(0)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    elapsed = time.perf_counter() - start
    env.close()
    return elapsed / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfg = get_config("LunarLander-v3", overrides=["ppo.observation=pixels", "ppo.frame_skip=4", "ppo.grayscale=true"])
    ours, other = [], []
    for _ in range(args.repeats):
        ours.append(ms_per_step(make_ppo_env(cfg, training=True), args.steps))
        other.append(ms_per_step(grayscale_first(cfg), args.steps))
    best_ours, best_other = min(ours), min(other)
    print(f"LunarLander-v3 from pixels, ms per PPO step (best of {args.repeats} x {args.steps} steps): "
          f"resize then grayscale {best_ours:.2f}, grayscale then resize {best_other:.2f}")
    print(f"RESULT ppo_pixels_wrapper_order_speedup {best_other / best_ours:.2f}")


if __name__ == "__main__":
    main()
