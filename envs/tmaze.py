"""T-Maze memory-length probes: passive and active T-Maze of Ni et al. 2023 ("When do
transformers shine in RL? Decoupling memory from credit assignment"), the rules, rewards,
penalty and episode length of their code (twni2016/Memory-RL, envs/tmaze.py and
configs/envs/tmaze_{passive,active}.py; the "classic" mazes with ambiguous positions).

The maze, corridor length L (x: position along the corridor, y: row; o: the oracle's offset,
o = 0 passive, o = 1 active):

                                 G (x = o + L, y = +1)
    oracle -- start -- ... -- junction (x = o + L, y = 0)
    (x = 0)  (x = o)             G (x = o + L, y = -1)

- reset: the goal row g is +1 or -1 with equal chance; the agent stands at x = o, y = 0.
- actions (Discrete(4)): 0 right (+1, 0), 1 up (0, +1), 2 left (-1, 0), 3 down (0, -1); a move
  off the maze (into a wall, up/down in the corridor, further than the end) leaves the agent
  where it is.
- observation (2,): [at_end, signal], the position ambiguous along the corridor:
      x = 0, first time there:    [0, g]     the cue: at reset (passive), after one step left
                                              (active); afterwards [0, 0]
      0 < x < o + L (corridor):   [0, 0]
      x = o + L (junction, goals): [1, y]
- episode: exactly T = L + 2o + 1 steps (passive L + 1, active L + 3): the agent must walk
  (to the oracle and back, active) to the junction and turn up or down on the last step;
  `terminated` at step T.
- reward at step t < T: the penalty -1/L if the agent lags the optimal walk (x < t - o), else 0;
  at step T: +1 if y = g (success), else 0. So a success with the optimal walk returns exactly 1,
  and the return is in [-(L + o)/L, 1] (passive [-1, 1]; active's lowest: to the oracle and
  staying there).

Memory length: the cue is seen once, at t = 0 (passive) or t = 1 (active), and needed at the
last step: L steps later (passive), L + 1 (active). Credit assignment length: 1 passive (the
final choice), ~L active (the first step left is rewarded only at the end).

Chance level: 0.5. A policy that does not remember the cue walks optimally (the first-step
flag and previous action of envs.make_env's observation are enough for that) and guesses at the
junction: success rate 0.5 and mean return 0.5, the best any memoryless policy gets. The return
is never above the success rate (the penalty only lowers it), so a mean return r means a success
rate of at least r.

Gymnasium ids (envs.resolve / envs.make_env): `tmaze-Passive-L<L>-v0`, `tmaze-Active-L<L>-v0`,
with `-EventTime-v0` variants (envs.event_time); short names `TMazePassiveL<L>`,
`TMazeActiveL<L>` (`-EventTime` appended for the variant), and `tmaze-Passive-L<L>` as
results name tasks. LADDER (10, 30, 100, 300, 1000) is registered; any other L >= 1 is parsed.
"""

from __future__ import annotations

import re

import numpy as np
from gymnasium import spaces
from popgym.core.env import POPGymEnv

__all__ = ["TMaze", "LADDER", "VARIANTS", "env_id", "parse", "ladder_ids", "episode_length",
           "CHANCE_LEVEL"]

LADDER: tuple[int, ...] = (10, 30, 100, 300, 1000)
VARIANTS = ("Passive", "Active")
CHANCE_LEVEL = 0.5
# (dx, dy) of actions 0..3: right, up, left, down
MOVES = ((1, 0), (0, 1), (-1, 0), (0, -1))
ORACLE_OFFSET = {"Passive": 0, "Active": 1}

# tmaze-Passive-L30-v0, tmaze-Passive-L30-EventTime-v0, tmaze-Passive-L30(-EventTime)
_ID = re.compile(r"^tmaze-(?P<variant>Passive|Active)-L(?P<length>[+-]?\d+)"
                 r"(?P<event>-EventTime)?(?:-v0)?$")
# TMazePassiveL30, TMazePassiveL30-EventTime
_SHORT = re.compile(r"^TMaze(?P<variant>Passive|Active)L(?P<length>[+-]?\d+)"
                    r"(?P<event>-EventTime)?$")


