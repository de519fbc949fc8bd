"""experiments.rllib.rllib_private: each private Ray name memrl uses, held to Ray's own behaviour.

Run these first on a new Ray version (MEMRL_UNCHECKED_RAY=1 lets the module import there): a
failure names the private part that moved. Signatures are compared with what our overrides
and calls pass; behaviour with what RLlib's (or Tune's) public parts give on the same input.
"""

import copy
import inspect
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.connectors.common.add_states_from_episodes_to_batch import \
    AddStatesFromEpisodesToBatch
from ray.rllib.connectors.connector_pipeline_v2 import ConnectorPipelineV2
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import Learner
from ray.rllib.core.learner.training_data import TrainingData
from ray.rllib.core.models.catalog import Catalog
from ray.rllib.env.env_runner import EnvRunner as RLlibEnvRunner
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.utils.minibatch_utils import MiniBatchCyclicIterator
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, LoggerCallback

import envs
from experiments.rllib import batching, rllib_private
from experiments.rllib.ppo import ppo_config

pytestmark = pytest.mark.usefixtures("one_thread")

TASK = "popgym-RepeatPreviousEasy-v0"
TINY = dict(pre_size=8, hidden_size=8, head_size=8)


def tiny_config(**ppo):
    settings = {**dict(num_envs_per_env_runner=2, train_batch_size_per_learner=128,
                       minibatch_size=64, num_epochs=1), **ppo}
    return ppo_config(env=TASK, memory="gru", model_config=TINY, max_seq_len=16, **settings)


def parameters(function) -> list[tuple]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


# --- the version check ---------------------------------------------------------------------

def test_the_installed_ray_is_a_checked_version():
    import ray
    assert ray.__version__ in rllib_private.CHECKED_RAY_VERSIONS
    rllib_private.check_ray_version()


def test_another_ray_version_fails_saying_what_to_check(monkeypatch):
    monkeypatch.delenv(rllib_private.UNCHECKED_VAR, raising=False)
    with pytest.raises(RuntimeError) as error:
        rllib_private.check_ray_version("2.61.0")
    message = str(error.value)
    for part in ("Ray 2.61.0", "2.60.0", "experiments/rllib/rllib_private.py",
                 "tests/test_rllib_private.py", "CHECKED_RAY_VERSIONS",
                 rllib_private.UNCHECKED_VAR):
        assert part in message
    monkeypatch.setenv(rllib_private.UNCHECKED_VAR, "1")
    with pytest.warns(RuntimeWarning, match="Ray 2.61.0"):
        rllib_private.check_ray_version("2.61.0")


def test_no_other_module_uses_a_private_ray_name():
    """Every `._name` read on an RLlib / Tune object, and every private import from ray, is in
    rllib_private (the project's own private names are not Ray's: listed by hand)."""
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    ray_private = re.compile(
        r"\._(try_env_reset|env_to_module|module_to_env|cached_to_module|ongoing_episodes|"
        r"create_iterator_if_necessary|make_batch_if_necessary|set_slicing_by_batch_id|"
        r"learner_connector|learner\b|counters|get_dist_cls_from_action_space|"
        r"update_module_kl_coeff|restore_from_remote|setup_trial|trial_files|trial_csv|"
        r"trial_continue)|import .*\b_global_registry|\"_added_single_ts_time_rank\"|"
        r"\"memorized_map_structure\"")
    found = []
    for folder in ("experiments", "benchmarks", "envs"):
        for path in (root / folder).rglob("*.py"):
            if path.name == "rllib_private.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if ray_private.search(line):
                    found.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    assert not found, "private Ray names outside rllib_private:\n" + "\n".join(found)


# --- signatures of what we override or call ------------------------------------------------

