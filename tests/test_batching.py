"""experiments.rllib.batching: complete-episode sampling and minibatches as RLlib's old stack
made them.

The minibatch rule is held equal to the old stack's own code (RLlib's zero padding and
SampleBatch slicing, as `TorchPolicyV2.load_batch_into_buffer` / `learn_on_loaded_batch` use
them); the env runner is checked to lose no sampled step on a task with variable-length
episodes; a PPO learner built by `ppo_config` trains on exactly those minibatches.
"""

import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.policy.rnn_sequencing import pad_batch_to_sequences_of_same_size
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.policy.view_requirement import ViewRequirement

from experiments.rllib import batching, rllib_private
from experiments.rllib.batching import OldStackMinibatches, old_stack_minibatch_rows
from experiments.rllib.ppo import algorithm_config, ppo_config

VARIABLE = "popgym-NoisyPositionOnlyCartPoleEasy-v0"     # episodes of many lengths


pytestmark = pytest.mark.usefixtures("one_thread")


def old_stack_rows(seq_lens: np.ndarray, max_seq_len: int, minibatch_size: int) -> list[range]:
    """The rows of each minibatch RLlib's old stack trains on (one CPU device), by its code."""
    rows = len(seq_lens)
    batch = SampleBatch({"obs": np.zeros((int(seq_lens.sum()), 1), np.float32),
                         "state_in_0": np.arange(rows)[:, None].astype(np.float32),
                         SampleBatch.SEQ_LENS: seq_lens})
    pad_batch_to_sequences_of_same_size(
        batch, max_seq_len=max_seq_len, shuffle=False,
        view_requirements={"state_in_0": ViewRequirement("state_out_0", shift=-1)})
    num_batches = max(1, len(batch) // minibatch_size)        # multi_gpu_train_one_step
    found = []
    for k in range(num_batches):                               # learn_on_loaded_batch
        piece = batch if minibatch_size >= len(batch) else \
            batch[k * minibatch_size:(k + 1) * minibatch_size]
        ids = piece["state_in_0"][:, 0].astype(int)
        found.append(range(int(ids[0]), int(ids[-1]) + 1) if len(ids) else range(0))
    return found


@pytest.mark.parametrize("seed", range(6))
def test_minibatch_rows_equal_the_old_stacks(seed):
    rng = np.random.default_rng(seed)
    max_seq_len = int(rng.choice([8, 16, 64]))
    seq_lens = rng.integers(1, max_seq_len + 1, size=int(rng.integers(5, 300)))
    minibatch_size = int(rng.choice([7, 64, 100, 1024, 10_000]))
    ours = old_stack_minibatch_rows(seq_lens, minibatch_size)
    assert ours == old_stack_rows(seq_lens, max_seq_len, minibatch_size)
    assert len(ours) == max(1, int(seq_lens.sum()) // minibatch_size)


def test_minibatch_rows_by_hand():
    # rows of 3, 5, 2, 4 valid steps (14); minibatches of 4 steps: 3 of them.
    # step 0 is in row 0, step 4 in row 1, step 8 in row 2, step 12 in row 3.
    assert old_stack_minibatch_rows(np.array([3, 5, 2, 4]), 4) == \
        [range(0, 1), range(1, 2), range(2, 3)]        # row 3 is past the last boundary
    assert old_stack_minibatch_rows(np.array([3, 5, 2, 4]), 100) == [range(0, 4)]


def learner_batch(valid: list[int], steps: int) -> MultiAgentBatch:
    """A new-stack learner batch: rows (B, steps) with a LOSS_MASK of `valid` steps each."""
    rows = len(valid)
    mask = np.arange(steps)[None] < np.array(valid)[:, None]
    module = SampleBatch({Columns.OBS: np.arange(rows, dtype=np.float32)[:, None, None]
                          * np.ones((1, steps, 1), np.float32),
                          Columns.LOSS_MASK: mask,
                          Columns.SEQ_LENS: np.array(valid) + 1,    # + the bootstrap step
                          Columns.STATE_IN: {"h": np.zeros((rows, 2), np.float32)}},
                         _zero_padded=True, _max_seq_len=steps)
    module._slice_seq_lens_in_B = True
    return MultiAgentBatch({"default_policy": module}, env_steps=int(sum(valid)))


def test_iterator_epochs_visit_the_same_minibatches_in_new_orders():
    valid = [3, 5, 2, 4, 6, 1, 7]
    iterator = OldStackMinibatches(learner_batch(valid, 8), num_epochs=3, minibatch_size=5)
    assert iterator.minibatches == old_stack_minibatch_rows(np.array(valid), 5)
    np.random.seed(0)
    seen = [tuple(mb.policy_batches["default_policy"][Columns.OBS][:, 0, 0].astype(int))
            for mb in iterator]
    per_epoch = len(iterator.minibatches)
    assert len(seen) == 3 * per_epoch
    expected = sorted(tuple(r) for r in iterator.minibatches)
    epochs = [seen[i * per_epoch:(i + 1) * per_epoch] for i in range(3)]
    assert all(sorted(epoch) == expected for epoch in epochs)
    assert len(set(map(tuple, epochs))) > 1             # the order changes between epochs


def test_iterator_rejects_several_modules():
    batch = learner_batch([3, 4], 4)
    batch.policy_batches["other"] = batch.policy_batches["default_policy"]
    with pytest.raises(ValueError, match="one module"):
        OldStackMinibatches(batch, num_epochs=1, minibatch_size=2)


def test_complete_episodes_lose_no_step(ray_session):
    """RLlib 2.60's own env runner drops the running episodes at each call (the long ones);
    ours carries them over: every sampled step comes back in a finished episode (those that
    finished past a call's batch in the next call). The episode metrics average the last
    metrics_num_episodes_for_smoothing finished episodes (20 here), whichever call they
    finished in, as the old stack's (RLlib's new stack: this call's only)."""
    config = ppo_config(env=VARIABLE, memory="gru", model_config=dict(
        pre_size=8, hidden_size=8, head_size=8), max_seq_len=16, num_envs_per_env_runner=4,
        train_batch_size_per_learner=256, minibatch_size=64, num_epochs=1)
    config = config.reporting(metrics_num_episodes_for_smoothing=20)
    runner = batching.CompleteEpisodesEnvRunner(config=config)
    returned, finished, sampled, calls_under_window = [], [], 0, 0
    for _ in range(5):
        waiting = list(runner._finished)
        episodes = runner.sample()
        assert all(e.is_done and e.t_started == 0 for e in episodes)
        assert sum(map(len, episodes)) >= 256
        assert sum(map(len, episodes[:-1])) < 256          # up to the first that reaches it
        returned += episodes
        finished_now = [e for e in episodes if e not in waiting] + runner._finished
        finished += finished_now                            # in the order they finished
        calls_under_window += len(finished_now) < 20
        metrics = runner.get_metrics()
        last = finished[-20:] if len(finished_now) < 20 else finished_now[-20:]
        assert float(metrics["episode_len_mean"]) == pytest.approx(
            np.mean([len(e) for e in last]))               # each episode whole, once
        assert float(metrics["episode_return_mean"]) == pytest.approx(
            np.mean([e.get_return() for e in last]))
        sampled += int(metrics["num_env_steps_sampled"])
    assert calls_under_window, "every call finished 20 episodes: the window shows nothing"
    running = sum(len(e) for e in runner._running.values())
    waiting = sum(len(e) for e in runner._finished)
    assert sum(map(len, returned)) + waiting + running == sampled
    assert len({e.id_ for e in returned}) == len(returned)
    runner.stop()


def test_a_call_returns_the_old_stacks_batch(ray_session):
    """The old stack's RolloutWorker returns finished episodes, in the order they finished, up
    to the first that brings the batch to rollout_fragment_length x num_envs (episodes that
    finished with it wait for the next call); ours the same. On 51-step episodes, 4 envs in
    step and a batch of 256: 6 episodes (306 steps) a call on both stacks (ours returned 8,
    408 steps, before: every episode finished by the time its own steps reached 256), so
    PPO made as many updates per env step as on the old stack."""
    ppo = dict(train_batch_size_per_learner=256, minibatch_size=64, num_epochs=1,
               max_seq_len=16)
    configs = {stack: algorithm_config({"name": "gru", "kwargs": {}, "stack": stack},
                                       "RepeatPreviousEasy", seed=0, ppo=ppo,
                                       sizes=dict(pre_size=8, hidden_size=8, head_size=8),
                                       num_envs_per_env_runner=4)
               for stack in ("new", "old")}
    runner = batching.CompleteEpisodesEnvRunner(config=configs["new"])
    try:
        ours = [sum(map(len, runner.sample())) for _ in range(4)]
    finally:
        runner.stop()
    old = configs["old"].build_algo()
    try:
        theirs = [old.env_runner.sample().count for _ in range(4)]
    finally:
        old.stop()
    assert ours == theirs == [6 * 51] * 4


def test_ppo_trains_on_old_stack_minibatches(ray_session, monkeypatch):
    """One PPO iteration from ppo_config: the learner's minibatches are the old stack's."""
    seen = []
    original = OldStackMinibatches.__init__

    def record(self, batch, **kwargs):
        original(self, batch, **kwargs)
        seen.append(self)

    monkeypatch.setattr(OldStackMinibatches, "__init__", record)
    forward = []
    from experiments.rllib.rl_module import MemoryRLModule
    train = MemoryRLModule._forward_train
    monkeypatch.setattr(MemoryRLModule, "_forward_train",
                        lambda self, batch, **kw: forward.append(batch[Columns.OBS].shape[0])
                        or train(self, batch, **kw))
    kls = []
    loss = batching.PPOLearner.compute_loss_for_module

    def record_kl(self, **kwargs):
        out = loss(self, **kwargs)
        kls.append(float(self.minibatch_kls[kwargs["module_id"]][-1]))
        return out

    monkeypatch.setattr(batching.PPOLearner, "compute_loss_for_module", record_kl)
    config = ppo_config(env=VARIABLE, memory="gru", model_config=dict(
        pre_size=8, hidden_size=8, head_size=8), max_seq_len=16, num_envs_per_env_runner=4,
        train_batch_size_per_learner=512, minibatch_size=128, num_epochs=2)
    algo = config.build_algo()
    try:
        result = algo.train()["learners"]["default_policy"]
    finally:
        algo.stop()
    # the KL coefficient (0.2 to start) updated with the mean KL of the minibatches
    assert len(kls) == len(forward)
    assert float(result["mean_kl_loss"]) == pytest.approx(np.mean(kls), rel=1e-5)
    target = config.kl_target
    factor = 1.5 if np.mean(kls) > 2 * target else 0.5 if np.mean(kls) < 0.5 * target else 1
    assert float(result["curr_kl_coeff"]) == pytest.approx(0.2 * factor)
    iterator, = seen
    mask = np.asarray(iterator.module_batch[Columns.LOSS_MASK])
    assert mask.sum() >= 512
    # advantages standardized over the loss's steps (RLlib's GAE: with each episode's masked
    # bootstrap step, whose advantage is the critic's guess at a last observation), as the
    # old stack did; the masked ones 0
    advantages = np.asarray(iterator.module_batch["advantages"])
    assert advantages[mask].mean() == pytest.approx(0.0, abs=1e-5)
    assert advantages[mask].std() == pytest.approx(1.0, abs=1e-4)
    assert not advantages[~mask].any()
    assert iterator.minibatches == old_stack_minibatch_rows(mask.sum(axis=1), 128)
    assert len(forward) == 2 * len(iterator.minibatches)
    assert sorted(forward) == sorted(2 * [len(r) for r in iterator.minibatches])


def test_minibatches_without_padding_keep_ppo_losses(ray_session, monkeypatch):
    """Minibatches cut to their longest row (not RLlib's max_seq_len) give the PPO loss of the
    padded rows, and the batch the iterator cuts keeps its width for the next epoch."""
    seen = []
    original = OldStackMinibatches.__init__
    monkeypatch.setattr(OldStackMinibatches, "__init__",
                        lambda self, batch, **kw: original(self, batch, **kw) or seen.append(self))
    config = ppo_config(env=VARIABLE, memory="gru", model_config=dict(
        pre_size=8, hidden_size=8, head_size=8), max_seq_len=64, num_envs_per_env_runner=4,
        train_batch_size_per_learner=512, minibatch_size=128, num_epochs=1)
    algo = config.build_algo()
    try:
        algo.train()
        iterator, = seen
        learner = rllib_private.local_learner(algo)
        module_id = iterator.module_id

        def loss(rows):
            module = learner.module[module_id]
            with torch.no_grad():
                return float(learner.compute_loss_for_module(
                    module_id=module_id, config=learner.config.get_config_for_module(module_id),
                    batch=rows, fwd_out=module.forward_train(rows)))

        assert iterator.module_batch[Columns.LOSS_MASK].shape[1] == 64
        cut = 0
        for rows in iterator.minibatches:
            padded = iterator.module_batch[rows.start:rows.stop]
            trimmed = batching.without_padding(iterator.module_batch[rows.start:rows.stop])
            longest = int(max(padded[Columns.SEQ_LENS]))
            assert padded[Columns.OBS].shape[1] == 64
            assert trimmed[Columns.OBS].shape[1] == trimmed[Columns.LOSS_MASK].shape[1] == longest
            assert loss(trimmed) == pytest.approx(loss(padded), rel=1e-5, abs=1e-6)
            cut += longest < 64
        assert cut, "no minibatch was shorter than max_seq_len: the test shows nothing"
    finally:
        algo.stop()


def test_kl_coeff_is_updated_with_the_mean_kl_of_the_update(ray_session, monkeypatch):
    """RLlib's PPO learner updates the KL coefficient with the last minibatch's KL (the one
    furthest from the sampling policy; tests/test_rllib_private.py); the old stack, and ours,
    with the mean over the update's minibatches: KLs of 0.1, 0.1, 0.1, 0.1, 0.1, 3 x kl_target
    (mean 0.58) leave it as it is, where RLlib's would raise it x 1.5."""
    from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
    config = ppo_config(env="popgym-RepeatPreviousEasy-v0", memory="gru", model_config=dict(
        pre_size=8, hidden_size=8, head_size=8), max_seq_len=16, num_envs_per_env_runner=2,
        train_batch_size_per_learner=128, minibatch_size=64, num_epochs=1)
    runner = batching.CompleteEpisodesEnvRunner(config=config)
    spaces = {"default_policy": (runner.env.single_observation_space,
                                 runner.env.single_action_space)}
    runner.stop()
    learner = config.build_learner(env=None, spaces=spaces)
    target = config.kl_target
    kls = iter([0.1 * target] * 5 + [3 * target])

    def logs_a_kl(self, *, module_id, config, batch, fwd_out):
        self.metrics.log_value((module_id, "mean_kl_loss"), torch.tensor(next(kls)), window=1)
        return torch.tensor(0.0)

    monkeypatch.setattr(PPOTorchLearner, "compute_loss_for_module", logs_a_kl)
    coeff = float(learner.curr_kl_coeffs_per_module["default_policy"])
    module_config = learner.config.get_config_for_module("default_policy")
    learner.before_gradient_based_update(timesteps={})
    for _ in range(6):
        learner.compute_loss_for_module(module_id="default_policy", config=module_config,
                                        batch=None, fwd_out=None)
    learner.after_gradient_based_update(timesteps={})
    assert float(learner.curr_kl_coeffs_per_module["default_policy"]) == pytest.approx(coeff)
    assert float(learner.metrics.peek(("default_policy", "mean_kl_loss"))) == \
        pytest.approx(3.5 / 6 * target)
