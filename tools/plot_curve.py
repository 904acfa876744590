"""Our CMA-ES learning curve over the original World Models run's, at equal work.

    python tools/plot_curve.py pretrained/carracing-v3/controller_curve.csv --out docs/carracing_curve.png
    python tools/plot_curve.py a/controller_curve.csv b/controller_curve.csv --labels "16x1" "16x4"
    python tools/plot_curve.py pretrained/doomtakecover-v0/tau1.15/controller_curve.csv --task doom \
        --out docs/doom_curve.png
    python tools/plot_curve.py checkpoints/wm-pong/controller_curve.csv --task any --out docs/wm_pong_curve.png
    python tools/plot_curve.py long/controller_curve.csv round2/controller_curve.csv --offsets 0 25767

`--offsets` places a curve at the work spent before it started: a round of the iterative procedure stands
on the episodes collected for it and on the earlier rounds' C episodes (the C that collected them), so it
is compared with the original at their sum, not at its own count.

Reads stage 4's `controller_curve.csv` (training/learning_curve.py) and the original run's published
logs (`docs/reference/*_paper_*.csv`, from hardmaru/WorldModelsExperiments).

* `--task carracing` (C trained in the real env): against real episodes used in training (log scale:
  the original spent 1,024 a generation), the population's mean fitness and the CMA-ES mean's
  re-evaluation score of each run, and both at the milestones 1,024 / 2,048 / 5k / 10k / 25.6k / 51.2k
  episodes.
* `--task doom` (C trained in the dream): against dream episodes (the original played 64 x 16 = 1,024 a
  generation, as our preset does), the population's mean dream fitness of each run (the original's code
  dreamt at tau 1.25), and our CMA-ES mean's real score (the real env only watches it), at the
  milestones of generations 10 / 25 / 50 / 100 / 200.
* `--task any` (any env, no original to compare with): against real env steps used by stage 4 (its
  CMA-ES and re-evaluation episodes; collection is not in the curve), the population's mean fitness and
  the CMA-ES mean's re-evaluation, at the milestones 250k / 500k / 1M / 2M / 5M / 10M env steps.

A table value is the last one at or before the milestone; "-" where a run had not got there.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.learning_curve import read_curve_csv  # noqa: E402

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "docs" / "reference"
MILESTONES = (1_024, 2_048, 5_000, 10_000, 25_600, 51_200)  # the original: generations 1, 2, ~5, ~10, 25, 50
DOOM_MILESTONES = (10_240, 25_600, 51_200, 102_400, 204_800)  # 1,024 dream episodes a generation: 10 .. 200
ENV_STEP_MILESTONES = (250_000, 500_000, 1_000_000, 2_000_000, 5_000_000, 10_000_000)


def series(rows: list[dict[str, float]], x: str, y: str) -> tuple[list[float], list[float]]:
    """The (x, y) points of the rows where y has a value."""
    points = [(row[x], row[y]) for row in rows if math.isfinite(row[y])]
    return [p[0] for p in points], [p[1] for p in points]


def value_at(xs: list[float], ys: list[float], episodes: float, reached: float | None = None) -> float:
    """The last y at or before `episodes` real episodes; nan when the run had not got that far (`reached`:
    the run's last episode count, for a sparse series such as the re-evaluations; default: the last x)."""
    if not xs or (xs[-1] if reached is None else reached) < episodes:
        return math.nan
    before = [y for x, y in zip(xs, ys) if x <= episodes]
    return before[-1] if before else math.nan


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("curves", nargs="+", type=Path, help="controller_curve.csv files")
    parser.add_argument("--labels", nargs="+", default=None, help="one label per curve (default: its folder)")
    parser.add_argument("--offsets", nargs="+", type=float, default=None,
                        help="one per curve: the work spent before it started, in the x axis' unit (real episodes; "
                             "doom: dream episodes; any: env steps), added to its x (default: 0 each)")
    parser.add_argument("--task", choices=("carracing", "doom", "any"), default="carracing",
                        help="which of the paper's experiments the curves are compared with (any: none)")
    parser.add_argument("--reference", type=Path, default=REFERENCE_DIR, help="folder of the *_paper_*.csv logs")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: docs/<task>_curve.png (--task any: docs/<the first curve's folder>_curve.png)")
    args = parser.parse_args(argv)
    doom, original = args.task == "doom", args.task != "any"  # `any`: no original to draw or read
    args.out = args.out or Path(f"docs/{args.task if original else args.curves[0].parent.name}_curve.png")
    labels = args.labels or [path.parent.name for path in args.curves]
    if len(labels) != len(args.curves):
        print(f"error: {len(labels)} labels for {len(args.curves)} curves", file=sys.stderr)
        raise SystemExit(2)
    offsets = args.offsets or [0.0] * len(args.curves)
    if len(offsets) != len(args.curves) or min(offsets) < 0:
        print(f"error: --offsets {' '.join(f'{o:g}' for o in offsets)}: give one number >= 0 per curve "
              f"({len(args.curves)})", file=sys.stderr)
        raise SystemExit(2)
    needed = [*args.curves, args.reference] if original else args.curves
    missing = [str(path) for path in needed if not path.exists()]
    if missing:
        print(f"error: not found: {', '.join(missing)}", file=sys.stderr)
        raise SystemExit(2)

    paper_population: tuple[list[float], list[float]] = ([], [])
    paper_mean_eval: tuple[list[float], list[float]] = ([], [])  # Doom's original logged no real score per generation
    if not original:
        x, milestones = "real_env_steps", ENV_STEP_MILESTONES
    elif doom:
        x, milestones, paper_population = "dream_episodes", DOOM_MILESTONES, series(
            read_curve_csv(args.reference / "doom_paper_dream_cmaes.csv"), "dream_episodes", "dream_population_mean")
    else:
        x, milestones = "real_episodes", MILESTONES
        paper_population = series(read_curve_csv(args.reference / "carracing_paper_cmaes.csv"), "real_episodes", "population_mean")
        paper_mean_eval = series(read_curve_csv(args.reference / "carracing_paper_mean_eval.csv"), "real_episodes_in_training",
                                 "mean_params_score_1024_episodes")
    runs = {label: (read_curve_csv(path), offset) for label, path, offset in zip(labels, args.curves, offsets)}

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5))
    table = []
    if original:
        axis.plot(*paper_population, color="grey", linewidth=1,
                  label="original: population mean" + (" (dream, tau 1.25)" if doom else ""))
        table.append(("original", paper_population, paper_mean_eval))
    if paper_mean_eval[0]:
        axis.plot(*paper_mean_eval, "o-", color="black", markersize=3, label="original: CMA-ES mean, 1,024 episodes")
    for label, (rows, offset) in runs.items():
        population, mean_eval = ((([value + offset for value in xs], ys)) for xs, ys in
                                 (series(rows, x, "fitness_mean"), series(rows, x, "eval_mean_params")))
        line, = axis.plot(*population, linewidth=1, label=f"{label}: population mean" + (" (dream)" if doom else ""))
        axis.plot(*mean_eval, "o-", color=line.get_color(), markersize=3,
                  label=f"{label}: CMA-ES mean, " + ("real game" if doom else "re-evaluated"))
        table.append((label, population, mean_eval))
    if original:
        axis.set_xscale("log")
        axis.set_xlabel("dream episodes played in training" if doom else "real episodes used in training")
        axis.set_ylabel("DoomTakeCover: frames survived" if doom else "CarRacing-v3 return")
        axis.axhline(750 if doom else 900, color="green", linestyle=":", linewidth=1,
                     label="solved (750, real)" if doom else "solved (900)")
    else:
        axis.set_xlabel("real env steps used by the controller stage")
        axis.set_ylabel("return (real env)")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right", fontsize=7)
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=120)

    def cell(value: float) -> str:
        return f"{value:.1f}" if math.isfinite(value) else "-"

    unit = "ep" if original else "steps"
    print(f"{'run':24s} " + " ".join(f"{f'{m:,} {unit}: pop / mean':>26s}" for m in milestones))
    for label, population, mean_eval in table:
        print(f"{label:24s} " + " ".join(
            f"{cell(value_at(*population, m)) + ' / ' + cell(value_at(*mean_eval, m, population[0][-1])):>26s}"
            for m in milestones))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