def test_signatures_we_override_or_call():
    none, kw_only, kw, positional = (inspect.Parameter.empty, inspect.Parameter.KEYWORD_ONLY,
                                     inspect.Parameter.VAR_KEYWORD,
                                     inspect.Parameter.POSITIONAL_OR_KEYWORD)
    assert SingleAgentEnvRunner._try_env_reset is RLlibEnvRunner._try_env_reset
    assert parameters(SingleAgentEnvRunner._make_on_episode_callback) == [
        ("self", positional, none), ("which", positional, none), ("idx", positional, none),
        ("episodes", positional, none)]
    assert parameters(RLlibEnvRunner._try_env_reset) == [
        ("self", positional, none), ("seed", kw_only, None), ("options", kw_only, None)]
    assert parameters(Learner._create_iterator_if_necessary) == [
        ("self", positional, none), ("training_data", kw_only, none),
        ("num_total_minibatches", kw_only, 0), ("num_epochs", kw_only, 1),
        ("minibatch_size", kw_only, None), ("shuffle_batch_per_epoch", kw_only, False),
        ("kwargs", kw, none)]
    assert PPOTorchLearner._create_iterator_if_necessary is Learner._create_iterator_if_necessary
    assert parameters(Learner._make_batch_if_necessary) == [
        ("self", positional, none), ("training_data", positional, none)]
    assert parameters(Learner._set_slicing_by_batch_id) == [
        ("self", positional, none), ("batch", positional, none), ("value", kw_only, none)]
    assert parameters(Catalog._get_dist_cls_from_action_space) == [
        ("action_space", positional, none), ("framework", kw_only, None)]
    assert parameters(LoggerCallback._restore_from_remote) == [
        ("self", positional, none), ("file_name", positional, none),
        ("trial", positional, none)]
    assert parameters(CSVLoggerCallback._setup_trial) == [
        ("self", positional, none), ("trial", positional, none)]


# --- SingleAgentEnvRunner ------------------------------------------------------------------

class CountSteps(RLlibCallback):
    """A user's callbacks class with an on_episode_step hook."""
    calls = 0

    def on_episode_step(self, *, episode, env_index, **kwargs):
        CountSteps.calls += 1


def test_episode_hooks_are_called_where_a_user_gave_them_and_only_there(monkeypatch):
    assert not rllib_private.episode_hook_runs("on_episode_step", [RLlibCallback()], None)
    assert rllib_private.episode_hook_runs("on_episode_step", [CountSteps()], None)
    assert not rllib_private.episode_hook_runs("on_episode_end", [CountSteps()], None)
    assert rllib_private.episode_hook_runs("on_episode_end", [RLlibCallback()], [print])
    called = []                               # RLlib's own hook calls: none by default
    original = SingleAgentEnvRunner._make_on_episode_callback
    monkeypatch.setattr(SingleAgentEnvRunner, "_make_on_episode_callback",
                        lambda self, which, *args: (called.append(which),
                                                    original(self, which, *args)))
    config = tiny_config()
    runner = config.env_runner_cls(config=config)
    try:
        assert [isinstance(c, RLlibCallback) for c in runner._callbacks] == [True]
        runner.sample(num_timesteps=60)
    finally:
        runner.stop()
    assert called == []
    ends = []                                 # a user's hooks: one call per sub-env per step
    config = tiny_config().callbacks(CountSteps, on_episode_end=lambda **kw: ends.append(1))
    runner = config.env_runner_cls(config=config)
    try:
        CountSteps.calls = 0
        episodes = runner.sample(num_timesteps=120)
    finally:
        runner.stop()
    assert CountSteps.calls == sum(len(e) for e in episodes) == 120
    assert len(ends) == sum(e.is_done for e in episodes) > 0
    assert set(called) == {"on_episode_step", "on_episode_end"}


class SeedRecorder(rllib_private.EnvRunner):
    asked: list = []

    def reset_seeds(self, seed):
        self.asked.append(seed)
        return [101, 202]


def test_reset_seeds_seed_the_first_reset_only(ray_session):
    config = tiny_config().env_runners(env_runner_cls=SeedRecorder).debugging(seed=7)
    runner = SeedRecorder(config=config)
    try:
        SeedRecorder.asked.clear()
        first = runner.sample(num_timesteps=4, random_actions=True)
        runner.sample(num_timesteps=60, random_actions=True)            # episodes end, reset
        runner.sample(num_timesteps=4, random_actions=True, force_reset=True)
    finally:
        runner.stop()
    assert SeedRecorder.asked == [7]           # RLlib's seed (config seed + runner index 0)
    for episode, seed in zip(first, [101, 202]):
        env = envs.make_env(TASK)
        expected, _ = env.reset(seed=seed)
        np.testing.assert_array_equal(episode.get_observations(0), expected)


