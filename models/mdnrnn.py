"""M: the MDN-RNN of World Models (Ha & Schmidhuber 2018, section 2.2 and appendix A.2), and its loss.

    input    [z_t, a_t]                                  (B, T, latent_size + action_size)
    LSTM     1 layer, hidden_size units                  h_t: (B, T, hidden_size)
    heads    linear h_t -> mixture density of z_{t+1}    log_pi, mu, log_sigma: (B, T, K, Z) each
             linear h_t -> reward r_t                     (B, T)
             linear h_t -> done logit (terminated_t)      (B, T)

Mixture layout: every latent dimension has its own mixture of K one-dimensional Gaussians, as in the
paper's code, so the tensors are (..., K, Z) with the component axis second to last: `log_pi[..., k, j]`
is log P(component k) for latent dimension j, and `log_pi.logsumexp(-2) == 0`.

Output t is computed from z_0..z_t and a_0..a_t. It predicts z_{t+1}, the reward r_t the env returned
for a_t, and whether the episode ended with that step. Discrete actions enter one-hot (the rollouts
store them that way), continuous ones as they are.

    python -m models.mdnrnn     # self-check: shapes, step vs sequence, a few Adam steps lower the NLL
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from utils.errors import WorldModelsError

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)

# (h, c), each (1, B, hidden_size): nn.LSTM's state for one layer.
Hidden = tuple[torch.Tensor, torch.Tensor]


class MDNOutput(NamedTuple):
    """What M predicts at each step. log_pi, mu, log_sigma: (..., K, Z); reward, done_logit: (...,)."""

    log_pi: torch.Tensor
    mu: torch.Tensor
    log_sigma: torch.Tensor
    reward: torch.Tensor
    done_logit: torch.Tensor


class MDNRNN(nn.Module):
    """The World Models MDN-RNN: an LSTM over [z_t, a_t] with a per-dimension Gaussian mixture head for
    z_{t+1}, a reward head and a done head."""

    def __init__(self, latent_size: int = 32, action_size: int = 1, hidden_size: int = 256, num_mixtures: int = 5):
        super().__init__()
        for name, value in (("latent_size", latent_size), ("action_size", action_size),
                            ("hidden_size", hidden_size), ("num_mixtures", num_mixtures)):
            if value < 1:
                raise WorldModelsError(f"MDNRNN {name} must be >= 1, got {value}")
        self.latent_size, self.action_size = latent_size, action_size
        self.hidden_size, self.num_mixtures = hidden_size, num_mixtures
        self.lstm = nn.LSTM(latent_size + action_size, hidden_size, num_layers=1, batch_first=True)
        # One linear layer for all heads: 3 mixture tensors of K*Z, then reward and done.
        self.head = nn.Linear(hidden_size, 3 * num_mixtures * latent_size + 2)

    def initial_state(self, batch_size: int, device: torch.device | str) -> Hidden:
        """Zero (h, c), each (1, batch_size, hidden_size). An agent's h_t is `hidden[0][0]`: (B, hidden_size)."""
        zeros = torch.zeros(1, batch_size, self.hidden_size, device=device)
        return zeros, zeros.clone()

    def forward(self, z: torch.Tensor, actions: torch.Tensor, hidden: Optional[Hidden] = None) -> tuple[MDNOutput, Hidden]:
        """z: (B, T, latent_size), actions: (B, T, action_size), hidden: (h, c) or None (zeros).

        Returns (MDNOutput with log_pi/mu/log_sigma (B, T, K, Z) and reward/done_logit (B, T), the
        final (h, c)). Outputs are cast to float32 even under autocast, so the NLL's log-sum-exp runs in
        float32 (the head's matmul itself may still have run in half precision).
        """
        if z.shape[-1] != self.latent_size or actions.shape[-1] != self.action_size or z.shape[:-1] != actions.shape[:-1]:
            raise WorldModelsError(
                f"MDNRNN expects z (B, T, {self.latent_size}) and actions (B, T, {self.action_size}), "
                f"got {tuple(z.shape)} and {tuple(actions.shape)}"
            )
        features, hidden = self.lstm(torch.cat([z, actions], dim=-1), hidden)
        out = self.head(features).float()
        batch, steps = out.shape[:2]
        mixture_size = self.num_mixtures * self.latent_size
        logits, mu, log_sigma = (
            out[..., i * mixture_size : (i + 1) * mixture_size].reshape(batch, steps, self.num_mixtures, self.latent_size)
            for i in range(3)
        )
        output = MDNOutput(
            log_pi=F.log_softmax(logits, dim=-2),
            mu=mu,
            log_sigma=log_sigma,
            reward=out[..., -2],
            done_logit=out[..., -1],
        )
        return output, hidden

    def step(self, z: torch.Tensor, action: torch.Tensor, hidden: Optional[Hidden]) -> tuple[MDNOutput, Hidden]:
        """One step for agents and dreams. z: (B, latent_size), action: (B, action_size), hidden: (h, c).

        Returns (MDNOutput with log_pi/mu/log_sigma (B, K, Z) and reward/done_logit (B,), the next (h, c)).
        Runs the same LSTM as `forward`, so a sequence fed step by step gives the sequence API's outputs.
        """
        output, hidden = self.forward(z.unsqueeze(1), action.unsqueeze(1), hidden)
        return MDNOutput(*(tensor.squeeze(1) for tensor in output)), hidden


