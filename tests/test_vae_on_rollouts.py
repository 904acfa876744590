"""tools/vae_on_rollouts.py: several Vs scored on the same episodes, as their training validated them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import isolate

from config import get_config
from tools import vae_on_rollouts
from training.collect import collect
from training.train_utils import run_cli
from training.train_vae import mean_frame, train_vae
from utils.data import list_episodes, rollout_dir
from utils.files import checkpoint_path


def _trained_vae(root: Path, data_root: Path, steps: int) -> Path:
    """A smoke V trained `steps` steps of 16 frames on `data_root`'s episodes; its last checkpoint file."""
    cfg = isolate(get_config("LunarLander-v3", preset="smoke",
                             overrides=["collect.num_rollouts=8", "vae.epochs=1", f"vae.max_steps_per_epoch={steps}",
                                        "vae.batch_size=16", "vae.beta=1", "vae.beta_warmup_epochs=0"]), root)
    cfg.experiment.name, cfg.experiment.data_dir, cfg.experiment.device = f"v{steps}", str(data_root / "data"), "cpu"
    train_vae(cfg)
    return checkpoint_path(cfg, "vae")


@pytest.fixture(scope="module")
def folder_and_vaes(tmp_path_factory) -> tuple[Path, Path, Path]:
    """8 LunarLander episodes of 30 frames, and two Vs trained on them: 1 step and 60 steps."""
    data_root = tmp_path_factory.mktemp("rollouts")
    cfg = isolate(get_config("LunarLander-v3", preset="smoke",
                             overrides=["collect.workers=1", "collect.num_rollouts=8", "env.max_episode_steps=30"]),
                  data_root)
    collect(cfg)
    runs = tmp_path_factory.mktemp("runs")
    return rollout_dir(cfg), _trained_vae(runs, data_root, 1), _trained_vae(runs, data_root, 60)


def test_the_longer_trained_v_scores_better_on_its_episodes(folder_and_vaes):
    folder, barely, trained = folder_and_vaes
    scores = {}
    for path in (barely, trained):
        model, trained_cfg = vae_on_rollouts.load_vae_file(path, "LunarLander-v3", torch.device("cpu"))
        assert not model.training and trained_cfg.vae.batch_size == 16  # the V's own config, not the command's
        paths = list_episodes(folder)
        scores[path] = vae_on_rollouts.score_vae(model, trained_cfg, paths, mean_frame(paths, "cpu"), torch.device("cpu"))
    assert scores[trained]["recon_loss"] < scores[barely]["recon_loss"]
    assert scores[trained]["pixel_accuracy"] > scores[barely]["pixel_accuracy"]
    assert 0.0 <= scores[barely]["foreground_pixel_accuracy"] <= 1.0  # a mean frame to measure it against


def test_the_table_has_one_row_per_v_and_folder(folder_and_vaes, capsys):
    folder, barely, trained = folder_and_vaes
    vae_on_rollouts.main(["--env", "LunarLander-v3", "--vaes", str(barely), str(trained), "--rollouts", str(folder)])
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split()[:3] for row in rows] == [[str(barely), str(folder), "240"], [str(trained), str(folder), "240"]]


def test_a_missing_folder_or_checkpoint_is_one_line_and_exit_2(folder_and_vaes, tmp_path, capsys):
    folder, barely, _ = folder_and_vaes
    for argv, bad in ((["--vaes", str(barely), "--rollouts", str(tmp_path)], f"--rollouts {tmp_path}"),
                      (["--vaes", str(tmp_path / "vae.pt"), "--rollouts", str(folder)], f"--vaes {tmp_path / 'vae.pt'}")):
        with pytest.raises(SystemExit) as exit_info:
            run_cli(lambda: vae_on_rollouts.main(["--env", "LunarLander-v3", *argv]))
        assert exit_info.value.code == 2
        out = capsys.readouterr()
        assert out.out == "" and out.err.startswith(f"error: {bad}") and len(out.err.strip().splitlines()) == 1
