"""MemoryRLModule without Ray running: layouts, padding, state, memory use, action spaces,
errors."""

import gymnasium
import numpy as np
import pytest
import torch
from torch import Tensor
from ray.rllib.core.columns import Columns

import envs
import memory_models
import small_sizes
from experiments.rllib.rl_module import (MODEL_CONFIG_DEFAULTS, MemoryRLModule,
                                         memory_module_spec)

SIZES = dict(pre_size=8, hidden_size=8, head_size=8, max_seq_len=12)
MODELS = memory_models.available()


def small_memory_kwargs(name):
    return small_sizes.small_memory_kwargs(name, memory_size=8, state_size=8, theta=8.0,
                                           seq_len=SIZES["max_seq_len"])


def build(name, env_id="popgym-RepeatPreviousEasy-v0", seed=0, **config):
    torch.manual_seed(seed)
    env = envs.make_env(env_id)
    spec = memory_module_spec(name, small_memory_kwargs(name), **{**SIZES, **config})
    spec.observation_space, spec.action_space = env.observation_space, env.action_space
    return spec.build(), env


def batched_state(module, batch):
    return {k: torch.as_tensor(v)[None].repeat(batch, *([1] * v.ndim))
            for k, v in module.get_initial_state().items()}


def train_batch(module, obs, seq_lens):
    batch = {Columns.OBS: obs, Columns.SEQ_LENS: torch.as_tensor(seq_lens)}
    if module.is_stateful():
        batch[Columns.STATE_IN] = batched_state(module, obs.shape[0])
    return batch


def test_spec_has_every_default_and_architecture_follows_popgym():
    module, env = build("gru")
    assert module.model_config == {**MODEL_CONFIG_DEFAULTS, "memory": "gru", "memory_kwargs": {},
                                   **SIZES}
    assert isinstance(module, MemoryRLModule)
    pre = module.pre
    assert pre[0].in_features == env.observation_space.shape[0] and pre[0].out_features == 8
    assert isinstance(pre[1], torch.nn.LayerNorm) and not pre[1].elementwise_affine
    assert module.memory.input_size == 8 and module.memory.hidden_size == 8
    assert module.actor[-1].out_features == env.action_space.n
    assert module.critic[-1].out_features == 1
    assert module.actor[-1].weight.std() < 0.05            # final layers N(0, 0.01)
    w = module.actor[0].weight                             # orthogonal rows
    torch.testing.assert_close(w @ w.T, torch.eye(w.shape[0]), atol=1e-5, rtol=0)
    assert memory_module_spec("gru").model_config["max_seq_len"] == 1024


@pytest.mark.parametrize("name", MODELS)
def test_initial_state_has_no_batch_dim_and_stays_floating(name):
    module, _ = build(name)
    state = module.get_initial_state()
    reference = module.memory.initial_state(3)
    assert set(state) == set(reference)
    for k, v in state.items():
        assert tuple(v.shape) == tuple(reference[k].shape[1:])
        assert np.issubdtype(v.dtype, np.floating)
    assert module.is_stateful() == bool(reference)
    if name == "mlp":
        assert state == {} and not module.is_stateful()


