"""Mamba's selective scan, fused over time: the recurrence with a decay per channel and mode
that depends on the input, without materialising the decays or the input terms.

    h_t = exp(δ_t ⊗ A) ⊙ h_{t-1} + u_t ⊗ B_t        (Bt, E, N)
    y_t = h_t C_t                                     (Bt, E)

    selective_scan(delta, A, u, B, C, initial, resets, lengths)    -> (y, final)   fused loop
    selective_scan_materialized(..., scan=linear_scan)              -> (y, final)   via ops.scan

delta (Bt, T, E) ≥ 0 (Mamba's Δ_t times the elapsed time), A (E, N), u (Bt, T, E) (Δ_t ⊙ c_t),
B and C (Bt, T, N), initial h_{-1} (Bt, E, N); y (Bt, T, E), final the state after
lengths[b] steps. resets (Bt, T) bool: h := 0 before step t; past a row's length the steps are
the identity (δ = 0, u = 0), so its final state is the one after lengths[b] steps.

`selective_scan` is a loop over t of ops on (rows, E, N) tensors, over blocks of rows of
about BLOCK_BYTES per step (one step's decays and inputs, formed and consumed at once, stay in
cache: 3x faster than whole-batch steps at the value pass's 1260 rows), in a custom autograd
Function: the forward pass keeps the states h_t (one (T, rows, E, N) tensor per block, the
only one of that size; none without gradients), the backward pass runs the loop backwards,

    g_t = ∂L/∂h_t = g_{t+1} ⊙ a_{t+1} + ∂L/∂y_t ⊗ C_t   (a_{t+1} zero after a reset at t+1)
    ∂L/∂u_t = g_t B_t   ∂L/∂B_t = u_tᵀ g_t   ∂L/∂C_t = ∂L/∂y_tᵀ h_t
    ∂L/∂δ_t = Σ_n (g_t ⊙ h_{t-1} ⊙ a_t ⊙ A)   ∂L/∂A = Σ_{b,t} g_t ⊙ h_{t-1} ⊙ a_t ⊙ δ_t

recomputing each a_t = exp(δ_t ⊗ A) from δ_t. `selective_scan_materialized` forms
exp(δ ⊗ A) and u ⊗ B as (Bt, T, E, N) tensors and runs ops.scan over them under autograd:
with ops.scan's parallel `linear_scan` it is the textbook parallel form (2-3x slower than the
fused loop on the CPU at Mamba's sizes, with several such tensors stored for the backward
pass); with `linear_scan_sequential` it is the plain reference of the tests.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .scan import linear_scan, linear_scan_sequential

BLOCK_BYTES = 1 << 20      # rows per block of the loop: one step's (rows, E, N) about this size


def fold_lengths(delta: Tensor, u: Tensor, resets: Tensor | None, lengths: Tensor | None):
    """Past a row's length: δ = 0 and u = 0 (the identity step), no resets."""
    steps = delta.shape[1]
    if lengths is None or not bool((lengths < steps).any()):
        return delta, u, resets
    valid = torch.arange(steps, device=delta.device) < lengths[:, None]        # (Bt, T)
    resets = None if resets is None else resets & valid
    return delta * valid[..., None], u * valid[..., None], resets


