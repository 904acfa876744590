"""DoomTakeCover-v0, the paper's second experiment: EnvPool's ViZDoom TakeCover as the paper plays it
(one frame per step, 2,100-frame cap, 64x64 RGB, three actions, a score of frames survived), the clear
errors where it cannot run, and a whole smoke pipeline with C trained in the dream."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("envpool")

from config import get_config  # noqa: E402
from evaluate import evaluate  # noqa: E402
from tests.conftest import TINY_PIPELINE_OVERRIDES, isolate  # noqa: E402
from train import run_pipeline  # noqa: E402
from utils.envpool_envs import play_episodes, resolve_backend  # noqa: E402
from utils.environment import RandomAgent, env_action_space, make_env  # noqa: E402
from utils.errors import WorldModelsError  # noqa: E402
from utils.files import load_checkpoint  # noqa: E402
from models.controller import DOOM_PAPER_ACTIONS, outputs_to_actions  # noqa: E402
from models.loaders import make_controller  # noqa: E402

DOOM = "DoomTakeCover-v0"
ROOT = Path(__file__).resolve().parents[1]


def test_take_cover_is_the_papers_task_and_an_episode_is_a_function_of_its_seed():
    env_cfg = get_config(DOOM).env
    space = env_action_space(env_cfg)
    assert space.n == 3 and env_cfg.max_episode_steps == 2100
    seeds = [11, 12, 13]
    batched = dict(play_episodes(env_cfg, [RandomAgent(space) for _ in seeds], seeds))
    for index, episode in batched.items():
        assert episode.obs.shape == (episode.length, 64, 64, 3) and episode.obs.dtype == np.uint8
        assert episode.obs.std() > 5  # a picture of the room, not a blank
        # The score is frames survived: 1 per step; a random agent dies (terminated) long before the cap.
        assert np.all(episode.rewards == 1.0) and episode.total_reward == episode.length
        assert episode.terminated[-1] and not episode.terminated[:-1].any() and episode.length < 2100
    (_, alone), = play_episodes(env_cfg, [RandomAgent(space)], [seeds[1]])
    assert alone.length == batched[1].length and np.array_equal(alone.obs, batched[1].obs)


def _view_shift(env_cfg, action: int) -> int:
    """How many pixels the view has moved sideways after holding `action` for 12 frames (seed 3), against
    standing still: negative = the room moved left in the picture, so the player stepped right."""
    def last_frame(held: int) -> np.ndarray:
        agent = type("Hold", (), {"reset": lambda self, seed: None, "act": lambda self, frame: held})()
        (_, episode), = play_episodes(env_cfg, [agent], [3])
        return episode.obs[12].astype(np.float64).mean(-1)

    still, moved = last_frame(0), last_frame(action)
    errors = {dx: np.abs(np.roll(still, dx, axis=1)[:, 8:-8] - moved[:, 8:-8]).mean() for dx in range(-6, 7)}
    return min(errors, key=errors.get)


def test_doom_paper_mapping_cuts_one_tanh_output_into_left_stay_right():
    env_cfg = get_config(DOOM, overrides=["env.max_episode_steps=13"]).env
    space = env_action_space(env_cfg)
    left, stay, right = DOOM_PAPER_ACTIONS
    # The game's own actions: holding `right` moves the room left in the picture, `left` the other way.
    assert _view_shift(env_cfg, right) < 0 < _view_shift(env_cfg, left)
    outputs = torch.atanh(torch.tensor([[-0.9], [-0.34], [-0.33], [0.0], [0.33], [0.34], [0.9]]))
    chosen = outputs_to_actions(outputs, space, mapping="doom_paper").argmax(-1).tolist()
    assert chosen == [left, left, stay, stay, stay, right, right]
    with pytest.raises(WorldModelsError, match="one output and Doom's 3 actions"):
        outputs_to_actions(torch.zeros(2, 3), space, mapping="doom_paper")
    with pytest.raises(WorldModelsError, match="doom_paper maps one output to DoomTakeCover-v0's"):
        get_config("CarRacing-v3", overrides=["controller.action_mapping=doom_paper"])
    with pytest.raises(WorldModelsError, match="has a single output"):
        get_config(DOOM, overrides=["controller.sample_actions=true"])


def test_doom_runs_only_on_envpool_and_says_how_to_get_it(monkeypatch):
    assert resolve_backend(get_config(DOOM).env) == "envpool"
    with pytest.raises(WorldModelsError, match=r"^DoomTakeCover-v0 exists only on EnvPool .*use --backend envpool"):
        resolve_backend(get_config(DOOM, overrides=["env.backend=gymnasium"]).env)
    with pytest.raises(WorldModelsError, match="exists only on EnvPool, and this command plays Gymnasium envs only"):
        make_env(DOOM)  # every Gymnasium-only path (PPO's envs, the probes) ends here
    with pytest.raises(WorldModelsError, match="takes none"):
        resolve_backend(get_config(DOOM, overrides=["env.env_kwargs=frame_skip=4"]).env)
    import utils.envpool_envs as envpool_envs

    monkeypatch.setattr(envpool_envs, "envpool_installed", lambda: False)
    with pytest.raises(WorldModelsError, match=r"install it with `pip install envpool==1\.2\.5`"):
        resolve_backend(get_config(DOOM).env)


def test_the_doom_preset_is_the_papers_scale():
    cfg = get_config(DOOM)
    assert (cfg.vae.latent_size, cfg.mdnrnn.hidden_size, cfg.mdnrnn.num_mixtures) == (64, 512, 5)
    assert cfg.mdnrnn.sequence_length == 500
    assert cfg.controller.inputs == "zch" and cfg.controller.mode == "dream"
    # The paper's C: one tanh output on [z, c, h], 64 + 512 + 512 weights and a bias.
    assert make_controller(cfg, env_action_space(cfg.env)).num_parameters == 1089
    assert (cfg.controller.population_size, cfg.controller.rollouts_per_candidate) == (64, 16)
    assert cfg.controller.dream_max_steps == 2100
    assert (cfg.controller.sigma, cfg.controller.weight_decay) == (0.1, 0.005)


TINY_OVERRIDES = [*TINY_PIPELINE_OVERRIDES, "collect.num_rollouts=4", "env.max_episode_steps=60",
                  "controller.population_size=4", "controller.generations=1", "controller.eval_episodes=1",
                  "controller.video_every=0", "controller.dream_max_steps=30"]


def test_a_smoke_pipeline_trains_c_in_the_dream_and_plays_it_in_the_real_game(tmp_path, monkeypatch):
    cfg = isolate(get_config(DOOM, preset="smoke", overrides=TINY_OVERRIDES), tmp_path)
    outputs = run_pipeline(cfg)
    assert set(outputs) == {"collect", "vae", "mdnrnn", "controller"}
    result = evaluate(cfg, "world_models", episodes=2, workers=1, video=True)
    summary = result["summaries"][0]
    assert summary.backend == "envpool" and summary.episodes == 2 and "z (64) + c + h (32)" in summary.observes
    # Each episode's return is its frames survived.
    assert [row["return"] for row in result["rows"]] == [row["length"] for row in result["rows"]]
    videos = sorted(path.name for path in (tmp_path / "videos" / "doomtakecover-v0").glob("*.mp4"))
    assert videos and all(name.startswith("eval_world_models_") for name in videos)
    dream = evaluate(cfg, "world_models", episodes=3, workers=1, dream=True)
    assert dream["summaries"][0].backend == "dream" and max(row["length"] for row in dream["rows"]) <= 30
    # The paper's Table 2 at smoke scale: a C per tau, trained in the same M, scored in the dream and the game.
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    from temperature_table import markdown_table, temperature_rows

    folders = {"data": "data", "checkpoint": "checkpoints", "log": "logs", "video": "videos", "results": "results"}
    flags = [*TINY_OVERRIDES, *(f"experiment.{kind}_dir={tmp_path / name}" for kind, name in folders.items())]
    common = ["--env", DOOM, "--preset", "smoke", *(item for flag in flags for item in ("--set", flag))]
    rows = temperature_rows(cfg, common, [0.5, 1.3], episodes=2)
    assert [row["temperature"] for row in rows] == [0.5, 1.3, None]
    for tau in (0.5, 1.3):
        folder = tmp_path / "checkpoints" / "doomtakecover-v0" / f"tau{tau:g}"
        trained = load_checkpoint(folder / "controller.pt", "controller", DOOM)
        assert trained["config"]["controller"]["temperature"] == tau
        assert (folder / "vae.pt").stat().st_ino == (tmp_path / "checkpoints" / "doomtakecover-v0" / "vae.pt").stat().st_ino
    table = markdown_table(rows, 2).splitlines()
    assert table[2].startswith("| 0.5 | ") and table[-1].startswith("| random policy | - | ")
    # Asked again with the same flags, the table is assembled from the saved rows: nothing is played.
    import temperature_table

    def no_evaluation(*args, **kwargs):
        raise AssertionError("a tau scored before was scored again")

    real_evaluate = temperature_table.evaluate_summary
    monkeypatch.setattr(temperature_table, "evaluate_summary", no_evaluation)
    assert temperature_rows(cfg, common, [1.3, 0.5], episodes=2) == [rows[1], rows[0], rows[2]]
    # A C that changed since (here: its checkpoint rewritten) is scored again; the others are not.
    played = []
    monkeypatch.setattr(temperature_table, "evaluate_summary",
                        lambda *args, **kwargs: played.append(args) or real_evaluate(*args, **kwargs))
    trained_path = tmp_path / "checkpoints" / "doomtakecover-v0" / "tau0.5" / "controller.pt"
    checkpoint = torch.load(trained_path, weights_only=True)
    checkpoint["best_params"] = checkpoint["best_params"] + 0.5
    torch.save(checkpoint, trained_path)
    temperature_rows(cfg, common, [0.5, 1.3], episodes=2)
    assert [call[1] for call in played] == ["doomtakecover-v0/tau0.5", "doomtakecover-v0/tau0.5"]
