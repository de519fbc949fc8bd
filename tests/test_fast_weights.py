"""fwp and linear_attention: parallel == sequential (values and gradients), the equations written
out, equality with POPGym 1.0.7's own models (weights copied), the normalizer, bad keywords.

The interface laws (split/step/resets/lengths/gradients/dtype) run for both in tests/test_laws.py.
"""

import inspect

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from popgym.baselines.models.linear_attention import LinearAttentionBlock
from popgym.baselines.ray_models import ray_fwp, ray_linear_attention

import memory_models
from memory_models import FastWeightProgrammer, LinearAttention
from memory_models.fast_weights import cumulative_max, cumulative_max_sequential
from memory_models.ops.running_sum import cumulative_sum, cumulative_sum_sequential
pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
EXACT = dict(atol=1e-12, rtol=1e-10)     # float64, same maths in a different order

CONFIGS = [
    (FastWeightProgrammer, {}),
    (FastWeightProgrammer, {"aggregator": "max"}),
    (FastWeightProgrammer, {"sum_normalization": False, "position_embedding": False}),
    (LinearAttention, {}),
    (LinearAttention, {"S_aggregator": "max", "Z_aggregator": "max"}),
    (LinearAttention, {"Z_aggregator": "max", "position_embedding": False}),
]
CONFIG_IDS = [f"{cls.registry_name}-{kw}" for cls, kw in CONFIGS]


def random_state(cell, batch, generator):
    state = cell.initial_state(batch, dtype=F64)
    state = {k: torch.randn(v.shape, generator=generator, dtype=F64) for k, v in state.items()}
    state["t"] = torch.randint(0, 30, (batch, 1), generator=generator).to(F64)
    return state


# ---------------------------------------------------------------------- the running aggregates
@pytest.mark.parametrize("parallel, sequential", [(cumulative_sum, cumulative_sum_sequential),
                                                  (cumulative_max, cumulative_max_sequential)])
def test_running_aggregates_equal_their_loops(parallel, sequential):
    """Resets at t = 0 and inside rows, lengths 0 < ℓ < T and T, a carried state; values and
    gradients (float64, 1e-12)."""
    g = torch.Generator().manual_seed(0)
    values = torch.randn(4, 11, 3, 2, generator=g, dtype=F64, requires_grad=True)
    initial = torch.randn(4, 3, 2, generator=g, dtype=F64, requires_grad=True)
    resets = torch.zeros(4, 11, dtype=torch.bool)
    resets[0, 0] = resets[0, 6] = resets[1, 3] = resets[2, 9] = resets[3, 2] = True
    lengths = torch.tensor([11, 7, 0, 5])
    weights = torch.randn(4, 11, 3, 2, generator=g, dtype=F64)
    results = []
    for fn in (parallel, sequential):
        states = fn(values, initial, resets, lengths)
        grads = torch.autograd.grad((states * weights).sum(), (values, initial))
        results.append((states, *grads))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, **EXACT)
    states = results[0][0]
    torch.testing.assert_close(states[2, -1], initial[2])                    # length 0
    torch.testing.assert_close(states[1, -1], states[1, 6])                  # holds after ℓ


def test_cumulative_max_restarts_from_zero_and_holds_past_the_length():
    values = torch.tensor([[[-1.0], [-3.0], [2.0], [-5.0], [9.0]]], dtype=F64)
    initial = torch.tensor([[-2.0]], dtype=F64)
    resets = torch.tensor([[False, False, False, True, False]])
    states = cumulative_max(values, initial, resets, torch.tensor([4]))
    assert states[0, :, 0].tolist() == [-1.0, -1.0, 2.0, 0.0, 0.0]


