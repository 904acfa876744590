"""Stage 4: train the controller C with CMA-ES, V and M frozen.

    python -m training.train_controller --env LunarLander-v3 --preset smoke

Each generation, CMA-ES proposes `population_size` parameter vectors; every candidate plays
`rollouts_per_candidate` episodes (the same seeds for all candidates of a generation, so candidates
are ranked on equal terms) and its fitness is the mean return. All candidates x rollouts step together:
the envs live in worker processes, and V, M and every candidate's C run as one batch per step.
Every `eval_every` generations the distribution mean and the generation's best candidate are scored on
`eval_episodes` fresh episodes; that score, not the noisy fitness, decides which parameters are kept
(paper, section 4.3). The CMA-ES state is checkpointed each generation, so a run resumes where it stopped.

`controller.mode=dream` takes the fitness from M instead (paper, section 4.4; `training/dream.py`): every
candidate x rollout is one row of a batched tensor rollout inside M at temperature `controller.temperature`,
started from real episodes' first latents. The kept-best decision still plays the real environment, so
TensorBoard shows `controller/dream_fitness_*` next to `controller/eval_score_*`: a dream fitness that
climbs while the real score does not is M being exploited. Every `video_every` generations the dream of
the generation's best candidate is decoded by V into `videos/<experiment>/dream_genNNNN.mp4`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from tqdm import tqdm

from config import Config
from models.agent import WorldModelAgent, WorldModelPolicy
from models.controller import CMAES, Controller
from training.dream import decode_latents, dream_generator, dream_rollouts, episode_start_latents, sample_start_latents
from training.train_mdnrnn import load_mdnrnn, load_or_encode_latents
from training.train_utils import (checkpoint_path, episode_seeds, experiment_dir, load_checkpoint, make_writer,
                                  require_match, resolve_device, run_cli, run_stage, save_checkpoint, seed_everything)
from training.train_vae import load_vae
from utils.data import require_episodes
from utils.env_pool import EnvPool
from utils.environment import action_size, make_frame_env, resolve_env_id
from utils.errors import WorldModelsError
from utils.video import add_video, upscale, write_mp4

INPUT_MODES = ("zh", "z")
MODES = ("real", "dream")


def controller_input_size(cfg: Config) -> int:
    if cfg.controller.inputs not in INPUT_MODES:
        raise WorldModelsError(f"unknown controller.inputs {cfg.controller.inputs!r}; valid: {', '.join(INPUT_MODES)}")
    return cfg.vae.latent_size + (cfg.mdnrnn.hidden_size if cfg.controller.inputs == "zh" else 0)


def make_controller(cfg: Config, action_space) -> Controller:
    return Controller(controller_input_size(cfg), action_size(action_space), cfg.controller.hidden_sizes)


def build_policy(cfg: Config, device: torch.device, action_space, exploration: float = 0.0) -> WorldModelPolicy:
    """V and M from their checkpoints (checked against cfg and each other) and C's architecture."""
    vae = load_vae(cfg, device)
    mdnrnn = load_mdnrnn(cfg, device, vae=vae)
    controller = make_controller(cfg, action_space)
    return WorldModelPolicy(vae, mdnrnn, controller.layer_shapes, action_space, cfg.controller.inputs,
                            cfg.controller.sample_actions, device, cfg.experiment.seed, exploration)


