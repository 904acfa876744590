"""Ray as the worker backend: `parallel_map` on actors of a Ray cluster, and the pieces `EnvWorkerPool`'s
Ray env workers (`utils/env_workers.py`) are made of.

Chosen by `experiment.ray_address` (`utils.workers.configure_backend`): "local" starts a Ray instance on
this machine, "auto" joins the cluster that `ray start` made this machine part of, "HOST:PORT" joins
the head node there. Ray is an optional dependency, imported only here and only when asked for.

Actors import the project's modules and read and write the configured folders (rollouts, checkpoints),
so every node needs the repository and those folders at the driver's paths: one checkout and a shared
filesystem. The repository goes on the actors' import path, and a map actor changes into the driver's
working directory, so relative folders in the config mean the same on every node.

Both uses survive a lost actor: a map resubmits the item the dead actor held to a fresh one, and
`EnvWorkerPool` replays the dead env worker's episodes (it sees `WorkerDied`, as for a local process).
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from utils.errors import MAX_RESTARTS, WorldModelsError

INSTALL_COMMAND = "pip install -r requirements-distributed.txt"
REPOSITORY = Path(__file__).resolve().parents[1]


def import_ray() -> Any:
    """The `ray` module, or a WorldModelsError naming the install command."""
    try:
        import ray
    except ImportError as error:
        raise WorldModelsError(f"experiment.ray_address is set but Ray is not installed; run `{INSTALL_COMMAND}`") from error
    return ray


def connect(address: str) -> Any:
    """Ray, connected to `address` once per process ("local" | "auto" | "HOST:PORT"); a Ray that
    this process already initialised (a test's, a notebook's) is used as it is."""
    ray = import_ray()
    if not ray.is_initialized():
        options = {"include_dashboard": False} if address == "local" else {}  # the dashboard costs seconds to start
        # Ray puts the driver's working directory on the actors' import path, which is not always the
        # repository (`python -m training.collect` run from a data folder): put the repository there too.
        runtime_env = {"env_vars": {"PYTHONPATH": f"{REPOSITORY}{os.pathsep}${{PYTHONPATH}}"}}
        try:
            ray.init(address=address, runtime_env=runtime_env, **options)
        except ConnectionError as error:
            raise WorldModelsError(f"no Ray cluster at experiment.ray_address={address!r} ({error}); start one with "
                                   "`ray start --head`, or use --ray-address local") from error
    return ray


def cluster_cpus(address: str) -> int:
    """CPUs in the whole cluster: the number of workers that run at once."""
    return max(1, int(connect(address).cluster_resources().get("CPU", 1)))


def _by_import_name(function: Optional[Callable[..., Any]]) -> Optional[Callable[..., Any]]:
    """`function`, or when it was defined in a script run as `__main__` (`python -m training.collect`,
    `python evaluate.py`) the same function imported under the script's module name. Ray copies
    `__main__` functions by value, each with its own copy of the module's globals, so the state an
    initializer leaves in a global would never reach the mapped function; by name, both share the
    module the actor imports."""
    if function is None or function.__module__ != "__main__":
        return function
    main = sys.modules["__main__"]
    module_name = main.__spec__.name if main.__spec__ is not None else Path(main.__file__).stem
    return getattr(importlib.import_module(module_name), function.__qualname__)


def actor_crashed(ray: Any, error: Exception) -> bool:
    """A lost actor (retry elsewhere), as opposed to an actor whose constructor raised (a bug: re-raise)."""
    return isinstance(error, ray.exceptions.RayActorError) and not error.actor_init_failed


class PidActor:
    def pid(self) -> int:
        """The actor's process id (tests kill it by pid)."""
        return os.getpid()


class _MapActor(PidActor):
    """One worker of `parallel_map`: runs the initializer once, then `function` on item after item."""

    def __init__(self, driver_cwd: str, function: Callable[[Any], Any], initializer: Optional[Callable[..., None]],
                 initargs: tuple):
        os.chdir(driver_cwd)
        self.function = function
        if initializer is not None:
            initializer(*initargs)

    def run(self, item: Any) -> Any:
        return self.function(item)


@functools.lru_cache(maxsize=None)
def remote_actor_class(actor_class: type) -> Any:
    # One CPU each: Ray spreads the actors over the nodes by free cores (`default_workers` asks for no
    # more actors than the cluster has cores).
    return import_ray().remote(num_cpus=1)(actor_class)


def parallel_map(function: Callable[[Any], Any], items: Sequence[Any], workers: int,
                 initializer: Optional[Callable[..., None]], initargs: tuple, address: str) -> Iterator[Any]:
    """`utils.workers.parallel_map` on Ray actors: every item's result exactly once, in completion order,
    even when actors die mid-map (each holds one item at a time; a lost one goes to a fresh actor)."""
    ray = connect(address)
    function, initializer = _by_import_name(function), _by_import_name(initializer)
    actor_class = remote_actor_class(_MapActor)
    waiting = deque(range(len(items)))
    in_flight: dict[Any, tuple[Any, int]] = {}  # result ref -> (actor, item index)
    losses = [0] * len(items)
    actors: list[Any] = []

    def start_actor() -> Any:
        actors.append(actor_class.remote(os.getcwd(), function, initializer, initargs))
        return actors[-1]

    def give_work(actor: Any) -> None:
        if waiting:
            index = waiting.popleft()
            in_flight[actor.run.remote(items[index])] = (actor, index)

    try:
        for _ in range(workers):
            give_work(start_actor())
        while in_flight:
            [ready], _ = ray.wait(list(in_flight), num_returns=1)
            actor, index = in_flight.pop(ready)
            try:
                result = ray.get(ready)
            except Exception as error:
                if not actor_crashed(ray, error):
                    raise
                losses[index] += 1
                if losses[index] > MAX_RESTARTS:
                    raise RuntimeError(f"item {index} lost its worker {losses[index]} times; giving up") from error
                waiting.appendleft(index)
                actors.remove(actor)
                ray.kill(actor)  # if it was only unreachable, it must not come back holding a CPU
                give_work(start_actor())
                continue
            give_work(actor)
            yield result
    finally:
        for actor in actors:
            ray.kill(actor)
