"""Stage 4: the controller, CMA-ES, batched population evaluation, and train.py end to end."""

from __future__ import annotations

import copy
import csv
import io
import math
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from config import get_config
from models.agent import WorldModelAgent, WorldModelPolicy
from models.controller import CMAES, Controller, controller_input, controller_input_size, outputs_to_actions, population_forward
from models.loaders import load_controller_checkpoint, load_world_model_agent
from models.mdnrnn import MDNRNN
from models.vae import ConvVAE
from tests.conftest import isolate, tiny_pipeline_config
from train import run_pipeline
from training.learning_curve import CURVE_COLUMNS, LearningCurve
from training.population import run_episodes
from training.train_controller import train_controller
from utils.env_workers import EnvWorkerPool
from utils.environment import make_frame_env, run_episode
from utils.errors import WorldModelsError
from utils.files import checkpoint_path, load_checkpoint


def test_cma_es_minimises_a_shifted_sphere():
    target = np.linspace(-1, 1, 12)
    es = CMAES(12, sigma=0.5, population_size=16, seed=3)
    for _ in range(200):
        candidates = es.ask()
        es.tell(-((candidates - target) ** 2).sum(axis=1))
    assert np.abs(es.mean - target).max() < 1e-4
    with pytest.raises(WorldModelsError, match="needs the candidates of an ask"):  # each tell answers one ask
        es.tell(np.zeros(16))


def test_cma_es_state_is_rebuilt_exactly_from_its_fitness_history():
    def fitness_of(candidates):
        return -np.abs(candidates - 0.3).sum(axis=1)

    es = CMAES(20, sigma=0.5, population_size=8, seed=1)
    for _ in range(6):
        es.tell(fitness_of(es.ask()))
    np.random.seed(123)  # someone else using numpy's global RNG must not matter
    rebuilt = CMAES(20, sigma=0.5, population_size=8, seed=1)
    rebuilt.replay(np.stack(es.fitness_history))
    np.testing.assert_array_equal(rebuilt.ask(), es.ask())
    assert rebuilt.sigma == es.sigma


def test_flat_parameters_round_trip_exactly_and_batched_forward_matches():
    controller = Controller(40, 3, hidden_sizes=(8,))
    flat = torch.randn(5, controller.num_parameters)
    inputs = torch.randn(5, 40)
    batched = population_forward(controller.layer_shapes, flat, inputs)
    for row in range(5):
        controller.set_flat_parameters(flat[row])
        assert torch.equal(controller.get_flat_parameters(), flat[row])
        torch.testing.assert_close(batched[row], controller(inputs[row : row + 1])[0])
    with pytest.raises(WorldModelsError, match=f"expects {controller.num_parameters} parameters, got 3"):
        controller.set_flat_parameters(torch.zeros(3))


