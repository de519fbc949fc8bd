"""FFM: the paper's equations written out, the original's (proroklab/ffm standalone) chunked
cumulative-sum maths re-derived, parallel == sequential, elapsed time, long runs, defaults as
the paper's RLlib model, bad arguments."""

import math
from functools import partial

import pytest
import torch

import memory_models
from memory_models import FFM
from memory_models.ffm import DECAY_LIMIT
from scan_cell_checks import (assert_elapsed_time_is_decay_power,
                              assert_long_float32_run_matches_float64,
                              assert_parallel_equals_sequential, assert_scan_equals_loop,
                              random_state)
from small_sizes import seeded_cell

SMALL = dict(input_size=3, hidden_size=5, memory_size=4, context_size=3)

pytestmark = pytest.mark.usefixtures("one_thread")

build = partial(seeded_cell, FFM, **SMALL)         # build(dtype=float64, seed=0, **overrides)


def split_pre(cell, x_t):
    """The original's split of its one linear layer: ŷ (m), thru (H), gates σ(·) (m + H)."""
    m, H = cell.memory_size, cell.hidden_size
    pre = x_t @ cell.pre.weight.T + cell.pre.bias
    y_hat, thru, gates = pre[..., :m], pre[..., m:m + H], torch.sigmoid(pre[..., m + H:])
    return y_hat, thru, gates[..., :m], gates[..., m:]


def output(cell, S, thru, g_out):
    """z = LayerNorm(Mix [Re S, Im S]) (no affine, eps 1e-5); y = z g_out + thru (1 − g_out)."""
    features = torch.stack([S.real, S.imag], dim=-1).reshape(*S.shape[:-2], -1)
    z = features @ cell.mix.weight.T + cell.mix.bias
    mean = z.mean(-1, keepdim=True)
    var = (z - mean).square().mean(-1, keepdim=True)
    z = (z - mean) / torch.sqrt(var + 1e-5)
    return z * g_out + thru * (1 - g_out)


def written_out(cell, x, dt, resets, state):
    """The module docstring's equations as a loop over t, from state["S"] (B, m, c, 2)."""
    S = torch.view_as_complex(state["S"])
    alpha = cell.alpha.clamp(-DECAY_LIMIT, -1e-8)
    outputs = []
    for t in range(x.shape[1]):
        y_hat, thru, g_in, g_out = split_pre(cell, x[:, t])
        gamma = torch.exp((alpha[:, None] + 1j * cell.omega[None, :]) * dt[:, t, None, None])
        S = torch.where(resets[:, t, None, None], torch.zeros_like(S), S)
        S = gamma * S + (y_hat * g_in)[:, :, None] * torch.ones(cell.context_size)
        outputs.append(output(cell, S, thru, g_out))
    return torch.stack(outputs, 1), {"S": torch.view_as_real(S)}


def original_chunk(cell, x, S0):
    """proroklab/ffm standalone FFM.forward on one chunk (T < its max_len), re-derived: with
    γ^t = exp((α + iω) t), the states are
        z_t = Σ_{i≤t} γ^{T-1-i} x_i (a cumulative sum),  S_t = γ^{-(T-1-t)} z_t + γ^{t+1} S_{-1},
    then the output as its forward does. No resets (the original has none), Δt ≡ 1."""
    steps = x.shape[1]
    alpha = cell.alpha.clamp(-DECAY_LIMIT, -1e-8)
    log_gamma = alpha[:, None] + 1j * cell.omega[None, :]                # (m, c)

    def gamma_to(powers):                                        # (T,) -> (T, m, c)
        return torch.exp(log_gamma * powers.to(log_gamma.dtype)[:, None, None])

    inner = torch.arange(steps - 1, -1, -1, dtype=torch.float64)        # T-1, ..., 0
    y_hat, thru, g_in, g_out = split_pre(cell, x)
    gated = (y_hat * g_in)[..., None]                                    # (B, T, m, 1)
    z = torch.cumsum(gamma_to(inner) * gated, dim=1)
    S = gamma_to(-inner) * z + S0[:, None] * gamma_to(torch.arange(1, steps + 1.0))
    return output(cell, S, thru, g_out), S


def test_scan_equals_the_papers_equations_written_out():
    cell = build()
    assert_scan_equals_loop(cell, lambda *args: written_out(cell, *args), steps=9,
                            reset_at=(1, 4))


