"""MiniGrid's Memory tasks (`minigrid` package, `pip install 'memrl[minigrid]'`) as flat
float32 observations, for envs.make_env.

The task (minigrid.envs.MemoryEnv, an S x S grid): the agent starts in a small room beside an
object (a key or a ball, green), walks down a hallway to a split with a key at one end and a
ball at the other, and must step next to the one it saw at the start. Success rewards
1 - 0.9 (steps / max_steps), the wrong object 0, both ending the episode; it is cut
(`truncated`) at max_steps = 5 S^2 steps. Actions Discrete(7) as MiniGrid's (left, right,
forward, pickup, drop, toggle, done; only the first three move). Sizes SIZES: 7, 9, 11, 13, 17,
the hallway at its full length (MiniGrid registers S17 only with a random length; here every
size is fixed-length, as MiniGrid's `MemoryS7`..`MemoryS13`).

Chance level: an agent that walks to the split without remembering the start room's object
picks the matching one half the time: about half the return of the optimal walk (~0.5).

Observation (what MiniGridMemory returns, a float32 vector of OBS_SIZE = 7*7*20 + 4 = 984):

    [ one-hot(object) (11) | one-hot(colour) (6) | one-hot(state) (3) ]   for each of the 7x7
        cells of the agent's partial view (MiniGrid's `image`, view cell (i, j) at
        (i * 7 + j) * 20, i the column left to right, j the row from far to the agent)
    one-hot(direction) (4)                                                  last 4 entries

object indices as minigrid.core.constants.OBJECT_TO_IDX (unseen 0, empty 1, wall 2, floor 3,
door 4, key 5, ball 6, box 7, goal 8, lava 9, agent 10), colours as COLOR_TO_IDX (red 0,
green 1, blue 2, purple 3, yellow 4, grey 5), states as STATE_TO_IDX (open 0, closed 1,
locked 2; doors only, 0 elsewhere); direction 0 right, 1 down, 2 left, 3 up. The mission
string (always the same here) is dropped.

Ids: `minigrid-MemoryS<S>-v0`; also named `MiniGridMemoryS<S>`, `minigrid-MemoryS<S>` and by
MiniGrid's own id `MiniGrid-MemoryS<S>-v0` (gymnasium.make of that id stays MiniGrid's raw env).
An unknown size is a ValueError listing SIZES.
"""

from __future__ import annotations

import os
import re

import gymnasium
import numpy as np
from gymnasium import spaces
from popgym.core.env import POPGymEnv

__all__ = ["MiniGridMemory", "SIZES", "env_id", "ids", "parse", "make", "max_episode_length",
           "VIEW", "OBJECTS", "COLOURS", "STATES", "DIRECTIONS", "CELL_SIZE", "OBS_SIZE"]

SIZES: tuple[int, ...] = (7, 9, 11, 13, 17)
VIEW = 7                                    # the agent's partial view: VIEW x VIEW cells
OBJECTS, COLOURS, STATES, DIRECTIONS = 11, 6, 3, 4
CELL_SIZE = OBJECTS + COLOURS + STATES      # 20 floats per cell
OBS_SIZE = VIEW * VIEW * CELL_SIZE + DIRECTIONS

# minigrid-MemoryS7-v0 (ours), MiniGridMemoryS7, minigrid-MemoryS7,
# MiniGrid-MemoryS7-v0 (MiniGrid's own id)
_ID = re.compile(r"^(?:minigrid-Memory|MiniGridMemory|MiniGrid-Memory)S(?P<size>\d+)(?:-v0)?$")


def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size not in SIZES:
        raise ValueError(f"unknown MiniGrid Memory size {size!r}; sizes: "
                         f"{', '.join(map(str, SIZES))}")
    return int(size)


def env_id(size: int) -> str:
    return f"minigrid-MemoryS{_check_size(size)}-v0"


def ids() -> list[str]:
    return [env_id(size) for size in SIZES]


def parse(name: str) -> int | None:
    """The size S a MiniGrid Memory id or short name names, None if `name` is not one;
    ValueError (listing SIZES) for a size MiniGrid does not have."""
    match = _ID.match(name)
    if match is None:
        return None
    return _check_size(int(match["size"]))


def max_episode_length(size: int) -> int:
    """max_steps = 5 S^2, as MiniGrid's MemoryEnv."""
    return 5 * _check_size(size) ** 2


def encode(image: np.ndarray, direction: int) -> np.ndarray:
    """MiniGrid's (7, 7, 3) image of (object, colour, state) indices and the direction ->
    the flat one-hot vector (OBS_SIZE,) of the module docstring."""
    cells = image.reshape(VIEW * VIEW, 3).astype(np.int64)
    flat = np.zeros((VIEW * VIEW, CELL_SIZE), np.float32)
    rows = np.arange(VIEW * VIEW)
    flat[rows, cells[:, 0]] = 1.0
    flat[rows, OBJECTS + cells[:, 1]] = 1.0
    flat[rows, OBJECTS + COLOURS + cells[:, 2]] = 1.0
    heading = np.zeros(DIRECTIONS, np.float32)
    heading[int(direction)] = 1.0
    return np.concatenate([flat.reshape(-1), heading])


class MiniGridMemory(gymnasium.ObservationWrapper, POPGymEnv):
    """MiniGrid's MemoryEnv of size S, its observation `encode`d (module docstring)."""

    def __init__(self, size: int = 7):
        size = _check_size(size)
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")    # minigrid imports pygame
        try:
            from minigrid.envs import MemoryEnv
        except ImportError as error:
            raise ImportError("MiniGrid Memory needs the minigrid package: "
                              "pip install 'memrl[minigrid]'") from error
        super().__init__(MemoryEnv(size=size, random_length=False))
        self.size = size
        self.max_episode_length = max_episode_length(size)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(OBS_SIZE,), dtype=np.float32)
        # hidden state: the whole grid's (object, colour, state), the agent's x, y, direction
        self.state_space = spaces.Box(0, 255, shape=(size * size * 3 + 3,), dtype=np.int64)

    def observation(self, observation: dict) -> np.ndarray:
        return encode(observation["image"], observation["direction"])

    def get_state(self) -> np.ndarray:
        grid = self.unwrapped.grid.encode().reshape(-1).astype(np.int64)
        x, y = self.unwrapped.agent_pos
        return np.concatenate([grid, [x, y, self.unwrapped.agent_dir]])


def make(size: int) -> MiniGridMemory:
    return MiniGridMemory(size)
