"""Every registered memory as an RLlib *old API stack* custom model, named "memrl_<name>".

    from experiments.rllib.old_stack import register_old_stack_models
    names = register_old_stack_models()          # {"gru": "memrl_gru", "lmu": "memrl_lmu", ...}
    config = (PPOConfig()
              .api_stack(enable_rl_module_and_learner=False,
                         enable_env_runner_and_connector_v2=False)
              .training(model={"custom_model": names["gru"], "max_seq_len": 64,
                               "custom_model_config": {"hidden_size": 256}}))

The network is the one of the new-stack `MemoryRLModule` (the POPGym baselines' layout):

    obs (B, T, obs) -> Linear(obs, pre) -> LayerNorm(pre, no affine) -> Linear(pre, pre) + LeakyReLU
        -> memory(pre -> hidden) -> actor:  Linear(hidden, head) LeakyReLU Linear(head, head)
                                            LeakyReLU Linear(head, num_outputs)
                                 -> critic: same layout, Linear(head, 1)

Orthogonal init for every Linear, N(0, 0.01) for the two final layers. The layers are built by
the same helpers as MemoryRLModule's, so a memory trains the same network on either stack.

RLlib's old stack carries a recurrent state as a list of tensors, each (B, ...). The memory's
state dict travels as that list in sorted key order (`state_keys`). Each row of an old-stack
training batch is a piece of one episode starting at its stored state, so the memory runs with
`lengths=seq_lens` and no resets. A memory with no state (`mlp`) is a non-recurrent model here:
RLlib then sends no state and no sequence lengths, and every step is a length-1 sequence.

`custom_model_config` keys: `memory_kwargs` (dict for `memory_models.make`), `pre_size` (128),
`hidden_size` (256, the memory's hidden size), `head_size` (128). The sequence cut-off is the
old stack's own `model["max_seq_len"]`.
"""

from __future__ import annotations

import gymnasium as gym
import torch
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.models import ModelCatalog
from ray.rllib.models.torch.recurrent_net import RecurrentNetwork
from torch import Tensor, nn

import memory_models

from .rl_module import MODEL_CONFIG_DEFAULTS, build_layers, check_model_config, pad_time
from .seeding import check_layout, rllib_seed
from .settings import register_rllib_envs, split_ppo_settings

PREFIX = "memrl_"

# custom_model_config keys: MemoryRLModule's model_config keys less those the old stack fixes
# elsewhere (the memory: by the registered name; max_seq_len: model["max_seq_len"]) or does not
# support (timesteps_from_obs: the old stack runs every memory with Δt = 1, the event-time
# tasks are for the new stack)
CUSTOM_MODEL_CONFIG_KEYS = tuple(k for k in MODEL_CONFIG_DEFAULTS
                                 if k not in ("memory", "max_seq_len", "timesteps_from_obs"))


def custom_model_name(memory: str) -> str:
    """The old-stack custom model name of a registered memory: "memrl_<memory>"."""
    memory_models.get(memory)           # unknown names raise, listing the valid ones
    return PREFIX + memory


def register_old_stack_models() -> dict[str, str]:
    """Register every memory with `ModelCatalog.register_custom_model`; name -> custom name.

    Idempotent. Call it in the driver before building the algorithm (RLlib ships the classes
    to its workers through the same registry).
    """
    names = {}
    for memory in memory_models.available():
        names[memory] = custom_model_name(memory)
        ModelCatalog.register_custom_model(names[memory], old_stack_model_class(memory))
    return names


_CLASSES: dict[str, type] = {}


def old_stack_model_class(memory: str) -> type:
    """The `MemoryModelV2` subclass bound to `memory` (one class per memory, cached)."""
    memory_models.get(memory)
    if memory not in _CLASSES:
        _CLASSES[memory] = type(f"MemoryModelV2_{memory}", (MemoryModelV2,),
                                {"memory_name": memory, "__module__": __name__})
    return _CLASSES[memory]


