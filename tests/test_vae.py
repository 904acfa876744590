"""Stage 2: the ConvVAE, its loss, and train_vae (learning, resume, refusals) on real LunarLander frames."""

from __future__ import annotations

import copy
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import isolate

from config import Config, get_config
from models.loaders import load_vae
from models.vae import ConvVAE, PosteriorMeanEncoder, foreground_weights, frames_to_input, vae_loss
from training import train_vae as train_vae_module
from training.collect import collect
from training.train_vae import train_vae
from utils.data import list_episodes, load_episode, rollout_dir, split_episodes
from utils.errors import WorldModelsError
from utils.files import best_checkpoint_path, checkpoint_path, experiment_dir


def make_cfg(root: Path, data_root: Path, overrides: list[str] = ()) -> Config:
    """Smoke config with outputs under `root` and rollouts read from the shared `data_root`."""
    # The module's data set: `data_root`'s 32 episodes (a run trains on the first collect.num_rollouts).
    cfg = isolate(get_config("LunarLander-v3", preset="smoke", overrides=["collect.num_rollouts=32", *overrides]), root)
    cfg.experiment.name = "vae-test"
    cfg.experiment.data_dir = str(data_root / "data")
    cfg.experiment.device = "cpu"
    return cfg


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """32 real LunarLander episodes of 40 frames, collected once for the whole module.

    Many short episodes rather than a few long ones: each episode has its own terrain, and held-out
    terrains are what validation must generalise to.
    """
    root = tmp_path_factory.mktemp("vae-data")
    overrides = ["collect.workers=1", "collect.num_rollouts=32", "env.max_episode_steps=40"]
    collect(isolate(get_config("LunarLander-v3", preset="smoke", overrides=overrides), root))
    return root


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory, data_root) -> Config:
    """A 1-epoch, 3-step training run whose checkpoint the resume and refusal tests start from."""
    cfg = make_cfg(tmp_path_factory.mktemp("vae-run"), data_root, ["vae.epochs=1", "vae.max_steps_per_epoch=3"])
    train_vae(cfg)
    return cfg


# ------------------------------------------------------------------------------------------ model
def test_shapes_dtypes_and_channels_last_input():
    frames_uint8 = torch.randint(0, 256, (5, 64, 64, 3), dtype=torch.uint8)
    x = frames_to_input(frames_uint8, "cpu", channels_last=True)
    assert x.shape == (5, 3, 64, 64) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x, frames_uint8.permute(0, 3, 1, 2).float() / 255)
    assert frames_to_input(frames_uint8.numpy(), "cpu", channels_last=False).is_contiguous()

    model = ConvVAE(latent_size=16, batch_norm=False)
    recon_logits, mu, logvar = model(x)
    assert recon_logits.shape == (5, 3, 64, 64) and mu.shape == logvar.shape == (5, 16)
    recon = model.decode(mu)
    assert recon.shape == (5, 3, 64, 64) and 0 <= recon.min() and recon.max() <= 1
    model.eval()
    torch.testing.assert_close(model(x, sample=False)[0], model.decode_logits(model.encode(x)[0]))
    with pytest.raises(WorldModelsError, match="uint8"):
        frames_to_input(x, "cpu")


def _hand_kl(mu: list[float], logvar: list[float]) -> float:
    return -0.5 * sum(1 + lv - m * m - math.exp(lv) for m, lv in zip(mu, logvar))


LOGITS = [[0.5, -1.0, 2.0], [0.0, 1.5, -0.5]]
TARGET = [[1.0, 0.0, 0.6], [0.2, 1.0, 0.0]]
MU = [[0.1, -0.2], [1.5, 0.7]]
LOGVAR = [[0.0, -0.1], [-1.0, 0.3]]


def _loss_inputs() -> tuple[torch.Tensor, ...]:
    # (B=2, C=3, H=1, W=1) images and (B=2, latent_size=2) posteriors: small enough to do by hand.
    return (torch.tensor(LOGITS).view(2, 3, 1, 1), torch.tensor(TARGET).view(2, 3, 1, 1),
            torch.tensor(MU), torch.tensor(LOGVAR))


