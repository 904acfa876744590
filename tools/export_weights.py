"""Copy an experiment's V, M and C into another folder, weights only: small enough to commit.

    python tools/export_weights.py --from checkpoints/carracing-long --to pretrained/carracing-v3
    python tools/export_weights.py --from checkpoints/x --to pretrained/x --stages vae mdnrnn

For V and M it copies the weights a later stage serves (`<stage>_best.pt` when present, else `<stage>.pt`)
as `<stage>.pt`, with the last checkpoint's epoch count, without the optimizer and gradient-scaler state
that make a training checkpoint three times larger. The copy keeps its config, epoch count and metrics,
so the stages and evaluate.py read it like the original, and treat the stage as finished. The dream
starts (`dream_starts.npz`, a few hundred kB: V's posteriors of the first frames of the experiment's
episodes) go with V and with C, so the copy can dream on a machine without the collected episodes, from
the starts its C was trained from. C is copied whole: its checkpoint is already small (the kept-best and mean
parameters, CMA-ES's fitness history and the learning curve), and that history is what lets a run
resume from the copy on another machine (`resume_controller` replays it).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.dream import DREAM_STARTS_FILE  # noqa: E402
from training.train_utils import run_cli  # noqa: E402
from utils.errors import WorldModelsError  # noqa: E402
from utils.files import atomic_path, served_checkpoint  # noqa: E402

STAGES = ("vae", "mdnrnn", "controller")
# Training state a finished stage never reads again (training/epochs.py's resume does).
TRAINING_STATE = ("optimizer", "grad_scaler")


def export_stage(source: Path, target: Path, stage: str) -> tuple[Path, int]:
    """Write `target/<stage>.pt` from `source`'s served checkpoint minus training state.
    Returns the written path and its size in bytes."""
    path = served_checkpoint(source, stage)
    if not path.is_file():
        raise WorldModelsError(f"no {stage} checkpoint in {source} (looked for {path.name})")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    weights = {key: value for key, value in checkpoint.items() if key not in TRAINING_STATE}
    last = source / f"{stage}.pt"
    if path != last and last.is_file():
        # The best epoch's weights, but the stage's progress is its last epoch's: with the best epoch's
        # count, a later run would take the stage for unfinished and train it on.
        progress = torch.load(last, map_location="cpu", weights_only=True)
        weights.update(epoch=progress["epoch"], global_step=progress["global_step"])
    target.mkdir(parents=True, exist_ok=True)
    written = target / f"{stage}.pt"
    with atomic_path(written) as tmp_path:
        torch.save(weights, tmp_path)
    # A stale `_best` beside the copy would be served instead of it.
    (target / f"{stage}_best.pt").unlink(missing_ok=True)
    starts = source / DREAM_STARTS_FILE
    if stage in ("vae", "controller") and starts.is_file():  # where this experiment's dreams start
        with atomic_path(target / DREAM_STARTS_FILE) as tmp_path:
            shutil.copyfile(starts, tmp_path)
    return written, written.stat().st_size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--from", dest="source", type=Path, required=True, help="an experiment's checkpoint folder")
    parser.add_argument("--to", dest="target", type=Path, required=True, help="the folder to write")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    args = parser.parse_args(argv)
    if args.source.resolve() == args.target.resolve():
        parser.error("--from and --to are the same folder")
    for stage in args.stages:
        written, size = export_stage(args.source, args.target, stage)
        print(f"{stage}: {written} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    run_cli(main)
