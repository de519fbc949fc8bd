"""What every PPO config of memrl starts from, on either API stack.

    register_rllib_envs()        every env id (envs.task_ids) known to RLlib / Tune
    split_ppo_settings(ppo)      POPGYM_PPO updated by `ppo` -> (max_seq_len, env_runners()
                                 arguments, training() arguments); unknown keys refused
"""

from __future__ import annotations

import functools
import inspect

from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.algorithms.ppo import PPOConfig
from ray.tune.registry import register_env

import envs

from .defaults import POPGYM_PPO
from .rllib_private import env_registered

__all__ = ["register_rllib_envs", "split_ppo_settings"]

# keys of POPGYM_PPO (and of ppo_config's **ppo) that are not PPOConfig.training() arguments
_ENV_RUNNER_KEYS = ("batch_mode", "rollout_fragment_length")
_TRAINING_DEFAULTS = {k: v for k, v in POPGYM_PPO.items()
                      if k not in (*_ENV_RUNNER_KEYS, "max_seq_len", "num_env_runners",
                                   "num_envs_per_env_runner")}


def register_rllib_envs(*names: str) -> None:
    """ray.tune.register_env for every id of envs.task_ids(*names) (POPGym's and their
    event-time variants, T-Maze's ladder, MiniGrid Memory, and a T-Maze at another L named in
    `names`; creator: envs.make_env); idempotent."""
    envs.register_envs(*names)
    for env_id in envs.task_ids(*names):
        if not env_registered(env_id):
            register_env(env_id, functools.partial(envs.make_env, env_id))


def _training_keys() -> set[str]:
    names = set()
    for cls in (PPOConfig, AlgorithmConfig):
        names |= {k for k, p in inspect.signature(cls.training).parameters.items()
                  if k != "self" and p.kind == p.KEYWORD_ONLY}
    return names


def split_ppo_settings(ppo: dict) -> tuple[int, dict, dict]:
    """POPGYM_PPO updated by `ppo`, split into (max_seq_len, env_runners() arguments,
    training() arguments); an unknown key raises ValueError listing the valid ones."""
    ppo = {**_TRAINING_DEFAULTS, "max_seq_len": POPGYM_PPO["max_seq_len"],
           "batch_mode": POPGYM_PPO["batch_mode"], **ppo}
    valid = _training_keys() | {"max_seq_len", *_ENV_RUNNER_KEYS}
    unknown = sorted(set(ppo) - valid)
    if unknown:
        raise ValueError(f"unknown PPO setting(s) {unknown}; valid: {sorted(valid)}")
    env_runner_args = {k: ppo.pop(k) for k in _ENV_RUNNER_KEYS if k in ppo}
    return ppo.pop("max_seq_len"), env_runner_args, ppo
