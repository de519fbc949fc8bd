"""LRU: the paper's equations written out, ring initialisation, parallel == sequential, elapsed
time, long runs, defaults, bad arguments."""

import math
from functools import partial

import pytest
import torch

import memory_models
from memory_models import LRU
from scan_cell_checks import (assert_elapsed_time_is_decay_power,
                              assert_long_float32_run_matches_float64,
                              assert_parallel_equals_sequential, assert_scan_equals_loop)
from small_sizes import seeded_cell

SMALL = dict(input_size=3, hidden_size=5, state_size=6)

pytestmark = pytest.mark.usefixtures("one_thread")

build = partial(seeded_cell, LRU, **SMALL)         # build(dtype=float64, seed=0, **overrides)


def written_out(cell, u, dt, resets, state):
    """x_t = λ^{Δt} x_{t-1} + γ (B u_t), y_t = Re(C x_t) + D u_t as a loop from state["x"].

    λ^{Δt} = exp(Δt log λ) with log λ = −exp(ν) + i exp(θ), the parameters' logarithm (the
    rotation per unit time is exp(θ)): not torch's principal power lam ** Δt, which differs
    for non-integer Δt where exp(θ) > π."""
    x = torch.view_as_complex(state["x"])
    log_lam = -torch.exp(cell.nu_log) + 1j * torch.exp(cell.theta_log)
    lam = torch.exp(log_lam)
    gamma = torch.sqrt(1 - lam.abs() ** 2)
    B = cell.B_re + 1j * cell.B_im
    C = cell.C_re + 1j * cell.C_im
    outputs = []
    for t in range(u.shape[1]):
        x = torch.where(resets[:, t, None], torch.zeros_like(x), x)
        x = torch.exp(log_lam * dt[:, t, None]) * x + gamma * (u[:, t].to(B.dtype) @ B.T)
        outputs.append((x @ C.T).real + u[:, t] @ cell.D.T)
    return torch.stack(outputs, 1), {"x": torch.view_as_real(x)}


def test_scan_equals_the_papers_equations_written_out():
    cell = build()
    assert_scan_equals_loop(cell, lambda *args: written_out(cell, *args), steps=11,
                            reset_at=(0, 5))


@pytest.mark.parametrize("timesteps", ["ones", "random"])
def test_gradients_equal_the_papers_equations_written_out_and_no_grad_the_same_values(
        timesteps):
    """Training runs [γ B u, D u] as two matmuls, a no-grad pass as one: the same values, and
    every gradient (input, state, parameters) equal to autograd through the written-out loop
    (Δt ≡ 1: the decay shared by every step, expanded; random Δt), float64."""
    cell = build()
    u = torch.randn(2, 9, cell.input_size, dtype=torch.float64, requires_grad=True)
    dt = torch.ones(2, 9, dtype=torch.float64) if timesteps == "ones" else \
        torch.rand(2, 9, dtype=torch.float64) * 2
    resets = torch.zeros(2, 9, dtype=torch.bool)
    resets[1, 4] = True
    state = {"x": torch.randn(2, cell.state_size, 2, dtype=torch.float64, requires_grad=True)}
    weight = torch.randn(2, 9, cell.hidden_size, dtype=torch.float64)
    grads, values = [], []
    for run in (lambda: cell.scan(u, state, resets=resets, integration_timesteps=dt),
                lambda: written_out(cell, u, dt, resets, state)):
        y, final = run()
        loss = (y * weight).sum() + final["x"].square().sum()
        grads.append(torch.autograd.grad(loss, [u, state["x"], *cell.parameters()]))
        values.append(y.detach())
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        y, _ = cell.scan(u, state, resets=resets, integration_timesteps=dt)
    torch.testing.assert_close(y, values[0], rtol=1e-12, atol=1e-12)


def test_ring_initialisation():
    """|λ| uniform-in-square on [r_min, r_max], arg λ on (0, max_phase], γ = sqrt(1 − |λ|²)."""
    cell = build(state_size=4000, r_min=0.4, r_max=0.9, max_phase=math.pi / 10)
    lam = torch.exp(cell.log_lambda()).detach()
    assert lam.abs().min() >= 0.4 - 1e-12 and lam.abs().max() <= 0.9 + 1e-12
    assert lam.angle().min() > 0 and lam.angle().max() <= math.pi / 10 + 1e-12
    squared = lam.abs() ** 2                                   # uniform on [0.16, 0.81]
    assert abs(squared.mean().item() - (0.16 + 0.81) / 2) < 0.02
    torch.testing.assert_close(cell.normalisation().detach(), torch.sqrt(1 - squared))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_parallel_scan_equals_sequential_loop(dtype):
    assert_parallel_equals_sequential(LRU, dtype, r_min=0.5, **SMALL)