def __getattr__(name):
    # Cloudpickle finds the generated classes by their module-level name in the workers.
    if name.startswith("MemoryModelV2_"):
        return old_stack_model_class(name[len("MemoryModelV2_"):])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class MemoryModelV2(RecurrentNetwork, nn.Module):
    """Old-stack TorchModelV2 around one registered memory (`memory_name`, set by subclass)."""

    memory_name: str = ""

    def __init__(self, obs_space: gym.spaces.Space, action_space: gym.spaces.Space,
                 num_outputs: int, model_config: dict, name: str, **custom_model_config):
        nn.Module.__init__(self)
        super().__init__(obs_space, action_space, num_outputs, model_config, name)
        unknown = sorted(set(custom_model_config) - set(CUSTOM_MODEL_CONFIG_KEYS))
        if unknown:
            raise ValueError(f"{PREFIX}{self.memory_name}: unknown custom_model_config key(s) "
                             f"{unknown}; valid keys: {sorted(CUSTOM_MODEL_CONFIG_KEYS)}")
        cfg = check_model_config({**custom_model_config, "memory": self.memory_name,
                                  "max_seq_len": model_config["max_seq_len"]})
        obs_size = gym.spaces.utils.flatdim(obs_space)
        # the layers of MemoryRLModule (experiments/rl_module.py)
        self.pre, self.memory, self.actor, self.critic = build_layers(obs_size, num_outputs, cfg)
        self.state_keys = tuple(sorted(self.memory.initial_state(1, device="meta")))
        self._features: Tensor | None = None
        self._steps = 0

    # ------------------------------------------------------------------ ModelV2 API
    def get_initial_state(self) -> list[Tensor]:
        """The memory's initial state without the batch dim, in `state_keys` order."""
        param = self.pre[0].weight
        state = self.memory.initial_state(1, device=param.device, dtype=param.dtype)
        return [state[k][0] for k in self.state_keys]

    def forward(self, input_dict, state, seq_lens):
        if not self.state_keys:        # memoryless: every step is its own length-1 sequence
            obs = input_dict["obs_flat"].float()[:, None]                       # (N, 1, obs)
            logits, _ = self.forward_rnn(obs, [], torch.ones(obs.shape[0], dtype=torch.long))
            return logits.reshape(-1, self.num_outputs), []
        return super().forward(input_dict, state, seq_lens)

    def forward_rnn(self, inputs: Tensor, state: list[Tensor], seq_lens: Tensor):
        """inputs (B, T, obs), state [(B, ...)] in key order, seq_lens (B,) -> (B, T, out).

        Only the first L = max(seq_lens) steps are computed; the outputs past L are zeros
        (RLlib's padding, masked out by the loss).
        """
        param = self.pre[0].weight
        memory_state = {k: s.to(param.dtype) for k, s in zip(self.state_keys, state)}
        lengths = seq_lens.to(device=inputs.device, dtype=torch.long)
        steps = inputs.shape[1]
        longest = max(int(lengths.max()), 1) if lengths.numel() else steps
        z = self.pre(inputs[:, :longest].to(param.dtype))                       # (B, L, pre)
        if longest == 1 and bool((lengths == 1).all()):    # sampling: the recurrent step
            y_t, memory_state = self.memory.step(z[:, 0], memory_state)
            features = y_t[:, None]                                             # (B, 1, hidden)
        else:
            features, memory_state = self.memory.scan(z, memory_state, lengths=lengths)
        self._features, self._steps = features, steps                           # (B, L, hidden)
        return pad_time(self.actor(features), steps), [memory_state[k] for k in self.state_keys]

    def value_function(self) -> Tensor:
        if self._features is None:
            raise RuntimeError("value_function() called before forward()")
        return pad_time(self.critic(self._features), self._steps).reshape(-1)


def old_stack_ppo_config(*, env: str, custom_model, custom_model_config: dict, seed: int = 0,
                         num_env_runners: int = 0, num_envs_per_env_runner: int = 1,
                         num_gpus: float = 0.0, **ppo) -> PPOConfig:
    """PPOConfig on RLlib's old API stack training `custom_model` (a registered name such as
    "memrl_gru", or a ModelV2 class such as POPGym's) on POPGym `env`.

    `ppo` takes the keys of `experiments.study.config.PPOSettings` (new-stack names, POPGym's
    protocol as defaults), mapped to the old stack's: train_batch_size_per_learner ->
    train_batch_size, max_seq_len -> model["max_seq_len"]. `shuffle_batch_per_epoch` has no
    old-stack counterpart (the old stack always permutes its minibatches' order) and is
    dropped. `seed` is the trial's seed: RLlib gets `seeding.rllib_seed(seed)`, whose env
    seeds no other trial seed shares.
    """
    register_rllib_envs(env)
    check_layout(num_env_runners, num_envs_per_env_runner)
    max_seq_len, env_runner_args, training = split_ppo_settings(ppo)
    training["train_batch_size"] = training.pop("train_batch_size_per_learner")
    training.pop("shuffle_batch_per_epoch", None)
    return (PPOConfig()
            .api_stack(enable_rl_module_and_learner=False,
                       enable_env_runner_and_connector_v2=False)
            .framework("torch")
            .environment(env)
            .env_runners(num_env_runners=num_env_runners,
                         num_envs_per_env_runner=num_envs_per_env_runner, **env_runner_args)
            .training(model={"custom_model": custom_model, "max_seq_len": max_seq_len,
                             "custom_model_config": custom_model_config}, **training)
            .resources(num_gpus=num_gpus)
            .debugging(seed=rllib_seed(seed)))
