"""How well does each V see a set of episodes? Several V checkpoints scored on the same rollout folders.

    python tools/vae_on_rollouts.py --env CarRacing-v3 \
      --vaes pretrained/carracing-v3/vae.pt checkpoints/carracing-v3-round2/vae.pt \
      --rollouts data/carracing-v3/heldout-walk/rollouts data/carracing-v3/heldout-driving/rollouts

For the iterative procedure: a V trained on random-policy data may see the frames a trained C drives into
worse than a V trained on that C's driving. Scoring both on episodes neither trained on (collect them with
new seeds, `collect.seed_offset`, into a `collect.rollout_folder` of their own) tells how much. Each V is
scored as its own training validated it (`training.train_vae.validate`: the posterior mean decoded, the
loss with the V's own beta, free bits and reconstruction loss), so the numbers are those of its
TensorBoard `vae/val/*`: reconstruction loss (summed over the 64x64x3 pixels), KL, the share of pixels
within 10% on every channel, and that share over the pixels that differ from the folder's mean frame
(the road, the car, the grass edge: what is not background).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from config import Config  # noqa: E402
from models.loaders import vae_from_checkpoint  # noqa: E402
from models.vae import ConvVAE  # noqa: E402
from training.train_utils import add_common_args, config_from_args, run_cli  # noqa: E402
from training.train_vae import mean_frame, validate  # noqa: E402
from utils.data import FrameChunkLoader, episode_lengths, list_episodes  # noqa: E402
from utils.errors import WorldModelsError  # noqa: E402
from utils.files import checkpoint_config, load_checkpoint  # noqa: E402
from utils.runtime import resolve_device  # noqa: E402

METRICS = ("recon_loss", "kl_loss", "pixel_accuracy", "foreground_pixel_accuracy")


def load_vae_file(path: Path, env_id: str, device: torch.device) -> tuple[ConvVAE, Config]:
    """The V of a checkpoint file (best or last, any experiment), in eval mode, with the config it was trained under."""
    checkpoint = load_checkpoint(Path(path), "vae", env_id=env_id, map_location=device)
    trained = checkpoint_config(checkpoint)
    return vae_from_checkpoint(checkpoint, device, trained.vae.channels_last), trained


def score_vae(model: ConvVAE, trained: Config, paths: list[Path], background: torch.Tensor,
              device: torch.device) -> dict[str, Any]:
    """`validate`'s metrics of `model` over every frame of the episodes `paths` (B, 64, 64, 3) uint8, the
    foreground measured against `background` (3, 64, 64), those episodes' own mean frame (`mean_frame`)."""
    loader = FrameChunkLoader(paths, trained.vae.batch_size, trained.vae.episodes_per_chunk, seed=0, shuffle=False,
                              drop_last=False)
    return validate(model, loader, trained, device, background=background)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, default_env="CarRacing-v3")
    parser.add_argument("--vaes", nargs="+", required=True, type=Path, help="V checkpoint files (vae.pt or vae_best.pt)")
    parser.add_argument("--rollouts", nargs="+", required=True, type=Path, help="episode folders (…/rollouts)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    device = resolve_device(cfg.experiment.device)
    for path in args.vaes:
        if not path.is_file():
            raise WorldModelsError(f"--vaes {path}: no such checkpoint file")
    for folder in args.rollouts:
        if not list_episodes(folder):
            raise WorldModelsError(f"--rollouts {folder}: no episodes there (collect them with python -m training.collect)")
    episodes = {folder: list_episodes(folder) for folder in args.rollouts}  # read once, scored by every V
    frames = {folder: int(episode_lengths(paths).sum()) for folder, paths in episodes.items()}
    backgrounds = {folder: mean_frame(paths, device) for folder, paths in episodes.items()}
    print(f"{'V':48s} {'episodes':48s} {'frames':>7s} " + " ".join(f"{name:>25s}" for name in METRICS))
    for path in args.vaes:
        model, trained = load_vae_file(path, cfg.env.env_id, device)
        for folder, paths in episodes.items():
            scores = score_vae(model, trained, paths, backgrounds[folder], device)
            print(f"{str(path):48s} {str(folder):48s} {frames[folder]:7d} "
                  + " ".join(f"{scores[name]:25.4f}" for name in METRICS))

if __name__ == "__main__":
    run_cli(main)
