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
- initial: honoured as s_{-1} by the first step of the scan itself, s_0 = a_0 · s_{-1} + b_0.
- lengths (B,) long: past the length the element is the identity (1, 0), so s[:, -1] is the
  state after lengths[b] steps.
  Without resets and with full lengths nothing is folded (no copies).

The parallel scan composes elements with the associative operator

    (a1, b1) ∘ (a2, b2) = (a2·a1, a2·b1 + b2)        (apply 1, then 2)

by odd-even recursion (`_scan_into`): neighbouring steps combine into T/2 elements, whose scan
(the same recursion) gives every second state; each other state is one step on from its
neighbour. log2(T) levels of whole-tensor ops on the strided time axis, O(T) work, any T (no
padding), every state written in place into the output, run over blocks of batch rows of a
few MiB so that the log2(T) passes stay in cache. Only products of a_t are formed, never
divided by, so decays that underflow to 0 stay exact (no cumprod / divide underflow). The
gradient is the same scan run backwards in time,

    g_t = ∂L/∂s_t + conj(a_{t+1}) g_{t+1},   ∂L/∂b_t = g_t,   ∂L/∂a_t = g_t · conj(s_{t-1}),

in a custom autograd Function, so no graph of the sweeps is stored.

On the CPU, once one step's slice (B·F elements) holds LOOP_MIN_STEP_ELEMENTS, the same
Function runs both scans as an in-place loop over t instead (`_loop_into`: one fused
multiply-add per step over all rows, the least memory traffic): at the PPO learner's shape
(157 rows x 53 steps x 256) it is ~2x faster than the odd-even recursion forward and backward.
Odd-even stays for GPUs and for many small steps, where a launch per step would dominate.
"""

from __future__ import annotations

import torch
from torch import Tensor

BLOCK_BYTES = 2 << 20          # batch rows per block of the parallel scan: about this many bytes
LOOP_MIN_STEP_ELEMENTS = 4096  # CPU: a step's slice (B·F) from which the loop beats odd-even


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
    """All states s_t = a_t s_{t-1} + b_t (B, T, *F) by a parallel (odd-even) scan."""
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

    The backward pass is the same scan run backwards in time (module docstring); it is not
    itself differentiable.
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, initial: Tensor) -> Tensor:
        states = b.new_empty(b.shape)
        scan_into, blocks = _scan_kernel(b)
        for rows in blocks:
            scan_into(a[rows], b[rows], states[rows], initial[rows])
        ctx.save_for_backward(a, initial, states)
        return states

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_states: Tensor):
        a, initial, states = ctx.saved_tensors
        g = grad_states.new_empty(a.shape)
        grad_a = a.new_empty(a.shape)
        scan_into, blocks = _scan_kernel(a)
        for rows in blocks:
            # g_t = grad_t + conj(a_{t+1}) g_{t+1} back from g_{T-1} = grad_{T-1}: the reverse
            # scan of the steps t < T-1 with decays conj(a_{t+1}) from the state g_{T-1}
            decays = a[rows, 1:]
            if decays.is_complex():
                decays = _conj_physical(decays)
            g[rows, -1] = grad_states[rows, -1]
            scan_into(decays, grad_states[rows, :-1], g[rows, :-1], g[rows, -1], reverse=True)
            # ∂L/∂a_t = g_t conj(s_{t-1})
            torch.mul(g[rows, 1:], states[rows, :-1].conj(), out=grad_a[rows, 1:])
        torch.mul(g[:, 0], initial.conj(), out=grad_a[:, 0])
        return grad_a, g, g[:, 0] * a[:, 0].conj()


def _conj_physical(x: Tensor) -> Tensor:
    """conj(x) in memory, computed once per stored element: an expanded x (stride 0, e.g. a
    decay shared by every row and step) is conjugated on one slice and expanded again."""
    compact = x[tuple(slice(0, 1) if stride == 0 else slice(None) for stride in x.stride())]
    return torch.conj_physical(compact).expand(x.shape)


def _row_blocks(like: Tensor) -> list[slice]:
    """Slices of the batch dimension of about BLOCK_BYTES of `like` each: the scan's log2(T)
    passes then run over a block that stays in cache instead of streaming the whole tensor."""
    row_bytes = max(like[:1].numel() * like.element_size(), 1)
    rows = max(1, BLOCK_BYTES // row_bytes)
    return [slice(start, start + rows) for start in range(0, like.shape[0], rows)]


def _scan_into(a: Tensor, b: Tensor, out: Tensor, initial: Tensor | None = None,
               reverse: bool = False) -> None:
    """out[:, t] := s_t for s_t = a_t s_{t-1} + b_t from s_{-1} = initial (zero if None);
    reverse=True runs from the last step, s_t = a_t s_{t+1} + b_t from s_T = initial.

    Odd-even recursion: neighbouring steps (first, second in scan order) combine into one
    element, (a_2·a_1, a_2·b_1 + b_2); the half-length scan of those gives the state at every
    second step, written straight into its strided slots of `out`; each first step is then
    one step on from the second step of the pair before it. log2(T) levels of whole-tensor
    ops, O(T) work; no padding, no copies of the inputs, nothing is divided.
    """
    steps = a.shape[1]
    half = steps // 2
    if half == 0:
        if steps:
            _one_step(a[:, 0], b[:, 0], initial, out[:, 0])
        return
    leftover = steps - 2 * half            # an odd step, last in scan order
    if reverse:                            # ascending pairs (t, t+1) with t+1 first in scan order
        first, second = slice(leftover + 1, steps, 2), slice(leftover, steps, 2)
    else:
        first, second = slice(0, 2 * half, 2), slice(1, 2 * half, 2)
    a_first, a_second, b_first = a[:, first], a[:, second], b[:, first]
    a_pairs = a_second * a_first                                            # (B, T/2, *F)
    b_pairs = torch.addcmul(b[:, second], a_second, b_first)
    edge = -1 if reverse else 0            # the pair that meets the initial state
    if initial is not None:
        b_pairs[:, edge].addcmul_(a_pairs[:, edge], initial)
    out_second, out_first = out[:, second], out[:, first]
    _scan_into(a_pairs, b_pairs, out_second, reverse=reverse)
    after, before = (slice(None, -1), slice(1, None)) if reverse else \
        (slice(1, None), slice(None, -1))
    torch.addcmul(b_first[:, after], a_first[:, after], out_second[:, before],
                  out=out_first[:, after])
    _one_step(a_first[:, edge], b_first[:, edge], initial, out_first[:, edge])
    if leftover:
        last, previous = (0, 1) if reverse else (-1, -2)
        _one_step(a[:, last], b[:, last], out[:, previous], out[:, last])


def _loop_into(a: Tensor, b: Tensor, out: Tensor, initial: Tensor | None = None,
               reverse: bool = False) -> None:
    """What `_scan_into` computes, by a loop over t: one fused multiply-add per step, each
    written in place. T whole-slice ops and the least memory traffic (read a_t, b_t, s_{t-1},
    write s_t): on the CPU the faster form once a step's slice holds LOOP_MIN_STEP_ELEMENTS."""
    a_steps, b_steps, out_steps = a.unbind(1), b.unbind(1), out.unbind(1)
    before = initial
    for t in (reversed(range(a.shape[1])) if reverse else range(a.shape[1])):
        _one_step(a_steps[t], b_steps[t], before, out_steps[t])
        before = out_steps[t]


