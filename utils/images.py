"""Frames as pictures: grids of (3, H, W) images, PNG files, and nearest-neighbour upscaling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from utils.files import atomic_path


def image_grid(images: torch.Tensor, columns: int) -> torch.Tensor:
    """images: (N, 3, H, W) in [0, 1] -> (3, rows*(H+2)+2, columns*(W+2)+2) with 2-pixel grey borders."""
    count, channels, height, width = images.shape
    rows = -(-count // columns)
    grid = torch.full((channels, rows * (height + 2) + 2, columns * (width + 2) + 2), 0.5)
    for index, image in enumerate(images.float().cpu()):
        top, left = 2 + (index // columns) * (height + 2), 2 + (index % columns) * (width + 2)
        grid[:, top : top + height, left : left + width] = image
    return grid


def save_png(grid: torch.Tensor, path: Path, scale: int = 4) -> Path:
    """Write a (3, H, W) [0, 1] image as a PNG (atomically), upscaled `scale`x (nearest) so 64x64 frames are visible."""
    from PIL import Image

    pixels = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    pixels = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
    with atomic_path(Path(path)) as tmp_path:
        Image.fromarray(pixels).save(tmp_path, format="PNG")
    return Path(path)


def upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscale of (T, H, W, C) frames, so 64x64 videos are watchable."""
    return frames.repeat(factor, axis=1).repeat(factor, axis=2)
