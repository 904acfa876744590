"""The worker backend: map a function over items in worker processes, results as they finish.

Stages call `parallel_map` (and `utils.env_workers.EnvWorkerPool`) and never touch a pool themselves, so they do
not know which backend runs their workers: local processes (the default) or actors on a Ray cluster
(`utils/ray_backend.py`). The backend is process-global, set once from the config by
`configure_backend` (the CLIs do it in `config_from_args`). Each worker runs `initializer(*initargs)`
once, which is where it builds its expensive state (an environment, models).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from typing import Any, Callable, Iterator, Optional, Sequence

from config import ExperimentConfig

_backend = {"ray_address": ""}


def configure_backend(experiment: ExperimentConfig) -> None:
    """Run the workers of this process's stages as local processes (`experiment.ray_address` "") or
    as Ray actors ("local", "auto" or "HOST:PORT"). Ray itself starts at the first parallel call."""
    if experiment.ray_address:
        from utils import ray_backend

        ray_backend.import_ray()  # a missing install fails here, before a stage has done any work
    _backend["ray_address"] = experiment.ray_address


def ray_address() -> str:
    """The configured Ray address; "" = local processes."""
    return _backend["ray_address"]


def default_workers(requested: int) -> int:
    """0 means one worker per CPU core: this machine's, or the whole Ray cluster's. On Ray, never more
    than the cluster's cores: each actor holds one, and one that cannot be placed would wait forever."""
    if not ray_address():
        return requested if requested > 0 else (os.cpu_count() or 1)
    if requested == 1:
        return 1  # runs in this process: no need to reach the cluster
    from utils import ray_backend

    cores = ray_backend.cluster_cpus(ray_address())
    return min(requested, cores) if requested > 0 else cores


def parallel_map(
    function: Callable[[Any], Any],
    items: Sequence[Any],
    workers: int,
    initializer: Optional[Callable[..., None]] = None,
    initargs: tuple = (),
) -> Iterator[Any]:
    """Yield `function(item)` for every item, in completion order.

    With one worker (or one item) everything runs in this process, whatever the backend: no pickling,
    no start-up cost, and exceptions surface with their full traceback.
    """
    workers = min(default_workers(workers), max(1, len(items)))
    if workers == 1:
        if initializer is not None:
            initializer(*initargs)
        yield from map(function, items)
        return
    if ray_address():
        from utils import ray_backend

        yield from ray_backend.parallel_map(function, items, workers, initializer, initargs, ray_address())
        return
    # forkserver/spawn would re-import torch in each worker (seconds), so workers are forked. A forked
    # child inherits this process's state but can use neither its threads nor its CUDA context (CUDA
    # cannot be re-initialised after a fork): initializers build what the worker needs on the CPU.
    context = mp.get_context("fork")
    pool = context.Pool(workers, initializer=initializer, initargs=initargs)
    try:
        yield from pool.imap_unordered(function, items, chunksize=1)
        pool.close()  # workers exit on their own once the queue is drained
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