def test_bce_loss_matches_hand_computation():
    bce = [sum(math.log1p(math.exp(l)) - t * l for l, t in zip(ls, ts)) for ls, ts in zip(LOGITS, TARGET)]
    kl = [_hand_kl(m, lv) for m, lv in zip(MU, LOGVAR)]
    losses = vae_loss(*_loss_inputs(), beta=2.0, recon="bce")
    assert losses["recon_loss"].item() == pytest.approx(sum(bce) / 2, rel=1e-5)
    assert losses["kl_loss"].item() == pytest.approx(sum(kl) / 2, rel=1e-5)
    assert losses["total_loss"].item() == pytest.approx(sum(bce) / 2 + 2.0 * sum(kl) / 2, rel=1e-5)


def test_mse_loss_and_free_bits_match_hand_computation():
    sigmoid = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    mse = [sum((sigmoid(l) - t) ** 2 for l, t in zip(ls, ts)) for ls, ts in zip(LOGITS, TARGET)]
    kl = [_hand_kl(m, lv) for m, lv in zip(MU, LOGVAR)]
    # Free bits 0.5 x 2 dims = 1.0: the first sample's KL (0.03) is lifted to 1.0, the second's (1.9) kept.
    assert kl[0] < 1.0 < kl[1]
    clamped = [max(k, 1.0) for k in kl]
    losses = vae_loss(*_loss_inputs(), beta=0.5, recon="mse", kl_tolerance=0.5)
    assert losses["recon_loss"].item() == pytest.approx(sum(mse) / 2, rel=1e-5)
    assert losses["kl_loss"].item() == pytest.approx(sum(clamped) / 2, rel=1e-5)
    assert losses["total_loss"].item() == pytest.approx(sum(mse) / 2 + 0.5 * sum(clamped) / 2, rel=1e-5)
    with pytest.raises(WorldModelsError, match="valid: bce, mse"):
        vae_loss(*_loss_inputs(), beta=1.0, recon="l1")