def _check_length(corridor_length) -> int:
    if isinstance(corridor_length, bool) or not isinstance(corridor_length, (int, np.integer)) \
            or corridor_length < 1:
        raise ValueError(f"T-Maze corridor length L must be an integer >= 1, got "
                         f"{corridor_length!r}")
    return int(corridor_length)


def episode_length(variant: str, corridor_length: int) -> int:
    """T = L + 2o + 1 steps: passive L + 1, active L + 3."""
    return _check_length(corridor_length) + 2 * ORACLE_OFFSET[variant] + 1


def env_id(variant: str, corridor_length: int, event_time: bool = False) -> str:
    """`tmaze-<variant>-L<L>-v0` (`-EventTime-v0` for the event-time variant)."""
    if variant not in VARIANTS:
        raise ValueError(f"T-Maze variant must be one of {VARIANTS}, got {variant!r}")
    suffix = "-EventTime-v0" if event_time else "-v0"
    return f"tmaze-{variant}-L{_check_length(corridor_length)}{suffix}"


def ladder_ids(event_time: bool = False) -> list[str]:
    """The registered ids: both variants at every L of LADDER."""
    return [env_id(variant, length, event_time) for variant in VARIANTS for length in LADDER]


def parse(name: str) -> tuple[str, int, bool] | None:
    """(variant, L, event_time) of a T-Maze id or short name, None if `name` is not one;
    ValueError for an L < 1 (`tmaze-Passive-L0-v0`)."""
    match = _ID.match(name) or _SHORT.match(name)
    if match is None:
        return None
    length = int(match["length"])
    if length < 1:
        raise ValueError(f"{name!r}: T-Maze corridor length L must be an integer >= 1, got "
                         f"{length}")
    return match["variant"], length, match["event"] is not None


class TMaze(POPGymEnv):
    """One T-Maze (module docstring): `variant` "Passive" or "Active", corridor length L."""

    metadata = {"render_modes": []}

    def __init__(self, variant: str = "Passive", corridor_length: int = 10):
        if variant not in VARIANTS:
            raise ValueError(f"T-Maze variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        self.corridor_length = _check_length(corridor_length)
        self.oracle_offset = ORACLE_OFFSET[variant]                 # o
        self.end = self.oracle_offset + self.corridor_length        # x of the junction
        self.episode_length = episode_length(variant, corridor_length)   # T
        self.max_episode_length = self.episode_length
        self.penalty = -1.0 / self.corridor_length
        self.action_space = spaces.Discrete(4)
        self.observation_space = spaces.Box(np.array([0, -1], np.float32), np.ones(2, np.float32),
                                            dtype=np.float32)
        # hidden state: x, y, goal row g, steps taken t
        self.state_space = spaces.Box(
            np.array([0, -1, -1, 0], np.float32),
            np.array([self.end, 1, 1, self.episode_length], np.float32), dtype=np.float32)
        self.x = self.y = self.goal = self.steps = 0
        self.cue_seen = False

    def get_state(self) -> np.ndarray:
        return np.array([self.x, self.y, self.goal, self.steps], np.float32)

    def _observation(self) -> np.ndarray:
        """[at_end, signal]: the cue g at the oracle on the first visit, the row y at the end."""
        if self.x == 0:
            signal, self.cue_seen = (0 if self.cue_seen else self.goal), True
            return np.array([0.0, signal], np.float32)
        if self.x < self.end:
            return np.zeros(2, np.float32)
        return np.array([1.0, self.y], np.float32)

    def _on_maze(self, x: int, y: int) -> bool:
        """The corridor 0..end at y = 0, and the two goals above and below its end."""
        return (y == 0 and 0 <= x <= self.end) or (x == self.end and abs(y) == 1)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.goal = 1 if self.np_random.integers(2) else -1
        self.x, self.y, self.steps, self.cue_seen = self.oracle_offset, 0, 0, False
        return self._observation(), {}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"T-Maze action must be 0..3, got {action!r}")
        dx, dy = MOVES[int(action)]
        if self._on_maze(self.x + dx, self.y + dy):
            self.x, self.y = self.x + dx, self.y + dy
        self.steps += 1
        terminated = self.steps >= self.episode_length
        if terminated:
            reward = 1.0 if self.y == self.goal else 0.0
        else:
            reward = self.penalty if self.x < self.steps - self.oracle_offset else 0.0
        info = {"success": self.y == self.goal} if terminated else {}
        return self._observation(), reward, terminated, False, info
