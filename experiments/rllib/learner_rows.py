"""The learner's rows of max_seq_len steps: each episode's column cut and zero-padded at once.

RLlib 2.60's learner pipeline cuts a recurrent train batch into rows with
AddTimeDimToBatchAndZeroPad: for every column of every episode, `split_and_zero_pad` takes the
episode's items one at a time (a tree flatten and unflatten per item, a `batch()` per row). At
POPGym's protocol (65,536 steps in ~1,290 episodes of 52 steps, 9 columns, max_seq_len 1024)
that is ~11,600 calls, 0.85 s of each PPO iteration (min_gru, 1 thread, CPU time; 0.06 s
here: benchmarks/learner_rows.py).

`EpisodeRows` (the learner's, in its place) makes the same rows with one numpy op per episode
and column. An episode's items of a column are either all BatchedNdArrays (n_k steps each) or
all single steps (scalars of one type, or arrays of one shape and dtype):

    x = concatenate(items) or stack(items)               (n, ...)
    rows = ceil(n / max_seq_len)
    padded = zeros(rows · max_seq_len, ...) with x at its start,
             cut into `rows` arrays (max_seq_len, ...)    RLlib's list of rows

then each episode's SEQ_LENS: max_seq_len for each full row, then the rest (and LOSS_MASK
(rows, max_seq_len), true below each row's length, unless an earlier piece added it), as
RLlib's piece adds them. Anything else (multi-agent batches, nested items, items of mixed
kinds) goes through RLlib's piece. tests/test_learner_rows.py holds the batch equal to
RLlib's (every column, its rows, shapes and dtypes) and the learner's tensors equal after the
whole pipeline.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray.rllib.connectors.common import AddTimeDimToBatchAndZeroPad
from ray.rllib.connectors.connector_pipeline_v2 import ConnectorPipelineV2
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModule
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.spaces.space_utils import BatchedNdArray

from . import rllib_private
from .state_storage import has_piece

__all__ = ["EpisodeRows", "episode_rows", "row_lengths", "use_episode_rows"]


def episode_rows(items: list, max_seq_len: int) -> list[np.ndarray] | None:
    """An episode's items of one column -> its rows (max_seq_len, ...), zero-padded at the end
    (`split_and_zero_pad`'s result), or None where the items are not of one kind (above)."""
    first = items[0] if items else None
    if isinstance(first, BatchedNdArray):
        if not all(isinstance(item, BatchedNdArray) and item.dtype == first.dtype
                   and item.shape[1:] == first.shape[1:] for item in items):
            return None
        steps = items[0] if len(items) == 1 else np.concatenate(items)
    elif isinstance(first, np.ndarray):
        if not all(type(item) is np.ndarray and item.dtype == first.dtype
                   and item.shape == first.shape for item in items):
            return None
        steps = np.stack(items)
    elif isinstance(first, (bool, int, float, np.generic)):
        if not all(type(item) is type(first) for item in items):
            return None
        steps = np.asarray(items)
    else:
        return None
    if steps.dtype == object:
        return None
    rows = -(-len(steps) // max_seq_len)
    padded = np.zeros((rows * max_seq_len, *steps.shape[1:]), dtype=steps.dtype)
    padded[:len(steps)] = steps
    return list(padded.reshape(rows, max_seq_len, *steps.shape[1:]))


def row_lengths(steps: int, max_seq_len: int) -> list[int]:
    """The valid steps of an episode's rows (RLlib's SEQ_LENS, `create_mask_and_seq_lens`):
    max_seq_len for each full row, then the rest; [0] for an episode of no steps."""
    full, rest = divmod(steps, max_seq_len)
    return [max_seq_len] * full + ([rest] if rest or not full else [])


class EpisodeRows(AddTimeDimToBatchAndZeroPad):
    """Learner: RLlib's AddTimeDimToBatchAndZeroPad, each episode's column cut into rows by
    `episode_rows` (see module docstring)."""

    def __init__(self, input_observation_space=None, input_action_space=None, **kwargs):
        super().__init__(input_observation_space, input_action_space,
                         as_learner_connector=True, **kwargs)

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None,
                 **kwargs) -> Any:
        rllibs = dict(rl_module=rl_module, batch=batch, episodes=episodes, explore=explore,
                      shared_data=shared_data, **kwargs)
        if rl_module is None or not rl_module.is_stateful() or Columns.STATE_IN in batch \
                or Columns.SEQ_LENS in batch or not isinstance(rl_module, MultiRLModule) \
                or DEFAULT_MODULE_ID not in rl_module \
                or not all(isinstance(e, SingleAgentEpisode) and e.module_id is None
                           for e in episodes):
            return super().__call__(**rllibs)
        max_seq_len = rl_module[DEFAULT_MODULE_ID].model_config["max_seq_len"]
        padded = {}
        for column, by_episode in batch.items():
            if column == Columns.INFOS:
                continue
            if not isinstance(by_episode, dict) or \
                    not all(isinstance(key, tuple) and len(key) == 1 for key in by_episode):
                return super().__call__(**rllibs)
            padded[column] = {key: episode_rows(items, max_seq_len)
                              for key, items in by_episode.items()}
            if any(rows is None for rows in padded[column].values()):
                return super().__call__(**rllibs)
        for column, by_episode in padded.items():
            batch[column].update(by_episode)
        if padded:
            shared_data[rllib_private.ZERO_PADDED_FOR_MODULE.format(DEFAULT_MODULE_ID)] = True
        add_mask = not shared_data.get(rllib_private.LOSS_MASK_ADDED)
        positions = np.arange(max_seq_len)                                  # (T,)
        for episode in episodes:
            lengths = row_lengths(len(episode), max_seq_len)
            self.add_n_batch_items(batch, Columns.SEQ_LENS, lengths, len(lengths), episode)
            if add_mask:
                mask = positions < np.array(lengths)[:, None]                   # (rows, T)
                self.add_n_batch_items(batch, Columns.LOSS_MASK, list(mask), len(lengths),
                                       episode)
        return batch


def use_episode_rows(learner_connector: ConnectorPipelineV2) -> None:
    """A learner's pipeline: `EpisodeRows` in the place of RLlib's AddTimeDimToBatchAndZeroPad
    (none there, or ours already: nothing to do)."""
    if has_piece(learner_connector, AddTimeDimToBatchAndZeroPad):
        learner_connector.insert_before(AddTimeDimToBatchAndZeroPad, EpisodeRows())
        learner_connector.remove(AddTimeDimToBatchAndZeroPad)
