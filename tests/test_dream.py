"""The dream (training/dream.py): hand-built M's with known dynamics, batched == one at a time, CMA-ES in a
toy dream, and controller.mode=dream end to end."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from config import get_config
from evaluate import read_scalars
from models.controller import CMAES, Controller
from models.loaders import load_controller_checkpoint, load_vae
from models.mdnrnn import MDNRNN, sample_next_z
from models.vae import ConvVAE
from tests.conftest import isolate
from training.dream import (
    decode_latents,
    draw_step_noise,
    dream_generator,
    dream_rollouts,
    dream_starts_path,
    episode_start_latents,
    load_dream_starts,
    sample_start_latents,
)
from training.latents import latent_cache_path
from training.train_controller import train_controller
from utils.errors import WorldModelsError
from utils.files import checkpoint_path, experiment_dir

BIG = 1e3  # sigmoid(+-BIG) is exactly 1 or 0 in float32
NEVER_DONE = -1e4  # a done logit whose sigmoid is exactly 0: the Bernoulli never fires


def set_head_biases(model: MDNRNN, component_logits: list[float], component_means: list[torch.Tensor],
                    reward: float, done_logit: float) -> None:
    """Zero the head's weights and set its biases: per component k, logit and mean (Z,) for every dim."""
    K, Z = model.num_mixtures, model.latent_size
    bias = torch.zeros(3 * K * Z + 2)
    for k in range(K):
        bias[k * Z : (k + 1) * Z] = component_logits[k]
        bias[K * Z + k * Z : K * Z + (k + 1) * Z] = component_means[k]
    bias[2 * K * Z :] = -3.0  # log sigma
    bias[-2], bias[-1] = reward, done_logit
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(bias)


def constant_mdnrnn(latent: int, actions: int, next_z: torch.Tensor, reward: float, done_logit: float) -> MDNRNN:
    """M whose LSTM weights are all zero, so h_t = 0 exactly and every output is the head's bias: the
    dominant component predicts `next_z`, the other one something far away."""
    model = MDNRNN(latent, actions, hidden_size=4, num_mixtures=2)
    with torch.no_grad():
        for param in model.lstm.parameters():
            param.zero_()
    set_head_biases(model, [4.0, 0.0], [next_z, next_z + 100.0], reward, done_logit)
    return model


def pass_through_mdnrnn(latent: int, actions: int, eps: float, delta: torch.Tensor, effect: torch.Tensor,
                        reward_weights: torch.Tensor, reward_bias: float) -> MDNRNN:
    """M with z_{t+1} = z_t + delta + effect @ a_t and r_t = reward_weights . a_t + reward_bias.

    The LSTM copies its input: forget gate 0, input and output gates 1, g = tanh(eps x), so
    h = tanh(tanh(eps [z_t, a_t])) = eps [z_t, a_t] up to O(eps^3); the head scales by 1/eps.
    """
    size = latent + actions
    model = MDNRNN(latent, actions, hidden_size=size, num_mixtures=1)
    with torch.no_grad():
        for param in model.lstm.parameters():
            param.zero_()
        # nn.LSTM's gate order: input, forget, cell (g), output.
        model.lstm.bias_ih_l0[:size] = BIG
        model.lstm.bias_ih_l0[size : 2 * size] = -BIG
        model.lstm.weight_ih_l0[2 * size : 3 * size] = eps * torch.eye(size)
        model.lstm.bias_ih_l0[3 * size :] = BIG
    set_head_biases(model, [0.0], [delta], reward_bias, NEVER_DONE)
    with torch.no_grad():
        model.head.weight[latent : 2 * latent, :latent] = torch.eye(latent) / eps  # mu rows
        model.head.weight[latent : 2 * latent, latent:] = effect / eps
        model.head.weight[-2, latent:] = reward_weights / eps
    return model


