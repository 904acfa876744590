"""V: the convolutional VAE of World Models (Ha & Schmidhuber 2018, appendix A.1), and its loss.

    encoder  (B, 3, 64, 64) -> 4 x [conv k4 s2 (+BatchNorm), ReLU] 32/64/128/256 ch -> (B, 256*2*2)
             -> linear mu, linear logvar                              (B, latent_size) each
    decoder  z (B, latent_size) -> linear -> (B, 1024, 1, 1)
             -> deconv k5 s2 128ch, ReLU -> k5 s2 64ch, ReLU -> k6 s2 32ch, ReLU -> k6 s2 3ch
             -> (B, 3, 64, 64) logits; `decode` applies the sigmoid

Frames stay uint8 until they are on the device; `frames_to_input` does the cast there.

    python -m models.vae     # self-check: shapes, and a few Adam steps lower the loss
"""

from __future__ import annotations

import copy
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from config import RECON_LOSSES
from utils.errors import WorldModelsError


def frames_to_input(
    frames_uint8: Union[torch.Tensor, np.ndarray], device: Union[torch.device, str], channels_last: bool = True
) -> torch.Tensor:
    """frames_uint8: (B, 64, 64, 3) uint8 -> (B, 3, 64, 64) float32 in [0, 1] on `device`.

    The uint8 batch crosses to the device first (4x fewer bytes than float32); the cast and the
    permute run there. Pass a pinned CPU tensor for an asynchronous host-to-device copy.
    """
    frames = torch.as_tensor(frames_uint8)
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise WorldModelsError(f"expected (B, H, W, 3) uint8 frames, got {tuple(frames.shape)} {frames.dtype}")
    frames = frames.to(device, non_blocking=True)
    # An NHWC tensor permuted to NCHW already has the channels_last memory layout: no copy needed.
    images = frames.permute(0, 3, 1, 2).float().div_(255.0)
    return images if channels_last else images.contiguous()


def sample_latent(mu: torch.Tensor, logvar: torch.Tensor, generator: Optional[torch.Generator] = None,
                  noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """z ~ N(mu, exp(logvar)) by reparameterisation, z = mu + sigma * eps with eps ~ N(0, I) from `generator`
    (torch's global one when None), or the given `noise`: mu, logvar (..., latent_size) -> z of the same shape.

    The one place a latent is drawn from V's posterior: V's training pass, M's training windows, the
    dream's start latents and a policy with `controller.sample_z` all call it."""
    if noise is None:
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * noise


class ConvVAE(nn.Module):
    """The World Models ConvVAE. `latent_size` is z's width (32 in the paper)."""

    def __init__(self, latent_size: int = 32, batch_norm: bool = True):
        super().__init__()
        if latent_size < 1:
            raise WorldModelsError(f"vae.latent_size must be >= 1, got {latent_size}")
        self.latent_size = latent_size
        self.batch_norm = batch_norm
        layers: list[nn.Module] = []
        in_channels = 3
        for out_channels in (32, 64, 128, 256):
            # BatchNorm has its own shift, so the conv's bias would be redundant.
            layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=4, stride=2, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
            in_channels = out_channels
        layers.append(nn.Flatten())
        self.encoder = nn.Sequential(*layers)
        self.fc_mu = nn.Linear(256 * 2 * 2, latent_size)
        self.fc_logvar = nn.Linear(256 * 2 * 2, latent_size)

        self.fc_decode = nn.Linear(latent_size, 1024)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(1024, 128, kernel_size=5, stride=2),  # 1 -> 5
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(128, 64, kernel_size=5, stride=2),  # 5 -> 13
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(64, 32, kernel_size=6, stride=2),  # 13 -> 30
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(32, 3, kernel_size=6, stride=2),  # 30 -> 64
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, 3, 64, 64) float in [0, 1] -> (mu, logvar), each (B, latent_size)."""
        features = self.encoder(x)
        return self.fc_mu(features), self.fc_logvar(features)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, latent_size) -> (B, 3, 64, 64) logits (use these in the loss: stable BCE)."""
        return self.decoder(self.fc_decode(z).view(-1, 1024, 1, 1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, latent_size) -> (B, 3, 64, 64) reconstruction in [0, 1]."""
        return torch.sigmoid(self.decode_logits(z))

    def forward(self, x: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, 3, 64, 64) -> (recon_logits (B, 3, 64, 64), mu, logvar (B, latent_size)).

        `sample=False` decodes the posterior mean instead of a sample (deterministic evaluation).
        """
        mu, logvar = self.encode(x)
        z = sample_latent(mu, logvar) if sample else mu
        return self.decode_logits(z), mu, logvar


class PosteriorMeanEncoder(nn.Module):
    """V's encoder for acting: frames -> mu, the same function as `ConvVAE.encode(x)[0]` in eval mode,
    built for speed on the CPU. Each BatchNorm is folded into the convolution before it (its eval-mode
    affine map merged into the conv's weights and bias), and the weights are channels_last, as
    `frames_to_input` delivers frames. Measured on 2 CPU cores, a batch of 32 frames: 21.6 ms with
    `ConvVAE.encode`, 12.7 ms channels_last, 10.7 ms folded too (benchmarks/backends.py shows V's share
    of a CMA-ES generation). A snapshot: rebuild it if V's weights change.

    x: (B, 3, 64, 64) float in [0, 1] -> mu (B, latent_size); `posterior(x)` gives (mu, logvar) for a
    policy that samples z, as the paper's CarRacing code does (`controller.sample_z`).
    """

    def __init__(self, vae: ConvVAE):
        super().__init__()
        layers: list[nn.Module] = []
        modules = list(vae.encoder)
        for index, module in enumerate(modules):
            if isinstance(module, nn.BatchNorm2d):
                continue  # folded into the convolution before it
            if isinstance(module, nn.Conv2d):
                following = modules[index + 1] if index + 1 < len(modules) else None
                module = _fold_batch_norm(module, following) if isinstance(following, nn.BatchNorm2d) \
                    else copy.deepcopy(module)
            layers.append(module)
        self.features = nn.Sequential(*layers).to(memory_format=torch.channels_last)
        self.fc_mu = copy.deepcopy(vae.fc_mu)
        self.fc_logvar = copy.deepcopy(vae.fc_logvar)
        self.to(vae.fc_mu.weight.device).eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_mu(self.features(x))

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, 3, 64, 64) -> (mu, logvar), each (B, latent_size)."""
        features = self.features(x)
        return self.fc_mu(features), self.fc_logvar(features)


@torch.no_grad()
def _fold_batch_norm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """conv then BatchNorm (eval) as one conv: y = scale * (W x + b - mean) + shift, scale = gamma / sqrt(var + eps)."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, bias=True)
    folded.weight.copy_(conv.weight * scale[:, None, None, None])
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    folded.bias.copy_((bias - norm.running_mean) * scale + norm.bias)
    return folded


