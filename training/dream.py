"""The dream: controllers play inside M instead of the environment (Ha & Schmidhuber 2018, section 4.4).

A dream episode starts from a latent z_0 of a real frame and then never sees a frame again. Per step t:

    a_t = C([z_t, h_t])                 (or C(z_t) with controller.inputs=z, C([z_t, c_t, h_t]) with zch)
    log_pi, mu, log_sigma, r_t, done_logit, h_{t+1} = M(z_t, a_t, h_t)
    z_{t+1} ~ mixture(log_pi, mu, log_sigma) at temperature tau       (`sample_next_z`)
    done_t  ~ Bernoulli(sigmoid(done_logit))    (controller.dream_done=sample; =threshold: done_logit > 0)

and the episode ends on done_t or after `max_steps` steps; its return is the sum of M's predicted r_t.

Choices, and why:
* Start latents are the first frames of the collected episodes, z_0 ~ N(mu, sigma^2) of V's posterior
  (as the paper's code seeds its dream with `initial_z`): the dream starts where real episodes start,
  so its returns are comparable with the real ones, and the posterior sample adds the variety a single
  mean would not.
* done is sampled, not thresholded at 0.5: M's done head estimates a per-step termination probability,
  and for a LunarLander M that puts 1-5% on a crash step a 0.5 threshold would never end an episode;
  sampling keeps the expected episode length M learned. The original's Doom code thresholds at logit 0
  instead, on a head trained with deaths weighted 10x (`mdnrnn.done_positive_weight`), which fires at
  about a calibrated 9%: a dream that kills sooner than the game. Both are config choices.
* Every step draws its random numbers for all E episodes at once (`draw_step_noise`), finished or not,
  and row e only ever uses row e of them. Episode e's rollout therefore depends on its own parameters,
  start latent and noise rows only: batched and one-at-a-time rollouts agree exactly (tests/test_dream.py),
  and the same seed gives the same fitness however many episodes have finished. (With
  `controller.sample_actions` the discrete action draw is the exception: it takes one draw per running
  episode, so it depends on the batch.)
* Finished episodes are dropped from the batch (their rows are compacted away), so a population whose
  episodes end early costs less than `max_steps` full-batch steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import gymnasium as gym
import numpy as np
import torch

from config import Config
from models.agent import WorldModelPolicy
from models.controller import controller_input, outputs_to_actions, population_forward
from models.loaders import weights_fingerprint
from models.mdnrnn import MDNRNN, sample_next_z
from models.vae import ConvVAE, sample_latent
from training.latents import load_or_encode_latents, rollouts_fingerprint
from utils.data import require_episodes
from utils.errors import WorldModelsError
from utils.files import experiment_dir, read_fingerprinted_npz, write_fingerprinted_npz

# Independent random streams of the dream, one per use, so e.g. recording a video never shifts fitness.
DREAM_PURPOSES = {"fitness": 0, "video": 1, "evaluate": 2, "reevaluate": 3}


class StepNoise(NamedTuple):
    """The random numbers of one dream step for E episodes."""

    component_uniform: torch.Tensor  # (E, K, Z) in [0, 1): Gumbel-max choice of each dimension's component
    normal: torch.Tensor  # (E, Z) standard normal: the Gaussian draw within the chosen component
    done_uniform: torch.Tensor  # (E,) in [0, 1): done_t = done_uniform < sigmoid(done_logit)


class DreamResult(NamedTuple):
    """returns (E,) float64, lengths (E,) int64, and episode 0's latents z_0..z_{T-1} (T, Z) or None."""

    returns: np.ndarray
    lengths: np.ndarray
    first_latents: Optional[torch.Tensor]


def dream_generator(seed: int, purpose: str, generation: int, device: torch.device | str) -> torch.Generator:
    """A torch generator on `device` that depends on (seed, purpose, generation) only: a resumed run draws
    the dream an uninterrupted one would have, so fitness is a pure function of those three."""
    state = np.random.SeedSequence([seed, DREAM_PURPOSES[purpose], generation]).generate_state(1, np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) & (2**63 - 1))


def draw_step_noise(generator: torch.Generator, num_episodes: int, num_mixtures: int, latent_size: int,
                    device: torch.device | str) -> StepNoise:
    """One step's random numbers for `num_episodes` episodes, drawn in a fixed order from `generator`."""
    options = dict(generator=generator, device=device)
    return StepNoise(
        component_uniform=torch.rand((num_episodes, num_mixtures, latent_size), **options),
        normal=torch.randn((num_episodes, latent_size), **options),
        done_uniform=torch.rand((num_episodes,), **options),
    )


