"""Stage 4: train the controller C with CMA-ES, V and M frozen.

    python -m training.train_controller --env LunarLander-v3 --preset smoke

Each generation, CMA-ES proposes `population_size` parameter vectors; every candidate plays
`rollouts_per_candidate` episodes (the same seeds for all candidates of a generation, so candidates
are ranked on equal terms) and its fitness is the mean return. All candidates x rollouts step together:
the envs live in worker processes, and V, M and every candidate's C run as one batch per step.
Every `eval_every` generations the distribution mean and the generation's best candidate are scored on
`eval_episodes` evaluation episodes; that score, not the noisy fitness, decides which parameters are kept
(paper, section 4.3). The evaluation seeds are never training seeds, and they are the same at every
re-evaluation, so successive candidates are compared on the same episodes. The price: the kept best is
the maximum of many scores on one set of episodes, so its score is optimistic; evaluate.py's episodes
(other seeds again) give the unbiased figure. The CMA-ES state is checkpointed each generation, so a run resumes where it stopped.

`controller.init_from=<experiment>` restarts CMA-ES from that experiment's kept best (or its CMA-ES mean,
with `experiment.controller_params=mean`; same V and M) with this run's sigma and population: for when a
long run's sigma has shrunk and its curve flattened. The source's kept best (re-scored on this run's re-evaluation episodes first, in real mode: its own score was
the best of many on the source's) and learning curve carry over, so its work counts in the new totals.

`controller.mode=dream` takes the fitness from M instead (paper, section 4.4; `training/dream.py`): every
candidate x rollout is one row of a batched tensor rollout inside M at temperature `controller.temperature`,
started from real episodes' first latents. C is then trained entirely in the dream: the re-evaluation that
decides which parameters are kept plays inside M too (`dream_scores`, as many dream episodes as a
generation). The real environment only watches: the same two candidates play `eval_episodes` real
episodes, logged as `controller/eval_score_*` beside `controller/dream_eval_score_*` and
`controller/dream_fitness_*`, so a dream score that climbs while the real one does not is M being
exploited, seen as it happens, without the real score ever steering C. Every `video_every` generations
the dream of the generation's best candidate is decoded by V into `videos/<experiment>/dream_genNNNN.mp4`.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import torch
from tqdm import tqdm

from config import Config, ControllerConfig, EnvConfig
from models.controller import CMAES
from models.loaders import (build_policy, chosen_controller_params, load_controller_checkpoint, make_controller,
                            weights_fingerprint)
from training.dream import dream_candidates, dream_generator, dream_scores, dream_video, load_dream_starts
from training.learning_curve import LearningCurve
from training.population import run_episodes
from training.train_utils import run_cli, run_stage
from utils.env_workers import make_env_slots
from utils.environment import env_action_space
from utils.envpool_envs import port_difference, resolve_backend
from utils.errors import WorldModelsError
from utils.files import checkpoint_path, experiment_dir, make_writer, require_match, save_checkpoint
from utils.runtime import episode_seeds, resolve_device, seed_everything, torch_threads
from utils.video import log_video


class ControllerRun(NamedTuple):
    """Where a (possibly resumed) CMA-ES run stands: the next generation and the kept-best C so far."""

    start_generation: int
    best_params: np.ndarray  # (N,) float32
    best_score: float
    curve: LearningCurve  # the generations so far and the work they spent


def resume_controller(cfg: Config, es: CMAES, num_params: int, fingerprints: dict[str, str]) -> ControllerRun:
    """Replay the checkpoint's fitness history into `es` (CMA-ES is deterministic given its seed and
    fitnesses) and return where the run stands; a fresh run when there is no checkpoint. `fingerprints`:
    {"vae_fingerprint", "mdnrnn_fingerprint"} of the V and M this run trains C with."""
    path = checkpoint_path(cfg, "controller")
    if not path.is_file():
        if cfg.controller.init_from:  # a restart: the source's kept best and curve carry over
            checkpoint = _restart_source(cfg, num_params, fingerprints)
            # In real mode `train_controller` re-scores the kept best on this run's episodes before generation 1.
            return ControllerRun(0, checkpoint["best_params"].numpy(), float(checkpoint["best_score"]),
                                 LearningCurve(checkpoint.get("curve")))
        return ControllerRun(0, np.zeros(num_params, np.float32), -np.inf, LearningCurve())
    checkpoint = load_controller_checkpoint(cfg)
    # A C's CMA-ES state means something only for the V and M it was trained with (in the dream, the M it
    # was trained in): after either is retrained, resuming would mix two different problems' fitnesses.
    for key, fingerprint in fingerprints.items():
        saved = checkpoint.get(key)  # checkpoints before 2026-11-30 have none
        if saved is not None and saved != fingerprint:
            raise WorldModelsError(f"{path} was trained with another {'V' if key.startswith('vae') else 'M'} (it has "
                                   f"been retrained since): move that checkpoint away, or train C under a new --experiment")
    require_match("controller parameters", int(checkpoint["best_params"].numel()), num_params, path)
    # The replay below re-asks CMA-ES for every past generation and tells it the saved fitnesses: anything
    # that changes what it asks (its seed, sigma, population, penalty) or what the fitness measured (real or
    # dream, and which dream) would silently pair the old fitnesses with new candidates.
    saved, c = checkpoint["config"], cfg.controller
    defaults = {"controller": ControllerConfig(), "env": EnvConfig()}  # for fields a checkpoint predates
    must_match = {"experiment.seed": cfg.experiment.seed, "controller.population_size": c.population_size,
                  "controller.sigma": c.sigma, "controller.weight_decay": c.weight_decay, "controller.mode": c.mode,
                  "controller.action_mapping": c.action_mapping, "controller.sample_z": c.sample_z,
                  "controller.sample_actions": c.sample_actions, "controller.init_from": c.init_from}
    if c.mode == "dream":
        must_match.update({"controller.temperature": c.temperature, "controller.dream_done": c.dream_done,
                           "controller.dream_max_steps": c.dream_max_steps})
    else:
        must_match.update({"env.max_episode_steps": cfg.env.max_episode_steps, "env.fire_to_serve": cfg.env.fire_to_serve})
    for key, expected in must_match.items():
        section, name = key.split(".")
        default = getattr(defaults[section], name, None) if section in defaults else None
        require_match(key, saved[section].get(name, default), expected, path)
    history = checkpoint["fitness_history"].numpy()
    es.replay(history)
    if "mean_params" in checkpoint and not np.allclose(es.mean, checkpoint["mean_params"].numpy(), atol=1e-4):
        raise WorldModelsError(f"{path}: replaying its {len(history)} generations does not give back the saved CMA-ES "
                               f"mean (another version of the cma package?); train C under a new --experiment")
    # A checkpoint from before the curve was kept starts its totals at this resume.
    curve = LearningCurve(checkpoint.get("curve"))
    best_score = float(checkpoint["best_score"])
    if c.mode == "real":
        best_score = _kept_best_on_this_backend(cfg, saved, curve, best_score)
    return ControllerRun(len(history), checkpoint["best_params"].numpy(), best_score, curve)


def _restart_source(cfg: Config, num_params: int, fingerprints: dict[str, str]) -> dict:
    """The controller checkpoint of `controller.init_from`'s experiment, refused unless its C is one this run
    could have trained: the same V and M, inputs, layers, action mapping and z."""
    source = copy.deepcopy(cfg)
    source.experiment.name = cfg.controller.init_from
    path = checkpoint_path(source, "controller")
    if not path.is_file():
        raise WorldModelsError(f"controller.init_from={cfg.controller.init_from!r}: no controller checkpoint at {path}")
    checkpoint = load_controller_checkpoint(source)
    for key, fingerprint in fingerprints.items():
        if checkpoint.get(key) != fingerprint:
            raise WorldModelsError(f"controller.init_from={cfg.controller.init_from!r}: {path} was trained with another "
                                   f"{'V' if key.startswith('vae') else 'M'} than this experiment's (copy its V and M here)")
    require_match("controller parameters", int(checkpoint["best_params"].numel()), num_params, path)
    saved = checkpoint["config"]["controller"]
    for name in ("action_mapping", "sample_z"):
        require_match(f"controller.{name}", saved.get(name, getattr(ControllerConfig(), name)),
                      getattr(cfg.controller, name), path)
    return checkpoint


def starting_mean(cfg: Config, num_params: int, fingerprints: dict[str, str]) -> Optional[np.ndarray]:
    """CMA-ES's first mean: None (zeros) for a run from scratch; for a restart (`controller.init_from`) the
    source's kept best or, with `experiment.controller_params=mean`, its CMA-ES mean, which the checkpoint
    keeps as `initial_params` so that a resumed restart replays from the same point even after the source has
    moved on. (N,) float64."""
    path = checkpoint_path(cfg, "controller")
    if path.is_file():
        initial = load_controller_checkpoint(cfg).get("initial_params")
        return None if initial is None else initial.double().numpy()
    if not cfg.controller.init_from:
        return None
    checkpoint = _restart_source(cfg, num_params, fingerprints)
    return chosen_controller_params(checkpoint, cfg).double().numpy()


def _kept_best_on_this_backend(cfg: Config, saved_config: dict, curve: LearningCurve, best_score: float) -> float:
    """The kept best's score to compete with in a resumed real-mode run: `best_score`, or -inf when it was
    scored on the other backend. The two ports draw CarRacing differently (docs/RESULTS.md), so a real score
    from one cannot be compared with one from the other: continued on the other backend (e.g. to fine-tune
    on Gymnasium's frames), the kept best is re-chosen from the next re-evaluation on (until then the old
    C stays). Dream mode needs none of this: it chooses the kept best in M, whoever plays the watched scores."""
    scored_on_envpool = curve.last("on_envpool")
    if not math.isfinite(scored_on_envpool) and saved_config["env"].get("backend") in ("gymnasium", "envpool"):
        scored_on_envpool = float(saved_config["env"]["backend"] == "envpool")  # curves from before the column
    plays_on_envpool = float(resolve_backend(cfg.env) == "envpool")
    if not math.isfinite(scored_on_envpool) or scored_on_envpool == plays_on_envpool:
        return best_score
    names = {0.0: "Gymnasium", 1.0: "EnvPool"}
    print(f"controller: the kept best ({best_score:.1f}) was scored on {names[scored_on_envpool]}; this run plays "
          f"{names[plays_on_envpool]}, so its next re-evaluation starts a new kept best")
    return -math.inf


def train_controller(cfg: Config) -> Path:
    """Run CMA-ES for `cfg.controller.generations` generations (resuming if a checkpoint exists)."""
    c = cfg.controller
    device = resolve_device(cfg.experiment.device)
    seed_everything(cfg.experiment.seed)
    action_space = env_action_space(cfg.env)
    policy = build_policy(cfg, device, action_space)
    num_params = make_controller(cfg, action_space).num_parameters
    path = checkpoint_path(cfg, "controller")
    fingerprints = {"vae_fingerprint": weights_fingerprint(policy.vae), "mdnrnn_fingerprint": weights_fingerprint(policy.mdnrnn)}
    x0 = starting_mean(cfg, num_params, fingerprints)
    es = CMAES(num_params, c.sigma, c.population_size, cfg.experiment.seed, x0=x0, weight_decay=c.weight_decay)
    start_generation, best_params, best_score, curve = resume_controller(cfg, es, num_params, fingerprints)
    # A restart's curve begins with its source's rows: its generations are numbered on from theirs.
    carried = max(0, len(curve.rows) - start_generation)
    restart = {} if x0 is None else {"initial_params": torch.as_tensor(x0, dtype=torch.float32)}
    if x0 is not None and not start_generation:
        start = {"best": "kept best", "mean": "CMA-ES mean"}[cfg.experiment.controller_params]
        print(f"controller: restarting CMA-ES (sigma {c.sigma}, population {c.population_size}) from the {start} of "
              f"experiment {c.init_from!r} after its {carried} generations (its kept best: {best_score:.1f})")
    if start_generation >= c.generations:
        print(f"controller: {path} already has {start_generation} generations (best score {best_score:.1f}); nothing to do")
        return path
    if start_generation:
        print(f"controller: resuming at generation {start_generation} (best score so far {best_score:.1f})")

    rollouts = c.rollouts_per_candidate
    dream = c.mode == "dream"
    backend = resolve_backend(cfg.env)  # "gymnasium" or "envpool": the curve records which played
    starts = load_dream_starts(cfg, policy.vae, device) if dream else None
    writer = make_writer(cfg, "controller")
    # In the dream the envs serve the re-evaluation only.
    pool = make_env_slots(cfg.env, max(0 if dream else c.population_size * rollouts, 2 * c.eval_episodes), c.workers)
    # Gymnasium's env workers need the cores while V, M and C run: extra OpenMP threads would spin against
    # them (benchmarks/controller.py: a generation takes 9.4 s with one torch thread, 10.7 s with two).
    # EnvPool steps while the models wait, so the models keep every core.
    threads = 1 if pool.workers > 1 and not dream else 0
    print(f"controller: CMA-ES on {num_params} parameters, population {c.population_size} x {rollouts} rollouts "
          f"in the {'dream (M)' if dream else 'real environment'}, {pool.num_envs} {backend} envs over "
          f"{pool.workers} worker(s), "
          f"device {device}")
    differs = port_difference(cfg.env.env_id) if backend == "envpool" and not dream else ""
    if differs:
        print(f"notice: {differs}; evaluate.py plays Gymnasium's port by default")
    fitness_tag = "controller/dream_fitness" if dream else "controller/fitness"
    last_eval: dict[str, float] = {}
    try:
        with torch_threads(threads):
            rescored = (0, 0, 0.0)  # a restart's re-scoring below: episodes, steps, seconds, counted in generation 1
            if x0 is not None and not start_generation and not dream:
                # The carried score is the best of many on the source's re-evaluation episodes (optimistic), maybe
                # on another backend or number of episodes: the kept best is re-scored on this run's.
                started = time.perf_counter()
                eval_seeds = episode_seeds(cfg, "controller_eval", 0, c.eval_episodes)
                eval_returns, eval_lengths, _ = run_episodes(
                    policy, pool, np.repeat(best_params[None].astype(np.float32), c.eval_episodes, axis=0), eval_seeds)
                print(f"controller: the carried kept best scores {eval_returns.mean():.1f} on this run's {c.eval_episodes} "
                      f"re-evaluation episodes ({best_score:.1f} in its own run)")
                best_score = float(eval_returns.mean())
                rescored = (len(eval_lengths), int(eval_lengths.sum()), time.perf_counter() - started)
            bar = tqdm(range(start_generation, c.generations), initial=start_generation, total=c.generations,
                       desc="controller", unit="gen")
            for generation in bar:
                started = time.perf_counter()
                solutions = es.ask()
                if dream:
                    # The same start latents for every candidate, as the real envs share seeds: equal terms.
                    generator = dream_generator(cfg.experiment.seed, "fitness", generation, device)
                    returns, lengths, _ = dream_candidates(policy, cfg, starts, solutions, rollouts, generator)
                else:
                    seeds = np.tile(episode_seeds(cfg, "controller", generation * rollouts % 10**6, rollouts), c.population_size)
                    returns, lengths, _ = run_episodes(policy, pool, np.repeat(solutions, rollouts, axis=0), seeds)
                fitness = returns.reshape(c.population_size, rollouts).mean(axis=1)
                es.tell(fitness)
                # Real-env work this generation: the rollouts (real mode), then re-evaluation and video below.
                real_episodes, real_steps = (0, 0) if dream else (len(lengths) + rescored[0], int(lengths.sum()) + rescored[1])
                evaluation = None
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
                    # Score the mean and the generation's best on the evaluation episodes; the better one competes
                    # with the kept best.
                    candidates = np.stack([es.mean, solutions[int(np.argmax(fitness))]]).astype(np.float32)
                    eval_seeds = episode_seeds(cfg, "controller_eval", 0, c.eval_episodes)
                    eval_returns, eval_lengths, _ = run_episodes(policy, pool, np.repeat(candidates, c.eval_episodes, axis=0),
                                                                 np.tile(eval_seeds, 2))
                    real_episodes, real_steps = real_episodes + len(eval_lengths), real_steps + int(eval_lengths.sum())
                    real_scores = eval_returns.reshape(2, c.eval_episodes).mean(axis=1)
                    # In the dream the real scores are watched, never used: M's re-evaluation picks the kept best.
                    scores = dream_scores(policy, cfg, starts, candidates, generation, device) if dream else real_scores
                    winner = int(np.argmax(scores))
                    if scores[winner] > best_score:
                        best_score, best_params = float(scores[winner]), candidates[winner]
                    last_eval = {"eval_mean_params": float(real_scores[0]), "eval_best_candidate": float(real_scores[1])}
                    evaluation = (float(real_scores[0]), float(real_scores[1]))
                    writer.add_scalar("controller/eval_score_mean_params", real_scores[0], step)
                    writer.add_scalar("controller/eval_score_best_candidate", real_scores[1], step)
                    if dream:
                        last_eval.update(dream_eval_mean_params=float(scores[0]), dream_eval_best_candidate=float(scores[1]))
                        writer.add_scalar("controller/dream_eval_score_mean_params", scores[0], step)
                        writer.add_scalar("controller/dream_eval_score_best_candidate", scores[1], step)
                    writer.add_scalar("controller/best_score", best_score, step)

                video_due = c.video_every and (step % c.video_every == 0 or step == c.generations)
                recorded = None
                if video_due and np.isfinite(best_score):
                    _, video_lengths, recorded = run_episodes(policy, pool, best_params[None],
                                                              episode_seeds(cfg, "controller_eval", 0, 1), record_first=True)
                    real_episodes, real_steps = real_episodes + 1, real_steps + int(video_lengths.sum())
                curve.add(carried + step, real_episodes, real_steps, len(lengths) if dream else 0,
                          time.perf_counter() - started + rescored[2], fitness, es.sigma, evaluation, best_score,
                          backend == "envpool")
                rescored = (0, 0, 0.0)
                writer.add_scalar("controller/real_episodes", curve.total("real_episodes"), step)
                writer.add_scalar("controller/real_env_steps", curve.total("real_env_steps"), step)
                save_checkpoint(
                    path, "controller", cfg,
                    best_params=torch.as_tensor(best_params, dtype=torch.float32),
                    mean_params=torch.as_tensor(es.mean, dtype=torch.float32),
                    best_score=best_score,
                    fitness_history=torch.as_tensor(np.stack(es.fitness_history)),
                    generation=step,
                    curve=curve.as_tensor(),
                    layer_shapes=[list(shape) for shape in policy.layer_shapes],
                    **fingerprints,
                    **restart,
                    metrics={"fitness_mean": float(fitness.mean()), "fitness_best": float(fitness.max()),
                             "sigma": es.sigma, **last_eval},
                )
                curve.write_csv(path.with_name("controller_curve.csv"))
                if recorded is not None:
                    log_video(writer, "controller/best_candidate", recorded, step,
                              experiment_dir(cfg, "videos") / f"controller_gen{step:04d}.mp4")
                if video_due and dream:
                    # What M imagines for the generation's best candidate (by dream fitness), drawn by V.
                    best = torch.as_tensor(solutions[int(np.argmax(fitness))], dtype=torch.float32, device=device)
                    frames = dream_video(policy, best, starts, c.temperature, c.dream_max_steps,
                                         dream_generator(cfg.experiment.seed, "video", generation, device), c.dream_done)
                    log_video(writer, "controller/dream_best_candidate", frames, step,
                              experiment_dir(cfg, "videos") / f"dream_gen{step:04d}.mp4")
                bar.set_postfix(fitness=f"{fitness.mean():.1f}/{fitness.max():.1f}", best=f"{best_score:.1f}",
                                sigma=f"{es.sigma:.3f}")
    finally:
        pool.close()
        writer.close()
    where = "its re-evaluation inside M" if dream else f"{c.eval_episodes} evaluation episodes"
    print(f"controller: best score {best_score:.1f} over {where}; checkpoint {path}")
    return path


def main(argv: Optional[list[str]] = None) -> None:
    run_stage(train_controller, __doc__.split("\n")[0], argv)


if __name__ == "__main__":
    run_cli(main)