def test_zero_lstm_dream_reproduces_the_heads_constants_exactly():
    latent, steps = 3, 7
    next_z = torch.tensor([0.5, -1.0, 2.0])
    model = constant_mdnrnn(latent, 2, next_z, reward=0.25, done_logit=NEVER_DONE)
    controller = Controller(latent + model.hidden_size, 2)
    params = torch.randn(5, controller.num_parameters)
    start_z = torch.randn(5, latent)
    result = dream_rollouts(model, controller.layer_shapes, params, start_z, gym.spaces.Discrete(2), 0.0, steps,
                            torch.Generator().manual_seed(0), record_first=True)
    np.testing.assert_array_equal(result.returns, np.full(5, 0.25 * steps))
    np.testing.assert_array_equal(result.lengths, np.full(5, steps))
    # z_0 is the start latent; from then on the dominant component's mean, exactly (tau = 0).
    expected = torch.cat([start_z[:1], next_z.expand(steps - 1, latent)])
    assert torch.equal(result.first_latents, expected)


def test_pass_through_dream_follows_the_known_dynamics_and_c_sees_z_and_h():
    latent, actions, steps, eps = 2, 2, 12, 1e-4
    delta, effect = torch.tensor([0.1, -0.05]), torch.tensor([[0.3, 0.0], [0.1, -0.2]])
    reward_weights, reward_bias = torch.tensor([1.0, -0.5]), 0.2
    model = pass_through_mdnrnn(latent, actions, eps, delta, effect, reward_weights, reward_bias)
    space = gym.spaces.Box(np.array([-1.0, 0.0], np.float32), np.array([1.0, 2.0], np.float32))
    controller = Controller(latent + model.hidden_size, actions)
    generator = torch.Generator().manual_seed(1)
    weights = torch.randn(actions, latent + model.hidden_size, generator=generator)
    weights[:, latent:] /= eps  # C reads h_t = eps [z_{t-1}, a_{t-1}] at the scale of z
    params = torch.cat([weights.reshape(-1), torch.randn(actions, generator=generator)])[None].repeat(3, 1)
    start_z = torch.randn(3, latent, generator=generator)
    result = dream_rollouts(model, controller.layer_shapes, params, start_z, space, 0.0, steps, generator,
                            record_first=True)

    # The same episodes in float64, from the dynamics M was built to have.
    W, b = weights.double().numpy(), params[0, -actions:].double().numpy()
    low, high = space.low.astype(np.float64), space.high.astype(np.float64)
    for e in range(3):
        z, h, total, trajectory = start_z[e].double().numpy(), np.zeros(latent + actions), 0.0, []
        for _ in range(steps):
            trajectory.append(z)
            action = low + (np.tanh(W @ np.concatenate([z, h]) + b) + 1) / 2 * (high - low)
            total += reward_weights.double().numpy() @ action + reward_bias
            h = eps * np.concatenate([z, action])
            z = z + delta.double().numpy() + effect.double().numpy() @ action
        np.testing.assert_allclose(result.returns[e], total, atol=1e-4)
        if e == 0:
            np.testing.assert_allclose(result.first_latents.double().numpy(), np.stack(trajectory), atol=1e-4)
    assert np.all(result.lengths == steps)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_dream_on_cuda_matches_cpu_when_deterministic():
    model = pass_through_mdnrnn(2, 2, 1e-4, torch.tensor([0.1, 0.0]), torch.eye(2) * 0.2, torch.tensor([1.0, 0.5]), 0.1)
    controller = Controller(2 + model.hidden_size, 2)
    params, start_z = torch.randn(8, controller.num_parameters), torch.randn(8, 2)
    space = gym.spaces.Box(-np.ones(2, np.float32), np.ones(2, np.float32))
    on_cpu = dream_rollouts(model, controller.layer_shapes, params, start_z, space, 0.0, 10, torch.Generator())
    on_cuda = dream_rollouts(model.cuda(), controller.layer_shapes, params.cuda(), start_z.cuda(), space, 0.0, 10,
                             dream_generator(0, "fitness", 0, "cuda"))
    np.testing.assert_allclose(on_cuda.returns, on_cpu.returns, atol=1e-3)


