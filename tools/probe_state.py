"""Linear probe: how much of a rendered env's true state can be read off V's latent z?

    python tools/probe_state.py --env LunarLander-v3 --experiment wm-lunar            # ~1 min
    python tools/probe_state.py --env LunarLander-v3 --experiment wm-lunar --episodes 200
    python tools/probe_state.py --env LunarLander-v3 --experiment wm-lunar --memory   # also h and [z, h]

For envs whose frames are rendered from a state vector (LunarLander), each frame comes with the state
it shows (`info["state"]`). Episodes of the collection policy (`collect.policy`, seeds of the
evaluation range, so none is in V's training data) are encoded to z = V's posterior mean; a ridge
regression from z to each state dimension is fitted on the first 3/4 of the episodes and scored (R^2)
on the rest. R^2 near 1: z holds that quantity linearly; near 0 or below: V did not encode it (or not
linearly). C is linear in [z, h], so a linear probe measures what C can read. `--memory` also probes
h_t, M's state before step t (M fed each step's z and action, as the agent feeds it): h is what can
carry velocities, which one frame cannot show.

CarRacing-v3 has no state vector; its probe reads the car from Gymnasium's game instead: speed and yaw
rate, which the cropped frame (no dashboard) does not show. There the episodes are best driven by a
trained C (`--driver EXPERIMENT`: that experiment's kept best or, with `experiment.controller_params=mean`,
its CMA-ES mean), so that the probe sees the states C meets. The same driver and seeds give the same
episodes, so two experiments' V and M (e.g. two Ms on one V) compare on identical frames:

    python tools/probe_state.py --env CarRacing-v3 --experiment carracing-v3-round2 --memory \
        --driver carracing-v3-round2 --episodes 16
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from models.loaders import load_mdnrnn, load_vae, load_world_model_agent  # noqa: E402
from models.vae import frames_to_input  # noqa: E402
from training.train_utils import add_common_args, config_from_args, run_cli  # noqa: E402
from utils.actions import action_to_vector  # noqa: E402
from utils.environment import Agent, RandomAgent, make_frame_env, resolve_env_id  # noqa: E402
from utils.errors import WorldModelsError  # noqa: E402
from utils.files import trained_config  # noqa: E402
from utils.runtime import episode_seeds, resolve_device  # noqa: E402

# What each env's probed state holds: LunarLander's 8-d state vector, CarRacing's car as the game has it
# (Box2D units); other envs' dimensions are numbered.
STATE_NAMES = {"LunarLander-v3": ("x", "y", "vx", "vy", "angle", "angular velocity", "left leg down", "right leg down"),
               "CarRacing-v3": ("speed", "yaw rate")}
RIDGE = 1e-2  # keeps the 33x33 normal equations well conditioned when a latent dim is inactive


def read_state(env: Any, info: dict[str, Any]) -> np.ndarray:
    """(D,) float64: the true state the current frame shows. Rendered envs carry it in `info["state"]`;
    for Gymnasium's CarRacing it is read off the game: the car's speed and yaw rate."""
    if "state" in info:
        return np.asarray(info["state"], np.float64)
    car = getattr(env.unwrapped, "car", None)
    if car is None:
        raise WorldModelsError(f"{env.unwrapped.spec.id if env.unwrapped.spec else env}: its observation is the "
                               "picture itself, with no state vector to probe (probed: LunarLander-v3, CarRacing-v3)")
    velocity = car.hull.linearVelocity
    return np.array([np.hypot(velocity[0], velocity[1]), car.hull.angularVelocity], np.float64)


def play(cfg, episodes: int, driver: Optional[Agent] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Frames (N, 64, 64, 3) uint8, states (N, D) float64, action vectors (N, A) float32 and episode
    indices (N,) of `episodes` episodes on evaluate.py's seeds, played by `driver` (a trained agent) or
    else by the collection policy."""
    env = make_frame_env(cfg.env)
    agent = driver or RandomAgent(env.action_space, cfg.collect.policy, cfg.collect.repeat_min,
                                  cfg.collect.repeat_max, cfg.collect.walk_sigma)
    frames, states, actions, episode_index = [], [], [], []
    for index, seed in enumerate(tqdm(episode_seeds(cfg, "evaluate", 0, episodes), desc="probe episodes", unit="ep")):
        frame, info = env.reset(seed=int(seed))
        agent.reset(int(seed))
        done = False
        while not done:
            frames.append(frame)
            states.append(read_state(env, info))
            episode_index.append(index)
            action = agent.act(frame)
            actions.append(action_to_vector(action, env.action_space))
            frame, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
    env.close()
    return np.stack(frames), np.stack(states), np.stack(actions), np.asarray(episode_index)


