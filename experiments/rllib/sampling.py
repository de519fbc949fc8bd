"""An env runner's default connector work done once per vector step, on batched arrays.

RLlib 2.60's env runner runs two ConnectorV2 pipelines at every vector step of B sub-envs.
Their default pieces handle one item per episode at a time:

    env-to-module   AddObservationsFromEpisodesToBatch   each episode's last observation,
                                                          kept per episode id
                    AddTimeDimToBatchAndZeroPad           (stateful) each item (D,) -> (1, D),
                                                          a tree walk per item
                    BatchIndividualItems                  the items stacked: (B, 1, D)
                    NumpyToTensor                         -> torch
    module-to-env   GetActions                            actions, logp from the dist inputs
                    TensorToNumpy                         -> numpy
                    UnBatchToIndividualItems              every column cut into B items
                    RemoveSingleTsTimeRankFromBatch       each item (1, ...) -> (...)
                    NormalizeAndClipActions               the actions deep-copied, each unsquashed
                                                          (or clipped) to the action space
                    ListifyDataForVectorEnv               items -> lists; actions restacked (B,)

Here the same steps are one op per column per vector step, each piece standing where RLlib's
stood (the pipelines stay RLlib pipelines, RLlib's timers and a user's pieces still run):

    BatchedObservations (env-to-module, in place of the first three):
        OBS = stack(episode i's last observation) (B, D), (B, 1, D) for a stateful module;
        shared_data as RLlib's pieces leave it (rllib_private.EPISODE_OF_ROW: the episode id
        of each row; TIME_RANK_ADDED). A batch that already holds columns (a user's piece
        added some, kept per episode) or observations that are not plain arrays go through
        RLlib's three pieces instead.
    CategoricalActions (module-to-env, in place of GetActions): for a Categorical exploration
        distribution (every POPGym task with one Discrete action), from the logits z (B, 1, A):
            z' = z - logsumexp(z)        (RLlib's TorchCategorical: torch's Categorical)
            a ~ multinomial(softmax(z'))  the draw Categorical.sample makes, from the same
                                          random stream
            logp = z'[a]                 Categorical.log_prob
        without building the distribution objects (with their argument checks, a host sync
        each on a GPU: 86 against 56 us a call at 16 envs on this CPU). Other distributions,
        explore=False, or a batch that already holds ACTIONS go through RLlib's GetActions.
    BatchedActionsToEnv (module-to-env, in place of the last five, after the actions):
        every column -> numpy, (B, 1, ...) -> (B, ...) where the time rank was added;
        ACTIONS_FOR_ENV = unsquash (normalize_actions) or clip (clip_actions) of the batched
        ACTIONS (RLlib's own functions: elementwise, so the same values). The env runner
        indexes every column by sub-env (`column[i]`), so the arrays stay batched.

The episodes get what RLlib's pipeline gives them (tests/test_sampling.py: the same
observations, actions, logps, dist inputs and rewards at the same seeds). One difference,
gone once an episode is numpy (as every sampled one is): an extra model output of a stateful
module is stored as a numpy scalar where RLlib's pieces store a 0-d array.

`use_batched_connectors` swaps the pieces into a runner's pipelines that hold RLlib's defaults
with sparse memory states (`state_storage`); a module-to-env pipeline with a user's own pieces
among the defaults (they read per-episode items) keeps RLlib's pieces.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import tree
from ray.rllib.connectors.common import (AddObservationsFromEpisodesToBatch,
                                         AddTimeDimToBatchAndZeroPad, BatchIndividualItems,
                                         NumpyToTensor, TensorToNumpy)
from ray.rllib.connectors.connector_pipeline_v2 import ConnectorPipelineV2
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.connectors.module_to_env import (GetActions, ListifyDataForVectorEnv,
                                                NormalizeAndClipActions,
                                                RemoveSingleTsTimeRankFromBatch,
                                                UnBatchToIndividualItems)
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchCategorical
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.numpy import convert_to_numpy
from ray.rllib.utils.spaces.space_utils import (clip_action, get_base_struct_from_space,
                                                unsquash_action)

from . import rllib_private
from .batching import CompleteEpisodesEnvRunner
from .state_storage import KeepStateOut, StateInFromRunner

__all__ = ["BatchedObservations", "CategoricalActions", "BatchedActionsToEnv",
           "BatchedEnvRunner", "use_batched_connectors"]

# what BatchedObservations / BatchedActionsToEnv stand in for, in pipeline order
RLLIB_OBSERVATION_PIECES = (AddObservationsFromEpisodesToBatch, AddTimeDimToBatchAndZeroPad,
                            BatchIndividualItems)
RLLIB_ACTION_PIECES = (TensorToNumpy, UnBatchToIndividualItems, RemoveSingleTsTimeRankFromBatch,
                       NormalizeAndClipActions, ListifyDataForVectorEnv)


class BatchedObservations(ConnectorV2):
    """Env-to-module: OBS (B, D) or (B, 1, D) of B single-agent episodes in one stack, in
    place of RLlib's `pieces` (AddObservationsFromEpisodesToBatch, AddTimeDimToBatchAndZeroPad,
    BatchIndividualItems), which still run for a batch that is not empty on entry or
    observations that are not numpy arrays (see module docstring)."""

    def __init__(self, input_observation_space=None, input_action_space=None, *,
                 pieces: list[ConnectorV2], **kwargs):
        super().__init__(input_observation_space, input_action_space, **kwargs)
        self.pieces = pieces

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None,
                 **kwargs) -> Any:
        observations = [episode.get_observations(-1) for episode in episodes] \
            if not batch and episodes and isinstance(episodes[0], SingleAgentEpisode) else []
        if not observations or not all(type(o) is np.ndarray for o in observations):
            for piece in self.pieces:
                batch = piece(rl_module=rl_module, batch=batch, episodes=episodes,
                              explore=explore, shared_data=shared_data, **kwargs)
            return batch
        obs = np.stack(observations)                                     # (B, D)
        if rl_module is not None and rl_module.is_stateful():
            obs = obs[:, None]                                           # (B, 1, D)
            shared_data[rllib_private.TIME_RANK_ADDED] = True
        shared_data[rllib_private.EPISODE_OF_ROW] = [episode.id_ for episode in episodes]
        batch[Columns.OBS] = obs
        return batch


class CategoricalActions(ConnectorV2):
    """Module-to-env, in place of GetActions: ACTIONS and ACTION_LOGP drawn from a Categorical
    exploration distribution's logits as torch's Categorical draws them (see module
    docstring); everything else by RLlib's `piece` (a GetActions)."""

    def __init__(self, input_observation_space=None, input_action_space=None, *,
                 piece: GetActions, **kwargs):
        super().__init__(input_observation_space, input_action_space, **kwargs)
        self.piece = piece

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None,
                 **kwargs) -> Any:
        if not explore or Columns.ACTIONS in batch or Columns.ACTION_DIST_INPUTS not in batch \
                or not isinstance(rl_module, RLModule) \
                or rl_module.get_exploration_action_dist_cls() is not TorchCategorical:
            return self.piece(rl_module=rl_module, batch=batch, episodes=episodes,
                              explore=explore, shared_data=shared_data, **kwargs)
        logits = batch[Columns.ACTION_DIST_INPUTS]                          # (B, 1, A)
        normalized = logits - logits.logsumexp(-1, keepdim=True)
        probabilities = torch.softmax(normalized, -1).reshape(-1, logits.shape[-1])
        actions = torch.multinomial(probabilities, 1, True).view(logits.shape[:-1])
        batch[Columns.ACTIONS] = actions
        if Columns.ACTION_LOGP not in batch:
            batch[Columns.ACTION_LOGP] = normalized.gather(-1, actions[..., None])[..., 0]
        return batch


