"""What DoomTakeCover-v0's stages cost on this machine, to plan its run: collection frames/s and dream steps/s.

    python benchmarks/doom.py             # about 40 s (needs EnvPool)

Collection: `play_episodes` with the preset's `repeat` random policy, 32 episodes on EnvPool (one pool per
env, `OneEnvPools`), episode files not written. Dream: stage 4's `dream_rollouts` for the preset's scale
(z 64, LSTM 512, 5 mixtures, linear C on [z, c, h]) with untrained weights, batches of 256 and of 1,024
rollouts (the paper's 64 x 16) for 200 steps; M's done logit is pinned at -20 so every rollout runs all
200 steps. Speed does not depend on the weights otherwise.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from config import get_config  # noqa: E402
from models.loaders import make_controller  # noqa: E402
from models.mdnrnn import MDNRNN  # noqa: E402
from training.dream import dream_rollouts  # noqa: E402
from utils.envpool_envs import play_episodes  # noqa: E402
from utils.environment import RandomAgent, env_action_space  # noqa: E402


def main() -> None:
    cfg = get_config("DoomTakeCover-v0")
    space = env_action_space(cfg.env)
    seeds = list(range(32))
    started = time.perf_counter()
    agents = [RandomAgent(space, cfg.collect.policy, cfg.collect.repeat_min, cfg.collect.repeat_max) for _ in seeds]
    frames = sum(episode.length for _, episode in play_episodes(cfg.env, agents, seeds))
    seconds = time.perf_counter() - started
    print(f"collect: {len(seeds)} episodes, {frames} frames in {seconds:.1f} s: {frames / seconds:.0f} frames/s, "
          f"mean length {frames / len(seeds):.0f}")

    torch.manual_seed(0)
    latent, hidden = cfg.vae.latent_size, cfg.mdnrnn.hidden_size
    actions = int(space.n)
    mdnrnn = MDNRNN(latent, actions, hidden, cfg.mdnrnn.num_mixtures).eval()
    with torch.no_grad():
        mdnrnn.head.weight[-1] = 0.0
        mdnrnn.head.bias[-1] = -20.0  # the done logit: no rollout ends before the step cap
    controller = make_controller(cfg, space)
    for rollouts in (256, 1024):
        params = torch.randn(rollouts, controller.num_parameters) * 0.1
        started = time.perf_counter()
        result = dream_rollouts(mdnrnn, controller.layer_shapes, params, torch.randn(rollouts, latent), space,
                                cfg.controller.temperature, 200, torch.Generator().manual_seed(0), cfg.controller.inputs,
                                action_mapping=cfg.controller.action_mapping)
        seconds = time.perf_counter() - started
        steps = int(result.lengths.sum())
        print(f"dream: {rollouts} rollouts, {steps} steps in {seconds:.1f} s: {steps / seconds:.0f} dream steps/s "
              f"({torch.get_num_threads()} torch threads)")


if __name__ == "__main__":
    main()
