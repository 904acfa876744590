"""Evaluate World Models, PPO or a random policy, or compare them, on the same seeded episodes.

    python evaluate.py --env LunarLander-v3 --method random --episodes 20
    python evaluate.py --env LunarLander-v3 --method world_models --episodes 100
    python evaluate.py --env LunarLander-v3 --method compare --episodes 20 --video
    python evaluate.py --env LunarLander-v3 --method world_models --dream --temperature 1.15 --video

Every agent goes through one loop (`agent.reset(seed)`, `agent.act(obs)`); episode i of every method
is played from the same env seed, drawn from a range disjoint from all training seeds. Results go to
`results/<experiment>/` (JSON summary, per-episode CSV, and for `compare` a box plot and the training
curves read back from TensorBoard) and, with `--video`, mp4s of the best and worst episodes to
`videos/<experiment>/`. `--dream` plays the trained C inside M instead of the env (what the agent
imagines, scored by M's reward head), as the paper's Table 2 reports dream and real scores side by side.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from tqdm import tqdm

from config import CONTROLLER_PARAMS, Config, EnvConfig, canonical_env_id
from models.loaders import (agent_fingerprint, build_policy, chosen_controller_params, load_controller_checkpoint,
                            load_world_model_agent)
from models.ppo_agent import PPOAgent
from training.dream import dream_candidates, dream_generator, dream_video, load_dream_starts
from training.learning_curve import read_curve_csv
from training.population import run_episodes
from training.ppo_envs import env_steps_per_ppo_step, episode_env_steps, make_ppo_eval_env
from training.train_utils import add_common_args, config_from_args, run_cli
from utils.environment import RandomAgent, env_action_space, make_frame_env, run_episode
from utils.envpool_envs import ENVPOOL_ONLY_ENVS, EnvPoolSlots, play_episodes, resolve_backend
from utils.data import load_episode, require_episodes
from utils.errors import WorldModelsError
from utils.files import atomic_path, checkpoint_path, experiment_dir, make_writer, of_experiment, trained_config
from utils.images import upscale
from utils.runtime import episode_seeds, resolve_device
from utils.stats import difference_of_means, mean_with_ci95
from utils.video import log_video, write_mp4
from utils.workers import default_workers, parallel_map

METHODS = ("world_models", "ppo", "random")
TRAIN_COMMANDS = {
    "world_models": "python train.py --env {env}",
    "ppo": "python -m training.ppo_baseline --env {env}",
}


# ------------------------------------------------------------------------------------ statistics
@dataclass
class Summary:
    """Statistics of one method's returns."""

    method: str
    episodes: int
    mean: float
    std: float
    ci95_low: float
    ci95_high: float
    median: float
    min: float
    max: float
    mean_length: float
    wall_seconds: float
    observes: str
    backend: str = "gymnasium"  # who stepped the env (published numbers are Gymnasium's)
    agent: str = ""  # world_models: `models.loaders.agent_fingerprint` of the V, M and C that played


def summarize(method: str, returns: np.ndarray, lengths: np.ndarray, wall_seconds: float, observes: str,
              backend: str = "gymnasium") -> Summary:
    """Mean, sample std (ddof=1), t-based 95% confidence interval of the mean, and order statistics."""
    mean, std, low, high = mean_with_ci95(returns)
    return Summary(method, len(returns), mean, std, low, high, float(np.median(returns)),
                   float(np.min(returns)), float(np.max(returns)), float(np.mean(lengths)), wall_seconds, observes,
                   backend)


# ------------------------------------------------------------------------------- agents and envs
def _trained_config(cfg: Config, stage: str) -> Config:
    """`utils.files.trained_config`, with the command that trains a missing checkpoint."""
    command = TRAIN_COMMANDS["ppo" if stage == "ppo" else "world_models"].format(env=cfg.env.env_id)
    hint = f"train it first: {command}" + (f" --experiment {cfg.experiment.name}" if cfg.experiment.name else "")
    return trained_config(cfg, stage, hint)


