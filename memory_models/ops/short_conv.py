"""The short causal depthwise convolution of Mamba, Mamba-2, DeltaNet and Gated DeltaNet, with
its window of past inputs as state and resets that it never reaches across.

    y_t = b + Σ_{j<K} w_{K-1-j} ⊙ u_{t-j}          u, y (B, T, C); w (C, K); b (C,) or none

w is laid out as nn.Conv1d's depthwise weight: w_{K-1} takes u_t (lag 0), w_0 lag K − 1. The
inputs before u are the window (B, K − 1, C), oldest first: the state a cell keeps. A lag j
that reaches back across the start of the episode t is in contributes nothing (as if the
inputs before an episode were 0, the initial window).

    episode_positions(resets)                 steps since each step's episode began, or None
    causal_conv(u, window, weight, bias, positions)           -> y      (parallel: K shifted
                                                                multiply-adds, no graph per tap)
    window_after(u, window, positions, lengths)              -> the window after lengths[b]
    conv_step(u_t, window, weight, bias)                     -> (y_t, next window)
    causal_conv_sequential(u, window, weight, bias, resets)  -> (y, final window)  (reference)
"""

from __future__ import annotations

import torch
from torch import Tensor

NO_RESET = torch.iinfo(torch.long).max // 2      # episode position of steps before any reset


def episode_positions(resets: Tensor) -> Tensor | None:
    """Steps since the episode began (B, T) long: 0 at a reset, then 1, 2, ...; NO_RESET (every
    earlier input is of this episode) before a row's first reset. None without resets."""
    if not bool(resets.any()):
        return None
    time = torch.arange(resets.shape[1], device=resets.device)
    last_start = torch.cummax(torch.where(resets, time, -1), dim=1).values          # (B, T)
    return torch.where(last_start >= 0, time - last_start, NO_RESET)


def causal_conv(u: Tensor, window: Tensor, weight: Tensor, bias: Tensor | None,
                positions: Tensor | None) -> Tensor:
    """y (B, T, C) of the module docstring for u (B, T, C) after window (B, K-1, C), weight
    (C, K), bias (C,) or None; tap k (lag K-1-k) is dropped where positions[b, t] < K-1-k."""
    kernel = weight.shape[1]
    padded = torch.cat([window, u], 1) if kernel > 1 else u               # (B, K-1+T, C)
    keep = None
    if positions is not None:                                             # (B, T, K): tap k
        lags = torch.arange(kernel - 1, -1, -1, device=u.device)          # has lag K-1-k
        keep = (positions[..., None] >= lags).to(u.dtype)
    return _CausalConv.apply(padded, weight, bias, keep)


class _CausalConv(torch.autograd.Function):
    """out_t = b + Σ_k w_k ⊙ p_{t+k} (⊙ keep_{t,k}) over padded p (B, K-1+T, C): K in-place
    multiply-adds into one buffer, no graph per tap (autograd of K shifted slices allocates and
    zeroes a gradient of the whole padded input per tap); the gradients are the same sums
    transposed: ∂p_{t+k} += w_k ⊙ g_t (⊙ keep), ∂w_k = Σ_{b,t} g_t ⊙ p_{t+k} (⊙ keep),
    ∂b = Σ g. Not itself differentiable."""

    @staticmethod
    def forward(ctx, padded: Tensor, weight: Tensor, bias: Tensor | None, keep: Tensor | None):
        kernel = weight.shape[1]
        steps = padded.shape[1] - kernel + 1
        last = padded[:, kernel - 1:]                                     # lag 0: always kept
        out = torch.mul(last, weight[:, -1]) if bias is None else \
            torch.addcmul(bias, last, weight[:, -1])
        for k in range(kernel - 1):
            tap = padded[:, k:k + steps]
            out.addcmul_(tap if keep is None else tap * keep[..., k, None], weight[:, k])
        ctx.save_for_backward(padded, weight, keep)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        padded, weight, keep = ctx.saved_tensors
        kernel = weight.shape[1]
        steps = padded.shape[1] - kernel + 1
        grad_padded = torch.zeros_like(padded) if ctx.needs_input_grad[0] else None
        grad_weight = torch.empty_like(weight)
        for k in range(kernel):
            g = grad if keep is None or k == kernel - 1 else grad * keep[..., k, None]
            if grad_padded is not None:
                grad_padded[:, k:k + steps].addcmul_(g, weight[:, k])
            grad_weight[:, k] = (g * padded[:, k:k + steps]).sum((0, 1))
        grad_bias = grad.sum((0, 1)) if ctx.has_bias else None
        return grad_padded, grad_weight, grad_bias, None


def window_after(u: Tensor, window: Tensor, positions: Tensor | None,
                 lengths: Tensor) -> Tensor:
    """The window after lengths[b] steps (B, K-1, C): the last K−1 inputs up to step
    lengths[b] − 1, those from before that step's episode zeroed (window itself for 0 steps)."""
    kernel_less_one = window.shape[1]
    padded = torch.cat([window, u], 1)                                    # (B, K-1+T, C)
    offsets = torch.arange(kernel_less_one, device=u.device)
    index = (lengths[:, None] + offsets)[..., None].expand(-1, -1, u.shape[-1])
    last = padded.gather(1, index)                                        # (B, K-1, C)
    if positions is None:
        return last
    position = positions.gather(1, (lengths - 1).clamp(min=0)[:, None])   # (B, 1)
    position = torch.where(lengths[:, None] > 0, position, NO_RESET)
    lag = kernel_less_one - 1 - offsets                                   # of each entry
    return last * (position >= lag)[..., None]


def conv_step(u_t: Tensor, window: Tensor, weight: Tensor,
              bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """One step of causal_conv from a window already reset: (y_t (B, C), the next window
    (B, K-1, C))."""
    if weight.shape[1] == 1:
        out = u_t * weight[:, 0]
        return (out if bias is None else out + bias), window
    padded = torch.cat([window, u_t[:, None]], 1)                         # (B, K, C)
    out = (padded * weight.T).sum(1)
    return (out if bias is None else out + bias), padded[:, 1:]


def causal_conv_sequential(u: Tensor, window: Tensor, weight: Tensor, bias: Tensor | None,
                           resets: Tensor) -> tuple[Tensor, Tensor]:
    """The reference: conv_step over t, the window zeroed at each reset; (y (B, T, C), the
    window after the last step)."""
    outputs = []
    for t in range(u.shape[1]):
        window = torch.where(resets[:, t, None, None], torch.zeros_like(window), window)
        y_t, window = conv_step(u[:, t], window, weight, bias)
        outputs.append(y_t)
    y = torch.stack(outputs, 1) if outputs else u.new_empty(u.shape[0], 0, weight.shape[0])
    return y, window
