"""The controller C and the CMA-ES that trains it.

C maps [z_t, h_t] (or z_t alone, the paper's ablation, or [z_t, c_t, h_t] with M's cell state too, the
paper's Doom controller) to an action: a linear layer in the paper
(`hidden_sizes=()`), optionally a small tanh MLP. CMA-ES sees only a flat parameter vector, so C is
defined by its layer shapes, and `population_forward` evaluates many parameter vectors at once: row e of
the input uses row e of the parameters, so a whole population x rollouts runs as batched matmuls.

    python -m models.controller     # self-check: flat round trip, batched == single, CMA-ES on a sphere
"""

from __future__ import annotations

from typing import Optional, Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from config import CONTROLLER_INPUTS
from utils.actions import action_size
from utils.errors import WorldModelsError
from utils.runtime import RandomSource, draw_rows

# EnvPool's TakeCover pairs its two buttons as [none, MOVE_RIGHT, MOVE_LEFT] (how envpool/vizdoom/utils.h
# builds a combined action set; checked here by the way the view shifts): the action of each third of
# tanh's range, low to high, for `doom_paper`.
DOOM_PAPER_ACTIONS = (2, 0, 1)  # left | stay | right


def controller_input_size(latent_size: int, hidden_size: int, inputs: str) -> int:
    """The width of C's input vector for `controller.inputs`."""
    if inputs not in CONTROLLER_INPUTS:
        raise WorldModelsError(f"unknown controller.inputs {inputs!r}; valid: {', '.join(CONTROLLER_INPUTS)}")
    return latent_size + {"z": 0, "zh": hidden_size, "zch": 2 * hidden_size}[inputs]


def controller_input(z: torch.Tensor, hidden: tuple[torch.Tensor, torch.Tensor], inputs: str) -> torch.Tensor:
    """C's input vector from z (E, latent_size) and M's state (h, c), each (1, E, hidden_size):
    [z] | [z, h] | [z, c, h] -> (E, controller_input_size)."""
    if inputs == "z":
        return z
    if inputs == "zh":
        return torch.cat([z, hidden[0][0]], dim=-1)
    return torch.cat([z, hidden[1][0], hidden[0][0]], dim=-1)


def controller_output_size(space: gym.Space, mapping: str = "squash") -> int:
    """How many raw outputs C has: one under `doom_paper` (the paper's Doom C), else the action vector's width."""
    return 1 if mapping == "doom_paper" else action_size(space)


class Controller(nn.Module):
    """C for one parameter vector. x: (B, input_size) -> raw outputs (B, action_size)."""

    def __init__(self, input_size: int, action_size: int, hidden_sizes: Sequence[int] = ()):
        super().__init__()
        sizes = [input_size, *hidden_sizes, action_size]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    @property
    def layer_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of each layer: the flat vector is [W_1 (out x in), b_1, W_2, b_2, ...]."""
        return [(layer.in_features, layer.out_features) for layer in self.layers]

    @property
    def num_parameters(self) -> int:
        return num_parameters(self.layer_shapes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = torch.tanh(x)
        return x

    def get_flat_parameters(self) -> torch.Tensor:
        """(num_parameters,) float32, in the layout of `layer_shapes`."""
        return torch.cat([p.detach().reshape(-1) for layer in self.layers for p in (layer.weight, layer.bias)])

    def set_flat_parameters(self, flat: torch.Tensor | np.ndarray) -> None:
        flat = torch.as_tensor(flat, dtype=torch.float32).reshape(-1)
        if flat.numel() != self.num_parameters:
            raise WorldModelsError(f"controller expects {self.num_parameters} parameters, got {flat.numel()}")
        offset = 0
        with torch.no_grad():
            for layer in self.layers:
                for param in (layer.weight, layer.bias):
                    param.copy_(flat[offset : offset + param.numel()].view_as(param))
                    offset += param.numel()


def num_parameters(layer_shapes: Sequence[tuple[int, int]]) -> int:
    return sum(n_in * n_out + n_out for n_in, n_out in layer_shapes)


def population_forward(layer_shapes: Sequence[tuple[int, int]], params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Many controllers at once: params (E, N), x (E, input_size) -> raw outputs (E, action_size).

    Identical maths to `Controller.forward` with row e's parameters, as one batched matmul per layer.
    """
    offset = 0
    hidden = x.unsqueeze(1)  # (E, 1, in)
    for index, (n_in, n_out) in enumerate(layer_shapes):
        weight = params[:, offset : offset + n_in * n_out].view(-1, n_out, n_in)
        offset += n_in * n_out
        bias = params[:, offset : offset + n_out].unsqueeze(1)
        offset += n_out
        hidden = torch.baddbmm(bias, hidden, weight.transpose(1, 2))
        if index < len(layer_shapes) - 1:
            hidden = torch.tanh(hidden)
    return hidden.squeeze(1)