def _mean_suffix(cfg: Config) -> str:
    """Results of CMA-ES's mean sit beside, not over, the kept best's: "_cmaes_mean", or ""."""
    return "_cmaes_mean" if cfg.experiment.controller_params == "mean" else ""


def ppo_run(cfg: Config) -> Config:
    """`cfg` pointed at the experiment whose PPO run is evaluated: `experiment.ppo_experiment`, or this one."""
    return of_experiment(cfg, cfg.experiment.ppo_experiment) if cfg.experiment.ppo_experiment else cfg


def _frame_env(env_cfg: EnvConfig) -> Any:
    """The Gymnasium env an agent plays (and --video replays) on; None where EnvPool plays instead."""
    return make_frame_env(env_cfg) if resolve_backend(env_cfg) == "gymnasium" else None


def make_agent_and_env(method: str, cfg: Config, device: str) -> tuple[Any, Any, str]:
    """(agent, env, what the agent observes) for `method`; env is None when EnvPool plays the episodes."""
    if method == "world_models":
        trained = _trained_config(cfg, "controller")
        agent = load_world_model_agent(trained, resolve_device(device))
        memory = {"z": "", "zh": " + h", "zch": " + c + h"}[trained.controller.inputs]
        h = f"{memory} ({trained.mdnrnn.hidden_size})" if memory else ""
        return agent, _frame_env(trained.env), f"{trained.env.frame_size}x{trained.env.frame_size} RGB -> z ({trained.vae.latent_size}){h}"
    if method == "ppo":
        run = ppo_run(cfg)
        _trained_config(run, "ppo")  # a clear message when it is missing
        agent = PPOAgent.from_checkpoint(run, device)
        # The checkpoint's observation pipeline; this command's episode cap, as for every method.
        env = make_ppo_eval_env(agent.config, render_mode="rgb_array", max_episode_steps=cfg.env.max_episode_steps)
        shape = env.observation_space.shape
        ppo = agent.config.ppo
        observes = (f"{shape[1]}x{shape[2]} {'gray' if ppo.grayscale else 'RGB'} x{ppo.frame_stack}" if len(shape) == 3
                    else f"state vector ({shape[0]})")
        return agent, env, observes
    if method == "random":
        return RandomAgent(env_action_space(cfg.env), "uniform"), _frame_env(cfg.env), "nothing (uniform random actions)"
    raise WorldModelsError(f"unknown method {method!r}; valid: {', '.join(METHODS)}, compare")


_worker: dict = {}


def _init_worker(method: str, cfg: Config, device: str) -> None:
    if multiprocessing.parent_process() is not None:
        # A forked worker process: one core each, and the CPU, since CUDA cannot be re-initialised in a
        # fork of a process that used it (the parent built the agent on `device` to fail fast).
        torch.set_num_threads(1)
        device = "cpu"
    _worker["agent"], _worker["env"], _ = make_agent_and_env(method, cfg, device)


def _play(seed: int) -> tuple[int, float, int]:
    env, agent = _worker["env"], _worker["agent"]
    episode = run_episode(env, agent, int(seed), record=False)
    # PPO's env may repeat each action (`ppo.frame_skip`): its length is counted in the env's own steps.
    length = episode_env_steps(env, agent.config) if isinstance(agent, PPOAgent) else episode.length
    return int(seed), episode.total_reward, length


def record_episode(agent: Any, env: Any, seed: int, world_model_views: bool = False) -> np.ndarray:
    """Replay the episode of `seed` and return its rendered frames (T, H, W, 3) uint8.

    With `world_model_views`, each frame is V's input, V's reconstruction and the decoding of M's
    prediction for this step (made on the previous step), side by side, each 64x64 upscaled 4x.
    """
    observation, _ = env.reset(seed=seed)
    agent.reset(seed)
    frames, predicted = [], None
    while True:
        action = agent.act(observation)
        if world_model_views:
            vae = agent.policy.vae
            with torch.no_grad():
                recon = vae.decode(agent.last_step.z)
                guess = vae.decode(predicted) if predicted is not None else torch.zeros_like(recon)
            views = [observation] + [(view[0].permute(1, 2, 0).clamp(0, 1) * 255).byte().cpu().numpy() for view in (recon, guess)]
            frames.append(upscale(np.concatenate(views, axis=1)[None], 4)[0])
            predicted = agent.last_step.predicted_next_z
        else:
            frames.append(env.render())
        observation, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            return np.stack(frames)


