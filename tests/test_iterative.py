"""The paper's iterative procedure: collect with a trained agent (plus exploration), retrain on the union."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import isolate

from config import get_config
from models.controller import explore_actions
from models.loaders import load_world_model_agent
from train import iteration_config, run_iterations, run_pipeline
from training.collect import collect
from training.latents import latent_cache_path
from utils.data import (episode_path, list_episodes, load_episode, load_episode_metadata, require_episodes, rollout_dir,
                        split_episodes)
from utils.environment import collect_episode_seed, make_frame_env, run_episode
from utils.errors import WorldModelsError


def test_discrete_exploration_replaces_actions_at_the_asked_rate():
    space = gym.spaces.Discrete(4)
    greedy = torch.nn.functional.one_hot(torch.zeros(20000, dtype=torch.long), 4).float()
    generator = torch.Generator().manual_seed(0)
    assert explore_actions(greedy, space, 0.0, generator) is greedy
    explored = explore_actions(greedy, space, 0.4, generator)
    assert torch.all(explored.sum(dim=1) == 1)  # still one-hot
    # A replaced action is uniform over the 4 actions, so it differs from the greedy one 3/4 of the time.
    changed = (explored.argmax(dim=1) != 0).float().mean().item()
    assert changed == pytest.approx(0.4 * 3 / 4, abs=0.015)


def test_continuous_exploration_stays_inside_the_bounds():
    space = gym.spaces.Box(np.array([-1.0, 0.0, 0.0], np.float32), np.array([1.0, 1.0, 1.0], np.float32))
    actions = torch.tensor([[0.9, 0.5, 0.0]]).repeat(5000, 1)
    explored = explore_actions(actions, space, 0.2, torch.Generator().manual_seed(1))
    low, high = torch.as_tensor(space.low), torch.as_tensor(space.high)
    assert torch.all(explored >= low) and torch.all(explored <= high)
    # Gas (unclipped around 0.5): std = 0.2 x half the [0, 1] range = 0.1.
    assert explored[:, 1].std().item() == pytest.approx(0.1, rel=0.05)


def test_collecting_with_a_trained_controller_replays_the_agent(trained_lunar):
    """exploration=0: each stored episode is exactly the trained agent's episode from the stored seed."""
    overrides = ["env.max_episode_steps=60", "collect.policy=controller", "collect.controller_experiment=lunarlander-v3",
                 "collect.exploration=0", "collect.num_rollouts=3", "collect.seed_offset=1000", "collect.workers=2",
                 "env.backend=gymnasium"]  # replayed on Gymnasium below
    cfg = isolate(get_config("LunarLander-v3", preset="smoke", overrides=overrides), trained_lunar)
    cfg.experiment.name = "collected-by-c"
    folder = collect(cfg)
    assert folder == trained_lunar / "data" / "lunarlander-v3" / "collected-by-c" / "rollouts"
    source = isolate(get_config("LunarLander-v3", preset="smoke", overrides=["env.max_episode_steps=60"]), trained_lunar)
    agent, env = load_world_model_agent(source, torch.device("cpu")), make_frame_env(cfg.env)
    for index, path in enumerate(list_episodes(folder)):
        metadata = load_episode_metadata(path)
        assert metadata["policy"] == "controller" and metadata["seed"] == collect_episode_seed(cfg, index)
        assert metadata["seed"] != collect_episode_seed(source, index)  # seed_offset: fresh seeds, not iteration 1's
        stored, replayed = load_episode(path), run_episode(env, agent, metadata["seed"], 60)
        np.testing.assert_array_equal(stored["actions"], replayed.actions)
        np.testing.assert_array_equal(stored["obs"], replayed.obs)
    env.close()


def test_collecting_on_envpool_batches_the_agent_and_keeps_each_episode_its_own(trained_lunar):
    """EnvPool collection plays a batch of episodes with one agent (`WorldModelAgents`); with exploration
    noise each stored episode is still the one agent's episode from its seed, played alone."""
    pytest.importorskip("envpool")
    from utils.envpool_envs import play_episodes

    overrides = ["env.max_episode_steps=50", "collect.policy=controller", "collect.controller_experiment=lunarlander-v3",
                 "collect.exploration=0.3", "collect.num_rollouts=3", "env.backend=envpool"]
    cfg = isolate(get_config("LunarLander-v3", preset="smoke", overrides=overrides), trained_lunar)
    cfg.experiment.name = "collected-on-envpool"
    folder = collect(cfg)
    source = isolate(get_config("LunarLander-v3", preset="smoke", overrides=overrides[:1] + overrides[-1:]), trained_lunar)
    agent = load_world_model_agent(source, torch.device("cpu"), exploration=0.3)
    for path in list_episodes(folder):
        seed = load_episode_metadata(path)["seed"]
        (_, alone), = play_episodes(cfg.env, [agent], [seed])
        stored = load_episode(path)
        np.testing.assert_array_equal(stored["actions"], alone.actions)
        np.testing.assert_array_equal(stored["obs"], alone.obs)


