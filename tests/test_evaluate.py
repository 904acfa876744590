"""evaluate.py: statistics, reproducibility, outputs, and the compare path end to end."""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from config import get_config
from evaluate import evaluate, summarize
from utils.stats import difference_of_means
from tests.conftest import isolate

ROOT = Path(__file__).resolve().parents[1]


def test_statistics_equal_a_hand_computation():
    returns = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    s = summarize("x", returns, np.array([5, 5, 5, 5, 10]), 1.0, "-")
    std = math.sqrt(((returns - 4.0) ** 2).sum() / 4)  # 3.5355...
    half = 2.7764451051977987 * std / math.sqrt(5)  # t(0.975, 4)
    assert (s.mean, s.median, s.min, s.max, s.mean_length) == (4.0, 3.0, 1.0, 10.0, 6.0)
    assert s.std == pytest.approx(std) and s.ci95_low == pytest.approx(4 - half) and s.ci95_high == pytest.approx(4 + half)
    a, b = np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 6.0, 8.0])
    difference, low, high = difference_of_means(a, b)
    va, vb = 1.0 / 3, (20.0 / 3) / 4
    dof = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 3)
    from scipy import stats

    half = stats.t.ppf(0.975, dof) * math.sqrt(va + vb)
    assert difference == -3.0 and low == pytest.approx(-3 - half) and high == pytest.approx(-3 + half)


