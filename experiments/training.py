"""PPO on POPGym with a MemoryRLModule (RLlib new API stack).

    from experiments.training import ppo_config, POPGYM_PPO
    algo = ppo_config(env="popgym-RepeatPreviousEasy-v0", memory="gru").build_algo()
    algo.train()

`ppo_config` starts from the POPGym paper's PPO protocol (`POPGYM_PPO`) and lets every value be
overridden. `register_rllib_envs()` makes every POPGym id known to RLlib / Tune, the
event-time variants too; on an event-time task (`envs.is_event_time`) the module reads Δt from
the observations (`timesteps_from_obs=True`) unless model_config says otherwise.

The algorithm samples and cuts minibatches as RLlib's old API stack did, where POPGym's numbers
come from (`experiments.batching`): complete episodes lose none of the running ones, and a
recurrent batch is cut into `count // minibatch_size` minibatches of whole episode chunks.
"""

from __future__ import annotations

import functools
import inspect

from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.algorithms.ppo import PPOConfig
from ray.tune.registry import ENV_CREATOR, _global_registry, register_env

import envs

from .defaults import POPGYM_PPO
from .batching import CompleteEpisodesEnvRunner, PPOLearner
from .rl_module import memory_module_spec
from .seeding import check_layout, rllib_seed

__all__ = ["POPGYM_PPO", "ppo_config", "register_rllib_envs"]

# keys of POPGYM_PPO (and of ppo_config's **ppo) that are not PPOConfig.training() arguments
_ENV_RUNNER_KEYS = ("batch_mode", "rollout_fragment_length")
_TRAINING_DEFAULTS = {k: v for k, v in POPGYM_PPO.items()
                      if k not in (*_ENV_RUNNER_KEYS, "max_seq_len", "num_env_runners",
                                   "num_envs_per_env_runner")}


def _training_keys() -> set[str]:
    names = set()
    for cls in (PPOConfig, AlgorithmConfig):
        names |= {k for k, p in inspect.signature(cls.training).parameters.items()
                  if k != "self" and p.kind == p.KEYWORD_ONLY}
    return names


def register_rllib_envs() -> None:
    """ray.tune.register_env for every POPGym id and its event-time variant (creator:
    envs.make_env); idempotent."""
    envs.register_envs()
    for env_id in envs.list_envs() + envs.list_envs("event_time"):
        if not _global_registry.contains(ENV_CREATOR, env_id):
            register_env(env_id, functools.partial(envs.make_env, env_id))


def ppo_config(*, env: str, memory: str, memory_kwargs: dict | None = None,
               model_config: dict | None = None, seed: int = 0, num_env_runners: int = 0,
               num_envs_per_env_runner: int = 1, **ppo) -> PPOConfig:
    """PPOConfig (new API stack) training a MemoryRLModule around `memory` on POPGym `env`.

    `ppo` overrides POPGYM_PPO's training() values (lr, gamma, train_batch_size_per_learner,
    minibatch_size, num_epochs, clip_param, entropy_coeff, vf_loss_coeff, lambda_, ...) and
    also takes `max_seq_len` (into model_config), `batch_mode` and `rollout_fragment_length`,
    so `ppo_config(env=..., memory=..., **POPGYM_PPO)` is the paper's protocol. On an
    event-time task model_config's `timesteps_from_obs` defaults to True: the memory integrates
    over the Δt the env appends to each observation. `seed` is the trial's seed: RLlib gets
    `seeding.rllib_seed(seed)`, so that trials of different seeds share no env stream. Sampling and minibatches follow RLlib's
    old stack (`batching.CompleteEpisodesEnvRunner`, `batching.PPOLearner`).
    """
    register_rllib_envs()
    env_id, = _one_env(env)
    check_layout(num_env_runners, num_envs_per_env_runner)
    model_config = dict(model_config or {})
    for key in ("memory", "memory_kwargs"):
        if key in model_config:
            raise ValueError(f"pass {key!r} as ppo_config's own argument, not in model_config")
    model_config["max_seq_len"], env_runner_args, training = split_ppo_settings(ppo)
    if envs.is_event_time(env_id):
        model_config.setdefault("timesteps_from_obs", True)
    spec = memory_module_spec(memory, memory_kwargs, **model_config)
    return (
        PPOConfig()
        .api_stack(enable_rl_module_and_learner=True, enable_env_runner_and_connector_v2=True)
        .framework("torch")
        .environment(env_id)
        .env_runners(num_env_runners=num_env_runners,
                     num_envs_per_env_runner=num_envs_per_env_runner,
                     env_runner_cls=CompleteEpisodesEnvRunner, **env_runner_args)
        .rl_module(rl_module_spec=spec)
        .training(**training)
        .learners(learner_class=PPOLearner)
        .debugging(seed=rllib_seed(seed))
    )


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


def _one_env(env: str) -> list[str]:
    if not isinstance(env, str):
        raise TypeError(f"env must be one POPGym id, got {env!r}")
    ids = envs.resolve(env)
    if len(ids) != 1:
        raise ValueError(f"env must be one POPGym id, got group {env!r} ({len(ids)} envs)")
    return ids
