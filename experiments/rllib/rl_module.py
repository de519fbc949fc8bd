"""MemoryRLModule: any registered memory as an RLlib (new API stack) PPO policy + value net.

The architecture is the POPGym baselines' (popgym/baselines/ray_models/base_model.py):

    obs (D) -> Linear(D, pre) -> LayerNorm(pre, no affine) -> Linear(pre, pre) -> LeakyReLU
            -> memory (pre -> hidden)                              features z_t (hidden)
    actor:  z -> Linear(hidden, head) -> LeakyReLU -> Linear(head, head) -> LeakyReLU
              -> Linear(head, action dist inputs)
    critic: z -> same MLP shape -> Linear(head, 1)

Linear weights are orthogonal, the two final layers N(0, 0.01); the memory keeps its own init.

Batch layouts RLlib sends:
- stateful memory (initial state not {}): obs (B, T, D) with STATE_IN {key: (B, ...)}; T = 1 in
  the env runners, T = max_seq_len in the learner, where each row is one chunk of one episode,
  zero-padded to max_seq_len, with SEQ_LENS (B,) valid steps and a LOSS_MASK (B, T).
- memoryless model (`mlp`, initial state {}): RLlib treats the module as stateless and sends
  obs (N, D); every row is one step.

Before the memory runs, the padding past the batch's longest sequence is cut off; the memory
gets per-row `lengths`, so STATE_OUT is the state after each row's last valid step.

With `timesteps_from_obs` the last observation feature is the time Δt elapsed since the
previous observation (the envs' event-time variants append it): the memory gets it as
`integration_timesteps` (B, L) in scan (1 on padded steps) and `integration_timestep` (B,) in
step. The pre-layers still read the whole observation, Δt included.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.core.rl_module.torch import TorchRLModule
from torch import Tensor, nn

import memory_models
from memory_models.checks import check_int

from .defaults import POPGYM_PPO, POPGYM_SIZES
from .rllib_private import action_dist_cls

__all__ = ["MemoryRLModule", "memory_module_spec", "MODEL_CONFIG_DEFAULTS", "check_model_config",
           "build_layers"]

# model_config keys of MemoryRLModule and their defaults ("memory" has none: it is required)
MODEL_CONFIG_DEFAULTS: dict[str, Any] = {
    "memory": None,          # registry name, memory_models.available()
    "memory_kwargs": {},     # extra keywords of that memory (memory_models.keywords(name))
    "max_seq_len": POPGYM_PPO["max_seq_len"],   # learner rows (BPTT length)
    **POPGYM_SIZES,          # pre_size 128 (observation pre-processing), hidden_size 256
                             # (the memory's output), head_size 128 (actor and critic MLPs)
    "timesteps_from_obs": False,  # last obs feature is Δt, the memory's integration timestep
}

_RLLIB_DEFAULTS = DefaultModelConfig().__dict__


def check_model_config(model_config: dict) -> dict[str, Any]:
    """model_config with defaults filled in; bad keys or values raise ValueError.

    RLlib merges its generic model-config keys (`vf_share_layers`, `fcnet_hiddens`, ...) into
    every module's config; they are accepted only at RLlib's default values (where they do
    nothing), any other value of them is an error, as it would be silently ignored.
    """
    if not isinstance(model_config, dict):
        raise TypeError(f"model_config must be a dict, got {type(model_config).__name__}")
    valid = sorted(MODEL_CONFIG_DEFAULTS)
    config = {k: v for k, v in model_config.items() if k in MODEL_CONFIG_DEFAULTS}
    for key, value in model_config.items():
        if key in MODEL_CONFIG_DEFAULTS or key == "vf_share_layers":  # PPO always injects it
            continue
        if key in _RLLIB_DEFAULTS:
            if value != _RLLIB_DEFAULTS[key]:
                raise ValueError(f"model_config key {key!r} is an RLlib default-model setting "
                                 f"that MemoryRLModule does not use; valid keys: {valid}")
            continue
        raise ValueError(f"unknown model_config key {key!r} for MemoryRLModule; "
                         f"valid keys: {valid}")
    config = {**MODEL_CONFIG_DEFAULTS, **config}
    if config["memory"] is None:
        raise ValueError(f"model_config needs 'memory', one of {memory_models.available()}")
    memory_models.get(config["memory"])                     # unknown name -> ValueError
    if not isinstance(config["memory_kwargs"], dict):
        raise ValueError(f"model_config['memory_kwargs'] must be a dict, "
                         f"got {config['memory_kwargs']!r}")
    try:
        memory_models.check_kwargs(config["memory"], config["memory_kwargs"])
    except memory_models.UnknownKeywordError as error:
        raise ValueError(f"model_config: unknown memory_kwargs {error.unknown}; "
                         f"{error}") from None
    for key in ("max_seq_len", "pre_size", "hidden_size", "head_size"):
        check_int(f"model_config[{key!r}]", config[key])
    if not isinstance(config["timesteps_from_obs"], bool):
        raise ValueError(f"model_config['timesteps_from_obs'] must be a bool, "
                         f"got {config['timesteps_from_obs']!r}")
    return config


def memory_module_spec(memory: str, memory_kwargs: dict | None = None,
                       **model_config) -> RLModuleSpec:
    """RLModuleSpec of a MemoryRLModule around `memory`; model_config keys as in
    MODEL_CONFIG_DEFAULTS (every default is written into the spec: RLlib's connectors read
    `max_seq_len` from it)."""
    config = check_model_config({**model_config, "memory": memory,
                                 "memory_kwargs": dict(memory_kwargs or {})})
    return RLModuleSpec(module_class=MemoryRLModule, model_config=config)


def _orthogonal(layer: nn.Linear) -> nn.Linear:
    nn.init.orthogonal_(layer.weight)
    return layer


def _final(layer: nn.Linear) -> nn.Linear:
    nn.init.normal_(layer.weight, std=0.01)
    return layer


def _head(hidden_size: int, head_size: int, out_size: int) -> nn.Sequential:
    return nn.Sequential(_orthogonal(nn.Linear(hidden_size, head_size)), nn.LeakyReLU(),
                         _orthogonal(nn.Linear(head_size, head_size)), nn.LeakyReLU(),
                         _final(nn.Linear(head_size, out_size)))


def build_layers(obs_size: int, num_outputs: int, config: dict[str, Any]):
    """The POPGym baselines' network around `config["memory"]` (a checked model_config):
    (pre (obs -> pre), memory (pre -> hidden), actor (hidden -> num_outputs), critic (-> 1)).
    Both API stacks (this module and experiments.rllib.old_stack) build their layers here."""
    pre, hidden, head = config["pre_size"], config["hidden_size"], config["head_size"]
    trunk = nn.Sequential(_orthogonal(nn.Linear(obs_size, pre)),
                          nn.LayerNorm(pre, elementwise_affine=False),
                          _orthogonal(nn.Linear(pre, pre)), nn.LeakyReLU())
    memory = memory_models.make(config["memory"], input_size=pre, hidden_size=hidden,
                                **config["memory_kwargs"])
    return trunk, memory, _head(hidden, head, num_outputs), _head(hidden, head, 1)


class MemoryRLModule(TorchRLModule, ValueFunctionAPI):
    """PPO actor-critic around a registered memory (see module docstring)."""

    def setup(self):
        config = check_model_config(dict(self.model_config))
        self.model_config = config     # connectors read model_config["max_seq_len"]
        if not isinstance(self.observation_space, gym.spaces.Box) or \
                len(self.observation_space.shape) != 1:
            raise ValueError(f"MemoryRLModule needs a flat Box observation space (envs.make_env "
                             f"gives one), got {self.observation_space}")
        obs_size = self.observation_space.shape[0]
        self.action_dist_cls = action_dist_cls(self.action_space, framework="torch")
        dist_inputs = int(self.action_dist_cls.required_input_dim(self.action_space))

        self.pre, self.memory, self.actor, self.critic = build_layers(obs_size, dist_inputs,
                                                                      config)

    def get_initial_state(self) -> dict[str, np.ndarray]:
        """The memory's initial state without the batch dim ({} for a memoryless model)."""
        state = self.memory.initial_state(1, device="cpu")
        return {k: v[0].detach().numpy() for k, v in state.items()}

    # ------------------------------------------------------------------ rollout forwards
    # RLlib's TorchRLModule puts the module in eval mode before every rollout forward (a walk
    # over every submodule, ~22k per 8192-step sample() of 16 envs) and back to train mode
    # after it when it was training. An env runner's module stays in eval mode
    # (sampling.BatchedEnvRunner), so there the forward runs without the walk: the same mode.
    def forward_exploration(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        if self.training:
            return super().forward_exploration(batch, **kwargs)
        return self._forward_exploration(batch, **kwargs)

    def forward_inference(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        if self.training:
            return super().forward_inference(batch, **kwargs)
        return self._forward_inference(batch, **kwargs)

    # ------------------------------------------------------------------ forward passes
    # Features and head outputs exist only up to the batch's longest row; `_pad` restores
    # RLlib's (B, max_seq_len) layout with zeros (finite, and masked out by the loss).
    # Only `_forward` (env runners, rollouts) returns STATE_OUT; the learner's passes
    # (`_forward_train`, `compute_values`) never read it, so their memory does not compute it.
    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        features, state_out = self._features(batch, final_state=True)
        out = {Columns.ACTION_DIST_INPUTS: _pad(self.actor(features), batch)}
        if state_out is not None:
            out[Columns.STATE_OUT] = state_out
        return out

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        features, _ = self._features(batch, final_state=False)
        return {Columns.ACTION_DIST_INPUTS: _pad(self.actor(features), batch),
                Columns.EMBEDDINGS: features}

    def compute_values(self, batch: dict[str, Any], embeddings: Tensor | None = None) -> Tensor:
        """V(obs): (B, T) or (N,) like the observations; `embeddings` from forward_train."""
        if embeddings is None:
            embeddings, _ = self._features(batch, final_state=False)
        return _pad(self.critic(embeddings), batch).squeeze(-1)

    # ------------------------------------------------------------------ the memory
    def _features(self, batch: dict[str, Any],
                  final_state: bool) -> tuple[Tensor, dict[str, Tensor] | None]:
        """Memory features (B, L, hidden), L = longest row, or (N, hidden) for (N, obs)
        batches; with `final_state`, also the state after each row's last valid step (None
        when stateless)."""
        obs = batch[Columns.OBS].to(self.pre[0].weight.dtype)
        if obs.ndim == 2:                            # (N, D): one step per row
            features, state_out = self._scan(obs[:, None], batch, None, final_state)
            return features[:, 0], state_out
        if obs.ndim != 3:
            raise ValueError(f"observations must be (B, T, obs) or (B, obs), got {obs.shape}")
        return self._scan(obs, batch, _row_lengths(batch, obs.shape[:2]), final_state)

    def _scan(self, obs: Tensor, batch: dict[str, Any], lengths: Tensor | None,
              final_state: bool) -> tuple[Tensor, dict[str, Tensor] | None]:
        """The memory over pre(obs) cut to the longest row. Without `final_state` every row
        runs to L: the outputs within each row's length are the same (a length only selects
        the returned state), and the memory is spared the per-row ends (the GRU's packed
        sequences, the state-space cells' gather of each row's last inputs)."""
        batch_size, steps = obs.shape[:2]
        longest = steps if lengths is None else max(int(lengths.max()), 1)
        x = self.pre(obs[:, :longest])                                      # (B, L, pre)
        state = self._state_in(batch, batch_size, x)
        timesteps = self._timesteps(obs[:, :longest], lengths)              # (B, L) or None
        if longest == 1 and lengths is None:     # env runners: the memory's recurrent step
            step_timestep = None if timesteps is None else timesteps[:, 0]  # (B,)
            y_t, state_out = self.memory.step(x[:, 0], state, integration_timestep=step_timestep)
            y = y_t[:, None]
        else:
            y, state_out = self.memory.scan(x, state, integration_timesteps=timesteps,
                                            lengths=lengths if final_state else None)
        return y, (state_out if final_state and self.is_stateful() else None)

    def _timesteps(self, obs: Tensor, lengths: Tensor | None) -> Tensor | None:
        """Δt (B, L) from the last feature of obs (B, L, D) with `timesteps_from_obs`, 1 past
        each row's length (the zero padding is no elapsed time); else None (Δt = 1)."""
        if not self.model_config["timesteps_from_obs"]:
            return None
        timesteps = obs[..., -1]
        if lengths is None:
            return timesteps
        valid = torch.arange(obs.shape[1], device=obs.device) < lengths.to(obs.device)[:, None]
        return torch.where(valid, timesteps, torch.ones_like(timesteps))

    def _state_in(self, batch: dict[str, Any], batch_size: int, like: Tensor) -> dict:
        """STATE_IN cast to the memory's dtype (RLlib may hand back ints), or initial state."""
        state = batch.get(Columns.STATE_IN)
        if not self.is_stateful():
            return {}
        if state is None:
            return self.memory.initial_state(batch_size, device=like.device, dtype=like.dtype)
        return {k: torch.as_tensor(v).to(device=like.device, dtype=like.dtype)
                for k, v in state.items()}


def _pad(out: Tensor, batch: dict[str, Any]) -> Tensor:
    """Head outputs (B, L, n) -> (B, T, n) with zeros, T = the observations' time length."""
    obs = batch[Columns.OBS]
    return out if obs.ndim != 3 else pad_time(out, obs.shape[1])


def pad_time(out: Tensor, steps: int) -> Tensor:
    """(B, L, ...) -> (B, steps, ...), zeros after L."""
    if out.shape[1] == steps:
        return out
    return torch.cat([out, out.new_zeros(out.shape[0], steps - out.shape[1], *out.shape[2:])],
                     dim=1)


def _row_lengths(batch: dict[str, Any], shape: tuple[int, int]) -> Tensor | None:
    """Valid steps per row: SEQ_LENS (includes PPO's bootstrap step, which the loss mask
    hides), else one past the last True of LOSS_MASK, else None (every step valid)."""
    batch_size, steps = shape
    if batch.get(Columns.SEQ_LENS) is not None:
        lengths = torch.as_tensor(batch[Columns.SEQ_LENS]).long()
    elif batch.get(Columns.LOSS_MASK) is not None:
        mask = torch.as_tensor(batch[Columns.LOSS_MASK]).bool()
        positions = torch.arange(1, steps + 1, device=mask.device)
        lengths = (mask * positions).amax(dim=1).long()
    else:
        return None
    if tuple(lengths.shape) != (batch_size,):
        raise ValueError(f"seq lens must have shape ({batch_size},), got {tuple(lengths.shape)}")
    return lengths.clamp(max=steps)
