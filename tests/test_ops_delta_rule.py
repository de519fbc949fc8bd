"""ops.delta_rule: the chunkwise (WY / UT) form equals the step-by-step recurrence (values and
gradients of every input, float64), with resets inside chunks and at their edges, lengths, a
carried state, any chunk size; the step is the delta rule written as matrices; strong decays
stay finite in float32.

flash-linear-attention's naive references (fla/ops/delta_rule/naive.py,
fla/ops/gated_delta_rule/naive.py, fla-core 0.6.0) are plain PyTorch, but they cannot be
imported on a CPU-only machine: importing any module under `fla.ops` runs fla/ops/__init__.py,
which imports the Triton kernels (`import triton` in fla/ops/abc/chunk.py: ModuleNotFoundError
without triton). The tests hold the op to the recurrence written out here instead.
"""

import pytest
import torch
import torch.nn.functional as F

from memory_models.ops.delta_rule import (chunked_delta_rule, delta_rule_sequential,
                                          delta_rule_step)

pytestmark = pytest.mark.usefixtures("one_thread")

TOL64 = dict(atol=1e-10, rtol=1e-10)


def inputs(batch=3, steps=23, heads=2, d_k=5, d_v=4, dtype=torch.float64, seed=0,
           decay_scale=1.0):
    """q, k (L2-normalised keys), v, beta in (0, 1), log decays <= 0, a non-zero S_{-1}."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, steps, heads, d_k, generator=g, dtype=dtype)
    k = F.normalize(torch.randn(batch, steps, heads, d_k, generator=g, dtype=dtype), dim=-1)
    v = torch.randn(batch, steps, heads, d_v, generator=g, dtype=dtype)
    beta = torch.rand(batch, steps, heads, generator=g, dtype=dtype)
    log_decay = -torch.rand(batch, steps, heads, generator=g, dtype=dtype) * decay_scale
    initial = torch.randn(batch, heads, d_k, d_v, generator=g, dtype=dtype)
    return q, k, v, beta, log_decay, initial


def written_out(q, k, v, beta, initial, log_decay=None, resets=None, lengths=None):
    """S_t = α_t (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ, o_t = S_tᵀ q_t with the (d_k, d_k)
    matrices formed, per row and head; a reset zeroes S_{t-1}; past the length S holds."""
    batch, steps, heads, d_k = k.shape
    eye = torch.eye(d_k, dtype=k.dtype)
    outputs = torch.zeros(*v.shape, dtype=v.dtype)
    finals = initial.clone()
    for b in range(batch):
        for h in range(heads):
            S = initial[b, h]
            for t in range(steps):
                if lengths is not None and t >= lengths[b]:
                    break
                if resets is not None and resets[b, t]:
                    S = torch.zeros_like(S)
                alpha = 1.0 if log_decay is None else torch.exp(log_decay[b, t, h])
                k_t = k[b, t, h][:, None]
                S = alpha * (eye - beta[b, t, h] * k_t @ k_t.T) @ S \
                    + beta[b, t, h] * k_t @ v[b, t, h][None, :]
                outputs[b, t, h] = S.T @ q[b, t, h]
            finals[b, h] = S
    return outputs, finals


def test_sequential_is_the_recurrence_written_as_matrices():
    q, k, v, beta, log_decay, initial = inputs(steps=11)
    resets = torch.zeros(3, 11, dtype=torch.bool)
    resets[0, 4] = resets[1, 0] = True
    lengths = torch.tensor([11, 7, 0])
    for decay in (None, log_decay):
        o, final = delta_rule_sequential(q, k, v, beta, initial, decay, resets, lengths)
        o_ref, final_ref = written_out(q, k, v, beta, initial, decay, resets, lengths)
        torch.testing.assert_close(o[0], o_ref[0], **TOL64)
        torch.testing.assert_close(o[1, :7], o_ref[1, :7], **TOL64)
        torch.testing.assert_close(final, final_ref, **TOL64)


def test_step_is_the_papers_update_in_its_layout():
    """In the papers' layout (S' = Sᵀ, (d_v, d_k)): S'_t = α S'_{t-1}(I − β k kᵀ) + β v kᵀ,
    o = S'_t q."""
    q, k, v, beta, log_decay, initial = inputs(steps=1)
    o, S = delta_rule_step(q[:, 0], k[:, 0], v[:, 0], beta[:, 0], initial, log_decay[:, 0])
    eye = torch.eye(k.shape[-1], dtype=k.dtype)
    kkT = k[:, 0, :, :, None] * k[:, 0, :, None, :]                         # (B, H, d_k, d_k)
    papers = torch.exp(log_decay[:, 0])[..., None, None] * initial.transpose(-1, -2) \
        @ (eye - beta[:, 0, :, None, None] * kkT) \
        + beta[:, 0, :, None, None] * v[:, 0, :, :, None] * k[:, 0, :, None, :]
    torch.testing.assert_close(S, papers.transpose(-1, -2), **TOL64)
    torch.testing.assert_close(o, (papers @ q[:, 0, ..., None])[..., 0], **TOL64)


