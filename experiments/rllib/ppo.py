"""PPO on POPGym for every kind of model a study names, and the new-stack builder behind it.

    from experiments import ppo_config, POPGYM_PPO
    algo = ppo_config(env="popgym-RepeatPreviousEasy-v0", memory="gru").build_algo()
    algo.train()

`ppo_config` builds PPO (new API stack) around a MemoryRLModule. It starts from the POPGym
paper's PPO protocol (`POPGYM_PPO`) and lets every value be overridden; on an event-time task
(`envs.is_event_time`) the module reads Δt from the observations (`timesteps_from_obs=True`)
unless model_config says otherwise. The algorithm samples and cuts minibatches as RLlib's old
API stack did, where POPGym's numbers come from (`experiments.rllib.batching`).

`algorithm_config` is the one dispatch from a study's model entry to its PPO config:

    stack "new", a memory     ppo_config: MemoryRLModule, new API stack
    stack "old", a memory     old_stack.old_stack_ppo_config: the same network, "memrl_<name>"
    "popgym:<Class>"          POPGym's own model class, old API stack (popgym_models)
    "rllib:<Class>"           RLlib's own model (rllib:GTrXL), old API stack (rllib_models)
"""

from __future__ import annotations

from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.algorithms.ppo import PPOConfig

import envs

from .batching import PPOLearner
from .old_stack import CUSTOM_MODEL_CONFIG_KEYS, old_stack_ppo_config, register_old_stack_models
from .defaults import POPGYM_PPO
from .popgym_models import (custom_model_config, is_popgym, popgym_class,
                            position_table_problem)
from .rl_module import memory_module_spec
from .rllib_models import is_rllib, rllib_model_config
from .sampling import BatchedEnvRunner
from .seeding import check_layout, rllib_seed
from .settings import register_rllib_envs, split_ppo_settings

__all__ = ["ppo_config", "algorithm_config"]


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
    `seeding.rllib_seed(seed)`, so that trials of different seeds share no env stream.
    Sampling and minibatches follow RLlib's old stack (`batching.CompleteEpisodesEnvRunner`,
    `batching.PPOLearner`); the env runner (`sampling.BatchedEnvRunner`) does its default
    connector work once per vector step on batched arrays.
    """
    env_id = envs.resolve_one(env)
    register_rllib_envs(env_id)
    check_layout(num_env_runners, num_envs_per_env_runner)
    model_config = dict(model_config or {})
    for key in ("memory", "memory_kwargs", "max_seq_len"):
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
                     env_runner_cls=BatchedEnvRunner, **env_runner_args)
        .rl_module(rl_module_spec=spec)
        .training(**training)
        .learners(learner_class=PPOLearner)
        .debugging(seed=rllib_seed(seed))
    )


def algorithm_config(model: dict, task: str, *, seed: int, ppo: dict, sizes: dict,
                     num_env_runners: int = 0, num_envs_per_env_runner: int = 1,
                     num_gpus: float = 0.0) -> AlgorithmConfig:
    """The PPO config of one run of `model` on `task` (see the module docstring for the kinds).

    model: {"name": registry name or "popgym:<Class>", "kwargs": its keywords, "stack": "new"
    or "old"}; ppo: POPGYM_PPO overrides (ppo_config's **ppo); sizes: the network's
    model_config (pre_size, hidden_size, head_size, ...); the rest: resources.
    """
    common = dict(env=envs.resolve_one(task, "task"), seed=seed, num_env_runners=num_env_runners,
                  num_envs_per_env_runner=num_envs_per_env_runner, **ppo)
    if model["stack"] == "new" and not is_popgym(model["name"]) and not is_rllib(model["name"]):
        config = ppo_config(memory=model["name"], memory_kwargs=model["kwargs"],
                            model_config=sizes, **common)
        return config.learners(num_gpus_per_learner=num_gpus) if num_gpus else config
    if is_rllib(model["name"]):             # RLlib's own model dict, no custom model
        max_seq_len = {**POPGYM_PPO, **ppo}["max_seq_len"]
        config = old_stack_ppo_config(custom_model=None, custom_model_config={},
                                      num_gpus=num_gpus, **common)
        return config.training(model=rllib_model_config(model["name"], model["kwargs"], sizes,
                                                        max_seq_len))
    if is_popgym(model["name"]):
        settings = {**POPGYM_PPO, **ppo}
        problem = position_table_problem(model["name"], common["env"],
                                         envs.max_episode_length(common["env"]),
                                         settings["max_seq_len"], settings["batch_mode"])
        if problem:
            raise ValueError(problem)
        custom_model = popgym_class(model["name"])
        custom_config = custom_model_config(sizes, model["kwargs"])
    else:
        custom_model = register_old_stack_models()[model["name"]]
        custom_config = {"memory_kwargs": model["kwargs"],
                         **{k: v for k, v in sizes.items() if k in CUSTOM_MODEL_CONFIG_KEYS}}
    return old_stack_ppo_config(custom_model=custom_model, custom_model_config=custom_config,
                                num_gpus=num_gpus, **common)
