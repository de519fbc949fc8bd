"""experiments.rllib.sampling: the env runner's batched connector pieces give the episodes
RLlib's own pipeline gives them.

Each comparison samples a few hundred steps of tiny networks three times (episodes run on
across sample() calls, finish at different steps, start again mid-call) with the runner
ppo_config builds and with RLlib's default pieces, from the same seed, and compares every
episode: observations, actions, rewards, action logps and distribution inputs, the stored
memory states, where episodes start and end.
"""

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.connectors.common import (AddObservationsFromEpisodesToBatch,
                                         AddTimeDimToBatchAndZeroPad, BatchIndividualItems,
                                         TensorToNumpy)
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.connectors.module_to_env import (GetActions, ListifyDataForVectorEnv,
                                                NormalizeAndClipActions,
                                                RemoveSingleTsTimeRankFromBatch,
                                                UnBatchToIndividualItems)
from ray.rllib.core.columns import Columns

from experiments.rllib import rllib_private, sampling, state_storage
from experiments.rllib.batching import CompleteEpisodesEnvRunner
from experiments.rllib.ppo import ppo_config
from experiments.rllib.rl_module import memory_module_spec

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(pre_size=8, hidden_size=8, head_size=8)
REPEAT, VARIABLE = "popgym-RepeatPreviousEasy-v0", "popgym-NoisyPositionOnlyCartPoleEasy-v0"


class RLlibPieces(sampling.BatchedEnvRunner):
    """ppo_config's runner with RLlib's default connector pieces (sparse states kept)."""
    batched_connectors = False


class RLlibRunner(CompleteEpisodesEnvRunner):
    """Every connector piece RLlib's own (its dense memory states too)."""
    sparse_states = False


def config(task=REPEAT, memory="gru", runner=None, **ppo):
    settings = {**dict(num_envs_per_env_runner=4, train_batch_size_per_learner=128,
                       minibatch_size=64, num_epochs=1, max_seq_len=16), **ppo}
    built = ppo_config(env=task, memory=memory, model_config=TINY, **settings)
    return built if runner is None else built.env_runners(env_runner_cls=runner)


def sample(built, calls=3, **kwargs):
    runner = built.env_runner_cls(config=built)
    try:
        return runner, [e for _ in range(calls) for e in runner.sample(**kwargs)]
    finally:
        runner.stop()


def same_episodes(ours, theirs, states=True):
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs):
        assert (a.t_started, len(a)) == (b.t_started, len(b))
        assert (a.is_terminated, a.is_truncated) == (b.is_terminated, b.is_truncated)
        for get in ("get_observations", "get_actions", "get_rewards"):
            x, y = np.asarray(getattr(a, get)()), np.asarray(getattr(b, get)())
            assert x.dtype == y.dtype and x.shape == y.shape, get
            np.testing.assert_array_equal(x, y, err_msg=get)
        keys = set(b.extra_model_outputs) - {Columns.STATE_OUT}
        assert set(a.extra_model_outputs) == keys
        for key in keys:
            x, y = a.get_extra_model_outputs(key), b.get_extra_model_outputs(key)
            assert x.dtype == y.dtype and x.shape == y.shape, key
            np.testing.assert_array_equal(x, y, err_msg=key)
        if states:
            ours_states, theirs_states = (state_storage.stored_states(e) for e in (a, b))
            assert ours_states.keys() == theirs_states.keys()
            for t in theirs_states:
                for key in theirs_states[t]:
                    np.testing.assert_array_equal(ours_states[t][key], theirs_states[t][key])


@pytest.mark.parametrize("memory", ["gru", "mlp"])        # stateful (T = 1) and stateless
@pytest.mark.parametrize("task", [REPEAT, VARIABLE])
def test_episodes_equal_rllibs_pipeline(task, memory):
    # 32 steps of each env a call: RepeatPreviousEasy's 52-step episodes run on across calls
    runner, ours = sample(config(task, memory))
    _, with_rllib_pieces = sample(config(task, memory, RLlibPieces))
    _, rllibs = sample(config(task, memory, RLlibRunner))
    same_episodes(ours, with_rllib_pieces)
    same_episodes(ours, rllibs, states=False)
    env_to_module, module_to_env = rllib_private.env_runner_pipelines(runner)
    assert any(type(c) is sampling.BatchedObservations for c in env_to_module.connectors)
    assert [type(c) for c in module_to_env.connectors][-2:] == \
        [sampling.CategoricalActions, sampling.BatchedActionsToEnv]
    assert not runner.module.training
    if memory == "gru":                    # a state carried past row starts, not zeros only
        assert any(len(state_storage.stored_states(e)) > 1 for e in ours)


