"""Stage-1 collection throughput ÷ the raw step rate of one bare env, measured in the same run.

    python benchmarks/collect.py            # Pong, Breakout, LunarLander, CarRacing (a few minutes)
    python benchmarks/collect.py --quick    # Pong and LunarLander, fewer frames (under a minute)

The reference is `gymnasium.make(env_id)` stepping uniform random actions in one process (plus
`render()` for envs whose frames come from rendering, since the collector must render them too).
The collector does everything stage 1 does: workers, frame preprocessing, writing episode files.
Targets (2-core machine): >= 0.9 with one worker, >= 1.7 with two.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import get_config  # noqa: E402
from training.collect import collect  # noqa: E402
from utils.data import list_episodes  # noqa: E402
from utils.environment import has_image_observation, make_env  # noqa: E402

# (episodes, steps per episode) per worker: enough frames to amortise worker start-up.
WORKLOAD = {
    "ALE/Pong-v5": (4, 1000),
    "ALE/Breakout-v5": (4, 1000),
    "LunarLander-v3": (8, 250),
    "CarRacing-v3": (2, 300),
}


def raw_step_rate(env_id: str, steps: int) -> float:
    """Frames/s of one bare env with random actions (rendering where frames need it)."""
    env = make_env(env_id, render_mode="rgb_array")
    needs_render = not has_image_observation(env.observation_space)
    env.reset(seed=0)
    env.action_space.seed(0)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if needs_render:
            env.render()
        if terminated or truncated:
            env.reset()
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


def collector_rate(env_id: str, workers: int, episodes: int, steps: int, compress: bool = False) -> tuple[float, float]:
    """(frames/s, bytes on disk per frame) of stage 1 collecting `episodes` x <= `steps` frames."""
    with tempfile.TemporaryDirectory() as root:
        cfg = get_config(env_id, overrides=[
            f"collect.num_rollouts={episodes}", f"collect.workers={workers}", f"env.max_episode_steps={steps}",
            f"collect.compress={compress}", f"experiment.data_dir={root}/data", f"experiment.log_dir={root}/logs",
        ])
        start = time.perf_counter()
        folder = collect(cfg)
        elapsed = time.perf_counter() - start
        files = list_episodes(folder)
        import numpy as np

        frames = sum(len(np.load(path)["rewards"]) for path in files)
        size = sum(path.stat().st_size for path in files)
    return frames / elapsed, size / frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two envs, fewer frames (under a minute)")
    parser.add_argument("--envs", nargs="*", default=None)
    args = parser.parse_args()
    env_ids = args.envs or (["ALE/Pong-v5", "LunarLander-v3"] if args.quick else list(WORKLOAD))
    all_workers = os.cpu_count() or 1
    rows, results = [], []
    for env_id in env_ids:
        episodes, steps = WORKLOAD[env_id]
        if args.quick:
            episodes = max(2, episodes // 2)
        raw = raw_step_rate(env_id, episodes * steps // 2)
        one, bytes_per_frame = collector_rate(env_id, 1, episodes, steps)
        many, _ = collector_rate(env_id, all_workers, episodes * all_workers, steps)
        _, compressed_bytes = collector_rate(env_id, all_workers, all_workers, steps // 2, compress=True)
        raw = (raw + raw_step_rate(env_id, episodes * steps // 2)) / 2  # before and after: halves drift
        rows.append((env_id, raw, one, many, bytes_per_frame, compressed_bytes))
        slug = env_id.split("/")[-1].split("-")[0].lower()
        results.append(f"RESULT collect_{slug}_1_worker ratio={one / raw:.2f} target=0.9")
        results.append(f"RESULT collect_{slug}_{all_workers}_workers ratio={many / raw:.2f} target={0.85 * all_workers:.1f}")

    print(f"\n{'env':18s} {'raw env fps':>12s} {'1 worker':>10s} {'ratio':>6s} {f'{all_workers} workers':>10s} "
          f"{'ratio':>6s} {'B/frame':>8s} {'B/frame zlib':>12s}")
    for env_id, raw, one, many, size, compressed in rows:
        print(f"{env_id:18s} {raw:12.0f} {one:10.0f} {one / raw:6.2f} {many:10.0f} {many / raw:6.2f} "
              f"{size:8.0f} {compressed:12.0f}")
    print()
    print("\n".join(results))


if __name__ == "__main__":
    main()