def test_collecting_with_a_controller_needs_its_experiment(smoke_config):
    # get_config refuses it, so the stage never starts.
    with pytest.raises(WorldModelsError, match="collect.controller_experiment"):
        collect(smoke_config("LunarLander-v3", ["collect.policy=controller"]))


def test_an_episode_stays_on_its_side_of_the_validation_split_when_rounds_are_added(tmp_path):
    round_1 = [episode_path(tmp_path / "random", i) for i in range(45)]
    round_2 = [episode_path(tmp_path / "iter2", i) for i in range(30)]
    train_1, val_1 = split_episodes(round_1, 0.05)
    assert val_1 == [round_1[0], round_1[20], round_1[40]] and len(train_1) == 42
    train_2, val_2 = split_episodes(round_2 + round_1, 0.05)  # the new round's folder comes first
    assert set(val_1) <= set(val_2) and set(train_1) <= set(train_2)  # a warm-started M never validates on its training data
    assert set(val_2) - set(val_1) == {round_2[0], round_2[20]}
    # Two folders of one episode each: one of them is still left to train on.
    tiny = [episode_path(tmp_path / "a", 0), episode_path(tmp_path / "b", 0)]
    assert split_episodes(tiny, 0.05) == ([tiny[1]], [tiny[0]])


def test_a_run_trains_on_the_episodes_it_asked_for_when_a_shared_folder_holds_more(smoke_config):
    cfg = smoke_config("LunarLander-v3", ["collect.num_rollouts=3"])
    rollout_dir(cfg).mkdir(parents=True)
    for index in range(5):  # a run that asked for 5 collected them first
        episode_path(rollout_dir(cfg), index).write_bytes(b"")
    assert [path.name for path in require_episodes(cfg)] == ["ep_000000.npz", "ep_000001.npz", "ep_000002.npz"]


def test_forcing_collection_never_deletes_the_envs_shared_random_data(smoke_config):
    cfg = smoke_config("LunarLander-v3", ["collect.num_rollouts=5"])
    shared = rollout_dir(cfg)
    shared.mkdir(parents=True)
    (shared / "ep_000000.npz").write_bytes(b"another experiment's episode")
    with pytest.raises(WorldModelsError, match="--force collect would delete .*delete it by hand"):
        run_pipeline(cfg, force=frozenset({"collect"}))
    assert (shared / "ep_000000.npz").read_bytes() == b"another experiment's episode"


def test_iteration_configs_chain_agents_and_union_the_data(smoke_config):
    cfg = smoke_config("LunarLander-v3", ["collect.num_rollouts=5"])
    cfg.experiment.name = "loop"
    first, third = iteration_config(cfg, 1), iteration_config(cfg, 3)
    assert first.experiment_name == "loop/iter1" and first.collect.policy != "controller"
    assert third.collect.controller_experiment == "loop/iter2" and third.collect.seed_offset == 10
    assert third.collect.extra_rollouts == (str(rollout_dir(first)), str(rollout_dir(iteration_config(cfg, 2))))
    assert rollout_dir(third) != rollout_dir(first)
    # Round 1's random data may have a folder of its own; the agents' rounds still get theirs.
    cfg.collect.rollout_folder = "walls"
    assert rollout_dir(iteration_config(cfg, 1)).parent.name == "walls"
    assert rollout_dir(iteration_config(cfg, 2)).parent.name == "iter2"
    assert iteration_config(cfg, 3).collect.extra_rollouts[0] == str(rollout_dir(iteration_config(cfg, 1)))


@pytest.mark.slow
def test_two_iterations_train_the_second_round_on_the_union(smoke_config):
    cfg = smoke_config("LunarLander-v3", ["env.max_episode_steps=60", "collect.num_rollouts=6",
                                          "controller.generations=2", "controller.population_size=4"])
    cfg.experiment.name = "loop"
    outputs = run_iterations(cfg, 2)
    assert [set(round_outputs) for round_outputs in outputs] == [{"collect", "vae", "mdnrnn", "controller"}] * 2
    second = iteration_config(cfg, 2)
    assert outputs[1]["controller"].parent.name == "iter2" and outputs[0]["controller"].parent.name == "iter1"
    new_episodes = list_episodes(rollout_dir(second))
    assert len(new_episodes) == 6 and load_episode_metadata(new_episodes[0])["policy"] == "controller"
    assert len(require_episodes(second)) == 12
    with np.load(latent_cache_path(second)) as cache:  # M of round 2 was trained on both rounds' episodes
        assert len(cache["episode_names"]) == 12
    mtimes = [path.stat().st_mtime_ns for path in outputs[1].values() if path.is_file()]
    run_iterations(cfg, 2)  # a finished run is not redone
    assert [path.stat().st_mtime_ns for path in outputs[1].values() if path.is_file()] == mtimes