def record_envpool_episode(agent: Any, env_cfg: EnvConfig, seed: int) -> np.ndarray:
    """Replay the EnvPool episode of `seed` (the one evaluated: EnvPool's episode is a function of its
    seed and the agent, unless the agent samples z or actions, whose draws depend on the batch) and
    return V's frames of it, upscaled 4x: (T, 256, 256, 3) uint8."""
    (_, episode), = play_episodes(env_cfg, [agent], [int(seed)])  # runs the generator out: its pool closes
    return upscale(episode.obs, 4)


# Episodes that step together on EnvPool (World Models: one V encode and one M step per env step for all
# of them, stage 4's `run_episodes`).
ENVPOOL_EVAL_BATCH = 100


def _play_on_envpool(method: str, agent: Any, env_cfg: EnvConfig, seeds: np.ndarray) -> Iterator[tuple[int, float, int]]:
    """`_play` for every seed on EnvPool, in this process: World Models as stage 4 plays a population
    (every episode the same C, V and M batched over episodes), random agents one per episode."""
    if method == "world_models":
        params = np.repeat(agent.params.cpu().numpy(), len(seeds), axis=0)
        with EnvPoolSlots(env_cfg, min(len(seeds), ENVPOOL_EVAL_BATCH)) as slots:
            returns, lengths, _ = run_episodes(agent.policy, slots, params, np.asarray(seeds))
        yield from zip((int(seed) for seed in seeds), returns.tolist(), lengths.tolist())
        return
    for first in range(0, len(seeds), ENVPOOL_EVAL_BATCH):
        chunk = seeds[first : first + ENVPOOL_EVAL_BATCH]
        agents = [RandomAgent(agent.space, "uniform") for _ in chunk]
        for index, episode in play_episodes(env_cfg, agents, chunk, record=False):
            yield int(chunk[index]), episode.total_reward, episode.length


def evaluate_method(method: str, cfg: Config, episodes: int, workers: int, device: str, video: bool) -> tuple[Summary, list[dict]]:
    """Play `episodes` seeded episodes of `method`: on Gymnasium in parallel over `workers` processes, on
    EnvPool (`env.backend`) as one batch in this process. PPO always plays Gymnasium (its own wrappers)."""
    env_cfg = _trained_config(cfg, "controller").env if method == "world_models" else cfg.env
    backend = "gymnasium" if method == "ppo" else resolve_backend(env_cfg)
    if backend == "gymnasium" and min(default_workers(workers), episodes) > 1:
        # Worker processes play on the CPU (a fork cannot use CUDA): so does this process's copy, which
        # replays episodes for --video, so that a sampling agent draws the same random numbers in both.
        device = "cpu"
    agent, env, observes = make_agent_and_env(method, cfg, device)  # fails fast, before workers start
    seeds = episode_seeds(cfg, "evaluate", 0, episodes)
    started = time.perf_counter()
    if backend == "envpool":
        results = _play_on_envpool(method, agent, env_cfg, seeds)
    else:
        results = parallel_map(_play, list(seeds), workers, _init_worker, (method, cfg, device))
    records = sorted(tqdm(results, total=episodes, desc=f"evaluate {method} ({backend})", unit="ep"))
    wall = time.perf_counter() - started
    rows = [{"method": method, "episode": i, "seed": seed, "return": ret, "length": length}
            for i, (seed, ret, length) in enumerate(records)]
    returns = np.array([row["return"] for row in rows])
    summary = summarize(method, returns, np.array([row["length"] for row in rows]), wall, observes, backend)
    if method == "world_models":
        summary.agent = agent_fingerprint(agent.policy.vae, agent.policy.mdnrnn, agent.params)
    if video:
        video_dir = experiment_dir(cfg, "videos")
        for label, index in (("best", int(np.argmax(returns))), ("worst", int(np.argmin(returns)))):
            seed = rows[index]["seed"]
            frames = record_episode(agent, env, seed) if env is not None else record_envpool_episode(agent, env_cfg, seed)
            path = write_mp4(frames, video_dir / f"eval_{method}_{label}_seed{seed}.mp4")
            print(f"video: {path}")
        if method == "world_models" and env is not None:
            seed = rows[int(np.argmax(returns))]["seed"]
            path = write_mp4(record_episode(agent, env, seed, world_model_views=True),
                             video_dir / f"eval_world_models_views_seed{seed}.mp4")
            print(f"video (real | V's reconstruction | M's prediction): {path}")
    if env is not None:
        env.close()
    return summary, rows