def test_truncated_sampling_equals_rllibs_pipeline():
    """RLlib's own sampling (chunks of running episodes) through the batched pieces."""
    built = dict(batch_mode="truncate_episodes", rollout_fragment_length=20)
    _, ours = sample(config(VARIABLE, **built))
    _, theirs = sample(config(VARIABLE, runner=RLlibPieces, **built))
    assert any(e.t_started > 0 for e in ours)
    same_episodes(ours, theirs)


class AddStepCount(ConnectorV2):
    """A user's env-to-module piece: a column per episode (RLlib's per-item format)."""

    def __call__(self, *, rl_module, batch, episodes, shared_data=None, **kwargs):
        for episode in episodes:
            self.add_batch_item(batch, "step_count", np.float32(episode.t), episode)
        return batch


class Identity(ConnectorV2):
    """A user's module-to-env piece that reads RLlib's per-episode items."""

    def __call__(self, *, rl_module, batch, episodes, shared_data=None, **kwargs):
        assert all(isinstance(v, dict) for v in batch.values())      # {(episode id,): [..]}
        return batch


def test_a_users_pieces_run_with_rllibs_pieces_where_they_need_them():
    def users(built):
        return built.env_runners(env_to_module_connector=lambda *a: [AddStepCount()],
                                 module_to_env_connector=lambda *a: [Identity()])
    runner, ours = sample(users(config(VARIABLE)))
    _, theirs = sample(users(config(VARIABLE, runner=RLlibPieces)))
    same_episodes(ours, theirs)
    env_to_module, module_to_env = rllib_private.env_runner_pipelines(runner)
    assert [type(c) for c in env_to_module.connectors][:2] == \
        [AddStepCount, sampling.BatchedObservations]               # RLlib's pieces inside it
    assert not any(type(c) is sampling.BatchedActionsToEnv for c in module_to_env.connectors)


def rllib_actions_to_env(batch, action_space, shared_data, **normalize):
    """RLlib's module-to-env pieces after GetActions, for 3 episodes."""
    episodes = [type("Episode", (), {"id_": str(i)})() for i in range(3)]
    shared_data = {**shared_data, rllib_private.EPISODE_OF_ROW: [e.id_ for e in episodes]}
    for piece in (TensorToNumpy(), UnBatchToIndividualItems(), RemoveSingleTsTimeRankFromBatch(),
                  NormalizeAndClipActions(input_action_space=action_space, **normalize),
                  ListifyDataForVectorEnv()):
        batch = piece(rl_module=None, batch=batch, episodes=[object()], shared_data=shared_data)
    return batch


@pytest.mark.parametrize("normalize", [dict(normalize_actions=True, clip_actions=False),
                                       dict(normalize_actions=False, clip_actions=True),
                                       dict(normalize_actions=False, clip_actions=False)])
@pytest.mark.parametrize("time_rank", [True, False])
def test_box_actions_to_env_equal_rllibs(normalize, time_rank):
    """Continuous actions (no POPGym task has them): unsquashed or clipped as RLlib's pieces."""
    space = gym.spaces.Box(low=np.array([-2.0, 0.0], np.float32),
                           high=np.array([2.0, 10.0], np.float32))
    shape = (3, 1, 2) if time_rank else (3, 2)
    actions = torch.linspace(-1.5, 1.5, 6).reshape(shape)
    batch = {Columns.ACTIONS: actions, Columns.ACTION_LOGP: actions.sum(-1),
             Columns.ACTION_DIST_INPUTS: torch.cat([actions, actions], -1)}
    shared_data = {rllib_private.TIME_RANK_ADDED: True} if time_rank else {}
    piece = sampling.BatchedActionsToEnv(input_action_space=space, **normalize)
    ours = piece(rl_module=None, batch=dict(batch), episodes=[], shared_data=shared_data)
    theirs = rllib_actions_to_env(dict(batch), space, shared_data, **normalize)
    assert ours.keys() == theirs.keys()
    for column in theirs:
        for i in range(3):              # the env runner reads column[i] for sub-env i
            np.testing.assert_array_equal(np.asarray(ours[column][i]),
                                          np.asarray(theirs[column][i]), err_msg=column)
    if normalize["normalize_actions"] or normalize["clip_actions"]:
        assert not np.array_equal(ours[Columns.ACTIONS_FOR_ENV], ours[Columns.ACTIONS])


