"""chunked_linear_attention against its reference, the running sum of k vᵀ read at every step
(cumulative_sum, and its loop): values and gradients in float64 with resets mid-chunk, at a
chunk's first and last step, a carried state, lengths (0, mid-chunk, full) and chunk sizes that
do and do not divide T."""

import pytest
import torch

from memory_models.ops.running_sum import (chunked_linear_attention, cumulative_sum,
                                           cumulative_sum_sequential)

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float64: dict(atol=1e-10, rtol=1e-10)}


def by_running_sum(q, k, v, initial, resets, lengths, accumulate=cumulative_sum):
    """S_t = cumulative_sum(k_t v_tᵀ) (every S_t formed), o_t = q_tᵀ S_t."""
    states = accumulate(k[..., :, None] * v[..., None, :], initial, resets, lengths)
    return (q[..., None, :] @ states)[..., 0, :], states[:, -1]


def inputs(batch, steps, keys, values, dtype, seed=0, resets_at=(), lengths=None):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.rand(batch, steps, keys, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(batch, steps, values, generator=g, dtype=dtype)
    initial = torch.randn(batch, keys, values, generator=g, dtype=dtype)
    resets = torch.rand(batch, steps, generator=g) < 0.1
    for row, t in resets_at:
        resets[row, t] = True
    lengths = torch.full((batch,), steps) if lengths is None else torch.tensor(lengths)
    return q, k, v, initial, resets, lengths


@pytest.mark.parametrize("chunk_size", [1, 4, 5, 64])
@pytest.mark.parametrize("steps", [1, 7, 20, 37])
def test_chunked_equals_the_running_sum_values_and_gradients(steps, chunk_size):
    batch = 4
    q, k, v, initial, resets, lengths = inputs(
        batch, steps, 3, 5, torch.float64, seed=steps,
        resets_at=[(0, 0), (1, steps // 2), (2, min(3, steps - 1)), (2, min(4, steps - 1))],
        lengths=[steps, steps // 2, 0, max(steps - 3, 0)])
    leaves = [t.clone().requires_grad_() for t in (q, k, v, initial)]
    results = []
    for method in (lambda *a: chunked_linear_attention(*a, chunk_size=chunk_size),
                   by_running_sum,
                   lambda *a: by_running_sum(*a, accumulate=cumulative_sum_sequential)):
        o, final = method(*leaves, resets, lengths)
        weights = torch.linspace(0.5, 1.5, o.numel(), dtype=o.dtype).view_as(o)
        loss = (o * weights).sum() + final.square().sum()
        results.append((o, final, torch.autograd.grad(loss, leaves)))
    (o, final, grads), *references = results
    for o_ref, final_ref, grads_ref in references:
        torch.testing.assert_close(o, o_ref, **TOL[torch.float64])
        torch.testing.assert_close(final, final_ref, **TOL[torch.float64])
        for g, g_ref in zip(grads, grads_ref):
            torch.testing.assert_close(g, g_ref, **TOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_without_resets_or_short_lengths(dtype):
    """The path without masks (no reset, full lengths; None and all-False alike)."""
    q, k, v, initial, resets, lengths = inputs(2, 130, 4, 4, dtype)
    expected = by_running_sum(q, k, v, initial, torch.zeros_like(resets), lengths)
    for r, n in ((None, None), (torch.zeros_like(resets), lengths)):
        o, final = chunked_linear_attention(q, k, v, initial, r, n)
        torch.testing.assert_close(o, expected[0], **TOL[dtype])
        torch.testing.assert_close(final, expected[1], **TOL[dtype])


def test_empty_sequence_returns_the_initial_state():
    q, k, v, initial, resets, lengths = inputs(2, 0, 3, 2, torch.float64)
    o, final = chunked_linear_attention(q, k, v, initial, resets, lengths)
    assert o.shape == (2, 0, 2) and final is initial