@torch.no_grad()
def memory_states(mdnrnn, z: torch.Tensor, actions: torch.Tensor, episode_index: np.ndarray) -> np.ndarray:
    """(N, hidden_size) h_t of each step: M's state after the episode's steps before t (zero at t = 0).

    One LSTM pass per episode: its output at step t is the h that the agent's C sees at step t + 1.
    """
    hidden_states = []
    for episode in np.unique(episode_index):
        steps = torch.as_tensor(np.flatnonzero(episode_index == episode), device=z.device)
        outputs, _ = mdnrnn.lstm(torch.cat([z[steps], actions[steps]], dim=-1).unsqueeze(0))
        hidden_states.append(torch.cat([outputs.new_zeros(1, mdnrnn.hidden_size), outputs[0, :-1]]).cpu().numpy())
    return np.concatenate(hidden_states).astype(np.float64)


def ridge_r2(features: np.ndarray, targets: np.ndarray, train: np.ndarray) -> np.ndarray:
    """(D,) R^2 on the rows not in `train` of a ridge regression fitted on the rows in `train`."""
    x = np.hstack([features, np.ones((len(features), 1))])
    weights = np.linalg.solve(x[train].T @ x[train] + RIDGE * np.eye(x.shape[1]), x[train].T @ targets[train])
    residual = ((x[~train] @ weights - targets[~train]) ** 2).mean(0)
    return 1.0 - residual / np.maximum(targets[~train].var(0), 1e-12)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, default_env="LunarLander-v3")
    parser.add_argument("--episodes", type=int, default=120, help="episodes played (3/4 fit, 1/4 score)")
    parser.add_argument("--memory", action="store_true", help="also probe h (M's state) and [z, h]")
    parser.add_argument("--driver", default="", help="the experiment whose trained C plays the episodes "
                        "(default: the collection policy)")
    args = parser.parse_args(argv)
    if args.episodes < 4:
        raise WorldModelsError(f"--episodes must be >= 4 (3/4 fit the probe, 1/4 score it), got {args.episodes}")
    if resolve_env_id(args.env) == "CarRacing-v3":
        if args.backend not in (None, "gymnasium"):
            raise WorldModelsError(f"--backend {args.backend}: CarRacing's state is read from Gymnasium's game "
                                   "(EnvPool does not expose the car; leave --backend out)")
        args.backend = "gymnasium"
    cfg = config_from_args(args)
    device = resolve_device(cfg.experiment.device)
    vae = load_vae(cfg, device)
    mdnrnn = load_mdnrnn(cfg, device, vae=vae) if args.memory else None
    driver = None
    if args.driver:
        driver_cfg = copy.deepcopy(cfg)
        driver_cfg.experiment.name = args.driver
        driver_cfg = trained_config(driver_cfg, "controller")
        driver_framing, framing = ((e.crop_top, e.crop_bottom, e.frame_size) for e in (driver_cfg.env, cfg.env))
        if driver_framing != framing:
            raise WorldModelsError(f"--driver {args.driver}: its frames (crop top, crop bottom, size) are "
                                   f"{driver_framing}, this experiment's {framing}; the probe "
                                   "must see the frames the driver's C saw")
        driver = load_world_model_agent(driver_cfg, device)
    frames, states, actions, episode_index = play(cfg, args.episodes, driver)
    with torch.no_grad():
        z = torch.cat([vae.encode(frames_to_input(frames[start : start + 512], device, channels_last=False))[0].float()
                       for start in range(0, len(frames), 512)])
    features = {"z": z.cpu().numpy().astype(np.float64)}
    if mdnrnn is not None:
        features["h"] = memory_states(mdnrnn, z, torch.as_tensor(actions, device=device), episode_index)
        features["[z, h]"] = np.hstack([features["z"], features["h"]])
    train = episode_index < (3 * args.episodes) // 4
    r2 = {name: ridge_r2(values, states, train) for name, values in features.items()}
    names = STATE_NAMES.get(cfg.env.env_id, tuple(f"state[{d}]" for d in range(states.shape[1])))
    print(f"\n{cfg.env.env_id}, experiment {cfg.experiment_name}: {len(frames)} frames of {args.episodes} episodes "
          f"({int(train.sum())} fit, {int((~train).sum())} scored); R^2 of each state dimension")
    print(f"  {'':18s}" + "".join(f"{name:>9s}" for name in r2))
    for dim, name in enumerate(names):
        print(f"  {name:18s}" + "".join(f"{values[dim]:9.3f}" for values in r2.values()))


if __name__ == "__main__":
    run_cli(main)