class BatchedActionsToEnv(ConnectorV2):
    """Module-to-env, after the actions are drawn: the module's batched output as numpy arrays
    indexed by sub-env, ACTIONS_FOR_ENV unsquashed or clipped (see module docstring)."""

    def __init__(self, input_observation_space=None, input_action_space=None, *,
                 normalize_actions: bool, clip_actions: bool, **kwargs):
        self.action_space_struct = None
        super().__init__(input_observation_space, input_action_space, **kwargs)
        self.normalize_actions, self.clip_actions = normalize_actions, clip_actions

    def recompute_output_action_space(self, input_observation_space, input_action_space):
        self.action_space_struct = get_base_struct_from_space(input_action_space)
        return input_action_space

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None,
                 **kwargs) -> Any:
        time_rank = shared_data.get(rllib_private.TIME_RANK_ADDED)
        for column, values in batch.items():
            values = _numpy(values)
            if time_rank and column != Columns.STATE_OUT:
                values = values[:, 0] if type(values) is np.ndarray else \
                    tree.map_structure(lambda v: np.squeeze(v, axis=1), values)
            batch[column] = values
        if self.normalize_actions or self.clip_actions:
            change = unsquash_action if self.normalize_actions else clip_action
            batch[Columns.ACTIONS_FOR_ENV] = change(batch[Columns.ACTIONS],
                                                    self.action_space_struct)
        return batch


