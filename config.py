"""One set of dataclass configs for every stage, tuned per environment.

`get_config(environment, preset, overrides)` is the only way the stages build a config:

    cfg = get_config("ALE/Pong-v5", preset="smoke", overrides=["vae.beta=2.0"])

* Presets: ``smoke`` (the whole pipeline in a minute or two: tests and first runs), ``default`` (the
  settings we train with on a workstation) and ``paper`` (Ha & Schmidhuber's scale: 10,000 rollouts,
  64 candidates x 16 rollouts per generation).
* Per-environment values live in ``ENVIRONMENT_PRESETS`` below; any other registered Gymnasium env gets
  the generic values of the dataclasses.
* Every field can be overridden with ``section.field=value`` (``--set`` on every CLI); the value is parsed
  into the field's type and unknown keys are refused with the list of valid ones.
* The whole config is saved in every checkpoint (`config_to_dict`) and read back with `config_from_dict`.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from utils.errors import WorldModelsError

PRESETS = ("smoke", "default", "paper")

# Old names users still type. Gymnasium 1.x removed the v2 Box2D envs; v3 fixes bugs of v2 and keeps
# observation and action spaces, so the alias is safe.
ENV_ALIASES = {
    "LunarLander-v2": "LunarLander-v3",
    "CarRacing-v2": "CarRacing-v3",
    "Pong-v5": "ALE/Pong-v5",
    "Breakout-v5": "ALE/Breakout-v5",
}
SUPPORTED_ENVS = ("ALE/Pong-v5", "ALE/Breakout-v5", "LunarLander-v3", "CarRacing-v3", "DoomTakeCover-v0")

# The valid values of the enumerated fields. Each list lives here once; the code that branches on a
# field imports its list from here.
RANDOM_POLICIES = ("uniform", "repeat", "random_walk")
COLLECT_POLICIES = (*RANDOM_POLICIES, "random_controller", "controller")
RECON_LOSSES = ("bce", "mse")
CONTROLLER_PARAMS = ("best", "mean")  # evaluate.py: the kept best or CMA-ES's mean (experiment.controller_params)
CONTROLLER_INPUTS = ("zh", "z", "zch")  # zh = [z_t, h_t] (the full model), z = z_t only (the paper's ablation),
# zch = [z_t, c_t, h_t]: the LSTM's cell state too (the paper's Doom controller)
CONTROLLER_MODES = ("real", "dream")
# How C's raw outputs become an action: squash = a Box dimension is low + (tanh + 1) / 2 * (high - low), a
# Discrete action the argmax of one output per choice; carracing_paper = the paper code's CarRacing mapping
# (steer tanh, gas (tanh + 1) / 2, brake clip(tanh, 0, 1)); doom_paper = the paper's Doom C, one tanh output
# whose thirds are left | stay | right.
ACTION_MAPPINGS = ("squash", "carracing_paper", "doom_paper")
DREAM_DONE_RULES = ("sample", "threshold")
PPO_OBSERVATIONS = ("auto", "state", "pixels")
PPO_VECTOR_ENVS = ("auto", "sync", "async")
ENV_BACKENDS = ("auto", "gymnasium", "envpool")


@dataclass
class EnvConfig:
    """Which environment, and how an observation becomes the (64, 64, 3) uint8 frame V sees."""

    env_id: str = "ALE/Pong-v5"
    frame_size: int = 64  # frames are square: (frame_size, frame_size, 3)
    crop_top: int = 0  # rows cut from the top of the env image before resizing (score bars, HUD)
    crop_bottom: int = 0  # rows cut from the bottom (CarRacing's dashboard, as in the paper's code)
    max_episode_steps: int = 1000  # cap for World Models rollouts (collection, controller, evaluation)
    env_kwargs: str = ""  # extra gymnasium.make kwargs, "key=value,key=value" (e.g. "continuous=True")
    # Who steps the env: gymnasium (the reference) | envpool (C++ ports, several times faster for Box2D) |
    # auto (envpool where it is installed and ports the env, else gymnasium). utils/envpool_envs.py.
    backend: str = "auto"
    # Atari games that stand still until the player serves (Breakout): an episode's first 2 actions and the
    # first 2 after a lost life are FIRE, whatever the agent chose, on both backends (utils.actions.
    # SERVE_STEPS); PPO's env serves too, with extra steps of its own (FireReset, FireOnLifeLoss). The
    # action played is what episodes record.
    fire_to_serve: bool = False


@dataclass
class CollectConfig:
    """Stage 1: rollouts on disk, played by a random policy or by a trained World Models agent."""

    num_rollouts: int = 1000
    workers: int = 0  # 0 = one worker process per CPU core
    # uniform | repeat | random_walk (smoother exploration, paper section 3) | random_controller (a random C
    # per episode behind an untrained V and M: the paper's CarRacing data) | controller (the trained agent
    # of `controller_experiment`, with `exploration` noise: the paper's iterative procedure)
    policy: str = "uniform"
    repeat_min: int = 1  # `repeat`: each sampled action is held for U[repeat_min, repeat_max] steps
    repeat_max: int = 8
    walk_sigma: float = 0.3  # `random_walk`: std of the Gaussian step of the continuous action walk
    compress: bool = False  # zlib-compressed .npz: ~10x smaller on disk, slower to write and read
    controller_experiment: str = ""  # policy=controller: the experiment whose V, M and C play
    exploration: float = 0.1  # policy=controller: epsilon (discrete) or Gaussian std in half-ranges (Box)
    seed_offset: int = 0  # episode i is played from the seed of index seed_offset + i (new data, new seeds)
    max_episode_steps: int = 0  # a shorter cap on collected episodes than env.max_episode_steps (C's); 0 = the same
    extra_rollouts: tuple[str, ...] = ()  # more rollout folders V and M train on (the iterative union)
    # A name for this data set of its own: episodes go to data/<env-slug>/<rollout_folder>/rollouts. Empty =
    # data/<env-slug>/rollouts for random policies (shared by every experiment on the env) and
    # data/<env-slug>/<experiment>/rollouts for policy=controller. Use it for a second random data set
    # (another policy or seeds) beside the shared one, e.g. Doom's "walls" round.
    rollout_folder: str = ""


@dataclass
class VAEConfig:
    """Stage 2: the ConvVAE (V)."""

    latent_size: int = 32
    batch_norm: bool = True
    recon_loss: str = "bce"  # bce (the seed's choice) | mse (the paper's)
    beta: float = 4.0
    beta_warmup_epochs: float = 5.0  # beta rises linearly from 0 over this many epochs; 0 = no annealing
    kl_tolerance: float = 0.0  # free bits per latent dim (paper: 0.5); 0 = off
    # > 0: a pixel's reconstruction loss weighs 1 + this x its distance from the data's mean frame, so a
    # small moving object (LunarLander's lander: 16 of 4,096 pixels) is not traded away for the
    # background; 0 = every pixel alike (the paper).
    foreground_weight: float = 0.0
    learning_rate: float = 1e-4
    batch_size: int = 128
    epochs: int = 20
    val_fraction: float = 0.05  # share of episodes held out for validation
    episodes_per_chunk: int = 64  # episodes loaded into RAM at once by the shuffling loader
    max_steps_per_epoch: int = 0  # 0 = a full pass over the training frames
    channels_last: bool = True
    amp: bool = True  # autocast on CUDA (bf16 where supported, fp16 + GradScaler otherwise)


@dataclass
class MDNRNNConfig:
    """Stage 3: the MDN-RNN (M)."""

    hidden_size: int = 256
    num_mixtures: int = 5
    sequence_length: int = 100
    batch_size: int = 32
    learning_rate: float = 1e-3
    epochs: int = 20
    grad_clip: float = 1.0
    reward_weight: float = 1.0  # weight of the reward-prediction loss (Huber, delta 1)
    done_weight: float = 1.0  # weight of the done-prediction loss (BCE)
    # BCE weight of a step on which the episode ends, against 1 for every other step. 1 = a calibrated
    # death probability; the original's Doom code used 10, so its head errs toward death (its dream ends
    # on logit > 0, about a calibrated 9%) and the dream is harder than the game.
    done_positive_weight: float = 1.0
    val_fraction: float = 0.05  # share of episodes held out for validation
    max_steps_per_epoch: int = 0  # 0 = about one pass over the training frames per epoch
    train: bool = True  # false = keep M untrained (the paper's ablation)
    init_from: str = ""  # an experiment whose trained M (on this V) starts training instead of random weights
    amp: bool = True  # autocast on CUDA (bf16 where supported, fp16 + GradScaler otherwise)
    encode_batch_size: int = 512  # frames per VAE forward pass when building the latent cache


@dataclass
class ControllerConfig:
    """Stage 4: the controller (C) and CMA-ES."""

    hidden_sizes: tuple[int, ...] = ()  # () = linear controller, as in the paper
    inputs: str = "zh"  # zh = [z_t, h_t] (full model) | z = z_t only (ablation) | zch = [z_t, c_t, h_t] (Doom)
    mode: str = "real"  # real = evaluate candidates in the environment | dream = inside M
    population_size: int = 64
    sigma: float = 0.5
    weight_decay: float = 0.0  # L2 penalty on C's parameters in CMA-ES's ranking (the paper's code: 0.005)
    action_mapping: str = "squash"  # squash | carracing_paper | doom_paper (ACTION_MAPPINGS)
    generations: int = 100
    rollouts_per_candidate: int = 4
    eval_every: int = 5  # every N generations, re-evaluate the mean/best on more episodes
    eval_episodes: int = 16
    temperature: float = 1.15  # tau for sampling M in the dream
    dream_max_steps: int = 1000
    dream_done: str = "sample"  # sample: done ~ Bernoulli(sigmoid(logit)) | threshold: done when logit > 0 (the original's Doom code)
    workers: int = 0  # 0 = one per core
    video_every: int = 10  # log a video of the best candidate every N generations; 0 = never
    sample_actions: bool = False  # discrete actions: sample from softmax instead of argmax
    sample_z: bool = False  # C and M get a draw from V's posterior instead of its mean (the paper's CarRacing code)
    # An experiment (same V and M) whose kept-best C (or mean: experiment.controller_params) is CMA-ES's starting
    # mean instead of zeros: a restart with this run's sigma and population, its kept best and curve carried over
    init_from: str = ""


@dataclass
class PPOConfig:
    """The PPO baseline (Huang et al. 2022, 'The 37 implementation details of PPO')."""

    observation: str = "auto"  # auto | state | pixels (auto: Atari -> pixels, others -> state)
    total_timesteps: int = 10_000_000
    num_envs: int = 8
    num_steps: int = 128
    num_minibatches: int = 4
    update_epochs: int = 4
    learning_rate: float = 2.5e-4
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_coef: float = 0.1
    clip_vloss: bool = True
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    target_kl: float = 0.0  # 0 = no early stop on KL
    normalize_observation: bool = False  # running mean/std of vector observations
    normalize_reward: bool = False  # scale rewards by a running std of the discounted return
    frame_skip: int = 4  # Atari: max-and-skip (the env is made with frameskip=1); other pixel envs: action repeat
    frame_stack: int = 4
    frame_size: int = 84
    grayscale: bool = True
    checkpoint_every: int = 50  # iterations between checkpoints
    vector_env: str = "auto"  # auto | sync | async (auto: async worker processes for pixel envs on >= 4 cores)
    torch_threads: int = 0  # CPU threads for the network; 0 = 1 for state obs (a 64-unit MLP only loses to thread sync), torch's default for pixels


@dataclass
class ExperimentConfig:
    """Where a run writes, and the knobs shared by every stage."""

    name: str = ""  # "" = the environment's slug (ALE/Pong-v5 -> pong-v5)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    data_dir: str = "data"
    checkpoint_dir: str = "checkpoints"
    log_dir: str = "logs"
    video_dir: str = "videos"
    results_dir: str = "results"
    # Where rollout collection, population evaluation and parallel evaluation run their workers:
    # "" = local processes | "local" = a Ray instance started on this machine | "auto" = the Ray cluster
    # that `ray start` joined this machine to | "HOST:PORT" = a Ray head node (README, "Scaling out")
    ray_address: str = ""
    # evaluate.py: the experiment whose PPO run is evaluated and compared ("" = this one), e.g. PPO trained
    # from pixels (`ppo-lunar-pixels`) beside a World Models run
    ppo_experiment: str = ""
    # Which C of stage 4's checkpoint evaluate.py plays, and `controller.init_from` restarts from: best = the
    # kept best (the highest re-evaluation) | mean = CMA-ES's mean at the last generation (the original
    # scored its curve on the mean)
    controller_params: str = "best"


@dataclass
class Config:
    """Every stage's config. Sections are addressed as `section.field` in overrides."""

    env: EnvConfig = field(default_factory=EnvConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    mdnrnn: MDNRNNConfig = field(default_factory=MDNRNNConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)

    @property
    def env_slug(self) -> str:
        return env_slug(self.env.env_id)

    @property
    def experiment_name(self) -> str:
        return self.experiment.name or self.env_slug


# Per-environment tuned values, as overrides on top of the dataclass defaults.
ENVIRONMENT_PRESETS: dict[str, dict[str, Any]] = {
    "ALE/Pong-v5": {
        # Rows 34..194 are the playfield; the score bar above carries no state V needs.
        "env.crop_top": 34,
        "env.crop_bottom": 16,
        "env.max_episode_steps": 2000,  # whole games need 27,000 (ALE v5's 108,000 frames): evaluate with that
        "collect.policy": "repeat",
        "collect.num_rollouts": 500,
        "ppo.total_timesteps": 10_000_000,
    },
    "ALE/Breakout-v5": {
        "env.fire_to_serve": True,
        "env.crop_top": 32,
        "env.crop_bottom": 14,
        "env.max_episode_steps": 2000,  # whole games need 27,000 (ALE v5's 108,000 frames): evaluate with that
        "collect.policy": "repeat",
        "collect.num_rollouts": 500,
        "ppo.total_timesteps": 10_000_000,
    },
    "LunarLander-v3": {
        "env.max_episode_steps": 1000,
        "collect.policy": "repeat",
        "collect.repeat_max": 4,
        "collect.num_rollouts": 1000,
        "vae.epochs": 10,
        # The lander is 16 of 4,096 pixels: unweighted, V keeps it a faint blur (docs/RESULTS.md).
        "vae.foreground_weight": 20.0,
        "mdnrnn.sequence_length": 64,
        "controller.rollouts_per_candidate": 4,
        "controller.generations": 60,
        # rl-baselines3-zoo's tuned hyperparameters for PPO on LunarLander.
        "ppo.total_timesteps": 1_000_000,
        "ppo.num_envs": 16,
        "ppo.num_steps": 1024,
        "ppo.num_minibatches": 256,  # 16 x 1024 / 256 = minibatches of 64
        "ppo.update_epochs": 4,
        "ppo.learning_rate": 3e-4,
        "ppo.gamma": 0.999,
        "ppo.gae_lambda": 0.98,
        "ppo.clip_coef": 0.2,
        "ppo.ent_coef": 0.01,
        # Returns here reach hundreds: clipping V to +-0.2 per update would starve the critic.
        "ppo.clip_vloss": False,
        "ppo.checkpoint_every": 5,
    },
    # The recipe of the long run (issue #16, docs/RESULTS.md "CarRacing: the long run"), the fastest measured
    # here: little data and a short V, then C with the paper's CMA-ES settings and action mapping, but 16
    # candidates x 4 rollouts on tracks shared by all candidates, so 16x more CMA-ES updates per real
    # episode than the paper's 64 x 16. 400 generations = 25,600 training episodes, the paper's checkpoint
    # (its CMA-ES mean scored 823 there; the re-evaluations add about 1,300 more); about 11 h on 2 cores
    # with EnvPool.
    "CarRacing-v3": {
        "env.crop_bottom": 12,  # 96x96 -> 84x96: the dashboard goes, as in the paper's code
        "env.max_episode_steps": 1000,
        "collect.policy": "random_walk",
        "collect.num_rollouts": 60,
        "collect.max_episode_steps": 500,  # a random walk is on the grass by then
        "vae.epochs": 3,
        "vae.beta": 1.0,
        "vae.kl_tolerance": 0.5,  # the paper's free bits
        "vae.learning_rate": 5e-4,
        "controller.population_size": 16,
        "controller.rollouts_per_candidate": 4,
        "controller.sigma": 0.1,
        "controller.weight_decay": 0.005,
        "controller.action_mapping": "carracing_paper",
        "controller.generations": 400,
        "controller.eval_every": 10,
        "controller.video_every": 50,
        "controller.temperature": 1.15,
        "ppo.total_timesteps": 4_000_000,
        "ppo.num_envs": 8,
        "ppo.num_steps": 512,
        "ppo.num_minibatches": 32,
        "ppo.update_epochs": 10,
        "ppo.learning_rate": 1e-4,
        "ppo.clip_coef": 0.2,
        "ppo.ent_coef": 0.0,
        "ppo.frame_skip": 2,
        "ppo.frame_stack": 2,
        "ppo.frame_size": 64,
        "ppo.normalize_reward": True,
        "ppo.checkpoint_every": 10,
    },
    # The paper's second experiment (section 4): C is trained inside M's dream and then plays the real game.
    # Scale as the paper's: z of 64, an LSTM of 512 units, 5 mixtures, C on [z, c, h]. The episode cap is
    # 2,100 frames (the score is frames survived). The paper collected 10,000 random episodes; 1,000
    # (about 200k frames) is what V trains on in an afternoon on 2 CPU cores.
    "DoomTakeCover-v0": {
        "env.max_episode_steps": 2100,
        "collect.policy": "repeat",  # held actions carry the agent across the room, as a policy would
        "collect.num_rollouts": 1000,
        "vae.latent_size": 64,
        # The V of the measured run that the solved agent stands on (docs/RESULTS.md, "DoomTakeCover"):
        # 3 epochs, 65 min here, beta 1 with the paper's free bits (0.5 nats a unit), as on CarRacing.
        "vae.epochs": 3,
        "vae.beta": 1.0,
        "vae.kl_tolerance": 0.5,
        "vae.beta_warmup_epochs": 0.0,
        "vae.learning_rate": 5e-4,
        "mdnrnn.hidden_size": 512,
        "mdnrnn.num_mixtures": 5,
        # Whole episodes from their first frame (the mean is about 300 frames), as a published config of the
        # paper's Doom set-up trains on sequences of 500: the dream runs M from an episode's start for up to
        # 2,100 steps.
        "mdnrnn.sequence_length": 500,
        "controller.inputs": "zch",
        "controller.action_mapping": "doom_paper",  # one tanh output: 1,088 + 1 parameters, as the paper's C
        "controller.mode": "dream",
        "controller.temperature": 1.15,
        "controller.dream_max_steps": 2100,
        # The paper's 64 x 16: in the dream a generation is one batch of 1,024 rollouts (23k dream steps/s
        # on 2 cores: benchmarks/doom.py), so the paper's population is affordable here.
        "controller.population_size": 64,
        "controller.rollouts_per_candidate": 16,
        # CMA-ES as the paper's code starts it (as on CarRacing): sigma 0.1, an L2 penalty of 0.005.
        "controller.sigma": 0.1,
        "controller.weight_decay": 0.005,
        "controller.generations": 200,
        "controller.eval_every": 10,
        "controller.eval_episodes": 16,
    },
}

PRESET_OVERRIDES: dict[str, dict[str, Any]] = {
    "smoke": {
        "collect.num_rollouts": 8,
        "env.max_episode_steps": 200,
        "vae.epochs": 2,
        "vae.beta_warmup_epochs": 1.0,
        "vae.batch_size": 32,
        "vae.episodes_per_chunk": 8,
        "vae.learning_rate": 1e-3,
        "mdnrnn.epochs": 2,
        "mdnrnn.sequence_length": 32,
        "mdnrnn.batch_size": 8,
        "mdnrnn.hidden_size": 64,
        "controller.population_size": 8,
        "controller.generations": 2,
        "controller.rollouts_per_candidate": 1,
        "controller.eval_every": 1,
        "controller.eval_episodes": 2,
        "controller.dream_max_steps": 100,
        "controller.video_every": 1,
        "ppo.total_timesteps": 4096,
        "ppo.num_envs": 2,
        "ppo.num_steps": 128,
        "ppo.num_minibatches": 4,
        "ppo.checkpoint_every": 1,
    },
    "default": {},
    "paper": {
        "collect.num_rollouts": 10_000,
        "vae.recon_loss": "mse",
        "vae.beta": 1.0,
        "vae.kl_tolerance": 0.5,
        "vae.beta_warmup_epochs": 0.0,
        "vae.epochs": 10,
        "mdnrnn.epochs": 20,
        "controller.population_size": 64,
        "controller.rollouts_per_candidate": 16,
        "controller.eval_every": 25,
        "controller.eval_episodes": 100,
        "controller.generations": 1000,
        # The paper's code: CMA-ES from sigma 0.1 with an L2 penalty of 0.005 on the parameters.
        "controller.sigma": 0.1,
        "controller.weight_decay": 0.005,
    },
}


# What `--preset paper` sets for one environment only: what the paper's code did for that game.
PAPER_ENVIRONMENT_OVERRIDES: dict[str, dict[str, Any]] = {
    "CarRacing-v3": {"controller.action_mapping": "carracing_paper", "controller.sample_z": True,
                     "collect.policy": "random_controller", "collect.max_episode_steps": 0,
                     "vae.learning_rate": 1e-4},
}


def env_slug(env_id: str) -> str:
    """`ALE/Pong-v5` -> `pong-v5`: the default experiment name and the data folder name."""
    return re.sub(r"[^a-z0-9.-]+", "-", env_id.split("/")[-1].lower()).strip("-")


def canonical_env_id(env_id: str, notify: bool = True) -> str:
    """Map an old or short env name to the one Gymnasium 1.x registers, printing a one-line notice."""
    if env_id in ENV_ALIASES:
        new_id = ENV_ALIASES[env_id]
        if notify:
            print(f"note: {env_id} is an alias of {new_id} in Gymnasium 1.x; using {new_id}")
        return new_id
    return env_id


def get_config(
    environment: str = "ALE/Pong-v5",
    preset: str = "default",
    overrides: Optional[list[str]] = None,
) -> Config:
    """Build the config for `environment` with the preset's values and `section.field=value` overrides.

    Order of precedence (later wins): dataclass defaults, environment tuning, preset, overrides. The
    result is validated (`validate_config`): a bad value fails here, before any stage runs.
    """
    if preset not in PRESETS:
        raise WorldModelsError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    env_id = canonical_env_id(environment)
    cfg = Config()
    cfg.env.env_id = env_id
    for key, value in ENVIRONMENT_PRESETS.get(env_id, {}).items():
        set_field(cfg, key, value)
    for key, value in PRESET_OVERRIDES[preset].items():
        set_field(cfg, key, value)
    if preset == "paper":
        for key, value in PAPER_ENVIRONMENT_OVERRIDES.get(env_id, {}).items():
            set_field(cfg, key, value)
    for override in overrides or []:
        apply_override(cfg, override)
    return validate_config(cfg)


def valid_keys(cfg: Config) -> list[str]:
    """Every `section.field` an override may name."""
    return [
        f"{section.name}.{f.name}"
        for section in dataclasses.fields(cfg)
        for f in dataclasses.fields(getattr(cfg, section.name))
    ]


def apply_override(cfg: Config, override: str) -> None:
    """Apply one `section.field=value` string, parsing the value into the field's type."""
    if "=" not in override:
        raise WorldModelsError(f"bad override {override!r}: expected section.field=value, e.g. vae.beta=2.0")
    key, raw_value = override.split("=", 1)
    key = key.strip()
    section, field_type = _locate(cfg, key)
    value = parse_value(raw_value.strip(), field_type, key)
    setattr(section, key.split(".", 1)[1], value)


def set_field(cfg: Config, key: str, value: Any) -> None:
    """Set `section.field` to an already-typed value (used by the preset tables)."""
    section, _ = _locate(cfg, key)
    setattr(section, key.split(".", 1)[1], value)


def _locate(cfg: Config, key: str) -> tuple[Any, Any]:
    parts = key.split(".")
    keys = valid_keys(cfg)
    if len(parts) != 2 or key not in keys:
        sections = [f.name for f in dataclasses.fields(cfg)]
        if parts[0] in sections:  # a known section: list its fields, not all ninety keys
            keys = [k for k in keys if k.startswith(parts[0] + ".")]
            raise WorldModelsError(f"unknown config key {key!r}; valid keys: {', '.join(keys)}")
        raise WorldModelsError(f"unknown config key {key!r}; keys are section.field with section one of "
                               f"{', '.join(sections)}, e.g. vae.beta")
    section = getattr(cfg, parts[0])
    hints = typing.get_type_hints(type(section))
    return section, hints[parts[1]]


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_value(raw: str, field_type: Any, key: str = "value") -> Any:
    """Parse the text of an override into `field_type` (bool, int, float, str, tuple[int, ...], Optional)."""
    origin = typing.get_origin(field_type)
    args = typing.get_args(field_type)
    if origin in (Union, types.UnionType) and type(None) in args:
        if raw.lower() in ("none", "null", ""):
            return None
        inner = next(a for a in args if a is not type(None))
        return parse_value(raw, inner, key)
    if origin is tuple:
        text = raw.strip("()[] ")
        items = [item.strip() for item in text.split(",") if item.strip()]
        return tuple(parse_value(item, args[0], key) for item in items)
    if field_type is bool:
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise WorldModelsError(f"bad value {raw!r} for {key}: expected a bool (true/false)")
    if field_type is int:
        try:
            return int(raw.replace("_", ""))
        except ValueError:
            raise WorldModelsError(f"bad value {raw!r} for {key}: expected an integer") from None
    if field_type is float:
        try:
            return float(raw)
        except ValueError:
            raise WorldModelsError(f"bad value {raw!r} for {key}: expected a number") from None
    if field_type is str:
        return raw
    raise WorldModelsError(f"cannot parse {key} of type {field_type}")


# ------------------------------------------------------------------------------------ validation
# A rule takes (key, value) and returns None for a valid value, else the one-line error message.
Rule = Callable[[str, Any], Optional[str]]


def _bounded(test: Callable[[Any], bool], valid: str) -> Rule:
    return lambda key, value: None if test(value) else f"{key} must be {valid}, got {_plain(value)}"


def _at_least(minimum: float) -> Rule:
    return _bounded(lambda value: value >= minimum, f">= {minimum}")


def _above(minimum: float) -> Rule:
    return _bounded(lambda value: value > minimum, f"> {minimum}")


def _fraction() -> Rule:
    return _bounded(lambda value: 0 <= value < 1, "in [0, 1)")


def _folder_name() -> Rule:
    return lambda key, value: (
        None if value == "" or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value)
        else f"bad {key} {value!r}; valid: empty or one folder name (letters, digits, . _ -), no path")


