"""The whole old-stack network (`memrl_<name>`, experiments.rllib.old_stack) against POPGym's
RLlib model of the same memory, given the same weights: the same logits, values, returned
state and gradients, on a training batch (rows of different lengths, non-zero stored states)
and on a sampling step.

The cell tests (tests/test_popgym_lineup.py, test_lmu.py) hold the memories equal; these hold
equal everything around them too (feature map, LayerNorm, preprocessor, heads, how RLlib's
padded rows reach the memory), and then a whole training run: two old-stack PPO iterations of
each model, as a study builds them (`experiments.rllib.ppo.algorithm_config`), from the same
weights with the same seeds, end at the same weights. A learning difference between a pair in
a study is then not in what the two compute nor in how they are trained, but in the initial
weights the seeds draw. The fused RNNs are covered: POPGym's model and ours hold the same
parameters in the same order (POPGym's unused `embedding_strength` aside). The models with a
position embedding differ in one place, where it enters the network (the last test).
"""

import random

import gymnasium as gym
import numpy as np
import pytest
import torch

from experiments.rllib.old_stack import old_stack_model_class
from experiments.rllib.popgym_models import custom_model_config, popgym_class

pytestmark = pytest.mark.usefixtures("one_thread")

PAIRS = [("elman", "popgym:Elman"), ("gru", "popgym:GRU"), ("lstm", "popgym:LSTM")]
SIZES = dict(pre_size=16, hidden_size=12, head_size=10)
OBS, ACTIONS, MAX_SEQ_LEN = 5, 4, 8
EXACT = dict(atol=1e-12, rtol=1e-12)            # float64, the same operations


def pair(ours_name, theirs_name):
    """(ours, theirs) in float64, ours holding POPGym's initial weights."""
    obs_space, action_space = gym.spaces.Box(0.0, 1.0, (OBS,)), gym.spaces.Discrete(ACTIONS)
    torch.manual_seed(0)
    theirs = popgym_class(theirs_name)(
        obs_space, action_space, ACTIONS,
        {"max_seq_len": MAX_SEQ_LEN, "custom_model_config": custom_model_config(SIZES, {})},
        "theirs").double()
    ours = old_stack_model_class(ours_name)(obs_space, action_space, ACTIONS,
                                            {"max_seq_len": MAX_SEQ_LEN}, "ours",
                                            **SIZES).double()
    theirs_parameters = shared_parameters(theirs)
    ours_parameters = list(ours.parameters())
    assert [p.shape for p in theirs_parameters] == [p.shape for p in ours_parameters]
    with torch.no_grad():
        for mine, original in zip(ours_parameters, theirs_parameters):
            mine.copy_(original)
    return ours, theirs, theirs_parameters


def shared_parameters(model) -> list:
    """The model's parameters less POPGym's unused `embedding_strength`: ours and POPGym's
    list the same tensors in the same order."""
    return [p for n, p in model.named_parameters() if n != "embedding_strength"]


def states(ours, state: dict, t_starts):
    """One recurrent state as each model's list: ours in `state_keys` (sorted) order, POPGym's
    in torch's order (h, c) with a singleton dim and its step counter last."""
    mine = [state[k].clone() for k in ours.state_keys]
    theirs = [state[k][:, None].clone() for k in ours.memory.state_keys] + [t_starts[:, None]]
    return mine, theirs


def observations(rows, generator):
    """(rows, OBS) float64 values that float32 holds exactly (RLlib's RecurrentNetwork, ours,
    casts the observations to float32 before the float64 network sees them)."""
    return torch.rand(rows, OBS, generator=generator).double()


def run(model, obs, state, seq_lens):
    logits, state_out = model({"obs": obs}, state, seq_lens)
    return logits, model.value_function(), state_out


