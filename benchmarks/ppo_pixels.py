"""PPO from pixels on a CPU, two choices measured against their alternative in the same run.

    python benchmarks/ppo_pixels.py            # about a minute: LunarLander-v3, 84x84 gray x4, action repeat 4

* The env step: `training.ppo_envs.make_ppo_env` resizes the 600x400 render to 84x84 before converting it
  to grayscale. Both are linear, so the order changes only rounding, but Gymnasium's grayscale is a float
  multiply-add over every pixel it is given. Printed: ms per PPO step of each order, on the same seeds.
* The update: `ActorCritic` runs its Nature-CNN trunk in channels-last (NHWC) layout. Printed: ms per
  sample of a minibatch-256 forward + backward + Adam step, NHWC against NCHW.
Each is the best of `--repeats` alternating measurements; the ratios are other / ours.
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

import torch  # noqa: E402

from config import Config, get_config  # noqa: E402
from models.ppo_policy import ActorCritic  # noqa: E402
from training.ppo_envs import make_ppo_env  # noqa: E402


def grayscale_first(cfg: Config) -> gym.Env:
    """`make_ppo_env`'s chain for a rendered env (grayscale, frame stack), with grayscale on the full render."""
    env = RecordEpisodeStatistics(gym.make(cfg.env.env_id, render_mode="rgb_array"))
    env = AddRenderObservation(RepeatAction(env, cfg.ppo.frame_skip), render_only=True)
    env = ResizeObservation(GrayscaleObservation(env), (cfg.ppo.frame_size, cfg.ppo.frame_size))
    return FrameStackObservation(env, cfg.ppo.frame_stack)


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


def update_ms_per_sample(channels_last: bool, batch: int = 256, steps: int = 8) -> float:
    """Milliseconds per sample of PPO's update step on a (batch, 4, 84, 84) uint8 minibatch: the trunk's
    forward, both heads, backward and an Adam step (the loss itself is a cheap stand-in)."""
    torch.manual_seed(0)
    net = ActorCritic((4, 84, 84), 4, False, channels_last=channels_last)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    frames = torch.randint(0, 256, (batch, 4, 84, 84), dtype=torch.uint8)

    def step() -> None:
        _, logprob, entropy, value = net.get_action_and_value(frames)
        loss = -logprob.mean() - entropy.mean() + value.pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up: allocations, oneDNN's kernel choice
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps / batch * 1000


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
    nhwc, nchw = [], []
    for _ in range(args.repeats):
        nhwc.append(update_ms_per_sample(True))
        nchw.append(update_ms_per_sample(False))
    print(f"update, ms per sample (best of {args.repeats}, {torch.get_num_threads()} torch threads): "
          f"channels-last {min(nhwc):.3f}, NCHW {min(nchw):.3f}")
    print(f"RESULT ppo_pixels_channels_last_speedup {min(nchw) / min(nhwc):.2f}")


if __name__ == "__main__":
    main()