def test_env_runner_pipelines_and_running_state(ray_session):
    """RLlib's own runner: its two pipelines; after a sample() that leaves episodes running,
    the cached STATE_IN is each running episode's last STATE_OUT (RLlib's dense storage)."""
    runner = SingleAgentEnvRunner(config=tiny_config())
    try:
        env_to_module, module_to_env = rllib_private.env_runner_pipelines(runner)
        assert isinstance(env_to_module, ConnectorPipelineV2)
        assert isinstance(module_to_env, ConnectorPipelineV2)
        assert any(isinstance(c, AddStatesFromEpisodesToBatch) for c in env_to_module.connectors)
        assert rllib_private.next_state_in(runner) is None            # nothing sampled yet
        chunks = runner.sample(num_timesteps=10)                      # 5 steps of each env
        ongoing = rllib_private.ongoing_episodes(runner)
        state_in = rllib_private.next_state_in(runner)
    finally:
        runner.stop()
    assert len(ongoing) == runner.num_envs == 2
    assert [e.id_ for e in ongoing] == [c.id_ for c in chunks]        # they continue
    assert all(not e.is_done and e.t == c.t for e, c in zip(ongoing, chunks))
    for i, chunk in enumerate(chunks):
        last = chunk.get_extra_model_outputs(Columns.STATE_OUT, -1)
        for key, value in last.items():
            np.testing.assert_array_equal(np.asarray(state_in[key][i]), np.asarray(value))


def test_shared_data_keys_of_rllibs_env_runner_pieces(ray_session):
    """TIME_RANK_ADDED and EPISODE_OF_ROW are the keys RLlib's default pieces set (env-to-module)
    and read (module-to-env): a batch of a stateful module gets T = 1 and back."""
    from ray.rllib.connectors.common import (AddObservationsFromEpisodesToBatch,
                                             AddTimeDimToBatchAndZeroPad, BatchIndividualItems)
    from ray.rllib.connectors.module_to_env import (RemoveSingleTsTimeRankFromBatch,
                                                    UnBatchToIndividualItems)
    runner = SingleAgentEnvRunner(config=tiny_config())
    try:
        runner.sample(num_timesteps=4)
        episodes, module = rllib_private.ongoing_episodes(runner), runner.module
    finally:
        runner.stop()
    shared, batch = {}, {}
    for piece in (AddObservationsFromEpisodesToBatch(), AddTimeDimToBatchAndZeroPad(),
                  BatchIndividualItems()):
        batch = piece(rl_module=module, batch=batch, episodes=episodes, shared_data=shared)
    assert shared == {rllib_private.TIME_RANK_ADDED: True,
                      rllib_private.EPISODE_OF_ROW: [e.id_ for e in episodes]}
    assert batch[Columns.OBS].shape[:2] == (len(episodes), 1)
    for piece in (UnBatchToIndividualItems(), RemoveSingleTsTimeRankFromBatch()):
        batch = piece(rl_module=module, batch=batch, episodes=episodes, shared_data=shared)
    assert list(batch[Columns.OBS]) == [(e.id_,) for e in episodes]
    for episode in episodes:
        np.testing.assert_array_equal(batch[Columns.OBS][(episode.id_,)][0],
                                      episode.get_observations(-1))
    batch = RemoveSingleTsTimeRankFromBatch()(                  # without the key: unchanged
        rl_module=module, batch={Columns.OBS: {("x",): [np.zeros((1, 3))]}}, episodes=episodes,
        shared_data={})
    assert batch[Columns.OBS][("x",)][0].shape == (1, 3)


# --- Learner -------------------------------------------------------------------------------

def build_learner(config, learner_class):
    config = config.learners(learner_class=learner_class)
    runner = SingleAgentEnvRunner(config=config)
    episodes = runner.sample(num_timesteps=128)
    spaces = {"default_policy": (runner.env.single_observation_space,
                                 runner.env.single_action_space)}
    runner.stop()
    return config.build_learner(env=None, spaces=spaces), episodes


class RLlibsMinibatches(rllib_private.PPOLearner):
    """Does not override `minibatches`: RLlib's own iterator."""


class SeenMinibatches(rllib_private.PPOLearner):
    seen: list = []

    def minibatches(self, batch, *, num_epochs, minibatch_size, shuffle):
        self.seen.append((batch, num_epochs, minibatch_size, shuffle))
        return ["our minibatches"]


