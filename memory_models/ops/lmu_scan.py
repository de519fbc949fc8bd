"""The LMU recurrence over a sequence, fused, with hand-written backpropagation through time.

    lmu_scan(cell, x, h, m, resets, lengths) -> (y, h_T, m_T)

computes what `memory_models.lmu.lmu_loop` (its reference: `LMUCell` step by step, through
autograd) computes, for the weights of `cell` (an LMUCell, or anything with its weights
e_x (1, I), e_h (1, H), e_m (1, N), A = Ā (N, N), B = B̄ (N, 1), W_x (H, I), W_h (H, H),
W_m (H, N)). Shapes: x (B, T, I), h, m (B, H), (B, N), resets (B, T) bool, lengths (B,):

    u_t = e_x·x_t + e_h·h_{t-1} + e_m·m_{t-1}          (h, m: zero where resets[:, t])
    m_t = Ā m_{t-1} + B̄ u_t
    h_t = tanh(W_x x_t + W_h h_{t-1} + W_m m_t);   y_t = h_t

and rows past lengths[b] keep their state. tests/test_ops_lmu_scan.py holds the two equal,
values and gradients.

Why fused: an autograd loop records ~15 small ops a step, and its backward replays them one by
one. Here the input terms [e_x; W_x] x_t of every step are one matmul before the loop, the
forward loop runs 3 small matmuls a step with no graph, the backward loop runs the transposed
recurrence, and every weight gradient is one large matmul over all B·T rows afterwards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def lmu_scan(cell, x: Tensor, h: Tensor, m: Tensor, resets: Tensor,
             lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """x (B, T, I) from state (h (B, H), m (B, N)) -> y (B, T, H), h_T, m_T (module docstring)."""
    steps = x.shape[1]
    if steps == 0:
        return x.new_zeros(x.shape[0], 0, h.shape[1]), h, m
    from_x = F.linear(x.transpose(0, 1), torch.cat([cell.e_x, cell.W_x]))     # (T, B, 1+H)
    time = torch.arange(steps, device=x.device)
    active = (time[:, None] < lengths) if bool((lengths < steps).any()) else None   # (T, B)
    y, h, m = _LMUScan.apply(from_x, h, m, cell.e_h, cell.W_h, cell.e_m, cell.A, cell.B,
                             cell.W_m, resets.T.contiguous(), active)
    return y.transpose(0, 1), h, m


class _LMUScan(torch.autograd.Function):
    """The recurrence, time-major. Inputs: from_x (T, B, 1+H) = [e_x·x_t | W_x x_t], h0 (B, H),
    m0 (B, N), the other weights, resets (T, B) bool, active (T, B) bool (t < lengths[b]) or
    None (every row runs every step). Outputs y (T, B, H) = h_t, and h_T, m_T.
    """

    @staticmethod
    def forward(ctx, from_x, h0, m0, e_h, W_h, e_m, A, B, W_m, resets, active):
        steps, batch, _ = from_x.shape
        hs = from_x.new_empty(steps + 1, batch, h0.shape[1])                     # h_0 .. h_T
        ms = from_x.new_empty(steps + 1, batch, m0.shape[1])                     # m_0 .. m_T
        us = from_x.new_empty(steps, batch, 1)                                   # u_1 .. u_T
        hs[0], ms[0] = h0, m0
        from_h = torch.cat([e_h, W_h]).T                                         # (H, 1+H)
        from_m = torch.cat([e_m, A]).T                                           # (N, 1+N)
        reset_at = resets.any(1).tolist()                  # python flags: no sync per step
        for t in range(steps):
            h, m = hs[t], ms[t]
            if reset_at[t]:
                h = torch.where(resets[t, :, None], 0.0, h)
                m = torch.where(resets[t, :, None], 0.0, m)
            zh = torch.addmm(from_x[t], h, from_h)                              # (B, 1+H)
            zm = torch.mm(m, from_m)                                             # (B, 1+N)
            u = torch.add(zh[:, :1], zm[:, :1], out=us[t])                       # (B, 1)
            m_t = torch.addcmul(zm[:, 1:], u, B.T, out=ms[t + 1])                # Ā m + B̄ u
            torch.tanh(torch.addmm(zh[:, 1:], m_t, W_m.T), out=hs[t + 1])
            if active is not None:
                torch.where(active[t, :, None], hs[t + 1], hs[t], out=hs[t + 1])
                torch.where(active[t, :, None], ms[t + 1], ms[t], out=ms[t + 1])
        ctx.save_for_backward(hs, ms, us, e_h, W_h, e_m, A, B, W_m, resets, active)
        return hs[1:], hs[-1].clone(), ms[-1].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y, grad_h, grad_m):
        hs, ms, us, e_h, W_h, e_m, A, B, W_m, resets, active = ctx.saved_tensors
        steps = us.shape[0]
        tanh_slope = 1 - hs[1:].square()                  # (T, B, H); rows past length unused
        grad_p = torch.empty_like(hs[1:])                  # dL/d(pre-tanh)      (T, B, H)
        grad_mt = torch.empty_like(ms[1:])                 # dL/dm_t inside step (T, B, N)
        grad_u = torch.empty_like(us)                      # dL/du_t             (T, B, 1)
        reset_at = resets.any(1).tolist()
        grad_h, grad_m = grad_h.clone(), grad_m.clone()    # w.r.t. the state after step t
        for t in reversed(range(steps)):
            grad_h = grad_h + grad_y[t]
            grad_h_step, grad_m_step = grad_h, grad_m
            if active is not None:                         # frozen rows pass the gradient by
                keep = active[t, :, None]
                grad_h_step, grad_h = torch.where(keep, grad_h, 0.0), torch.where(keep, 0.0, grad_h)
                grad_m_step, grad_m = torch.where(keep, grad_m, 0.0), torch.where(keep, 0.0, grad_m)
            g_p = torch.mul(grad_h_step, tanh_slope[t], out=grad_p[t])
            g_mt = torch.addmm(grad_m_step, g_p, W_m, out=grad_mt[t])
            g_u = torch.mm(g_mt, B, out=grad_u[t])
            grad_h_in = torch.addmm(g_u * e_h, g_p, W_h)                         # (B, H)
            grad_m_in = torch.addmm(g_u * e_m, g_mt, A)                          # (B, N)
            if reset_at[t]:
                grad_h_in = torch.where(resets[t, :, None], 0.0, grad_h_in)
                grad_m_in = torch.where(resets[t, :, None], 0.0, grad_m_in)
            if active is not None:
                grad_h, grad_m = grad_h + grad_h_in, grad_m + grad_m_in
            else:
                grad_h, grad_m = grad_h_in, grad_m_in
        # the state each step read (zero after a reset), flattened over all B*T rows
        read = (~resets)[..., None]
        h_in, m_in = (hs[:-1] * read).flatten(0, 1), (ms[:-1] * read).flatten(0, 1)
        g_zh = torch.cat([grad_u, grad_p], -1)                                   # (T, B, 1+H)
        g_zm = torch.cat([grad_u, grad_mt], -1).flatten(0, 1)                    # (T*B, 1+N)
        grad_from_h = g_zh.flatten(0, 1).T @ h_in                                # (1+H, H)
        grad_from_m = g_zm.T @ m_in                                              # (1+N, N)
        grad_W_m = grad_p.flatten(0, 1).T @ ms[1:].flatten(0, 1)                 # (H, N)
        grad_B = grad_mt.flatten(0, 1).T @ us.flatten(0, 1)                      # (N, 1)
        return (g_zh, grad_h, grad_m, grad_from_h[:1], grad_from_h[1:], grad_from_m[:1],
                grad_from_m[1:], grad_B, grad_W_m, None, None)
