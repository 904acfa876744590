"""The one function that turns an environment's image into the (64, 64, 3) uint8 frame V sees.

Both env backends (Gymnasium in `utils/environment.py`, EnvPool in `utils/envpool_envs.py`) and every
stage (collection, controller training, evaluation) go through `preprocess_frame`, so a V trained on
one backend's frames reads the other's.
"""

from __future__ import annotations

import cv2
import gymnasium as gym
import numpy as np

# Frames are tiny: OpenCV's thread pool costs more than it saves, and fights the worker processes.
cv2.setNumThreads(1)


def has_image_observation(space: gym.Space) -> bool:
    """True for (H, W, 3) uint8 observations (Atari, CarRacing); False for state vectors (LunarLander)."""
    return isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3 and space.shape[-1] == 3


def preprocess_frame(image: np.ndarray, frame_size: int = 64, crop_top: int = 0, crop_bottom: int = 0) -> np.ndarray:
    """The one function that turns an env image into the frame V sees.

    image: (H, W, 3) uint8 RGB -> (frame_size, frame_size, 3) uint8. Rows are cropped first (HUDs and
    score bars), then the image is halved with area averaging while it is at least twice the target
    (OpenCV's fast integer path), and the last step of less than 2x is bilinear. No source pixel is
    skipped, so one-pixel objects such as Pong's ball survive, at a fifth of the cost of one
    non-integer INTER_AREA resize (which would cost as much as the emulator step itself).
    """
    if crop_top or crop_bottom:
        image = image[crop_top : image.shape[0] - crop_bottom]
    while image.shape[0] >= 2 * frame_size and image.shape[1] >= 2 * frame_size:
        image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
    last_step = cv2.INTER_LINEAR if max(image.shape[:2]) < 2 * frame_size else cv2.INTER_AREA
    return cv2.resize(image, (frame_size, frame_size), interpolation=last_step)


def preprocess_frames(images: np.ndarray, frame_size: int = 64, crop_top: int = 0, crop_bottom: int = 0) -> np.ndarray:
    """`preprocess_frame` for a batch: (N, H, W, 3) uint8 -> (N, frame_size, frame_size, 3) uint8."""
    out = np.empty((len(images), frame_size, frame_size, 3), np.uint8)
    for index, image in enumerate(images):
        out[index] = preprocess_frame(image, frame_size, crop_top, crop_bottom)
    return out
