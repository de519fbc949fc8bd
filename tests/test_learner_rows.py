"""experiments.rllib.learner_rows: the learner's rows of max_seq_len steps, cut per episode by
one numpy op, are RLlib's AddTimeDimToBatchAndZeroPad's.

`episode_rows` is held to RLlib's `split_and_zero_pad` item by item; the piece to RLlib's piece
on the batch the learner pipeline builds from sampled episodes (episodes longer than
max_seq_len, of many lengths, chunks of episodes carried across calls); the whole pipeline's
tensors to those of a learner with RLlib's piece.
"""

import copy

import numpy as np
import pytest
import torch
import tree
from ray.rllib.connectors.common import AddTimeDimToBatchAndZeroPad
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.utils.postprocessing.zero_padding import (create_mask_and_seq_lens,
                                                         split_and_zero_pad)
from ray.rllib.utils.spaces.space_utils import BatchedNdArray

from experiments.rllib import batching, learner_rows, rllib_private
from experiments.rllib.ppo import ppo_config

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(pre_size=8, hidden_size=8, head_size=8)
REPEAT, VARIABLE = "popgym-RepeatPreviousEasy-v0", "popgym-NoisyPositionOnlyCartPoleEasy-v0"


class RLlibRowsLearner(batching.PPOLearner):
    episode_rows = False


def same_rows(ours, theirs):
    """The same list of rows: structure, leaf types, dtypes and values."""
    tree.assert_same_structure(ours, theirs)
    for a, b in zip(tree.flatten(ours), tree.flatten(theirs)):
        assert type(a) is type(b) or isinstance(a, np.ndarray) == isinstance(b, np.ndarray)
        assert np.asarray(a).dtype == np.asarray(b).dtype, (np.asarray(a).dtype, b)
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("steps", [[3], [5], [11], [5, 3], [2, 2, 2], [4, 0], [13, 4]])
@pytest.mark.parametrize("trailing,dtype", [((), np.float32), ((3,), np.float64),
                                             ((2, 2), np.int32), ((), np.bool_)])
def test_batched_items_give_split_and_zero_pads_rows(steps, trailing, dtype):
    rng = np.random.default_rng(sum(steps))
    items = [BatchedNdArray((rng.normal(size=(n, *trailing)) * 3).astype(dtype))
             for n in steps]
    same_rows(learner_rows.episode_rows(items, 5), split_and_zero_pad(items, 5))


@pytest.mark.parametrize("items", [
    [True, False, True, True, False, True, True],            # python bools (masks)
    [0.5, 1.5, -2.0],                                         # python floats
    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],                      # python ints
    [np.float32(1.5), np.float32(2.5)],                       # numpy scalars
    [np.arange(3.0) + i for i in range(7)],                   # one step's array each
    [np.array(i, dtype=np.int64) for i in range(6)],          # 0-d arrays
], ids=["bool", "float", "int", "np-scalar", "arrays", "0-d"])
def test_single_step_items_give_split_and_zero_pads_rows(items):
    same_rows(learner_rows.episode_rows(items, 5), split_and_zero_pad(items, 5))


@pytest.mark.parametrize("items", [
    [BatchedNdArray(np.zeros(3)), 1.0],                       # batched and single mixed
    [True, 1],                                                # a bool and an int
    [np.zeros(2), np.zeros(3)],                               # arrays of two shapes
    [BatchedNdArray(np.zeros(2, np.float32)), BatchedNdArray(np.zeros(2))],   # two dtypes
    [{"a": 1.0}, {"a": 2.0}],                                 # nested
    ["x", "y"],                                               # not numbers
    [],
], ids=["mixed", "bool-int", "shapes", "dtypes", "nested", "strings", "empty"])
def test_items_of_mixed_kinds_are_left_to_rllib(items):
    assert learner_rows.episode_rows(items, 4) is None


@pytest.mark.parametrize("steps", [0, 1, 15, 16, 17, 32, 53])
def test_row_lengths_are_rllibs_seq_lens(steps):
    mask, seq_lens = create_mask_and_seq_lens(steps, 16)
    assert learner_rows.row_lengths(steps, 16) == seq_lens


def config(task, memory="gru", learner=None, **ppo):
    settings = {**dict(num_envs_per_env_runner=4, train_batch_size_per_learner=128,
                       minibatch_size=64, num_epochs=1, max_seq_len=16), **ppo}
    built = ppo_config(env=task, memory=memory, model_config=TINY, **settings)
    return built if learner is None else built.learners(learner_class=learner)