def compare(chunk_size, gated, resets=None, lengths=None, steps=23, dtype=torch.float64,
            tol=TOL64):
    """chunked == sequential: outputs (within the lengths), final state, and the gradients of
    q, k, v, beta, log_decay, initial for a loss on both."""
    tensors = inputs(steps=steps, dtype=dtype)
    results = []
    for impl in (chunked_delta_rule, delta_rule_sequential):
        leaves = [t.clone().requires_grad_() for t in tensors]
        q, k, v, beta, log_decay, initial = leaves
        kwargs = {"chunk_size": chunk_size} if impl is chunked_delta_rule else {}
        o, final = impl(q, k, v, beta, initial, log_decay if gated else None, resets, lengths,
                        **kwargs)
        if lengths is not None:
            valid = torch.arange(steps) < lengths[:, None]
            o = o * valid[..., None, None]
        loss = (o * torch.linspace(-1, 1, o.shape[-1], dtype=dtype)).square().sum() \
            + (final * final.detach().sign()).sum()
        grads = torch.autograd.grad(loss, leaves if gated else leaves[:4] + leaves[5:])
        results.append((o, final, grads))
    (o1, s1, g1), (o2, s2, g2) = results
    torch.testing.assert_close(o1, o2, **tol)
    torch.testing.assert_close(s1, s2, **tol)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("gated", [False, True], ids=["delta", "gated"])
@pytest.mark.parametrize("chunk_size", [1, 3, 4, 23, 64])
def test_chunked_equals_sequential(chunk_size, gated):
    compare(chunk_size, gated)


@pytest.mark.parametrize("gated", [False, True], ids=["delta", "gated"])
def test_resets_inside_and_at_the_edges_of_chunks(gated):
    """Chunks of 4: resets at t = 0 (row 1), at a chunk's first step (4, 8), its last (7, 11),
    inside (9, 14), two in one chunk (row 2: 17, 18) and at the last step (22)."""
    resets = torch.zeros(3, 23, dtype=torch.bool)
    resets[0, [4, 9, 11, 22]] = True
    resets[1, [0, 7, 8, 14]] = True
    resets[2, [17, 18]] = True
    compare(4, gated, resets=resets)
    compare(5, gated, resets=resets)


