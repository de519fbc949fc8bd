"""Checks shared by the tests of the cells whose parallel form is ops.scan.linear_scan
(FFM, LRU, minGRU): parallel == sequential reference, and elapsed time as a decay power."""

import pytest
import torch

TOL = {torch.float32: dict(atol=2e-4, rtol=2e-4), torch.float64: dict(atol=1e-10, rtol=1e-10)}


def random_state(cell, batch: int, dtype) -> dict:
    """A non-zero state with the cell's keys and shapes."""
    return {k: torch.randn(v.shape, dtype=dtype) * 0.5
            for k, v in cell.initial_state(batch, dtype=dtype).items()}


def assert_parallel_equals_sequential(cell_class, dtype, steps: int = 45, **kw) -> None:
    """scan_impl="parallel" and "sequential" (same weights) give the same outputs, final state
    and gradients (input, initial state, every parameter), with resets mid-sequence, a carried
    state, random Δt and lengths [T, 30, 0]; within TOL[dtype]."""
    cells = []
    for scan_impl in ("parallel", "sequential"):
        torch.manual_seed(0)
        cells.append(cell_class(scan_impl=scan_impl, **kw).to(dtype))
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, steps, cells[0].input_size, generator=generator).to(dtype)
    dt = (torch.rand(3, steps, generator=generator) * 3).to(dtype)
    resets = torch.rand(3, steps, generator=generator) < 0.1
    resets[0, steps // 2] = True
    lengths = torch.tensor([steps, min(30, steps), 0])
    state = random_state(cells[0], 3, dtype)
    results = []
    for cell in cells:
        x_leaf = x.clone().requires_grad_()
        state_leaf = {k: v.clone().requires_grad_() for k, v in state.items()}
        y, final = cell.scan(x_leaf, state_leaf, resets=resets, integration_timesteps=dt,
                             lengths=lengths)
        loss = y[:, :min(30, steps)].square().sum() + sum(v.sum() for v in final.values())
        grads = torch.autograd.grad(loss, [x_leaf, *state_leaf.values(), *cell.parameters()])
        results.append((y[:, :min(30, steps)], final, grads))
    (y1, s1, g1), (y2, s2, g2) = results
    torch.testing.assert_close(y1, y2, **TOL[dtype])
    for k in s1:
        torch.testing.assert_close(s1[k], s2[k], **TOL[dtype])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, **TOL[dtype])


def assert_elapsed_time_is_decay_power(cell, x: torch.Tensor, no_input: torch.Tensor) -> None:
    """Δt ≡ 1 is the synchronous form (integration_timesteps=None); a step of Δt = 2 equals two
    steps of Δt = 1 of which the first adds nothing to the state (observation `no_input`, which
    the caller built to give a zero input term b_t = 0 exactly).

    x (B, T, input_size) float64; the sequence x[:, :k], then x[:, k] after Δt = 2, is compared
    with x[:, :k], no_input, x[:, k] at Δt = 1: the same final state and the same output at
    x[:, k] (the decay γ^2 = γ·γ, the input term of x[:, k] unchanged by Δt)."""
    batch, steps = x.shape[:2]
    state = random_state(cell, batch, x.dtype)
    ones = torch.ones(batch, steps, dtype=x.dtype)
    y_sync, s_sync = cell.scan(x, state)
    y_ones, s_ones = cell.scan(x, state, integration_timesteps=ones)
    torch.testing.assert_close(y_ones, y_sync, **TOL[torch.float64])
    for k in s_sync:
        torch.testing.assert_close(s_ones[k], s_sync[k], **TOL[torch.float64])

    k = steps - 1
    dt = ones.clone()
    dt[:, k] = 2.0
    y_gap, s_gap = cell.scan(x, state, integration_timesteps=dt)
    padded = torch.cat([x[:, :k], no_input[:, None], x[:, k:]], dim=1)
    y_pad, s_pad = cell.scan(padded, state)
    torch.testing.assert_close(y_gap[:, k], y_pad[:, k + 1], **TOL[torch.float64])
    for key in s_gap:
        torch.testing.assert_close(s_gap[key], s_pad[key], **TOL[torch.float64])
    assert (y_gap[:, k] - y_sync[:, k]).abs().max() > 1e-6       # the gap did change y


def assert_scan_equals_loop(cell, written_out, steps: int, reset_at: tuple[int, int],
                            timesteps: bool = True) -> None:
    """cell.scan (float64, B = 2, from a random state, a reset at reset_at = (row, t), random
    Δt if `timesteps`) equals written_out(x, dt, resets, state) -> (y, final state dict), the
    test's literal loop over the paper's equations; within TOL[float64]."""
    x = torch.randn(2, steps, cell.input_size, dtype=torch.float64) * 2
    dt = torch.rand(2, steps, dtype=torch.float64) * 2 if timesteps else None
    resets = torch.zeros(2, steps, dtype=torch.bool)
    resets[reset_at] = True
    state = random_state(cell, 2, torch.float64)
    y, final = cell.scan(x, state, resets=resets, integration_timesteps=dt)
    y_ref, final_ref = written_out(x, dt, resets, state)
    torch.testing.assert_close(y, y_ref, **TOL[torch.float64])
    for k in final:
        torch.testing.assert_close(final[k], final_ref[k], **TOL[torch.float64])


def assert_long_float32_run_matches_float64(cell, steps: int = 8192) -> None:
    """At T = steps with gaps Δt up to 5: float32 outputs and state finite and within 1e-3
    (relative to the largest value) of float64's; `cell` is float64 and becomes float32."""
    x = torch.randn(2, steps, cell.input_size, dtype=torch.float64)
    dt = torch.rand(2, steps, dtype=torch.float64) * 5
    state = random_state(cell, 2, torch.float64)
    y64, final64 = cell.scan(x, state, integration_timesteps=dt)
    y32, final32 = cell.float().scan(x.float(), {k: v.float() for k, v in state.items()},
                                     integration_timesteps=dt.float())
    for out32, out64 in [(y32, y64), *((final32[k], final64[k]) for k in final64)]:
        assert torch.isfinite(out32).all()
        assert (out32.double() - out64).abs().max() < 1e-3 * out64.abs().max()