# ---------------------------------------------------------------------- the cells
@pytest.mark.parametrize("steps", [12, 150])
@pytest.mark.parametrize("impl", ["parallel", "cumulative"])
@pytest.mark.parametrize("cls, kwargs", CONFIGS, ids=CONFIG_IDS)
def test_parallel_equals_sequential_values_and_gradients(cls, kwargs, impl, steps):
    """scan_impl parallel (the chunked read for sums: ops.running_sum, 64-step chunks) and
    cumulative (every S_t by the running sum) vs sequential, float64: outputs, final state and
    the gradients of the input, the carried state and every parameter, with resets inside rows
    and chunks, at a chunk's first and last step, and lengths (0 < ℓ < T, mid-chunk, T)."""
    torch.manual_seed(0)
    fast = cls(5, 9, **kwargs, scan_impl=impl).double()
    sequential = cls(5, 9, **kwargs, scan_impl="sequential").double()
    sequential.load_state_dict(fast.state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, steps, 5, generator=g, dtype=F64, requires_grad=True)
    state = {k: v.requires_grad_() for k, v in random_state(fast, 4, g).items()}
    resets = torch.zeros(4, steps, dtype=torch.bool)
    resets[0, 5] = resets[1, 0] = resets[1, 8] = resets[3, steps - 1] = True
    lengths = torch.tensor([steps, 9, 3, steps])
    if steps > 128:
        resets[0, 63] = resets[0, 64] = resets[2, 100] = resets[3, 70] = True
        lengths = torch.tensor([steps, 70, 3, 128])
    results = []
    for cell in (fast, sequential):
        y, final = cell.scan(x, state, resets=resets, lengths=lengths)
        loss = y.square().sum() + sum(v.square().sum() for v in final.values())
        leaves = [x, *state.values(), *cell.parameters()]
        results.append((y, *final.values(), *torch.autograd.grad(loss, leaves)))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, **EXACT)


def fwp_written_out(cell, x, state):
    """The fwp equations, one step at a time, einsum as POPGym writes them."""
    S, t, outputs = state["S"], state["t"], []
    for x_t in x.unbind(1):
        e = cell._embed(x_t, t[:, 0])
        n = F.layer_norm(e, (cell.input_size,), cell.norm.weight, cell.norm.bias)
        k, q, v = torch.relu(n @ cell.key.weight.T), torch.relu(n @ cell.query.weight.T), \
            n @ cell.value.weight.T
        if cell.sum_normalization:
            k, q = k / (1e-5 + k.sum(-1, keepdim=True)), q / (1e-5 + q.sum(-1, keepdim=True))
        S = S + torch.einsum("bi, bj -> bij", v, k)
        o = torch.einsum("bij, bj -> bi", S, q)
        outputs.append(cell.unmap(cell.ff(o) + cell.shortcut(n)))
        t = t + 1
    return torch.stack(outputs, 1), {"S": S, "t": t}


def linear_attention_written_out(cell, x, state, normalizer="inner"):
    """The linear_attention equations, one step at a time; normalizer "inner": q·z (the
    paper's, popgym 1.0.7's), "outer": (Σq)(Σz) (popgym before PR #36)."""
    S, z, t, outputs = state["S"], state["z"], state["t"], []
    for x_t in x.unbind(1):
        n = F.layer_norm(cell._embed(x_t, t[:, 0]), (cell.input_size,), cell.norm.weight,
                         cell.norm.bias)
        k, q, v = F.elu(n @ cell.key.weight.T) + 1, F.elu(n @ cell.query.weight.T) + 1, \
            n @ cell.value.weight.T
        S, z = S + torch.einsum("bi, bl -> bil", k, v), z + k
        numerator = torch.einsum("bi, bil -> bl", q, S)
        if normalizer == "inner":
            denominator = torch.einsum("bi, bi -> b", q, z)
        else:
            denominator = torch.einsum("bi, bl -> b", q, z)
        o = numerator / (denominator[:, None] + 1e-5)
        outputs.append(cell.unmap(cell.ff(o) + cell.shortcut(n)))
        t = t + 1
    return torch.stack(outputs, 1), {"S": S, "z": z, "t": t}


@pytest.mark.parametrize("cls, written_out", [(FastWeightProgrammer, fwp_written_out),
                                              (LinearAttention, linear_attention_written_out)])
def test_scan_equals_the_equations_written_out(cls, written_out):
    torch.manual_seed(0)
    cell = cls(6, 16).double()
    g = torch.Generator().manual_seed(2)
    x, state = torch.randn(3, 10, 6, generator=g, dtype=F64), random_state(cell, 3, g)
    y, final = cell.scan(x, state)
    y_ref, final_ref = written_out(cell, x, state)
    torch.testing.assert_close(y, y_ref, **EXACT)
    for key in final_ref:
        torch.testing.assert_close(final[key], final_ref[key], **EXACT)


