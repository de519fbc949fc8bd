"""The sLSTM recurrence over a sequence, fused, with hand-written backpropagation through time.

    slstm_scan(from_x, recurrent, h, c, n, m, resets, lengths, forget_gate) -> (y, h, c, n, m)

computes what a loop of `memory_models.xlstm.slstm_step` through autograd computes (the
reference, `SLSTM(scan_impl="sequential")`). Shapes: from_x = W x_t + b (T, B, NH, 4D),
time-major (the projection of x.transpose(0, 1) lays it out so), per head [ĩ; f̃; z̃; õ];
recurrent R (NH, D, 4D); h, c, n, m (B, H), H = NH·D; resets (B, T) bool; lengths (B,);
forget_gate "sigmoid" (log f = log σ(f̃)) or "exp" (log f = f̃):

    [ĩ, f̃, z̃, õ]_t = from_x_t + R h_{t-1}        (h, c, n, m: zero where resets[:, t])
    m_t = max(log f_t + m_{t-1}, ĩ_t),  decay = e^{log f_t + m_{t-1} − m_t},  gain = e^{ĩ_t − m_t}
    c_t = decay c_{t-1} + gain tanh(z̃_t),  n_t = decay n_{t-1} + gain,  h_t = σ(õ_t) c_t / n_t

and rows past lengths[b] keep their state (and output it); y (B, T, H) = h_t.
tests/test_xlstm.py holds the two equal, values and gradients.

Why fused: an autograd loop records ~20 small ops a step and its backward replays ~40. Here
the state and what is saved are head-major, (T, NH, B, ·), so that a step's recurrent term is
one batched matmul (heads as the batch) written straight into the saved pre-activations (the
input term is read through a transposed view of from_x, which is never copied); the forward
loop keeps the gates it computed (gain, decay, tanh z̃, σ(õ)); every factor of the backward
that does not depend on the incoming gradient is computed for all steps at once before the
backward loop, which then runs ~18 multiply-adds and one batched matmul a step; R's gradient
is one batched matmul over all T·B rows afterwards. torch.maximum's gradient convention is
kept: a tie in m's max splits the gradient in half.
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
    steps, batch, heads, _ = from_x.shape
    hidden = h.shape[1]
    if steps == 0:
        return from_x.new_zeros(batch, 0, hidden), h, c, n, m
    head_major = lambda s: s.view(batch, heads, -1).transpose(0, 1)         # noqa: E731
    time = torch.arange(steps, device=from_x.device)
    active = (time[:, None] < lengths) if bool((lengths < steps).any()) else None  # (T, B)
    resets = resets.T.contiguous() if bool(resets.any()) else None                  # (T, B)
    inputs = (from_x, recurrent,
              *(head_major(s).contiguous() for s in (h, c, n, m)))
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        hs, *final = _SLSTMScan.apply(*inputs, resets, active, forget_gate == "exp")
    else:                                 # no graph: nothing kept for a backward pass
        states = _forward(*inputs, resets, active, forget_gate == "exp", keep=False)[0]
        hs, final = states[0, 1:], states[1:, -1]
    y = hs.permute(2, 0, 1, 3).reshape(batch, steps, hidden)
    return y, y[:, -1], *(s.transpose(0, 1).reshape(batch, hidden) for s in final)


class _SLSTMScan(torch.autograd.Function):
    """Head-major recurrence. Inputs: from_x (T, B, NH, 4D), R (NH, D, 4D), h0, c0, n0, m0
    (NH, B, D), resets (T, B) bool or None (no reset), active (T, B) bool (t < lengths[b])
    or None (every row runs every step), exp_forget. Outputs: h_1..h_T (T, NH, B, D) and
    c_T, n_T, m_T (NH, B, D) (h_T is the last output)."""

    @staticmethod
    def forward(ctx, from_x, R, h0, c0, n0, m0, resets, active, exp_forget):  # noqa: D102
        states, preact, gates, log_f = _forward(from_x, R, h0, c0, n0, m0, resets, active,
                                                exp_forget, keep=True)
        ctx.save_for_backward(states, preact, gates, log_f, R, resets, active)
        ctx.exp_forget = exp_forget
        return states[0, 1:], states[1, -1], states[2, -1], states[3, -1]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y, grad_c, grad_n, grad_m):
        states, preact, gates, log_f, R, resets, active = ctx.saved_tensors
        steps, heads, batch, _, size = preact.shape
        # the state each step read (zero after a reset) and the one it wrote, (T, NH, B, D)
        read = states[:, :-1] if resets is None else \
            states[:, :-1].masked_fill(resets[None, :, None, :, None], 0.0)
        h0, c0, n0, m0 = read.unbind(0)
        h1, c1, n1 = states[0, 1:], states[1, 1:], states[2, 1:]
        gain, decay, z, o = gates.unbind(-2)
        igate, forget_m = preact[..., 0, :], preact[..., 1, :]            # ĩ, log f + m_{t-1}
        # the factors that do not depend on the incoming gradient, for all steps at once
        inverse_n = n1.reciprocal()
        to_c = o * inverse_n                                   # ∂h/∂c
        to_n = h1 * inverse_n                                  # −∂h/∂n
        to_o = h1 * (1 - o)                                    # ∂h/∂õ
        c0_decay, n0_decay, z_gain = c0 * decay, n0 * decay, z * gain
        to_z = gain * (1 - z * z)                              # ∂c/∂z̃ (per unit of ∂L/∂c)
        to_forget = 0.5 + 0.5 * torch.sign(forget_m - igate)  # the max's split of m's
        to_input = 1 - to_forget                               # gradient (a tie: half each)
        # d log σ(f̃) / df̃ = 1 − σ(f̃) = −expm1(log f)
        to_f = None if ctx.exp_forget else torch.expm1(log_f).neg_()
        del read, inverse_n

        grad_pre = preact.new_empty(steps, batch, heads, 4, size)   # from_x's layout
        R_T = R.transpose(1, 2).contiguous()                   # (NH, 4D, D)
        grad_h = grad_y.new_zeros(heads, batch, size)
        grad_c, grad_n, grad_m = grad_c.clone(), grad_n.clone(), grad_m.clone()
        reset_at = resets.any(1).tolist() if resets is not None else [False] * steps
        for t in reversed(range(steps)):
            grad_h = grad_h + grad_y[t]
            if active is not None:            # frozen rows pass the gradient by (below)
                held = ~active[t, :, None]
                passed = (grad_h, grad_c, grad_n, grad_m)
            g_pre = grad_pre[t].transpose(0, 1)                            # (NH, B, 4, D)
            g_i, g_f, g_z, g_o = g_pre.unbind(2)
            # h = o c / n
            grad_c = torch.addcmul(grad_c, grad_h, to_c[t])
            grad_n = torch.addcmul(grad_n, grad_h, to_n[t], value=-1)
            torch.mul(grad_h, to_o[t], out=g_o)
            # c = decay c0 + gain z,  n = decay n0 + gain;  decay, gain = e^{· − m_new}
            torch.mul(grad_c, to_z[t], out=g_z)
            through_decay = torch.addcmul(grad_c * c0_decay[t], grad_n, n0_decay[t])
            through_gain = torch.addcmul(grad_n * gain[t], grad_c, z_gain[t])
            grad_m_new = grad_m - through_decay - through_gain
            grad_forget_m = torch.addcmul(through_decay, grad_m_new, to_forget[t])
            torch.addcmul(through_gain, grad_m_new, to_input[t], out=g_i)
            if to_f is None:
                g_f.copy_(grad_forget_m)
            else:
                torch.mul(grad_forget_m, to_f[t], out=g_f)
            grad_h = torch.bmm(g_pre.reshape(heads, batch, 4 * size), R_T)      # (NH, B, D)
            grad_c, grad_n, grad_m = grad_c * decay[t], grad_n * decay[t], grad_forget_m
            if reset_at[t]:                   # the state read was the (constant) zero state
                zero = resets[t, :, None]
                grad_h, grad_c, grad_n, grad_m = (g.masked_fill(zero, 0.0)
                                                  for g in (grad_h, grad_c, grad_n, grad_m))
            if active is not None:
                grad_h, grad_c, grad_n, grad_m = (torch.where(held, p, g) for g, p in zip(
                    (grad_h, grad_c, grad_n, grad_m), passed))
        if active is not None:                # a frozen row's step took nothing
            grad_pre.masked_fill_(~active[..., None, None, None], 0.0)
        # R's gradient: Σ_t h_{t-1}ᵀ ∂L/∂preact_t per head, over all T·B rows at once
        grad_R = torch.bmm(h0.permute(1, 3, 0, 2).flatten(2),
                           grad_pre.permute(2, 0, 1, 3, 4).reshape(heads, steps * batch, -1))
        return (grad_pre.flatten(-2), grad_R, grad_h, grad_c, grad_n, grad_m, None, None, None)


def _forward(from_x, R, h0, c0, n0, m0, resets, active, exp_forget: bool,
             keep: bool) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """The forward loop (module docstring): states (4, T+1, NH, B, D) of h, c, n, m (row 0:
    the given state), and, if `keep`, every step's pre-activations (T, NH, B, 4, D) with f̃
    replaced by log f + m_{t-1}, and gates gain, decay, tanh z̃, σ(õ) (T, NH, B, 4, D) for
    the backward (else one step's, reused), and log σ(f̃) (T, NH, B, D) (None for the exp
    gate or without `keep`). m_t is one max over the adjacent pair (ĩ, log f + m_{t-1}) and
    (gain, decay) one exp of the pair minus m_t."""
    steps, batch, heads, _ = from_x.shape
    size = R.shape[1]
    states = from_x.new_empty(4, steps + 1, heads, batch, size)
    for k, s in enumerate((h0, c0, n0, m0)):
        states[k, 0] = s
    kept = steps if keep else 1
    preact = from_x.new_empty(kept, heads, batch, 4, size)   # ĩ, log f + m_{t-1}, z̃, õ
    gates = from_x.new_empty(kept, heads, batch, 4, size)    # gain, decay, tanh z̃, σ(õ)
    hs, cs, ns, ms = (s.unbind(0) for s in states)
    log_fs = []
    reset_at = resets.any(1).tolist() if resets is not None else [False] * steps
    for t in range(steps):
        h, c, n, m = _before((hs[t], cs[t], ns[t], ms[t]), resets, t, reset_at[t])
        slot = t if keep else 0
        pre, gate = preact[slot], gates[slot]
        torch.baddbmm(from_x[t].transpose(0, 1), h, R, out=pre.view(heads, batch, 4 * size))
        fgate = pre[:, :, 1]
        log_f = _log_forget(fgate, exp_forget)
        if keep and not exp_forget:
            log_fs.append(log_f)
        torch.add(log_f, m, out=fgate)                                      # log f + m_{t-1}
        m_new = torch.amax(pre[:, :, :2], 2, out=ms[t + 1])                 # (NH, B, D)
        torch.exp(pre[:, :, :2] - m_new[:, :, None], out=gate[:, :, :2])    # gain, decay
        gain, decay, z, o = gate.unbind(2)
        c_new = torch.addcmul(decay * c, gain, torch.tanh(pre[:, :, 2], out=z), out=cs[t + 1])
        n_new = torch.addcmul(gain, decay, n, out=ns[t + 1])
        torch.mul(torch.sigmoid(pre[:, :, 3], out=o), c_new / n_new, out=hs[t + 1])
        if active is not None:
            held = ~active[t, :, None]
            for s in (hs, cs, ns, ms):
                torch.where(held, s[t], s[t + 1], out=s[t + 1])
    return states, preact, gates, (torch.stack(log_fs) if log_fs else None)


def _log_forget(fgate: Tensor, exp_forget: bool) -> Tensor:
    return fgate if exp_forget else F.logsigmoid(fgate)


def _before(state: tuple[Tensor, ...], resets: Tensor | None, t: int,
            any_reset: bool) -> tuple[Tensor, ...]:
    """h, c, n, m (NH, B, D) read by step t: the state, zero where resets[t] (B,)."""
    if not any_reset:
        return state
    zero = resets[t, :, None]
    return tuple(s.masked_fill(zero, 0.0) for s in state)
