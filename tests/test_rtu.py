"""RTU: the paper's real (cosine) equations written out, parallel == sequential, elapsed time,
long runs, defaults, bad arguments."""

import math
from functools import partial

import pytest
import torch

import memory_models
from memory_models import RTU
from scan_cell_checks import (assert_elapsed_time_is_decay_power,
                              assert_long_float32_run_matches_float64,
                              assert_parallel_equals_sequential, assert_scan_equals_loop)
from small_sizes import seeded_cell

SMALL = dict(input_size=3, hidden_size=8)

pytestmark = pytest.mark.usefixtures("one_thread")

build = partial(seeded_cell, RTU, **SMALL)         # build(dtype=float64, seed=0, **overrides)


def written_out(cell, x, dt, resets, state, activation=torch.relu):
    """The paper's real form as a loop from state["h"] = (h¹, h²), with Δt:
    r^Δt, Δt·θ: h¹ = r^Δt (cos(Δt θ) h¹ − sin(Δt θ) h²) + γ W¹x,
                h² = r^Δt (cos(Δt θ) h² + sin(Δt θ) h¹) + γ W²x,   y = f([h¹, h²])."""
    h1, h2 = state["h"][..., 0], state["h"][..., 1]
    nu, theta = torch.exp(cell.nu_log), torch.exp(cell.theta_log)
    r = torch.exp(-nu)
    gamma = torch.sqrt(1 - r ** 2)
    outputs = []
    for t in range(x.shape[1]):
        keep = ~resets[:, t, None]
        h1, h2 = h1 * keep, h2 * keep
        step = dt[:, t, None] if dt is not None else torch.ones_like(h1[:, :1])
        g, phi = r ** step * torch.cos(theta * step), r ** step * torch.sin(theta * step)
        u1, u2 = x[:, t] @ cell.W_c1.T, x[:, t] @ cell.W_c2.T
        h1, h2 = g * h1 - phi * h2 + gamma * u1, g * h2 + phi * h1 + gamma * u2
        outputs.append(activation(torch.cat([h1, h2], -1)))
    return torch.stack(outputs, 1), {"h": torch.stack([h1, h2], -1)}


def test_scan_equals_the_papers_equations_written_out():
    cell = build()
    assert_scan_equals_loop(cell, lambda *args: written_out(cell, *args), steps=11,
                            reset_at=(0, 5))


@pytest.mark.parametrize("activation, f", [("tanh", torch.tanh), ("linear", lambda v: v)])
def test_other_activations(activation, f):
    cell = build(activation=activation)
    assert_scan_equals_loop(cell, lambda *args: written_out(cell, *args, activation=f),
                            steps=7, reset_at=(1, 0), timesteps=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_parallel_scan_equals_sequential_loop(dtype):
    assert_parallel_equals_sequential(RTU, dtype, r_min=0.5, activation="tanh", **SMALL)


def test_parallel_equals_sequential_with_resets_at_the_edges():
    """Resets at t = 0 and t = T - 1, T = 1 and T = 2, random Δt, from a carried state."""
    cells = [build(scan_impl=impl) for impl in ("parallel", "sequential")]
    for steps in (1, 2, 9):
        x = torch.randn(2, steps, 3, dtype=torch.float64)
        dt = torch.rand(2, steps, dtype=torch.float64) * 2
        resets = torch.zeros(2, steps, dtype=torch.bool)
        resets[0, 0] = resets[1, -1] = True
        state = {"h": torch.randn(2, 4, 2, dtype=torch.float64)}
        (y1, s1), (y2, s2) = [cell.scan(x, state, resets=resets, integration_timesteps=dt)
                              for cell in cells]
        torch.testing.assert_close(y1, y2, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(s1["h"], s2["h"], rtol=1e-12, atol=1e-12)


def test_elapsed_time_is_a_power_of_lambda():
    """Δt = 1 is the synchronous RTU; Δt = 2 is two unit steps whose first has input x = 0
    (W x = 0 exactly: no bias), λ^2 = λ·λ; the input term is not scaled by Δt."""
    cell = build(r_min=0.5, activation="tanh")
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    assert_elapsed_time_is_decay_power(cell, x, torch.zeros(2, 3, dtype=torch.float64))


def test_long_sequence_float32_is_finite_and_matches_float64():
    assert_long_float32_run_matches_float64(build(hidden_size=32, r_min=0.9, r_max=0.999,
                                                  activation="linear"))


def test_ring_initialisation_and_the_normalisation():
    """|λ|² uniform on [r_min², r_max²], arg λ on (0, max_phase], γ = sqrt(1 − |λ|²)."""
    cell = build(hidden_size=8000, r_min=0.4, r_max=0.9, max_phase=math.pi / 10)
    lam = torch.exp(cell.log_lambda()).detach()
    assert lam.abs().min() >= 0.4 - 1e-12 and lam.abs().max() <= 0.9 + 1e-12
    assert lam.angle().min() > 0 and lam.angle().max() <= math.pi / 10 + 1e-12
    assert abs((lam.abs() ** 2).mean().item() - (0.16 + 0.81) / 2) < 0.02
    torch.testing.assert_close(cell.normalisation().detach(), torch.sqrt(1 - lam.abs() ** 2))


def test_defaults_follow_hidden_size():
    assert dict(activation="relu", r_min=0.0, r_max=0.99,
                max_phase=2 * math.pi).items() <= memory_models.keywords("rtu").items()
    for hidden in (4, 64, 256):
        cell = memory_models.make("rtu", input_size=8, hidden_size=hidden)
        assert cell.initial_state(2)["h"].shape == (2, hidden // 2, 2)
        assert cell.W_c1.shape == cell.W_c2.shape == (hidden // 2, 8)
        y, _ = cell.scan(torch.randn(2, 5, 8), cell.initial_state(2))
        assert y.shape == (2, 5, hidden) and (y >= 0).all()            # ReLU output


def test_bad_arguments_name_the_keyword_and_the_allowed_values():
    for kw, match in [(dict(hidden_size=7), "hidden_size must be even for rtu"),
                      (dict(activation="gelu"), r"activation must be one of \('relu', 'tanh'"),
                      (dict(r_min=0.9, r_max=0.5), "r_min must be < r_max"),
                      (dict(r_max=1.0), r"r_max must be a number in \[0, 1\)"),
                      (dict(max_phase=0), "max_phase must be a finite number > 0")]:
        with pytest.raises(ValueError, match=match):
            build(**kw)


def test_steps_without_autograd_follow_parameter_changes():
    """`step` without autograd reuses the weights it derives from the parameters
    (ParameterDerived): after an optimizer step and after load_state_dict it equals a fresh
    cell with the same weights."""
    cell, x = build(), torch.randn(4, 3, dtype=torch.float64)
    state = {"h": torch.randn(4, 4, 2, dtype=torch.float64)}

    def assert_step_is_fresh():
        twin = build(seed=1)
        twin.load_state_dict(cell.state_dict())
        with torch.no_grad():
            cell.step(x, state)                                    # fills the cache
            (y, new), (y_fresh, new_fresh) = cell.step(x, state), twin.step(x, state)
        torch.testing.assert_close(y, y_fresh, rtol=0, atol=0)
        torch.testing.assert_close(new["h"], new_fresh["h"], rtol=0, atol=0)

    assert_step_is_fresh()
    optimizer = torch.optim.Adam(cell.parameters(), lr=0.1)
    y, new = cell.step(x, state)
    (y.square().sum() + new["h"].square().sum()).backward()
    optimizer.step()
    assert_step_is_fresh()
    cell.load_state_dict(build(seed=2).state_dict())
    assert_step_is_fresh()
