"""Old API stack adapter: every memory registered as "memrl_<name>", its forward carries the
memory state the way RLlib's old stack uses it, and old-stack PPO trains one iteration."""

import gymnasium as gym
import pytest
import torch
from ray.rllib.models import MODEL_DEFAULTS, ModelCatalog

import envs
import memory_models
from small_sizes import small_memory_kwargs
from experiments.rllib.old_stack import register_old_stack_models

ENV = "popgym-RepeatPreviousEasy-v0"
SIZES = {"pre_size": 16, "hidden_size": 12, "head_size": 8}


def build_model(name, custom_name, num_outputs=4, **extra):
    env = envs.make_env(ENV)
    config = {**MODEL_DEFAULTS, "custom_model": custom_name, "max_seq_len": 16,
              "custom_model_config": {**SIZES, "memory_kwargs": small_memory_kwargs(name),
                                      **extra}}
    torch.manual_seed(0)
    return ModelCatalog.get_model_v2(env.observation_space, env.action_space, num_outputs,
                                     config, framework="torch"), env


def test_every_memory_is_registered_under_its_documented_name():
    names = register_old_stack_models()
    assert names == {m: f"memrl_{m}" for m in memory_models.available()}
    assert register_old_stack_models() == names                       # idempotent


@pytest.mark.parametrize("name", memory_models.available())
def test_forward_chunks_equal_step_by_step(name):
    """RLlib steps the model one observation at a time while sampling and then trains on padded
    chunks of the same episodes starting from the stored state: both must give the same logits,
    values and final state."""
    model, env = build_model(name, register_old_stack_models()[name])
    assert isinstance(model, torch.nn.Module) and model.memory.hidden_size == SIZES["hidden_size"]
    obs_size = gym.spaces.utils.flatdim(env.observation_space)
    batch, steps = 2, 7
    seq_lens = torch.tensor([steps, 4], dtype=torch.int32)
    obs = torch.rand(batch, steps, obs_size)
    initial = model.get_initial_state()
    memory_state = model.memory.initial_state(1)
    assert [s.shape for s in initial] == [memory_state[k][0].shape for k in sorted(memory_state)]
    state = [s.expand(batch, *s.shape).clone() + 0.1 for s in initial]   # a non-initial state

    # step by step, as the sampler does (seq_lens all ones, T = 1)
    step_logits, step_values, step_states = [], [], []
    carried = state
    for t in range(steps):
        logits, carried = model({"obs": obs[:, t]}, carried, torch.ones(batch, dtype=torch.int32))
        step_logits.append(logits)
        step_values.append(model.value_function())
        step_states.append(carried)
    step_logits = torch.stack(step_logits, 1)                            # (B, T, 4)
    step_values = torch.stack(step_values, 1)                            # (B, T)

    # two chunks with the state carried, as the learner sees them: rows zero-padded to the
    # chunk's length plus `extra` steps of padding beyond the longest row
    cut, extra = 3, 2
    chunk_logits, chunk_values = [], []
    carried = state
    for lo, hi in ((0, cut), (cut, steps)):
        lens = (seq_lens - lo).clamp(0, hi - lo).to(torch.int32)
        padded = torch.cat([obs[:, lo:hi], torch.zeros(batch, extra, obs_size)], 1)
        logits, carried = model({"obs": padded.reshape(-1, obs_size)}, carried, lens)
        values = model.value_function()
        assert logits.shape == (batch * (hi - lo + extra), 4) and values.shape == logits.shape[:1]
        assert torch.isfinite(logits).all() and torch.isfinite(values).all()
        chunk_logits.append(logits.reshape(batch, hi - lo + extra, -1)[:, :hi - lo])
        chunk_values.append(values.reshape(batch, hi - lo + extra)[:, :hi - lo])
    chunk_logits, chunk_values = torch.cat(chunk_logits, 1), torch.cat(chunk_values, 1)

    tol = dict(atol=1e-4, rtol=1e-4)
    for b, length in enumerate(seq_lens.tolist()):
        torch.testing.assert_close(chunk_logits[b, :length], step_logits[b, :length], **tol)
        torch.testing.assert_close(chunk_values[b, :length], step_values[b, :length], **tol)
        for got, want in zip(carried, step_states[length - 1]):   # state after `length` steps
            torch.testing.assert_close(got[b], want[b], **tol)
    assert torch.isfinite(chunk_logits).all() and torch.isfinite(chunk_values).all()


def test_unknown_custom_model_config_key_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"hiden_size.*valid keys.*hidden_size"):
        build_model("gru", register_old_stack_models()["gru"], hiden_size=4)
    with pytest.raises(ValueError, match=r"timesteps_from_obs.*valid keys"):   # not supported
        build_model("gru", register_old_stack_models()["gru"], timesteps_from_obs=True)


# a fused RNN, a memory with a 4-d state (B, H, N/2, 2) and the memoryless (non-recurrent) path
@pytest.mark.parametrize("name", ["gru", "s4d", "mlp"])
def test_one_old_stack_ppo_iteration(ray_session, name):
    from ray import tune
    from ray.rllib.algorithms.ppo import PPOConfig

    tune.register_env(ENV, lambda cfg: envs.make_env(ENV, cfg))
    custom = register_old_stack_models()[name]
    config = (PPOConfig()
              .api_stack(enable_rl_module_and_learner=False,
                         enable_env_runner_and_connector_v2=False)
              .environment(ENV)
              .framework("torch")
              .env_runners(num_env_runners=0, num_envs_per_env_runner=2,
                           rollout_fragment_length="auto", batch_mode="complete_episodes")
              .training(train_batch_size=128, minibatch_size=64, num_epochs=2,
                        model={"custom_model": custom, "max_seq_len": 16,
                               "custom_model_config": {**SIZES,
                                                       "memory_kwargs": small_memory_kwargs(name)}})
              .debugging(seed=0))
    algo = config.build_algo()
    try:
        model = algo.get_policy().model
        before = [p.detach().clone() for p in model.parameters()]
        result = algo.train()
        assert result["num_env_steps_sampled"] >= 128
        stats = result["info"]["learner"]["default_policy"]["learner_stats"]
        assert torch.isfinite(torch.tensor(stats["total_loss"]))
        changed = [not torch.equal(a, b) for a, b in zip(before, model.parameters())]
        assert all(changed), "every parameter (trunk, memory, heads) must receive an update"
    finally:
        algo.stop()


def test_popgym_diffnc_trains_one_iteration_on_the_old_stack(ray_session):
    """POPGym's DiffNC (the `dnc` package of the baselines extra) as a study peer."""
    from experiments.rllib.ppo import algorithm_config
    config = algorithm_config({"name": "popgym:DiffNC", "kwargs": {}, "stack": "old"}, ENV,
                              seed=0, num_envs_per_env_runner=2,    # DiffNC: hidden >= 16
                              sizes={"pre_size": 16, "hidden_size": 16, "head_size": 16},
                              ppo=dict(train_batch_size_per_learner=128, minibatch_size=64,
                                       num_epochs=1, max_seq_len=16))
    algo = config.build_algo()
    try:
        result = algo.train()
        stats = result["info"]["learner"]["default_policy"]["learner_stats"]
        assert result["num_env_steps_sampled"] >= 128
        assert torch.isfinite(torch.tensor(stats["total_loss"]))
    finally:
        algo.stop()