def test_actions_are_mapped_into_the_action_space():
    car_racing = gym.spaces.Box(np.array([-1, 0, 0], np.float32), np.ones(3, np.float32))
    outputs = torch.tensor([[-50.0, -50.0, 50.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(outputs_to_actions(outputs, car_racing).numpy(), [[-1, 0, 1], [0, 0.5, 0.5]], atol=1e-6)
    one_hot = outputs_to_actions(torch.tensor([[0.1, 2.0, -1.0, 0.0]]), gym.spaces.Discrete(4))
    assert one_hot.tolist() == [[0, 1, 0, 0]]
    # The paper code's CarRacing mapping: brake is clip(tanh, 0, 1), so a zero or negative output never brakes.
    outputs = torch.tensor([[-50.0, -50.0, 50.0], [0.0, 0.0, 0.0], [0.5, 0.5, -3.0]])
    paper = outputs_to_actions(outputs, car_racing, mapping="carracing_paper").numpy()
    np.testing.assert_allclose(paper, [[-1, 0, 1], [0, 0.5, 0], [np.tanh(0.5), (np.tanh(0.5) + 1) / 2, 0]], atol=1e-6)
    with pytest.raises(WorldModelsError, match="needs CarRacing's 3 actions"):
        outputs_to_actions(torch.zeros(1, 2), gym.spaces.Box(-1, 1, (2,)), mapping="carracing_paper")


def test_the_paper_preset_maps_carracing_actions_as_the_paper_and_refuses_the_mapping_elsewhere():
    assert get_config("CarRacing-v3", preset="paper").controller.action_mapping == "carracing_paper"
    assert get_config("CarRacing-v3").controller.action_mapping == "carracing_paper"  # the long run's recipe too
    assert get_config("LunarLander-v3").controller.action_mapping == "squash"
    assert get_config("LunarLander-v3", preset="paper").controller.action_mapping == "squash"
    with pytest.raises(WorldModelsError, match="LunarLander-v3 needs controller.action_mapping=squash"):
        get_config("LunarLander-v3", overrides=["controller.action_mapping=carracing_paper"])


def test_the_paper_preset_samples_z_on_carracing_and_a_sampled_z_is_a_posterior_draw():
    assert get_config("CarRacing-v3", preset="paper").controller.sample_z
    assert not get_config("CarRacing-v3").controller.sample_z
    assert not get_config("LunarLander-v3", preset="paper").controller.sample_z
    torch.manual_seed(0)
    vae = ConvVAE(8).eval()
    with torch.no_grad():
        vae.fc_logvar.bias.fill_(-1.0)  # a posterior std of exp(-0.5) ~ 0.61 in every dim
    action_space = gym.spaces.Box(np.array([-1, 0, 0], np.float32), np.ones(3, np.float32))
    mdnrnn = MDNRNN(8, 3, 16, 2)
    controller = Controller(8 + 16, 3)
    params = torch.zeros(1, controller.num_parameters)
    frames = np.full((1, 64, 64, 3), 100, np.uint8)

    def draws(sample_z: bool, seed: int) -> torch.Tensor:
        policy = WorldModelPolicy(vae, mdnrnn, controller.layer_shapes, action_space, seed=seed, sample_z=sample_z)
        return torch.cat([policy.act(frames, params, policy.initial_state(1)).z for _ in range(400)])

    mean_z = draws(False, 0)
    assert torch.equal(mean_z, mean_z[:1].expand_as(mean_z))  # the posterior mean: the same z every time
    sampled = draws(True, 0)
    torch.testing.assert_close(sampled.mean(0), mean_z[0], atol=0.12, rtol=0)
    torch.testing.assert_close(sampled.std(0), torch.full((8,), float(np.exp(-0.5))), atol=0.08, rtol=0)
    assert torch.equal(sampled, draws(True, 0)) and not torch.equal(sampled, draws(True, 1))


def test_controller_inputs_are_z_zh_or_the_papers_doom_zch():
    z, h, c = torch.randn(5, 4), torch.randn(1, 5, 3), torch.randn(1, 5, 3)
    assert torch.equal(controller_input(z, (h, c), "z"), z)
    assert torch.equal(controller_input(z, (h, c), "zh"), torch.cat([z, h[0]], 1))
    assert torch.equal(controller_input(z, (h, c), "zch"), torch.cat([z, c[0], h[0]], 1))
    assert [controller_input_size(4, 3, inputs) for inputs in ("z", "zh", "zch")] == [4, 7, 10]


def _random_policy(cfg, action_space):
    torch.manual_seed(0)
    vae = ConvVAE(cfg.vae.latent_size)
    actions = int(action_space.n)
    mdnrnn = MDNRNN(cfg.vae.latent_size, actions, cfg.mdnrnn.hidden_size, cfg.mdnrnn.num_mixtures)
    controller = Controller(cfg.vae.latent_size + cfg.mdnrnn.hidden_size, actions)
    return WorldModelPolicy(vae, mdnrnn, controller.layer_shapes, action_space), controller.num_parameters


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_an_agent_takes_its_parameters_as_an_array_or_as_a_tensor_on_its_device(smoke_config, device):
    # A checkpoint's best_params load onto the evaluation device (map_location): a CUDA tensor must do.
    cfg = smoke_config("LunarLander-v3")
    policy, num_params = _random_policy(cfg, make_frame_env(cfg.env).action_space)
    policy = WorldModelPolicy(policy.vae.to(device), policy.mdnrnn.to(device), policy.layer_shapes, policy.action_space,
                              device=device)
    params = np.random.default_rng(0).normal(0, 0.5, num_params).astype(np.float32)
    frame = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    actions = []
    for given in (params, torch.as_tensor(params, device=device)):
        agent = WorldModelAgent(policy, given)
        agent.reset(3)
        actions.append([agent.act(frame) for _ in range(3)])
        agents = agent.for_episodes(2)
        agents.reset(0, 3)
        agents.reset(1, 3)
        assert agents.act([0, 1], np.stack([frame, frame])) == [actions[-1][0]] * 2
    assert actions[0] == actions[1]
    controller = Controller(cfg.vae.latent_size + cfg.mdnrnn.hidden_size, 4).to(device)
    controller.set_flat_parameters(torch.as_tensor(params, device=device))
    torch.testing.assert_close(controller.get_flat_parameters().cpu(), torch.as_tensor(params))


def test_batched_population_evaluation_equals_one_candidate_at_a_time(smoke_config):
    cfg = smoke_config("LunarLander-v3", ["env.max_episode_steps=40"])
    env = make_frame_env(cfg.env)
    policy, num_params = _random_policy(cfg, env.action_space)
    params = np.random.default_rng(0).normal(0, 0.5, (3, num_params)).astype(np.float32)
    seeds = np.array([11, 12])
    with EnvWorkerPool(cfg.env, num_envs=4, workers=2) as pool:  # fewer envs than episodes: runs in chunks
        batched, lengths, _ = run_episodes(policy, pool, np.repeat(params, 2, axis=0), np.tile(seeds, 3))
    alone = [run_episode(env, WorldModelAgent(policy, params[p]), int(seed), record=False).total_reward
             for p in range(3) for seed in seeds]
    np.testing.assert_allclose(batched, alone, rtol=1e-5)
    assert len(set(np.round(batched, 3))) > 1, "different candidates/seeds should play differently"


def test_a_sampling_policy_scores_the_same_seeds_the_same_way_every_call(smoke_config):
    # sample_z draws noise from the policy's generator: run_episodes re-seeds it from the call's episode
    # seeds, so a generation replayed after a resume scores what it scored the first time.
    cfg = smoke_config("LunarLander-v3", ["env.max_episode_steps=40"])
    policy, num_params = _random_policy(cfg, make_frame_env(cfg.env).action_space)
    policy.sample_z = True
    params = np.random.default_rng(0).normal(0, 0.5, (4, num_params)).astype(np.float32)
    with EnvWorkerPool(cfg.env, num_envs=4, workers=1) as pool:
        first, _, _ = run_episodes(policy, pool, params, np.array([11, 12, 13, 14]))
        run_episodes(policy, pool, params, np.array([21, 22, 23, 24]))  # another generation in between
        again, _, _ = run_episodes(policy, pool, params, np.array([11, 12, 13, 14]))
    np.testing.assert_array_equal(first, again)


@pytest.fixture
def lunar_models(trained_lunar):
    return trained_lunar


def _controller_config(root, generations):
    overrides = ["env.max_episode_steps=60", f"controller.generations={generations}", "controller.eval_every=2",
                 "controller.video_every=0", "controller.workers=2"]
    return isolate(get_config("LunarLander-v3", preset="smoke", overrides=overrides), root)


@pytest.mark.slow
def test_smoke_pipeline_leaves_loadable_checkpoints_and_an_agent(lunar_models):
    cfg = _controller_config(lunar_models, 2)
    for stage in ("vae", "mdnrnn", "controller"):
        assert load_checkpoint(checkpoint_path(cfg, stage), stage, "LunarLander-v3")["env_id"] == "LunarLander-v3"
    agent = load_world_model_agent(cfg, "cpu")
    env = make_frame_env(cfg.env)
    episode = run_episode(env, agent, seed=5)
    assert episode.length > 0 and np.isfinite(episode.total_reward)
    # re-running the finished experiment redoes nothing
    before = checkpoint_path(cfg, "vae").stat().st_mtime_ns
    run_pipeline(cfg)
    assert checkpoint_path(cfg, "vae").stat().st_mtime_ns == before


@pytest.mark.slow
def test_interrupted_controller_resumes_at_the_saved_generation(lunar_models, tmp_path):
    # Stopped after generation 2 (an evaluation generation with eval_every=2, as in an uninterrupted run).
    interrupted = _controller_config(lunar_models, 2)
    interrupted.experiment.checkpoint_dir = str(tmp_path / "interrupted")
    for stage in ("vae", "vae_best", "mdnrnn", "mdnrnn_best"):  # share V and M
        source = checkpoint_path(_controller_config(lunar_models, 1), stage)
        target = checkpoint_path(interrupted, stage)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    train_controller(interrupted)
    interrupted.controller.generations = 3
    train_controller(interrupted)
    resumed = load_controller_checkpoint(interrupted)
    assert resumed["generation"] == 3

    straight = _controller_config(lunar_models, 3)
    straight.experiment.checkpoint_dir = interrupted.experiment.checkpoint_dir.replace("interrupted", "straight")
    for stage in ("vae", "vae_best", "mdnrnn", "mdnrnn_best"):
        target = checkpoint_path(straight, stage)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(checkpoint_path(interrupted, stage).read_bytes())
    train_controller(straight)
    uninterrupted = load_controller_checkpoint(straight)
    torch.testing.assert_close(resumed["fitness_history"], uninterrupted["fitness_history"])
    torch.testing.assert_close(resumed["best_params"], uninterrupted["best_params"])
    # The learning curve: the resumed run continues its totals; every column but wall time is the
    # uninterrupted run's. Episodes: population x rollouts a generation, plus 2 x eval_episodes when the
    # mean and the best candidate are re-scored (generations 2 and 3: eval_every=2, and the last one).
    wall = CURVE_COLUMNS.index("wall_seconds")
    keep = [i for i in range(len(CURVE_COLUMNS)) if i != wall]
    torch.testing.assert_close(resumed["curve"][:, keep], uninterrupted["curve"][:, keep], equal_nan=True)
    c = interrupted.controller
    per_generation = c.population_size * c.rollouts_per_candidate
    with open(checkpoint_path(interrupted, "controller").with_name("controller_curve.csv")) as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["generation"]) for row in rows] == [1, 2, 3]
    assert [int(row["real_episodes"]) for row in rows] == [per_generation, 2 * per_generation + 2 * c.eval_episodes,
                                                           3 * per_generation + 4 * c.eval_episodes]
    assert rows[0]["eval_mean_params"] == "" and rows[1]["eval_mean_params"] != ""
    assert 0 < int(rows[0]["real_env_steps"]) <= per_generation * 60 < int(rows[2]["real_env_steps"])
    assert float(rows[0]["wall_seconds"]) < float(rows[1]["wall_seconds"]) < float(rows[2]["wall_seconds"])
    # Replaying the saved fitnesses is only valid for the CMA-ES that asked for those candidates: another seed,
    # sigma or penalty is refused, and so is a saved mean the replay does not give back (another cma version).
    interrupted.controller.generations = 4
    for section, key, value in (("experiment", "seed", 7), ("controller", "sigma", 0.2),
                                ("controller", "weight_decay", 0.01), ("env", "max_episode_steps", 50)):
        changed = copy.deepcopy(interrupted)
        setattr(getattr(changed, section), key, value)
        with pytest.raises(WorldModelsError, match=f"has {section}.{key}=.* this run expects {section}.{key}={value}"):
            train_controller(changed)
    path = checkpoint_path(interrupted, "controller")
    saved_bytes = path.read_bytes()
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["mean_params"] += 0.01
    torch.save(checkpoint, path)
    with pytest.raises(WorldModelsError, match="does not give back the saved CMA-ES mean"):
        train_controller(interrupted)
    # Fitnesses measured with the ball served for the agent (env.fire_to_serve, Atari) are another task's.
    checkpoint = torch.load(io.BytesIO(saved_bytes), weights_only=True)
    checkpoint["config"]["env"]["fire_to_serve"] = True
    torch.save(checkpoint, path)
    with pytest.raises(WorldModelsError, match="has env.fire_to_serve=True.* this run expects env.fire_to_serve=False"):
        train_controller(interrupted)
    path.write_bytes(saved_bytes)
    # M retrained under the run: its CMA-ES state belongs to the old M, so the run refuses to go on.
    for stage in ("mdnrnn", "mdnrnn_best"):
        path = checkpoint_path(interrupted, stage)
        checkpoint = torch.load(path, weights_only=True)
        name = next(iter(checkpoint["model"]))
        checkpoint["model"][name] = checkpoint["model"][name] + 0.01
        torch.save(checkpoint, path)
    with pytest.raises(WorldModelsError, match="was trained with another M .*under a new --experiment"):
        train_controller(interrupted)


def test_skipped_stage_without_its_output_names_the_command(smoke_config, tmp_path):
    cfg = smoke_config("LunarLander-v3")
    with pytest.raises(WorldModelsError, match="no rollouts .* python -m training.collect --env LunarLander-v3"):
        run_pipeline(cfg, skip=frozenset({"collect"}))
    with pytest.raises(WorldModelsError, match="no vae checkpoint .* python -m training.train_vae --env LunarLander-v3"):
        run_pipeline(cfg, skip=frozenset({"vae"}))
    assert not (tmp_path / "data").exists(), "nothing runs when a skipped stage's output is missing"


@pytest.mark.slow
def test_smoke_pipeline_runs_on_pong_and_leaves_loadable_checkpoints(tmp_path):
    cfg = isolate(get_config("ALE/Pong-v5", preset="smoke", overrides=["env.max_episode_steps=60"]), tmp_path)
    outputs = run_pipeline(cfg)
    assert set(outputs) == {"collect", "vae", "mdnrnn", "controller"}
    for stage in ("vae", "mdnrnn", "controller"):
        assert load_checkpoint(checkpoint_path(cfg, stage), stage, "ALE/Pong-v5")["stage"] == stage
    agent = load_world_model_agent(cfg, "cpu")
    assert agent.act(np.zeros((64, 64, 3), np.uint8)) in range(6)


def test_stages_and_evaluation_in_one_process_leave_the_thread_count_as_they_found_it(tmp_path, monkeypatch):
    """Stage 4 plays its envs in worker processes on one torch thread; train.py runs every stage (and
    --iterations every round) in one process, so V and M of a later stage must get their threads back."""
    import training.train_controller as stage_4
    from evaluate import evaluate

    torch.set_num_threads(2)
    threads_while_playing = []

    def recording_run_episodes(*args, **kwargs):
        threads_while_playing.append(torch.get_num_threads())
        return run_episodes(*args, **kwargs)

    monkeypatch.setattr(stage_4, "run_episodes", recording_run_episodes)
    cfg = tiny_pipeline_config(tmp_path, "threads", ["collect.num_rollouts=3", "env.max_episode_steps=30",
                                                     "controller.workers=2", "controller.generations=1",
                                                     "controller.population_size=2", "controller.video_every=0",
                                                     "env.backend=gymnasium"])  # EnvPool has no worker processes
    run_pipeline(cfg)
    assert threads_while_playing and set(threads_while_playing) == {1}
    assert torch.get_num_threads() == 2
    evaluate(cfg, "world_models", episodes=2, workers=1)
    assert torch.get_num_threads() == 2


def test_weight_decay_ranks_small_parameters_first_and_the_history_keeps_the_played_fitness():
    def run(weight_decay: float) -> tuple[float, CMAES]:
        es = CMAES(10, sigma=0.5, population_size=12, seed=2, x0=np.full(10, 3.0), weight_decay=weight_decay)
        for _ in range(40):
            es.ask()
            es.tell(np.zeros(12))  # every candidate plays equally well: only the penalty ranks them
        return float(np.linalg.norm(es.mean)), es

    plain_norm, _ = run(0.0)
    decayed_norm, decayed = run(0.005)
    assert decayed_norm < 0.25 * np.linalg.norm(np.full(10, 3.0)) < plain_norm
    assert all((fitness == 0).all() for fitness in decayed.fitness_history)
    rebuilt = CMAES(10, sigma=0.5, population_size=12, seed=2, x0=np.full(10, 3.0), weight_decay=0.005)
    rebuilt.replay(np.stack(decayed.fitness_history))
    np.testing.assert_array_equal(rebuilt.mean, decayed.mean)


@pytest.mark.slow
def test_a_run_continued_on_the_other_backend_re_chooses_its_kept_best(lunar_models, tmp_path, capsys):
    """The ports draw frames differently, so real scores from two backends are not compared: after a switch
    the kept best is the best of the new backend's re-evaluations, and the curve shows who played."""
    cfg = _controller_config(lunar_models, 2)
    cfg.env.backend = "gymnasium"
    cfg.experiment.checkpoint_dir = str(tmp_path / "switched")
    for stage in ("vae", "vae_best", "mdnrnn", "mdnrnn_best"):
        source = checkpoint_path(_controller_config(lunar_models, 1), stage)
        target = checkpoint_path(cfg, stage)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    train_controller(cfg)
    on_gymnasium = load_controller_checkpoint(cfg)
    assert np.isfinite(on_gymnasium["best_score"])
    cfg.env.backend, cfg.controller.generations = "envpool", 3
    capsys.readouterr()
    train_controller(cfg)
    assert "was scored on Gymnasium; this run plays EnvPool" in capsys.readouterr().out
    switched = load_controller_checkpoint(cfg)
    curve = switched["curve"]
    column = {name: curve[:, i].tolist() for i, name in enumerate(CURVE_COLUMNS)}
    assert column["on_envpool"] == [0.0, 0.0, 1.0]
    # Generation 3 (the last) was re-evaluated on EnvPool: the kept best is its better candidate, whatever
    # the Gymnasium best before it was.
    assert switched["best_score"] == max(column["eval_mean_params"][2], column["eval_best_candidate"][2])
    # Continued again on EnvPool, nothing is re-chosen.
    cfg.controller.generations = 4
    train_controller(cfg)
    assert "was scored on" not in capsys.readouterr().out
    assert load_controller_checkpoint(cfg)["best_score"] >= switched["best_score"]


def test_a_curve_from_before_a_column_was_added_reads_with_nan_there(tmp_path):
    old = torch.arange(22, dtype=torch.float64).reshape(2, 11)  # the 11 columns before on_envpool
    curve = LearningCurve(old)
    assert curve.as_tensor().shape == (2, len(CURVE_COLUMNS))
    assert math.isnan(curve.last("on_envpool")) and curve.total("real_episodes") == 12.0
    with open(curve.write_csv(tmp_path / "curve.csv")) as handle:
        rows = list(csv.DictReader(handle))
    assert rows[1]["on_envpool"] == "" and rows[1]["generation"] == "11"


@pytest.mark.slow
def test_exported_weights_are_smaller_act_the_same_and_resume_the_run(lunar_models, tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from export_weights import main as export_weights

    source = _controller_config(lunar_models, 2)
    copy = _controller_config(lunar_models, 3)
    copy.experiment.checkpoint_dir = str(tmp_path / "pretrained")
    export_weights(["--from", str(checkpoint_path(source, "vae").parent), "--to", str(checkpoint_path(copy, "vae").parent)])
    for stage in ("vae", "mdnrnn"):
        exported = checkpoint_path(copy, stage)
        assert "optimizer" not in torch.load(exported, weights_only=True)
        assert exported.stat().st_size < checkpoint_path(source, stage).stat().st_size / 2
        assert not checkpoint_path(copy, f"{stage}_best").exists()
    frame = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    original, exported_agent = load_world_model_agent(source, "cpu"), load_world_model_agent(copy, "cpu")
    for _ in range(3):  # V, M's state and C together, over a few steps
        assert original.act(frame) == exported_agent.act(frame)
    vae_written = checkpoint_path(copy, "vae").stat().st_mtime_ns
    run_pipeline(copy, skip=frozenset({"collect"}))  # V and M count as finished; C goes on from generation 2
    assert checkpoint_path(copy, "vae").stat().st_mtime_ns == vae_written
    resumed = load_controller_checkpoint(copy)
    assert resumed["generation"] == 3
    torch.testing.assert_close(resumed["fitness_history"][:2], load_controller_checkpoint(source)["fitness_history"])


@pytest.mark.slow
def test_a_restart_starts_cmaes_at_the_sources_kept_best_and_carries_its_curve(lunar_models, tmp_path, capsys):
    """controller.init_from: CMA-ES's first mean is the source's kept best (kept in the checkpoint, so a
    resume does not depend on the source), its kept best and curve carry over, and it needs the same V and M."""
    source = _controller_config(lunar_models, 2)
    root = tmp_path / "checkpoints"
    shutil.copytree(checkpoint_path(source, "controller").parent, root / "lunarlander-v3")
    source.experiment.checkpoint_dir = str(root)
    restart = copy.deepcopy(source)
    restart.experiment.name = "restart"
    restart.controller.init_from, restart.controller.sigma, restart.controller.generations = "lunarlander-v3", 1e-6, 1
    (root / "restart").mkdir()
    for stage in ("vae", "vae_best", "mdnrnn", "mdnrnn_best"):
        shutil.copy(checkpoint_path(source, stage), checkpoint_path(restart, stage))
    before = load_controller_checkpoint(source)
    train_controller(restart)
    after = load_controller_checkpoint(restart)
    torch.testing.assert_close(after["initial_params"], before["best_params"])
    # sigma 1e-6: every candidate is the source's kept best, give or take, and so is the new mean
    torch.testing.assert_close(after["mean_params"], before["best_params"], atol=1e-4, rtol=0)
    assert len(after["fitness_history"]) == 1
    assert "the carried kept best scores" in capsys.readouterr().out
    rows, old = after["curve"], before["curve"]
    column = {name: i for i, name in enumerate(CURVE_COLUMNS)}
    torch.testing.assert_close(rows[: len(old)], old, equal_nan=True)
    c = restart.controller
    assert rows[-1, column["generation"]] == len(old) + 1
    # generation 1's work: the carried kept best re-scored on this run's episodes, the rollouts, the re-evaluation
    assert rows[-1, column["real_episodes"]] == (old[-1, column["real_episodes"]] + c.eval_episodes
                                                 + c.population_size * c.rollouts_per_candidate + 2 * c.eval_episodes)
    # The source moves on (here: its kept best is gone); the restart still resumes from its own first mean.
    checkpoint = torch.load(checkpoint_path(source, "controller"), weights_only=True)
    checkpoint["best_params"] = torch.zeros_like(checkpoint["best_params"])
    torch.save(checkpoint, checkpoint_path(source, "controller"))
    restart.controller.generations = 2
    train_controller(restart)
    resumed = load_controller_checkpoint(restart)
    assert resumed["generation"] == 2 and torch.equal(resumed["initial_params"], after["initial_params"])
    assert resumed["curve"][-1, column["generation"]] == len(old) + 2
    restart.controller.generations, restart.controller.init_from = 3, ""
    with pytest.raises(WorldModelsError, match="has controller.init_from=lunarlander-v3.* this run expects controller.init_from="):
        train_controller(restart)
    # A C trained on another M is not a starting point for this one.
    other = copy.deepcopy(source)
    other.experiment.name, other.controller.init_from = "other", "lunarlander-v3"
    (root / "other").mkdir()
    for stage in ("vae", "vae_best"):
        shutil.copy(checkpoint_path(source, stage), checkpoint_path(other, stage))
    for stage in ("mdnrnn", "mdnrnn_best"):
        checkpoint = torch.load(checkpoint_path(source, stage), weights_only=True)
        name = next(iter(checkpoint["model"]))
        checkpoint["model"][name] = checkpoint["model"][name] + 0.01
        torch.save(checkpoint, checkpoint_path(other, stage))
    with pytest.raises(WorldModelsError, match="controller.init_from='lunarlander-v3': .* another M"):
        train_controller(other)
    assert not checkpoint_path(other, "controller").exists()
    # experiment.controller_params=mean: the restart starts from the source's CMA-ES mean instead.
    from_mean = copy.deepcopy(restart)
    from_mean.experiment.name, from_mean.controller.init_from, from_mean.controller.generations = "from-mean", "lunarlander-v3", 1
    from_mean.experiment.controller_params = "mean"
    (root / "from-mean").mkdir()
    for stage in ("vae", "vae_best", "mdnrnn", "mdnrnn_best"):
        shutil.copy(checkpoint_path(source, stage), checkpoint_path(from_mean, stage))
    train_controller(from_mean)
    torch.testing.assert_close(load_controller_checkpoint(from_mean)["initial_params"], before["mean_params"])
    assert not torch.equal(before["mean_params"], before["best_params"])
