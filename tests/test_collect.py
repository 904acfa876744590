"""Stage 1: parallel, resumable, replayable random rollouts; bad input refused."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import kill_mid_collection
from training.collect import collect, make_collect_agent
from utils.data import list_episodes, load_episode, load_episode_metadata, rollout_dir
from utils.environment import collect_episode_seed, make_frame_env, run_episode

ROOT = Path(__file__).resolve().parents[1]


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "training.collect", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_collects_exactly_n_episodes_that_replay_from_their_seeds(smoke_config):
    cfg = smoke_config("LunarLander-v3", ["collect.num_rollouts=5", "collect.workers=2", "env.max_episode_steps=60",
                                          "env.backend=gymnasium"])  # the worker-process path; EnvPool: test_envpool
    folder = collect(cfg)
    paths = list_episodes(folder)
    assert [p.name for p in paths] == [f"ep_{i:06d}.npz" for i in range(5)]
    env = make_frame_env(cfg.env)
    agent = make_collect_agent(cfg, env.action_space)
    for index, path in enumerate(paths):
        stored = load_episode(path)
        meta = load_episode_metadata(path)
        assert meta == {"seed": collect_episode_seed(cfg, index), "env_id": "LunarLander-v3", "policy": cfg.collect.policy,
                        "fire_to_serve": False}
        replay = run_episode(env, agent, meta["seed"], cfg.env.max_episode_steps)
        assert len(stored["obs"]) == replay.length <= 60
        np.testing.assert_array_equal(stored["actions"], replay.actions)
        np.testing.assert_array_equal(stored["rewards"], replay.rewards)
        np.testing.assert_array_equal(stored["obs"], replay.obs)
        assert stored["terminated"].sum() <= 1 and not stored["terminated"][:-1].any()


def test_the_collection_cap_only_ever_shortens_episodes():
    from config import get_config
    from utils.environment import collection_config

    default, smoke = get_config("CarRacing-v3"), get_config("CarRacing-v3", preset="smoke")
    assert (default.collect.max_episode_steps, default.env.max_episode_steps) == (500, 1000)
    assert collection_config(default).env.max_episode_steps == 500 and default.env.max_episode_steps == 1000
    assert collection_config(smoke).env.max_episode_steps == smoke.env.max_episode_steps == 200  # smoke stays short
    assert collection_config(get_config("LunarLander-v3")).env.max_episode_steps == 1000  # no cap of its own


@pytest.mark.parametrize("backend", ["gymnasium", "envpool"])
def test_collection_has_its_own_episode_cap_that_only_cuts_episodes_short(smoke_config, backend):
    if backend == "envpool":
        pytest.importorskip("envpool")
    options = ["collect.num_rollouts=3", "collect.workers=1", "env.max_episode_steps=150", f"env.backend={backend}"]
    capped = collect(smoke_config("LunarLander-v3", [*options, "collect.max_episode_steps=25"]))
    full = collect(smoke_config("LunarLander-v3", [*options, "collect.rollout_folder=full"]))
    for short, long in zip(list_episodes(capped), list_episodes(full)):
        short, long = load_episode(short), load_episode(long)
        assert len(short["obs"]) == 25 < len(long["obs"]) and not short["terminated"].any()
        np.testing.assert_array_equal(short["obs"], long["obs"][:25])  # the same episode, cut at 25 frames
        np.testing.assert_array_equal(short["actions"], long["actions"][:25])


@pytest.mark.slow
def test_killed_collection_resumes_without_duplicates_or_partial_files(tmp_path, smoke_config):
    # The Gymnasium worker-process path (EnvPool's: tests/test_envpool.py).
    args = ["--env", "LunarLander-v3", "--preset", "smoke", "--num-rollouts", "12", "--workers", "1",
            "--backend", "gymnasium", "--set", "env.max_episode_steps=150"]
    folder = tmp_path / "data" / "lunarlander-v3" / "rollouts"
    done_before = kill_mid_collection([sys.executable, "-m", "training.collect", *args], tmp_path, folder)
    assert 3 <= done_before < 12, "the kill must land mid-collection"
    (folder / ".ep_000011.99999.tmp.npz").write_bytes(b"half-written")  # what a kill mid-write leaves
    result = run_cli(args, tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{done_before} of 12 episodes on disk" in result.stdout
    assert sorted(p.name for p in folder.iterdir()) == [f"ep_{i:06d}.npz" for i in range(12)]
    # identical to an uninterrupted run with the same seeds
    reference = collect(smoke_config("LunarLander-v3", ["collect.num_rollouts=12", "env.max_episode_steps=150",
                                                        "env.backend=gymnasium",
                                                        f"experiment.data_dir={tmp_path / 'reference'}"]))
    for resumed, fresh in zip(list_episodes(folder), list_episodes(reference)):
        np.testing.assert_array_equal(load_episode(resumed)["obs"], load_episode(fresh)["obs"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--env", "Pongg-v5"], "unknown environment 'Pongg-v5'; supported: ALE/Pong-v5"),
        (["--num-rollouts", "0"], "collect.num_rollouts must be > 0, got 0"),
        (["--set", "collect.num_rollout=3"], "unknown config key 'collect.num_rollout'; valid keys:"),
        (["--set", "collect.workers=two"], "bad value 'two' for collect.workers: expected an integer"),
        (["--set", "collect.policy=brownian"], "unknown collect.policy 'brownian'; valid: uniform, repeat, random_walk"),
        (["--seed", "100"], "experiment.seed must be in 0..99, got 100"),
        (["--set", "collect.rollout_folder=../walls"], "bad collect.rollout_folder '../walls'; valid: empty or one folder"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    result = run_cli(["--env", "LunarLander-v3", "--preset", "smoke", *args], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {result.stderr.strip()[7:]}"]
    assert message in result.stderr
    assert not (tmp_path / "data").exists()


def test_unwritable_data_folder_is_refused(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    result = run_cli(["--env", "LunarLander-v3", "--preset", "smoke", "--set", f"experiment.data_dir={blocker}"], tmp_path)
    assert result.returncode == 2 and "cannot write to" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_visualize_writes_a_video(smoke_config):
    cfg = smoke_config("ALE/Pong-v5", ["collect.num_rollouts=1", "env.max_episode_steps=30"])
    collect(cfg, visualize=True)
    videos = list(Path(cfg.experiment.video_dir).glob("*/collect_ep_000000.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000
    assert rollout_dir(cfg).name == "rollouts"


def test_collect_random_rollouts_is_the_seed_readme_entry_point(tmp_path):
    from utils.environment import collect_random_rollouts
    from utils.errors import WorldModelsError

    folder = collect_random_rollouts("CartPole-v1", num_rollouts=3, visualize=True, workers=1, data_dir=tmp_path / "data",
                                     log_dir=tmp_path / "logs", video_dir=tmp_path / "videos", max_episode_steps=20)
    assert len(list_episodes(folder)) == 3 and folder == tmp_path / "data" / "cartpole-v1" / "rollouts"
    assert list((tmp_path / "videos").glob("*/collect_ep_000000.mp4"))
    with pytest.raises(WorldModelsError, match="unknown option 'worker'; valid: .*workers"):
        collect_random_rollouts("CartPole-v1", num_rollouts=1, worker=2)


def test_random_controller_data_is_the_papers_carracing_policy_and_a_function_of_the_seed(tmp_path):
    from config import get_config
    from tests.conftest import isolate
    from utils.environment import env_action_space
    from utils.errors import WorldModelsError

    assert get_config("CarRacing-v3", preset="paper").collect.policy == "random_controller"
    cfg = isolate(get_config("CarRacing-v3", preset="smoke", overrides=[
        "collect.policy=random_controller", "controller.action_mapping=carracing_paper", "collect.num_rollouts=2",
        "env.max_episode_steps=30", "collect.workers=1"]), tmp_path)
    space = env_action_space(cfg.env)
    frames = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)

    def actions(seed: int) -> np.ndarray:
        agent = make_collect_agent(cfg, space)
        agent.reset(seed)
        return np.array([agent.act(frame) for frame in frames])

    first = actions(3)
    np.testing.assert_array_equal(first, actions(3))  # the episode's seed draws V, M and C
    assert not np.array_equal(first, actions(4))
    # Cauchy weights times a scale under 0.01: most episodes' actions stay near C's zero output (steer 0,
    # gas 0.5, brake 0); a few heavy-tailed weights push others away.
    typical = np.median(np.stack([actions(seed) for seed in range(20)]), axis=(0, 1))
    np.testing.assert_allclose(typical, [0.0, 0.5, 0.0], atol=0.05)
    assert all(space.contains(action.astype(np.float32)) for action in first)
    folder = collect(cfg)
    assert [load_episode_metadata(path)["policy"] for path in list_episodes(folder)] == ["random_controller"] * 2
    # The shared random-policy folder never mixes policies.
    cfg.collect.policy, cfg.collect.num_rollouts = "random_walk", 3
    with pytest.raises(WorldModelsError, match="holds episodes of collect.policy=random_controller"):
        collect(cfg)
    # Nor other seeds' (another collect.seed_offset, or another --seed's data from before each seed had its
    # folder): a run's data would depend on what ran first.
    cfg.collect.policy, cfg.collect.seed_offset = "random_controller", 7
    with pytest.raises(WorldModelsError, match="holds episodes of other seeds .*collect.rollout_folder"):
        collect(cfg)
    cfg.collect.policy, cfg.collect.seed_offset = "random_walk", 0
    other_seed = copy.deepcopy(cfg)
    other_seed.experiment.seed += 1
    assert rollout_dir(other_seed) == folder.parent / f"rollouts-seed{other_seed.experiment.seed}"
    # A data set of its own goes beside the shared one and leaves it alone.
    cfg.collect.rollout_folder = "walk"
    walk = collect(cfg)
    assert walk == folder.parent / "walk" / "rollouts"
    assert [load_episode_metadata(path)["policy"] for path in list_episodes(walk)] == ["random_walk"] * 3
    assert len(list_episodes(folder)) == 2


def test_shared_random_data_never_mixes_served_and_unserved_episodes(tmp_path):
    """`env.fire_to_serve` changes the game the episodes show (Breakout's ball served or not), so the
    shared random-policy folder refuses to add episodes played under the other rule."""
    from config import get_config
    from tests.conftest import isolate
    from utils.errors import WorldModelsError

    cfg = isolate(get_config("ALE/Breakout-v5", preset="smoke", overrides=["collect.num_rollouts=1", "collect.workers=1",
                                                                          "env.max_episode_steps=20"]), tmp_path)
    folder = collect(cfg)
    episode = load_episode(list_episodes(folder)[0])
    assert load_episode_metadata(list_episodes(folder)[0])["fire_to_serve"] and episode["actions"][:2, 1].all()
    cfg.env.fire_to_serve, cfg.collect.num_rollouts = False, 2
    with pytest.raises(WorldModelsError, match="holds episodes of env.fire_to_serve=true, unlike this run's"):
        collect(cfg)
    assert len(list_episodes(folder)) == 1


def test_episode_files_from_before_fire_to_serve_read_as_unserved(tmp_path):
    """Rollouts written before `env.fire_to_serve` existed carry no such key: they were played unserved."""
    path = tmp_path / "ep_000000.npz"
    np.savez(path, obs=np.zeros((1, 64, 64, 3), np.uint8), actions=np.zeros((1, 3), np.float32),
             rewards=np.zeros(1, np.float32), terminated=np.zeros(1, bool), seed=np.int64(5),
             env_id=np.str_("CarRacing-v3"), policy=np.str_("random_walk"))
    assert load_episode_metadata(path) == {"seed": 5, "env_id": "CarRacing-v3", "policy": "random_walk",
                                           "fire_to_serve": False}