def selective_scan(delta: Tensor, A: Tensor, u: Tensor, B: Tensor, C: Tensor, initial: Tensor,
                   resets: Tensor | None = None,
                   lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(y (Bt, T, E), final state (Bt, E, N)) by the fused loop over t."""
    if delta.shape[1] == 0:
        return u.new_zeros(u.shape), initial
    delta, u, resets = fold_lengths(delta, u, resets, lengths)
    if resets is not None and not bool(resets.any()):
        resets = None
    gradients = torch.is_grad_enabled() and any(
        t.requires_grad for t in (delta, A, u, B, C, initial))
    row_bytes = A.numel() * A.element_size()                 # one row's state at one step
    rows = max(1, BLOCK_BYTES // row_bytes)
    outputs, finals = [], []
    for start in range(0, u.shape[0], rows):                 # blocks of rows: each step's
        block = slice(start, start + rows)                   # (rows, E, N) tensors in cache
        delta_b, u_b, B_b, C_b = (v[block].transpose(0, 1).contiguous()     # time-major
                                  for v in (delta, u, B, C))
        resets_b = None if resets is None else resets[block]
        if resets_b is not None and not bool(resets_b.any()):
            resets_b = None
        if gradients:
            y, final = _SelectiveScan.apply(delta_b, A, u_b, B_b, C_b, initial[block], resets_b)
        else:
            y, final = _scan_loop(delta_b, A, u_b, B_b, C_b, initial[block], resets_b)
        outputs.append(y)
        finals.append(final)
    if len(outputs) == 1:
        return outputs[0], finals[0]
    return torch.cat(outputs), torch.cat(finals)


def _scan_loop(delta: Tensor, A: Tensor, u: Tensor, B: Tensor, C: Tensor, initial: Tensor,
               resets: Tensor | None, states: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The loop over t on time-major delta, u (T, Bt, E), B, C (T, Bt, N): (y (Bt, T, E),
    final state); each h_t written to states[t] (T, Bt, E, N) if given (the backward pass
    needs them), else only the last is kept."""
    outputs = []
    h = initial
    for t in range(delta.shape[0]):
        if resets is not None:
            h = h.masked_fill(resets[:, t, None, None], 0)
        decay = torch.mul(delta[t, :, :, None], A).exp_()                   # a_t (Bt, E, N)
        h = torch.addcmul(u[t, :, :, None] * B[t, :, None, :], decay, h,
                          out=None if states is None else states[t])
        outputs.append(torch.bmm(h, C[t, :, :, None])[..., 0])              # (Bt, E)
    return torch.stack(outputs, 1), h


def selective_scan_materialized(delta: Tensor, A: Tensor, u: Tensor, B: Tensor, C: Tensor,
                                initial: Tensor, resets: Tensor | None = None,
                                lengths: Tensor | None = None, *,
                                scan=linear_scan) -> tuple[Tensor, Tensor]:
    """The same from the materialised elements a = exp(δ ⊗ A), b = u ⊗ B (Bt, T, E, N) by
    `scan` (ops.scan's linear_scan, or linear_scan_sequential: the reference), autograd."""
    a = torch.exp(delta[..., None] * A)                                    # (Bt, T, E, N)
    b = u[..., None] * B[:, :, None, :]
    h = scan(a, b, initial, resets, lengths)
    return (h @ C[..., None])[..., 0], (h[:, -1] if delta.shape[1] else initial)


SELECTIVE_SCAN_IMPLS = {
    "fused": selective_scan,
    "parallel": selective_scan_materialized,
    "sequential": functools.partial(selective_scan_materialized, scan=linear_scan_sequential),
}


def check_selective_scan_impl(name: str) -> None:
    """A cell's `scan_impl` option: "fused" (the loop above, training), "parallel" (ops.scan's
    parallel scan over the materialised elements) or "sequential" (the reference loop)."""
    if name not in SELECTIVE_SCAN_IMPLS:
        raise ValueError(f"scan_impl must be one of {tuple(SELECTIVE_SCAN_IMPLS)}, got {name!r}")


class _SelectiveScan(torch.autograd.Function):
    """_scan_loop with its gradient: time-major inputs (each step's slice contiguous), the
    states kept (T, Bt, E, N) for the backward pass. Not itself differentiable."""

    @staticmethod
    def forward(ctx, delta, A, u, B, C, initial, resets):
        states = u.new_empty(u.shape[0], *initial.shape)                   # (T, Bt, E, N)
        y, final = _scan_loop(delta, A, u, B, C, initial, resets, states)
        ctx.save_for_backward(delta, u, B, C, A, initial, states)
        ctx.resets = resets
        return y, final.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y, grad_final):
        delta_t, u_t, B_t, C_t, A, initial, states = ctx.saved_tensors
        resets = ctx.resets
        steps = u_t.shape[0]
        grad_y = (u_t.new_zeros(u_t.shape) if grad_y is None
                  else grad_y.transpose(0, 1).contiguous())                 # (T, Bt, E)
        grad_A = torch.zeros_like(A)
        g = torch.zeros_like(initial) if grad_final is None else grad_final.clone()
        grad_delta, grad_u, grad_B, grad_C = [], [], [], []
        for t in range(steps - 1, -1, -1):
            g.addcmul_(grad_y[t, :, :, None], C_t[t, :, None, :])           # ∂L/∂h_t
            grad_C.append(torch.bmm(grad_y[t, :, None, :], states[t])[:, 0])
            grad_u.append(torch.bmm(g, B_t[t, :, :, None])[..., 0])
            grad_B.append(torch.bmm(u_t[t, :, None, :], g)[:, 0])
            before = states[t - 1] if t else initial
            if resets is not None:
                before = before.masked_fill(resets[:, t, None, None], 0)
            decay = torch.mul(delta_t[t, :, :, None], A).exp_()              # a_t (Bt, E, N)
            exponent_grad = (g * before).mul_(decay)                        # ∂L/∂(δ_t ⊗ A)
            grad_delta.append((exponent_grad * A).sum(-1))
            grad_A.add_(exponent_grad.mul_(delta_t[t, :, :, None]).sum(0))
            g.mul_(decay)                                                   # ∂L/∂h_{t-1}
            if resets is not None:
                g.masked_fill_(resets[:, t, None, None], 0)
        grads = [torch.stack(v[::-1]) for v in (grad_delta, grad_u, grad_B, grad_C)]  # (T, ...)
        return grads[0], grad_A, grads[1], grads[2], grads[3], g, None
