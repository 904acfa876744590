"""Stills of videos side by side: one row per mp4, one column per step, as a PNG for the docs.

    python tools/video_strip.py videos/doomtakecover-v0/eval_world_models_best_seed300000001.mp4 \
        videos/doomtakecover-v0/dream_eval_tau1.15.mp4 --labels "real game" "dream (M, drawn by V)" \
        --out docs/doom_real_vs_dream.png

Videos are mp4s as the stages and evaluate.py write them (a real episode, a dream decoded by V). The
columns are `--columns` steps spread evenly over the shortest video, or the steps given with `--steps`;
a step past a video's end is refused, since a row that stopped early would look like one that went on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.train_utils import run_cli  # noqa: E402
from utils.errors import WorldModelsError  # noqa: E402
from utils.files import atomic_path  # noqa: E402


def read_video(path: Path) -> np.ndarray:
    """Every frame of an mp4: (T, H, W, 3) uint8."""
    import imageio.v3 as iio

    if not Path(path).is_file():
        raise WorldModelsError(f"no video at {path}; make one with evaluate.py --video (or --dream --video)")
    return np.asarray(iio.imread(path))


def choose_steps(lengths: Sequence[int], columns: int, steps: Optional[Sequence[int]]) -> list[int]:
    """The frame indices to show: `steps` as given (each must exist in every video) or `columns` spread
    evenly from the first frame to the last of the shortest video."""
    shortest = min(lengths)
    if steps is None:
        return np.linspace(0, shortest - 1, columns).round().astype(int).tolist()
    late = [step for step in steps if not 0 <= step < shortest]
    if late:
        raise WorldModelsError(f"--steps {late} are outside the shortest video (frames 0..{shortest - 1})")
    return list(steps)


def draw_strip(videos: Sequence[np.ndarray], labels: Sequence[str], steps: Sequence[int], out: Path) -> Path:
    """A grid of stills (rows: videos, columns: steps), labelled, written atomically as a PNG at `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(videos), len(steps), figsize=(1.6 * len(steps), 1.7 * len(videos)),
                                squeeze=False)
    for row, (frames, label) in enumerate(zip(videos, labels)):
        for column, step in enumerate(steps):
            axis = axes[row][column]
            axis.imshow(frames[step])
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(f"step {step}", fontsize=8)
        axes[row][0].set_ylabel(label, fontsize=8)
    figure.tight_layout()
    with atomic_path(Path(out)) as tmp:
        figure.savefig(tmp, dpi=100)
    plt.close(figure)
    return Path(out)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("videos", nargs="+", type=Path)
    parser.add_argument("--labels", nargs="+", help="one per video (default: the file names)")
    parser.add_argument("--columns", type=int, default=8)
    parser.add_argument("--steps", type=int, nargs="+", help="frame indices to show (default: --columns evenly spread)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    labels = args.labels or [path.stem for path in args.videos]
    if len(labels) != len(args.videos):
        raise WorldModelsError(f"--labels gives {len(labels)} labels for {len(args.videos)} videos; give one per video")
    if args.columns < 1:
        raise WorldModelsError(f"--columns must be >= 1, got {args.columns}")
    videos = [read_video(path) for path in args.videos]
    steps = choose_steps([len(frames) for frames in videos], args.columns, args.steps)
    print(f"stills: {draw_strip(videos, labels, steps, args.out)}")


if __name__ == "__main__":
    run_cli(main)
