"""A pool of frame envs spread over workers, stepped together, episode by episode, surviving worker loss.

Gymnasium's vector envs step every sub-env on every call and reset them automatically; population
evaluation needs the opposite: each slot plays exactly one seeded episode and then stops, and only the
slots still running are stepped. `EnvWorkerPool` does that. Slot i lives in worker i % workers; a call sends
each worker its slots' actions at once and then gathers, so the workers step in parallel while the
caller waits (model inference for all slots then runs batched in the caller). `step_async` /
`step_wait` address one worker at a time, so a caller can compute one worker's next actions while
the other workers step.

A worker is a local process or a Ray actor (`utils.workers.configure_backend`); both answer the same
`send` / `receive`. A worker that dies (its process killed, its node lost) is replaced: the pool
remembers each running slot's seed and the actions since its reset, the replacement replays them (the
envs are deterministic given seed and actions) and the lost command is sent again, so the caller sees
the results it would have seen without the crash.
"""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing.connection import Connection
from typing import Any, Optional, Sequence

import numpy as np

from config import EnvConfig
from utils.environment import make_frame_env
from utils.envpool_envs import EnvPoolSlots, resolve_backend
from utils.errors import MAX_RESTARTS, WorkerDied
from utils.ray_backend import PidActor, actor_crashed, connect, remote_actor_class
from utils.workers import default_workers, ray_address


class LocalEnvs:
    """The envs of one worker, addressed by global slot number."""

    def __init__(self, env_cfg: EnvConfig, slots: Sequence[int]):
        self.envs = {slot: make_frame_env(env_cfg) for slot in slots}

    def reset(self, slots: Sequence[int], seeds: Sequence[int]) -> np.ndarray:
        return np.stack([self.envs[slot].reset(seed=int(seed))[0] for slot, seed in zip(slots, seeds)])

    def step(self, slots: Sequence[int], actions: Sequence[Any]) -> tuple[np.ndarray, ...]:
        results = [self.envs[slot].step(action) for slot, action in zip(slots, actions)]
        frames, rewards, terminated, truncated, _ = zip(*results)
        return (np.stack(frames), np.asarray(rewards, np.float64), np.asarray(terminated, bool), np.asarray(truncated, bool))

    def replay(self, slots: Sequence[int], seeds: Sequence[int], actions: Sequence[Sequence[Any]]) -> None:
        """Reset each slot from its seed and step it through its actions, all inside the worker (one
        round trip): a replacement worker's envs end up where the dead worker's were."""
        self.reset(slots, seeds)
        for slot, slot_actions in zip(slots, actions):
            for action in slot_actions:
                self.envs[slot].step(action)

    def close(self) -> None:
        for env in self.envs.values():
            env.close()


def _worker_loop(connection: Connection, env_cfg: EnvConfig, slots: Sequence[int]) -> None:
    envs = LocalEnvs(env_cfg, slots)
    connection.send(("ok", None))
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


class _ProcessWorker:
    """One env worker as a local process, reached through a pipe. `receive` answers the last `send`."""

    def __init__(self, env_cfg: EnvConfig, worker: int, slots: Sequence[int]):
        self.worker = worker
        # fork: the child needs no re-import of torch; it only runs env code, so threads of the parent
        # (a replacement is forked mid-run) hold no lock it could need.
        context = mp.get_context("fork")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_worker_loop, args=(child, env_cfg, slots), daemon=True)
        self.process.start()
        child.close()  # else our own copy of the child's end would hide its death (recv would block)
        self.pid = self.process.pid

    def wait_ready(self) -> None:
        self.receive()

    def send(self, command: str, payload: tuple) -> None:
        try:
            self.connection.send((command, payload))
        except (BrokenPipeError, ConnectionResetError) as error:
            raise WorkerDied(f"env worker {self.worker} (pid {self.pid}) is gone") from error

    def receive(self) -> Any:
        try:
            status, result = self.connection.recv()
        except (EOFError, ConnectionResetError) as error:
            raise WorkerDied(f"env worker {self.worker} (pid {self.pid}) died") from error
        if status == "error":
            raise RuntimeError(f"env worker {self.worker} failed: {result}")
        return result

    def close(self) -> None:
        try:
            self.send("close", ())
        except WorkerDied:
            pass  # already gone: nothing to close
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
        self.connection.close()