def outputs_to_actions(outputs: torch.Tensor, space: gym.Space, sample: bool = False,
                       generator: RandomSource = None, mapping: str = "squash") -> torch.Tensor:
    """Raw outputs (E, A) -> action vectors (E, A) float32 in the format M and the data use.

    Discrete: one-hot of the argmax (or of a softmax sample); `mapping="doom_paper"`: outputs (E, 1),
    whose tanh in [-1, -1/3) | [-1/3, 1/3) | [1/3, 1] is left | stay | right (`DOOM_PAPER_ACTIONS`).
    Box, `mapping="squash"`: each dimension squashed into its bounds, low + (tanh(x) + 1) / 2 * (high - low)
    (for CarRacing: steering tanh, gas and brake (tanh + 1) / 2, so an output of 0 brakes at 0.5). `mapping="carracing_paper"`: the paper
    code's CarRacing mapping, steering tanh, gas (tanh + 1) / 2, brake clip(tanh, 0, 1) (no brake for
    half of the output range).
    """
    if mapping == "doom_paper":
        if not isinstance(space, gym.spaces.Discrete) or space.n != 3 or outputs.shape[-1] != 1:
            raise WorldModelsError(f"action mapping doom_paper needs one output and Doom's 3 actions, got "
                                   f"{outputs.shape[-1]} outputs for {space}")
        thirds = torch.tensor([-1.0 / 3.0, 1.0 / 3.0], device=outputs.device)
        bins = torch.bucketize(torch.tanh(outputs[:, 0].float()), thirds, right=True)
        choice = torch.tensor(DOOM_PAPER_ACTIONS, device=outputs.device)[bins]
        return nn.functional.one_hot(choice, 3).float()
    if isinstance(space, gym.spaces.Discrete):
        if sample:
            probs = torch.softmax(outputs.float(), dim=-1)
            choice = draw_rows(generator, len(probs), lambda g, span: torch.multinomial(
                probs[span.start : span.stop], 1, generator=g)).squeeze(1)
        else:
            choice = outputs.argmax(dim=-1)
        return nn.functional.one_hot(choice, outputs.shape[-1]).float()
    if mapping == "carracing_paper":
        if tuple(space.shape) != (3,):
            raise WorldModelsError(f"action mapping carracing_paper needs CarRacing's 3 actions, got {space}")
        squashed = torch.tanh(outputs)
        return torch.stack([squashed[:, 0], (squashed[:, 1] + 1.0) / 2.0, squashed[:, 2].clamp(min=0.0)], dim=-1)
    low = torch.as_tensor(space.low, dtype=torch.float32, device=outputs.device)
    high = torch.as_tensor(space.high, dtype=torch.float32, device=outputs.device)
    return low + (torch.tanh(outputs) + 1.0) / 2.0 * (high - low)


def explore_actions(action_vectors: torch.Tensor, space: gym.Space, amount: float,
                    generator: RandomSource = None) -> torch.Tensor:
    """Exploration noise on action vectors (E, A), for collecting data with a trained C.

    Discrete: each episode's one-hot is replaced by a uniformly random one with probability `amount`
    (epsilon-greedy). Box: Gaussian noise of std `amount` x half the bound range, clipped to the bounds.
    `amount=0` returns the input unchanged.
    """
    if amount <= 0:
        return action_vectors
    device, (episodes, width) = action_vectors.device, action_vectors.shape
    if isinstance(space, gym.spaces.Discrete):
        def choice_and_coin(g: Optional[torch.Generator], span: range) -> torch.Tensor:  # (n, 2): action, coin
            return torch.stack([torch.randint(width, (len(span),), generator=g, device=device).float(),
                                torch.rand(len(span), generator=g, device=device)], dim=1)
        draws = draw_rows(generator, episodes, choice_and_coin)
        random_one_hot = nn.functional.one_hot(draws[:, 0].long(), width).float()
        return torch.where((draws[:, 1] < amount)[:, None], random_one_hot, action_vectors)
    low = torch.as_tensor(space.low, dtype=torch.float32, device=device)
    high = torch.as_tensor(space.high, dtype=torch.float32, device=device)
    noise = draw_rows(generator, episodes, lambda g, span: torch.randn((len(span), width), generator=g, device=device))
    noise = noise * amount * (high - low) / 2.0
    return torch.clamp(action_vectors + noise, low, high)


