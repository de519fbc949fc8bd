"""Memory states on RLlib's new stack kept only where the learner reads them.

RLlib 2.60, as shipped, moves a stateful module's state through the episodes at every step:

    module-to-env   STATE_OUT (B, ...) tensor -> numpy -> one item per env -> appended to
                    each episode's extra_model_outputs (T states for an episode of T steps)
    env-to-module   each episode's last STATE_OUT -> stacked -> tensor: the next STATE_IN
    learner         all T STATE_OUTs of an episode concatenated, every max_seq_len-th kept
                    as the STATE_IN of a row (one chunk of max_seq_len steps)

A cell with a large state pays at every step (s4d at its default size: 64 KiB per env-step,
4 GiB per 65,536-step batch). The learner reads one state per row. Here the state stays a
batched tensor between steps, and an episode keeps a state only where a learner row starts:

    KeepStateOut (module-to-env, first piece): pops STATE_OUT {key: (B, ...)} from the
        module's output and keeps it as it is in the env runner's shared_data, with the
        (episode id, t) of each row: row i is the state after step t of episode i.
    StateInFromRunner (env-to-module, last piece, in place of RLlib's
        AddStatesFromEpisodesToBatch): STATE_IN row i for episode i at t (steps taken):
            t = 0 (the episode just began)         the module's initial state
            kept row i is (episode i, t - 1)       that row (no copy unless a row restarts)
            else                                   the episode's stored state at t
        and stores row i in episode i's record when t is a row start:
        (t - anchor) % max_seq_len == 0.
    StateInFromRecords (learner, in place of AddStatesFromEpisodesToBatch): the STATE_IN of
        an episode's row k is its stored state at t_started + k * max_seq_len.

The record of an episode is `episode.custom_data[RECORD]` = {"anchor": a, "states": {t:
state}}, state = {key: array without the batch dim}: the learner's rows of an episode start at
its t_started, so a = the t_started of the episode the learner will see (0 for the whole
episodes of `batching.CompleteEpisodesEnvRunner`; `restart_records` moves it to a chunk's start
when RLlib's own sampling hands chunks to the learner). `cut()` deep-copies custom_data and
`concat_episode` takes the later chunk's, so a record follows an episode across sample()
calls. An episode of T steps (T + 1 with PPO's bootstrap step) stores
ceil((T + 1) / max_seq_len) states: one per learner row, the same arrays RLlib's own pieces
would hand the learner (bit-equal: the module's STATE_OUT rows as numpy). NEXT_STATE_IN
(RLlib's off-policy learners) is not provided.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import tree
from ray.rllib.connectors.common.add_states_from_episodes_to_batch import \
    AddStatesFromEpisodesToBatch
from ray.rllib.connectors.connector_pipeline_v2 import ConnectorPipelineV2
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModule
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.numpy import convert_to_numpy

__all__ = ["RECORD", "KeepStateOut", "StateInFromRunner", "StateInFromRecords",
           "use_sparse_states_in_env_runner", "use_sparse_states_in_learner",
           "restart_records", "stored_states", "row_starts", "has_piece"]

RECORD = "memrl_states"            # episode.custom_data key of an episode's stored states
_KEPT = "memrl_state_out"          # env runner shared_data key of the last STATE_OUT


def row_starts(episode: SingleAgentEpisode, max_seq_len: int) -> range:
    """Timesteps where the learner's rows of `episode` start (RLlib cuts an episode into
    chunks of max_seq_len from its first step): t_started, t_started + max_seq_len, ..."""
    return range(episode.t_started, episode.t_started + len(episode), max_seq_len)


def stored_states(episode: SingleAgentEpisode) -> dict[int, dict]:
    """{t: state before step t} that `episode` keeps (empty without a record)."""
    return episode.custom_data.get(RECORD, {}).get("states", {})


def _single_module(rl_module, episode: SingleAgentEpisode):
    """The episode's own module (RLlib's rule: its module_id, else the default one)."""
    if episode.module_id is not None:
        return rl_module[episode.module_id]
    return rl_module[DEFAULT_MODULE_ID] if isinstance(rl_module, MultiRLModule) else rl_module


class KeepStateOut(ConnectorV2):
    """Module-to-env, first: STATE_OUT out of the module's output, kept batched (see module
    docstring); nothing of it reaches the episodes."""

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None,
                 **kwargs) -> Any:
        state_out = batch.pop(Columns.STATE_OUT, None)
        if state_out is not None:
            shared_data[_KEPT] = {"state": state_out,
                                  "rows": [(e.id_, e.t) for e in episodes]}
        return batch


class StateInFromRunner(ConnectorV2):
    """Env-to-module, last (the batch is already tensors): STATE_IN (B, ...) from the kept
    STATE_OUT, the initial state at episode starts; stores each episode's row starts (see
    module docstring)."""

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None,
                 **kwargs) -> Any:
        if rl_module is None or not rl_module.is_stateful() or Columns.STATE_IN in batch:
            return batch
        max_seq_len = rl_module.model_config["max_seq_len"]
        kept = shared_data.get(_KEPT)
        kept_rows = kept["rows"] if kept is not None else []
        device = batch[Columns.OBS].device
        initial = None
        sources: list[int | dict] = []          # per row: kept row index or a stored state
        for i, episode in enumerate(episodes):
            if episode.t == 0:
                if initial is None:
                    initial = convert_to_numpy(rl_module.get_initial_state())
                episode.custom_data[RECORD] = {"anchor": 0, "states": {0: initial}}
                sources.append(initial)
            elif i < len(kept_rows) and kept_rows[i] == (episode.id_, episode.t - 1):
                sources.append(i)
            elif episode.t in stored_states(episode):
                sources.append(stored_states(episode)[episode.t])
            else:
                raise RuntimeError(
                    f"no memory state for episode {episode.id_} at t={episode.t}: it was not "
                    "stepped by this env runner's module (sparse state storage keeps the last "
                    "STATE_OUT only between consecutive steps)")
        batch[Columns.STATE_IN] = state = _rows(sources, kept, device)
        for i, episode in enumerate(episodes):
            record = episode.custom_data.get(RECORD)
            if episode.t > 0 and record is not None and \
                    (episode.t - record["anchor"]) % max_seq_len == 0 and \
                    episode.t not in record["states"]:
                record["states"][episode.t] = tree.map_structure(
                    lambda leaf, i=i: leaf[i].detach().cpu().numpy().copy(), state)
        return batch


def _rows(sources: list, kept: dict | None, device) -> Any:
    """STATE_IN whose row i is the kept STATE_OUT's row i (sources[i] == i) or the stored
    state sources[i] (numpy, without the batch dim)."""
    if kept is not None and len(sources) == len(kept["rows"]) and \
            all(source == i for i, source in enumerate(sources)):
        return kept["state"]                                # every row carried on: no copy
    stored = [(i, tree.flatten(s)) for i, s in enumerate(sources) if not isinstance(s, int)]
    structure = kept["state"] if kept is not None else sources[stored[0][0]]
    kept_leaves = tree.flatten(kept["state"]) if kept is not None else None
    leaves = []
    for j in range(len(tree.flatten(structure))):
        if kept is not None and len(sources) == len(kept["rows"]):
            leaf = kept_leaves[j].clone()
            for i, flat in stored:
                leaf[i] = torch.as_tensor(flat[j], device=leaf.device)
        else:
            leaf = torch.as_tensor(np.stack([
                kept_leaves[j][s].cpu().numpy() if isinstance(s, int) else tree.flatten(s)[j]
                for s in sources]), device=device)
        leaves.append(leaf)
    return tree.unflatten_as(structure, leaves)


class StateInFromRecords(ConnectorV2):
    """Learner, in place of AddStatesFromEpisodesToBatch: each row's STATE_IN from the
    episode's stored states (see module docstring)."""

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None,
                 **kwargs) -> Any:
        if rl_module is None or not rl_module.is_stateful() or Columns.STATE_IN in batch:
            return batch
        for episode in self.single_agent_episode_iterator(episodes,
                                                          agents_that_stepped_only=False):
            module = _single_module(rl_module, episode)
            if not module.is_stateful():
                continue
            starts = row_starts(episode, module.model_config["max_seq_len"])
            states = stored_states(episode)
            missing = [t for t in starts if t not in states]
            if missing:
                raise ValueError(
                    f"episode {episode.id_} (t_started={episode.t_started}, {len(episode)} "
                    f"steps) has no stored memory state at t={missing[:5]}: sparse state "
                    "storage keeps a state only where a learner row starts, for episodes "
                    "sampled by experiments.rllib.batching.CompleteEpisodesEnvRunner")
            self.add_n_batch_items(
                batch=batch, column=Columns.STATE_IN,
                items_to_add=tree.map_structure(lambda *rows: np.stack(rows),
                                                *[states[t] for t in starts]),
                num_items=len(starts), single_agent_episode=episode)
        return batch


