"""Train a World Models agent: collect -> vae -> mdnrnn -> controller, each stage resuming where it stopped.

    python train.py --env LunarLander-v3 --preset smoke
    python train.py --env ALE/Pong-v5 --experiment my_run --set vae.beta=2.0
    python train.py --env ALE/Pong-v5 --skip-vae --skip-mdnrnn      # only the controller
    python train.py --env LunarLander-v3 --force vae                  # retrain V (and so M and C)
    python train.py --env LunarLander-v3 --iterations 3               # the paper's iterative procedure

Each stage is the same function its own script runs (`python -m training.train_vae ...`). A finished
stage is not redone: re-running a finished experiment only checks that its artifacts are there.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

from config import Config
from training.collect import collect
from training.train_controller import train_controller
from training.train_mdnrnn import train_mdnrnn
from training.train_utils import add_common_args, config_from_args, run_cli
from training.train_vae import train_vae
from utils.data import is_shared_rollout_dir, require_episodes, rollout_dir
from utils.errors import WorldModelsError
from utils.files import checkpoint_path, load_checkpoint
from utils.workers import configure_backend

STAGES = ("collect", "vae", "mdnrnn", "controller")


STAGE_FUNCTIONS: dict[str, Callable[[Config], Path]] = {
    "collect": collect, "vae": train_vae, "mdnrnn": train_mdnrnn, "controller": train_controller,
}


def _stage_artifacts(cfg: Config, stage: str) -> list[Path]:
    if stage == "collect":
        return [rollout_dir(cfg)]
    return [checkpoint_path(cfg, stage), checkpoint_path(cfg, f"{stage}_best")]


def _require_artifact(cfg: Config, stage: str) -> None:
    """A skipped stage's output must exist; if not, name the command that makes it."""
    if stage == "collect":
        require_episodes(cfg)
    else:
        load_checkpoint(checkpoint_path(cfg, stage), stage, cfg.env.env_id)


def run_pipeline(cfg: Config, skip: frozenset[str] = frozenset(), force: frozenset[str] = frozenset()) -> dict[str, Path]:
    """Run the stages in order. `force` redoes a stage and every stage after it (they depend on it)."""
    configure_backend(cfg.experiment)  # local processes or Ray, for callers that skip the CLI's config_from_args
    first_forced = min((STAGES.index(stage) for stage in force), default=len(STAGES))
    if first_forced == 0 and is_shared_rollout_dir(cfg) and rollout_dir(cfg).is_dir():
        raise WorldModelsError(f"--force collect would delete {rollout_dir(cfg)}, data other experiments on "
                               f"{cfg.env.env_id} may read too; delete it by hand if you mean to")
    for stage in STAGES:  # before any work: a skipped stage's output must already be there
        if stage in skip:
            _require_artifact(cfg, stage)
    outputs: dict[str, Path] = {}
    for index, stage in enumerate(STAGES):
        if stage in skip:
            print(f"== {stage}: skipped (using the existing {stage} output)")
            continue
        if index >= first_forced:
            for artifact in _stage_artifacts(cfg, stage):
                if artifact.is_dir():
                    shutil.rmtree(artifact)
                elif artifact.exists():
                    artifact.unlink()
        print(f"== {stage}")
        started = time.perf_counter()
        outputs[stage] = STAGE_FUNCTIONS[stage](cfg)
        print(f"== {stage}: done in {time.perf_counter() - started:.0f} s")
    return outputs


def iteration_config(cfg: Config, iteration: int) -> Config:
    """The config of iteration `iteration` (1-based) of the paper's iterative procedure (section 5).

    Iteration 1 is the plain pipeline on random rollouts. Iteration k > 1 collects `collect.num_rollouts`
    new episodes with iteration k-1's agent (plus `collect.exploration` noise, from fresh seeds), then
    trains V and M from scratch on the union of every iteration's rollouts, then C. Iteration k's
    checkpoints, logs and videos live under `<experiment>/iter<k>`, so each one stays inspectable.
    """
    base = cfg.experiment_name
    step = copy.deepcopy(cfg)
    step.experiment.name = f"{base}/iter{iteration}"
    if iteration > 1:
        earlier = [iteration_config(cfg, k) for k in range(1, iteration)]
        step.collect.policy = "controller"
        step.collect.rollout_folder = ""  # the agent's episodes go under its own iteration, not the random data's
        step.collect.controller_experiment = earlier[-1].experiment_name
        step.collect.seed_offset = cfg.collect.seed_offset + (iteration - 1) * cfg.collect.num_rollouts
        step.collect.extra_rollouts = tuple(str(rollout_dir(earlier_cfg)) for earlier_cfg in earlier)
    return step


def run_iterations(cfg: Config, iterations: int, force: frozenset[str] = frozenset()) -> list[dict[str, Path]]:
    """`iterations` rounds of collect -> V -> M -> C, each from the previous round's agent."""
    if iterations < 1:
        raise WorldModelsError(f"--iterations must be >= 1, got {iterations}")
    outputs = []
    for iteration in range(1, iterations + 1):
        step = iteration_config(cfg, iteration)
        print(f"==== iteration {iteration} of {iterations}: {step.experiment_name}")
        outputs.append(run_pipeline(step, force=force))
        score = load_checkpoint(outputs[-1]["controller"], "controller", step.env.env_id)["best_score"]
        where = "inside M (dream mode: the real env only watched)" if step.controller.mode == "dream" else "in the real env"
        print(f"==== iteration {iteration}: kept-best controller scores {score:.1f} {where}")
    return outputs


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Train a World Models agent (collect -> vae -> mdnrnn -> controller).")
    add_common_args(parser)
    for stage in STAGES:
        parser.add_argument(f"--skip-{stage}", action="store_true", help=f"use the existing {stage} output")
    parser.add_argument("--force", action="append", default=[], choices=STAGES, metavar="STAGE",
                        help="redo STAGE and the stages after it even if finished (repeatable)")
    parser.add_argument("--iterations", type=int, default=1,
                        help="K > 1: the paper's iterative procedure, K rounds each collecting with the previous "
                             "round's agent; checkpoints under <experiment>/iter<k>")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    skip = frozenset(stage for stage in STAGES if getattr(args, f"skip_{stage}"))
    if skip and args.iterations > 1:
        raise WorldModelsError("--skip-* cannot be combined with --iterations > 1 (every round makes its own outputs)")
    started = time.perf_counter()
    if args.iterations > 1:
        outputs = run_iterations(cfg, args.iterations, frozenset(args.force))[-1]
        final_name = iteration_config(cfg, args.iterations).experiment_name
    else:
        outputs, final_name = run_pipeline(cfg, skip, frozenset(args.force)), cfg.experiment_name
    print(f"train: {final_name} finished in {time.perf_counter() - started:.0f} s")
    if "controller" in outputs:
        print(f"evaluate it with: python evaluate.py --env {cfg.env.env_id} --method world_models "
              f"--experiment {final_name}" + (f" --preset {args.preset}" if args.preset != "default" else ""))


if __name__ == "__main__":
    run_cli(main)
