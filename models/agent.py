"""V + M + C composed into a policy.

`WorldModelPolicy` steps E episodes at once — one VAE encode and one LSTM step for all of them, every
episode with its own controller parameters — which is what CMA-ES population evaluation needs.
`WorldModelAgent` is the same policy for one episode behind the evaluation protocol
(`reset()` / `act(frame)`), so training and evaluation share one code path.

Per step t (paper, section 3): z_t = mu_V(frame_t) (or a draw from V's posterior, `sample_z`);
a_t = C([z_t, h_t]) (or C(z_t), or C([z_t, c_t, h_t]): `controller.inputs`); h_{t+1} = M(z_t, a_t, h_t).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence

import gymnasium as gym
import numpy as np
import torch

from models.controller import controller_input, explore_actions, outputs_to_actions, population_forward
from models.mdnrnn import MDNRNN, Hidden, mixture_mean
from models.vae import ConvVAE, PosteriorMeanEncoder, frames_to_input, sample_latent
from utils.actions import vectors_to_actions
from utils.runtime import draw_rows


class PolicyStep(NamedTuple):
    """What one step of the policy computed for E episodes."""

    env_actions: list[Any]  # E actions in the env's format
    action_vectors: torch.Tensor  # (E, A) float32, one-hot for discrete
    hidden: Hidden  # M's next state (h, c), each (1, E, H)
    z: torch.Tensor  # (E, latent_size): V's encoding of the frame (posterior mean, or a draw with sample_z)
    predicted_next_z: torch.Tensor  # (E, latent_size): M's expectation of z_{t+1}


class WorldModelPolicy:
    """Batched V -> C -> M. `inputs="zh"` feeds C [z_t, h_t]; `"z"` feeds z_t only (the ablation); `"zch"`
    feeds [z_t, c_t, h_t] (the paper's Doom C).

    `exploration` > 0 perturbs C's actions (`explore_actions`) before they reach the env and M, so M's
    state follows the action actually taken; stage 1 uses it to collect data with a trained C. (One
    exception: on a step where `env.fire_to_serve` plays FIRE instead, M's state follows C's choice; the
    env replaces the action after C and M have run.)
    `sample_z` draws z ~ N(mu, exp(logvar)) from V's posterior instead of taking mu, and C and M both get
    that draw: what the paper's CarRacing code does (a noisier input that C must be robust to).
    """

    def __init__(self, vae: ConvVAE, mdnrnn: MDNRNN, layer_shapes: Sequence[tuple[int, int]], action_space: gym.Space,
                 inputs: str = "zh", sample_actions: bool = False, device: torch.device | str = "cpu", seed: int = 0,
                 exploration: float = 0.0, action_mapping: str = "squash", sample_z: bool = False):
        self.vae, self.mdnrnn = vae.eval(), mdnrnn.eval()
        self.encoder = PosteriorMeanEncoder(self.vae)  # V's mu, BatchNorm folded, channels_last: ~2x on CPU
        self.layer_shapes = list(layer_shapes)
        self.action_space, self.inputs, self.sample_actions = action_space, inputs, sample_actions
        self.exploration, self.action_mapping, self.sample_z = exploration, action_mapping, sample_z
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def initial_state(self, num_episodes: int) -> Hidden:
        return self.mdnrnn.initial_state(num_episodes, self.device)

    @torch.no_grad()
    def act(self, frames: np.ndarray, params: torch.Tensor, hidden: Hidden,
            generators: Optional[Sequence[torch.Generator]] = None) -> PolicyStep:
        """frames: (E, 64, 64, 3) uint8; params: (E, N) float32 on the device; hidden: (h, c) each (1, E, H).

        The random draws (`sample_z`, `sample_actions`, `exploration`) come from `self.generator` for the
        batch, or with `generators` from episode e's own generator (`WorldModelAgents`)."""
        source = self.generator if generators is None else generators
        x = frames_to_input(frames, self.device, channels_last=True)
        if self.sample_z:
            mu, logvar = self.encoder.posterior(x)
            noise = draw_rows(source, len(mu), lambda g, span: torch.randn(
                (len(span), *mu.shape[1:]), generator=g, device=self.device, dtype=mu.dtype))
            z = sample_latent(mu, logvar, noise=noise).float()
        else:
            z = self.encoder(x).float()
        outputs = population_forward(self.layer_shapes, params, controller_input(z, hidden, self.inputs))
        action_vectors = outputs_to_actions(outputs, self.action_space, self.sample_actions, source,
                                            self.action_mapping)
        action_vectors = explore_actions(action_vectors, self.action_space, self.exploration, source)
        prediction, next_hidden = self.mdnrnn.step(z, action_vectors, hidden)
        env_actions = vectors_to_actions(action_vectors.cpu().numpy(), self.action_space)
        return PolicyStep(env_actions, action_vectors, next_hidden, z, mixture_mean(prediction.log_pi, prediction.mu))


class WorldModelAgent:
    """One episode at a time: `reset(seed)`, then `act(frame) -> env action` each step. `for_episodes(n)`
    gives the same agent for n episodes at once."""

    def __init__(self, policy: WorldModelPolicy, params: torch.Tensor | np.ndarray):
        self.policy = policy
        self.params = torch.as_tensor(params, dtype=torch.float32, device=policy.device).reshape(1, -1)
        self.reset()

    def reset(self, seed: Optional[int] = None) -> None:
        self.hidden = self.policy.initial_state(1)
        if seed is not None:
            self.policy.generator.manual_seed(seed)

    def act(self, frame: np.ndarray) -> Any:
        self.last_step = self.policy.act(frame[None], self.params, self.hidden)
        self.hidden = self.last_step.hidden
        return self.last_step.env_actions[0]

    def for_episodes(self, count: int) -> "WorldModelAgents":
        return WorldModelAgents(self.policy, self.params, count)


class WorldModelAgents:
    """One C (and V, M) playing `count` episodes that step together: one V encode and one M step per env
    step for all of them, where `count` `WorldModelAgent`s would run `count` batches of one.

    Episode i has its own M state and its own random generator, seeded by `reset(i, seed)` as
    `WorldModelAgent.reset(seed)` seeds its one: episode i plays exactly what a `WorldModelAgent` reset with
    the same seed plays, whichever episodes share its batch (exploration noise included).
    """

    def __init__(self, policy: WorldModelPolicy, params: torch.Tensor | np.ndarray, count: int):
        self.policy, self.count = policy, count
        self.params = torch.as_tensor(params, dtype=torch.float32, device=policy.device).reshape(1, -1)
        self.hidden = policy.initial_state(count)
        self.generators = [torch.Generator(device=policy.device) for _ in range(count)]

    def reset(self, index: int, seed: int) -> None:
        """Start episode `index` afresh: zero M state, its generator seeded with `seed`."""
        self.hidden[0][:, index] = 0.0
        self.hidden[1][:, index] = 0.0
        self.generators[index].manual_seed(int(seed))

    def act(self, indices: Sequence[int], frames: np.ndarray) -> list[Any]:
        """frames: (len(indices), 64, 64, 3) uint8, episode indices[k]'s frame in row k -> their env actions."""
        rows = torch.as_tensor(np.asarray(indices), dtype=torch.long, device=self.policy.device)
        step = self.policy.act(frames, self.params.expand(len(rows), -1), (self.hidden[0][:, rows], self.hidden[1][:, rows]),
                               [self.generators[int(i)] for i in indices])
        self.hidden[0][:, rows], self.hidden[1][:, rows] = step.hidden
        return step.env_actions