@pytest.mark.parametrize("ours_name, theirs_name", PAIRS)
def test_the_training_pass_equals_popgyms(ours_name, theirs_name):
    ours, theirs, theirs_parameters = pair(ours_name, theirs_name)
    generator = torch.Generator().manual_seed(1)
    seq_lens = torch.tensor([MAX_SEQ_LEN, 5, 2, 1])
    rows = len(seq_lens)
    obs = observations(rows * MAX_SEQ_LEN, generator)
    state = {k: torch.randn(rows, SIZES["hidden_size"], generator=generator, dtype=torch.float64)
             for k in ours.state_keys}
    mine, original = states(ours, state, t_starts=torch.tensor([0, 3, 7, 20]))
    logits, values, _ = run(ours, obs, mine, seq_lens)
    logits_ref, values_ref, _ = run(theirs, obs, original, seq_lens)
    valid = (torch.arange(MAX_SEQ_LEN)[None] < seq_lens[:, None]).reshape(-1)   # the loss's mask
    torch.testing.assert_close(logits[valid], logits_ref[valid], **EXACT)
    torch.testing.assert_close(values[valid], values_ref[valid], **EXACT)

    weights = torch.randn(logits.shape, generator=generator, dtype=torch.float64)
    value_weights = torch.randn(values.shape, generator=generator, dtype=torch.float64)
    for lg, vl in ((logits, values), (logits_ref, values_ref)):
        ((lg * weights)[valid].sum() + (vl * value_weights)[valid].sum()).backward()
    for mine_p, original_p in zip(ours.parameters(), theirs_parameters):
        torch.testing.assert_close(mine_p.grad, original_p.grad, **EXACT)


@pytest.mark.parametrize("ours_name, theirs_name", PAIRS)
def test_the_sampling_step_equals_popgyms(ours_name, theirs_name):
    ours, theirs, _ = pair(ours_name, theirs_name)
    generator = torch.Generator().manual_seed(2)
    rows = 16
    obs = observations(rows, generator)
    state = {k: torch.randn(rows, SIZES["hidden_size"], generator=generator, dtype=torch.float64)
             for k in ours.state_keys}
    mine, original = states(ours, state, t_starts=torch.arange(rows))
    ones = torch.ones(rows, dtype=torch.long)
    with torch.no_grad():
        logits, values, state_out = run(ours, obs, mine, ones)
        logits_ref, values_ref, state_out_ref = run(theirs, obs, original, ones)
    torch.testing.assert_close(logits, logits_ref, **EXACT)
    torch.testing.assert_close(values, values_ref, **EXACT)
    by_key = dict(zip(ours.memory.state_keys, state_out_ref[:-1]))
    for key, value in zip(ours.state_keys, state_out):
        torch.testing.assert_close(value, by_key[key][:, 0], **EXACT)
    torch.testing.assert_close(state_out_ref[-1][:, 0], torch.arange(rows) + 1)


@pytest.mark.parametrize("ours_name, theirs_name", PAIRS)
def test_ppo_from_the_same_weights_ends_at_the_same_weights(ray_session, ours_name, theirs_name):
    from experiments.rllib.ppo import algorithm_config

    def build(name):
        return algorithm_config(
            {"name": name, "kwargs": {}, "stack": "old"}, "RepeatPreviousEasy", seed=0,
            num_envs_per_env_runner=2, sizes=SIZES,
            ppo=dict(lr=1e-3, train_batch_size_per_learner=256, minibatch_size=64,
                     num_epochs=2, max_seq_len=MAX_SEQ_LEN)).build_algo()

    def parameters(algo):
        return shared_parameters(algo.get_policy().model)

    def two_iterations(algo):
        """Sampling (actions: torch's generator) and minibatch order (numpy's) from the same
        seeds for both models; the env seeds come from the trial seed."""
        random.seed(1), np.random.seed(1), torch.manual_seed(1)
        returns = [algo.train()["env_runners"]["episode_return_mean"] for _ in range(2)]
        weights = [p.detach().clone() for p in parameters(algo)]
        algo.stop()
        return returns, weights

    theirs = build(theirs_name)
    initial = [p.detach().clone() for p in parameters(theirs)]
    returns_ref, weights_ref = two_iterations(theirs)
    ours = build(ours_name)
    with torch.no_grad():
        for mine, original in zip(parameters(ours), initial, strict=True):
            mine.copy_(original)
    returns, weights = two_iterations(ours)

    assert returns == returns_ref                         # the same actions in the same episodes
    moved = max((w - i).abs().max().item() for w, i in zip(weights_ref, initial))
    assert moved > 1e-3                                   # training changed the weights ...
    for mine, original in zip(weights, weights_ref):      # ... the same way (float32 rounding)
        torch.testing.assert_close(mine, original, atol=1e-5, rtol=1e-4)