def test_foreground_weights_scale_each_pixel_loss_by_its_distance_from_the_background():
    # Pixel 0 of each image equals the background (weight 1); pixel 1 is 0.6 from it in one channel.
    background = torch.zeros(3, 1, 2)
    target = torch.zeros(2, 3, 1, 2)
    target[:, 1, 0, 1] = 0.6
    weights = foreground_weights(target, background, strength=10.0)
    assert weights.shape == (2, 1, 1, 2)
    assert torch.allclose(weights[:, 0, 0], torch.tensor([[1.0, 7.0], [1.0, 7.0]]))
    logits = torch.zeros(2, 3, 1, 2)
    mu, logvar = torch.zeros(2, 2), torch.zeros(2, 2)
    plain = vae_loss(logits, target, mu, logvar, beta=1.0, recon="mse")
    weighted = vae_loss(logits, target, mu, logvar, beta=1.0, recon="mse", pixel_weight=weights)
    per_pixel = (0.5 - target) ** 2  # sigmoid(0) = 0.5
    expected = (per_pixel * weights).flatten(1).sum(1).mean()
    assert weighted["total_loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert weighted["recon_loss"].item() == pytest.approx(plain["recon_loss"].item(), rel=1e-6)  # recon stays unweighted


def _small_object_frames(rng: np.random.Generator, count: int) -> np.ndarray:
    """(count, 64, 64, 3) uint8: black sky, white ground below row 44, and a 3x3 purple "lander"
    (9 of 4,096 pixels) somewhere in the sky."""
    frames = np.zeros((count, 64, 64, 3), np.uint8)
    frames[:, 44:] = 255
    for frame, (row, column) in zip(frames, rng.integers(2, 38, (count, 2))):
        frame[row : row + 3, column : column + 3] = (130, 100, 230)
    return frames


@pytest.mark.slow
def test_foreground_weight_makes_v_reconstruct_a_small_moving_object():
    background = torch.zeros(3, 64, 64)
    background[:, 44:] = 1.0
    test_frames = frames_to_input(_small_object_frames(np.random.default_rng(1), 64), "cpu", channels_last=False)
    foreground = (test_frames - background).abs().amax(dim=1) > 0.25

    def object_error(foreground_weight: float) -> float:
        """Squared error on the object's pixels after 50 steps of 16 frames."""
        torch.manual_seed(0)
        rng = np.random.default_rng(0)
        cfg = get_config("LunarLander-v3", preset="smoke", overrides=[
            "vae.channels_last=false", "vae.amp=false", f"vae.foreground_weight={foreground_weight}"])
        model = ConvVAE(latent_size=8)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        for _ in range(50):
            train_vae_module.training_step(model, optimizer, scaler, _small_object_frames(rng, 16), 0.1, cfg,
                                           torch.device("cpu"), background=background)
        model.eval()
        with torch.no_grad():
            recon = model.decode(model.encode(test_frames)[0])
        return ((recon - test_frames) ** 2).amax(dim=1)[foreground].mean().item()

    plain, weighted = object_error(0.0), object_error(30.0)
    # Unweighted, V paints the sky black over the object (error ~0.8, the object's distance from black).
    assert weighted < 0.6 * plain, f"object error weighted {weighted:.3f} vs plain {plain:.3f}"


# --------------------------------------------------------------------------------------- training
@pytest.mark.slow
def test_training_beats_the_mean_frame_on_validation(tmp_path, data_root):
    # 24 training and 8 validation episodes; 200 steps of 16 frames. beta=1 rather than the smoke
    # preset's 4 so that this few steps already encode each episode's terrain. Unweighted pixels: the
    # plain squared error below is what this V is trained to lower (the preset's foreground weighting
    # trades some of it for the lander, which has a test of its own).
    cfg = make_cfg(tmp_path, data_root, ["vae.epochs=5", "vae.batch_size=16", "vae.max_steps_per_epoch=40",
                                         "vae.val_fraction=0.25", "vae.beta=1", "vae.beta_warmup_epochs=2",
                                         "vae.foreground_weight=0"])
    train_vae(cfg)
    train_paths, val_paths = split_episodes(list_episodes(rollout_dir(cfg)), cfg.vae.val_fraction)
    train_frames = np.concatenate([load_episode(p, keys=("obs",))["obs"] for p in train_paths])
    val_frames = np.concatenate([load_episode(p, keys=("obs",))["obs"] for p in val_paths])
    val_x = frames_to_input(val_frames, "cpu")
    mean_frame = frames_to_input(train_frames, "cpu").mean(0, keepdim=True)
    baseline_error = ((val_x - mean_frame) ** 2).flatten(1).sum(1).mean().item()

    model = load_vae(cfg, "cpu")
    assert not model.training
    with torch.no_grad():
        recon = model.decode(model.encode(val_x)[0])
    vae_error = ((recon - val_x) ** 2).flatten(1).sum(1).mean().item()
    assert vae_error < 0.75 * baseline_error, f"VAE {vae_error:.1f} vs mean frame {baseline_error:.1f}"


def test_checkpoints_metrics_and_tensorboard_tags(one_epoch_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = one_epoch_run
    checkpoint = torch.load(checkpoint_path(cfg, "vae"), weights_only=True)
    assert checkpoint["stage"] == "vae" and checkpoint["env_id"] == "LunarLander-v3"
    assert checkpoint["epoch"] == 1 and checkpoint["global_step"] == 3
    assert checkpoint["best_val_loss"] == pytest.approx(checkpoint["metrics"]["val_total_loss"])
    assert best_checkpoint_path(cfg, "vae").is_file()
    events = EventAccumulator(str(experiment_dir(cfg, "logs") / "vae"), size_guidance={"images": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    for split in ("train", "val"):
        assert {f"vae/{split}/{name}_loss" for name in ("total", "recon", "kl")} <= scalars
    assert {"vae/beta", "vae/val/pixel_accuracy", "vae/val/active_units", "vae/learning_rate",
            "vae/images_per_second"} <= scalars
    assert {"vae/val/reconstructions", "vae/val/latent_traversal"} <= set(events.Tags()["images"])


def test_resume_continues_at_next_epoch_with_the_saved_optimizer_state(tmp_path, one_epoch_run, monkeypatch, capsys):
    cfg = one_epoch_run
    shutil.copytree(experiment_dir(cfg, "checkpoints"), tmp_path / "checkpoints" / cfg.experiment_name)
    cfg = make_cfg(tmp_path, Path(cfg.experiment.data_dir).parent, ["vae.epochs=2", "vae.max_steps_per_epoch=3"])
    saved = torch.load(checkpoint_path(cfg, "vae"), weights_only=True)

    seen_states = []
    real_step = train_vae_module.training_step

    def recording_step(model, optimizer, *args, **kwargs):
        if not seen_states:
            # Deep copies: the state dicts hold the live tensors that the step updates in place.
            seen_states.append((copy.deepcopy(optimizer.state_dict()), copy.deepcopy(model.state_dict())))
        return real_step(model, optimizer, *args, **kwargs)

    monkeypatch.setattr(train_vae_module, "training_step", recording_step)
    train_vae(cfg)
    assert "at epoch 2 of 2" in capsys.readouterr().out
    optimizer_state, model_state = seen_states[0]
    assert optimizer_state["param_groups"] == saved["optimizer"]["param_groups"]
    for index, state in saved["optimizer"]["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(optimizer_state["state"][index][key], value)
    for key, value in saved["model"].items():
        torch.testing.assert_close(model_state[key], value)
    resumed = torch.load(checkpoint_path(cfg, "vae"), weights_only=True)
    assert resumed["epoch"] == 2 and resumed["global_step"] == 6

    train_vae(cfg)
    assert "all 2 epochs already done" in capsys.readouterr().out


def test_refuses_checkpoint_of_another_env_or_latent_size(one_epoch_run):
    cfg = one_epoch_run
    other_env = get_config("CarRacing-v3", preset="smoke")
    other_env.experiment = cfg.experiment
    with pytest.raises(WorldModelsError, match="trained on LunarLander-v3, not CarRacing-v3"):
        load_vae(other_env, "cpu")
    other_latent = make_cfg(Path("."), Path("."), ["vae.latent_size=16"])
    other_latent.experiment = cfg.experiment
    with pytest.raises(WorldModelsError, match="vae.latent_size=32, but this run expects vae.latent_size=16"):
        load_vae(other_latent, "cpu")
    with pytest.raises(WorldModelsError, match="vae.latent_size=32, but this run expects vae.latent_size=16"):
        train_vae(other_latent)


# -------------------------------------------------------------------------------------- bad input
def test_no_rollouts_names_the_collect_command(tmp_path):
    cfg = make_cfg(tmp_path, tmp_path)
    with pytest.raises(WorldModelsError, match=r"python -m training\.collect --env LunarLander-v3"):
        train_vae(cfg)


def test_corrupt_episode_file_is_an_error_naming_it(tmp_path, data_root):
    shutil.copytree(data_root / "data", tmp_path / "data")
    cfg = make_cfg(tmp_path, tmp_path)
    broken = list_episodes(rollout_dir(cfg))[3]
    broken.write_bytes(broken.read_bytes()[:500])
    with pytest.raises(WorldModelsError, match=f"corrupt episode file .*{broken.name}"):
        train_vae(cfg)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_the_acting_encoder_computes_vs_posterior_mean(batch_norm):
    torch.manual_seed(0)
    vae = ConvVAE(latent_size=16, batch_norm=batch_norm)
    for module in vae.modules():  # statistics and affine maps far from the identity a fresh layer has
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.3, 0.3)
            module.running_var.uniform_(0.3, 3.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    vae.eval()
    frames = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    encoder = PosteriorMeanEncoder(vae)
    with torch.no_grad():
        expected, expected_logvar = vae.encode(frames_to_input(frames, "cpu", channels_last=False))
        mu = encoder(frames_to_input(frames, "cpu", channels_last=True))
        posterior_mu, logvar = encoder.posterior(frames_to_input(frames, "cpu", channels_last=True))
    assert mu.shape == (5, 16) and expected.abs().max() > 0.01
    torch.testing.assert_close(mu, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(posterior_mu, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(logvar, expected_logvar, rtol=1e-4, atol=1e-6)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in encoder.modules())
