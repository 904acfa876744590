"""A pool of frame envs spread over worker processes, stepped together, episode by episode.

Gymnasium's vector envs step every sub-env on every call and reset them automatically; population
evaluation needs the opposite: each slot plays exactly one seeded episode and then stops, and only the
slots still running are stepped. `EnvPool` does that. Slot i lives in worker i % workers; a call sends
each worker its slots' actions at once and then gathers, so the workers step in parallel while the
caller waits (model inference for all slots then runs batched in the caller). `step_async` /
`step_wait` address one worker at a time, so a caller can compute one worker's next actions while
the other workers step.
"""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing.connection import Connection
from typing import Any, Sequence

import numpy as np

from config import EnvConfig
from utils.environment import make_frame_env
from utils.workers import default_workers


class _LocalEnvs:
    """The envs of one worker, addressed by global slot number."""

    def __init__(self, env_cfg: EnvConfig, slots: Sequence[int]):
        self.envs = {slot: make_frame_env(env_cfg) for slot in slots}

    def reset(self, slots: Sequence[int], seeds: Sequence[int]) -> np.ndarray:
        return np.stack([self.envs[slot].reset(seed=int(seed))[0] for slot, seed in zip(slots, seeds)])

    def step(self, slots: Sequence[int], actions: Sequence[Any]) -> tuple[np.ndarray, ...]:
        results = [self.envs[slot].step(action) for slot, action in zip(slots, actions)]
        frames, rewards, terminated, truncated, _ = zip(*results)
        return (np.stack(frames), np.asarray(rewards, np.float64), np.asarray(terminated, bool), np.asarray(truncated, bool))

    def close(self) -> None:
        for env in self.envs.values():
            env.close()


def _worker_loop(connection: Connection, env_cfg: EnvConfig, slots: Sequence[int]) -> None:
    envs = _LocalEnvs(env_cfg, slots)
    connection.send("ready")
    while True:
        command, payload = connection.recv()
        if command == "close":
            envs.close()
            connection.close()
            return
        try:
            connection.send(("ok", getattr(envs, command)(*payload)))
        except Exception as error:  # the caller re-raises it with the worker's message
            connection.send(("error", f"{type(error).__name__}: {error}"))


class EnvPool:
    """`num_envs` frame envs of `env_cfg` over `workers` processes (1 = all in this process).

    reset(slots, seeds) -> frames (n, S, S, 3) uint8
    step(slots, actions) -> frames (n, S, S, 3) uint8, rewards (n,), terminated (n,), truncated (n,)
    Results come back in the order of `slots`.
    """

    def __init__(self, env_cfg: EnvConfig, num_envs: int, workers: int = 0):
        self.num_envs = num_envs
        self.workers = min(default_workers(workers), num_envs)
        self.action_space = None
        if self.workers == 1:
            self.local = _LocalEnvs(env_cfg, range(num_envs))
            self.action_space = next(iter(self.local.envs.values())).action_space
            return
        self.local = None
        context = mp.get_context("fork")
        self.connections, self.processes = [], []
        for worker in range(self.workers):
            parent, child = context.Pipe()
            process = context.Process(target=_worker_loop, args=(child, env_cfg, range(worker, num_envs, self.workers)), daemon=True)
            process.start()
            child.close()
            self.connections.append(parent)
            self.processes.append(process)
        for connection in self.connections:
            connection.recv()
        probe = make_frame_env(env_cfg)
        self.action_space = probe.action_space
        probe.close()

    def _call(self, command: str, slots: Sequence[int], values: Sequence[Any]) -> list[Any]:
        slots = np.asarray(slots)
        owners = slots % self.workers
        for worker, connection in enumerate(self.connections):
            mine = np.flatnonzero(owners == worker)
            if len(mine):
                connection.send((command, (slots[mine].tolist(), [values[i] for i in mine])))
        order, parts = [], []
        for worker, connection in enumerate(self.connections):
            mine = np.flatnonzero(owners == worker)
            if len(mine):
                status, result = connection.recv()
                if status == "error":
                    raise RuntimeError(f"env worker {worker} failed: {result}")
                order.append(mine)
                parts.append(result)
        inverse = np.argsort(np.concatenate(order))
        if command == "reset":
            return np.concatenate(parts)[inverse]
        return [np.concatenate([part[k] for part in parts])[inverse] for k in range(4)]

    def reset(self, slots: Sequence[int], seeds: Sequence[int]) -> np.ndarray:
        if self.local is not None:
            return self.local.reset(slots, seeds)
        return self._call("reset", slots, list(seeds))

    def step(self, slots: Sequence[int], actions: Sequence[Any]) -> tuple[np.ndarray, ...]:
        if self.local is not None:
            return self.local.step(slots, actions)
        return tuple(self._call("step", slots, list(actions)))

    def worker_of(self, slots: np.ndarray) -> np.ndarray:
        """The worker each slot lives in."""
        return np.asarray(slots) % self.workers

    def step_async(self, worker: int, slots: Sequence[int], actions: Sequence[Any]) -> None:
        """Start stepping `slots`, which must all live in `worker`; collect with `step_wait(worker)`."""
        if self.local is not None:
            self._local_result = self.local.step(slots, actions)
            return
        self.connections[worker].send(("step", (list(map(int, slots)), list(actions))))

    def step_wait(self, worker: int) -> tuple[np.ndarray, ...]:
        """frames, rewards, terminated, truncated of the slots sent by the last `step_async(worker)`."""
        if self.local is not None:
            return self._local_result
        status, result = self.connections[worker].recv()
        if status == "error":
            raise RuntimeError(f"env worker {worker} failed: {result}")
        return result

    def close(self) -> None:
        if self.local is not None:
            self.local.close()
            return
        for connection in self.connections:
            connection.send(("close", None))
        for process in self.processes:
            process.join(timeout=5)

    def __enter__(self) -> "EnvPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
