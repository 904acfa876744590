"""The PPO baseline: a model-free reference for the World Models agent.

    python -m training.ppo_baseline --env LunarLander-v3 --experiment ppo-lunar --eval-episodes 100
    python -m training.ppo_baseline --env ALE/Pong-v5 --preset smoke

Every hyperparameter is a field of `PPOConfig` (config.py), tuned per environment there. The loop is
CleanRL's `ppo.py` / `ppo_atari.py` / `ppo_continuous_action.py` restated on Gymnasium 1.x. This file
is the stage: `train_ppo` (the loop), `ppo_update` (one rollout's epochs of minibatch updates),
`evaluate_ppo` and the CLI. The parts it is made of:

* `training/ppo_envs.py`: the env pipeline (Atari wrappers, frame stacking, the same-step-autoreset
  vector env);
* `training/ppo_rollout.py`: the rollout buffer and its collection, GAE, reward normalisation;
* `models/ppo_agent.py`: the network for an env's spaces, and the trained agent evaluation plays.
"""

from __future__ import annotations

import argparse
import time
from collections import deque
from contextlib import closing
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from tqdm import tqdm

from config import Config
from models.ppo_agent import PPOAgent, build_policy
from models.ppo_policy import ActorCritic, ppo_loss
from training.ppo_envs import choose_vector_env, make_ppo_eval_env, make_vector_env, resolve_observation
from training.ppo_rollout import (
    RewardNormalizer,
    Rollout,
    collect_rollout,
    compute_gae,
    explained_variance,
    observations_to_tensor,
)
from training.train_utils import add_common_args, config_from_args, run_cli
from utils.environment import run_episode
from utils.errors import WorldModelsError
from utils.files import checkpoint_path, load_checkpoint, make_writer, require_match, save_checkpoint
from utils.runtime import episode_seeds, resolve_device, seed_everything, torch_threads
from utils.stats import mean_with_ci95


def ppo_torch_threads(cfg: Config) -> int:
    """`ppo.torch_threads` with 0 decided: one thread for state observations, whose 64-unit MLP only
    loses to thread synchronisation; for the CNN, the count torch runs on now (its default)."""
    if cfg.ppo.torch_threads > 0:
        return cfg.ppo.torch_threads
    return 1 if resolve_observation(cfg) == "state" else torch.get_num_threads()


def _check_budget(cfg: Config) -> None:
    """Every other field was checked by get_config; a budget below one batch would train nothing."""
    batch_size = cfg.ppo.num_envs * cfg.ppo.num_steps
    if cfg.ppo.total_timesteps < batch_size:
        raise WorldModelsError(f"ppo.total_timesteps={cfg.ppo.total_timesteps} is less than one batch "
                               f"(ppo.num_envs x ppo.num_steps = {batch_size})")