def test_minibatches_hook_gets_rllibs_learner_batch(ray_session):
    """(The learner connector changes the episodes it reads: each call gets its own copy.)"""
    learner, sampled = build_learner(tiny_config(), RLlibsMinibatches)

    def episodes():
        return copy.deepcopy(sampled)

    connector = rllib_private.learner_connector(learner)
    assert isinstance(connector, ConnectorPipelineV2)
    iterator = learner._create_iterator_if_necessary(
        training_data=TrainingData(episodes=episodes()), num_epochs=2, minibatch_size=64,
        shuffle_batch_per_epoch=True)
    assert isinstance(iterator, MiniBatchCyclicIterator)              # RLlib's own

    ours, _ = build_learner(tiny_config(), SeenMinibatches)
    SeenMinibatches.seen.clear()
    iterator = ours._create_iterator_if_necessary(
        training_data=TrainingData(episodes=episodes()), num_epochs=2, minibatch_size=64,
        shuffle_batch_per_epoch=True)
    assert iterator == ["our minibatches"]
    (batch, epochs, size, shuffle), = SeenMinibatches.seen
    assert (epochs, size, shuffle) == (2, 64, True)
    # the batch RLlib's connector makes of the episodes, sliced by row (B, T, ...)
    rows = batch.policy_batches["default_policy"]
    copies = episodes()
    expected = connector(rl_module=ours.module, batch={}, episodes=copies, shared_data={},
                         metrics=None)["default_policy"]
    np.testing.assert_array_equal(np.asarray(rows[Columns.OBS]),
                                  np.asarray(expected[Columns.OBS]))
    assert batch.env_steps() == sum(len(e) for e in copies)      # with PPO's bootstrap steps
    assert len(rows[0:1][Columns.SEQ_LENS]) == 1                      # one row, not one step
    # without minibatch_size: RLlib's own again
    assert not isinstance(ours._create_iterator_if_necessary(
        training_data=TrainingData(episodes=episodes()), num_epochs=1), list)


class ForgetZeroPadding(ConnectorV2):
    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None, **kwargs):
        shared_data.pop(rllib_private.ZERO_PADDED_FOR_MODULE.format("default_policy"))
        return batch


def test_the_learner_reads_the_zero_padded_key_rllibs_piece_sets(ray_session):
    """ZERO_PADDED_FOR_MODULE: RLlib's AddTimeDimToBatchAndZeroPad sets it in a learner's
    pipeline, and the learner makes the module's rows a zero-padded SampleBatch where it is
    set (learner_rows.EpisodeRows sets it in that piece's place)."""
    learner, sampled = build_learner(tiny_config(), RLlibsMinibatches)
    connector, shared = rllib_private.learner_connector(learner), {}
    connector(rl_module=learner.module, batch={}, episodes=copy.deepcopy(sampled),
              shared_data=shared, metrics=None)
    assert shared[rllib_private.ZERO_PADDED_FOR_MODULE.format("default_policy")] is True

    def rows():
        return learner._make_batch_if_necessary(training_data=TrainingData(
            episodes=copy.deepcopy(sampled))).policy_batches["default_policy"]
    assert rows().zero_padded
    connector.append(ForgetZeroPadding())
    assert not rows().zero_padded


def test_rllibs_ppo_learner_updates_the_kl_coeff_with_the_last_kl_logged(ray_session):
    """What batching.PPOLearner corrects: RLlib's coefficient update reads the KL key with
    window 1, i.e. the last minibatch's KL."""
    learner, _ = build_learner(tiny_config(), PPOTorchLearner)
    coeff = float(learner.curr_kl_coeffs_per_module["default_policy"])
    target = learner.config.kl_target
    for kl in [0.1 * target] * 5 + [3 * target]:          # mean 0.58 target, last 3 target
        learner.metrics.log_value(("default_policy", "mean_kl_loss"), torch.tensor(kl),
                                  window=1)
    learner.after_gradient_based_update(timesteps={})
    assert float(learner.curr_kl_coeffs_per_module["default_policy"]) == \
        pytest.approx(1.5 * coeff)


