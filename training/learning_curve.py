"""Stage 4's learning curve as data: one row per CMA-ES generation, with the work spent so far.

The paper's curves (and `../shared/reference/`) are drawn against real episodes, so each row says how
many real-environment episodes and steps the run has used up to then (CMA-ES rollouts, re-evaluations
and the best candidate's video replays all count), besides the fitness, sigma and the periodic
re-evaluation scores. The rows live in the controller checkpoint (so a resumed run continues its totals)
and are written, atomically, to `controller_curve.csv` beside it after every generation.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from utils.files import atomic_path

CURVE_COLUMNS = (
    "generation",
    "real_episodes",  # real-env episodes so far: CMA-ES rollouts (real mode), re-evaluations, video replays
    "real_env_steps",  # their env steps
    "dream_episodes",  # CMA-ES's rollouts inside M so far (dream mode; its re-evaluation and video dreams not counted)
    "wall_seconds",  # stage 4's wall time so far, resumed stretches added up
    "fitness_mean",  # the population's mean fitness this generation (in the dream: dream fitness)
    "fitness_best",
    "sigma",
    "eval_mean_params",  # real score of the CMA-ES mean on `eval_episodes` episodes; empty between evaluations
    "eval_best_candidate",  # the same for the generation's best candidate
    "best_score",  # the kept best's score so far: real, or in dream mode its score in the dream's re-evaluation
    "on_envpool",  # 1 when EnvPool played the generation's real episodes, 0 Gymnasium (the ports draw CarRacing
    # differently, so a run continued on the other backend shows where); empty in curves from before 2026-11-30
)
INTEGER_COLUMNS = ("generation", "real_episodes", "real_env_steps", "dream_episodes", "on_envpool")


class LearningCurve:
    """Rows of `CURVE_COLUMNS`, nan where a generation had no evaluation."""

    def __init__(self, rows: Optional[torch.Tensor] = None):
        self.rows: list[list[float]] = [] if rows is None else rows.double().tolist()
        for row in self.rows:  # a checkpoint's curve from before a column was added: nan in the new ones
            row.extend([math.nan] * (len(CURVE_COLUMNS) - len(row)))

    def last(self, column: str) -> float:
        """`column` of the last generation (nan before the first)."""
        return self.rows[-1][CURVE_COLUMNS.index(column)] if self.rows else math.nan

    def total(self, column: str) -> float:
        """The running total `column` has reached (0 before the first generation)."""
        return self.rows[-1][CURVE_COLUMNS.index(column)] if self.rows else 0.0

    def add(self, generation: int, real_episodes: int, real_env_steps: int, dream_episodes: int, seconds: float,
            fitness: np.ndarray, sigma: float, evaluation: Optional[tuple[float, float]], best_score: float,
            on_envpool: bool) -> None:
        """Append generation `generation`: what it spent (added to the totals), what it scored, and which
        backend played its real episodes."""
        eval_mean, eval_best = evaluation if evaluation is not None else (math.nan, math.nan)
        self.rows.append([
            generation, self.total("real_episodes") + real_episodes, self.total("real_env_steps") + real_env_steps,
            self.total("dream_episodes") + dream_episodes, self.total("wall_seconds") + seconds,
            float(np.mean(fitness)), float(np.max(fitness)), sigma, eval_mean, eval_best, best_score, float(on_envpool),
        ])

    def as_tensor(self) -> torch.Tensor:
        """(generations, len(CURVE_COLUMNS)) float64, for the checkpoint."""
        return torch.tensor(self.rows, dtype=torch.float64).reshape(len(self.rows), len(CURVE_COLUMNS))

    def write_csv(self, path: Path) -> Path:
        """The rows as CSV with a header; nan (no evaluation, or no kept best yet) as an empty cell."""
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(CURVE_COLUMNS)
            for row in self.rows:
                writer.writerow(["" if not math.isfinite(value) else
                                 (int(value) if column in INTEGER_COLUMNS else f"{value:.6g}")
                                 for column, value in zip(CURVE_COLUMNS, row)])
        return path


def read_curve_csv(path: Path) -> list[dict[str, float]]:
    """A `controller_curve.csv` (or any numeric CSV) as rows of floats; an empty cell is nan."""
    with open(path, newline="") as handle:
        return [{key: float(value) if value != "" else math.nan for key, value in row.items()}
                for row in csv.DictReader(handle)]
