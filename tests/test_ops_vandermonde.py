"""The chunked Vandermonde sums (ops.vandermonde) against their loops over t: values and
gradients, one chunk and many, chunk widths that do and do not divide T, ragged lengths."""

import pytest
import torch

from memory_models.ops.vandermonde import (ChunkedPowers, chunk_width, power_at_reference, powers,
                                           powers_reference, real_readout_reference,
                                           state_after_reference)
pytestmark = pytest.mark.usefixtures("one_thread")

TOL = {torch.float32: dict(atol=2e-4, rtol=2e-4), torch.float64: dict(atol=1e-10, rtol=1e-10)}
CHANNELS, MODES = 3, 2


def operands(batch, steps, seed=0):
    """log z of stable decays |z| in (0.55, 1) with phases up to ±6 rad, (H, n) complex128;
    coefficients w (H, n, 2), vectors v (B, H, n, 2), inputs u (H, B, T): float64 leaves."""
    g = torch.Generator().manual_seed(seed)
    log_z = torch.complex(-torch.rand(CHANNELS, MODES, generator=g, dtype=torch.float64) * 0.6,
                          torch.randn(CHANNELS, MODES, generator=g, dtype=torch.float64) * 2)
    w = torch.randn(CHANNELS, MODES, 2, generator=g, dtype=torch.float64)
    v = torch.randn(batch, CHANNELS, MODES, 2, generator=g, dtype=torch.float64)
    u = torch.randn(CHANNELS, batch, steps, generator=g, dtype=torch.float64)
    return [t.requires_grad_() for t in (log_z, w, v, u)]


# (B, T): one chunk (T <= B); c = 3 dividing T = 9; c = 5 not dividing T = 29 (6 chunks)
SHAPES = [(4, 3), (2, 9), (3, 29)]


def values_and_gradients(fn, leaves, weights):
    out = fn(*leaves)
    return (out.detach(), *torch.autograd.grad((out * weights).sum(), leaves, allow_unused=True))


def assert_fast_equals_reference(fast, reference, leaves, tol):
    weights = torch.randn_like(reference(*leaves), dtype=torch.float64)
    for got, want in zip(values_and_gradients(fast, leaves, weights),
                         values_and_gradients(reference, leaves, weights)):
        torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("batch, steps", SHAPES)
def test_real_readout_equals_the_loop(batch, steps):
    log_z, w, v, u = operands(batch, steps, seed=steps)
    fast = lambda log_z, w: ChunkedPowers(log_z, steps, batch, torch.float64).real_readout(w)
    reference = lambda log_z, w: real_readout_reference(log_z, w, steps)
    assert_fast_equals_reference(fast, reference, [log_z, w], TOL[torch.float64])
    assert fast(log_z, w).shape == (CHANNELS, steps)


@pytest.mark.parametrize("batch, steps", SHAPES)
def test_real_readout_of_vectors_equals_the_loop(batch, steps):
    log_z, w, v, u = operands(batch, steps, seed=steps)
    fast = lambda log_z, w, v: ChunkedPowers(log_z, steps, batch,
                                             torch.float64).real_readout(w, v)
    reference = lambda log_z, w, v: real_readout_reference(log_z, w, steps, v)
    assert_fast_equals_reference(fast, reference, [log_z, w, v], TOL[torch.float64])
    assert fast(log_z, w, v).shape == (CHANNELS, batch, steps)


@pytest.mark.parametrize("ends", ["full", "ragged"])
@pytest.mark.parametrize("batch, steps", SHAPES)
def test_state_after_equals_the_recurrence(batch, steps, ends):
    log_z, w, v, u = operands(batch, steps, seed=steps)
    lengths = torch.full((batch,), steps)
    if ends == "ragged":                        # inside a chunk, at its edge, nothing, all
        lengths = torch.tensor([steps - 1, 0, steps, 1][:batch])
    fast = lambda log_z, w, u: ChunkedPowers(log_z, steps, batch,
                                             torch.float64).state_after(w, u, lengths)
    reference = lambda log_z, w, u: state_after_reference(log_z, w, u, lengths)
    assert_fast_equals_reference(fast, reference, [log_z, w, u], TOL[torch.float64])


@pytest.mark.parametrize("lengths", [[7, 7, 7], [0, 5, 29]], ids=["one-length", "per-row"])
def test_power_at_equals_repeated_multiplication(lengths):
    log_z, *_ = operands(3, 29)
    lengths = torch.tensor(lengths)
    fast = lambda log_z: ChunkedPowers(log_z, 29, 3, torch.float64).power_at(lengths).expand(
        3, -1, -1, -1)
    reference = lambda log_z: power_at_reference(log_z, lengths)
    assert_fast_equals_reference(fast, reference, [log_z], TOL[torch.float64])


def test_float32_tables_agree_with_the_float64_loop():
    """The working dtype float32 (within in complex64, across cast from float64) stays within
    float32 rounding of the float64 loops, at T = 700 (c = 27: 26 chunks)."""
    batch, steps = 4, 700
    log_z, w, v, u = (t.detach() for t in operands(batch, steps))
    table = ChunkedPowers(log_z, steps, batch, torch.float32)
    assert (table.width, table.chunks) == (chunk_width(batch, steps), 26)
    lengths = torch.tensor([700, 3, 699, 350])
    tol = TOL[torch.float32]
    torch.testing.assert_close(table.real_readout(w.float()).double(),
                               real_readout_reference(log_z, w, steps), **tol)
    torch.testing.assert_close(table.real_readout(w.float(), v.float()).double(),
                               real_readout_reference(log_z, w, steps, v), **tol)
    torch.testing.assert_close(table.state_after(w.float(), u.float(), lengths).double(),
                               state_after_reference(log_z, w, u, lengths), **tol)


def test_chunk_width():
    assert chunk_width(16, 1024) == 64 and chunk_width(157, 53) == 53    # sqrt(B·T)/2, or T
    assert chunk_width(3, 29) == 5 and chunk_width(4, 0) == 1
    for batch, steps in [(1, 1), (2, 1000), (16, 1024), (3, 29)]:
        width = chunk_width(batch, steps)
        assert 1 <= width <= max(steps, 1)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=str)
def test_powers_equal_the_reference_in_values_and_gradients(dtype):
    log_z = torch.complex(-torch.rand(4, 3, dtype=torch.float64) * 0.3,
                          torch.randn(4, 3, dtype=torch.float64) * 3).to(dtype)
    exponents = torch.tensor([0.0, 1.0, 2.0, 7.0, 30.0])
    weights = torch.randn(4, 3, 5, 2, dtype=log_z.real.dtype)
    results = []
    for fn in (powers, powers_reference):
        leaf = log_z.clone().requires_grad_()
        out = fn(leaf, exponents)
        results.append((out, *torch.autograd.grad((out * weights).sum(), leaf)))
    tol = TOL[log_z.real.dtype]
    for fast, reference in zip(*results):
        torch.testing.assert_close(fast, reference, **tol)
