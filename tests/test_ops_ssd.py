"""ops.ssd: the chunked SSD equals its sequential loop (values and gradients of every input),
with resets inside chunks and at their edges, lengths, a carried state, at chunk sizes that
do and do not divide T; stable in float32 at long lengths and strong decays."""

import pytest
import torch

from memory_models.ops.ssd import ssd_chunked, ssd_sequential

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float64: dict(atol=1e-11, rtol=1e-11)}


def inputs(batch=3, steps=23, heads=2, width=3, modes=4, dtype=torch.float64, seed=0,
           decay_scale=1.0):
    """log_decay ≤ 0, u, B, C, a non-zero initial state."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(dtype)

    log_decay = -(torch.rand(batch, steps, heads, generator=generator) * decay_scale).to(dtype)
    return (log_decay, randn(batch, steps, heads, width), randn(batch, steps, modes),
            randn(batch, steps, modes), randn(batch, heads, width, modes))


def run_both(args, resets, lengths, chunk_size):
    """(y, final, gradients of every input) of the chunked and the sequential form."""
    results = []
    for chunked in (True, False):
        leaves = [t.clone().requires_grad_() for t in args]
        if chunked:
            y, final = ssd_chunked(*leaves, resets, lengths, chunk_size)
        else:
            y, final = ssd_sequential(*leaves, resets, lengths)
        valid = torch.arange(y.shape[1]) < (lengths if lengths is not None
                                            else torch.full((y.shape[0],), y.shape[1]))[:, None]
        loss = (y * valid[..., None, None]).square().sum() + (final * 1.3).sum()
        results.append((y * valid[..., None, None], final, torch.autograd.grad(loss, leaves)))
    return results


@pytest.mark.parametrize("chunk_size", [1, 4, 5, 23, 64])
def test_chunked_equals_sequential_with_resets_at_and_inside_chunk_edges(chunk_size):
    args = inputs()
    resets = torch.zeros(3, 23, dtype=torch.bool)
    resets[0, [0, 4, 5, 9, 15]] = True        # a chunk's first step (4 at size 4), inside, last
    resets[1, [3, 8, 22]] = True              # the last step of a chunk (3, at size 4) and of T
    lengths = torch.tensor([23, 17, 0])
    (y1, s1, g1), (y2, s2, g2) = run_both(args, resets, lengths, chunk_size)
    torch.testing.assert_close(y1, y2, **TOL[torch.float64])
    torch.testing.assert_close(s1, s2, **TOL[torch.float64])
    for name, a, b in zip(("log_decay", "u", "B", "C", "initial"), g1, g2):
        torch.testing.assert_close(a, b, **TOL[torch.float64], msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_chunked_equals_sequential_without_resets_or_lengths(dtype):
    args = inputs(dtype=dtype, steps=40)
    (y1, s1, g1), (y2, s2, g2) = run_both(args, None, None, 8)
    torch.testing.assert_close(y1, y2, **TOL[dtype])
    torch.testing.assert_close(s1, s2, **TOL[dtype])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, **TOL[dtype])


def test_chunks_carry_the_state_a_split_sequence_continues_from():
    args = inputs(steps=30)
    y, final = ssd_chunked(*args, chunk_size=7)
    log_decay, u, B, C, initial = args
    y1, mid = ssd_chunked(log_decay[:, :11], u[:, :11], B[:, :11], C[:, :11], initial,
                          chunk_size=7)
    y2, end = ssd_chunked(log_decay[:, 11:], u[:, 11:], B[:, 11:], C[:, 11:], mid, chunk_size=7)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, **TOL[torch.float64])
    torch.testing.assert_close(end, final, **TOL[torch.float64])


def test_empty_sequence_returns_the_initial_state():
    log_decay, u, B, C, initial = inputs(steps=0)
    y, final = ssd_chunked(log_decay, u, B, C, initial)
    assert y.shape == u.shape and final is initial


def test_float32_is_stable_at_long_lengths_and_strong_decays():
    """T = 4096, decays down to e^-20 per step, a chunk of 64 (cumulative log decays near
    −1300 inside a chunk): every exponent is ≤ 0, so float32 stays finite and close to
    float64 (relative to the largest |y|)."""
    args64 = inputs(batch=2, steps=4096, heads=2, width=4, modes=8, decay_scale=20.0)
    resets = torch.zeros(2, 4096, dtype=torch.bool)
    resets[0, [100, 2000]] = True
    y64, final64 = ssd_chunked(*args64, resets, chunk_size=64)
    y32, final32 = ssd_chunked(*(t.float() for t in args64), resets, chunk_size=64)
    assert torch.isfinite(y32).all() and torch.isfinite(final32).all()
    scale = y64.abs().max()
    assert (y32.double() - y64).abs().max() < 1e-4 * scale
    assert (final32.double() - final64).abs().max() < 1e-4 * scale
