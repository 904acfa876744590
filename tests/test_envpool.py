"""The EnvPool backend: same frames as Gymnasium's, one episode per seed, no autoreset leaks, resumable
collection, stage 4's population evaluation, and clear errors where EnvPool cannot serve."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("envpool")

from config import get_config  # noqa: E402
from models.agent import WorldModelAgent  # noqa: E402
from tests.conftest import isolate, kill_mid_collection  # noqa: E402
from benchmarks.common import untrained_policy  # noqa: E402
from training.population import run_episodes  # noqa: E402
from utils.data import list_episodes, load_episode, load_episode_metadata  # noqa: E402
from utils.envpool_envs import EnvPoolBatch, EnvPoolSlots, play_episodes, port_difference, resolve_backend  # noqa: E402
from utils.environment import (RandomAgent, collect_episode_seed, collect_episodes, env_action_space,  # noqa: E402
                               make_frame_env, run_episode)
from utils.errors import WorldModelsError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from compare_backends import backend_frames  # noqa: E402


def envpool_config(tmp_path, env_id="LunarLander-v3", overrides=()):
    return isolate(get_config(env_id, preset="smoke", overrides=["env.backend=envpool", *overrides]), tmp_path)


@pytest.mark.parametrize("env_id", ["CarRacing-v3", "LunarLander-v3", "ALE/Pong-v5"])
def test_both_backends_give_alike_64x64_uint8_frames(env_id):
    # The episodes tools/compare_backends.py compares: the env's collection policy, the same seeds.
    frames = {backend: np.concatenate(backend_frames(env_id, backend, [1, 2, 3], steps=60))
              for backend in ("gymnasium", "envpool")}
    for backend, obs in frames.items():
        assert obs.shape[1:] == (64, 64, 3) and obs.dtype == np.uint8, backend
        assert 0 <= obs.min() and obs.max() <= 255 and obs.std() > 5, backend  # real pictures, not blank
    # Different tracks and landers per seed, the same look: per-channel means within 10 of 255 levels,
    # and the average frames of the two (where the car, the track, the lander sit) correlated.
    gym_mean = frames["gymnasium"].reshape(-1, 3).mean(0)
    pool_mean = frames["envpool"].reshape(-1, 3).mean(0)
    assert np.abs(gym_mean - pool_mean).max() < 10, (gym_mean, pool_mean)
    average_frames = [frames[backend].mean(0).ravel() for backend in ("gymnasium", "envpool")]
    assert np.corrcoef(*average_frames)[0, 1] > 0.9


def test_episode_of_a_seed_is_the_same_alone_or_in_a_batch_and_never_joins_the_next(monkeypatch):
    # As on a 4-core machine: frames are rendered in 4 threads until fewer than 4 envs are left running.
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    cfg = get_config("LunarLander-v3", overrides=["env.backend=envpool", "env.max_episode_steps=400"])
    space = env_action_space(cfg.env)
    seeds = [11, 12, 13, 14, 15]
    batched = dict(play_episodes(cfg.env, [RandomAgent(space, "repeat") for _ in seeds], seeds))
    assert sorted(batched) == list(range(len(seeds)))
    lengths = {episode.length for episode in batched.values()}
    assert len(lengths) > 1, "the episodes should end at different steps (some crash, some time out)"
    for index, seed in enumerate(seeds):
        (_, alone), = play_episodes(cfg.env, [RandomAgent(space, "repeat")], [seed])
        episode = batched[index]
        np.testing.assert_array_equal(episode.obs, alone.obs)
        np.testing.assert_array_equal(episode.rewards, alone.rewards)
        # One episode: the game's end, if any, is its last step; no reward-0 autoreset row follows it.
        assert not episode.terminated[:-1].any() and len(episode.obs) == len(episode.rewards) == episode.length
        assert episode.terminated[-1] or episode.length == 400
        assert episode.seed == seed


def test_an_ended_env_is_never_stepped_into_its_next_episode():
    cfg = get_config("LunarLander-v3", overrides=["env.backend=envpool", "env.max_episode_steps=3"])
    with EnvPoolBatch(cfg.env, [1, 2]) as envs:
        envs.reset()
        for _ in range(3):
            _, _, terminated, truncated = envs.step([0, 1], [0, 0])
        assert truncated.all() and not terminated.any()
        with pytest.raises(WorldModelsError, match="already ended their episode"):
            envs.step([0], [0])


def test_stage_4_population_evaluation_on_envpool_equals_one_agent_at_a_time(tmp_path):
    from benchmarks.common import untrained_policy

    cfg = envpool_config(tmp_path, "LunarLander-v3", ["env.max_episode_steps=80"])
    policy, num_params = untrained_policy(cfg, env_action_space(cfg.env))
    params = np.random.default_rng(0).normal(0, 0.5, (3, num_params)).astype(np.float32)
    seeds = np.array([5, 6, 7, 5, 6, 7])
    with EnvPoolSlots(cfg.env, 4) as pool:  # 6 episodes in chunks of 4: a second batch is made
        returns, lengths, _ = run_episodes(policy, pool, np.repeat(params, 2, axis=0), seeds)
    agents = [WorldModelAgent(policy, p) for p in np.repeat(params, 2, axis=0)]
    single = dict(play_episodes(cfg.env, agents, seeds, record=False))
    np.testing.assert_allclose(returns, [single[i].total_reward for i in range(6)], rtol=1e-5)
    np.testing.assert_array_equal(lengths, [single[i].length for i in range(6)])


def test_envpool_collection_is_resumable_and_replayable(tmp_path):
    args = [sys.executable, "-m", "training.collect", "--env", "LunarLander-v3", "--preset", "smoke", "--backend",
            "envpool", "--num-rollouts", "40", "--set", "env.max_episode_steps=300"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    folder = tmp_path / "data" / "lunarlander-v3" / "rollouts"
    killed_with = kill_mid_collection(args, tmp_path, folder)
    assert 0 < killed_with < 40
    finished = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert finished.returncode == 0, finished.stderr
    paths = list_episodes(folder)
    assert [p.name for p in paths] == [f"ep_{i:06d}.npz" for i in range(40)]
    assert not list(folder.glob(".*tmp*"))
    # Every episode, whichever run wrote it, is the one its seed plays: a fresh collection agrees.
    reference_cfg = envpool_config(tmp_path / "reference", "LunarLander-v3",
                                   ["collect.num_rollouts=40", "env.max_episode_steps=300"])
    reference = list_episodes(collect_episodes(reference_cfg))
    for index, (resumed, fresh) in enumerate(zip(paths, reference)):
        assert load_episode_metadata(resumed)["seed"] == collect_episode_seed(reference_cfg, index)
        for key, values in load_episode(resumed).items():
            np.testing.assert_array_equal(values, load_episode(fresh)[key])


def test_auto_picks_envpool_only_where_it_ports_the_env():
    assert resolve_backend(get_config("CarRacing-v3").env) == "envpool"
    assert resolve_backend(get_config("CartPole-v1").env) == "gymnasium"
    assert resolve_backend(get_config("ALE/Pong-v5").env) == "gymnasium"  # ported, but not faster
    assert resolve_backend(get_config("ALE/Pong-v5", overrides=["env.backend=envpool"]).env) == "envpool"
    assert resolve_backend(get_config("LunarLander-v3", overrides=["env.env_kwargs=continuous=True"]).env) == "gymnasium"
    assert resolve_backend(get_config("CarRacing-v3", overrides=["env.backend=gymnasium"]).env) == "gymnasium"


def test_envpool_where_it_cannot_serve_is_one_line_exit_2_and_writes_nothing(tmp_path):
    result = subprocess.run([sys.executable, "-m", "training.collect", "--env", "CartPole-v1", "--backend", "envpool"],
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: EnvPool has no port of CartPole-v1; it serves CarRacing-v3, LunarLander-v3, ALE/Pong-v5, "
        "ALE/Breakout-v5, DoomTakeCover-v0; use --backend gymnasium"]
    assert list(tmp_path.iterdir()) == []


def test_envpool_asked_for_but_not_installed_names_the_install_command(monkeypatch):
    import utils.envpool_envs as envpool_envs

    monkeypatch.setattr(envpool_envs, "envpool_installed", lambda: False)
    assert resolve_backend(get_config("CarRacing-v3").env) == "gymnasium"  # auto falls back
    with pytest.raises(WorldModelsError, match=r"EnvPool is not installed; run `pip install envpool==1\.2\.5`"):
        resolve_backend(get_config("CarRacing-v3", overrides=["env.backend=envpool"]).env)


def test_evaluate_on_envpool_says_so_and_keeps_the_gymnasium_files_apart(tmp_path):
    from evaluate import evaluate

    cfg = envpool_config(tmp_path, "LunarLander-v3", ["env.max_episode_steps=120"])
    result = evaluate(cfg, "random", episodes=4, workers=1)
    summary = result["summaries"][0]
    assert summary.backend == "envpool" and summary.episodes == 4
    folder = tmp_path / "results" / "lunarlander-v3"
    assert (folder / "eval_random_envpool.json").is_file() and not (folder / "eval_random.json").exists()
    # The same seeded episodes as a batch of uniform random agents on EnvPool.
    space = env_action_space(cfg.env)
    seeds = [row["seed"] for row in result["rows"]]
    played = dict(play_episodes(cfg.env, [RandomAgent(space, "uniform") for _ in seeds], seeds, record=False))
    assert [row["return"] for row in result["rows"]] == pytest.approx([played[i].total_reward for i in range(4)])


# ------------------------------------------------------------------------------- PPO on EnvPool
def ppo_config(tmp_path, env_id, *overrides):
    return get_config(env_id, preset="smoke", overrides=[
        f"experiment.checkpoint_dir={tmp_path / 'checkpoints'}", f"experiment.log_dir={tmp_path / 'logs'}",
        "experiment.device=cpu", "env.backend=envpool", "ppo.num_envs=3", "ppo.num_steps=64",
        "ppo.num_minibatches=2", "ppo.update_epochs=1", "ppo.checkpoint_every=1", *overrides])


def single_env_episode(seed: int) -> tuple[list[np.ndarray], list[float], np.ndarray]:
    """LunarLander-v3 on a one-env EnvPool pool seeded `seed`, action 0 until the first episode ends:
    its observations after each step, its rewards, and the first observation of its next episode."""
    import envpool

    pool = envpool.make_gymnasium("LunarLander-v3", num_envs=1, env_seed=[seed])
    pool.reset()
    observations, rewards = [], []
    while True:
        observation, reward, terminated, truncated, _ = pool.step(np.zeros(1, np.int32))
        observations.append(observation[0])
        rewards.append(float(reward[0]))
        if terminated[0] or truncated[0]:
            break
    next_first, *_ = pool.step(np.zeros(1, np.int32))  # EnvPool's next-step autoreset
    pool.close()
    return observations, rewards, next_first[0]


def test_ppo_envpool_envs_reset_in_the_same_step_and_report_whole_episodes(tmp_path):
    from training.ppo_envs import choose_vector_env, make_vector_env

    cfg = ppo_config(tmp_path, "LunarLander-v3")
    assert choose_vector_env(cfg) == "envpool"
    envs = make_vector_env(cfg)
    envs.reset(seed=40)
    references = [single_env_episode(40 + i) for i in range(3)]
    rewards: list[list[float]] = [[] for _ in range(3)]
    ended = {}
    for step in range(1000):
        observations, step_rewards, terminated, truncated, infos = envs.step(np.zeros(3, np.int64))
        for i in range(3):
            if i in ended:
                continue
            rewards[i].append(float(step_rewards[i]))
            if terminated[i] or truncated[i]:
                ended[i] = step
                reference_observations, reference_rewards, reference_next_first = references[i]
                np.testing.assert_allclose(infos["final_obs"][i], reference_observations[-1], rtol=1e-6)
                # The same step already returns the next episode's first observation (same-step autoreset).
                np.testing.assert_allclose(observations[i], reference_next_first, rtol=1e-6)
                assert infos["final_info"]["_episode"][i]
                assert infos["final_info"]["episode"]["l"][i] == len(reference_rewards) == step + 1
                assert infos["final_info"]["episode"]["r"][i] == pytest.approx(sum(reference_rewards), rel=1e-5)
                np.testing.assert_allclose(rewards[i], reference_rewards, rtol=1e-5)  # no reward-0 reset row
        if len(ended) == 3:
            break
    envs.close()
    assert len(ended) == 3


def test_ppo_envpool_atari_ends_the_learners_episode_at_a_lost_life_and_logs_whole_games(tmp_path):
    from training.ppo_envs import make_vector_env

    cfg = ppo_config(tmp_path, "ALE/Breakout-v5")
    envs = make_vector_env(cfg)
    assert envs.single_observation_space.shape == (4, 84, 84)
    observations, _ = envs.reset(seed=3)
    assert observations.shape == (3, 4, 84, 84) and observations.dtype == np.uint8
    rng = np.random.default_rng(0)
    lives_lost, games, clipped = np.zeros(3, int), [], np.zeros(3)
    for _ in range(3000):
        _, rewards, terminated, truncated, infos = envs.step(rng.integers(0, 4, 3))
        assert set(np.unique(rewards)) <= {-1.0, 0.0, 1.0}  # the learner's rewards are clipped
        clipped += rewards
        lives_lost += terminated
        if infos:
            for i in np.flatnonzero(infos["final_info"]["_episode"]):
                games.append((lives_lost[i], infos["final_info"]["episode"]["r"][i], clipped[i]))
                lives_lost[i], clipped[i] = 0, 0
        if len(games) >= 2:
            break
    envs.close()
    assert len(games) >= 2
    for lives, game_return, clipped_return in games:
        assert lives == 5  # Breakout's five lives: five learner episodes make one logged game
        assert game_return >= clipped_return  # raw points (1, 4, 7 a brick) count, not their signs


def test_ppo_trains_on_envpool_and_refuses_what_it_cannot_serve(tmp_path, capsys):
    from training.ppo_baseline import train_ppo

    cfg = ppo_config(tmp_path, "LunarLander-v3", "ppo.total_timesteps=384")
    path = train_ppo(cfg)
    assert "3 envpool envs" in capsys.readouterr().out
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["global_step"] == 384 and checkpoint["observation_shape"] == [8]
    with pytest.raises(WorldModelsError, match="PPO on EnvPool serves Atari from pixels"):
        train_ppo(ppo_config(tmp_path / "pixels", "LunarLander-v3", "ppo.observation=pixels"))
    gymnasium_cfg = ppo_config(tmp_path, "LunarLander-v3", "env.backend=gymnasium")
    from training.ppo_envs import choose_vector_env

    assert choose_vector_env(gymnasium_cfg) == "sync"


class RecordingAgent(RandomAgent):
    """A random agent that keeps a copy of every frame it is shown."""

    def reset(self, seed=None):
        super().reset(seed)
        self.seen = []

    def act(self, frame):
        self.seen.append(frame.copy())
        return super().act(frame)


@pytest.mark.parametrize("env_id", ["LunarLander-v3", "CarRacing-v3"])
def test_stored_frames_are_the_frames_each_step_showed_the_agent(env_id):
    cfg = get_config(env_id, overrides=["env.backend=envpool", "env.max_episode_steps=60"])
    space = env_action_space(cfg.env)
    agents = [RecordingAgent(space, "uniform") for _ in range(3)]
    episodes = dict(play_episodes(cfg.env, agents, [4, 5, 6]))
    for index, agent in enumerate(agents):
        np.testing.assert_array_equal(episodes[index].obs, np.stack(agent.seen))
        # The picture moves: the lander falls, the car drives (not one frame repeated).
        obs = episodes[index].obs
        assert len(np.unique(obs.reshape(len(obs), -1), axis=0)) > 5


def test_stage_4_records_the_frames_of_its_first_episode_as_they_were_played(tmp_path):
    from benchmarks.common import untrained_policy

    cfg = envpool_config(tmp_path, "LunarLander-v3", ["env.max_episode_steps=50"])
    policy, num_params = untrained_policy(cfg, env_action_space(cfg.env))
    params = np.random.default_rng(1).normal(0, 0.5, (2, num_params)).astype(np.float32)
    with EnvPoolSlots(cfg.env, 2) as pool:
        _, lengths, recorded = run_episodes(policy, pool, params, np.array([8, 9]), record_first=True)
    (_, alone), = play_episodes(cfg.env, [WorldModelAgent(policy, params[0])], [8])
    assert len(recorded) == lengths[0]
    np.testing.assert_array_equal(recorded, alone.obs)


@pytest.mark.parametrize("env_id", ["CarRacing-v3", "LunarLander-v3"])
def test_one_agent_batched_over_episodes_plays_each_as_it_would_alone(tmp_path, env_id):
    # Exploration noise and sampled z are drawn per episode, so sharing a batch changes no episode.
    cfg = envpool_config(tmp_path, env_id, ["env.max_episode_steps=40"])
    policy, num_params = untrained_policy(cfg, env_action_space(cfg.env))
    policy.exploration, policy.sample_z = 0.5, True
    params = np.random.default_rng(2).normal(0, 0.5, num_params).astype(np.float32)
    seeds = [4, 5, 6]
    batched = dict(play_episodes(cfg.env, WorldModelAgent(policy, params).for_episodes(len(seeds)), seeds))
    for index, seed in enumerate(seeds):
        (_, alone), = play_episodes(cfg.env, [WorldModelAgent(policy, params)], [seed])
        np.testing.assert_array_equal(batched[index].actions, alone.actions)
        np.testing.assert_array_equal(batched[index].obs, alone.obs)
    policy.exploration = 0.0  # the noise was there: without it the same seed plays other actions
    (_, plain), = play_episodes(cfg.env, [WorldModelAgent(policy, params)], [seeds[0]])
    assert not np.array_equal(plain.actions[:10], batched[0].actions[:10])


def test_fire_to_serve_plays_the_same_rule_on_envpool():
    """`env.fire_to_serve` on EnvPool as on Gymnasium (tests/test_environment.py): NOOP agents in a batch
    each lose 5 lives, with FIRE played and recorded twice at the start and after each of the first 4 losses."""
    cfg = get_config("ALE/Breakout-v5", overrides=["env.backend=envpool", "env.max_episode_steps=3000"])
    assert cfg.env.fire_to_serve  # the Breakout preset serves
    space = env_action_space(cfg.env)
    noop = type("AlwaysNoop", (), {"reset": lambda self, seed=None: None, "act": lambda self, frame: 0})
    episodes = dict(play_episodes(cfg.env, [noop(), noop()], [5, 6]))
    for episode in episodes.values():
        assert episode.terminated[-1] and len(episode.rewards) < 3000
        assert int(episode.actions[:, 1].sum()) == 10 and episode.actions[:2, 1].all()
    assert space.n == 4


class HoldRight:
    """RIGHT every step, whatever the frame (Breakout's serves come from `env.fire_to_serve`)."""

    def reset(self, seed=None):
        pass

    def act(self, frame):
        return 2


def test_envpools_breakout_pays_holding_right_where_gymnasiums_does_not():
    """The port difference behind `port_difference("ALE/Breakout-v5")` (docs/RESULTS.md, "Breakout"): the
    same constant policy, served by the same rule, on the same 16 seeds, scores far more on EnvPool. If a
    later EnvPool plays Gymnasium's game, this fails and the notice should go."""
    cfg = get_config("ALE/Breakout-v5", overrides=["env.max_episode_steps=3000"])
    seeds = list(range(100, 116))
    env = make_frame_env(dataclasses.replace(cfg.env, backend="gymnasium"))
    try:
        on_gymnasium = np.mean([run_episode(env, HoldRight(), seed, record=False).total_reward for seed in seeds])
    finally:
        env.close()
    played = play_episodes(dataclasses.replace(cfg.env, backend="envpool"), [HoldRight() for _ in seeds], seeds)
    on_envpool = np.mean([episode.rewards.sum() for _, episode in played])
    assert on_gymnasium <= 2.5 and on_envpool >= 4.0, (on_gymnasium, on_envpool)
    assert "Breakout" in port_difference("ALE/Breakout-v5") and "Gymnasium" in port_difference("ALE/Breakout-v5")
    assert port_difference("ALE/Pong-v5") == "" and port_difference("LunarLander-v3") == ""
