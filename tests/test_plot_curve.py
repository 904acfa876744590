"""tools/plot_curve.py: our learning curve beside the original's at equal real episodes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import plot_curve  # noqa: E402
from training.learning_curve import LearningCurve  # noqa: E402


def test_the_table_reads_each_run_at_the_milestones_and_the_plot_is_written(tmp_path, capsys):
    curve = LearningCurve()
    # 4,000 real episodes a generation; the mean is re-evaluated at generation 2 only.
    for generation, (mean, evaluation) in enumerate([(10.0, None), (50.0, (80.0, 70.0)), (90.0, None)], 1):
        curve.add(generation, 4000, 4_000_000, 0, 60.0, np.array([mean - 5, mean + 5]), 0.1, evaluation, 0.0, True)
    path = curve.write_csv(tmp_path / "run" / "controller_curve.csv")
    out = tmp_path / "curve.png"
    plot_curve.main([str(path), "--labels", "ours", "--out", str(out)])
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    # ours: nothing before its first generation (4k episodes); at 5k the last row at or before is
    # generation 1 (no evaluation yet); at 10k generation 2 (8k) with its re-evaluation, the last one
    # before 10k though the run went on to 12k; 25.6k and 51.2k were never reached.
    assert lines["ours"].split()[1:] == ["-", "/", "-", "-", "/", "-", "10.0", "/", "-", "50.0", "/", "80.0",
                                         "-", "/", "-", "-", "/", "-"]
    # The original (docs/reference): at 10k the last generation at or before is 9 (9,216 episodes, 211.2;
    # generation 10 is at 10,240); its CMA-ES mean scored 822.9 over 1,024 episodes at 25,600.
    assert lines["original"].split()[1:] == ["-54.6", "/", "-", "-44.2", "/", "-", "11.0", "/", "-", "211.2", "/", "-",
                                             "668.3", "/", "822.9", "766.8", "/", "867.5"]
    assert out.stat().st_size > 10_000


def test_doom_curves_are_drawn_against_dream_episodes_beside_the_originals_dream(tmp_path, capsys):
    curve = LearningCurve()
    # 1,024 dream episodes a generation, as the original's 64 x 16; the real env watched generation 10 only.
    for generation in range(1, 13):
        evaluation = (480.0, 500.0) if generation == 10 else None
        curve.add(generation, 32 if evaluation else 0, 9_000 if evaluation else 0, 1024, 40.0,
                  np.array([100.0 * generation, 100.0 * generation + 50]), 0.1, evaluation, 0.0, True)
    path = curve.write_csv(tmp_path / "tau1.15" / "controller_curve.csv")
    out = tmp_path / "doom.png"
    plot_curve.main([str(path), "--task", "doom", "--out", str(out)])
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    # At 10,240 dream episodes (generation 10): population mean 1,025 and the mean's real score 480;
    # generation 25 (25,600) was never reached.
    assert lines["tau1.15"].split()[1:4] == ["1025.0", "/", "480.0"] and lines["tau1.15"].split()[4:7] == ["-", "/", "-"]
    # The original's dream population mean at generations 10 and 200 (docs/reference/doom_paper_dream_cmaes.csv).
    original = lines["original"].split()[1:]
    assert original[0] == "354.6" and original[-3] == "768.7" and out.stat().st_size > 10_000


def test_any_env_is_drawn_against_real_env_steps_with_no_original(tmp_path, capsys):
    curve = LearningCurve()
    # 300k real env steps a generation (as Pong's 64 episodes); the mean is re-evaluated at generation 2.
    for generation in range(1, 5):
        evaluation = (-15.0, -16.0) if generation == 2 else None
        curve.add(generation, 64, 300_000, 0, 60.0,
                  np.array([-21.0 + generation, -19.0 + generation]), 0.5, evaluation, 0.0, True)
    path = curve.write_csv(tmp_path / "wm-pong" / "controller_curve.csv")
    out = tmp_path / "pong.png"
    plot_curve.main([str(path), "--task", "any", "--out", str(out)])
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "original" not in lines and "steps:" in lines["run"]
    # 250k: before the first generation; 500k: generation 1 (-19.0), not yet re-evaluated; 1M: generation 3
    # (900k steps, -17.0) with generation 2's re-evaluation; 2M and more: never reached.
    assert lines["wm-pong"].split()[1:10] == ["-", "/", "-", "-19.0", "/", "-", "-17.0", "/", "-15.0"]
    assert lines["wm-pong"].split()[10:] == ["-", "/", "-"] * 3 and out.stat().st_size > 10_000


def test_missing_curve_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        plot_curve.main([str(tmp_path / "nope.csv")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: not found: {tmp_path / 'nope.csv'}"


def test_an_offset_places_a_round_at_the_work_it_stands_on(tmp_path, capsys):
    curve = LearningCurve()
    for generation, (mean, evaluation) in enumerate([(10.0, (30.0, 20.0)), (50.0, (80.0, 70.0))], 1):
        curve.add(generation, 3000, 3_000_000, 0, 60.0, np.array([mean - 5, mean + 5]), 0.1, evaluation, 0.0, True)
    path = curve.write_csv(tmp_path / "round2" / "controller_curve.csv")
    plot_curve.main([str(path), str(path), "--labels", "alone", "shifted", "--offsets", "0", "6000",
                     "--out", str(tmp_path / "curve.png")])
    lines = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    # Alone its generations end at 3,000 and 6,000 episodes: generation 1's values at 5k, and it never
    # got to 10k. Shifted by 6,000 they end at 9,000 and 12,000: nothing at 5k, generation 1's at 10k.
    assert lines["alone"][6:12] == ["10.0", "/", "30.0", "-", "/", "-"]
    assert lines["shifted"][6:12] == ["-", "/", "-", "10.0", "/", "30.0"]


def test_offsets_must_be_one_per_curve(tmp_path, capsys):
    curve = LearningCurve()
    curve.add(1, 2000, 2_000_000, 0, 60.0, np.array([0.0, 1.0]), 0.1, None, 0.0, True)
    path = curve.write_csv(tmp_path / "run" / "controller_curve.csv")
    with pytest.raises(SystemExit) as exit_info:
        plot_curve.main([str(path), "--offsets", "1", "2"])
    assert exit_info.value.code == 2
    assert "--offsets 1 2: give one number >= 0 per curve (1)" in capsys.readouterr().err