def _one_of(choices: tuple[str, ...]) -> Rule:
    return lambda key, value: None if value in choices else f"unknown {key} {value!r}; valid: {', '.join(choices)}"


# Every enumerated or bounded field, with its test and the words that say what is valid. Fields not
# listed take any value of their type (names, folders, booleans). `get_config` checks them all.
FIELD_RULES: dict[str, Rule] = {
    "env.frame_size": _bounded(lambda value: value == 64, "64 (V's architecture takes 64x64 frames)"),
    "env.crop_top": _at_least(0),
    "env.crop_bottom": _at_least(0),
    "env.max_episode_steps": _at_least(1),
    "env.backend": _one_of(ENV_BACKENDS),
    "collect.num_rollouts": _above(0),
    "collect.workers": _at_least(0),
    "collect.policy": _one_of(COLLECT_POLICIES),
    "collect.repeat_min": _at_least(1),
    "collect.repeat_max": _at_least(1),
    "collect.walk_sigma": _above(0),
    "collect.exploration": _at_least(0),
    "collect.seed_offset": _at_least(0),
    "collect.max_episode_steps": _at_least(0),
    "collect.rollout_folder": _folder_name(),
    "vae.latent_size": _at_least(1),
    "vae.recon_loss": _one_of(RECON_LOSSES),
    "vae.beta": _at_least(0),
    "vae.beta_warmup_epochs": _at_least(0),
    "vae.kl_tolerance": _at_least(0),
    "vae.foreground_weight": _at_least(0),
    "vae.learning_rate": _above(0),
    "vae.batch_size": _at_least(1),
    "vae.epochs": _at_least(1),
    "vae.val_fraction": _fraction(),
    "vae.episodes_per_chunk": _at_least(1),
    "vae.max_steps_per_epoch": _at_least(0),
    "mdnrnn.hidden_size": _at_least(1),
    "mdnrnn.num_mixtures": _at_least(1),
    "mdnrnn.sequence_length": _at_least(1),
    "mdnrnn.batch_size": _at_least(1),
    "mdnrnn.learning_rate": _above(0),
    "mdnrnn.epochs": _at_least(1),
    "mdnrnn.grad_clip": _above(0),
    "mdnrnn.reward_weight": _at_least(0),
    "mdnrnn.done_weight": _at_least(0),
    "mdnrnn.done_positive_weight": _above(0),
    "mdnrnn.val_fraction": _fraction(),
    "mdnrnn.max_steps_per_epoch": _at_least(0),
    "mdnrnn.encode_batch_size": _at_least(1),
    "controller.hidden_sizes": _bounded(lambda sizes: all(size >= 1 for size in sizes),
                                        "layer widths >= 1, e.g. 64,32 (or () for a linear C)"),
    "controller.inputs": _one_of(CONTROLLER_INPUTS),
    "controller.mode": _one_of(CONTROLLER_MODES),
    "controller.population_size": _at_least(2),
    "controller.sigma": _above(0),
    "controller.weight_decay": _at_least(0),
    "controller.action_mapping": _one_of(ACTION_MAPPINGS),
    "controller.generations": _at_least(1),
    "controller.rollouts_per_candidate": _at_least(1),
    "controller.eval_every": _at_least(1),
    "controller.eval_episodes": _at_least(1),
    "controller.temperature": _at_least(0),
    "controller.dream_max_steps": _at_least(1),
    "controller.dream_done": _one_of(DREAM_DONE_RULES),
    "controller.workers": _at_least(0),
    "controller.video_every": _at_least(0),
    "experiment.ppo_experiment": _folder_name(),
    "experiment.controller_params": _one_of(CONTROLLER_PARAMS),
    "ppo.observation": _one_of(PPO_OBSERVATIONS),
    "ppo.total_timesteps": _at_least(1),
    "ppo.num_envs": _at_least(1),
    "ppo.num_steps": _at_least(1),
    "ppo.num_minibatches": _at_least(1),
    "ppo.update_epochs": _at_least(1),
    "ppo.learning_rate": _above(0),
    "ppo.gamma": _bounded(lambda value: 0 < value <= 1, "in (0, 1]"),
    "ppo.gae_lambda": _bounded(lambda value: 0 <= value <= 1, "in [0, 1]"),
    "ppo.clip_coef": _above(0),
    "ppo.ent_coef": _at_least(0),
    "ppo.vf_coef": _at_least(0),
    "ppo.max_grad_norm": _above(0),
    "ppo.target_kl": _at_least(0),
    "ppo.frame_skip": _at_least(1),
    "ppo.frame_stack": _at_least(1),
    "ppo.frame_size": _at_least(8),
    "ppo.checkpoint_every": _at_least(1),
    "ppo.vector_env": _one_of(PPO_VECTOR_ENVS),
    "ppo.torch_threads": _at_least(0),
    # Episode seeds hold the run's seed in two digits (utils.runtime.episode_seeds): 3 and 103 would
    # play the same episodes.
    "experiment.seed": _bounded(lambda value: 0 <= value <= 99, "in 0..99"),
    "experiment.device": lambda key, value: (None if re.fullmatch(r"auto|cpu|cuda(:\d+)?", value)
                                             else f"bad device {value!r}; valid: auto, cpu, cuda, cuda:N"),
}