def restart_records(episodes: list[SingleAgentEpisode], state_in: Any) -> None:
    """Episodes that continue in new chunks (RLlib's own sampling hands each chunk to the
    learner, whose rows then start at the chunk's t_started): their rows are counted from
    there, from the state at it (`state_in`: the batched STATE_IN of their next step, row i
    for episodes[i])."""
    for i, episode in enumerate(episodes):
        if episode is None or episode.t == 0 or RECORD not in episode.custom_data:
            continue
        episode.custom_data[RECORD] = {"anchor": episode.t, "states": {
            episode.t: tree.map_structure(lambda leaf: leaf[i].detach().cpu().numpy().copy(),
                                          state_in)}}


def use_sparse_states_in_env_runner(env_to_module: ConnectorPipelineV2,
                                    module_to_env: ConnectorPipelineV2) -> None:
    """An env runner's pipelines: STATE_OUT kept batched (module-to-env, first) and STATE_IN
    built from it (env-to-module, last, after the batch became tensors) instead of RLlib's
    AddStatesFromEpisodesToBatch."""
    _check_has_rllib_states(env_to_module)
    env_to_module.remove(AddStatesFromEpisodesToBatch)
    env_to_module.append(StateInFromRunner())
    module_to_env.prepend(KeepStateOut())


def use_sparse_states_in_learner(learner_connector: ConnectorPipelineV2) -> None:
    """A learner's pipeline: rows' STATE_IN from the stored states, in the place of RLlib's
    AddStatesFromEpisodesToBatch (again on a pipeline that has it: nothing to do)."""
    if has_piece(learner_connector, StateInFromRecords) and \
            not has_piece(learner_connector, AddStatesFromEpisodesToBatch):
        return
    _check_has_rllib_states(learner_connector)
    learner_connector.insert_before(AddStatesFromEpisodesToBatch, StateInFromRecords())
    learner_connector.remove(AddStatesFromEpisodesToBatch)


def has_piece(pipeline: ConnectorPipelineV2, piece: type) -> bool:
    """Whether `pipeline` holds a piece of exactly the class `piece` (not a subclass)."""
    return any(type(c) is piece for c in pipeline.connectors)


def _check_has_rllib_states(pipeline: ConnectorPipelineV2) -> None:
    if not has_piece(pipeline, AddStatesFromEpisodesToBatch):
        raise ValueError(f"sparse state storage takes the place of RLlib's "
                         f"AddStatesFromEpisodesToBatch, which {pipeline} does not have "
                         "(add_default_connectors_to_*_pipeline off?)")