def sampled(built, calls=3):
    runner = built.env_runner_cls(config=built)
    spaces = {DEFAULT_MODULE_ID: (runner.env.single_observation_space,
                                  runner.env.single_action_space)}
    try:
        return spaces, [e for _ in range(calls) for e in runner.sample()]
    finally:
        runner.stop()


def learner_of(built, spaces):
    learner = built.build_learner(env=None, spaces=spaces)
    return learner, rllib_private.learner_connector(learner)


CASES = [(REPEAT, "complete_episodes"), (VARIABLE, "complete_episodes"),
         (VARIABLE, "truncate_episodes")]


@pytest.mark.parametrize("task,batch_mode", CASES)
def test_the_piece_gives_rllibs_rows_and_shared_data(task, batch_mode):
    built = config(task, batch_mode=batch_mode)
    spaces, episodes = sampled(built)
    assert any(len(e) + 1 > 16 for e in episodes)                   # several rows
    learner, connector = learner_of(built, spaces)
    pieces = connector.connectors
    at = [i for i, piece in enumerate(pieces) if type(piece) is learner_rows.EpisodeRows]
    assert len(at) == 1 and not any(type(p) is AddTimeDimToBatchAndZeroPad for p in pieces)
    batch, shared_data = {}, {}
    for piece in pieces[:at[0]]:
        batch = piece(rl_module=learner.module, batch=batch, episodes=episodes,
                      shared_data=shared_data, metrics=None)
    assert shared_data[rllib_private.LOSS_MASK_ADDED]        # by AddOneTsToEpisodesAndTruncate
    nested = {"nested": {key: [{"a": np.float32(i)} for i in range(len(e) + 1)]
                         for key, e in zip(batch[Columns.OBS], episodes)}}
    # a column of nested items beside them: RLlib's piece handles the whole batch; without
    # the loss mask's flag, RLlib's piece adds a row mask per row (after the step items)
    for name, columns, flag in (("plain", {}, True), ("nested", nested, True),
                                ("mask", {}, False)):
        theirs_data, ours_data = ({**shared_data, rllib_private.LOSS_MASK_ADDED: flag}
                                  for _ in range(2))
        theirs = AddTimeDimToBatchAndZeroPad(as_learner_connector=True)(
            rl_module=learner.module, batch=copy.deepcopy({**batch, **columns}),
            episodes=episodes, shared_data=theirs_data)
        ours = pieces[at[0]](rl_module=learner.module, batch=copy.deepcopy({**batch, **columns}),
                             episodes=episodes, shared_data=ours_data)
        assert list(ours) == list(theirs), name
        assert ours_data == theirs_data, name
        key = next(iter(theirs[Columns.LOSS_MASK]))
        assert len(theirs[Columns.LOSS_MASK][key]) == len(theirs[Columns.OBS][key]) * (2 - flag)
        assert theirs_data[rllib_private.ZERO_PADDED_FOR_MODULE.format(DEFAULT_MODULE_ID)]
        for column in theirs:
            assert list(ours[column]) == list(theirs[column]), (name, column)
            for key, rows in theirs[column].items():
                if column == Columns.INFOS:
                    assert ours[column][key] is not None
                else:
                    same_rows(ours[column][key], rows)


@pytest.mark.parametrize("task,batch_mode", CASES)
def test_the_learner_batch_equals_the_one_with_rllibs_piece(task, batch_mode):
    built = config(task, batch_mode=batch_mode)
    spaces, episodes = sampled(built)
    made = {}
    for name, learner_class in (("ours", None), ("rllib", RLlibRowsLearner)):
        learner, connector = learner_of(config(task, learner=learner_class,
                                               batch_mode=batch_mode), spaces)
        learner.module.set_state(made["ours"][1]) if made else None        # the same weights
        batch = connector(rl_module=learner.module, batch={}, episodes=copy.deepcopy(episodes),
                          shared_data={}, metrics=None)[DEFAULT_MODULE_ID]
        made[name] = (batch, learner.module.get_state())
    ours, theirs = made["ours"][0], made["rllib"][0]
    assert list(ours) == list(theirs)
    for column, expected in theirs.items():
        if isinstance(expected, torch.Tensor):
            assert ours[column].dtype == expected.dtype, column
            assert torch.equal(ours[column], expected), column
        else:
            for key in expected:
                assert torch.equal(ours[column][key], expected[key]), (column, key)
    assert theirs[Columns.OBS].shape[1] == 16 and theirs[Columns.SEQ_LENS].max() <= 16