def test_local_learner_is_the_one_that_trains(ray_session):
    algo = tiny_config().build_algo()
    try:
        learner = rllib_private.local_learner(algo)
        assert isinstance(learner, batching.PPOLearner)
        before = {k: v.clone() for k, v in learner.module["default_policy"].state_dict().items()}
        algo.train()
        after = learner.module["default_policy"].state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before)
        weights = algo.learner_group.get_weights()["default_policy"]
        for key, value in after.items():
            np.testing.assert_array_equal(np.asarray(weights[key]), value.numpy())
    finally:
        algo.stop()


def test_env_steps_sampled_of_the_old_stack(ray_session):
    from experiments.rllib.ppo import algorithm_config
    config = algorithm_config({"name": "gru", "kwargs": {}, "stack": "old"}, "RepeatPreviousEasy",
                              seed=0, ppo=dict(train_batch_size_per_learner=128,
                                               minibatch_size=64, num_epochs=1, max_seq_len=16),
                              sizes=TINY, num_envs_per_env_runner=2)
    algo = config.build_algo()
    try:
        assert rllib_private.env_steps_sampled(algo) == 0
        result = algo.train()
        assert rllib_private.env_steps_sampled(algo) == \
            result["num_env_steps_sampled_lifetime"] >= 128
    finally:
        algo.stop()


# --- Catalog, Tune -------------------------------------------------------------------------

@pytest.mark.parametrize("space", [gym.spaces.Discrete(3),
                                   gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
                                   gym.spaces.MultiDiscrete([2, 3])])
def test_action_dist_cls_is_the_catalogs(space):
    observations = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    catalog = Catalog(observations, space, model_config_dict={})
    ours, theirs = rllib_private.action_dist_cls(space), catalog.get_action_dist_cls(
        framework="torch")
    # (a MultiDiscrete space gets a new partial class at each call)
    assert ours is theirs or ours.__bases__ == theirs.__bases__
    assert ours.required_input_dim(space) == theirs.required_input_dim(space)


def test_env_registered_follows_register_env():
    from ray.tune.registry import register_env
    name = "memrl-test-rllib-private-env"
    assert not rllib_private.env_registered(name)
    register_env(name, lambda config: gym.make("CartPole-v1"))
    assert rllib_private.env_registered(name)


class FakeTrial:
    """What Tune's file loggers read of a trial."""

    def __init__(self, path):
        self.local_path, self.checkpoint, self.config = str(path), None, {}

    def init_local_path(self):
        pass


class CSVHooks(rllib_private.TrialLogHooks, CSVLoggerCallback):
    restored: list = []

    def restore_from_study_folder(self, file_name, trial):
        self.restored.append(file_name)
        super().restore_from_study_folder(file_name, trial)


class JSONHooks(rllib_private.TrialLogHooks, JsonLoggerCallback):
    pass


def test_trial_log_hooks_are_tunes_state(tmp_path):
    trial = FakeTrial(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        log = CSVHooks()
        log.setup_trial(trial)                   # Tune's _setup_trial: restores, then opens
        assert CSVHooks.restored == ["progress.csv"]
        assert not log.trial_continues(trial)    # empty: a header to write
        assert log.trial_file(trial).name == str(tmp_path / "progress.csv")
        log.log_trial_result(1, trial, {"training_iteration": 1, "x": 2})
        log.log_trial_end(trial)
        again = CSVHooks()
        again.setup_trial(trial)
        assert again.trial_continues(trial)      # rows there: no second header
        file = again.trial_file(trial)
        again.set_trial_csv_writer(trial, __import__("csv").DictWriter(
            file, ["training_iteration", "x"]))
        again.log_trial_result(2, trial, {"training_iteration": 2, "x": 3})
        again.log_trial_end(trial)
        assert (tmp_path / "progress.csv").read_text().splitlines() == \
            ["training_iteration,x", "1,2", "2,3"]

        json_log = JSONHooks()
        json_log.log_trial_start(trial)
        opened = json_log.trial_file(trial)
        replacement = open(tmp_path / "result.json", "a")
        opened.close()
        json_log.set_trial_file(trial, replacement)
        json_log.log_trial_result(1, trial, {"training_iteration": 1})
        json_log.log_trial_end(trial)
        assert (tmp_path / "result.json").read_text().strip() == '{"training_iteration": 1}'