class CMAES:
    """CMA-ES through the `cma` package, maximising fitness, with a checkpoint that holds no pickle.

    `cma` keeps a large internal state that only pickle could save, and our checkpoints must never
    run code. CMA-ES is deterministic given its seed and the fitness values it was told, so the
    checkpoint stores the fitness history and `replay` rebuilds the exact state by re-asking and
    re-telling. `cma` samples from numpy's global RNG, so that state is kept apart from anyone
    else's use of it.
    """

    def __init__(self, num_params: int, sigma: float, population_size: int, seed: int,
                 x0: Optional[np.ndarray] = None, weight_decay: float = 0.0):
        import cma

        self.num_params = num_params
        # The paper's code (estool) ranks candidates by fitness - weight_decay * mean(params^2): an L2
        # penalty that keeps C's weights small. The penalty shapes the ranking only; the history keeps
        # the fitness as played, and `replay` re-applies the penalty to the re-asked candidates.
        self.weight_decay = weight_decay
        x0 = np.zeros(num_params) if x0 is None else np.asarray(x0, dtype=np.float64)
        saved = np.random.get_state()
        self.es = cma.CMAEvolutionStrategy(x0, sigma, {
            "popsize": population_size, "seed": seed + 1,  # cma treats seed 0 as "random"
            "verbose": -9, "verb_log": 0, "verb_disp": 0, "tolfun": 0, "tolflatfitness": 1e9,
            "tolfunhist": 0, "tolx": 0, "tolstagnation": int(1e9),
        })
        self._rng_state = np.random.get_state()
        np.random.set_state(saved)
        self.fitness_history: list[np.ndarray] = []
        self._solutions: Optional[np.ndarray] = None  # the last `ask`'s candidates, until `tell`

    @property
    def population_size(self) -> int:
        return self.es.popsize

    @property
    def sigma(self) -> float:
        return float(self.es.sigma)

    @property
    def mean(self) -> np.ndarray:
        return np.array(self.es.mean, dtype=np.float64)

    def ask(self) -> np.ndarray:
        """(population_size, num_params) candidates."""
        saved = np.random.get_state()
        np.random.set_state(self._rng_state)
        try:
            self._solutions = np.array(self.es.ask())
        finally:
            self._rng_state = np.random.get_state()
            np.random.set_state(saved)
        return self._solutions.copy()

    def tell(self, fitness: np.ndarray) -> None:
        """Report the fitness (higher is better) of the candidates of the last `ask`."""
        if self._solutions is None:
            raise WorldModelsError("CMAES.tell needs the candidates of an ask() first")
        fitness = np.asarray(fitness, dtype=np.float64)
        if fitness.shape != (len(self._solutions),):
            raise WorldModelsError(f"tell expects {len(self._solutions)} fitness values, got {fitness.shape}")
        penalty = self.weight_decay * np.mean(self._solutions ** 2, axis=1)
        self.es.tell(list(self._solutions), list(penalty - fitness))  # cma minimises
        self.fitness_history.append(fitness)
        self._solutions = None

    def replay(self, fitness_history: np.ndarray) -> None:
        """Rebuild the state after len(fitness_history) generations from their fitness values."""
        for fitness in np.asarray(fitness_history):
            self.ask()
            self.tell(fitness)


def _self_check() -> None:
    controller = Controller(288, 3, (16,))
    flat = torch.randn(controller.num_parameters)
    controller.set_flat_parameters(flat)
    assert torch.equal(controller.get_flat_parameters(), flat)
    x = torch.randn(5, 288)
    params = flat.expand(5, -1)
    assert torch.allclose(population_forward(controller.layer_shapes, params, x), controller(x), atol=1e-5)
    es = CMAES(10, 0.5, 16, seed=0)
    target = np.arange(10) / 10
    for _ in range(150):
        solutions = es.ask()
        es.tell(-((solutions - target) ** 2).sum(1))
    error = np.abs(es.mean - target).max()
    assert error < 1e-3, error
    print(f"ok: flat round trip exact, batched == single, CMA-ES found a shifted sphere's optimum (max error {error:.1e})")


if __name__ == "__main__":
    _self_check()