def train_ppo(cfg: Config) -> Path:
    """Train (or resume) PPO on `cfg.env.env_id`; returns `checkpoints/<experiment>/ppo.pt`.

    torch runs on `ppo_torch_threads(cfg)` CPU threads meanwhile; the caller's count is restored on return.
    """
    _check_budget(cfg)
    ppo = cfg.ppo
    observation_kind, vector_kind = resolve_observation(cfg), choose_vector_env(cfg)
    batch_size = ppo.num_envs * ppo.num_steps
    minibatch_size = batch_size // ppo.num_minibatches
    num_iterations = ppo.total_timesteps // batch_size
    path = checkpoint_path(cfg, "ppo")
    checkpoint = load_checkpoint(path, "ppo", cfg.env.env_id) if path.is_file() else None
    if checkpoint is not None and checkpoint["iteration"] >= num_iterations:
        print(f"ppo: {path} already holds {checkpoint['global_step']} steps "
              f"(ppo.total_timesteps={ppo.total_timesteps}); nothing to do")
        return path

    device = resolve_device(cfg.experiment.device)
    seed_everything(cfg.experiment.seed)
    with torch_threads(ppo_torch_threads(cfg)), closing(make_vector_env(cfg, vector_kind)) as envs:
        observation_space, action_space = envs.single_observation_space, envs.single_action_space
        policy = build_policy(cfg, observation_space, action_space).to(device)
        optimizer = torch.optim.Adam(policy.parameters(), lr=ppo.learning_rate, eps=1e-5)
        reward_normalizer = RewardNormalizer(ppo.num_envs, ppo.gamma) if ppo.normalize_reward else None
        global_step, iteration = 0, 0
        if checkpoint is not None:
            require_match("observation shape", tuple(checkpoint["observation_shape"]), observation_space.shape, path)
            policy.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            global_step, iteration = checkpoint["global_step"], checkpoint["iteration"]
            torch.set_rng_state(checkpoint["torch_rng_state"])
            if device.type == "cuda" and "cuda_rng_state" in checkpoint:  # on CUDA, sampling draws from the device's
                torch.cuda.set_rng_state(checkpoint["cuda_rng_state"], device)
            if reward_normalizer is not None and "reward_rms" in checkpoint:
                reward_normalizer.return_rms.load_state_dict(checkpoint["reward_rms"])
        continuous = policy.continuous

        def save(metrics: dict[str, float]) -> None:
            payload: dict[str, Any] = dict(
                model=policy.state_dict(), optimizer=optimizer.state_dict(), global_step=global_step,
                iteration=iteration, observation=observation_kind, observation_shape=list(observation_space.shape),
                action_dim=policy.action_dim, continuous=continuous, torch_rng_state=torch.get_rng_state(),
                metrics=metrics,
            )
            if device.type == "cuda":
                payload["cuda_rng_state"] = torch.cuda.get_rng_state(device)
            if continuous:
                payload.update(action_low=torch.as_tensor(action_space.low),
                               action_high=torch.as_tensor(action_space.high))
            if reward_normalizer is not None:
                payload["reward_rms"] = reward_normalizer.return_rms.state_dict()
            save_checkpoint(path, "ppo", cfg, **payload)

        rollout = Rollout.allocate(ppo.num_steps, ppo.num_envs, policy, device)
        writer = make_writer(cfg, "ppo")
        print(f"ppo: {cfg.env.env_id} ({observation_kind} observations {tuple(observation_space.shape)}, "
              f"{ppo.num_envs} {vector_kind} envs x {ppo.num_steps} steps, {num_iterations} iterations) on {device}"
              + (f"; resuming at step {global_step}" if global_step else ""))
        recent_returns: deque[float] = deque(maxlen=20)
        # A resumed run restarts its episodes; fresh seeds keep it from replaying the first run's ones.
        next_obs_raw, _ = envs.reset(seed=int(episode_seeds(cfg, "ppo", iteration * ppo.num_envs % 10**6, 1)[0]))
        next_obs = policy.preprocess(observations_to_tensor(next_obs_raw, device), update_stats=True)
        start_time, start_step = time.perf_counter(), global_step
        metrics: dict[str, float] = {}
        with writer, tqdm(total=num_iterations * batch_size, initial=global_step, desc="ppo", unit="step",
                          dynamic_ncols=True) as bar:
            while iteration < num_iterations:
                iteration += 1
                learning_rate = ppo.learning_rate * (1.0 - (iteration - 1) / num_iterations if ppo.anneal_lr else 1.0)
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate

                next_obs, episodes = collect_rollout(policy, envs, rollout, next_obs, reward_normalizer)
                for step_index, episode_return, episode_length in episodes:
                    recent_returns.append(episode_return)
                    episode_step = global_step + (step_index + 1) * ppo.num_envs
                    writer.add_scalar("charts/episodic_return", episode_return, episode_step)
                    writer.add_scalar("charts/episodic_length", episode_length, episode_step)
                global_step += batch_size
                advantages, returns = compute_gae(rollout.rewards, rollout.values, rollout.next_values,
                                                  rollout.terminated, rollout.episode_ends, ppo.gamma, ppo.gae_lambda)
                metrics = ppo_update(policy, optimizer, cfg, minibatch_size, rollout, advantages, returns)

                sps = (global_step - start_step) / (time.perf_counter() - start_time)
                for name, value in metrics.items():
                    writer.add_scalar(f"losses/{name}", value, global_step)
                writer.add_scalar("charts/learning_rate", learning_rate, global_step)
                writer.add_scalar("charts/SPS", sps, global_step)
                if recent_returns:
                    metrics["episodic_return_mean"] = float(np.mean(recent_returns))
                bar.update(batch_size)
                bar.set_postfix(ret=f"{np.mean(recent_returns):.1f}" if recent_returns else "-", sps=f"{sps:.0f}")
                if iteration % ppo.checkpoint_every == 0 or iteration == num_iterations:
                    save(metrics)
    print(f"ppo: {global_step} steps done; checkpoint {path}")
    return path


