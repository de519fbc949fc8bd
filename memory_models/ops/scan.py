"""The linear recurrence s_t = a_t ⊙ s_{t-1} + b_t along time, in parallel and sequentially.

    linear_scan(a, b, initial, resets=None, lengths=None) -> s          (parallel, log depth)
    linear_scan_sequential(...)                           -> s          (a loop over t; reference)

a, b: (B, T, *F) real or complex; initial s_{-1}: (B, *F); s: (B, T, *F), s[:, t] = s_t.

Resets and lengths are folded into the elements (a_t, b_t) before the scan:

- resets (B, T) bool: a reset at t replaces the state before t by zeros (the initial state of
  the cells that use this), so s_t = b_t. The element becomes (0, b_t): a zero decay is the
  reset flag carried inside the operator — any span that contains it composes to (0, ·) and
  nothing before it leaks through. (With a zero initial state this is the (a, b, r) operator
  of S5/Event-SSM, without the extra flag tensor.)
- initial: honoured as s_{-1} by folding it into the first element inside the scan,
  (a_0, b_0) -> (0, b_0 + a_0 · s_{-1}).
- lengths (B,) long: past the length the element is the identity (1, 0), so s[:, -1] is the
  state after lengths[b] steps.

The parallel scan composes elements with the associative operator

    (a1, b1) ∘ (a2, b2) = (a2·a1, a2·b1 + b2)        (apply 1, then 2)

as a work-efficient Blelloch scan on the time axis padded to a power of two: an up-sweep that
combines pairs at strides 1, 2, 4, ... and a down-sweep that hands each complete prefix to the
middle of the next block, 2·log2(T) rounds of in-place strided updates, O(T) work. Only products
of a_t are formed, never divided by, so decays that underflow to 0 stay exact (no cumprod /
divide underflow). The gradient is the same scan run backwards in time,

    g_t = ∂L/∂s_t + conj(a_{t+1}) g_{t+1},   ∂L/∂b_t = g_t,   ∂L/∂a_t = g_t · conj(s_{t-1}),

in a custom autograd Function, so no graph of the sweeps is stored.
"""

from __future__ import annotations

import torch
from torch import Tensor