# ------------------------------------------------------------------------------------------- loss
def masked_mean(values: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean of values (B, T, ...) over the positions where mask (B, T) is true (all when mask is None)."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    while mask.ndim < values.ndim:
        mask = mask.unsqueeze(-1)
    count = mask.expand_as(values).sum().clamp(min=1.0)
    return (values * mask).sum() / count


def mdn_log_prob(log_pi: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log p(target) under the per-dimension mixtures. log_pi/mu/log_sigma: (..., K, Z), target: (..., Z).

    Returns (..., Z). The sum over components is a logsumexp of log weights plus Gaussian log
    densities, never a sum of densities, which underflows as soon as sigma is small.
    """
    target = target.unsqueeze(-2)
    log_normal = -0.5 * ((target - mu) * torch.exp(-log_sigma)) ** 2 - log_sigma - LOG_SQRT_2PI
    return torch.logsumexp(log_pi + log_normal, dim=-2)


def mdn_nll(
    log_pi: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Negative log-likelihood of target (B, T, Z) in nats per latent dimension, averaged over the
    positions where mask (B, T) is true. log_pi, mu, log_sigma: (B, T, K, Z). Returns a scalar."""
    return masked_mean(-mdn_log_prob(log_pi, mu, log_sigma, target), mask)


def mixture_mean(log_pi: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """The mixture's expected value E[z_{t+1}]: (..., K, Z) -> (..., Z)."""
    return (log_pi.exp() * mu).sum(dim=-2)


def sample_next_z(
    log_pi: torch.Tensor,
    mu: torch.Tensor,
    log_sigma: torch.Tensor,
    temperature: float,
    generator: Optional[torch.Generator] = None,
    noise: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
) -> torch.Tensor:
    """Draw z_{t+1} (..., Z) from the mixtures (..., K, Z) at temperature tau (paper section 4.4).

    As in the paper's code, tau divides the mixture logits (log_pi / tau, renormalised) and scales each
    sigma by sqrt(tau): tau > 1 makes the dream more uncertain, tau -> 0 deterministic. At tau = 0 the
    result is exactly the mean of each dimension's most likely component.

    `noise` = (uniform (..., K, Z) in [0, 1), standard normal (..., Z)) replaces the draws from
    `generator`: a batched dream passes each row the numbers that row would get alone, which makes
    batched and one-at-a-time rollouts exactly comparable.
    """
    if temperature < 0:
        raise WorldModelsError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        component = log_pi.argmax(dim=-2, keepdim=True)
        return mu.gather(-2, component).squeeze(-2)
    logits = log_pi / temperature
    # Gumbel-max: argmax(logits + Gumbel noise) is a categorical sample, for every (…, Z) at once.
    if noise is None:
        uniform = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    else:
        uniform = noise[0]
    gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-20)))
    # max(...).indices, not argmax: the same first-maximum index, and on CPU argmax over a non-last
    # dimension is ~10x slower, which made it the dream's most expensive step.
    component = (logits + gumbel).max(dim=-2, keepdim=True).indices
    chosen_mu = mu.gather(-2, component).squeeze(-2)
    chosen_sigma = log_sigma.gather(-2, component).squeeze(-2).exp()
    if noise is None:
        normal = torch.randn(chosen_mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    else:
        normal = noise[1]
    return chosen_mu + chosen_sigma * math.sqrt(temperature) * normal


def mdnrnn_loss(
    output: MDNOutput,
    next_z: torch.Tensor,
    next_mask: torch.Tensor,
    rewards: torch.Tensor,
    dones: torch.Tensor,
    step_mask: torch.Tensor,
    reward_weight: float = 1.0,
    done_weight: float = 1.0,
    done_positive_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """M's training loss: NLL of z_{t+1} + reward_weight * reward loss + done_weight * done BCE, in which
    a done step weighs `done_positive_weight` (the original's Doom code: 10) and every other step 1.

    next_z: (B, T, Z) targets, counted where next_mask (B, T) is true (the last step of an episode has
    no stored next frame); rewards (B, T) float, dones (B, T) float 0/1, counted where step_mask
    (B, T) is true (padding excluded). The reward loss is a Huber loss (delta 1): LunarLander's
    +-100 terminal rewards would otherwise dominate the shared LSTM's gradient and swamp the NLL.
    Returns {"nll", "reward_loss", "done_loss", "total_loss"}, scalars.
    """
    nll = mdn_nll(output.log_pi, output.mu, output.log_sigma, next_z, next_mask)
    reward_loss = masked_mean(F.huber_loss(output.reward, rewards, reduction="none", delta=1.0), step_mask)
    positive_weight = torch.tensor(done_positive_weight, dtype=output.done_logit.dtype, device=output.done_logit.device)
    done_loss = masked_mean(F.binary_cross_entropy_with_logits(output.done_logit, dones, reduction="none",
                                                               pos_weight=positive_weight), step_mask)
    total = nll + reward_weight * reward_loss + done_weight * done_loss
    return {"nll": nll, "reward_loss": reward_loss, "done_loss": done_loss, "total_loss": total}


def _self_check() -> None:
    torch.manual_seed(0)
    batch, steps, latent, actions_n = 4, 12, 32, 3
    model = MDNRNN(latent_size=latent, action_size=actions_n, hidden_size=64, num_mixtures=5)
    z = torch.randn(batch, steps, latent)
    actions = F.one_hot(torch.randint(0, actions_n, (batch, steps)), actions_n).float()
    output, (h, c) = model(z, actions)
    assert output.log_pi.shape == output.mu.shape == output.log_sigma.shape == (batch, steps, 5, latent)
    assert output.reward.shape == output.done_logit.shape == (batch, steps)
    assert h.shape == c.shape == (1, batch, 64)
    assert torch.allclose(output.log_pi.logsumexp(-2), torch.zeros(batch, steps, latent), atol=1e-5)
    print(f"ok: z {tuple(z.shape)} + actions {tuple(actions.shape)} -> log_pi/mu/log_sigma "
          f"{tuple(output.mu.shape)}, reward/done {tuple(output.reward.shape)}; "
          f"{sum(p.numel() for p in model.parameters()):,} parameters")

    hidden = model.initial_state(batch, "cpu")
    stepped = []
    for t in range(steps):
        outputs, hidden = model.step(z[:, t], actions[:, t], hidden)
        stepped.append(outputs)
    worst = max(
        (torch.stack([s[i] for s in stepped], dim=1) - output[i]).abs().max().item() for i in range(len(output))
    )
    assert worst < 1e-5, f"step and sequence APIs disagree by {worst}"
    print(f"ok: {steps} single steps reproduce the sequence outputs (max difference {worst:.1e})")

    next_z = torch.roll(z, -1, dims=1)
    mask = torch.ones(batch, steps, dtype=torch.bool)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    nlls = []
    for _ in range(20):
        output, _ = model(z, actions)
        loss = mdnrnn_loss(output, next_z, mask, torch.zeros(batch, steps), torch.zeros(batch, steps), mask)
        optimizer.zero_grad()
        loss["total_loss"].backward()
        optimizer.step()
        nlls.append(loss["nll"].item())
    assert nlls[-1] < nlls[0], f"NLL did not fall: {nlls}"
    print(f"ok: 20 Adam steps on a fixed batch lower the NLL {nlls[0]:.3f} -> {nlls[-1]:.3f} nats/dim")
    greedy = sample_next_z(output.log_pi, output.mu, output.log_sigma, 0.0)
    cold = sample_next_z(output.log_pi, output.mu, output.log_sigma, 1e-8)
    assert greedy.shape == (batch, steps, latent) and torch.allclose(cold, greedy, atol=1e-3)
    print("ok: sampling at tau -> 0 converges to the dominant component's mean")


if __name__ == "__main__":
    _self_check()
