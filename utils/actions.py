"""The action encoding: env actions <-> the (A,) float32 vectors that rollouts store and M reads.

Discrete actions are one-hot vectors of width n; continuous (1-D Box) actions are stored as they are.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import gymnasium as gym
import numpy as np

from utils.errors import WorldModelsError


def action_size(space: gym.Space) -> int:
    """A: the width of an action vector — the number of choices (one-hot) or the Box's dimension."""
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
        return int(space.shape[0])
    raise WorldModelsError(f"unsupported action space {space}; supported: Discrete and 1-D Box")


def action_to_vector(action: Any, space: gym.Space) -> np.ndarray:
    """Env action -> (A,) float32: one-hot for Discrete, the action itself for Box."""
    if isinstance(space, gym.spaces.Discrete):
        vector = np.zeros(int(space.n), dtype=np.float32)
        vector[int(action) - int(space.start)] = 1.0
        return vector
    return np.asarray(action, dtype=np.float32).reshape(space.shape)


def vectors_to_actions(vectors: np.ndarray, space: gym.Space) -> list[Any]:
    """Inverse of `action_to_vector` for a batch: (E, A) action vectors -> E env actions (the argmax's
    index for Discrete, the vector in the space's dtype for Box)."""
    vectors = np.asarray(vectors)
    if isinstance(space, gym.spaces.Discrete):
        start = int(space.start)
        return [start + int(i) for i in vectors.argmax(axis=-1)]
    return list(vectors.astype(space.dtype).reshape(len(vectors), *space.shape))


def vector_to_action(vector: np.ndarray, space: gym.Space) -> Any:
    """Inverse of `action_to_vector`: one (A,) vector -> one env action."""
    return vectors_to_actions(np.asarray(vector)[None], space)[0]


# `env.fire_to_serve`: FIRE is played this many steps in a row. One press is lost when ALE v5's sticky
# actions (0.25 a frame) repeat the previous action on all 4 frames of the step: 0.4% of serves, measured
# 0.2%, each leaving an agent that never presses FIRE standing still until the step cap. FIRE does
# nothing while the ball is in play, so a second press costs nothing.
SERVE_STEPS = 2


def serves_left_after(serves_left: Any, lives_before: Any, lives_after: Any) -> Any:
    """The serve rule of `env.fire_to_serve`, for one env (ints) or a batch (arrays): how many more steps
    play FIRE after a step that took `serves_left` from `lives_before` to `lives_after` lives: all
    `SERVE_STEPS` again after a lost life, else one fewer (never below 0)."""
    return np.where(np.asarray(lives_after) < lives_before, SERVE_STEPS, np.maximum(np.asarray(serves_left) - 1, 0))


@lru_cache(maxsize=None)
def fire_action(env_id: str) -> int:
    """The index of FIRE in an ALE game's action set (Breakout: 1), the serve of `env.fire_to_serve`.
    EnvPool's Atari ports use the same minimal action sets as ALE's, so both backends press this index."""
    import ale_py

    gym.register_envs(ale_py)
    env = gym.make(env_id)
    try:
        meanings = env.unwrapped.get_action_meanings() if hasattr(env.unwrapped, "get_action_meanings") else []
    finally:
        env.close()
    if "FIRE" not in meanings:
        raise WorldModelsError(f"env.fire_to_serve=true: {env_id} has no FIRE action ({', '.join(meanings)}); "
                               "use env.fire_to_serve=false")
    return meanings.index("FIRE")