def evaluate_in_dream(cfg: Config, episodes: int, device: str, temperature: Optional[float],
                      video: bool) -> tuple[Summary, list[dict]]:
    """Play the kept-best C (or CMA-ES's mean: `experiment.controller_params`) of `cfg`'s experiment for
    `episodes` episodes inside its M, all as one batch.

    Episodes start from V's posteriors of the collected episodes' first frames and run at `temperature`
    (None: the tau C was trained with) up to `controller.dream_max_steps`; a row's `seed` is the dream
    episode's number (its random numbers come from the experiment seed's "evaluate" stream) and its
    method is `world_models_dream_tau<tau>`.
    """
    trained = _trained_config(cfg, "controller")
    c = trained.controller
    tau = c.temperature if temperature is None else temperature
    torch_device = resolve_device(device)
    policy = build_policy(trained, torch_device, env_action_space(trained.env))
    params = chosen_controller_params(load_controller_checkpoint(trained, torch_device), cfg).to(torch_device)
    starts = load_dream_starts(trained, policy.vae, torch_device)
    generator = dream_generator(trained.experiment.seed, "evaluate", 0, torch_device)
    started = time.perf_counter()
    result = dream_candidates(policy, trained, starts, params[None], episodes, generator, tau)
    method = f"world_models_dream_tau{tau:g}"
    rows = [{"method": method, "episode": i, "seed": i, "return": float(ret), "length": int(length)}
            for i, (ret, length) in enumerate(zip(result.returns, result.lengths))]
    summary = summarize(method, result.returns, result.lengths, time.perf_counter() - started,
                        f"nothing: C inside M at tau {tau:g}", backend="dream")
    if video:
        frames = dream_video(policy, params, starts, tau, c.dream_max_steps,
                             dream_generator(trained.experiment.seed, "video", 0, torch_device), c.dream_done)
        writer = make_writer(cfg, "evaluate")
        path = log_video(writer, f"evaluate/dream_tau{tau:g}", frames, 0,
                         experiment_dir(cfg, "videos") / f"dream_eval_tau{tau:g}.mp4")
        writer.close()
        print(f"video (a dream of C drawn by V): {path}")
    return summary, rows


# --------------------------------------------------------------------------------------- output
def format_table(summaries: list[Summary]) -> str:
    header = (f"{'method':26s} {'episodes':>8s} {'mean ± std':>20s} {'95% CI':>22s} {'median':>9s} {'min':>9s} "
              f"{'max':>9s} {'length':>8s} {'wall s':>7s} {'backend':>9s}  observes")
    lines = [header, "-" * len(header)]
    for s in summaries:
        lines.append(f"{s.method:26s} {s.episodes:8d} {f'{s.mean:.1f} ± {s.std:.1f}':>20s} "
                     f"{f'[{s.ci95_low:.1f}, {s.ci95_high:.1f}]':>22s} {s.median:9.1f} {s.min:9.1f} {s.max:9.1f} "
                     f"{s.mean_length:8.1f} {s.wall_seconds:7.1f} {s.backend:>9s}  {s.observes}")
    return "\n".join(lines)