def test_elapsed_time_is_a_power_of_lambda():
    """Δt = 1 is the synchronous LRU; Δt = 2 is two unit steps whose first has input u = 0
    (B u = 0 exactly: B has no bias), λ^2 = λ·λ; the input term γ B u is not scaled by Δt."""
    cell = build(r_min=0.5)
    u = torch.randn(2, 6, 3, dtype=torch.float64)
    assert_elapsed_time_is_decay_power(cell, u, torch.zeros(2, 3, dtype=torch.float64))
    dt = torch.tensor([0.0, 0.5, 1.0, 2.0, 7.5], dtype=torch.float64)
    a1, b1, _ = cell.elements(torch.ones(5, 3, dtype=torch.float64), dt)
    a2, b2, _ = cell.elements(torch.ones(5, 3, dtype=torch.float64), 2 * dt)
    torch.testing.assert_close(a2, a1.square())
    torch.testing.assert_close(b2, b1)


def test_long_sequence_float32_is_finite_and_matches_float64():
    assert_long_float32_run_matches_float64(build(state_size=16, r_min=0.9, r_max=0.999))


def test_defaults():
    """r_min 0, max_phase 2π (the paper's code), r_max 0.99 (< 1, see the module), N = 80."""
    assert dict(state_size=80, r_min=0.0, r_max=0.99,
                max_phase=2 * math.pi).items() <= memory_models.keywords("lru").items()
    cell = memory_models.make("lru", input_size=8, hidden_size=256)
    assert cell.initial_state(2)["x"].shape == (2, 80, 2)
    assert cell.B_re.shape == (80, 8) and cell.C_im.shape == (256, 80)
    assert cell.D.shape == (256, 8)


def test_bad_arguments_name_the_keyword_and_the_allowed_values():
    for kw, match in [(dict(state_size=0), "state_size must be a positive int"),
                      (dict(r_min=0.9, r_max=0.5), "r_min must be < r_max"),
                      (dict(r_min=0.5, r_max=0.5), "r_min must be < r_max"),
                      (dict(r_max=1.0), r"r_max must be a number in \[0, 1\)"),
                      (dict(r_min=-0.1), r"r_min must be a number in \[0, 1\)"),
                      (dict(max_phase=0), "max_phase must be a finite number > 0")]:
        with pytest.raises(ValueError, match=match):
            LRU(3, 5, **kw)


@pytest.mark.parametrize("name", ["lru", "ffm"])
def test_steps_without_autograd_follow_every_parameter_change(name):
    """`step` without autograd reuses what it derives from the parameters (ParameterDerived):
    after an optimizer step (trained through `step`, gradients reaching every parameter),
    load_state_dict and .to(float32) it equals a freshly built cell with the same weights."""
    torch.manual_seed(0)
    make = lambda: memory_models.make(name, input_size=3, hidden_size=5).double()
    cell, x = make(), torch.randn(4, 3, dtype=torch.float64)
    state = {k: torch.randn_like(v) for k, v in cell.initial_state(4).items()}

    def fresh_step(module, x, state):
        twin = make().to(x.dtype)
        twin.load_state_dict(module.state_dict())
        with torch.no_grad():
            return twin.step(x, state)

    def assert_step_is_fresh(x, state):
        with torch.no_grad():
            cell.step(x, state)                  # fills the cache for the current weights
            y, new = cell.step(x, state)
        y_fresh, new_fresh = fresh_step(cell, x, state)
        torch.testing.assert_close(y, y_fresh, rtol=0, atol=0)
        for k in new:
            torch.testing.assert_close(new[k], new_fresh[k], rtol=0, atol=0)

    assert_step_is_fresh(x, state)
    for optimizer in (torch.optim.Adam(cell.parameters(), lr=0.1),
                      torch.optim.SGD(cell.parameters(), lr=0.1, foreach=True)):
        y, new = cell.step(x, state)
        optimizer.zero_grad()
        (y.square().sum() + sum(v.square().sum() for v in new.values())).backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in cell.parameters())
        optimizer.step()
        assert_step_is_fresh(x, state)
    other = make()
    with torch.no_grad():
        cell.step(x, state)
    cell.load_state_dict(other.state_dict())
    assert_step_is_fresh(x, state)
    with torch.no_grad():
        cell.step(x, state)
    cell.float()
    assert_step_is_fresh(x.float(), {k: v.float() for k, v in state.items()})
