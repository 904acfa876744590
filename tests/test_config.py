"""Config presets, overrides and their round trip through a checkpoint."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest
import torch

from config import (
    FIELD_RULES,
    PRESETS,
    SUPPORTED_ENVS,
    apply_override,
    config_from_dict,
    config_to_dict,
    get_config,
    parse_value,
    valid_keys,
)
from utils.errors import WorldModelsError
from utils.files import checkpoint_config, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_every_supported_env_has_tuned_values_and_generic_fallback():
    pong = get_config("ALE/Pong-v5")
    lunar = get_config("LunarLander-v3")
    cartpole = get_config("CartPole-v1")
    assert pong.env.crop_top > 0 and pong.collect.policy == "repeat"
    assert lunar.ppo.gamma == 0.999 and lunar.ppo.num_envs == 16
    assert get_config("CarRacing-v3").collect.policy == "random_walk"
    assert get_config("ALE/Breakout-v5").env.crop_top > 0
    # an env without a table entry gets the dataclass defaults
    assert cartpole.env.env_id == "CartPole-v1" and cartpole.ppo.gamma == 0.99 and cartpole.env.crop_top == 0
    for env_id in SUPPORTED_ENVS:
        assert get_config(env_id).env.env_id == env_id


def test_presets_change_scale():
    smoke, default, paper = (get_config("LunarLander-v3", preset=p) for p in PRESETS)
    assert smoke.collect.num_rollouts < default.collect.num_rollouts < paper.collect.num_rollouts
    assert paper.controller.rollouts_per_candidate == 16 and paper.vae.recon_loss == "mse"
    with pytest.raises(WorldModelsError, match="unknown preset 'fast'.*smoke, default, paper"):
        get_config("LunarLander-v3", preset="fast")


def test_the_carracing_default_is_the_recipe_of_the_committed_long_run():
    """`python train.py --env CarRacing-v3` is the recipe of pretrained/carracing-v3 (issue #16): V and M
    as its vae.pt was trained (data, V's loss and schedule), C as its controller.pt is being trained."""
    default = get_config("CarRacing-v3")
    trained = {stage: torch.load(ROOT / "pretrained" / "carracing-v3" / f"{stage}.pt", weights_only=True)["config"]
               for stage in ("vae", "controller")}
    v_run, c_run = trained["vae"], trained["controller"]
    for key in ("num_rollouts", "policy", "walk_sigma", "seed_offset"):
        assert getattr(default.collect, key) == v_run["collect"][key], key
    assert default.collect.max_episode_steps == v_run["env"]["max_episode_steps"] == 500  # V's data: 500-step walks
    assert default.env.max_episode_steps == c_run["env"]["max_episode_steps"] == 1000  # C: the full task
    assert default.env.crop_bottom == v_run["env"]["crop_bottom"]
    for section in ("vae", "mdnrnn"):
        for key, value in v_run[section].items():
            if key not in ("amp", "channels_last", "encode_batch_size"):  # speed only, not the recipe
                assert _plain(getattr(getattr(default, section), key)) == value, f"{section}.{key}"
    for key, value in c_run["controller"].items():
        if key != "generations":  # the long run's cap is open-ended; the preset stops at the paper's 25,600 episodes
            assert _plain(getattr(default.controller, key)) == value, f"controller.{key}"
    assert default.controller.generations * default.controller.population_size * default.controller.rollouts_per_candidate == 25_600
    # --preset paper is still the paper's recipe: its data, V and CMA-ES.
    paper = get_config("CarRacing-v3", preset="paper")
    assert (paper.collect.num_rollouts, paper.collect.max_episode_steps, paper.collect.policy) == (10_000, 0, "random_controller")
    assert (paper.vae.epochs, paper.vae.learning_rate, paper.vae.recon_loss) == (10, 1e-4, "mse")
    assert (paper.controller.population_size, paper.controller.rollouts_per_candidate) == (64, 16)


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def test_v2_names_are_aliases_with_a_notice(capsys):
    assert get_config("LunarLander-v2").env.env_id == "LunarLander-v3"
    assert get_config("CarRacing-v2").env.env_id == "CarRacing-v3"
    assert "alias of LunarLander-v3" in capsys.readouterr().out


def _text_for(value):
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "()"
    return str(value)


def test_every_override_path_parses_into_its_type():
    cfg = get_config("ALE/Pong-v5")
    keys = valid_keys(cfg)
    assert len(keys) == sum(len(dataclasses.fields(getattr(cfg, s.name))) for s in dataclasses.fields(cfg))
    for key in keys:
        section, name = key.split(".")
        before = getattr(getattr(cfg, section), name)
        apply_override(cfg, f"{key}={_text_for(before)}")
        after = getattr(getattr(cfg, section), name)
        assert after == before and type(after) is type(before), key


def test_overrides_are_type_checked():
    cfg = get_config("LunarLander-v3", overrides=["vae.beta=2.5", "vae.batch_norm=false", "controller.hidden_sizes=64,32",
                                                 "ppo.total_timesteps=1_000", "experiment.name=run1"])
    assert cfg.vae.beta == 2.5 and cfg.vae.batch_norm is False and cfg.controller.hidden_sizes == (64, 32)
    assert cfg.ppo.total_timesteps == 1000 and cfg.experiment_name == "run1"
    int_keys, float_keys, bool_keys = [], [], []
    for key in valid_keys(cfg):
        section, name = key.split(".")
        hint = typing.get_type_hints(type(getattr(cfg, section)))[name]
        {int: int_keys, float: float_keys, bool: bool_keys}.get(hint, []).append(key)
    for key in int_keys:
        with pytest.raises(WorldModelsError, match=f"bad value 'x1' for {key}: expected an integer"):
            apply_override(cfg, f"{key}=x1")
    for key in float_keys:
        with pytest.raises(WorldModelsError, match=f"bad value 'fast' for {key}: expected a number"):
            apply_override(cfg, f"{key}=fast")
    for key in bool_keys:
        with pytest.raises(WorldModelsError, match="expected a bool"):
            apply_override(cfg, f"{key}=maybe")


def test_unknown_or_malformed_override_is_refused_with_valid_keys():
    with pytest.raises(WorldModelsError, match=r"unknown config key 'vae.betta'; valid keys: .*vae\.beta"):
        get_config("LunarLander-v3", overrides=["vae.betta=2"])
    with pytest.raises(WorldModelsError, match="expected section.field=value"):
        get_config("LunarLander-v3", overrides=["vae.beta"])


def test_config_round_trips_through_a_checkpoint(tmp_path):
    cfg = get_config("CarRacing-v3", preset="smoke", overrides=["controller.hidden_sizes=16", "vae.beta=3.0"])
    assert config_from_dict(config_to_dict(cfg)) == cfg
    path = save_checkpoint(tmp_path / "vae.pt", "vae", cfg, epoch=3)
    loaded = load_checkpoint(path, "vae", "CarRacing-v3")
    assert checkpoint_config(loaded) == cfg and loaded["epoch"] == 3


def test_unknown_section_lists_the_sections():
    with pytest.raises(WorldModelsError, match="unknown config key 'vea.beta'; keys are section.field with section one of env, collect"):
        get_config("LunarLander-v3", overrides=["vea.beta=2"])


# Fields whose every value of their type is meaningful: names, folders, free text, switches.
UNBOUNDED_FIELDS = {
    "env.env_id", "env.env_kwargs", "env.fire_to_serve", "collect.compress", "collect.controller_experiment", "collect.extra_rollouts",
    "vae.batch_norm", "vae.channels_last", "vae.amp", "mdnrnn.train", "mdnrnn.amp", "mdnrnn.init_from", "controller.sample_actions",
    "controller.sample_z", "controller.init_from",
    "ppo.anneal_lr", "ppo.clip_vloss", "ppo.normalize_observation", "ppo.normalize_reward", "ppo.grayscale",
    "experiment.name", "experiment.data_dir", "experiment.checkpoint_dir", "experiment.log_dir", "experiment.video_dir",
    "experiment.results_dir", "experiment.ray_address",
}
BAD_CANDIDATES = {int: ["-1", "0", "1", "65"], float: ["-1.0", "0.0", "1.0", "2.0"], str: ["bogus", "../bogus"],
                  tuple[int, ...]: ["0"]}


def test_every_field_is_validated_or_listed_as_free():
    cfg = get_config("LunarLander-v3")
    assert set(FIELD_RULES) <= set(valid_keys(cfg))
    assert set(valid_keys(cfg)) - set(FIELD_RULES) == UNBOUNDED_FIELDS, "a new field needs a rule in config.FIELD_RULES"


def test_get_config_refuses_every_out_of_range_or_unknown_value():
    cfg = get_config("LunarLander-v3")
    for key, rule in FIELD_RULES.items():
        section, name = key.split(".")
        hint = typing.get_type_hints(type(getattr(cfg, section)))[name]
        bad = [text for text in BAD_CANDIDATES[hint] if rule(key, parse_value(text, hint, key)) is not None]
        assert bad, f"no candidate value violates the rule of {key}"
        with pytest.raises(WorldModelsError) as error:
            get_config("LunarLander-v3", overrides=[f"{key}={bad[0]}"])
        message = str(error.value)
        names_the_field = key in message or (key == "experiment.device" and "bad device" in message)
        assert names_the_field and bad[0] in message and len(message.splitlines()) == 1, message


def test_combinations_that_cannot_run_are_refused():
    with pytest.raises(WorldModelsError, match="repeat_min=5 exceeds collect.repeat_max=2"):
        get_config("LunarLander-v3", overrides=["collect.repeat_min=5", "collect.repeat_max=2"])
    with pytest.raises(WorldModelsError, match="needs collect.controller_experiment"):
        get_config("LunarLander-v3", overrides=["collect.policy=controller"])
    with pytest.raises(WorldModelsError, match="must divide the batch"):
        get_config("LunarLander-v3", overrides=["ppo.num_minibatches=3"])
    with pytest.raises(WorldModelsError, match="bad env.env_kwargs item 'continuous'"):
        get_config("LunarLander-v3", overrides=["env.env_kwargs=continuous"])


def test_a_bad_value_stops_train_py_at_once_with_exit_2_and_nothing_written(tmp_path):
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--env", "LunarLander-v3", "--preset", "smoke",
                             "--set", "controller.inputs=hz"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: unknown controller.inputs 'hz'; valid: zh, z, zch"]
    assert list(tmp_path.iterdir()) == []  # no data/, checkpoints/ or logs/
    assert time.perf_counter() - started < 30
