"""tools/carracing_laps.py: what Gymnasium's CarRacing state says about where an agent's points went."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import carracing_laps as laps  # noqa: E402
from config import get_config  # noqa: E402
from utils.environment import make_frame_env  # noqa: E402
from utils.errors import WorldModelsError  # noqa: E402


def test_split_unvisited_counts_gaps_behind_the_car_and_the_rest_ahead():
    visited = np.zeros(100, dtype=bool)
    visited[:40] = True
    visited[[10, 11, 25]] = False  # three tiles the car drove past without touching
    assert laps.split_unvisited(visited, progress=40) == (3, 60)
    assert laps.split_unvisited(visited, progress=20) == (2, 61)  # tile 25 is ahead of a car at 20


def test_split_unvisited_a_car_that_came_round_has_everything_behind_it_one_that_rolled_back_nothing():
    visited = np.ones(100, dtype=bool)
    visited[[30, 31, 70]] = False
    assert laps.split_unvisited(visited, progress=102) == (3, 0)
    early = np.zeros(100, dtype=bool)
    early[:3] = True
    assert laps.split_unvisited(early, progress=2) == (0, 97)
    assert laps.split_unvisited(early, progress=-1) == (0, 97)


def test_track_progress_counts_crossings_of_the_start_line_both_ways():
    assert laps.track_progress(range(41), tiles=100) == 40
    round_and_on = [*range(0, 100, 3), 99, 0, 5, 30]  # a lap, then 30 tiles into the next
    assert laps.track_progress(round_and_on, tiles=100) == 130
    assert laps.track_progress([0, 99, 98], tiles=100) == -2  # rolled back over the start line
    assert laps.track_progress([0, 99, 0, 4], tiles=100) == 4  # back over it and forward again


class Scripted:
    """The same action every step, whatever the frame."""

    def __init__(self, action):
        self.action = np.asarray(action, dtype=np.float32)

    def reset(self, seed=None):
        pass

    def act(self, observation):
        assert observation.shape == (64, 64, 3)  # the frame C's pipeline sees, not the game's 96x96
        return self.action


@pytest.fixture
def env():
    cfg = get_config("CarRacing-v3", overrides=["env.backend=gymnasium"])
    env = make_frame_env(cfg.env)
    yield env
    env.close()


def test_full_gas_drives_fast_and_every_tile_is_accounted_for(env):
    row = laps.play_and_read(env, Scripted([0.0, 1.0, 0.0]), seed=4, max_steps=80)
    assert row["steps"] == 80 and row["outcome"] == "ran out of steps"
    assert row["mean_gas"] == 1.0 and row["braking"] == 0.0 and row["mean_brake"] == 0.0
    assert row["mean_speed"] > 10.0
    assert row["visited"] > 5  # straight ahead along the start straight
    assert row["visited"] + row["left_behind"] + row["not_reached"] == row["tiles"] > 200
    assert row["return"] == pytest.approx(row["visited"] * 1000 / row["tiles"] - 0.1 * 80, abs=1e-3)


def test_braking_in_place_goes_nowhere(env):
    row = laps.play_and_read(env, Scripted([0.0, 0.0, 1.0]), seed=4, max_steps=30)
    assert row["braking"] == 1.0 and row["mean_brake"] == 1.0 and row["mean_gas"] == 0.0
    assert row["mean_speed"] < 0.5 and row["off_road"] == 0.0  # it starts on the road and stays
    assert row["left_behind"] == 0 and row["not_reached"] >= row["tiles"] - 3


def test_markdown_table_has_a_row_per_outcome_seen_and_one_for_all():
    rows = [{"seed": s, "outcome": o, "return": r, "steps": 1000, "tiles": 300, "visited": 250, "left_behind": 5,
             "not_reached": 45, "mean_speed": 50.0, "mean_gas": 0.2, "mean_brake": 0.0, "braking": 0.0,
             "off_road": 0.1}
            for s, (o, r) in enumerate([("ran out of steps", 700.0), ("ran out of steps", 800.0), ("lap finished", 906.0)])]
    table = laps.markdown_table(rows).splitlines()
    assert [line.split(" | ")[0] for line in table[2:]] == ["| lap finished", "| ran out of steps", "| all"]
    assert "| 750.0 |" in table[3] and "| 2 |" in table[3]


def test_cli_refuses_another_env_and_envpool():
    with pytest.raises(WorldModelsError, match="CarRacing-v3's game state"):
        laps.main(["--env", "LunarLander-v3"])
    with pytest.raises(WorldModelsError, match="--backend envpool"):
        laps.main(["--backend", "envpool"])
