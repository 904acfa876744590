"""tools/video_strip.py: stills of a real episode's and a dream's videos side by side."""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from training.train_utils import run_cli
from utils.video import write_mp4

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import video_strip  # noqa: E402


def test_steps_spread_over_the_shortest_video_and_given_steps_must_exist_in_every_one():
    assert video_strip.choose_steps([30, 11], 3, None) == [0, 5, 10]
    assert video_strip.choose_steps([30, 11], 3, [2, 9]) == [2, 9]
    with pytest.raises(video_strip.WorldModelsError, match=r"--steps \[11\] are outside .*frames 0\.\.10"):
        video_strip.choose_steps([30, 11], 3, [2, 11])


def test_the_strip_shows_each_video_at_the_chosen_steps(tmp_path):
    # Frame t of video v is a flat colour that encodes (v, t), so the picture can be checked cell by cell.
    real = np.zeros((12, 32, 32, 3), np.uint8)
    real[..., 0] = (np.arange(12) * 20)[:, None, None]
    dream = np.zeros((20, 32, 32, 3), np.uint8)
    dream[..., 2] = 200
    write_mp4(real, tmp_path / "real.mp4")
    write_mp4(dream, tmp_path / "dream.mp4")
    assert len(video_strip.read_video(tmp_path / "real.mp4")) == 12
    out = tmp_path / "docs" / "strip.png"
    video_strip.main([str(tmp_path / "real.mp4"), str(tmp_path / "dream.mp4"), "--labels", "real", "dream",
                      "--columns", "4", "--out", str(out)])
    picture = matplotlib.image.imread(out)[..., :3]
    height, width = picture.shape[:2]
    assert width > 1.5 * height  # 4 columns, 2 rows
    # The dream's row is blue; the real row shows the reds of steps 0, 4, 7 and 11 and no other step's.
    top = picture[: height // 2]
    blue = (picture[..., 2] > 0.6) & (picture[..., 0] < 0.3) & (picture[..., 1] < 0.3)  # not the white margins
    assert blue[height // 2 :].sum() > 2000 and not blue[: height // 2].any()
    red_only = (top[..., 1] < 0.1) & (top[..., 2] < 0.1)

    def cell_pixels(step: int) -> int:  # pixels of the top row in frame `step`'s red
        return int((red_only & (np.abs(top[..., 0] - step * 20 / 255) < 0.04)).sum())

    assert all(cell_pixels(step) > 1000 for step in (0, 4, 7, 11))
    assert all(cell_pixels(step) < 100 for step in (2, 9))

def test_a_missing_video_or_a_label_count_that_does_not_match_is_one_line_and_exit_2(tmp_path, capsys):
    for argv, message in [([str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "s.png")],
                           f"error: no video at {tmp_path / 'nope.mp4'}; make one with evaluate.py --video (or --dream --video)"),
                          ([str(tmp_path / "a.mp4"), "--labels", "x", "y", "--out", str(tmp_path / "s.png")],
                           "error: --labels gives 2 labels for 1 videos; give one per video")]:
        with pytest.raises(SystemExit) as exit_info:
            run_cli(lambda: video_strip.main(argv))
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip() == message
    assert not (tmp_path / "s.png").exists()