def test_same_seeds_give_the_same_returns_and_outputs_agree(tmp_path, capsys):
    cfg = isolate(get_config("CartPole-v1", overrides=["env.max_episode_steps=100"]), tmp_path)
    first = evaluate(cfg, "random", episodes=6, workers=2)
    second = evaluate(cfg, "random", episodes=6, workers=1)
    assert [r["return"] for r in first["rows"]] == [r["return"] for r in second["rows"]]
    assert len({r["return"] for r in first["rows"]}) > 1
    table = capsys.readouterr().out
    folder = tmp_path / "results" / "cartpole-v1"
    summary = json.loads((folder / "eval_random.json").read_text())["summaries"][0]
    with open(folder / "eval_random_episodes.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and summary["episodes"] == 6
    assert np.mean([float(r["return"]) for r in rows]) == pytest.approx(summary["mean"])
    assert f"{summary['mean']:.1f} ± {summary['std']:.1f}" in table


def test_a_single_episode_writes_strict_json_with_no_interval(tmp_path):
    cfg = isolate(get_config("CartPole-v1", overrides=["env.max_episode_steps=20"]), tmp_path)
    evaluate(cfg, "random", episodes=1, workers=1)
    text = (tmp_path / "results" / "cartpole-v1" / "eval_random.json").read_text()
    summary = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    assert summary["summaries"][0]["ci95_low"] is None and summary["summaries"][0]["episodes"] == 1


def test_compare_with_a_missing_method_names_the_training_command(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--env", "LunarLander-v3", "--method", "compare",
                             "--episodes", "2"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: no controller checkpoint at checkpoints/lunarlander-v3/controller.pt; "
                                     "train it first: python train.py --env LunarLander-v3")


@pytest.mark.slow
def test_compare_end_to_end_writes_table_plots_and_videos(trained_lunar, capsys):
    cfg = isolate(get_config("LunarLander-v3", preset="smoke", overrides=["env.backend=gymnasium"]), trained_lunar)
    result = evaluate(cfg, "compare", episodes=3, workers=2, video=True)
    out = capsys.readouterr().out
    assert [s.method for s in result["summaries"]] == ["world_models", "ppo", "random"]
    assert "world_models - ppo:" in out and "95% CI" in out
    # The World Models row names the agent that played: its V, M and kept-best C.
    from models.loaders import agent_fingerprint, load_world_model_agent
    from utils.files import trained_config

    played = load_world_model_agent(trained_config(cfg, "controller"), "cpu")
    assert result["summaries"][0].agent == agent_fingerprint(played.policy.vae, played.policy.mdnrnn, played.params)
    assert result["summaries"][1].agent == result["summaries"][2].agent == ""
    results = trained_lunar / "results" / "lunarlander-v3"
    for name in ("compare_returns.png", "compare_training_curves.png", "compare_env_steps.png"):
        assert (results / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Return against real env steps, from what the runs wrote: World Models' steps start after its
    # collection (the episode files) and grow by each generation's real steps (controller_curve.csv);
    # PPO's are its TensorBoard global steps.
    from evaluate import returns_by_env_steps
    from utils.data import load_episode, require_episodes

    series = returns_by_env_steps(cfg)
    collected = sum(len(load_episode(p, keys=("rewards",))["rewards"]) for p in require_episodes(cfg))
    with open(trained_lunar / "checkpoints" / "lunarlander-v3" / "controller_curve.csv") as handle:
        curve = list(csv.DictReader(handle))
    steps, fitness = series["world_models: population mean"]
    assert steps.tolist() == [collected + int(row["real_env_steps"]) for row in curve]
    assert fitness.tolist() == pytest.approx([float(row["fitness_mean"]) for row in curve])
    ppo_steps, _ = series["ppo: training episodes"]
    assert len(ppo_steps) > 0 and np.all(np.diff(ppo_steps) >= 0) and ppo_steps[-1] <= cfg.ppo.total_timesteps
    videos = sorted(p.name for p in (trained_lunar / "videos" / "lunarlander-v3").glob("eval_*.mp4"))
    assert len(videos) == 7  # best + worst for 3 methods, and the world-model views
    # PPO plays this command's episode cap, as every method does (LunarLander's lander is still aloft at step 7).
    short = copy.deepcopy(cfg)
    short.env.max_episode_steps = 7
    assert [row["length"] for row in evaluate(short, "ppo", episodes=2, workers=1)["rows"]] == [7, 7]
    data = json.loads((results / "eval_compare.json").read_text())
    assert data["world_models_minus_ppo"]["ci95_low"] <= data["world_models_minus_ppo"]["difference"]
    assert data["ppo_experiment"] == "lunarlander-v3"  # no --ppo-experiment: this experiment's PPO played


def test_ppo_series_counts_the_env_steps_of_its_action_repeat(tmp_path):
    """PPO from LunarLander's pixels repeats each action 4 times: its training episodes are drawn at 4x its
    global step on the env-steps axis, where World Models' steps are the env's own."""
    from torch.utils.tensorboard import SummaryWriter

    from evaluate import returns_by_env_steps

    cfg = isolate(get_config("LunarLander-v3", overrides=["ppo.observation=pixels", "ppo.frame_skip=4"]), tmp_path)
    with SummaryWriter(str(tmp_path / "logs" / "lunarlander-v3" / "ppo")) as writer:
        for step, episodic_return in ((128, -200.0), (256, -150.0)):
            writer.add_scalar("charts/episodic_return", episodic_return, step)
    steps, returns = returns_by_env_steps(cfg)["ppo: training episodes"]
    assert steps.tolist() == [512, 1024] and returns.tolist() == [-200.0, -150.0]
    state = isolate(get_config("LunarLander-v3"), tmp_path)
    assert returns_by_env_steps(state)["ppo: training episodes"][0].tolist() == [128, 256]


@pytest.mark.parametrize("env_id, overrides, expected", [
    # LunarLander from pixels, each action held 4 Box2D steps: an episode capped at 10 env steps is 10
    # long, not 3 (PPO steps).
    ("LunarLander-v3", ["ppo.observation=pixels", "ppo.frame_skip=4"], 10),
    # Pong (PPO skips 4 frames itself, as ALE v5's step): the cap of 10 v5 steps sits above the count, and
    # the 2 FIRE presses that serve after a reset are the PPO env's own steps.
    ("ALE/Pong-v5", [], 12),
    # The same with 2 frames a PPO step: 20 PPO steps to the cap, and the count is in ALE v5's 4-frame steps.
    ("ALE/Pong-v5", ["ppo.frame_skip=2"], 11),
])
def test_ppo_episode_lengths_count_the_env_steps_every_method_plays(tmp_path, env_id, overrides, expected):
    """The `length` column is in the env's own steps for every method, and each episode's is its own."""
    from evaluate import episode_env_steps
    from training.ppo_envs import make_ppo_eval_env
    from utils.environment import run_episode

    class DoNothing:
        def reset(self, seed):
            pass

        def act(self, observation):
            return 0

    cfg = isolate(get_config(env_id, overrides=overrides), tmp_path)
    env = make_ppo_eval_env(cfg, max_episode_steps=10)
    for seed in (3, 4):  # the second episode's length is not the first's
        run_episode(env, DoNothing(), seed=seed, record=False)
        assert episode_env_steps(env, cfg) == expected
    env.close()


def test_ppo_of_another_experiment_is_read_from_that_experiment(tmp_path):
    """experiment.ppo_experiment: PPO's checkpoint and training curve come from that run, not this one."""
    from torch.utils.tensorboard import SummaryWriter

    from evaluate import returns_by_env_steps
    from utils.errors import WorldModelsError

    cfg = isolate(get_config("LunarLander-v3", overrides=["experiment.name=wm-lunar",
                                                          "experiment.ppo_experiment=ppo-lunar-pixels"]), tmp_path)
    with SummaryWriter(str(tmp_path / "logs" / "ppo-lunar-pixels" / "ppo")) as writer:
        writer.add_scalar("charts/episodic_return", -120.0, 1024)
    assert returns_by_env_steps(cfg)["ppo: training episodes"][1].tolist() == [-120.0]
    with pytest.raises(WorldModelsError, match="no ppo checkpoint at .*ppo-lunar-pixels/ppo.pt; train it first: "
                                               r"python -m training.ppo_baseline --env LunarLander-v3 --experiment ppo-lunar-pixels$"):
        evaluate(cfg, "ppo", episodes=1, workers=1)
    # With its checkpoint there, the steps are converted with the PPO run's own config (pixels, 4 repeats),
    # not this command's (state).
    from utils.files import checkpoint_path, of_experiment, save_checkpoint

    trained = isolate(get_config("LunarLander-v3", overrides=["experiment.name=ppo-lunar-pixels", "ppo.observation=pixels",
                                                              "ppo.frame_skip=4"]), tmp_path)
    save_checkpoint(checkpoint_path(trained, "ppo"), "ppo", trained, global_step=1024)
    assert checkpoint_path(of_experiment(cfg, "ppo-lunar-pixels"), "ppo") == checkpoint_path(trained, "ppo")
    assert returns_by_env_steps(cfg)["ppo: training episodes"][0].tolist() == [4096]
    with pytest.raises(WorldModelsError, match="experiment.ppo_experiment"):
        get_config("LunarLander-v3", overrides=["experiment.ppo_experiment=../elsewhere"])


@pytest.mark.slow
def test_dream_evaluation_is_reproducible_and_uses_the_temperature(trained_lunar):
    cfg = isolate(get_config("LunarLander-v3", preset="smoke"), trained_lunar)
    first = evaluate(cfg, "world_models", episodes=8, video=True, dream=True, temperature=1.0)
    again = evaluate(cfg, "world_models", episodes=8, dream=True, temperature=1.0)
    colder = evaluate(cfg, "world_models", episodes=8, dream=True, temperature=0.5)
    returns = [[row["return"] for row in result["rows"]] for result in (first, again, colder)]
    assert returns[0] == returns[1] and returns[0] != returns[2]
    assert first["summaries"][0].method == "world_models_dream_tau1"
    assert all(1 <= row["length"] <= cfg.controller.dream_max_steps for row in first["rows"])
    assert (trained_lunar / "videos" / "lunarlander-v3" / "dream_eval_tau1.mp4").stat().st_size > 0
    saved = json.loads((trained_lunar / "results" / "lunarlander-v3" / "eval_world_models_dream_tau0.5.json").read_text())
    assert [row["return"] for row in saved["episodes"]] == returns[2]


def test_dream_evaluation_needs_a_world_models_agent(tmp_path):
    from utils.errors import WorldModelsError

    cfg = isolate(get_config("LunarLander-v3", preset="smoke"), tmp_path)
    with pytest.raises(WorldModelsError, match="--dream plays a World Models agent"):
        evaluate(cfg, "ppo", episodes=2, dream=True)


@pytest.mark.slow
def test_the_command_sets_the_evaluation_episode_length(trained_lunar):
    """C was trained on 60-step episodes; the evaluation's cap is the command's, for every method."""
    cfg = isolate(get_config("LunarLander-v3", preset="smoke", overrides=["env.max_episode_steps=25"]), trained_lunar)
    result = evaluate(cfg, "world_models", episodes=3, workers=1)
    assert max(row["length"] for row in result["rows"]) == 25


@pytest.mark.slow
def test_the_cmaes_mean_plays_where_asked_and_its_files_sit_beside_the_kept_bests(trained_lunar, tmp_path):
    """experiment.controller_params=mean (evaluate.py --controller mean) plays CMA-ES's mean, not the kept
    best, and writes eval_world_models_cmaes_mean*, leaving the kept best's files alone."""
    import shutil

    import torch

    from models.loaders import load_world_model_agent

    shutil.copytree(trained_lunar / "checkpoints", tmp_path / "checkpoints")
    path = tmp_path / "checkpoints" / "lunarlander-v3" / "controller.pt"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["mean_params"] = -checkpoint["best_params"]  # surely another C than the kept best
    torch.save(checkpoint, path)
    best = isolate(get_config("LunarLander-v3", preset="smoke", overrides=["env.max_episode_steps=40"]), tmp_path)
    mean = copy.deepcopy(best)
    mean.experiment.controller_params = "mean"
    assert torch.equal(load_world_model_agent(mean, "cpu").params.flatten(), checkpoint["mean_params"])
    assert torch.equal(load_world_model_agent(best, "cpu").params.flatten(), checkpoint["best_params"])
    by_best = evaluate(best, "world_models", episodes=3, workers=1)
    by_mean = evaluate(mean, "world_models", episodes=3, workers=1)
    assert by_best["summaries"][0].agent != by_mean["summaries"][0].agent
    folder = tmp_path / "results" / "lunarlander-v3"
    tail = "_envpool" if by_mean["summaries"][0].backend == "envpool" else ""
    saved = {name: json.loads((folder / f"eval_{name}{tail}.json").read_text())
             for name in ("world_models", "world_models_cmaes_mean")}
    assert saved["world_models"]["controller_params"] == "best"
    assert saved["world_models_cmaes_mean"]["controller_params"] == "mean"
    assert [r["return"] for r in saved["world_models_cmaes_mean"]["episodes"]] == [r["return"] for r in by_mean["rows"]]
    from utils.errors import WorldModelsError

    with pytest.raises(WorldModelsError, match="experiment.controller_params"):
        get_config("LunarLander-v3", overrides=["experiment.controller_params=median"])
