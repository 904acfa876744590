"""The paper's Table 2 on our code: a C trained in the dream at each temperature, scored in the dream and
in the real game.

    python tools/temperature_table.py --env DoomTakeCover-v0 --temperatures 0.1 0.5 1.0 1.15 1.3 --episodes 100

Needs an experiment whose V and M are trained (`python train.py --env DoomTakeCover-v0` up to its M, or the
whole run). For each tau it trains stage 4 in the dream as the config says (`controller.mode=dream` is set),
in `<experiment>/tau<tau>` with the experiment's V and M linked in, so every C dreams in the same M. Then
each C plays `--episodes` episodes inside M at its own tau and in the real env (on the same seeds for every
tau), and random plays those seeds too. A tau whose C is trained already is not trained again, and a tau
already scored with the same flags and episodes, on the C its checkpoint holds now, is not scored again
(`results/<experiment>/tau<tau>/temperature_row.json`): so the table can be built a tau at a time, and a
last run with every tau assembles it. The table is printed and written to
`results/<experiment>/temperature_table.{md,json}`.

Low tau makes M's future nearly deterministic: C can exploit M's mistakes, so the dream score runs high
while the real one stays low. The paper found the best transfer at tau = 1.15 (real 1092 +- 556).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from config import Config  # noqa: E402
from training.dream import DREAM_STARTS_FILE  # noqa: E402
from training.train_controller import train_controller  # noqa: E402
from training.train_utils import add_common_args, config_from_args, run_cli  # noqa: E402
from utils.errors import WorldModelsError  # noqa: E402
from utils.files import atomic_path, checkpoint_path, experiment_dir, write_results_table  # noqa: E402

# What each tau's folder shares with the experiment: V, M and the latent cache the dream starts from.
SHARED_FILES = ("vae.pt", "vae_best.pt", "mdnrnn.pt", "mdnrnn_best.pt", "latents.npz", DREAM_STARTS_FILE)


def temperature_config(cfg: Config, temperature: float) -> Config:
    """The config of the C trained at `temperature`: experiment `<name>/tau<temperature>`, dream mode."""
    step = copy.deepcopy(cfg)
    step.experiment.name = f"{cfg.experiment_name}/tau{temperature:g}"
    step.controller.temperature = temperature
    step.controller.mode = "dream"
    return step


def share_models(cfg: Config, step: Config) -> None:
    """Link (or copy, across file systems) the experiment's V, M and latent cache into `step`'s folder."""
    source, target = checkpoint_path(cfg, "vae").parent, checkpoint_path(step, "vae").parent
    if not checkpoint_path(cfg, "mdnrnn").is_file():
        raise WorldModelsError(f"no trained M in {source}; train V and M first: "
                               f"python train.py --env {cfg.env.env_id} --experiment {cfg.experiment_name}")
    target.mkdir(parents=True, exist_ok=True)
    for name in SHARED_FILES:
        if not (source / name).is_file():
            continue
        if (target / name).exists():
            if os.path.samefile(source / name, target / name):
                continue
            (target / name).unlink()  # V or M was retrained since: every C must dream in the current M
        try:
            os.link(source / name, target / name)
        except OSError:
            shutil.copy2(source / name, target / name)


def evaluate_summary(common: list[str], experiment: str, method: str, episodes: int, dream: bool,
                     results: Path) -> dict[str, Any]:
    """Run `evaluate.py` (a script: tools call scripts, they do not import them) with the table's common
    flags, and return the summary it wrote to `results` (the experiment's results folder)."""
    command = [sys.executable, str(ROOT / "evaluate.py"), *common, "--experiment", experiment, "--method", method,
               "--episodes", str(episodes), *(["--dream"] if dream else [])]
    before = {path: path.stat().st_mtime_ns for path in results.glob("eval_*.json")} if results.is_dir() else {}
    # In the caller's folder, as this process: relative data and checkpoint folders mean the same to both.
    if subprocess.run(command).returncode != 0:
        raise WorldModelsError(f"evaluation failed (its error is above): {' '.join(command)}")
    written = [path for path in results.glob(f"eval_{method}*.json") if before.get(path) != path.stat().st_mtime_ns]
    if len(written) != 1:
        raise WorldModelsError(f"expected one new results file from {' '.join(command)} in {results}, got {written}")
    return json.loads(written[0].read_text())["summaries"][0]


ROW_FILE = "temperature_row.json"


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (a C's checkpoint: it changes whenever C trains further)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def scored_before(folder: Path, scored_what: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The row saved in `folder` when it was scored with exactly `scored_what` (flags, episodes, and for a
    tau the digest of its C's checkpoint), else None."""
    path = folder / ROW_FILE
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return saved["row"] if saved.get("scored_what") == scored_what else None


def save_row(folder: Path, scored_what: dict[str, Any], row: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / ROW_FILE) as tmp:
        tmp.write_text(json.dumps({"scored_what": scored_what, "row": row}, indent=1))


def temperature_rows(cfg: Config, common: list[str], temperatures: list[float], episodes: int) -> list[dict[str, Any]]:
    """Train (or reuse) a dream C per tau and score it (or reuse its score); one row per tau, then
    random's. `common` are the command-line flags (env, preset, seed, --set ...) that give `cfg`, for the
    evaluate.py runs."""
    rows = []
    for temperature in temperatures:
        step = temperature_config(cfg, temperature)
        share_models(cfg, step)
        checkpoint = train_controller(step)
        results = experiment_dir(step, "results")
        scored_what = {"common": common, "episodes": episodes, "controller": file_digest(checkpoint)}
        row = scored_before(results, scored_what)
        if row is not None:
            print(f"tau {temperature:g}: scored before with the same C and flags ({results / ROW_FILE})")
        else:
            dream = evaluate_summary(common, step.experiment_name, "world_models", episodes, True, results)
            real = evaluate_summary(common, step.experiment_name, "world_models", episodes, False, results)
            row = {"temperature": temperature, "dream_mean": dream["mean"], "dream_std": dream["std"],
                   "real_mean": real["mean"], "real_std": real["std"],
                   "real_ci95": [real["ci95_low"], real["ci95_high"]]}
            save_row(results, scored_what, row)
        rows.append(row)
    results = experiment_dir(cfg, "results")
    scored_what = {"common": common, "episodes": episodes, "method": "random"}
    row = scored_before(results, scored_what)
    if row is None:
        random = evaluate_summary(common, cfg.experiment_name, "random", episodes, False, results)
        row = {"temperature": None, "dream_mean": None, "dream_std": None, "real_mean": random["mean"],
               "real_std": random["std"], "real_ci95": [random["ci95_low"], random["ci95_high"]]}
        save_row(results, scored_what, row)
    rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]], episodes: int) -> str:
    """Table 2's layout: tau, dream score, real score (mean +- std over `episodes` episodes), and the real
    score's 95% CI."""
    lines = [f"| tau | dream score ({episodes} episodes) | real score ({episodes} episodes) | real: 95% CI |",
             "|---|---|---|---|"]
    for row in rows:
        tau = "random policy" if row["temperature"] is None else f"{row['temperature']:g}"
        dream = "-" if row["dream_mean"] is None else f"{row['dream_mean']:.0f} ± {row['dream_std']:.0f}"
        low, high = row["real_ci95"]
        lines.append(f"| {tau} | {dream} | {row['real_mean']:.0f} ± {row['real_std']:.0f} | {low:.0f}-{high:.0f} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, default_env="DoomTakeCover-v0")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.1, 0.5, 1.0, 1.15, 1.3])
    parser.add_argument("--episodes", type=int, default=100)
    args = parser.parse_args(argv)
    if any(t <= 0 for t in args.temperatures):
        raise WorldModelsError(f"--temperatures must be > 0, got {args.temperatures}")
    cfg = config_from_args(args)
    common = ["--env", cfg.env.env_id, "--preset", args.preset, "--seed", str(cfg.experiment.seed),
              "--backend", cfg.env.backend, *(item for override in args.overrides for item in ("--set", override))]
    rows = temperature_rows(cfg, common, args.temperatures, args.episodes)
    table = markdown_table(rows, args.episodes)
    print(table)
    written = write_results_table(experiment_dir(cfg, "results"), "temperature_table", table,
                                  {"env_id": cfg.env.env_id, "episodes": args.episodes, "rows": rows})
    print(f"table: {written}")


if __name__ == "__main__":
    run_cli(main)
