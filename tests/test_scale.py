"""Scaling out (issue #8): the Ray backend gives the local backend's results, and lost workers are retried.

A real run uses one backend per process; here both share one. Everything that forks local worker
processes runs before the Ray instance starts (a process running Ray's threads is no safe place to
fork), so the local-process tests come first in this file and Ray starts with the first test asking.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from config import ExperimentConfig, get_config
from models.controller import CMAES
from tests.conftest import isolate
from tests.test_controller import _random_policy
from training.collect import collect
from training.population import run_episodes
from training.train_utils import add_common_args, config_from_args
from utils.data import list_episodes, load_episode
from utils.env_workers import EnvWorkerPool
from utils.environment import make_frame_env
from utils.errors import WorldModelsError
from utils.workers import configure_backend, parallel_map, ray_address

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = {"processes": "", "ray": "local"}
COLLECT_OVERRIDES = ["collect.num_rollouts=4", "collect.workers=2", "env.max_episode_steps=50"]
# A hang inside Ray's C++ core would not see pytest's usual SIGALRM timeout: the thread method ends the
# run with every thread's stack instead of letting CI wait out its limit.
pytestmark = pytest.mark.timeout(180, method="thread")


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance for the module: starting one takes seconds."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False)
    # Actors cannot import this test module (pytest put tests/ on the path of this process only).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


@pytest.fixture
def use_backend():
    """Switch this process's worker backend; the local default is back after the test."""
    yield lambda name: configure_backend(ExperimentConfig(ray_address=BACKENDS[name]))
    configure_backend(ExperimentConfig())


@pytest.fixture(scope="module")
def local_rollouts(tmp_path_factory) -> list[Path]:
    """Episodes collected by 2 local worker processes: what the Ray backend must reproduce."""
    root = tmp_path_factory.mktemp("local")
    return list_episodes(collect(isolate(get_config("LunarLander-v3", preset="smoke", overrides=COLLECT_OVERRIDES), root)))


@pytest.fixture(scope="module")
def generation_setup():
    cfg = get_config("LunarLander-v3", preset="smoke", overrides=["env.max_episode_steps=50"])
    policy, num_params = _random_policy(cfg, make_frame_env(cfg.env).action_space)
    return cfg, policy, num_params


@pytest.fixture(scope="module")
def reference_fitness(generation_setup):
    """The generation's fitness with every env in this process: what every backend must reproduce."""
    cfg, policy, num_params = generation_setup
    with EnvWorkerPool(cfg.env, num_envs=8, workers=1) as pool:
        return _one_generation(pool, policy, num_params)


def _one_generation(pool: EnvWorkerPool, policy, num_params: int) -> np.ndarray:
    """Fitness (population,) of one CMA-ES generation: 4 candidates x 2 seeded rollouts each."""
    population, rollouts = 4, 2
    solutions = CMAES(num_params, sigma=0.5, population_size=population, seed=0).ask()
    returns, _, _ = run_episodes(policy, pool, np.repeat(solutions, rollouts, axis=0), np.tile([21, 22], population))
    return returns.reshape(population, rollouts).mean(axis=1)


def _generation_on(backend: str, killed: bool, use_backend, generation_setup) -> tuple[np.ndarray, list[int], list[int]]:
    """One generation's fitness on 2 workers of `backend`, with worker 1 SIGKILLed right after its 10th
    step command was sent when `killed` (the step is in flight); also the workers' pids before and after."""
    cfg, policy, num_params = generation_setup
    use_backend(backend)
    with EnvWorkerPool(cfg.env, num_envs=8, workers=2) as pool:
        first_pids, step_async, sent = pool.pids(), pool.step_async, []

        def step_async_then_kill(worker: int, slots, actions) -> None:
            step_async(worker, slots, actions)
            if worker == 1:
                sent.append(worker)
                if killed and len(sent) == 10:
                    os.kill(pool.pids()[1], signal.SIGKILL)

        pool.step_async = step_async_then_kill
        return _one_generation(pool, policy, num_params), first_pids, pool.pids()


# ------------------------------------------------------------------ local processes (before Ray starts)
# Local processes with no worker killed: tests/test_controller.py (batched equals one at a time).
def test_a_generation_survives_a_killed_local_worker_process(use_backend, generation_setup, reference_fitness):
    fitness, first_pids, pids = _generation_on("processes", True, use_backend, generation_setup)
    np.testing.assert_array_equal(fitness, reference_fitness)
    assert pids[0] == first_pids[0] and pids[1] != first_pids[1], "the killed worker is replaced, the other kept"


def test_asking_for_ray_without_ray_installed_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(WorldModelsError, match=r"Ray is not installed; run `pip install -r requirements-distributed.txt`"):
        configure_backend(ExperimentConfig(ray_address="auto"))
    assert ray_address() == "", "a failed request leaves the local backend in place"


# -------------------------------------------------------------------------------------------------- Ray
def test_collection_cli_on_ray_writes_the_same_episodes_as_local_processes(local_rollouts, ray_instance, tmp_path):
    # The CLI run as `python -m` joins this module's Ray instance ("auto"): the stage's functions then
    # live in `__main__`, and the actors write under the driver's working directory.
    command = [sys.executable, "-m", "training.collect", "--env", "LunarLander-v3", "--preset", "smoke", "--ray-address", "auto"]
    result = subprocess.run([*command, *(arg for override in COLLECT_OVERRIDES for arg in ("--set", override))],
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    on_ray = list_episodes(tmp_path / "data" / "lunarlander-v3" / "rollouts")
    assert [p.name for p in local_rollouts] == [p.name for p in on_ray] == [f"ep_{i:06d}.npz" for i in range(4)]
    for local_path, ray_path in zip(local_rollouts, on_ray):
        local_episode, ray_episode = load_episode(local_path), load_episode(ray_path)
        assert local_episode.keys() == ray_episode.keys()
        for key in local_episode:
            np.testing.assert_array_equal(local_episode[key], ray_episode[key])


@pytest.mark.parametrize("killed", [False, True], ids=["intact", "actor_killed"])
def test_a_cma_es_generation_on_ray_gives_the_local_fitness(ray_instance, use_backend, generation_setup,
                                                            reference_fitness, killed):
    fitness, first_pids, pids = _generation_on("ray", killed, use_backend, generation_setup)
    np.testing.assert_array_equal(fitness, reference_fitness)
    assert pids[0] == first_pids[0]
    assert (pids[1] != first_pids[1]) == killed, "the killed actor is replaced, the other kept"


def _slow_item(item: int) -> tuple[int, int]:
    time.sleep(0.2)  # long enough that an actor is always holding an item when the test kills it
    return item, os.getpid()


def test_parallel_map_on_ray_returns_every_item_once_when_an_actor_is_killed(ray_instance, use_backend):
    use_backend("ray")
    items, pids = [], set()
    for item, pid in parallel_map(_slow_item, list(range(10)), workers=2):
        if not pids:
            os.kill(pid, signal.SIGKILL)  # it has already been handed its next item
        items.append(item)
        pids.add(pid)
    assert sorted(items) == list(range(10))
    assert len(pids) == 3, "two actors, then a fresh one in place of the killed one"


def test_ray_address_flag_sets_the_backend(ray_instance, use_backend):
    parser = argparse.ArgumentParser()
    add_common_args(parser)
    cfg = config_from_args(parser.parse_args(["--env", "LunarLander-v3", "--ray-address", "local"]))
    assert cfg.experiment.ray_address == ray_address() == "local"
