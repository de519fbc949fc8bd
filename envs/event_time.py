"""Event-time variants of POPGym tasks: the agent acts at irregular times and is told Δt.

At each agent step t the wrapper draws a gap k_t ~ Uniform{1, ..., max_gap} from its own RNG,
holds the agent's action a_t for k_t steps of the task (fewer if the episode ends inside the
gap) and returns the task's last observation with the elapsed time appended:

    obs_t = (flat task obs at the end of the gap, Δt_t)      Δt_t = steps actually taken (≥ 1)
    r_t   = Σ task rewards over the gap

so the return of an episode is the task's own return over the same task steps (POPGym keeps
it in [-1, 1]); the agent only sees fewer, irregularly spaced observations. On reset Δt = 1.
Δt_t is the time elapsed between observation t-1 and t, the `integration_timesteps` of the
memory interface (causal: it arrives with obs_t).
"""

from __future__ import annotations

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding

__all__ = ["EventTime"]


class EventTime(gymnasium.Wrapper):
    """Repeats each action for a random gap of 1..max_gap task steps; appends Δt to the obs.

    `env` must have a 1-D float32 Box observation (envs.make_env flattens to one); the new
    Box is that one plus a last entry Δt in [0, max_gap]. The gaps come from this wrapper's
    own generator, reseeded by `reset(seed=...)`, so the task's random stream is untouched.
    """

    def __init__(self, env: gymnasium.Env, max_gap: int = 4):
        super().__init__(env)
        if isinstance(max_gap, bool) or not isinstance(max_gap, (int, np.integer)) or max_gap < 1:
            raise ValueError(f"max_gap must be a positive int, got {max_gap!r}")
        box = env.observation_space
        if not isinstance(box, spaces.Box) or len(box.shape) != 1:
            raise ValueError(f"EventTime needs a 1-D Box observation space, got {box}")
        self.max_gap = int(max_gap)
        self.observation_space = spaces.Box(np.append(box.low, 0.0).astype(np.float32),
                                            np.append(box.high, self.max_gap).astype(np.float32),
                                            dtype=np.float32)
        self.gap_rng, _ = seeding.np_random()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self.gap_rng, _ = seeding.np_random(seed)
        obs, info = self.env.reset(seed=seed, options=options)
        return self._with_elapsed(obs, 1), info

    def step(self, action):
        gap = int(self.gap_rng.integers(1, self.max_gap + 1))
        total_reward = 0.0
        for elapsed in range(1, gap + 1):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total_reward += float(reward)
            if terminated or truncated:
                break
        return self._with_elapsed(obs, elapsed), total_reward, terminated, truncated, info

    @staticmethod
    def _with_elapsed(obs: np.ndarray, elapsed: int) -> np.ndarray:
        return np.append(obs, np.float32(elapsed)).astype(np.float32)