# POPGym's names -> ours for pos_mlp vs POPGym's MLP (the other parameters: the same names)
POS_MLP_NAMES = {"feature_map.0": "pre.0", "pre.0": "pre.2", "core": "memory.net",
                 "embedding_strength": "memory.embedding.strength", "actor.0.0": "actor.0",
                 "actor.0.2": "actor.2", "actor.1": "actor.4", "critic.0.0": "critic.0",
                 "critic.0.2": "critic.2", "critic.1": "critic.4"}


def _our_name(name: str) -> str:
    stem = max((k for k in POS_MLP_NAMES if name == k or name.startswith(k + ".")), key=len)
    return POS_MLP_NAMES[stem] + name[len(stem):]


@pytest.mark.parametrize("strength", [0.0, 0.5])
def test_a_position_model_equals_popgyms_but_where_the_embedding_enters(strength):
    """POPGym adds its position embedding to the feature map's output, before the preprocessor
    (Linear + LeakyReLU; BaseModel.forward); our cells add it at the memory's input, after the
    preprocessor. With the embedding's strength at 0 the whole networks (pos_mlp, POPGym's MLP)
    are equal given the same weights, so that placement is their only difference; at POPGym's
    initial strength 0.5 they differ."""
    obs_space, action_space = gym.spaces.Box(0.0, 1.0, (OBS,)), gym.spaces.Discrete(ACTIONS)
    torch.manual_seed(0)
    max_len = 32
    theirs = popgym_class("popgym:MLP")(
        obs_space, action_space, ACTIONS,
        {"max_seq_len": max_len, "custom_model_config": custom_model_config(SIZES, {})},
        "theirs").double()
    ours = old_stack_model_class("pos_mlp")(obs_space, action_space, ACTIONS,
                                            {"max_seq_len": max_len}, "ours",
                                            memory_kwargs={"max_len": max_len},
                                            **SIZES).double()
    mine = dict(ours.named_parameters())
    with torch.no_grad():
        theirs.embedding.weight.copy_(                  # our float64 table (POPGym's: float32)
            ours.memory.embedding.encode(torch.arange(max_len, dtype=torch.float64)))
        for name, original in theirs.named_parameters():
            if name != "embedding.weight":
                mine[_our_name(name)].copy_(original)
        ours.memory.embedding.strength.fill_(strength)
        theirs.embedding_strength.fill_(strength)
    assert len(mine) == len(list(theirs.parameters())) - 1        # every parameter matched

    generator = torch.Generator().manual_seed(1)
    seq_lens, t_starts = torch.tensor([MAX_SEQ_LEN, 5, 2, 1]), torch.tensor([0, 3, 7, 20])
    obs = observations(len(seq_lens) * MAX_SEQ_LEN, generator)
    with torch.no_grad():
        logits, values, _ = run(ours, obs, [t_starts[:, None].double()], seq_lens)
        logits_ref, values_ref, _ = run(theirs, obs, [t_starts[:, None]], seq_lens)
    valid = (torch.arange(MAX_SEQ_LEN)[None] < seq_lens[:, None]).reshape(-1)
    differences = [(logits - logits_ref)[valid].abs().max(),
                   (values - values_ref)[valid].abs().max()]
    if strength == 0.0:
        assert max(differences) < 1e-12
    else:
        assert min(differences) > 1e-4