def vae_loss(
    recon_logits: torch.Tensor,
    target: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    beta: float,
    recon: str = "bce",
    kl_tolerance: float = 0.0,
    pixel_weight: Optional[torch.Tensor] = None,
) -> dict[str, torch.Tensor]:
    """The beta-VAE loss: recon + beta * KL, each a scalar averaged over the batch.

    recon_logits, target: (B, 3, 64, 64) (target in [0, 1]); mu, logvar: (B, latent_size).
    recon: "bce" (Bernoulli likelihood, computed from logits for stability) or "mse" (squared error of
    the sigmoid output, the paper's choice); either is summed over pixels and channels.
    KL(q(z|x) || N(0, I)) is summed over latent dims. With kl_tolerance > 0 each sample's KL is clamped
    below at kl_tolerance * latent_size (the paper code's free bits): the encoder gets no gradient to
    shrink the KL under that budget, which keeps latents from collapsing early.
    pixel_weight: None, or (B, 1, 64, 64) weights of each pixel's reconstruction loss
    (`foreground_weights`).
    Returns {"total_loss", "recon_loss", "kl_loss"}: total = the reconstruction loss (pixel-weighted when
    pixel_weight is given) + beta * kl (kl after clamping); "recon_loss" is always the unweighted sum, so
    runs with and without weights compare.
    """
    if recon not in RECON_LOSSES:
        raise WorldModelsError(f"unknown vae.recon_loss {recon!r}; valid: {', '.join(RECON_LOSSES)}")
    recon_logits, target = recon_logits.float(), target.float()
    mu, logvar = mu.float(), logvar.float()
    if recon == "bce":
        per_pixel = F.binary_cross_entropy_with_logits(recon_logits, target, reduction="none")
    else:
        per_pixel = (torch.sigmoid(recon_logits) - target) ** 2
    recon_loss = per_pixel.flatten(1).sum(1).mean()
    fitted_recon = recon_loss if pixel_weight is None else (per_pixel * pixel_weight).flatten(1).sum(1).mean()
    kl_per_sample = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
    if kl_tolerance > 0:
        kl_per_sample = kl_per_sample.clamp(min=kl_tolerance * mu.shape[1])
    kl_loss = kl_per_sample.mean()
    return {"total_loss": fitted_recon + beta * kl_loss, "recon_loss": recon_loss, "kl_loss": kl_loss}


def background_distance(frames: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Each pixel's largest channel distance from the background: (B, 1, 64, 64) float32 in [0, 1].

    frames: (B, 3, 64, 64) in [0, 1]; background: (3, 64, 64) in [0, 1], the data's mean frame.
    """
    return (frames.float() - background.float()).abs().amax(dim=1, keepdim=True)


def foreground_weights(target: torch.Tensor, background: torch.Tensor, strength: float) -> torch.Tensor:
    """Per-pixel loss weights 1 + strength * `background_distance`: (B, 1, 64, 64) in [1, 1 + strength]."""
    return 1.0 + strength * background_distance(target, background)


def _self_check() -> None:
    torch.manual_seed(0)
    model = ConvVAE(latent_size=32)
    frames_uint8 = torch.randint(0, 256, (8, 64, 64, 3), dtype=torch.uint8)
    x = frames_to_input(frames_uint8, "cpu")
    assert x.shape == (8, 3, 64, 64) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    recon_logits, mu, logvar = model(x)
    assert recon_logits.shape == (8, 3, 64, 64) and mu.shape == logvar.shape == (8, 32)
    mu_only, _ = model.encode(x)
    assert model.decode(mu_only).shape == (8, 3, 64, 64)
    print(f"ok: frames {tuple(frames_uint8.shape)} uint8 -> input {tuple(x.shape)} float32 -> "
          f"mu/logvar {tuple(mu.shape)} -> recon {tuple(recon_logits.shape)}; "
          f"{sum(p.numel() for p in model.parameters()):,} parameters")

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for recon in RECON_LOSSES:
        losses = []
        for _ in range(10):
            recon_logits, mu, logvar = model(x)
            loss = vae_loss(recon_logits, x, mu, logvar, beta=1.0, recon=recon)["total_loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0], f"{recon} loss did not fall: {losses}"
        print(f"ok: 10 Adam steps on a fixed batch lower the {recon} loss {losses[0]:.1f} -> {losses[-1]:.1f}")


if __name__ == "__main__":
    _self_check()
