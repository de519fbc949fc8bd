"""One rule from a trial's seed to the seeds of its environments, on both API stacks.

RLlib seeds a trial's environments by adding small offsets to the one seed of its config:

    old stack   sub-env i of env runner w:  seed + w + 1000 w + i   (RolloutWorker: seed + w,
                                                                      then + 1000 w + i)
    new stack   sub-env i of env runner w:  seed + w + i             (the vector env: + i)

A study's seeds are small consecutive integers, so with the trial seed given to RLlib as it is,
trial seed 0 with 8 envs used env seeds 0..7 and trial seed 1 used 1..8: two "independent" seeds
shared 7 of their 8 environment streams (and on the new stack runner 1's env 1 is runner 2's
env 0 within one trial). Their learning curves rose and fell together.

So RLlib gets `rllib_seed(seed) = seed * SEED_STRIDE`, and every env runner seeds its sub-envs
with the old stack's own rule on that base (`env_seeds`; our new-stack env runner applies it):

    env seed of (trial seed s, env runner w, sub-env i) = s * SEED_STRIDE + 1001 w + i

For w < 999 runners and i < 1000 envs per runner these lie in [s * SEED_STRIDE,
(s + 1) * SEED_STRIDE): the trials of different seeds never share a stream, whatever their
layout, and the same trial seed gives the same streams on both stacks, for every model (paired
comparisons stay paired). Torch's, numpy's and Python's global seeds are RLlib's (the base plus
the runner index), so a trial is reproduced from its seed. numpy takes seeds below 2**32, hence
MAX_SEED. Evaluation episodes inside a study keep their own fixed seeds, the same for every
trial (so that evaluations compare): EVAL_SEED + i for episode i, above every trial's range.
"""

from __future__ import annotations

__all__ = ["SEED_STRIDE", "MAX_SEED", "MAX_ENV_RUNNERS", "MAX_ENVS_PER_ENV_RUNNER",
           "EVAL_SEED", "rllib_seed", "env_seeds", "check_layout"]

SEED_STRIDE = 1_000_000            # env seeds of one trial seed: [s * STRIDE, (s + 1) * STRIDE)
MAX_ENV_RUNNERS = 998              # runner indices 0..998: 1001 * 998 + 999 < SEED_STRIDE
MAX_ENVS_PER_ENV_RUNNER = 1000     # sub-env index i < 1000 (the old stack's stride per runner)
MAX_SEED = (2**32 - SEED_STRIDE) // SEED_STRIDE    # 4293: every env seed stays below 2**32
EVAL_SEED = (MAX_SEED + 1) * SEED_STRIDE           # evaluation episode i: EVAL_SEED + i


def rllib_seed(seed: int) -> int:
    """The seed a trial of seed `seed` gives RLlib's config (`.debugging(seed=...)`)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an int in [0, {MAX_SEED}] (its environments are seeded "
                         f"from seed x {SEED_STRIDE:,} and numpy takes seeds below 2**32), "
                         f"got {seed!r}")
    return seed * SEED_STRIDE


def env_seeds(base: int, worker_index: int, num_envs: int) -> list[int]:
    """The seeds of env runner `worker_index`'s `num_envs` sub-envs for RLlib seed `base`
    (RLlib's old-stack rule: base + 1001 w + i)."""
    return [base + 1001 * worker_index + i for i in range(num_envs)]


def check_layout(num_env_runners: int, num_envs_per_env_runner: int) -> None:
    """Refuse a layout whose env seeds would leave its trial seed's range."""
    if num_env_runners > MAX_ENV_RUNNERS or num_envs_per_env_runner > MAX_ENVS_PER_ENV_RUNNER:
        raise ValueError(f"at most {MAX_ENV_RUNNERS} env runners x {MAX_ENVS_PER_ENV_RUNNER} "
                         f"envs each keep the env streams of different trial seeds apart; got "
                         f"{num_env_runners} x {num_envs_per_env_runner}")