def test_normalizer_is_the_inner_product_as_popgym_1_0_7_ships():
    """The only difference between the two normalizers: ours equals the inner-product form
    written out, differs from the pre-PR-#36 outer-product form, and the installed popgym
    (1.0.7) computes the inner product."""
    assert 'torch.einsum("bti, bti -> bt", Q, Z)' in inspect.getsource(LinearAttentionBlock)
    torch.manual_seed(0)
    cell = LinearAttention(6, 16).double()
    g = torch.Generator().manual_seed(3)
    x, state = torch.randn(3, 10, 6, generator=g, dtype=F64), random_state(cell, 3, g)
    y, _ = cell.scan(x, state)
    torch.testing.assert_close(y, linear_attention_written_out(cell, x, state, "inner")[0],
                               **EXACT)
    outer, _ = linear_attention_written_out(cell, x, state, "outer")
    assert (y - outer).abs().max() > 1e-3


# ---------------------------------------------------------------------- POPGym's own models
POPGYM = {FastWeightProgrammer: ray_fwp.FastWeightProgrammer,
          LinearAttention: ray_linear_attention.LinearAttention}
POPGYM_CONFIGS = [
    (FastWeightProgrammer, {}, {}),
    (FastWeightProgrammer, {"aggregator": "max", "sum_normalization": False},
     {"aggregator": "max", "sum_normalization": False}),
    (LinearAttention, {}, {}),
    (LinearAttention, {"S_aggregator": "max", "Z_aggregator": "max"},
     {"S_aggregator": "max", "Z_aggregator": "max"}),
]


def popgym_model(cls, input_size, hidden_size, max_len, config):
    """POPGym's ray model with sizes as its ppo.py sets them (preprocessor_output_size = the
    memory's input, hidden_size = its output)."""
    obs_space = gym.spaces.Box(-1.0, 1.0, (input_size,), np.float32)
    custom = {"preprocessor_input_size": input_size, "preprocessor_output_size": input_size,
              "hidden_size": hidden_size, **config}
    return POPGYM[cls](obs_space, gym.spaces.Discrete(2), 2,
                       {"max_seq_len": max_len, "custom_model_config": custom}, "popgym")


def copy_into_popgym(mine, theirs):
    """Our parameters into POPGym's model: the block's under `core.`, the embedding strength
    and unmap at the top; their sine table becomes ours (in the model's dtype)."""
    targets = theirs.state_dict()
    with torch.no_grad():
        for name, value in mine.state_dict().items():
            if name == "embedding.strength":
                targets["embedding_strength"].copy_(value)
            elif name.startswith("unmap."):
                targets[name].copy_(value)
            else:
                targets[f"core.{name}"].copy_(value)
        positions = torch.arange(theirs.max_seq_len, dtype=targets["embedding.weight"].dtype)
        targets["embedding.weight"].copy_(mine.embedding.encode(positions))


def popgym_memory(theirs, x, state, t_starts):
    """BaseModel.forward's memory part: apply_embedding, then forward_memory."""
    z = theirs.apply_embedding(x, t_starts.long())
    seq_lens = torch.full((x.shape[0],), x.shape[1])
    return theirs.forward_memory(z, [s[:, None] for s in state], t_starts.long(), seq_lens)


@pytest.mark.parametrize("cls, kwargs, config", POPGYM_CONFIGS,
                         ids=[f"{c.registry_name}-{k}" for c, k, _ in POPGYM_CONFIGS])
@pytest.mark.parametrize("strength", [0.3, 1.7])              # 1.7: both clamp it to 1
def test_equals_popgym_model_from_carried_state(cls, kwargs, config, strength):
    """float64, weights copied, the same input, carried state and episode step: outputs and
    states equal POPGym's within 1e-12 (the same maths, summed in another order)."""
    torch.manual_seed(0)
    mine = cls(6, 16, max_len=64, **kwargs).double()
    with torch.no_grad():
        mine.embedding.strength.fill_(strength)
    theirs = popgym_model(cls, 6, 16, 64, config).double()
    assert theirs.h == mine.key_size
    copy_into_popgym(mine, theirs)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 9, 6, generator=g, dtype=F64)
    state = random_state(mine, 3, g)
    memories = [state[k] for k in mine.memory_shapes()]
    y_ref, states_ref = popgym_memory(theirs, x.clone(), memories, state["t"][:, 0])
    y, final = mine.scan(x, state)
    torch.testing.assert_close(y, y_ref, **EXACT)
    for key, ref in zip(mine.memory_shapes(), states_ref):
        torch.testing.assert_close(final[key], ref[:, 0], **EXACT)
    torch.testing.assert_close(final["t"], state["t"] + 9)
    assert mine.embedding.strength.item() == theirs.embedding_strength.item() == min(strength, 1)