@pytest.mark.parametrize("gated", [False, True], ids=["delta", "gated"])
def test_lengths_with_resets_give_the_state_after_the_length(gated):
    """lengths [T, 10, 0] with resets inside and past the lengths (those are dropped)."""
    resets = torch.zeros(3, 23, dtype=torch.bool)
    resets[0, [3, 13]] = True
    resets[1, [5, 12, 16]] = True            # 12 and 16 lie past row 1's length 10
    resets[2, [0, 6]] = True                 # row 2 takes no step: its state is the given one
    lengths = torch.tensor([23, 10, 0])
    compare(4, gated, resets=resets, lengths=lengths)
    o, final = chunked_delta_rule(*inputs()[:4], inputs()[5], inputs()[4] if gated else None,
                                  resets, lengths, chunk_size=4)
    torch.testing.assert_close(final[2], inputs()[5][2], rtol=0, atol=0)


def test_carried_state_splits_the_sequence_anywhere():
    """Chunked over T steps = chunked over [0, cut) then [cut, T) from the state it returned,
    cuts inside and at the edges of chunks."""
    q, k, v, beta, log_decay, initial = inputs()
    o, final = chunked_delta_rule(q, k, v, beta, initial, log_decay, chunk_size=4)
    for cut in (1, 4, 10, 22):
        first = [t[:, :cut] for t in (q, k, v, beta)]
        o1, mid = chunked_delta_rule(*first, initial, log_decay[:, :cut], chunk_size=4)
        second = [t[:, cut:] for t in (q, k, v, beta)]
        o2, end = chunked_delta_rule(*second, mid, log_decay[:, cut:], chunk_size=4)
        torch.testing.assert_close(torch.cat([o1, o2], 1), o, **TOL64)
        torch.testing.assert_close(end, final, **TOL64)


def test_strong_decays_stay_finite_and_exact_in_float32():
    """g down to −60 per step: products of decays underflow to 0 over a chunk (exp(−60·64)),
    but only exp(γ_t − γ_s) ≤ 1 is formed: float32 chunked is finite and matches float32
    sequential and float64 within 1e-4 (relative to the largest output), gradients finite."""
    q, k, v, beta, log_decay, initial = inputs(steps=300, dtype=torch.float64, decay_scale=60)
    log_decay[:, ::7] = 0                                                       # some α = 1
    o64, s64 = delta_rule_sequential(q, k, v, beta, initial, log_decay)
    leaves = [t.float().requires_grad_() for t in (q, k, v, beta, log_decay, initial)]
    o32, s32 = chunked_delta_rule(*leaves[:4], leaves[5], leaves[4], chunk_size=64)
    o_seq, _ = delta_rule_sequential(*[t.detach() for t in leaves[:4]], leaves[5].detach(),
                                     leaves[4].detach())
    scale = o64.abs().max()
    assert torch.isfinite(o32).all() and torch.isfinite(s32).all()
    assert (o32.double() - o64).abs().max() < 1e-4 * scale
    assert (o32 - o_seq).abs().max() < 1e-4 * scale
    assert (s32.double() - s64).abs().max() < 1e-4 * s64.abs().max()
    grads = torch.autograd.grad(o32.square().sum() + s32.sum(), leaves)
    assert all(torch.isfinite(g).all() for g in grads)


def test_long_float32_run_matches_float64():
    """T = 2048 without decay (DeltaNet: the memory never forgets, β k kᵀ erases): float32
    chunked within 1e-3 of float64 (relative to the largest output)."""
    q, k, v, beta, _, initial = inputs(batch=2, steps=2048, heads=2, d_k=8, d_v=8)
    o64, s64 = chunked_delta_rule(q, k, v, beta, initial)
    o32, s32 = chunked_delta_rule(q.float(), k.float(), v.float(), beta.float(),
                                  initial.float())
    assert (o32.double() - o64).abs().max() < 1e-3 * o64.abs().max()
    assert (s32.double() - s64).abs().max() < 1e-3 * s64.abs().max()


def test_empty_sequence_returns_the_state():
    q, k, v, beta, log_decay, initial = inputs(steps=0)
    for impl in (chunked_delta_rule, delta_rule_sequential):
        o, final = impl(q, k, v, beta, initial, log_decay)
        assert o.shape == (3, 0, 2, 4) and final is initial