def _strict_json(value: Any) -> Any:
    """`value` with every non-finite float (one episode's infinite CI) as None: strict JSON has no Infinity."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(item) for item in value]
    return value


def write_results(folder: Path, name: str, summaries: list[Summary], rows: list[dict], extra: Optional[dict] = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    results = {"summaries": [asdict(s) for s in summaries], **(extra or {}), "episodes": rows}
    with atomic_path(folder / f"eval_{name}.json") as tmp:
        tmp.write_text(json.dumps(_strict_json(results), indent=2, allow_nan=False))
    with atomic_path(folder / f"eval_{name}_episodes.csv") as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["method", "episode", "seed", "return", "length"])
            writer.writeheader()
            writer.writerows(rows)


def read_scalars(log_dir: Path, tags: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{tag: (steps, values)} for the tags found in the TensorBoard event files under `log_dir`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not log_dir.is_dir():
        return {}
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    found = set(events.Tags().get("scalars", []))
    return {tag: (np.array([e.step for e in events.Scalars(tag)]), np.array([e.value for e in events.Scalars(tag)]))
            for tag in tags if tag in found}


def returns_by_env_steps(cfg: Config) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each method's training return against the real env steps it had used by then, from what its run
    wrote: {label: (env steps (N,), returns (N,))}.

    World Models: stage 1's collected steps (the episode files V and M trained on) plus stage 4's real
    steps so far (every CMA-ES rollout, re-evaluation and video episode: `controller_curve.csv`), against
    the population's mean fitness and, where made, the re-evaluation of the CMA-ES mean. A dream-trained C
    spends real steps on re-evaluation only. PPO: the returns of its training episodes
    (`charts/episodic_return` in TensorBoard) against its global step, in the env's own steps: a PPO step
    from pixels repeats its action `ppo.frame_skip` times (`env_steps_per_ppo_step` of the PPO run's config).
    The PPO run is `experiment.ppo_experiment`'s where that is set (`ppo_run`).
    """
    series: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    curve_path = checkpoint_path(cfg, "controller").with_name("controller_curve.csv")
    if curve_path.is_file():
        collected = sum(len(load_episode(path, keys=("rewards",))["rewards"]) for path in require_episodes(cfg))
        curve = read_curve_csv(curve_path)
        steps = collected + np.array([row["real_env_steps"] for row in curve])
        series["world_models: population mean"] = (steps, np.array([row["fitness_mean"] for row in curve]))
        evaluated = [i for i, row in enumerate(curve) if math.isfinite(row["eval_mean_params"])]
        if evaluated:
            series["world_models: CMA-ES mean, re-evaluated"] = (
                steps[evaluated], np.array([curve[i]["eval_mean_params"] for i in evaluated]))
    ppo = ppo_training_returns(cfg)
    if ppo is not None:
        series["ppo: training episodes"] = ppo
    return series