@pytest.mark.parametrize("timesteps_from_obs", [False, True])
@pytest.mark.parametrize("name", MODELS)
def test_training_rows_equal_step_by_step_rollout_and_padding_is_ignored(name, timesteps_from_obs):
    """A (B, T) learner batch with per-row lengths gives the env runner's (B, 1) step outputs
    on valid steps, whatever is in the padding; forward_inference on it (not the learner's
    forward_train, whose loss never reads it) STATE_OUT after each row's last step; with
    `timesteps_from_obs` too, the last feature being Δt in {0, ..., 4} (anything in padding)."""
    module, env = build(name, timesteps_from_obs=timesteps_from_obs)
    B, T = 3, SIZES["max_seq_len"]
    lengths = [T, 5, 1]
    obs = torch.randn(B, T, env.observation_space.shape[0])
    if timesteps_from_obs:
        obs[..., -1] = torch.randint(0, 5, (B, T)).float()
    padded = obs.clone()
    for b, n in enumerate(lengths):
        padded[b, n:] = 1e3 * torch.randn(T - n, obs.shape[-1])
    if not module.is_stateful():          # RLlib sends (N, D) to a stateless module
        flat = module.forward_train({Columns.OBS: obs.reshape(B * T, -1)})
        by_row = flat[Columns.ACTION_DIST_INPUTS].reshape(B, T, -1)
        steps = module.forward_inference({Columns.OBS: obs[:, 3]})[Columns.ACTION_DIST_INPUTS]
        torch.testing.assert_close(by_row[:, 3], steps)
        return
    with torch.no_grad():
        out = module.forward_train(train_batch(module, padded, lengths))
        values = module.compute_values(train_batch(module, padded, lengths))
        state_out = module.forward_inference(train_batch(module, padded, lengths))[
            Columns.STATE_OUT]
        state = batched_state(module, B)
        step_logits, step_states = [], []
        for t in range(T):
            step = module.forward_inference({Columns.OBS: obs[:, t:t + 1],
                                             Columns.STATE_IN: state})
            state = step[Columns.STATE_OUT]
            step_logits.append(step[Columns.ACTION_DIST_INPUTS][:, 0])
            step_states.append(state)
    logits = out[Columns.ACTION_DIST_INPUTS]
    assert Columns.STATE_OUT not in out
    assert logits.shape == (B, T, env.action_space.n) and values.shape == (B, T)
    assert torch.isfinite(logits).all() and torch.isfinite(values).all()
    for b, n in enumerate(lengths):
        torch.testing.assert_close(logits[b, :n], torch.stack(step_logits, 1)[b, :n],
                                   atol=2e-4, rtol=2e-4)
        for k, v in state_out.items():
            torch.testing.assert_close(v[b], step_states[n - 1][k][b], atol=2e-4, rtol=2e-4)


def test_timesteps_from_obs_gives_the_memory_the_last_feature_as_integration_timesteps():
    """event_ssm in the module equals the memory run by hand on pre(obs) with Δt = obs[..., -1]
    (1 past the lengths), and differs from the module that ignores Δt."""
    env_id = "popgym-RepeatPreviousEasy-EventTime-v0"
    module, env = build("event_ssm", env_id, timesteps_from_obs=True)
    synchronous, _ = build("event_ssm", env_id)
    synchronous.load_state_dict(module.state_dict())
    obs = torch.stack([torch.as_tensor(_rollout(env, seed, steps=6)) for seed in (0, 1)])
    assert set(obs[..., -1].unique().tolist()) - {1.0}          # some Δt != 1
    lengths = torch.tensor([6, 4])
    with torch.no_grad():
        features = module.forward_train(train_batch(module, obs, lengths))[Columns.EMBEDDINGS]
        x = module.pre(obs)
        timesteps = torch.where(torch.arange(6) < lengths[:, None], obs[..., -1], 1.0)
        by_hand, _ = module.memory.scan(x, module.memory.initial_state(2),
                                        integration_timesteps=timesteps, lengths=lengths)
        ignored = synchronous.forward_train(train_batch(module, obs, lengths))
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(features[b, :n], by_hand[b, :n])
        assert (features[b, :n] - ignored[Columns.EMBEDDINGS][b, :n]).abs().max() > 1e-6
    with pytest.raises(ValueError, match=r"\['timesteps_from_obs'\] must be a bool, got 'yes'"):
        memory_module_spec("event_ssm", timesteps_from_obs="yes")


def _rollout(env, seed, steps):
    """(steps, obs) observations of `env` from reset(seed) under random actions."""
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    rows = [obs]
    for _ in range(steps - 1):
        rows.append(env.step(env.action_space.sample())[0])
    return np.stack(rows)


def test_padding_past_the_longest_row_is_cut_and_restored_as_zeros():
    module, env = build("lstm")
    obs = torch.randn(2, SIZES["max_seq_len"], env.observation_space.shape[0])
    batch = train_batch(module, obs, [5, 3])
    out = module.forward_train(batch)
    logits = out[Columns.ACTION_DIST_INPUTS]
    values = module.compute_values(batch, out[Columns.EMBEDDINGS])
    assert logits.shape == (2, SIZES["max_seq_len"], env.action_space.n)
    assert values.shape == (2, SIZES["max_seq_len"])
    assert out[Columns.EMBEDDINGS].shape[1] == 5                # the memory ran 5 steps, not 12
    assert (logits[:, 5:] == 0).all() and (values[:, 5:] == 0).all()
    torch.testing.assert_close(values, module.compute_values(batch))


def test_state_in_of_another_dtype_is_cast_to_the_memory_dtype():
    module, env = build("gru")
    obs = torch.randn(2, 1, env.observation_space.shape[0])
    state = {k: v.to(torch.int32) for k, v in batched_state(module, 2).items()}
    out = module.forward_inference({Columns.OBS: obs, Columns.STATE_IN: state})
    assert all(v.dtype == torch.float32 for v in out[Columns.STATE_OUT].values())