def validate_config(cfg: Config) -> Config:
    """Refuse, with one line naming the field, its value and what is valid, any field outside its
    `FIELD_RULES`, and the combinations that cannot run. Returns cfg."""
    for key, rule in FIELD_RULES.items():
        section, name = key.split(".")
        error = rule(key, getattr(getattr(cfg, section), name))
        if error is not None:
            raise WorldModelsError(error)
    collect, ppo = cfg.collect, cfg.ppo
    if collect.repeat_min > collect.repeat_max:
        raise WorldModelsError(f"collect.repeat_min={collect.repeat_min} exceeds collect.repeat_max={collect.repeat_max}")
    if collect.policy == "controller" and not collect.controller_experiment:
        raise WorldModelsError("collect.policy=controller needs collect.controller_experiment=<an experiment with a "
                               "trained controller>")
    parse_env_kwargs(cfg.env.env_kwargs)
    if cfg.env.fire_to_serve and not cfg.env.env_id.startswith("ALE/"):
        raise WorldModelsError(f"env.fire_to_serve=true presses an Atari game's FIRE to serve; {cfg.env.env_id} is not "
                               "an ALE/ game: use env.fire_to_serve=false")
    if cfg.controller.action_mapping == "carracing_paper" and cfg.env.env_id != "CarRacing-v3":
        raise WorldModelsError(f"controller.action_mapping=carracing_paper maps CarRacing-v3's steer, gas and brake; "
                               f"{cfg.env.env_id} needs controller.action_mapping=squash")
    if cfg.controller.action_mapping == "doom_paper" and cfg.env.env_id != "DoomTakeCover-v0":
        raise WorldModelsError(f"controller.action_mapping=doom_paper maps one output to DoomTakeCover-v0's left, stay "
                               f"and right; {cfg.env.env_id} needs controller.action_mapping=squash")
    if cfg.controller.action_mapping == "doom_paper" and cfg.controller.sample_actions:
        raise WorldModelsError("controller.sample_actions=true samples from a softmax over one output per action; "
                               "controller.action_mapping=doom_paper has a single output: use one or the other")
    batch_size = ppo.num_envs * ppo.num_steps
    if batch_size % ppo.num_minibatches:
        raise WorldModelsError(f"ppo.num_minibatches={ppo.num_minibatches} must divide the batch of "
                               f"ppo.num_envs x ppo.num_steps = {batch_size}")
    return cfg


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def parse_env_kwargs(text: str) -> dict[str, Any]:
    """`env.env_kwargs` text -> kwargs: `"continuous=True,gravity=-9.8"` -> `{"continuous": True, "gravity": -9.8}`."""
    kwargs: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        if "=" not in item:
            raise WorldModelsError(f"bad env.env_kwargs item {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        for kind in (bool, int, float):
            try:
                kwargs[key.strip()] = parse_value(raw.strip(), kind)
                break
            except WorldModelsError:
                continue
        else:
            kwargs[key.strip()] = raw.strip()
    return kwargs


def config_to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """Plain nested dict (tuples become lists) that `torch.load(weights_only=True)` can read back."""

    def plain(value: Any) -> Any:
        return list(value) if isinstance(value, tuple) else value

    return {
        section.name: {f.name: plain(getattr(getattr(cfg, section.name), f.name)) for f in dataclasses.fields(getattr(cfg, section.name))}
        for section in dataclasses.fields(cfg)
    }


def config_from_dict(data: dict[str, dict[str, Any]]) -> Config:
    """Inverse of `config_to_dict`. Keys unknown to this version are refused by name."""
    cfg = Config()
    for section_name, values in data.items():
        for name, value in values.items():
            key = f"{section_name}.{name}"
            _, field_type = _locate(cfg, key)
            if typing.get_origin(field_type) is tuple:
                value = tuple(value)
            set_field(cfg, key, value)
    return cfg