def ppo_training_returns(cfg: Config) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(env steps (N,), returns (N,)) of the PPO run's training episodes (`ppo_run`), from its TensorBoard
    `charts/episodic_return`, its global steps converted into the env's own steps with the run's config
    (`env_steps_per_ppo_step`); None when the run wrote none."""
    run = ppo_run(cfg)
    logged = read_scalars(experiment_dir(run, "logs") / "ppo", ["charts/episodic_return"])
    if not logged:
        return None
    steps, returns = logged["charts/episodic_return"]
    trained = trained_config(run, "ppo") if checkpoint_path(run, "ppo").is_file() else run
    return steps * env_steps_per_ppo_step(trained), returns


def plot_comparison(cfg: Config, rows: list[dict], summaries: list[Summary], folder: Path) -> list[Path]:
    """A box plot of returns per method, both methods' training curves from their TensorBoard logs, and
    return against the real env steps each had used (`returns_by_env_steps`), labelled by what each observes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [s.method for s in summaries]
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.boxplot([[r["return"] for r in rows if r["method"] == m] for m in methods], showmeans=True)
    axis.set_xticks(range(1, len(methods) + 1), methods)
    axis.set_ylabel("episode return")
    axis.set_title(f"{cfg.env.env_id}: {summaries[0].episodes} evaluation episodes per method")
    figure.tight_layout()
    box_path = folder / "compare_returns.png"
    figure.savefig(box_path, dpi=120)
    plt.close(figure)

    logs = experiment_dir(cfg, "logs")
    controller = read_scalars(logs / "controller", ["controller/fitness_mean", "controller/fitness_best",
                                                    "controller/dream_fitness_mean", "controller/dream_fitness_best",
                                                    "controller/best_score"])
    ppo = ppo_training_returns(cfg)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for tag, (steps, values) in controller.items():
        axes[0].plot(steps, values, label=tag.split("/")[1])
    axes[0].set(xlabel="CMA-ES generation", ylabel="return", title="World Models controller (CMA-ES)")
    if ppo is not None:
        steps, values = ppo
        window = max(1, len(values) // 50)
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        axes[1].plot(steps, values, alpha=0.25, label="episodic return")
        axes[1].plot(steps[window - 1 :], smooth, label=f"moving mean ({window})")
    axes[1].set(xlabel="environment steps", ylabel="return", title="PPO baseline")
    for axis in axes:
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend()
    figure.tight_layout()
    curves_path = folder / "compare_training_curves.png"
    figure.savefig(curves_path, dpi=120)
    plt.close(figure)

    observes = {s.method: s.observes for s in summaries}
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for label, (steps, values) in returns_by_env_steps(cfg).items():
        method = label.split(":")[0]
        label = f"{label} (sees {observes.get(method, '?')})"
        window = max(1, len(values) // 50)  # PPO's thousands of episodes: their moving mean
        if window > 1:
            values = np.convolve(values, np.ones(window) / window, mode="valid")
            steps, label = steps[window - 1 :], f"{label}, moving mean of {window}"
        axis.plot(steps, values, marker="." if len(steps) < 100 else None, label=label, alpha=0.8)
    axis.set(xlabel="real env steps used in training (World Models: collection + CMA-ES + re-evaluation)",
             ylabel="return", title=f"{cfg.env.env_id}: return against real env steps")
    axis.grid(alpha=0.3)
    if axis.lines:
        axis.legend(fontsize=7)
    figure.tight_layout()
    steps_path = folder / "compare_env_steps.png"
    figure.savefig(steps_path, dpi=120)
    plt.close(figure)
    return [box_path, curves_path, steps_path]


def evaluate(cfg: Config, method: str, episodes: int, workers: int = 0, video: bool = False, dream: bool = False,
             temperature: Optional[float] = None) -> dict[str, Any]:
    """Evaluate one method, or all three for `compare`; returns the summaries and writes the results.

    `dream` (world_models only) plays C inside M at `temperature` instead of in the env.
    """
    if episodes < 1:
        raise WorldModelsError(f"--episodes must be >= 1, got {episodes}")
    if method not in (*METHODS, "compare"):
        raise WorldModelsError(f"unknown method {method!r}; valid: {', '.join(METHODS)}, compare")
    if dream:
        if method != "world_models":
            raise WorldModelsError(f"--dream plays a World Models agent inside its M; use --method world_models, "
                                   f"not {method!r}")
        summary, rows = evaluate_in_dream(cfg, episodes, cfg.experiment.device, temperature, video)
        print(format_table([summary]))
        folder = experiment_dir(cfg, "results")
        name = summary.method + _mean_suffix(cfg)
        write_results(folder, name, [summary], rows,
                      {"env_id": cfg.env.env_id, "controller_params": cfg.experiment.controller_params})
        print(f"results: {folder / f'eval_{name}.json'}")
        return {"summaries": [summary], "rows": rows}
    methods = list(METHODS) if method == "compare" else [method]
    if method == "compare":  # every trained method must exist before anything runs
        _trained_config(cfg, "controller")
        _trained_config(ppo_run(cfg), "ppo")
    seeds = episode_seeds(cfg, "evaluate", 0, episodes)
    which = {"best": "the kept best", "mean": "CMA-ES's mean"}[cfg.experiment.controller_params]
    print(f"evaluate: {cfg.env.env_id}, {episodes} episodes per method, env seeds {seeds[0]}..{seeds[-1]}"
          + (f"; World Models' C: {which}" if "world_models" in methods else ""))
    summaries, rows = [], []
    for name in methods:
        summary, method_rows = evaluate_method(name, cfg, episodes, workers, cfg.experiment.device, video)
        summaries.append(summary)
        rows.extend(method_rows)
    print(format_table(summaries))
    folder = experiment_dir(cfg, "results")
    extra: dict[str, Any] = {"env_id": cfg.env.env_id, "seeds": seeds.tolist()}
    if "world_models" in methods:
        extra["controller_params"] = cfg.experiment.controller_params
    if method == "compare":
        wm = np.array([r["return"] for r in rows if r["method"] == "world_models"])
        ppo = np.array([r["return"] for r in rows if r["method"] == "ppo"])
        difference, low, high = difference_of_means(wm, ppo)
        extra["world_models_minus_ppo"] = {"difference": difference, "ci95_low": low, "ci95_high": high}
        print(f"\nworld_models - ppo: {difference:+.1f}, 95% CI [{low:+.1f}, {high:+.1f}] (Welch)")
    if "ppo" in methods:
        extra["ppo_experiment"] = ppo_run(cfg).experiment_name  # whose PPO played (--ppo-experiment)
    # Files of a run on EnvPool, or of CMA-ES's mean, sit beside, not over, the Gymnasium ones and the kept
    # best's (evaluating a transfer, or the mean against the kept best, needs both).
    name = method + (_mean_suffix(cfg) if "world_models" in methods else "")
    name += "_envpool" if any(s.backend == "envpool" for s in summaries) else ""
    write_results(folder, name, summaries, rows, extra)
    if method == "compare":
        for path in plot_comparison(cfg, rows, summaries, folder):
            print(f"plot: {path}")
    print(f"results: {folder / f'eval_{name}.json'}, {folder / f'eval_{name}_episodes.csv'}")
    return {"summaries": summaries, "rows": rows, **extra}


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Evaluate world_models, ppo or random, or compare them.")
    add_common_args(parser)
    parser.add_argument("--method", default="world_models", help="world_models | ppo | random | compare")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--workers", type=int, default=0, help="worker processes (0 = one per core)")
    parser.add_argument("--video", action="store_true", help="mp4s of the best and worst episode per method")
    parser.add_argument("--dream", action="store_true", help="world_models: play C inside M instead of the env")
    parser.add_argument("--temperature", type=float, default=None,
                        help="--dream: M's sampling temperature tau (default: the one C was trained with)")
    parser.add_argument("--ppo-experiment", default="",
                        help="ppo / compare: the experiment that trained PPO (default: --experiment), e.g. PPO "
                             "from pixels beside a World Models run")
    parser.add_argument("--controller", choices=CONTROLLER_PARAMS, default=None,
                        help="world_models: play the kept best C (default) or CMA-ES's mean at the last generation")
    args = parser.parse_args(argv)
    if args.controller:
        args.overrides.append(f"experiment.controller_params={args.controller}")
    if args.ppo_experiment:
        args.overrides.append(f"experiment.ppo_experiment={args.ppo_experiment}")
    if args.backend is None:
        # The numbers we publish are Gymnasium's (--backend envpool to compare), where Gymnasium has the env.
        args.backend = "auto" if canonical_env_id(args.env, notify=False) in ENVPOOL_ONLY_ENVS else "gymnasium"
    evaluate(config_from_args(args), args.method, args.episodes, args.workers, args.video, args.dream, args.temperature)


if __name__ == "__main__":
    run_cli(main)