def _scan_kernel(like: Tensor):
    """(kernel, batch row blocks) for tensors like `like` (B, T, *F): on the CPU, once a step
    (B·F elements) is large enough that an op over it costs more than its launch, the loop over
    t on all rows at once (it streams through memory once); else (GPUs, many small steps) the
    odd-even recursion over row blocks that stay in cache (`_row_blocks`)."""
    step_elements = like[:, 0].numel() if like.shape[1] else 0
    if like.device.type == "cpu" and step_elements >= LOOP_MIN_STEP_ELEMENTS:
        return _loop_into, [slice(None)]
    return _scan_into, _row_blocks(like)


def _one_step(a: Tensor, b: Tensor, before: Tensor | None, out: Tensor) -> None:
    """out := a·before + b (b when before is None, the zero state)."""
    if before is None:
        out.copy_(b)
    else:
        torch.addcmul(b, a, before, out=out)


def _expand(mask: Tensor, like: Tensor) -> Tensor:
    """(B, ...) mask -> broadcastable against like (B, ..., *F)."""
    return mask.view(*mask.shape, *([1] * (like.ndim - mask.ndim)))


SCAN_IMPLS = {"parallel": linear_scan, "sequential": linear_scan_sequential}


def check_scan_impl(name: str) -> None:
    """A cell's `scan_impl` option: "parallel" (training) or "sequential" (the reference loop,
    for tests and benchmarks)."""
    if name not in SCAN_IMPLS:
        raise ValueError(f"scan_impl must be one of {tuple(SCAN_IMPLS)}, got {name!r}")