def _numpy(values):
    """RLlib's convert_to_numpy of one column (a tensor -> numpy on the CPU, float -> float32,
    int64 -> int32), a tensor of one or more dims without its tree walk."""
    if type(values) is not torch.Tensor or values.ndim == 0:
        return convert_to_numpy(values)
    array = values.detach().cpu().numpy()
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32)
    return array.astype(np.int32) if np.issubdtype(array.dtype, int) else array


def use_batched_connectors(env_to_module: ConnectorPipelineV2,
                           module_to_env: ConnectorPipelineV2) -> bool:
    """Swap BatchedObservations and BatchedActionsToEnv into an env runner's pipelines in
    place of RLlib's per-item pieces, where they run with sparse states (StateInFromRunner
    last, KeepStateOut first). Returns whether the module-to-env side was swapped (not when
    a user's pieces sit among RLlib's there)."""
    pieces = [type(c) for c in env_to_module.connectors]
    tail = [*RLLIB_OBSERVATION_PIECES, NumpyToTensor, StateInFromRunner]
    if pieces[-len(tail):] != tail:
        raise ValueError(f"batched connectors take the place of RLlib's default env-to-module "
                         f"pieces followed by sparse states ({[t.__name__ for t in tail]}); "
                         f"the pipeline has {[t.__name__ for t in pieces]}")
    originals = env_to_module.connectors[-len(tail):-2]
    env_to_module.insert_before(AddObservationsFromEpisodesToBatch,
                                BatchedObservations(pieces=list(originals)))
    for piece in RLLIB_OBSERVATION_PIECES:
        env_to_module.remove(piece)
    actions = [type(c) for c in module_to_env.connectors]
    if actions != [KeepStateOut, GetActions, *RLLIB_ACTION_PIECES]:
        return False
    get_actions, normalize = module_to_env.connectors[1], module_to_env.connectors[-2]
    module_to_env.insert_before(GetActions, CategoricalActions(piece=get_actions))
    module_to_env.remove(GetActions)
    module_to_env.insert_before(TensorToNumpy, BatchedActionsToEnv(
        normalize_actions=normalize.normalize_actions, clip_actions=normalize.clip_actions))
    for piece in RLLIB_ACTION_PIECES:
        module_to_env.remove(piece)
    return True


class BatchedEnvRunner(CompleteEpisodesEnvRunner):
    """CompleteEpisodesEnvRunner (old-stack sampling, sparse memory states) whose default
    connector pieces work on batched arrays (`use_batched_connectors`); RLlib's pieces with
    `batched_connectors = False` or dense states.

    Its module is put in eval mode once: RLlib's `forward_exploration` switches a module to
    eval mode for each step and back to train mode after it when it found it training (each
    switch a walk over every submodule); MemoryRLModule's rollout forwards skip both walks
    in eval mode.
    """

    batched_connectors = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.batched_connectors and self.sparse_states:
            use_batched_connectors(*rllib_private.env_runner_pipelines(self))
        if self.module is not None:
            self.module.eval()
