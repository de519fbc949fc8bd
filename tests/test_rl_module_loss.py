"""The PPO loss RLlib's learner computes from MemoryRLModule's training pass: equal to the loss of
the same rows played one step at a time (the env runners' path), and pinned to the values it had
before the training pass stopped computing what the loss never reads."""

import pytest
import torch
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.evaluation.postprocessing import Postprocessing

import envs
import memory_models
from experiments.rllib.ppo import ppo_config
from test_rl_module import SIZES, small_memory_kwargs

ENV = "popgym-RepeatPreviousEasy-v0"
LENGTHS = [12, 7, 2]                  # rows of a learner batch, padded to max_seq_len = 12
STATEFUL = [name for name in memory_models.available() if name != "mlp"]
# compute_loss_for_module on `learner_batch` at seed 0, before the change (float32); cells
# added since are held to the step-by-step loss only
PINNED = {"event_ssm": 1.1047369241714478, "gru": 1.1970678567886353, "lmu": 1.14614737033844,
          "lmu_fft": 1.135294795036316, "lstm": 1.30441153049469, "s4d": 1.0342599153518677}


def ppo_learner(memory):
    torch.manual_seed(0)
    sizes = {k: v for k, v in SIZES.items() if k != "max_seq_len"}
    config = ppo_config(env=ENV, memory=memory, memory_kwargs=small_memory_kwargs(memory),
                        model_config=sizes, max_seq_len=SIZES["max_seq_len"],
                        train_batch_size_per_learner=64, minibatch_size=32)
    learner = config.build_learner(env=envs.make_env(ENV))
    learner.build()
    return learner, config


def learner_batch(module):
    """Rows of episode chunks as the learner gets them: zero-padded past each length (here
    junk, which must not matter), the last valid step masked (PPO's bootstrap step), a carried
    state, and the PPO columns."""
    g = torch.Generator().manual_seed(1)
    rows, steps = len(LENGTHS), SIZES["max_seq_len"]
    obs_size = module.observation_space.shape[0]
    valid = torch.arange(steps) < torch.tensor(LENGTHS)[:, None]
    obs = torch.where(valid[..., None], torch.randn(rows, steps, obs_size, generator=g),
                      1e3 * torch.randn(rows, steps, obs_size, generator=g))
    state = {k: torch.randn(rows, *v.shape, generator=g)
             for k, v in module.get_initial_state().items()}
    return {Columns.OBS: obs, Columns.STATE_IN: state,
            Columns.SEQ_LENS: torch.tensor(LENGTHS),
            Columns.LOSS_MASK: torch.arange(steps) < torch.tensor(LENGTHS)[:, None] - 1,
            Columns.ACTIONS: torch.randint(0, module.action_space.n, (rows, steps), generator=g),
            Columns.ACTION_LOGP: -torch.rand(rows, steps, generator=g),
            Columns.ACTION_DIST_INPUTS: torch.randn(rows, steps, module.action_space.n,
                                                    generator=g),
            Postprocessing.ADVANTAGES: torch.randn(rows, steps, generator=g),
            Postprocessing.VALUE_TARGETS: torch.randn(rows, steps, generator=g)}


def step_by_step(module, batch):
    """The training pass's outputs, played one step at a time from STATE_IN (zeros past each
    row's length)."""
    obs, state = batch[Columns.OBS], batch[Columns.STATE_IN]
    features = []
    for t in range(obs.shape[1]):
        features_t, state = module._features({Columns.OBS: obs[:, t:t + 1],
                                              Columns.STATE_IN: state}, final_state=True)
        features.append(features_t[:, 0])
    features = torch.stack(features, 1)
    valid = torch.arange(obs.shape[1]) < batch[Columns.SEQ_LENS][:, None]
    features = torch.where(valid[..., None], features, 0.0)
    return {Columns.ACTION_DIST_INPUTS: torch.where(valid[..., None], module.actor(features), 0),
            Columns.EMBEDDINGS: features}


@pytest.mark.parametrize("memory", STATEFUL)
def test_ppo_loss_equals_the_step_by_step_loss_and_its_pinned_value(memory):
    learner, config = ppo_learner(memory)
    module = learner.module[DEFAULT_MODULE_ID]
    batch = learner_batch(module)

    def loss(fwd_out):
        return learner.compute_loss_for_module(module_id=DEFAULT_MODULE_ID, config=config,
                                               batch=batch, fwd_out=fwd_out)

    with torch.no_grad():
        trained = loss(module.forward_train(batch))
        reference = loss(step_by_step(module, batch))
    torch.testing.assert_close(trained, reference, rtol=1e-5, atol=1e-6)
    if memory in PINNED:                 # the cells that existed before that change
        torch.testing.assert_close(trained.item(), PINNED[memory], rtol=1e-5, atol=1e-6)
