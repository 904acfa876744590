"""What DoomTakeCover-v0's stages cost on this machine, to plan its run: collection frames/s and dream steps/s.

    python benchmarks/doom.py             # about 1.5 min (needs EnvPool)
    python benchmarks/doom.py --quick     # 8 + 8 episodes, one dream batch: under a minute

Collection: `play_episodes` with the preset's `repeat` random policy, 32 episodes on EnvPool (one pool per
env, `OneEnvPools`), episode files not written. Then collection by an agent (the iterative procedure's
data): the preset's V, M and C (untrained weights: the same compute) with 10% exploration, 16 episodes of
at most 200 frames, played by one `WorldModelAgent` per episode (a model batch of one per env step) and by
one `WorldModelAgents` for all 16 (one batch); both play the same episodes, and the ratio is printed. Dream: stage 4's `dream_rollouts` for the preset's scale
(z 64, LSTM 512, 5 mixtures, linear C on [z, c, h]) with untrained weights, batches of 256 and of 1,024
rollouts (the paper's 64 x 16) for 200 steps; M's done logit is pinned at -20 so every rollout runs all
200 steps. Speed does not depend on the weights otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from config import get_config  # noqa: E402
from models.agent import WorldModelAgent, WorldModelPolicy  # noqa: E402
from models.loaders import make_controller  # noqa: E402
from models.mdnrnn import MDNRNN  # noqa: E402
from models.vae import ConvVAE  # noqa: E402
from training.dream import dream_rollouts  # noqa: E402
from utils.envpool_envs import play_episodes  # noqa: E402
from utils.environment import RandomAgent, env_action_space  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 + 8 episodes, one dream batch (under a minute)")
    quick = parser.parse_args().quick
    cfg = get_config("DoomTakeCover-v0")
    space = env_action_space(cfg.env)
    seeds = list(range(8 if quick else 32))
    started = time.perf_counter()
    agents = [RandomAgent(space, cfg.collect.policy, cfg.collect.repeat_min, cfg.collect.repeat_max) for _ in seeds]
    frames = sum(episode.length for _, episode in play_episodes(cfg.env, agents, seeds))
    seconds = time.perf_counter() - started
    print(f"collect: {len(seeds)} episodes, {frames} frames in {seconds:.1f} s: {frames / seconds:.0f} frames/s, "
          f"mean length {frames / len(seeds):.0f}")

    c = cfg.controller
    controller = make_controller(cfg, space)
    params = torch.randn(controller.num_parameters, generator=torch.Generator().manual_seed(0)) * 0.1

    def make_agent() -> WorldModelAgent:  # the same weights every time; its own V, M and random generator
        torch.manual_seed(0)
        mdnrnn = MDNRNN(cfg.vae.latent_size, int(space.n), cfg.mdnrnn.hidden_size, cfg.mdnrnn.num_mixtures)
        policy = WorldModelPolicy(ConvVAE(cfg.vae.latent_size), mdnrnn, controller.layer_shapes, space, c.inputs,
                                  exploration=0.1, action_mapping=c.action_mapping)
        return WorldModelAgent(policy, params)

    capped = get_config("DoomTakeCover-v0", overrides=["env.max_episode_steps=200"]).env
    seeds = list(range(8 if quick else 16))
    rates = {}
    for label, agents in (("one agent per episode", [make_agent() for _ in seeds]),
                          ("one batched agent", make_agent().for_episodes(len(seeds)))):
        started = time.perf_counter()
        frames = sum(episode.length for _, episode in play_episodes(capped, agents, seeds))
        rates[label] = frames / (time.perf_counter() - started)
        print(f"collect by an agent, {label}: {len(seeds)} episodes, {frames} frames: {rates[label]:.0f} frames/s")
    batched_ratio = rates["one batched agent"] / rates["one agent per episode"]
    print(f"collect by an agent: batched / per episode = {batched_ratio:.2f}x")

    latent, hidden = cfg.vae.latent_size, cfg.mdnrnn.hidden_size
    actions = int(space.n)
    mdnrnn = MDNRNN(latent, actions, hidden, cfg.mdnrnn.num_mixtures).eval()
    with torch.no_grad():
        mdnrnn.head.weight[-1] = 0.0
        mdnrnn.head.bias[-1] = -20.0  # the done logit: no rollout ends before the step cap
    for rollouts in (256,) if quick else (256, 1024):
        params = torch.randn(rollouts, controller.num_parameters) * 0.1
        started = time.perf_counter()
        result = dream_rollouts(mdnrnn, controller.layer_shapes, params, torch.randn(rollouts, latent), space,
                                cfg.controller.temperature, 200, torch.Generator().manual_seed(0), cfg.controller.inputs,
                                action_mapping=cfg.controller.action_mapping)
        seconds = time.perf_counter() - started
        steps = int(result.lengths.sum())
        print(f"dream: {rollouts} rollouts, {steps} steps in {seconds:.1f} s: {steps / seconds:.0f} dream steps/s "
              f"({torch.get_num_threads()} torch threads)")
    print(f"RESULT doom_agent_collect_batched_vs_per_episode ratio={batched_ratio:.2f} target=2.0")


if __name__ == "__main__":
    main()
