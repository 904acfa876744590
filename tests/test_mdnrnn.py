"""M, the MDN-RNN: its loss and sampling by hand, learning a known dynamic, the step/sequence APIs, the
latent cache, resume, the untrained ablation and the refusal of mismatched checkpoints."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from config import Config, get_config
from models.loaders import load_mdnrnn, load_vae
from models.mdnrnn import MDNRNN, MDNOutput, mdn_nll, mdnrnn_loss, sample_next_z
from tests.conftest import TINY_PIPELINE_OVERRIDES, isolate, tiny_pipeline_config
from training.collect import collect
from training.latents import LatentCache, latent_cache_path, load_or_encode_latents
from training.sequences import SequenceSampler
from training.train_mdnrnn import main, train_mdnrnn, training_step, validate
from training.train_utils import make_grad_scaler
from training.train_vae import train_vae
from utils.data import load_episode, require_episodes
from utils.errors import WorldModelsError
from utils.files import checkpoint_path, experiment_dir, load_checkpoint

PIPELINE_OVERRIDES = ["collect.num_rollouts=3", "env.max_episode_steps=60", "mdnrnn.sequence_length=16"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pipeline_config(root: Path, name: str, overrides: list[str] = ()) -> Config:
    return tiny_pipeline_config(root, name, PIPELINE_OVERRIDES + list(overrides))


@pytest.fixture(scope="module")
def pipeline_root(tmp_path_factory) -> Path:
    """Real rollouts and a real (briefly trained) VAE under experiment "base", made once per module."""
    root = tmp_path_factory.mktemp("mdnrnn_pipeline")
    cfg = pipeline_config(root, "base")
    collect(cfg)
    train_vae(cfg)
    return root


@pytest.fixture
def experiment(pipeline_root):
    """A factory: a config for a fresh experiment `name` holding a copy of the base VAE."""

    def make(name: str, overrides: list[str] = ()) -> Config:
        cfg = pipeline_config(pipeline_root, name, overrides)
        target = experiment_dir(cfg, "checkpoints")
        target.mkdir(parents=True, exist_ok=True)
        for path in experiment_dir(pipeline_config(pipeline_root, "base"), "checkpoints").glob("vae*.pt"):
            shutil.copy(path, target / path.name)
        return cfg

    return make


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-6) -> None:
    # Not torch.testing.assert_close: its first call imports for ~8 s.
    assert actual.shape == expected.shape and (actual - expected).abs().max().item() <= atol


# ------------------------------------------------------------------------------ loss and sampling
def test_nll_of_one_gaussian_matches_hand_computation():
    mu, sigma, x = 0.3, 0.7, 1.1
    expected = 0.5 * math.log(2 * math.pi) + math.log(sigma) + 0.5 * ((x - mu) / sigma) ** 2
    shape = (1, 1, 1, 1)  # (B, T, K, Z)
    nll = mdn_nll(torch.zeros(shape), torch.full(shape, mu), torch.full(shape, math.log(sigma)), torch.full((1, 1, 1), x))
    assert nll.item() == pytest.approx(expected, rel=1e-6)


def test_nll_of_two_component_mixture_matches_hand_computation_and_respects_mask():
    weights, mus, sigmas, x = (0.25, 0.75), (-1.0, 2.0), (0.5, 1.5), 0.4

    def density(m: float, s: float) -> float:
        return math.exp(-0.5 * ((x - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))

    expected = -math.log(sum(w * density(m, s) for w, m, s in zip(weights, mus, sigmas)))
    log_pi = torch.tensor(weights).log().view(1, 1, 2, 1).repeat(1, 2, 1, 1)  # two steps
    mu = torch.tensor(mus).view(1, 1, 2, 1).repeat(1, 2, 1, 1)
    log_sigma = torch.tensor(sigmas).log().view(1, 1, 2, 1).repeat(1, 2, 1, 1)
    target = torch.tensor([[[x], [100.0]]])  # the second step is far off but masked out
    mask = torch.tensor([[True, False]])
    assert mdn_nll(log_pi, mu, log_sigma, target, mask).item() == pytest.approx(expected, rel=1e-6)
    assert mdn_nll(log_pi, mu, log_sigma, target).item() > 100  # unmasked, the outlier counts


def test_done_loss_weighs_a_death_step_by_the_positive_weight():
    # Two steps of one episode: logit 0.3 on a living step, -0.4 on the death step; a padded third step.
    logits = torch.tensor([[0.3, -0.4, 5.0]])
    zeros = torch.zeros(1, 3, 1, 2)
    output = MDNOutput(zeros, zeros, zeros, torch.zeros(1, 3), logits)
    dones, step_mask = torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([[True, True, False]])
    softplus = lambda x: math.log1p(math.exp(x))  # BCE: -log(1 - sigmoid(x)) = softplus(x); -log(sigmoid(x)) = softplus(-x)
    for weight in (1.0, 10.0):
        losses = mdnrnn_loss(output, torch.zeros(1, 3, 2), step_mask, torch.zeros(1, 3), dones, step_mask,
                             done_positive_weight=weight)
        assert losses["done_loss"].item() == pytest.approx((softplus(0.3) + weight * softplus(0.4)) / 2, rel=1e-6)


def test_nll_is_finite_for_tiny_sigma_far_from_target():
    shape = (1, 1, 3, 2)
    nll = mdn_nll(torch.full(shape, -math.log(3)), torch.zeros(shape), torch.full(shape, -12.0), torch.ones(1, 1, 2))
    assert torch.isfinite(nll)


def test_sampling_at_zero_temperature_returns_the_most_likely_components_mean():
    torch.manual_seed(0)
    log_pi = F.log_softmax(torch.randn(6, 5, 8), dim=-2)  # (B, K, Z)
    mu, log_sigma = torch.randn(6, 5, 8), torch.zeros(6, 5, 8)
    expected = mu.gather(-2, log_pi.argmax(-2, keepdim=True)).squeeze(-2)
    assert torch.equal(sample_next_z(log_pi, mu, log_sigma, 0.0), expected)
    generator = torch.Generator().manual_seed(1)
    assert torch.allclose(sample_next_z(log_pi, mu, log_sigma, 1e-8, generator), expected, atol=1e-3)


def test_temperature_one_samples_components_by_their_weights():
    weights = torch.tensor([0.2, 0.8])
    log_pi = weights.log().view(1, 2, 1).expand(20_000, 2, 1)
    mu = torch.tensor([-10.0, 10.0]).view(1, 2, 1).expand(20_000, 2, 1)
    samples = sample_next_z(log_pi, mu, torch.full_like(mu, -5.0), 1.0, torch.Generator().manual_seed(0))
    assert (samples > 0).float().mean().item() == pytest.approx(0.8, abs=0.02)


def test_step_api_reproduces_sequence_api():
    torch.manual_seed(0)
    model = MDNRNN(latent_size=6, action_size=3, hidden_size=16, num_mixtures=4)
    z, actions = torch.randn(2, 9, 6), torch.randn(2, 9, 3)
    output, (h_seq, c_seq) = model(z, actions)
    hidden = model.initial_state(2, "cpu")
    for t in range(9):
        step_out, hidden = model.step(z[:, t], actions[:, t], hidden)
        for field, value in zip(output, step_out):
            assert_close(value, field[:, t])
    assert_close(hidden[0], h_seq)
    assert_close(hidden[1], c_seq)


# ---------------------------------------------------------------------------------- learning
def synthetic_cache(episodes: int = 40, length: int = 30, seed: int = 0) -> LatentCache:
    """Latents that follow a known rule: z_{t+1} = 0.95 * rotate(z_t, 0.4 rad per pair) + action effect."""
    rng = np.random.default_rng(seed)
    latent, actions_n = 4, 3
    rotation = np.zeros((latent, latent), np.float32)
    for pair in range(latent // 2):
        c, s = math.cos(0.4), math.sin(0.4)
        rotation[2 * pair : 2 * pair + 2, 2 * pair : 2 * pair + 2] = [[c, -s], [s, c]]
    effects = rng.normal(0, 0.5, (actions_n, latent)).astype(np.float32)
    mus, acts = [], []
    for _ in range(episodes):
        z = rng.normal(0, 1, latent).astype(np.float32)
        chosen = rng.integers(0, actions_n, length)
        for t in range(length):
            mus.append(z)
            acts.append(np.eye(actions_n, dtype=np.float32)[chosen[t]])
            z = 0.95 * rotation @ z + effects[chosen[t]]
    total = episodes * length
    terminated = np.zeros(total, bool)
    terminated[length - 1 :: length] = True
    return LatentCache(
        mu=np.stack(mus), logvar=np.full((total, latent), -10.0, np.float32), actions=np.stack(acts),
        rewards=np.zeros(total, np.float32), terminated=terminated,
        offsets=np.arange(0, total + 1, length), episode_names=np.array([f"ep_{i:06d}.npz" for i in range(episodes)]),
    )


def test_learns_a_deterministic_latent_rule_far_better_than_copying():
    torch.manual_seed(0)
    cfg = get_config("LunarLander-v3", preset="smoke", overrides=[
        "vae.latent_size=4", "mdnrnn.hidden_size=64", "mdnrnn.sequence_length=16", "mdnrnn.batch_size=16",
        "mdnrnn.learning_rate=1e-2", "mdnrnn.amp=false",
    ])
    cache = synthetic_cache()
    train, val = SequenceSampler(cache, np.arange(32), 16), SequenceSampler(cache, np.arange(32, 40), 16)
    model = MDNRNN(4, 3, 64, 3)
    device = torch.device("cpu")
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.mdnrnn.learning_rate)
    scaler = make_grad_scaler(device, False)
    before = validate(model, val, cfg, device)
    rng = np.random.default_rng(0)
    for _ in range(20):
        episodes, starts = train.epoch_windows(rng)
        for index in range(0, len(episodes) - 15, 16):
            training_step(model, optimizer, scaler, train.gather(episodes[index : index + 16], starts[index : index + 16]), cfg, device)
    after = validate(model, val, cfg, device)
    assert after["nll"] < before["nll"] - 2.0
    # z ~ N(mu, e^-10) is mu here, so both baselines are "nothing changes"; M must have learnt the rule.
    assert after["prediction_error"] < 0.1 * min(after["copy_baseline_error"], after["copy_mean_baseline_error"])


def test_done_calibration_compares_the_deaths_m_expects_with_those_that_happened():
    cfg = get_config("LunarLander-v3", preset="smoke", overrides=["vae.latent_size=4", "mdnrnn.amp=false"])
    cache = synthetic_cache(episodes=8, length=30)  # 8 deaths in 240 steps
    model = MDNRNN(4, 3, 16, 2)
    with torch.no_grad():  # a done head that says p = 1/60 at every step, whatever it sees
        model.head.weight[-1] = 0.0
        model.head.bias[-1] = math.log((1 / 60) / (1 - 1 / 60))
    metrics = validate(model, SequenceSampler(cache, np.arange(8), 16), cfg, torch.device("cpu"))
    assert metrics["done_calibration"] == pytest.approx(240 / 60 / 8, rel=1e-4)  # it expects 4 of the 8
    assert metrics["done_probability_at_death"] == pytest.approx(1 / 60, rel=1e-4)
    assert metrics["done_precision"] == metrics["done_recall"] == 0.0  # p < 0.5: never predicted


def test_windows_cover_every_step_and_mask_padding():
    cache = synthetic_cache(episodes=3, length=10)
    cache = cache._replace(offsets=np.array([0, 4, 10, 30]))  # episodes of 4, 6 and 20 steps
    sampler = SequenceSampler(cache, np.arange(3), sequence_length=8)
    episodes, starts = sampler.eval_windows()
    covered = {(e, s + t) for e, s in zip(episodes, starts) for t in range(8) if s + t < cache.lengths[e]}
    assert len(covered) == 30 and len(episodes) == 1 + 1 + 3
    episodes, starts = sampler.epoch_windows(np.random.default_rng(0))
    assert np.all(starts >= 0) and np.all(starts <= np.maximum(cache.lengths[episodes] - 8, 0))
    batch = sampler.gather(np.array([0]), np.array([0]))
    assert batch.mu.shape == (1, 9, 4) and batch.actions.shape == (1, 8, 3)
    assert batch.valid[0].tolist() == [True] * 4 + [False] * 5
    assert_close(batch.mu[0, :4], torch.from_numpy(cache.mu[:4]))


# ------------------------------------------------------------------------------ pipeline stages
def test_latent_cache_matches_vae_and_is_rebuilt_only_when_vae_changes(experiment):
    cfg = experiment("cache")
    vae, paths = load_vae(cfg, "cpu"), require_episodes(cfg)
    cache = load_or_encode_latents(cfg, vae, paths, torch.device("cpu"))
    frames = load_episode(paths[1], keys=("obs",))["obs"]
    with torch.no_grad():
        from models.vae import frames_to_input

        mu, logvar = vae.encode(frames_to_input(frames, "cpu", cfg.vae.channels_last))
    rows = slice(cache.offsets[1], cache.offsets[2])
    np.testing.assert_allclose(cache.mu[rows], mu.numpy(), atol=1e-5)
    np.testing.assert_allclose(cache.logvar[rows], logvar.numpy(), atol=1e-5)

    path = latent_cache_path(cfg)
    written = path.stat().st_mtime_ns
    load_or_encode_latents(cfg, vae, paths, torch.device("cpu"))
    assert path.stat().st_mtime_ns == written  # reused
    with torch.no_grad():
        vae.fc_mu.bias.add_(1.0)
    rebuilt = load_or_encode_latents(cfg, vae, paths, torch.device("cpu"))
    assert path.stat().st_mtime_ns != written
    np.testing.assert_allclose(rebuilt.mu, cache.mu + 1.0, atol=1e-4)


def test_a_new_round_encodes_only_the_episodes_no_earlier_cache_of_this_v_holds(experiment, monkeypatch):
    import training.latents as latents

    last_round, this_round = experiment("round-a"), experiment("round-b")
    vae, paths = load_vae(last_round, "cpu"), require_episodes(last_round)
    assert len(paths) >= 3
    load_or_encode_latents(last_round, vae, paths[:-1], torch.device("cpu"))  # the last round saw all but one
    encoded: list[list[str]] = []
    encode = latents.encode_rollouts
    monkeypatch.setattr(latents, "encode_rollouts", lambda v, p, *a, **k: encoded.append([x.name for x in p]) or encode(v, p, *a, **k))

    cache = load_or_encode_latents(this_round, vae, paths, torch.device("cpu"), [latent_cache_path(last_round)])
    assert encoded == [[paths[-1].name]]
    fresh = encode(vae, paths, torch.device("cpu"), 64, this_round.vae.channels_last)
    for field in ("mu", "logvar", "actions", "rewards"):
        np.testing.assert_allclose(getattr(cache, field), getattr(fresh, field), atol=1e-5)
    assert cache.terminated.tolist() == fresh.terminated.tolist() and cache.offsets.tolist() == fresh.offsets.tolist()
    assert cache.episode_names.tolist() == [path.name for path in paths]

    # Another V: nothing is reused; every episode is encoded again.
    with torch.no_grad():
        vae.fc_mu.bias.add_(1.0)
    encoded.clear()
    load_or_encode_latents(this_round, vae, paths, torch.device("cpu"), [latent_cache_path(last_round)])
    assert encoded == [[path.name for path in paths]]


def test_resume_continues_at_saved_epoch_and_matches_an_uninterrupted_run(experiment):
    straight = experiment("straight", ["mdnrnn.epochs=2"])
    train_mdnrnn(straight)
    interrupted = experiment("interrupted", ["mdnrnn.epochs=1"])
    path = train_mdnrnn(interrupted)
    first = load_checkpoint(path, "mdnrnn")
    assert first["epoch"] == 1
    interrupted.mdnrnn.epochs = 2
    train_mdnrnn(interrupted)
    resumed = load_checkpoint(path, "mdnrnn")
    reference = load_checkpoint(checkpoint_path(straight, "mdnrnn"), "mdnrnn")
    assert resumed["epoch"] == 2 and resumed["global_step"] == reference["global_step"] == 2 * first["global_step"]
    # Adam's step counters continued from the saved state instead of restarting at zero.
    assert all(int(s["step"]) == resumed["global_step"] for s in resumed["optimizer"]["state"].values())
    for name, value in reference["model"].items():
        assert_close(resumed["model"][name], value)


def test_cli_smoke_trains_and_load_mdnrnn_serves_the_model(experiment, capsys):
    cfg = experiment("cli")
    folders = [f"experiment.{key}={getattr(cfg.experiment, key)}" for key in ("data_dir", "checkpoint_dir", "log_dir")]
    main(["--env", "LunarLander-v3", "--preset", "smoke", "--experiment", "cli",
          *[arg for override in folders + TINY_PIPELINE_OVERRIDES + PIPELINE_OVERRIDES for arg in ("--set", override)]])
    assert "val prediction error" in capsys.readouterr().out
    assert (experiment_dir(cfg, "logs") / "mdnrnn" / "predictions.png").is_file()
    model = load_mdnrnn(cfg, "cpu", vae=load_vae(cfg, "cpu"))
    assert not model.training and model.action_size == 4 and model.latent_size == cfg.vae.latent_size
    events = list((experiment_dir(cfg, "logs") / "mdnrnn").glob("events.*"))
    assert events


def test_untrained_ablation_writes_a_seeded_initial_model(experiment):
    first = experiment("untrained_a", ["mdnrnn.train=false"])
    second = experiment("untrained_b", ["mdnrnn.train=false"])
    checkpoint = load_checkpoint(train_mdnrnn(first), "mdnrnn")
    assert checkpoint["trained"] is False and checkpoint["epoch"] == 0
    assert not latent_cache_path(first).exists()  # no encoding, no training
    train_mdnrnn(second)
    a, b = load_mdnrnn(first, "cpu"), load_mdnrnn(second, "cpu")
    for (name, value), other in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(value, other), name


def test_refuses_vae_of_other_latent_size_or_env(experiment):
    cfg = experiment("mismatch", ["vae.latent_size=16"])
    with pytest.raises(WorldModelsError, match=r"vae\.latent_size=32, but this run expects vae\.latent_size=16") as error:
        train_mdnrnn(cfg)
    assert "\n" not in str(error.value)
    pong = isolate(get_config("ALE/Pong-v5", preset="smoke", overrides=["experiment.device=cpu"]), Path(cfg.experiment.data_dir).parent)
    pong.experiment.name = "mismatch"
    with pytest.raises(WorldModelsError, match="trained on LunarLander-v3, not ALE/Pong-v5") as error:
        train_mdnrnn(pong)
    assert "\n" not in str(error.value)


def test_load_mdnrnn_refuses_m_trained_on_another_vae(experiment):
    cfg = experiment("stale", ["mdnrnn.train=false"])
    train_mdnrnn(cfg)
    vae = load_vae(cfg, "cpu")
    with torch.no_grad():
        vae.fc_mu.weight.mul_(2.0)
    with pytest.raises(WorldModelsError, match="latents of another VAE"):
        load_mdnrnn(cfg, "cpu", vae=vae)


def test_init_from_starts_from_another_experiments_m_on_the_same_v(experiment, capsys):
    source = experiment("round1")
    train_mdnrnn(source)
    # A learning rate of 1e-12 moves no weight by more than ~1e-11 (Adam's steps are ~lr): what comes out
    # is what went in, so the M trained on went in.
    continued = experiment("round2", ["mdnrnn.init_from=round1", "mdnrnn.learning_rate=1e-12"])
    capsys.readouterr()
    train_mdnrnn(continued)
    episodes = len(require_episodes(continued))  # the same data: round 1's latents are all reused
    out = capsys.readouterr().out
    assert f"mdnrnn: {episodes} of {episodes} episodes are in an earlier cache" in out and "mdnrnn: encoded 0 episodes" in out
    start, after = load_mdnrnn(source, "cpu").state_dict(), load_mdnrnn(continued, "cpu").state_dict()
    for name, value in start.items():
        assert_close(after[name], value)
    scratch = experiment("scratch", ["mdnrnn.learning_rate=1e-12"])
    train_mdnrnn(scratch)
    assert (load_mdnrnn(scratch, "cpu").state_dict()["lstm.weight_ih_l0"] - start["lstm.weight_ih_l0"]).abs().max() > 1e-3


def test_init_from_refuses_an_m_of_another_v(experiment):
    source = experiment("other_v_source")
    train_mdnrnn(source)
    cfg = experiment("other_v", ["mdnrnn.init_from=other_v_source"])
    vae_path = checkpoint_path(cfg, "vae")
    checkpoint = load_checkpoint(vae_path, "vae")
    checkpoint["model"]["fc_mu.weight"] = checkpoint["model"]["fc_mu.weight"] * 2.0
    torch.save(checkpoint, vae_path)
    for best in vae_path.parent.glob("vae_best.pt"):
        best.unlink()
    with pytest.raises(WorldModelsError, match="latents of another VAE") as error:
        train_mdnrnn(cfg)
    assert "\n" not in str(error.value)