def test_done_ends_episodes_and_finished_episodes_stop_accumulating():
    model = constant_mdnrnn(2, 2, torch.zeros(2), reward=1.5, done_logit=0.0)  # done with probability 1/2 per step
    controller = Controller(2 + model.hidden_size, 2)
    episodes = 4000
    result = dream_rollouts(model, controller.layer_shapes, torch.zeros(episodes, controller.num_parameters),
                            torch.zeros(episodes, 2), gym.spaces.Discrete(2), 1.0, 6, torch.Generator().manual_seed(2))
    np.testing.assert_array_equal(result.returns, 1.5 * result.lengths)
    assert result.lengths.min() == 1 and result.lengths.max() == 6  # the cap
    # Geometric(1/2) truncated at 6 steps: E[length] = sum_{t<6} 2^-t = 1.96875.
    assert abs(result.lengths.mean() - 1.96875) < 0.06
    always = constant_mdnrnn(2, 2, torch.zeros(2), reward=1.5, done_logit=-NEVER_DONE)
    result = dream_rollouts(always, controller.layer_shapes, torch.zeros(3, controller.num_parameters),
                            torch.zeros(3, 2), gym.spaces.Discrete(2), 1.0, 6, torch.Generator().manual_seed(2))
    np.testing.assert_array_equal(result.lengths, [1, 1, 1])
    # The threshold rule (the original's Doom code): a logit of -0.5 (p 0.38) never ends an episode, one of
    # +0.1 ends each on its first step.
    for logit, expected in ((-0.5, 6), (0.1, 1)):
        model = constant_mdnrnn(2, 2, torch.zeros(2), reward=1.5, done_logit=logit)
        result = dream_rollouts(model, controller.layer_shapes, torch.zeros(5, controller.num_parameters), torch.zeros(5, 2),
                                gym.spaces.Discrete(2), 1.0, 6, torch.Generator().manual_seed(2), done_rule="threshold")
        np.testing.assert_array_equal(result.lengths, [expected] * 5)


def test_batched_dream_equals_one_candidate_at_a_time_with_the_same_random_numbers():
    torch.manual_seed(3)
    latent, episodes, max_steps, temperature = 4, 6, 30, 1.2
    model = MDNRNN(latent, 3, hidden_size=16, num_mixtures=3).eval()
    with torch.no_grad():
        model.head.bias[-1] = -2.0  # episodes of ~8 steps: the lengths differ
    controller = Controller(latent + 16, 3, hidden_sizes=(5,))
    params = torch.randn(episodes, controller.num_parameters)
    start_z = torch.randn(episodes, latent)
    space = gym.spaces.Discrete(3)
    batched = dream_rollouts(model, controller.layer_shapes, params, start_z, space, temperature, max_steps,
                             torch.Generator().manual_seed(7))

    generator = torch.Generator().manual_seed(7)
    noise = [draw_step_noise(generator, episodes, 3, latent, "cpu") for _ in range(max_steps)]
    for e in range(episodes):
        controller.set_flat_parameters(params[e])
        z, hidden, total, length = start_z[e : e + 1], model.initial_state(1, "cpu"), 0.0, 0
        with torch.no_grad():
            for step in noise:
                action = torch.nn.functional.one_hot(controller(torch.cat([z, hidden[0][0]], -1)).argmax(-1), 3).float()
                (log_pi, mu, log_sigma, reward, done_logit), hidden = model.step(z, action, hidden)
                total, length = total + reward.item(), length + 1
                z = sample_next_z(log_pi, mu, log_sigma, temperature,
                                  noise=(step.component_uniform[e : e + 1], step.normal[e : e + 1]))
                if step.done_uniform[e] < torch.sigmoid(done_logit[0]):
                    break
        assert batched.lengths[e] == length
        np.testing.assert_allclose(batched.returns[e], total, rtol=1e-5, atol=1e-5)
    assert len(set(batched.lengths.tolist())) > 1, "the episodes should end at different steps"