class _EnvActor(PidActor, LocalEnvs):
    """One env worker of `EnvWorkerPool` on Ray: that worker's envs, as a local process holds them."""


class RayEnvWorker:
    """One env worker of `EnvWorkerPool` as a Ray actor: the same `send` / `receive` as a local process."""

    def __init__(self, env_cfg: EnvConfig, worker: int, slots: Sequence[int], address: str):
        self.ray = connect(address)
        self.worker = worker
        self.actor = remote_actor_class(_EnvActor).remote(env_cfg, list(slots))
        self.result_ref: Any = None
        self.pid: Optional[int] = None

    def _get(self, ref: Any) -> Any:
        try:
            return self.ray.get(ref)
        except Exception as error:
            if actor_crashed(self.ray, error):
                raise WorkerDied(f"env worker {self.worker} (Ray actor, pid {self.pid}) died") from error
            raise

    def wait_ready(self) -> None:
        self.pid = self._get(self.actor.pid.remote())

    def send(self, command: str, payload: tuple) -> None:
        self.result_ref = getattr(self.actor, command).remote(*payload)

    def receive(self) -> Any:
        ref, self.result_ref = self.result_ref, None
        return self._get(ref)

    def close(self) -> None:
        self.ray.kill(self.actor)


class EnvWorkerPool:
    """`num_envs` frame envs of `env_cfg` over `workers` workers (1 = all in this process).

    reset(slots, seeds) -> frames (n, S, S, 3) uint8
    step_async(worker, slots, actions), then step_wait(worker) -> frames (n, S, S, 3) uint8, rewards (n,),
        terminated (n,), truncated (n,)
    Results come back in the order of `slots`. A slot whose episode ended must be reset before it is
    stepped again.
    """

    def __init__(self, env_cfg: EnvConfig, num_envs: int, workers: int = 0):
        self.env_cfg = env_cfg
        self.num_envs = num_envs
        self.workers = min(default_workers(workers), num_envs)
        self.action_space = None
        if self.workers == 1:
            self.local = LocalEnvs(env_cfg, range(num_envs))
            self.action_space = next(iter(self.local.envs.values())).action_space
            return
        self.local = None
        self.ray_address = ray_address()  # a replacement runs where the pool's other workers run
        self.handles = [self._start_worker(worker) for worker in range(self.workers)]
        for handle in self.handles:  # started all at once, so their env start-up overlaps
            handle.wait_ready()
        # What a replacement needs to rebuild a running slot: its seed and the actions since its reset.
        self.episode_seeds: dict[int, int] = {}
        self.episode_actions: dict[int, list[Any]] = {}
        self.pending: list[Optional[tuple[str, tuple]]] = [None] * self.workers
        self.failures = [0] * self.workers
        probe = make_frame_env(env_cfg)
        self.action_space = probe.action_space
        probe.close()

    def _start_worker(self, worker: int) -> Any:
        slots = range(worker, self.num_envs, self.workers)
        if self.ray_address:
            return RayEnvWorker(self.env_cfg, worker, slots, self.ray_address)
        return _ProcessWorker(self.env_cfg, worker, slots)

    def pids(self) -> list[int]:
        """The process id of each worker (tests kill one to check that the pool survives it)."""
        return [handle.pid for handle in self.handles]

    def _send(self, worker: int, command: str, payload: tuple) -> None:
        self.pending[worker] = (command, payload)
        try:
            self.handles[worker].send(command, payload)
        except WorkerDied as error:
            self._replace(worker, error)

    def _receive(self, worker: int) -> Any:
        while True:
            try:
                result = self.handles[worker].receive()
                break
            except WorkerDied as error:
                self._replace(worker, error)
        self.failures[worker] = 0
        command, (slots, values) = self.pending[worker]
        self.pending[worker] = None
        if command == "reset":
            for slot, seed in zip(slots, values):
                self.episode_seeds[slot], self.episode_actions[slot] = int(seed), []
        else:
            ended = result[2] | result[3]
            for slot, action, slot_ended in zip(slots, values, ended):
                if slot_ended:  # nothing to rebuild: it is reset before it steps again
                    del self.episode_seeds[slot], self.episode_actions[slot]
                else:
                    self.episode_actions[slot].append(action)
        return result

    def _replace(self, worker: int, cause: WorkerDied) -> None:
        """Start a new worker for a dead one's slots, replay its running episodes, resend its command."""
        while True:
            self.failures[worker] += 1
            if self.failures[worker] > MAX_RESTARTS:
                raise RuntimeError(f"env worker {worker} died {self.failures[worker]} times in a row; giving up") from cause
            self.handles[worker].close()
            handle = self.handles[worker] = self._start_worker(worker)
            running = [slot for slot in range(worker, self.num_envs, self.workers) if slot in self.episode_seeds]
            try:
                handle.wait_ready()
                if running:
                    handle.send("replay", (running, [self.episode_seeds[slot] for slot in running],
                                           [self.episode_actions[slot] for slot in running]))
                    handle.receive()
                if self.pending[worker] is not None:
                    handle.send(*self.pending[worker])
                return
            except WorkerDied as error:
                cause = error

    def _reset_all(self, slots: Sequence[int], seeds: Sequence[int]) -> np.ndarray:
        slots = np.asarray(slots)
        owners = slots % self.workers
        groups = [(worker, np.flatnonzero(owners == worker)) for worker in range(self.workers)]
        groups = [(worker, mine) for worker, mine in groups if len(mine)]
        for worker, mine in groups:
            self._send(worker, "reset", (slots[mine].tolist(), [int(seeds[i]) for i in mine]))
        parts = [self._receive(worker) for worker, _ in groups]
        inverse = np.argsort(np.concatenate([mine for _, mine in groups]))
        return np.concatenate(parts)[inverse]

    def reset(self, slots: Sequence[int], seeds: Sequence[int]) -> np.ndarray:
        if self.local is not None:
            return self.local.reset(slots, seeds)
        return self._reset_all(slots, seeds)

    def worker_of(self, slots: np.ndarray) -> np.ndarray:
        """The worker each slot lives in."""
        return np.asarray(slots) % self.workers

    def step_async(self, worker: int, slots: Sequence[int], actions: Sequence[Any]) -> None:
        """Start stepping `slots`, which must all live in `worker`; collect with `step_wait(worker)`."""
        if self.local is not None:
            self._local_result = self.local.step(slots, actions)
            return
        self._send(worker, "step", (list(map(int, slots)), list(actions)))

    def step_wait(self, worker: int) -> tuple[np.ndarray, ...]:
        """frames, rewards, terminated, truncated of the slots sent by the last `step_async(worker)`."""
        if self.local is not None:
            return self._local_result
        return self._receive(worker)

    def close(self) -> None:
        if self.local is not None:
            self.local.close()
            return
        for handle in self.handles:
            handle.close()

    def __enter__(self) -> "EnvWorkerPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def make_env_slots(env_cfg: EnvConfig, num_envs: int, workers: int = 0) -> EnvWorkerPool | EnvPoolSlots:
    """`num_envs` frame envs for population evaluation on `env_cfg`'s backend: EnvPool's batch in this
    process, or Gymnasium envs over `workers` worker processes (0 = one per core)."""
    if resolve_backend(env_cfg) == "envpool":
        return EnvPoolSlots(env_cfg, num_envs)
    return EnvWorkerPool(env_cfg, num_envs, workers)
