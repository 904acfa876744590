"""tools/carracing_rendering.py: Gymnasium's CarRacing with its frame drawn as EnvPool draws it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import carracing_rendering as rendering  # noqa: E402
from config import get_config  # noqa: E402
from utils.environment import env_action_space, make_env, make_random_agent  # noqa: E402
from utils.errors import WorldModelsError  # noqa: E402

from gymnasium.envs.box2d import car_racing  # noqa: E402

PLAIN_DRAWING = car_racing.CarRacing._create_image_array


def play(steps: int = 70, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(frames (steps, 96, 96, 3), rewards (steps,)) of full gas with a hard left turn from seed's track."""
    env = make_env("CarRacing-v3")
    observation, _ = env.reset(seed=seed)
    frames, rewards = [observation], []
    for _ in range(steps):
        observation, reward, *_ = env.step(np.array([-1.0, 1.0, 0.0]))
        frames.append(observation)
        rewards.append(reward)
    env.close()
    return np.stack(frames), np.array(rewards)


def test_envpool_drawing_changes_the_pixels_not_the_game_and_is_undone():
    plain_frames, plain_rewards = play()
    with rendering.envpool_drawing():
        drawn_frames, drawn_rewards = play()
    after_frames, _ = play()
    np.testing.assert_array_equal(drawn_rewards, plain_rewards)  # same car, same track, same tiles
    difference = np.abs(drawn_frames.astype(float) - plain_frames.astype(float)).mean()
    assert difference > 1.0, f"the two drawings differ by only {difference:.2f} grey levels"
    np.testing.assert_array_equal(after_frames, plain_frames)  # the patch is gone after the block


def test_skid_marks_are_drawn_dark_once_the_wheels_spin():
    """Full gas from standstill spins the rear wheels; EnvPool's drawing leaves marks where they slid."""
    with rendering.envpool_drawing(skid_marks=False):
        unmarked, _ = play(steps=40, seed=5)
    with rendering.envpool_drawing(skid_marks=True):
        marked, _ = play(steps=40, seed=5)
    np.testing.assert_array_equal(marked[0], unmarked[0])  # before the first step nothing has slid
    changed = np.any(marked != unmarked, axis=-1)  # (T, 96, 96)
    assert changed.sum() > 0
    brightness = lambda frames: frames.astype(float).sum(axis=-1)[changed]  # noqa: E731
    assert brightness(marked).mean() < brightness(unmarked).mean()  # the marks are darker than road or grass


class FrameBlindAgent:
    """Seeded random actions (so both drawings see the same game), noting at each step whether Gymnasium's
    own frame drawing is in place."""

    def __init__(self, cfg):
        self.random = make_random_agent(cfg, env_action_space(cfg.env))
        self.plain_drawing_seen: list[bool] = []

    def reset(self, seed=None):
        self.random.reset(seed)

    def act(self, observation):
        self.plain_drawing_seen.append(car_racing.CarRacing._create_image_array is PLAIN_DRAWING)
        return self.random.act(observation)


def test_returns_by_drawing_pairs_the_same_seeds_and_draws_each_arm_its_way(tmp_path):
    cfg = get_config("CarRacing-v3", overrides=["env.backend=gymnasium", "env.max_episode_steps=30",
                                                f"experiment.log_dir={tmp_path}"])
    agent = FrameBlindAgent(cfg)
    returns = rendering.returns_by_drawing(cfg, agent, [11, 12], rendering.DRAWINGS)
    assert list(returns) == list(rendering.DRAWINGS) and returns["gymnasium"].shape == (2,)
    np.testing.assert_array_equal(returns["envpool"], returns["gymnasium"])  # the drawing changes no dynamics
    steps = len(agent.plain_drawing_seen) // 2
    assert all(agent.plain_drawing_seen[:steps]) and not any(agent.plain_drawing_seen[steps:])
    table = rendering.markdown_table(returns)
    assert "paired by seed" in table and "+0.0" in table


def test_saved_returns_checks_env_backend_agent_and_seeds(tmp_path, capsys):
    path = tmp_path / "eval.json"

    def write(backend: str = "gymnasium", env_id: str = "CarRacing-v3", agent: str | None = "abc") -> None:
        summary = {"method": "world_models", "backend": backend, **({"agent": agent} if agent is not None else {})}
        path.write_text(json.dumps({
            "env_id": env_id, "summaries": [summary],
            "episodes": [{"method": "world_models", "seed": 7, "return": 812.5},
                         {"method": "random", "seed": 8, "return": -30.0}]}))

    write()
    np.testing.assert_array_equal(rendering.saved_returns(path, [7], "abc"), [812.5])
    with pytest.raises(WorldModelsError, match="another agent"):
        rendering.saved_returns(path, [7], "def")
    with pytest.raises(WorldModelsError, match="seed 8"):
        rendering.saved_returns(path, [7, 8], "abc")  # seed 8 was played by random only
    write(backend="envpool")
    with pytest.raises(WorldModelsError, match="not a Gymnasium evaluation"):
        rendering.saved_returns(path, [7], "abc")
    write(env_id="LunarLander-v3")
    with pytest.raises(WorldModelsError, match="not CarRacing-v3"):
        rendering.saved_returns(path, [7], "abc")
    write(agent=None)  # an evaluation from before evaluate.py recorded the agent
    np.testing.assert_array_equal(rendering.saved_returns(path, [7], "abc"), [812.5])
    assert "on trust" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--env", "LunarLander-v3"], "CarRacing-v3's frame only"),
    (["--backend", "envpool"], "Gymnasium's CarRacing only"),
    (["--episodes", "1"], "--episodes must be >= 2"),
])
def test_bad_arguments_are_refused_before_anything_runs(argv, message):
    with pytest.raises(WorldModelsError, match=message):
        rendering.main(argv)