def episode_start_latents(mu: np.ndarray, logvar: np.ndarray, offsets: np.ndarray,
                          device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """V's posterior of each episode's first frame, from a latent cache's mu, logvar (N, Z) and
    offsets (S + 1,): (start_mu, start_logvar), each (S, Z) float32 on `device`."""
    if len(offsets) < 2:
        raise WorldModelsError("the latent cache holds no episodes; the dream needs real start frames")
    rows = np.asarray(offsets[:-1], dtype=np.int64)
    return (torch.as_tensor(mu[rows], dtype=torch.float32, device=device),
            torch.as_tensor(logvar[rows], dtype=torch.float32, device=device))


DREAM_STARTS_FILE = "dream_starts.npz"


def dream_starts_path(cfg: Config) -> Path:
    """`checkpoints/<experiment>/dream_starts.npz`: the dream's start latents, beside the V they come from."""
    return experiment_dir(cfg, "checkpoints") / DREAM_STARTS_FILE


def load_dream_starts(cfg: Config, vae: ConvVAE, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Where `cfg`'s dreams start: V's posterior (start_mu, start_logvar), each (S, Z) on `device`, of
    the first frame of each of the S collected episodes.

    They are kept in `dream_starts_path` (S x Z x 2 floats: 0.5 MB for Doom's 1,000 episodes, where the
    latent cache of every frame is 140 MB), so a folder of committed weights can still dream, and a
    dream-trained C resume, on a machine that has no collected data. The file is used while its V is
    the current one and, where the rollouts exist, while they are the ones it was made from; otherwise
    it is rebuilt from the latent cache.
    """
    path = dream_starts_path(cfg)
    try:
        paths = require_episodes(cfg)
    except WorldModelsError:
        paths = []  # no data on this machine: only a saved file of this V's starts will do
    fingerprints = {"vae_fingerprint": weights_fingerprint(vae)}
    if paths:
        fingerprints["rollouts_fingerprint"] = rollouts_fingerprint(paths)
    saved, _ = read_fingerprinted_npz(path, fingerprints, ("start_mu", "start_logvar"))
    if saved is not None:
        return torch.as_tensor(saved["start_mu"], device=device), torch.as_tensor(saved["start_logvar"], device=device)
    if not paths:
        require_episodes(cfg)  # its one-line error: which folder is empty and the command that fills it
    cache = load_or_encode_latents(cfg, vae, paths, device)
    # Every frame's latents can be hundreds of MB; the dream keeps the first frames' only.
    start_mu, start_logvar = episode_start_latents(cache.mu, cache.logvar, cache.offsets, "cpu")
    write_fingerprinted_npz(path, fingerprints, start_mu=start_mu.numpy(), start_logvar=start_logvar.numpy())
    return start_mu.to(device), start_logvar.to(device)


def sample_start_latents(start_mu: torch.Tensor, start_logvar: torch.Tensor, count: int,
                         generator: torch.Generator) -> torch.Tensor:
    """`count` start latents (count, Z): a uniformly chosen episode start each, z ~ N(mu, exp(logvar))."""
    index = torch.randint(len(start_mu), (count,), generator=generator, device=start_mu.device)
    return sample_latent(start_mu[index], start_logvar[index], generator)


@torch.no_grad()
def dream_rollouts(
    mdnrnn: MDNRNN,
    layer_shapes: Sequence[tuple[int, int]],
    params: torch.Tensor,
    start_z: torch.Tensor,
    action_space: gym.Space,
    temperature: float,
    max_steps: int,
    generator: torch.Generator,
    inputs: str = "zh",
    sample_actions: bool = False,
    record_first: bool = False,
    action_mapping: str = "squash",
    done_rule: str = "sample",
) -> DreamResult:
    """Play episode e with controller parameters params[e] from start_z[e] inside M, all E episodes as one
    batch per step. params: (E, N) float32 and start_z: (E, Z) float32, both on M's device.

    `sample_actions` draws discrete actions from the softmax (with `generator`); that draw depends on the
    batch, so the batched == one-at-a-time guarantee holds for deterministic actions only. `done_rule`:
    "sample" ends an episode with probability sigmoid(done_logit), "threshold" when done_logit > 0.
    """
    if params.shape[0] != start_z.shape[0] or start_z.shape[1] != mdnrnn.latent_size:
        raise WorldModelsError(f"dream_rollouts needs params (E, N) and start_z (E, {mdnrnn.latent_size}), "
                               f"got {tuple(params.shape)} and {tuple(start_z.shape)}")
    if max_steps < 1:
        raise WorldModelsError(f"controller.dream_max_steps must be >= 1, got {max_steps}")
    total, device = params.shape[0], params.device
    returns = torch.zeros(total, dtype=torch.float64, device=device)
    lengths = torch.zeros(total, dtype=torch.int64, device=device)
    active = torch.arange(total, device=device)  # the episodes still running, in the order of the batch rows
    z, hidden, active_params = start_z.float(), mdnrnn.initial_state(total, device), params
    recorded: list[torch.Tensor] = []
    for _ in range(max_steps):
        noise = draw_step_noise(generator, total, mdnrnn.num_mixtures, mdnrnn.latent_size, device)
        if record_first and active[0] == 0:
            recorded.append(z[0])
        outputs = population_forward(layer_shapes, active_params, controller_input(z, hidden, inputs))
        actions = outputs_to_actions(outputs, action_space, sample_actions, generator, action_mapping)
        prediction, hidden = mdnrnn.step(z, actions, hidden)
        returns[active] += prediction.reward.double()
        lengths[active] += 1
        z = sample_next_z(prediction.log_pi, prediction.mu, prediction.log_sigma, temperature,
                          noise=(noise.component_uniform[active], noise.normal[active]))
        if done_rule == "threshold":
            running = prediction.done_logit <= 0
        else:
            running = noise.done_uniform[active] >= torch.sigmoid(prediction.done_logit)
        if not bool(running.all()):
            active, z, active_params = active[running], z[running], active_params[running]
            hidden = (hidden[0][:, running], hidden[1][:, running])
            if active.numel() == 0:
                break
    first = torch.stack(recorded) if recorded else None
    return DreamResult(returns.cpu().numpy(), lengths.cpu().numpy(), first)


@torch.no_grad()
def decode_latents(vae: ConvVAE, latents: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """What V draws for latents (T, Z): frames (T, 64, 64, 3) uint8, decoded `batch_size` at a time."""
    frames = []
    for start in range(0, len(latents), batch_size):
        images = vae.decode(latents[start : start + batch_size].float()).float()
        frames.append((images.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().byte().cpu().numpy())
    return np.concatenate(frames)


def dream_video(policy: WorldModelPolicy, params: torch.Tensor, starts: tuple[torch.Tensor, torch.Tensor],
                temperature: float, max_steps: int, generator: torch.Generator, done_rule: str = "sample") -> np.ndarray:
    """What M imagines for one controller, drawn by V: a dream of C with params (N,) from a start latent
    sampled from `starts` (`load_dream_starts`), decoded into frames (T, 64, 64, 3) uint8."""
    start_z = sample_start_latents(*starts, 1, generator)
    result = dream_rollouts(policy.mdnrnn, policy.layer_shapes, params[None], start_z, policy.action_space,
                            temperature, max_steps, generator, policy.inputs, policy.sample_actions, record_first=True,
                            action_mapping=policy.action_mapping, done_rule=done_rule)
    return decode_latents(policy.vae, result.first_latents)


def dream_candidates(policy: WorldModelPolicy, cfg: Config, starts: tuple[torch.Tensor, torch.Tensor],
                     candidates: np.ndarray | torch.Tensor, episodes: int, generator: torch.Generator,
                     temperature: Optional[float] = None) -> DreamResult:
    """Each of the K candidates (K, N) plays `episodes` dream episodes, all from the same `episodes` start
    latents drawn from `starts` (common random numbers: candidates are ranked on equal terms), up to
    `controller.dream_max_steps` with `controller.dream_done`, at `temperature` (default:
    `controller.temperature`). The result's rows are candidate-major: row k * episodes + i is candidate
    k's episode i."""
    c = cfg.controller
    start_z = sample_start_latents(*starts, episodes, generator).repeat(len(candidates), 1)
    params = torch.as_tensor(candidates, dtype=torch.float32, device=start_z.device).repeat_interleave(episodes, 0)
    return dream_rollouts(policy.mdnrnn, policy.layer_shapes, params, start_z, policy.action_space,
                          c.temperature if temperature is None else temperature, c.dream_max_steps, generator,
                          policy.inputs, policy.sample_actions, action_mapping=policy.action_mapping,
                          done_rule=c.dream_done)


def dream_scores(policy: WorldModelPolicy, cfg: Config, starts: tuple[torch.Tensor, torch.Tensor],
                 candidates: np.ndarray, generation: int, device: torch.device) -> np.ndarray:
    """The re-evaluation in the dream: candidates (K, N) -> (K,) mean dream returns. The K candidates share
    one generation's worth of dream episodes (population_size x rollouts_per_candidate), each playing its
    share from the same start latents, with random numbers of their own purpose (`reevaluate`)."""
    c = cfg.controller
    episodes = max(1, c.population_size * c.rollouts_per_candidate // len(candidates))
    generator = dream_generator(cfg.experiment.seed, "reevaluate", generation, device)
    returns = dream_candidates(policy, cfg, starts, candidates, episodes, generator).returns
    return returns.reshape(len(candidates), episodes).mean(axis=1)