def ppo_update(policy: ActorCritic, optimizer: torch.optim.Optimizer, cfg: Config, minibatch_size: int,
               rollout: Rollout, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:
    """`update_epochs` passes of shuffled minibatches over one rollout, flattened to `T*N` samples;
    `advantages` and `returns` are `(T, N)` from `compute_gae`.

    Returns the losses averaged over minibatches, plus the explained variance of the rollout's values.
    """
    ppo = cfg.ppo
    observations = rollout.observations.flatten(0, 1)
    actions, old_logprobs = rollout.actions.flatten(0, 1), rollout.logprobs.flatten(0, 1)
    old_values, advantages, returns = rollout.values.flatten(0, 1), advantages.flatten(0, 1), returns.flatten(0, 1)
    batch_size = observations.shape[0]
    totals: dict[str, torch.Tensor] = {}
    count = 0
    for _ in range(ppo.update_epochs):
        order = torch.randperm(batch_size, device=observations.device)
        for start in range(0, batch_size, minibatch_size):
            index = order[start:start + minibatch_size]
            _, new_logprob, entropy, new_value = policy.get_action_and_value(observations[index], actions[index])
            loss, stats = ppo_loss(new_logprob, old_logprobs[index], advantages[index], new_value, old_values[index],
                                   returns[index], entropy, ppo.clip_coef, ppo.clip_vloss, ppo.ent_coef, ppo.vf_coef)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), ppo.max_grad_norm)
            optimizer.step()
            for name, value in stats.items():
                totals[name] = totals.get(name, 0.0) + value
            count += 1
        # Stop the epochs early once the policy has moved too far (Huang et al. 2022, detail 11 option).
        if ppo.target_kl > 0 and float(stats["approx_kl"]) > ppo.target_kl:
            break
    metrics = {name: float(total) / count for name, total in totals.items()}
    metrics["explained_variance"] = explained_variance(old_values, returns)
    return metrics


def evaluate_ppo(cfg: Config, episodes: int, device: Union[str, torch.device] = "cpu") -> np.ndarray:
    """Returns `(episodes,)` of the deterministic agent on `make_ppo_eval_env`, on the same seeded
    episodes as `evaluate.py` (disjoint from every training seed)."""
    agent = PPOAgent.from_checkpoint(cfg, device)
    env = make_ppo_eval_env(agent.config, max_episode_steps=cfg.env.max_episode_steps)
    seeds = episode_seeds(cfg, "evaluate", 0, episodes)
    returns = [run_episode(env, agent, int(seed), record=False).total_reward for seed in seeds]
    env.close()
    return np.asarray(returns, dtype=np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--eval-episodes", type=int, default=0,
                        help="after training, evaluate the deterministic policy on this many episodes")
    args = parser.parse_args()
    cfg = config_from_args(args)
    train_ppo(cfg)
    if args.eval_episodes > 0:
        start = time.perf_counter()
        returns = evaluate_ppo(cfg, args.eval_episodes)
        mean, std, low, high = mean_with_ci95(returns)
        print(f"ppo eval: {cfg.env.env_id} mean return {mean:.1f} ± {std:.1f} (95% CI {low:.1f}-{high:.1f}; min "
              f"{returns.min():.1f}, max {returns.max():.1f}) over {args.eval_episodes} episodes "
              f"in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    run_cli(main)