def test_observations_equal_rllibs_pieces_and_leave_their_shared_data():
    built = config(VARIABLE)
    runner = built.env_runner_cls(config=built)
    try:
        runner.sample(num_timesteps=12)
        episodes = rllib_private.ongoing_episodes(runner)
        ours_shared, theirs_shared = {}, {}
        ours = sampling.BatchedObservations(pieces=[])(
            rl_module=runner.module, batch={}, episodes=episodes, shared_data=ours_shared)
        theirs = {}
        for piece in (AddObservationsFromEpisodesToBatch(), AddTimeDimToBatchAndZeroPad(),
                      BatchIndividualItems()):
            theirs = piece(rl_module=runner.module, batch=theirs, episodes=episodes,
                           shared_data=theirs_shared)
    finally:
        runner.stop()
    assert ours_shared == theirs_shared == {
        rllib_private.TIME_RANK_ADDED: True,
        rllib_private.EPISODE_OF_ROW: [e.id_ for e in episodes]}
    assert ours.keys() == theirs.keys() == {Columns.OBS}
    assert ours[Columns.OBS].dtype == theirs[Columns.OBS].dtype
    assert ours[Columns.OBS].shape == (runner.num_envs, 1, runner.module.observation_space.shape[0])
    np.testing.assert_array_equal(ours[Columns.OBS], theirs[Columns.OBS])


def test_unexpected_env_to_module_pipeline_is_an_error():
    built = config(runner=RLlibRunner)                  # RLlib's dense states, not ours
    runner = built.env_runner_cls(config=built)
    try:
        with pytest.raises(ValueError, match="StateInFromRunner"):
            sampling.use_batched_connectors(*rllib_private.env_runner_pipelines(runner))
    finally:
        runner.stop()


@pytest.mark.parametrize("forward", ["forward_exploration", "forward_inference"])
def test_rollout_forward_walks_no_submodules_in_eval_mode(forward, monkeypatch):
    """An eval-mode module (an env runner's) runs its rollout forward without RLlib's
    eval()/train() walk; a training module is switched as RLlib does and switched back."""
    spec = memory_module_spec("gru", **TINY)
    spec.observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    spec.action_space = gym.spaces.Discrete(2)
    module = spec.build()
    batch = {Columns.OBS: torch.randn(4, 1, module.observation_space.shape[0]),
             Columns.STATE_IN: {k: torch.as_tensor(np.stack([v] * 4))
                                for k, v in module.get_initial_state().items()}}
    walks = []
    original_train = torch.nn.Module.train
    monkeypatch.setattr(torch.nn.Module, "train",
                        lambda self, mode=True: walks.append(mode) or original_train(self, mode))
    training_out = getattr(module, forward)(batch)
    assert walks and module.training                 # eval() for the forward, train() after
    module.eval()
    walks.clear()
    eval_out = getattr(module, forward)(batch)
    assert walks == [] and not module.training
    torch.testing.assert_close(eval_out, training_out)


@pytest.mark.parametrize("time_rank", [True, False])
def test_categorical_actions_draw_what_rllibs_get_actions_draws(time_rank):
    """The same actions from the same random stream, the same logps; explore=False (greedy)
    and a batch with actions already go through RLlib's GetActions."""
    runner, _ = sample(config(), calls=1)
    module = runner.module
    logits = 3 * torch.randn((64, 1, 2) if time_rank else (64, 2),
                             generator=torch.Generator().manual_seed(1))

    def actions(piece, explore=True, **batch):
        torch.manual_seed(7)
        return piece(rl_module=module, batch={Columns.ACTION_DIST_INPUTS: logits, **batch},
                     episodes=[object()], explore=explore, shared_data={})
    ours = actions(sampling.CategoricalActions(piece=GetActions()))
    theirs = actions(GetActions())
    assert ours[Columns.ACTIONS].shape == logits.shape[:-1]
    assert len(set(ours[Columns.ACTIONS].flatten().tolist())) == 2        # both actions drawn
    for column in (Columns.ACTIONS, Columns.ACTION_LOGP):
        assert ours[column].dtype == theirs[column].dtype
        assert torch.equal(ours[column], theirs[column]), column
    greedy = actions(sampling.CategoricalActions(piece=GetActions()), explore=False)
    assert torch.equal(greedy[Columns.ACTIONS], logits.argmax(-1))
    given = actions(sampling.CategoricalActions(piece=GetActions()),
                    **{Columns.ACTIONS: torch.zeros(logits.shape[:-1], dtype=torch.long)})
    assert Columns.ACTION_LOGP not in given and not given[Columns.ACTIONS].any()
