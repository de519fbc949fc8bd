"""The sLSTM recurrence over a sequence, fused, with hand-written backpropagation through time.

    slstm_scan(from_x, recurrent, h, c, n, m, resets, lengths, forget_gate) -> (y, h, c, n, m)

computes what a loop of `memory_models.xlstm.slstm_step` through autograd computes (the
reference, `SLSTM(scan_impl="sequential")`). Shapes: from_x = W x_t + b (T, B, NH, 4D) time-major,
per head [ĩ; f̃; z̃; õ]; recurrent R (NH, D, 4D); h, c, n, m (B, H), H = NH·D; resets (B, T)
bool; lengths (B,); forget_gate "sigmoid" (log f = log σ(f̃)) or "exp" (log f = f̃):

    [ĩ, f̃, z̃, õ]_t = from_x_t + R h_{t-1}        (h, c, n, m: zero where resets[:, t])
    m_t = max(log f_t + m_{t-1}, ĩ_t),  decay = e^{log f_t + m_{t-1} − m_t},  gain = e^{ĩ_t − m_t}
    c_t = decay c_{t-1} + gain tanh(z̃_t),  n_t = decay n_{t-1} + gain,  h_t = σ(õ_t) c_t / n_t

and rows past lengths[b] keep their state; y (B, T, H) = h_t. tests/test_xlstm.py holds the two
equal, values and gradients.

Why fused: an autograd loop records ~20 small ops a step and its backward replays ~40; here the
forward loop runs one batched matmul (heads as the batch) and the pointwise ops a step with no
graph, the backward loop the transposed recurrence, and R's gradient is one batched matmul over
all T·B rows afterwards. torch.maximum's gradient convention is kept: a tie splits it in half.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def slstm_scan(from_x: Tensor, recurrent: Tensor, h: Tensor, c: Tensor, n: Tensor, m: Tensor,
               resets: Tensor, lengths: Tensor,
               forget_gate: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """from_x (T, B, NH, 4D) from state h, c, n, m (B, H) -> y (B, T, H) and the state after
    lengths[b] steps (module docstring)."""
    steps, batch = from_x.shape[:2]
    if steps == 0:
        return from_x.new_zeros(batch, 0, h.shape[1]), h, c, n, m
    time = torch.arange(steps, device=from_x.device)
    active = (time[:, None] < lengths) if bool((lengths < steps).any()) else None  # (T, B)
    states = _SLSTMScan.apply(from_x, recurrent, h, c, n, m, resets.T.contiguous(), active,
                              forget_gate == "exp")
    return states[0].transpose(0, 1), *(s[-1] for s in states)     # h_T = y's last row


def _log_forget(fgate: Tensor, exp_forget: bool) -> Tensor:
    return fgate if exp_forget else F.logsigmoid(fgate)


class _SLSTMScan(torch.autograd.Function):
    """Time-major recurrence. Inputs: from_x (T, B, NH, 4D), R (NH, D, 4D), h0, c0, n0, m0
    (B, H), resets (T, B) bool, active (T, B) bool (t < lengths[b]) or None (every row runs
    every step), exp_forget. Outputs: h_1..h_T (T, B, H) and the states (T+1, B, H) of c, n,
    m whose last row is the state after the sequence (the others are the backward's)."""

    @staticmethod
    def forward(ctx, from_x, R, h0, c0, n0, m0, resets, active, exp_forget):
        steps, batch, heads, _ = from_x.shape
        size = R.shape[1]
        states = from_x.new_empty(4, steps + 1, batch, heads, size)   # h, c, n, m; row 0: given
        for k, s in enumerate((h0, c0, n0, m0)):
            states[k, 0] = s.view(batch, heads, size)
        preact = from_x.new_empty(steps, batch, heads, 4, size)          # ĩ, f̃, z̃, õ
        reset_at = resets.any(1).tolist()                 # python flags: no sync per step
        for t in range(steps):
            h, c, n, m = _before(states[:, t], resets[t], reset_at[t])
            raw = torch.baddbmm(from_x[t].transpose(0, 1), h.transpose(0, 1), R)  # (NH, B, 4D)
            pre = preact[t]
            pre.copy_(raw.transpose(0, 1).view(batch, heads, 4, size))
            igate, fgate, cell_input, ogate = pre.unbind(2)                     # (B, NH, D)
            forget_m = _log_forget(fgate, exp_forget) + m
            m_new = torch.maximum(forget_m, igate, out=states[3, t + 1])
            decay, gain = torch.exp(forget_m - m_new), torch.exp(igate - m_new)
            c_new = torch.addcmul(decay * c, gain, torch.tanh(cell_input), out=states[1, t + 1])
            n_new = torch.addcmul(gain, decay, n, out=states[2, t + 1])
            torch.mul(torch.sigmoid(ogate), c_new / n_new, out=states[0, t + 1])
            if active is not None:
                keep = active[t, :, None, None]
                for k in range(4):
                    torch.where(keep, states[k, t + 1], states[k, t], out=states[k, t + 1])
        ctx.save_for_backward(states, preact, R, resets, active)
        ctx.exp_forget = exp_forget
        flat = states.flatten(-2)                                           # (4, T+1, B, H)
        return flat[0, 1:], flat[1], flat[2], flat[3]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y, grad_cs, grad_ns, grad_ms):
        states, preact, R, resets, active = ctx.saved_tensors
        steps, batch, heads, _, size = preact.shape
        shape = (batch, heads, size)
        # gradients w.r.t. the state after step t (only the final state's reach the outputs)
        grad_h = grad_y.new_zeros(shape)
        grad_c, grad_n, grad_m = (g[-1].reshape(shape).clone() for g in (grad_cs, grad_ns,
                                                                         grad_ms))
        grad_y = grad_y.view(steps, *shape)
        grad_pre = torch.empty_like(preact)                                 # (T, B, NH, 4, D)
        R_T = R.transpose(1, 2)                                             # (NH, 4D, D)
        reset_at = resets.any(1).tolist()
        for t in reversed(range(steps)):
            grad_h = grad_h + grad_y[t]
            if active is not None:            # frozen rows pass the gradient by
                keep = active[t, :, None, None]
                passed = [torch.where(keep, 0.0, g) for g in (grad_h, grad_c, grad_n, grad_m)]
                grad_h, grad_c, grad_n, grad_m = (torch.where(keep, g, 0.0)
                                                  for g in (grad_h, grad_c, grad_n, grad_m))
            h0, c0, n0, m0 = _before(states[:, t], resets[t], reset_at[t])
            h1, c1, n1 = states[0, t + 1], states[1, t + 1], states[2, t + 1]
            igate, fgate, cell_input, ogate = preact[t].unbind(2)
            forget_m = _log_forget(fgate, ctx.exp_forget) + m0
            m_new = torch.maximum(forget_m, igate)
            decay, gain = torch.exp(forget_m - m_new), torch.exp(igate - m_new)
            z, o = torch.tanh(cell_input), torch.sigmoid(ogate)
            inverse_n = n1.reciprocal()
            # h = o c / n
            grad_c = torch.addcmul(grad_c, grad_h, o * inverse_n)
            grad_n = grad_n - grad_h * h1 * inverse_n
            g_pre = grad_pre[t]
            g_i, g_f, g_z, g_o = g_pre.unbind(2)
            torch.mul(grad_h * c1 * inverse_n, o * (1 - o), out=g_o)
            # c = decay c0 + gain z,  n = decay n0 + gain
            grad_decay = torch.addcmul(grad_c * c0, grad_n, n0)
            grad_gain = torch.addcmul(grad_n, grad_c, z)
            torch.mul(grad_c * gain, 1 - z * z, out=g_z)
            # decay = e^{forget_m − m_new}, gain = e^{ĩ − m_new}, m_new = max(forget_m, ĩ)
            through_decay, through_gain = grad_decay * decay, grad_gain * gain
            grad_m_new = grad_m - through_decay - through_gain
            to_forget = (forget_m > igate).to(m_new.dtype) + 0.5 * (forget_m == igate)
            grad_forget_m = torch.addcmul(through_decay, grad_m_new, to_forget)
            torch.addcmul(through_gain, grad_m_new, 1 - to_forget, out=g_i)
            if ctx.exp_forget:
                g_f.copy_(grad_forget_m)
            else:
                torch.mul(grad_forget_m, torch.sigmoid(-fgate), out=g_f)
            grad_h = torch.bmm(g_pre.view(batch, heads, 4 * size).transpose(0, 1), R_T) \
                .transpose(0, 1)                                            # (B, NH, D)
            grad_c, grad_n, grad_m = grad_c * decay, grad_n * decay, grad_forget_m
            if reset_at[t]:                   # the state read was the (constant) zero state
                grad_h, grad_c, grad_n, grad_m = (torch.where(resets[t, :, None, None], 0.0, g)
                                                  for g in (grad_h, grad_c, grad_n, grad_m))
            if active is not None:
                grad_h, grad_c, grad_n, grad_m = (g + p for g, p in zip(
                    (grad_h, grad_c, grad_n, grad_m), passed))
        # R's gradient: Σ_t h_{t-1}ᵀ ∂L/∂preact_t per head, over all T·B rows at once
        read = states[0, :-1].masked_fill(resets[..., None, None], 0.0)     # (T, B, NH, D)
        grad_R = torch.bmm(read.permute(2, 3, 0, 1).flatten(2),
                           grad_pre.flatten(-2).permute(2, 0, 1, 3).flatten(1, 2))  # (NH, D, 4D)
        flat = (batch, heads * size)
        return (grad_pre.flatten(-2), grad_R, grad_h.reshape(flat), grad_c.reshape(flat),
                grad_n.reshape(flat), grad_m.reshape(flat), None, None, None)


def _before(state: Tensor, resets: Tensor, any_reset: bool) -> tuple[Tensor, ...]:
    """h, c, n, m (B, NH, D) read by a step: state (4, B, NH, D), zero where resets (B,)."""
    if any_reset:
        state = state.masked_fill(resets[None, :, None, None], 0.0)
    return state.unbind(0)
