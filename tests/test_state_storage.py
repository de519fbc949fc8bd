"""experiments.rllib.state_storage: an episode keeps its memory state only where a learner row
starts, and the learner's rows get the same STATE_IN as with RLlib's own connectors.

Each test samples a few hundred steps of tiny networks with `CompleteEpisodesEnvRunner`, once
with sparse state storage (the default) and once with RLlib's (every step's STATE_OUT in the
episode: `sparse_states = False`), from the same seed, so both see the same episodes; episodes
run longer than max_seq_len, finish at different steps (resets mid-batch) and are carried
across sample() calls.
"""

import math

import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns

from experiments.rllib import batching, rllib_private, state_storage
from experiments.rllib.ppo import ppo_config

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(pre_size=8, hidden_size=8, head_size=8)
# (task, max_seq_len): 51-step episodes cut into rows of 16 (the last row the bootstrap step's
# alone: 52 = 3 x 16 + 4); episodes of many lengths in rows of 8
CASES = [("popgym-RepeatPreviousEasy-v0", 16), ("popgym-NoisyPositionOnlyCartPoleEasy-v0", 8)]


class DenseRunner(batching.CompleteEpisodesEnvRunner):
    sparse_states = False


class DenseLearner(batching.PPOLearner):
    sparse_states = False


def config(task, max_seq_len, memory="gru", sparse=True, **ppo):
    settings = {**dict(num_envs_per_env_runner=4, train_batch_size_per_learner=128,
                       minibatch_size=64, num_epochs=1), **ppo}
    built = ppo_config(env=task, memory=memory, model_config=TINY, max_seq_len=max_seq_len,
                       **settings)
    if not sparse:
        built = built.env_runners(env_runner_cls=DenseRunner).learners(learner_class=DenseLearner)
    return built


def sample(built, calls=3):
    runner = built.env_runner_cls(config=built)
    try:
        return [episode for _ in range(calls) for episode in runner.sample()]
    finally:
        runner.stop()


def learner_state_in(built, episodes):
    """The STATE_IN of every row of the learner batch the config's learner connector makes."""
    runner = built.env_runner_cls(config=built)
    spaces = {"default_policy": (runner.env.single_observation_space,
                                 runner.env.single_action_space)}
    runner.stop()
    learner = built.build_learner(env=None, spaces=spaces)          # built
    connector = rllib_private.learner_connector(learner)
    batch = connector(rl_module=learner.module, batch={}, episodes=episodes, shared_data={},
                      metrics=None)
    return batch["default_policy"][Columns.STATE_IN], batch["default_policy"][Columns.OBS]


def same_episodes(a, b):
    assert [len(e) for e in a] == [len(e) for e in b]
    for x, y in zip(a, b):
        assert x.t_started == y.t_started
        np.testing.assert_array_equal(np.asarray(x.get_observations()),
                                      np.asarray(y.get_observations()))
        np.testing.assert_array_equal(np.asarray(x.get_actions()), np.asarray(y.get_actions()))


@pytest.mark.parametrize("memory", ["gru", "s4d"])
@pytest.mark.parametrize("task,max_seq_len", CASES)
@pytest.mark.parametrize("batch_mode", ["complete_episodes", "truncate_episodes"])
def test_learner_state_in_is_bit_equal_to_rllibs(task, max_seq_len, memory, batch_mode):
    sparse, dense = (config(task, max_seq_len, memory, sparse=s, batch_mode=batch_mode)
                     for s in (True, False))
    episodes, reference = sample(sparse), sample(dense)
    same_episodes(episodes, reference)
    assert any(len(e) + 1 > max_seq_len for e in episodes)             # several rows
    if batch_mode == "truncate_episodes":
        assert any(e.t_started > 0 for e in episodes)                  # chunks of an episode
    else:
        assert all(e.t_started == 0 for e in episodes)
    assert all(Columns.STATE_OUT not in e.extra_model_outputs for e in episodes)
    assert all(Columns.STATE_OUT in e.extra_model_outputs for e in reference)
    state_in, obs = learner_state_in(sparse, episodes)
    expected, expected_obs = learner_state_in(dense, reference)
    assert torch.equal(obs, expected_obs)
    assert state_in.keys() == expected.keys()
    for key in expected:
        assert state_in[key].shape[0] == obs.shape[0] > len(episodes)
        assert torch.equal(state_in[key], expected[key]), key
    # not all initial states: the rows after an episode's first carry its state
    assert any(bool(v.abs().sum(dim=tuple(range(1, v.ndim))).gt(0).any())
               for v in state_in.values())


@pytest.mark.parametrize("task,max_seq_len", CASES)
def test_an_episode_stores_one_state_per_learner_row(task, max_seq_len):
    episodes = sample(config(task, max_seq_len))
    assert len({e.id_ for e in episodes}) == len(episodes)
    for episode in episodes:
        steps = len(episode)                     # the learner adds PPO's bootstrap step
        stored = state_storage.stored_states(episode)
        assert sorted(stored) == list(range(0, steps + 1, max_seq_len))
        assert len(stored) == math.ceil((steps + 1) / max_seq_len)


def test_the_stored_states_are_the_memorys_states_at_row_starts():
    """The state stored at t is the memory's state after the episode's first t steps, by one
    scan of them from the initial state (the env runner steps it one step at a time)."""
    task, max_seq_len = CASES[0]
    built = config(task, max_seq_len, "gru")
    runner = built.env_runner_cls(config=built)
    try:
        episodes = runner.sample()
        module = runner.module
        for episode in episodes:
            obs = torch.as_tensor(np.asarray(episode.get_observations())[:-1])[None]
            for t, state in state_storage.stored_states(episode).items():
                initial = {k: torch.as_tensor(v)[None]
                           for k, v in module.get_initial_state().items()}
                if t == 0:
                    got = initial
                else:
                    with torch.no_grad():
                        got = module.forward_exploration(
                            {Columns.OBS: obs[:, :t], Columns.STATE_IN: initial})[
                            Columns.STATE_OUT]
                for k, v in got.items():
                    np.testing.assert_allclose(v[0].numpy(), state[k], atol=1e-5, rtol=1e-5)
    finally:
        runner.stop()


def test_ppo_with_lr_zero_learns_from_the_sampled_policy(ray_session):
    """lr = 0, one epoch: the learner's action distribution is the env runner's (KL ~ 0), so
    every row started from the state the runner had there. The actor's last layer is scaled
    up from its N(0, 0.01) init so that the actions depend on the state (rows started from
    zero states instead: KL ~ 1e-3)."""
    task, max_seq_len = CASES[1]
    algo = config(task, max_seq_len, "gru", lr=0.0, train_batch_size_per_learner=256,
                  minibatch_size=256).build_algo()
    try:
        with torch.no_grad():
            rllib_private.local_learner(algo).module["default_policy"].actor[-1].weight.mul_(300)
        algo.env_runner_group.sync_weights(from_worker_or_learner_group=algo.learner_group)
        result = algo.train()
        kl = result["learners"]["default_policy"]["mean_kl_loss"]
        assert abs(kl) < 1e-8, kl
    finally:
        algo.stop()