def test_gradients_equal_the_papers_equations_written_out_and_no_grad_the_same_values():
    """Training computes the input layer as one matmul per part (ŷ, thru, gates), a rollout
    or value pass (no autograd) as one: the same values, and every gradient (input, state,
    parameters) equal to autograd through the written-out loop, float64."""
    cell = build()
    x = torch.randn(2, 9, 3, dtype=torch.float64, requires_grad=True)
    dt = torch.rand(2, 9, dtype=torch.float64) * 2
    resets = torch.zeros(2, 9, dtype=torch.bool)
    resets[1, 4] = True
    state = {"S": torch.randn(2, 4, 3, 2, dtype=torch.float64, requires_grad=True)}
    weight = torch.randn(2, 9, 5, dtype=torch.float64)
    grads, values = [], []
    for run in (lambda: cell.scan(x, state, resets=resets, integration_timesteps=dt),
                lambda: written_out(cell, x, dt, resets, state)):
        y, final = run()
        loss = (y * weight).sum() + final["S"].square().sum()
        grads.append(torch.autograd.grad(loss, [x, state["S"], *cell.parameters()]))
        values.append(y.detach())
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        y, _ = cell.scan(x, state, resets=resets, integration_timesteps=dt)
    torch.testing.assert_close(y, values[0], rtol=1e-12, atol=1e-12)


def test_scan_equals_the_originals_chunked_cumulative_sum():
    cell = build()
    with torch.no_grad():                              # spread the decays (init is slow-ish)
        cell.alpha.copy_(torch.tensor([-0.6, -0.2, -0.05, -0.004]))
    x = torch.randn(2, 60, 3, dtype=torch.float64)
    state = random_state(cell, 2, torch.float64)
    y, final = cell.scan(x, state)
    y_ref, S_ref = original_chunk(cell, x, torch.view_as_complex(state["S"]))
    torch.testing.assert_close(y, y_ref, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(final["S"], torch.view_as_real(S_ref[:, -1]), atol=1e-9,
                               rtol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_parallel_scan_equals_sequential_loop(dtype):
    assert_parallel_equals_sequential(FFM, dtype, **SMALL)


def test_elapsed_time_is_a_power_of_gamma():
    """Δt = 1 is the synchronous FFM; Δt = 2 is two unit steps whose first has a zero input
    term. The input term ŷ ⊙ g_in passes through the gates, so a zero observation gives
    b_t = σ(·) ⊙ bias_ŷ; with the ŷ bias set to zero it is exactly 0 (the construction is
    exact, and b_t = 0 is what "no input" means for the recurrence S_t = γ^Δt S_{t-1} + b_t)."""
    cell = build()
    with torch.no_grad():
        cell.pre.bias[:cell.memory_size] = 0
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    assert_elapsed_time_is_decay_power(cell, x, torch.zeros(2, 3, dtype=torch.float64))
    dt = torch.tensor([0.0, 0.5, 1.0, 2.0, 7.5], dtype=torch.float64)
    torch.testing.assert_close(cell.decay(2 * dt), cell.decay(dt).square())     # op level
    torch.testing.assert_close(cell.decay(torch.zeros(1, dtype=torch.float64)),
                               torch.ones(1, 4, 3, dtype=torch.complex128))


def test_long_sequence_float32_is_finite_and_matches_float64():
    """At T = 8192 (8× the original's chunk) with long gaps: no overflow, float32 ≈ float64."""
    assert_long_float32_run_matches_float64(build(memory_size=8, context_size=4))


def test_defaults_are_the_papers_rllib_model():
    """RayFFM (proroklab/ffm models/ray_ffm.py): memory_size 32, context_size 8 reals = 4
    complex oscillations (mixing layer over 32·8 = 256 reals), periods 1..1024, forgotten_at
    0.01; α linearly from −limit + 0.01 to ln(0.01)/1024, ω = 2π / linspace(1, 1024, 4)."""
    assert dict(memory_size=32, context_size=4, min_period=1.0, max_period=1024.0,
                forgotten_at=0.01).items() <= memory_models.keywords("ffm").items()
    cell = memory_models.make("ffm", input_size=8, hidden_size=256)
    assert cell.mix.in_features == 256 and cell.pre.out_features == 2 * 32 + 2 * 256
    assert cell.initial_state(2)["S"].shape == (2, 32, 4, 2)
    assert DECAY_LIMIT == pytest.approx(math.log(torch.finfo(torch.float64).max) / 1024 - 0.01)
    assert cell.alpha[0].item() == pytest.approx(-DECAY_LIMIT + 0.01)
    assert cell.alpha[-1].item() == pytest.approx(math.log(0.01) / 1024)
    torch.testing.assert_close(cell.omega.detach(),
                               2 * math.pi / torch.linspace(1, 1024, 4))


def test_bad_arguments_name_the_keyword_and_the_allowed_values():
    for kw, match in [(dict(memory_size=0), "memory_size must be a positive int"),
                      (dict(context_size=0), "context_size must be a positive int"),
                      (dict(context_size=2.5), "context_size must be a positive int"),
                      (dict(min_period=5, max_period=5), "min_period must be < max_period"),
                      (dict(min_period=0), "min_period must be a finite number > 0"),
                      (dict(max_period=float("inf")), "max_period must be a finite number > 0"),
                      (dict(forgotten_at=1.0), r"forgotten_at must be a number in \(0, 1\)")]:
        with pytest.raises(ValueError, match=match):
            FFM(3, 5, **kw)
