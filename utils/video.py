"""Frames -> mp4 files and TensorBoard videos.

TensorBoard's `add_video` needs `moviepy.editor`, which moviepy 2 removed; TensorBoard itself shows an
animated GIF stored as an image summary, so we encode the GIF with Pillow and write that summary
directly. mp4 files go through imageio-ffmpeg, which ships its own ffmpeg binary.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

from utils.files import atomic_path
from utils.images import upscale


def write_mp4(frames: np.ndarray | Sequence[np.ndarray], path: Path, fps: int = 30) -> Path:
    """frames: (T, H, W, 3) uint8 -> an H.264 mp4 at `path` (written atomically).

    H and W are padded up to even numbers, which the yuv420p pixel format requires.
    """
    import imageio.v2 as imageio

    frames = np.asarray(frames, dtype=np.uint8)
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    path = Path(path)
    with atomic_path(path) as tmp_path:
        with imageio.get_writer(str(tmp_path), format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                pixelformat="yuv420p", macro_block_size=1) as writer:
            for frame in frames:
                writer.append_data(frame)
    return path


def encode_gif(frames: np.ndarray, fps: int = 30) -> bytes:
    """frames: (T, H, W, 3) uint8 -> animated GIF bytes that loop forever."""
    from PIL import Image

    images = [Image.fromarray(frame) for frame in np.asarray(frames, dtype=np.uint8)]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(1, int(1000 / fps)), loop=0)
    return buffer.getvalue()


def add_video(writer, tag: str, frames: np.ndarray, step: int, fps: int = 30) -> None:
    """Log frames (T, H, W, 3) uint8 as an animated image under `tag` in TensorBoard."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    frames = np.asarray(frames, dtype=np.uint8)
    image = Summary.Image(height=frames.shape[1], width=frames.shape[2], colorspace=3,
                          encoded_image_string=encode_gif(frames, fps))
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)


def log_video(writer, tag: str, frames: np.ndarray, step: int, path: Path, max_tensorboard_frames: int = 300) -> Path:
    """One rollout's frames (T, H, W, 3) uint8 as a TensorBoard animation under `tag` (subsampled to at
    most `max_tensorboard_frames`, which keeps event files small) and as an mp4 at `path`, upscaled 4x."""
    add_video(writer, tag, frames[:: max(1, len(frames) // max_tensorboard_frames)], step)
    return write_mp4(upscale(frames, 4), path)