def test_cma_es_finds_the_optimum_of_a_toy_dream():
    # M's heads are linear in h, so the reward a hand-set M represents exactly is linear in the action:
    # r = w . a, best at the corner a* = sign(w) of the [-1, 1]^2 box, worth sum|w| = 1.5 per step.
    latent, actions, steps = 2, 2, 5
    model = pass_through_mdnrnn(latent, actions, 1e-4, torch.zeros(latent), torch.zeros(latent, actions),
                                torch.tensor([1.0, -0.5]), 0.0)
    space = gym.spaces.Box(-np.ones(2, np.float32), np.ones(2, np.float32))
    controller = Controller(latent + model.hidden_size, actions)
    population, rollouts = 16, 4
    es = CMAES(controller.num_parameters, sigma=0.5, population_size=population, seed=0)
    for generation in range(60):
        candidates = torch.as_tensor(es.ask(), dtype=torch.float32).repeat_interleave(rollouts, 0)
        generator = dream_generator(0, "fitness", generation, "cpu")
        start_z = torch.randn(rollouts, latent, generator=generator).repeat(population, 1)
        result = dream_rollouts(model, controller.layer_shapes, candidates, start_z, space, 1.0, steps, generator)
        es.tell(result.returns.reshape(population, rollouts).mean(1))
    mean = torch.as_tensor(es.mean, dtype=torch.float32)[None].repeat(16, 1)
    generator = torch.Generator().manual_seed(0)
    final = dream_rollouts(model, controller.layer_shapes, mean, torch.randn(16, latent, generator=generator), space,
                           1.0, steps, generator)
    assert final.returns.min() > 1.5 * steps - 0.05, final.returns


def test_start_latents_come_from_episode_first_frames():
    mu = np.arange(10, dtype=np.float32)[:, None].repeat(2, 1)
    logvar = np.full_like(mu, -60.0)  # sigma ~ 1e-13: the samples are the means
    start_mu, start_logvar = episode_start_latents(mu, logvar, np.array([0, 4, 7, 10]), "cpu")
    assert start_mu[:, 0].tolist() == [0.0, 4.0, 7.0]
    samples = sample_start_latents(start_mu, start_logvar, 200, torch.Generator().manual_seed(0))
    assert set(samples[:, 0].round().tolist()) == {0.0, 4.0, 7.0}
    with pytest.raises(WorldModelsError, match="no episodes"):
        episode_start_latents(mu, logvar, np.array([0]), "cpu")


def test_dream_starts_are_kept_beside_v_and_serve_a_machine_without_the_data(trained_lunar, tmp_path):
    trained = isolate(get_config("LunarLander-v3", preset="smoke", overrides=["env.max_episode_steps=60"]), trained_lunar)
    cfg = isolate(get_config("LunarLander-v3", preset="smoke", overrides=["env.max_episode_steps=60"]), trained_lunar)
    cfg.experiment.checkpoint_dir = str(tmp_path / "weights")
    folder = checkpoint_path(cfg, "vae").parent
    folder.mkdir(parents=True)
    for name in ("vae.pt", "vae_best.pt", "latents.npz"):
        (folder / name).write_bytes((checkpoint_path(trained, "vae").parent / name).read_bytes())
    vae = load_vae(cfg, "cpu")
    with np.load(latent_cache_path(cfg)) as cache:
        expected = episode_start_latents(cache["mu"], cache["logvar"], cache["offsets"], "cpu")
    written = load_dream_starts(cfg, vae, torch.device("cpu"))
    assert dream_starts_path(cfg).is_file()
    for got, want in zip(written, expected):
        torch.testing.assert_close(got, want)
    # Committed weights on a machine without the collected episodes (or their latent cache) still dream.
    cfg.experiment.data_dir = str(tmp_path / "no-data")
    latent_cache_path(cfg).unlink()
    for got, want in zip(load_dream_starts(cfg, vae, torch.device("cpu")), expected):
        torch.testing.assert_close(got, want)
    # Another V's latents are not these: without data to re-encode, the error says what is missing.
    with torch.no_grad():
        next(vae.parameters()).add_(0.1)
    with pytest.raises(WorldModelsError, match="no rollouts in .*collect them first"):
        load_dream_starts(cfg, vae, torch.device("cpu"))