def steps_back(name: str) -> int | None:
    """How far back a memory's output at t sees its input: 0 for the memoryless (pos_mlp
    sees the step's position only), stack_size - 1 or window - 1 for the window cells, None:
    unbounded."""
    if name in ("mlp", "pos_mlp"):
        return 0
    if name in ("frame_stack", "frame_conv"):
        return small_memory_kwargs(name)["stack_size"] - 1
    if name in ("transformer", "gtrxl"):          # attention over a window of W steps
        return small_memory_kwargs(name)["window"] - 1
    return None


@pytest.mark.parametrize("name", MODELS)
def test_memory_is_used_perturbing_t0_changes_t5_only_with_memory(name):
    """The output at t = 5 changes when the input at t = 5 - k changes, for every k the memory
    reaches, and stays exactly the same for the k it does not."""
    module, env = build(name)
    obs = torch.randn(2, SIZES["max_seq_len"], env.observation_space.shape[0])

    def output_at_5(perturb_at: int) -> Tensor:
        perturbed = obs.clone()
        perturbed[:, perturb_at] += 3.0
        with torch.no_grad():
            if not module.is_stateful():
                return module.forward_train({Columns.OBS: perturbed[:, 5]})[
                    Columns.ACTION_DIST_INPUTS]
            out = module.forward_train(train_batch(module, perturbed, [6, 6]))
            return out[Columns.ACTION_DIST_INPUTS][:, 5]

    reach = steps_back(name)
    unperturbed = output_at_5(perturb_at=SIZES["max_seq_len"] - 1)      # after t = 5: no effect
    for k in range(6):
        changed = (output_at_5(perturb_at=5 - k) - unperturbed).abs().max()
        if reach is None or k <= reach:      # an input out of reach changes nothing at all, so
            # any change is the memory's (mamba's reach is faint at init: Δ ~ 0.001-0.1)
            assert changed > 0, f"{name}: output at t=5 ignores the input at t={5 - k}"
        else:
            assert changed == 0, f"{name}: output at t=5 sees the input at t={5 - k}"


@pytest.mark.parametrize("env_id, space", [
    ("popgym-RepeatPreviousEasy-v0", gymnasium.spaces.Discrete),
    ("popgym-BattleshipEasy-v0", gymnasium.spaces.MultiDiscrete),
    ("popgym-PositionOnlyPendulumEasy-v0", gymnasium.spaces.Box),
])
def test_action_spaces_sample_logp_and_backprop(env_id, space):
    module, env = build("gru", env_id)
    assert isinstance(env.action_space, space)
    obs = torch.randn(2, 4, env.observation_space.shape[0])
    out = module.forward_train(train_batch(module, obs, [4, 2]))
    dist_cls = module.get_train_action_dist_cls()
    inputs = out[Columns.ACTION_DIST_INPUTS]
    assert inputs.shape[-1] == dist_cls.required_input_dim(env.action_space)
    dist = dist_cls.from_logits(inputs)
    actions = dist.sample()
    assert env.action_space.contains(np.asarray(actions[0, 0], dtype=env.action_space.dtype)) \
        or space is gymnasium.spaces.Box            # Gaussian samples are clipped by RLlib
    loss = -dist.logp(actions).mean() + module.compute_values(
        train_batch(module, obs, [4, 2]), out[Columns.EMBEDDINGS]).pow(2).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in module.parameters() if p.requires_grad)


def test_bad_memory_names_and_model_config_keys_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown memory model 'gur'.*Did you mean 'gru'"):
        memory_module_spec("gur")
    with pytest.raises(ValueError, match=r"unknown model_config key 'hiden_size'.*valid keys.*"
                                         r"hidden_size"):
        memory_module_spec("gru", hiden_size=8)
    with pytest.raises(ValueError, match=r"RLlib default-model setting.*valid keys"):
        memory_module_spec("gru", fcnet_hiddens=[64])
    with pytest.raises(ValueError, match=r"unknown memory_kwargs \['memory_size'\]"):
        memory_module_spec("gru", {"memory_size": 8})
    with pytest.raises(ValueError, match=r"'max_seq_len'.*positive int"):
        memory_module_spec("gru", max_seq_len=0)
    env = envs.make_env("popgym-RepeatPreviousEasy-v0")
    with pytest.raises(ValueError, match="needs 'memory'"):
        MemoryRLModule(observation_space=env.observation_space, action_space=env.action_space,
                       model_config={"hidden_size": 8})