def run_episodes(policy: WorldModelPolicy, pool: EnvPool, params: np.ndarray, seeds: np.ndarray,
                 record_first: bool = False) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Play episode e with parameters params[e] from env seed seeds[e], all episodes stepping together.

    params: (E, N); seeds: (E,). Returns returns (E,) float64, lengths (E,) int64, and the frames of
    episode 0 (T, 64, 64, 3) uint8 when `record_first`. E may exceed the pool: it runs in chunks.

    The episodes are grouped by the env worker they live in, and the groups are pipelined: while one
    worker steps its envs, V, M and C run (batched) for another group, so neither the model nor the
    envs wait for the other. Every episode's computation is its own, so grouping changes no result.
    """
    total = len(seeds)
    returns, lengths = np.zeros(total), np.zeros(total, np.int64)
    recorded: list[np.ndarray] = []
    params_tensor = torch.as_tensor(params, dtype=torch.float32, device=policy.device)
    for start in range(0, total, pool.num_envs):
        count = min(pool.num_envs, total - start)
        frames = pool.reset(range(count), seeds[start : start + count])
        hidden = policy.initial_state(count)

        def act_and_send(worker: int, slots: np.ndarray) -> None:
            if record_first and start == 0 and slots[0] == 0:
                recorded.append(frames[0])
            rows = torch.as_tensor(slots, device=policy.device)
            step = policy.act(frames[slots], params_tensor[start + rows], (hidden[0][:, rows], hidden[1][:, rows]))
            hidden[0][:, rows], hidden[1][:, rows] = step.hidden
            pool.step_async(worker, slots, step.env_actions)

        slots_all = np.arange(count)
        owners = pool.worker_of(slots_all)
        running = {w: slots_all[owners == w] for w in range(pool.workers) if (owners == w).any()}
        for worker, slots in running.items():
            act_and_send(worker, slots)
        while running:
            for worker in list(running):
                slots = running.pop(worker)
                new_frames, rewards, terminated, truncated = pool.step_wait(worker)
                frames[slots] = new_frames
                returns[start + slots] += rewards
                lengths[start + slots] += 1
                still_running = slots[~(terminated | truncated)]
                if len(still_running):
                    act_and_send(worker, still_running)
                    running[worker] = still_running
    return returns, lengths, (np.stack(recorded) if recorded else None)


def load_controller_checkpoint(cfg: Config, device: Any = "cpu") -> dict[str, Any]:
    path = checkpoint_path(cfg, "controller")
    checkpoint = load_checkpoint(path, "controller", cfg.env.env_id, map_location=device)
    saved = checkpoint["config"]["controller"]
    require_match("controller.inputs", saved["inputs"], cfg.controller.inputs, path)
    require_match("controller.hidden_sizes", tuple(saved["hidden_sizes"]), tuple(cfg.controller.hidden_sizes), path)
    return checkpoint


def load_world_model_agent(cfg: Config, device: Any = "auto", exploration: float = 0.0) -> WorldModelAgent:
    """The trained World Models agent of `cfg`'s experiment: V, M and the kept-best C (its actions
    perturbed by `explore_actions` when `exploration` > 0)."""
    device = resolve_device(device) if isinstance(device, str) else device
    cfg.env.env_id = resolve_env_id(cfg.env.env_id)
    env = make_frame_env(cfg.env)
    policy = build_policy(cfg, device, env.action_space, exploration)
    env.close()
    checkpoint = load_controller_checkpoint(cfg, device)
    return WorldModelAgent(policy, checkpoint["best_params"])


def train_controller(cfg: Config) -> Path:
    """Run CMA-ES for `cfg.controller.generations` generations (resuming if a checkpoint exists)."""
    c = cfg.controller
    if c.mode not in MODES:
        raise WorldModelsError(f"unknown controller.mode {c.mode!r}; valid: {', '.join(MODES)}")
    if c.population_size < 2 or c.rollouts_per_candidate < 1 or c.generations < 1:
        raise WorldModelsError("controller needs population_size >= 2, rollouts_per_candidate >= 1, generations >= 1")
    cfg.env.env_id = resolve_env_id(cfg.env.env_id)
    device = resolve_device(cfg.experiment.device)
    seed_everything(cfg.experiment.seed)
    probe = make_frame_env(cfg.env)
    action_space = probe.action_space
    probe.close()
    policy = build_policy(cfg, device, action_space)
    num_params = make_controller(cfg, action_space).num_parameters
    es = CMAES(num_params, c.sigma, c.population_size, cfg.experiment.seed)
    path = checkpoint_path(cfg, "controller")
    start_generation, best_params, best_score = 0, np.zeros(num_params, np.float32), -np.inf
    if path.is_file():
        checkpoint = load_controller_checkpoint(cfg)
        require_match("controller parameters", int(checkpoint["best_params"].numel()), num_params, path)
        require_match("controller.population_size", checkpoint["config"]["controller"]["population_size"], c.population_size, path)
        history = checkpoint["fitness_history"].numpy()
        es.replay(history)
        start_generation = len(history)
        best_params, best_score = checkpoint["best_params"].numpy(), float(checkpoint["best_score"])
        if start_generation >= c.generations:
            print(f"controller: {path} already has {start_generation} generations (best score {best_score:.1f}); nothing to do")
            return path
        print(f"controller: resuming at generation {start_generation} (best score so far {best_score:.1f})")

    rollouts = c.rollouts_per_candidate
    dream = c.mode == "dream"
    if dream:  # the dream starts from V's posteriors of the real episodes' first frames
        cache = load_or_encode_latents(cfg, policy.vae, require_episodes(cfg), device)
        start_mu, start_logvar = episode_start_latents(cache.mu, cache.logvar, cache.offsets, device)
        del cache  # every frame's latents can be hundreds of MB; the dream keeps the first frames' only
    writer = make_writer(cfg, "controller")
    # In the dream the envs serve the re-evaluation only.
    pool = EnvPool(cfg.env, max(0 if dream else c.population_size * rollouts, 2 * c.eval_episodes), c.workers)
    if pool.workers > 1 and not dream:
        # The env workers need the cores while V, M and C run: extra OpenMP threads would spin against
        # them (benchmarks/controller.py: a generation takes 9.4 s with one torch thread, 10.7 s with two).
        torch.set_num_threads(1)
    print(f"controller: CMA-ES on {num_params} parameters, population {c.population_size} x {rollouts} rollouts "
          f"in the {'dream (M)' if dream else 'real environment'}, {pool.num_envs} envs over {pool.workers} worker(s), "
          f"device {device}")
    fitness_tag = "controller/dream_fitness" if dream else "controller/fitness"
    last_eval: dict[str, float] = {}
    try:
        bar = tqdm(range(start_generation, c.generations), initial=start_generation, total=c.generations,
                   desc="controller", unit="gen")
        for generation in bar:
            started = time.perf_counter()
            solutions = es.ask()
            if dream:
                # The same start latents for every candidate, as the real envs share seeds: equal terms.
                generator = dream_generator(cfg.experiment.seed, "fitness", generation, device)
                start_z = sample_start_latents(start_mu, start_logvar, rollouts, generator).repeat(c.population_size, 1)
                params = torch.as_tensor(np.repeat(solutions, rollouts, axis=0), dtype=torch.float32, device=device)
                returns, lengths, _ = dream_rollouts(policy.mdnrnn, policy.layer_shapes, params, start_z, action_space,
                                                     c.temperature, c.dream_max_steps, generator, c.inputs,
                                                     c.sample_actions)
            else:
                seeds = np.tile(episode_seeds(cfg, "controller", generation * rollouts % 10**6, rollouts), c.population_size)
                returns, lengths, _ = run_episodes(policy, pool, np.repeat(solutions, rollouts, axis=0), seeds)
            fitness = returns.reshape(c.population_size, rollouts).mean(axis=1)
            es.tell(fitness)
            elapsed = time.perf_counter() - started
            step = generation + 1
            writer.add_scalar(f"{fitness_tag}_mean", fitness.mean(), step)
            writer.add_scalar(f"{fitness_tag}_std", fitness.std(), step)
            writer.add_scalar(f"{fitness_tag}_best", fitness.max(), step)
            writer.add_scalar(f"{fitness_tag}_worst", fitness.min(), step)
            writer.add_scalar("controller/sigma", es.sigma, step)
            writer.add_scalar("controller/episode_length_mean", lengths.mean(), step)
            writer.add_scalar("controller/episode_length_max", lengths.max(), step)
            writer.add_scalar("controller/generation_seconds", elapsed, step)
            writer.add_scalar("controller/dream_steps_per_second" if dream else "controller/env_steps_per_second",
                              lengths.sum() / elapsed, step)

            if step % c.eval_every == 0 or step == c.generations:
                # Score the mean and the generation's best on fresh episodes; the better one competes for "best".
                candidates = np.stack([es.mean, solutions[int(np.argmax(fitness))]]).astype(np.float32)
                eval_seeds = episode_seeds(cfg, "controller_eval", 0, c.eval_episodes)
                eval_returns, _, _ = run_episodes(policy, pool, np.repeat(candidates, c.eval_episodes, axis=0),
                                                  np.tile(eval_seeds, 2))
                scores = eval_returns.reshape(2, c.eval_episodes).mean(axis=1)
                winner = int(np.argmax(scores))
                if scores[winner] > best_score:
                    best_score, best_params = float(scores[winner]), candidates[winner]
                last_eval = {"eval_mean_params": float(scores[0]), "eval_best_candidate": float(scores[1])}
                writer.add_scalar("controller/eval_score_mean_params", scores[0], step)
                writer.add_scalar("controller/eval_score_best_candidate", scores[1], step)
                writer.add_scalar("controller/best_score", best_score, step)

            save_checkpoint(
                path, "controller", cfg,
                best_params=torch.as_tensor(best_params, dtype=torch.float32),
                mean_params=torch.as_tensor(es.mean, dtype=torch.float32),
                best_score=best_score,
                fitness_history=torch.as_tensor(np.stack(es.fitness_history)),
                generation=step,
                layer_shapes=[list(shape) for shape in policy.layer_shapes],
                metrics={"fitness_mean": float(fitness.mean()), "fitness_best": float(fitness.max()),
                         "sigma": es.sigma, **last_eval},
            )
            if c.video_every and (step % c.video_every == 0 or step == c.generations) and np.isfinite(best_score):
                _, _, frames = run_episodes(policy, pool, best_params[None], episode_seeds(cfg, "controller_eval", 0, 1),
                                            record_first=True)
                add_video(writer, "controller/best_candidate", frames[:: max(1, len(frames) // 300)], step)
                write_mp4(upscale(frames, 4), experiment_dir(cfg, "videos") / f"controller_gen{step:04d}.mp4")
            if dream and c.video_every and (step % c.video_every == 0 or step == c.generations):
                # What M imagines for the generation's best candidate (by dream fitness), drawn by V.
                generator = dream_generator(cfg.experiment.seed, "video", generation, device)
                best = torch.as_tensor(solutions[int(np.argmax(fitness))], dtype=torch.float32, device=device)[None]
                result = dream_rollouts(policy.mdnrnn, policy.layer_shapes, best,
                                        sample_start_latents(start_mu, start_logvar, 1, generator), action_space,
                                        c.temperature, c.dream_max_steps, generator, c.inputs, c.sample_actions,
                                        record_first=True)
                frames = decode_latents(policy.vae, result.first_latents)
                add_video(writer, "controller/dream_best_candidate", frames[:: max(1, len(frames) // 300)], step)
                write_mp4(upscale(frames, 4), experiment_dir(cfg, "videos") / f"dream_gen{step:04d}.mp4")
            bar.set_postfix(fitness=f"{fitness.mean():.1f}/{fitness.max():.1f}", best=f"{best_score:.1f}",
                            sigma=f"{es.sigma:.3f}")
    finally:
        pool.close()
        writer.close()
    print(f"controller: best score {best_score:.1f} over {c.eval_episodes} evaluation episodes; checkpoint {path}")
    return path


def main(argv: Optional[list[str]] = None) -> None:
    run_stage(train_controller, __doc__.split("\n")[0], argv)


if __name__ == "__main__":
    run_cli(main)
