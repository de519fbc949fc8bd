"""memrl's RLlib side: PPO on POPGym with any registered memory, studies, reports.

    from experiments import ppo_config, POPGYM_PPO
    algo = ppo_config(env="popgym-RepeatPreviousEasy-v0", memory="gru").build_algo()

The Python API is the list below, loaded on first use (so `memrl --help` imports neither Ray
nor PyTorch). The packages, each importing only the ones above it in this list:

    experiments.rllib    RLlib glue: the RLModule, PPO configs (both API stacks, POPGym's own
                         models), sampling and minibatches as the old stack did, env seeding,
                         rollout of a trained policy
    experiments.study    a study from YAML: schema, grid and sweeps, trials, Ray Tune, logs
    experiments.report   MMER tables, curves, rliable aggregate, evaluation table
    experiments.cli      the `memrl` command (train | report | rollout | check | models)
"""

from __future__ import annotations

import importlib

# public name -> the module that defines it
_API = {
    "ppo_config": "experiments.rllib.ppo",
    "POPGYM_PPO": "experiments.rllib.defaults",
    "register_rllib_envs": "experiments.rllib.settings",
    "MemoryRLModule": "experiments.rllib.rl_module",
    "register_old_stack_models": "experiments.rllib.old_stack",
    "rollout": "experiments.rllib.rollout",
}

__all__ = list(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'experiments' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)


def __dir__():
    return sorted([*globals(), *_API])