def test_dream_is_a_pure_function_of_the_seed_and_decodes_to_frames():
    torch.manual_seed(4)
    model = MDNRNN(8, 2, hidden_size=8, num_mixtures=2).eval()
    controller = Controller(16, 2)
    params, start_z = torch.randn(4, controller.num_parameters), torch.randn(4, 8)

    def run(generation: int):
        return dream_rollouts(model, controller.layer_shapes, params, start_z, gym.spaces.Discrete(2), 1.15, 20,
                              dream_generator(5, "fitness", generation, "cpu"), record_first=True)

    first, again, other = run(3), run(3), run(4)
    np.testing.assert_array_equal(first.returns, again.returns)
    assert not np.array_equal(first.returns, other.returns)
    frames = decode_latents(ConvVAE(8).eval(), first.first_latents)
    assert frames.shape == (first.lengths[0], 64, 64, 3) and frames.dtype == np.uint8


@pytest.mark.slow
def test_dream_mode_trains_resumes_exactly_and_writes_imagination_videos(trained_lunar, tmp_path):
    def config(generations: int, name: str):
        cfg = isolate(get_config("LunarLander-v3", preset="smoke", overrides=[
            "env.max_episode_steps=60", "controller.mode=dream", f"controller.generations={generations}",
            "controller.eval_every=2", "controller.video_every=2", "controller.workers=1",
            "controller.dream_max_steps=50"]), trained_lunar)
        cfg.experiment.checkpoint_dir = str(tmp_path / name)
        cfg.experiment.video_dir = str(tmp_path / name / "videos")
        cfg.experiment.log_dir = str(tmp_path / name / "logs")
        source = checkpoint_path(isolate(get_config("LunarLander-v3", preset="smoke"), trained_lunar), "vae").parent
        target = checkpoint_path(cfg, "vae").parent
        target.mkdir(parents=True, exist_ok=True)
        for name in ("vae.pt", "vae_best.pt", "mdnrnn.pt", "mdnrnn_best.pt", "latents.npz"):  # share V, M and latents
            (target / name).write_bytes((source / name).read_bytes())
        return cfg

    interrupted = config(2, "interrupted")
    train_controller(interrupted)
    interrupted.controller.generations = 3
    train_controller(interrupted)
    straight = config(3, "straight")
    train_controller(straight)
    resumed, uninterrupted = load_controller_checkpoint(interrupted), load_controller_checkpoint(straight)
    assert resumed["generation"] == 3
    torch.testing.assert_close(resumed["fitness_history"], uninterrupted["fitness_history"])
    torch.testing.assert_close(resumed["best_params"], uninterrupted["best_params"])
    videos = sorted(p.name for p in (tmp_path / "straight" / "videos").rglob("dream_gen*.mp4"))
    assert videos == ["dream_gen0002.mp4", "dream_gen0003.mp4"]
    # Every curve is in TensorBoard: what the dream promises and what the real env pays.
    tags = ["controller/dream_fitness_mean", "controller/eval_score_best_candidate", "controller/fitness_mean",
            "controller/dream_eval_score_mean_params", "controller/dream_eval_score_best_candidate",
            "controller/best_score"]
    scalars = read_scalars(experiment_dir(straight, "logs") / "controller", tags)
    assert set(scalars) == set(tags) - {"controller/fitness_mean"}
    # C is trained entirely in the dream: the kept best is the best of the dream's re-evaluations (at
    # generations 2 and 3), whatever the real env, which only watches, made of the same candidates.
    dream_scores = np.concatenate([scalars[tag][1] for tag in tags[3:5]])
    assert float(uninterrupted["best_score"]) == pytest.approx(dream_scores.max())
    assert scalars["controller/best_score"][1][-1] == pytest.approx(dream_scores.max())