def fold_elements(a: Tensor, b: Tensor, resets: Tensor | None = None,
                  lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Fold resets (a_t := 0) and lengths ((a_t, b_t) := (1, 0) past the length) into (a, b).

    Rows without resets and full lengths (the common case) cost nothing: no copy is made.
    """
    a, b = torch.broadcast_tensors(a, b)
    if resets is not None and bool(resets.any()):
        a = a.masked_fill(_expand(resets, a), 0)
    if lengths is not None and bool((lengths < a.shape[1]).any()):
        past = _expand(torch.arange(a.shape[1], device=a.device) >= lengths[:, None], a)
        a, b = a.masked_fill(past, 1), b.masked_fill(past, 0)
    return a, b


def linear_scan(a: Tensor, b: Tensor, initial: Tensor, resets: Tensor | None = None,
                lengths: Tensor | None = None) -> Tensor:
    """All states s_t = a_t s_{t-1} + b_t (B, T, *F) by a parallel (Blelloch) scan."""
    a, b = fold_elements(a, b, resets, lengths)
    if a.shape[1] == 0:
        return b
    return _LinearScan.apply(a, b, initial)


def linear_scan_sequential(a: Tensor, b: Tensor, initial: Tensor,
                           resets: Tensor | None = None,
                           lengths: Tensor | None = None) -> Tensor:
    """The same states by a loop over t, with resets and lengths applied literally."""
    a, b = torch.broadcast_tensors(a, b)
    states, s = [], initial
    for t, (a_t, b_t) in enumerate(zip(a.unbind(1), b.unbind(1))):
        before = s
        if resets is not None:
            before = torch.where(_expand(resets[:, t], s), torch.zeros_like(s), s)
        new = a_t * before + b_t
        if lengths is not None:                        # past the length nothing happens
            new = torch.where(_expand(t < lengths, s), new, s)
        s = new
        states.append(s)
    return torch.stack(states, dim=1) if states else b


class _LinearScan(torch.autograd.Function):
    """states (B, T, *F) of s_t = a_t s_{t-1} + b_t from s_{-1} = initial (B, *F).

    The initial state enters as the first element's input, (a_0, b_0) -> (0, b_0 + a_0 s_{-1});
    the backward pass is the same scan run backwards in time (module docstring).
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, initial: Tensor) -> Tensor:
        batch, steps = a.shape[:2]
        size = steps + _padding(steps)
        a_work = a.new_empty(batch, size, *a.shape[2:])
        b_work = b.new_empty(a_work.shape)
        a_work[:, 0], a_work[:, 1:steps], a_work[:, steps:] = 0, a[:, 1:], 1
        b_work[:, :steps], b_work[:, steps:] = b, 0
        b_work[:, 0].addcmul_(a[:, 0], initial)
        _blelloch_scan_(a_work, b_work)
        states = b_work[:, :steps]
        ctx.save_for_backward(a, initial, states)
        return states

    @staticmethod
    def backward(ctx, grad_states: Tensor):
        a, initial, states = ctx.saved_tensors
        batch, steps = a.shape[:2]
        pad = _padding(steps)
        # g_t = grad_t + conj(a_{t+1}) g_{t+1}: a reverse scan, padding first (= last in order)
        a_work = a.new_empty(batch, pad + steps, *a.shape[2:])
        a_work[:, :pad] = 1
        torch.conj_physical(a[:, 1:], out=a_work[:, pad:-1])
        a_work[:, -1] = 0
        g_work = grad_states.new_empty(batch, pad + steps, *a.shape[2:])
        g_work[:, :pad] = 0
        g_work[:, pad:] = grad_states
        _blelloch_scan_(a_work, g_work, reverse=True)
        g = g_work[:, pad:]
        # ∂L/∂a_t = g_t conj(s_{t-1}), written in place of the scan's spent decays
        grad_a = a_work[:, pad:]
        torch.mul(g[:, 1:], states[:, :-1].conj(), out=grad_a[:, 1:])
        torch.mul(g[:, 0], initial.conj(), out=grad_a[:, 0])
        return grad_a, g, g[:, 0] * a[:, 0].conj()


def _padding(steps: int) -> int:
    """Steps to add so that the time axis is a power of two."""
    return (1 << max(steps - 1, 0).bit_length()) - steps


def _blelloch_scan_(a: Tensor, b: Tensor, reverse: bool = False) -> None:
    """In place: b[:, t] := state after t of the scan of (a, b) (B, 2^k, *F) from zero.

    reverse=True scans from the last step to the first (s_t = a_t s_{t+1} + b_t): the same
    sweeps with every block mirrored, so no flipped copies are made. `a` is overwritten too.
    """
    size = a.shape[1]

    # In scan order a block of 2·stride steps is two halves; `ends` gives the array offsets of
    # the last step of each half (mirrored when reversed).
    def ends(stride):
        return (stride, 0) if reverse else (stride - 1, 2 * stride - 1)

    next_block, previous_block = (slice(None, -1), slice(1, None)) if reverse else \
        (slice(1, None), slice(None, -1))
    stride = 1
    while stride < size:   # up-sweep: each block's total lands at the end of its second half
        a_blocks = a.unflatten(1, (size // (2 * stride), 2 * stride))
        b_blocks = b.unflatten(1, (size // (2 * stride), 2 * stride))
        first, second = ends(stride)
        b_blocks[:, :, second].addcmul_(a_blocks[:, :, second], b_blocks[:, :, first])
        a_blocks[:, :, second].mul_(a_blocks[:, :, first])
        stride *= 2
    stride = size // 4
    while stride >= 1:     # down-sweep: a block's complete prefix finishes the next one's half
        a_blocks = a.unflatten(1, (size // (2 * stride), 2 * stride))
        b_blocks = b.unflatten(1, (size // (2 * stride), 2 * stride))
        first, second = ends(stride)
        b_blocks[:, next_block, first].addcmul_(a_blocks[:, next_block, first],
                                                b_blocks[:, previous_block, second])
        stride //= 2


def _expand(mask: Tensor, like: Tensor) -> Tensor:
    """(B, ...) mask -> broadcastable against like (B, ..., *F)."""
    return mask.view(*mask.shape, *([1] * (like.ndim - mask.ndim)))
