"""The parallel linear scan against its sequential reference: values, gradients, edge cases."""

import pytest
import torch

from memory_models.ops import scan as scan_module
from memory_models.ops.scan import linear_scan, linear_scan_sequential

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float64: dict(atol=1e-10, rtol=1e-10)}


@pytest.fixture(params=["odd-even", "loop"])
def kernel(request, monkeypatch):
    """Both kernels of the parallel scan: the odd-even recursion, and the in-place loop over t
    that the CPU runs once a step's slice is large (forced here at any size)."""
    monkeypatch.setattr(scan_module, "LOOP_MIN_STEP_ELEMENTS",
                        0 if request.param == "loop" else float("inf"))
    return request.param


def elements(batch, steps, modes, dtype, device, complex_=True, seed=0):
    """Decays a = exp(A·Δt) from random stable A and random Δt (0 .. 3), inputs b, s_{-1}."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.rand(batch, steps, 1, generator=g, dtype=dtype) * 3
    if complex_:
        A = torch.complex(-torch.rand(modes, generator=g, dtype=dtype) - 0.01,
                          torch.randn(modes, generator=g, dtype=dtype) * 3)
        b = torch.complex(torch.randn(batch, steps, modes, generator=g, dtype=dtype),
                          torch.randn(batch, steps, modes, generator=g, dtype=dtype))
        s0 = torch.complex(torch.randn(batch, modes, generator=g, dtype=dtype),
                           torch.randn(batch, modes, generator=g, dtype=dtype))
    else:
        A = -torch.rand(modes, generator=g, dtype=dtype) - 0.01
        b = torch.randn(batch, steps, modes, generator=g, dtype=dtype)
        s0 = torch.randn(batch, modes, generator=g, dtype=dtype)
    resets = torch.rand(batch, steps, generator=g) < 0.15
    lengths = torch.randint(0, steps + 1, (batch,), generator=g)
    lengths[0] = steps
    to = lambda t: t.to(device)
    return to(torch.exp(A * dt)), to(b), to(s0), to(resets), to(lengths)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("complex_", [True, False], ids=["complex", "real"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("steps", [1, 2, 3, 7, 16, 33, 100, 257])
def test_parallel_equals_sequential(steps, dtype, complex_, device, kernel):
    a, b, s0, resets, lengths = elements(4, steps, 3, dtype, device, complex_, seed=steps)
    for kw in (dict(), dict(resets=resets), dict(resets=resets, lengths=lengths)):
        got = linear_scan(a, b, s0, **kw)
        want = linear_scan_sequential(a, b, s0, **kw)
        torch.testing.assert_close(got, want, **TOL[dtype])


@pytest.mark.parametrize("blocks", ["one-block", "row-blocks"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("steps", [5, 64, 77])
def test_gradients_equal_sequential(steps, dtype, blocks, monkeypatch, kernel):
    if blocks == "row-blocks":            # one batch row per block
        monkeypatch.setattr(scan_module, "BLOCK_BYTES", 1)
    a, b, s0, resets, lengths = elements(3, steps, 2, dtype, "cpu", seed=steps)
    weight = torch.randn_like(b)
    grads, values = [], []
    for scan in (linear_scan, linear_scan_sequential):
        leaves = [t.clone().requires_grad_() for t in (a, b, s0)]
        states = scan(*leaves, resets=resets, lengths=lengths)
        (states * weight).real.sum().backward()
        grads.append([t.grad for t in leaves])
        values.append(states.detach())
    torch.testing.assert_close(*values, **TOL[dtype])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, **TOL[dtype])


def test_gradcheck_complex(kernel):
    a, b, s0, resets, lengths = elements(2, 11, 2, torch.float64, "cpu", seed=3)
    leaves = [t.clone().requires_grad_() for t in (a, b, s0)]
    assert torch.autograd.gradcheck(lambda *t: linear_scan(*t, resets=resets, lengths=lengths),
                                    leaves)


def test_reset_replaces_the_previous_state_by_zero(kernel):
    a = torch.full((1, 4, 1), 0.5, dtype=torch.float64)
    b = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64).view(1, 4, 1)
    s0 = torch.tensor([[8.0]], dtype=torch.float64)
    resets = torch.tensor([[False, False, True, False]])
    s = linear_scan(a, b, s0, resets=resets)[0, :, 0]
    assert s.tolist() == [5.0, 4.5, 3.0, 5.5]          # s_2 = a·0 + b_2


def test_lengths_hold_the_state_and_zero_length_keeps_initial(kernel):
    a, b, s0, _, _ = elements(3, 9, 2, torch.float64, "cpu")
    lengths = torch.tensor([9, 4, 0])
    s = linear_scan(a, b, s0, lengths=lengths)
    full = linear_scan(a, b, s0)
    torch.testing.assert_close(s[0, -1], full[0, -1])
    torch.testing.assert_close(s[1, -1], full[1, 3])
    torch.testing.assert_close(s[2, -1], s0[2])


def test_no_underflow_where_cumulative_products_would():
    """0.9^t underflows float32 within a few thousand steps: a cumprod/divide scan breaks, this
    one does not."""
    steps = 4000
    a = torch.full((1, steps, 1), 0.9)
    b = torch.ones(1, steps, 1)
    s = linear_scan(a, b, torch.zeros(1, 1))
    assert torch.isfinite(s).all()
    torch.testing.assert_close(s[0, -1, 0], torch.tensor(10.0), atol=1e-4, rtol=1e-5)


def test_empty_sequence():
    a, b, s0, _, _ = elements(2, 1, 3, torch.float32, "cpu")
    assert linear_scan(a[:, :0], b[:, :0], s0).shape == (2, 0, 3)


def test_backward_is_not_differentiable_again():
    """A second derivative fails clearly instead of silently."""
    a, b, s0, _, _ = elements(2, 6, 2, torch.float64, "cpu")
    b.requires_grad_()
    states = linear_scan(a, b, s0)
    (grad,) = torch.autograd.grad(states.abs().square().sum(), b, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.abs().sum().backward()


def test_cpu_runs_the_loop_once_a_step_is_large():
    """The kernel follows the size of one step (B·F): odd-even for small steps, the loop from
    LOOP_MIN_STEP_ELEMENTS on (the PPO learner's 157 rows x 256 features)."""
    small, large = torch.zeros(4, 100, 3), torch.zeros(157, 53, 256)
    assert scan_module._scan_kernel(small)[0] is scan_module._scan_into
    assert scan_module._scan_kernel(large)[0] is scan_module._loop_into


def test_gradients_with_a_decay_shared_by_every_row_and_step(kernel):
    """An expanded decay (stride 0 over rows and steps, as ffm and lru pass it for Δt ≡ 1):
    the same gradients as the same decay materialized."""
    a, b, s0, resets, lengths = elements(3, 12, 2, torch.float64, "cpu", seed=5)
    shared = a[0, 0].clone().requires_grad_()
    full = shared.detach().expand(3, 12, 2).clone().requires_grad_()
    weight = torch.randn_like(b)
    for scan in (linear_scan, linear_scan_sequential):
        want = torch.autograd.grad((scan(full, b, s0, resets=resets) * weight).real.sum(), full)
        got = torch.autograd.grad(
            (scan(shared.expand(3, 12, 2), b, s0, resets=resets) * weight).real.sum(), shared)
        torch.testing.assert_close(got[0], want[0].sum((0, 1)), rtol=1e-10, atol=1e-10)
