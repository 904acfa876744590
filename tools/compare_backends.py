"""Are Gymnasium's and EnvPool's frames alike? Per-channel statistics and pictures side by side.

    python tools/compare_backends.py                                   # 4 envs, 8 random episodes each
    python tools/compare_backends.py --envs CarRacing-v3 --episodes 20 --out docs/backends_frames.png

For each env, both backends play the same number of random-policy episodes (the env's collection
policy, the same seeds; a seed is a different track or lander on each backend) through stage 1's frame
pipeline. Printed: per-channel mean and std of every 64x64 frame, and the correlation of the two
backends' average frames (where the track, the lander, the paddles sit). The PNG shows, per env, a row
of Gymnasium frames above a row of EnvPool frames taken at the same steps.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from config import get_config  # noqa: E402
from utils.environment import env_action_space, make_frame_env, make_random_agent, run_episode  # noqa: E402
from utils.envpool_envs import play_episodes  # noqa: E402
from utils.images import image_grid, save_png  # noqa: E402

SHOWN_STEPS = (0, 20, 60, 120, 199)


def backend_frames(env_id: str, backend: str, seeds: list[int], steps: int) -> list[np.ndarray]:
    """Each episode's frames `(T, 64, 64, 3)` uint8 on `backend`, random collection policy."""
    cfg = get_config(env_id, overrides=[f"env.backend={backend}", f"env.max_episode_steps={steps}"])
    space = env_action_space(cfg.env)
    if backend == "envpool":
        played = dict(play_episodes(cfg.env, [make_random_agent(cfg, space) for _ in seeds], seeds))
        return [played[i].obs for i in range(len(seeds))]
    env = make_frame_env(cfg.env)
    episodes = [run_episode(env, make_random_agent(cfg, space), seed).obs for seed in seeds]
    env.close()
    return episodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--envs", nargs="+", default=["CarRacing-v3", "LunarLander-v3", "ALE/Pong-v5", "ALE/Breakout-v5"])
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--steps", type=int, default=200, help="episode cap")
    parser.add_argument("--out", type=Path, default=Path("docs/backends_frames.png"))
    args = parser.parse_args()
    seeds = list(range(1, args.episodes + 1))
    rows = []
    print(f"{'env':16s} {'backend':9s} {'frames':>7s}  per-channel mean (R, G, B)   per-channel std (R, G, B)")
    for env_id in args.envs:
        episodes = {backend: backend_frames(env_id, backend, seeds, args.steps) for backend in ("gymnasium", "envpool")}
        averages = []
        for backend, frames in episodes.items():
            pixels = np.concatenate(frames).reshape(-1, 3).astype(np.float64)
            mean, std = pixels.mean(0), pixels.std(0)
            averages.append(np.concatenate(frames).mean(0).ravel())
            print(f"{env_id:16s} {backend:9s} {len(pixels) // 4096:7d}  "
                  f"{mean[0]:6.1f} {mean[1]:6.1f} {mean[2]:6.1f}          {std[0]:6.1f} {std[1]:6.1f} {std[2]:6.1f}")
            # The longest episode's frames at the shown steps (its last frame where it ended sooner).
            longest = max(frames, key=len)
            rows.append([longest[min(step, len(longest) - 1)] for step in SHOWN_STEPS])
        print(f"{env_id:16s} correlation of the two backends' average frames: {np.corrcoef(*averages)[0, 1]:.3f}")
    frames = torch.as_tensor(np.stack([frame for row in rows for frame in row])).permute(0, 3, 1, 2) / 255.0
    grid = image_grid(frames, columns=len(SHOWN_STEPS))
    print(f"wrote {save_png(grid, args.out, scale=2)}  (rows: per env, Gymnasium above EnvPool; columns: steps {SHOWN_STEPS})")


if __name__ == "__main__":
    main()
