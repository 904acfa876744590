"""Population evaluation in the real environment: many controllers, one episode each, stepping together.

Stage 4 scores every CMA-ES candidate x rollout here, and re-scores the distribution mean and the
generation's best on its evaluation episodes; the benchmarks measure it. Envs live in `EnvWorkerPool`
workers; V, M and every episode's C run in this process as one batch per step (`WorldModelPolicy.act`).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from models.agent import WorldModelPolicy
from utils.env_workers import EnvWorkerPool
from utils.envpool_envs import EnvPoolSlots


def run_episodes(policy: WorldModelPolicy, pool: EnvWorkerPool | EnvPoolSlots, params: np.ndarray, seeds: np.ndarray,
                 record_first: bool = False) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Play episode e with parameters params[e] from env seed seeds[e], all episodes stepping together.

    params: (E, N); seeds: (E,). Returns returns (E,) float64, lengths (E,) int64, and the frames of
    episode 0 (T, 64, 64, 3) uint8 when `record_first`. E may exceed the pool: it runs in chunks.

    The episodes are grouped by the env worker they live in, and the groups are pipelined: while one
    worker steps its envs, V, M and C run (batched) for another group, so neither the model nor the
    envs wait for the other. Every episode's computation is its own, so grouping changes no result,
    with one exception: the random draws of `sample_z` and `sample_actions` come from one generator for
    the batch. It is re-seeded here from the call's episode seeds, so a call is still a pure function of
    its seeds and parameters (a resumed CMA-ES run draws what an uninterrupted one drew), but an episode's
    draws depend on the batch it is played in.
    """
    total = len(seeds)
    policy.generator.manual_seed(int(np.random.SeedSequence([int(seed) for seed in seeds]).generate_state(1)[0]))
    returns, lengths = np.zeros(total), np.zeros(total, np.int64)
    recorded: list[np.ndarray] = []
    params_tensor = torch.as_tensor(params, dtype=torch.float32, device=policy.device)
    for start in range(0, total, pool.num_envs):
        count = min(pool.num_envs, total - start)
        frames = pool.reset(range(count), seeds[start : start + count])
        hidden = policy.initial_state(count)

        def act_and_send(worker: int, slots: np.ndarray) -> None:
            if record_first and start == 0 and slots[0] == 0:
                recorded.append(frames[0].copy())  # `frames` is overwritten in place as episodes step
            rows = torch.as_tensor(slots, device=policy.device)
            step = policy.act(frames[slots], params_tensor[start + rows], (hidden[0][:, rows], hidden[1][:, rows]))
            hidden[0][:, rows], hidden[1][:, rows] = step.hidden
            pool.step_async(worker, slots, step.env_actions)

        slots_all = np.arange(count)
        owners = pool.worker_of(slots_all)
        running = {w: slots_all[owners == w] for w in range(pool.workers) if (owners == w).any()}
        for worker, slots in running.items():
            act_and_send(worker, slots)
        while running:
            for worker in list(running):
                slots = running.pop(worker)
                new_frames, rewards, terminated, truncated = pool.step_wait(worker)
                frames[slots] = new_frames
                returns[start + slots] += rewards
                lengths[start + slots] += 1
                still_running = slots[~(terminated | truncated)]
                if len(still_running):
                    act_and_send(worker, still_running)
                    running[worker] = still_running
    return returns, lengths, (np.stack(recorded) if recorded else None)