@pytest.mark.parametrize("cls", [FastWeightProgrammer, LinearAttention])
def test_equals_popgym_model_in_float32_with_its_own_sine_table(cls):
    """float32, POPGym's own (float32) sine table kept, from the zero state at step 0."""
    torch.manual_seed(0)
    mine = cls(8, 64, max_len=128)
    theirs = popgym_model(cls, 8, 64, 128, {})
    table = theirs.embedding.weight.detach().clone()
    copy_into_popgym(mine, theirs)
    with torch.no_grad():
        theirs.embedding.weight.copy_(table)
    x = torch.randn(2, 40, 8)
    state = mine.initial_state(2)
    y_ref, states_ref = popgym_memory(theirs, x.clone(), [state[k] for k in mine.memory_shapes()],
                                      torch.zeros(2))
    y, final = mine.scan(x, state)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-4)
    for key, ref in zip(mine.memory_shapes(), states_ref):
        torch.testing.assert_close(final[key], ref[:, 0], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------- keywords and sizes
def test_default_key_sizes_are_popgyms():
    assert memory_models.make("fwp", input_size=4, hidden_size=256).key_size == 16
    assert memory_models.make("linear_attention", input_size=4, hidden_size=256).key_size == 15
    assert memory_models.make("linear_attention", input_size=4, hidden_size=3).key_size == 1
    assert memory_models.make("fwp", input_size=4, hidden_size=6, key_size=5).key_size == 5


@pytest.mark.parametrize("name", ["fwp", "linear_attention"])
def test_integration_timesteps_are_ignored(name):
    cell = memory_models.make(name, input_size=4, hidden_size=9)
    x, state = torch.randn(2, 7, 4), cell.initial_state(2)
    y, final = cell.scan(x, state)
    y_dt, final_dt = cell.scan(x, state, integration_timesteps=torch.rand(2, 7) * 5)
    torch.testing.assert_close(y_dt, y, rtol=0, atol=0)
    torch.testing.assert_close(final_dt, final, rtol=0, atol=0)


@pytest.mark.parametrize("name, kwargs, match", [
    ("fwp", {"aggregator": "mean"}, r"aggregator must be one of \('sum', 'max'\)"),
    ("fwp", {"sum_normalization": 1}, "sum_normalization must be True or False"),
    ("fwp", {"key_size": 0}, "key_size must be a positive int"),
    ("fwp", {"position_embedding": "sine"}, "position_embedding must be a bool"),
    ("fwp", {"max_len": 0}, "max_len must be a positive int"),
    ("linear_attention", {"S_aggregator": "min"}, r"S_aggregator must be one of \('sum', 'max'\)"),
    ("linear_attention", {"Z_aggregator": None}, r"Z_aggregator must be one of \('sum', 'max'\)"),
    ("linear_attention", {"key_size": 2.0}, "key_size must be a positive int"),
])
def test_bad_keywords_name_the_keyword_and_allowed_values(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        memory_models.make(name, input_size=4, hidden_size=9, **kwargs)


def test_linear_attention_hidden_size_too_small_for_popgyms_key_size():
    with pytest.raises(ValueError, match=r"hidden_size must be an int >= 3 .*round\(sqrt"):
        memory_models.make("linear_attention", input_size=4, hidden_size=2)
    memory_models.make("linear_attention", input_size=4, hidden_size=2, key_size=2)


@pytest.mark.parametrize("name", ["fwp", "linear_attention"])
def test_scan_impl_is_not_a_model_keyword(name):
    assert "scan_impl" not in memory_models.keywords(name)
    with pytest.raises(ValueError, match="scan_impl"):
        memory_models.get(name)(4, 9, scan_impl="fast")
    with pytest.raises(memory_models.UnknownKeywordError):
        memory_models.make(name, input_size=4, hidden_size=9, scan_impl="sequential")
