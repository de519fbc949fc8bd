"""Mamba-2's state-space duality (SSD, Dao & Gu 2024): a recurrence with one scalar decay per
head, in chunks of masked matmuls, and the same recurrence as a loop.

    h_t = a_t h_{t-1} + u_t ⊗ B_t          (Bt, M, P, N)   a_t = exp(log_decay_t) (M,) ≤ 1
    y_t = h_t C_t                            (Bt, M, P)

    ssd_chunked(log_decay, u, B, C, initial, resets, lengths, chunk_size) -> (y, final)
    ssd_sequential(log_decay, u, B, C, initial, resets, lengths)          -> (y, final)

log_decay (Bt, T, M) ≤ 0, u (Bt, T, M, P), B and C (Bt, T, N) (one group: shared by the M
heads), initial h_{-1} (Bt, M, P, N); y (Bt, T, M, P), final the state after lengths[b] steps.
resets (Bt, T) bool: h := 0 before step t (as ops.scan); lengths (Bt,) long: steps past the
length change nothing (the outputs there are finite and ignored).

The chunked form cuts time into equal chunks of L ≤ chunk_size steps; with l_t the cumulative log
decay inside a chunk (l_t = Σ_{r ≤ t} log a_r, r from the chunk's first step),

    y_t = Σ_{s ≤ t in chunk} exp(l_t − l_s) (C_t·B_s) u_s        intra-chunk: (L, L) matmuls
        + exp(l_t) S_{c-1} C_t                                  the state entering the chunk
    S_c = exp(l_L) S_{c-1} + Σ_s exp(l_L − l_s) u_s ⊗ B_s        chunk states: ops.scan over c

A reset at step r (inside or at the edge of a chunk) cuts the products across it: a pair
(t, s) counts only if no reset lies in (s, t] (same episode segment inside the chunk), the
entering state only for steps before the chunk's first reset, and a chunk with a reset passes
no state on (decay 0). Every exponent is ≤ 0 (differences of a non-increasing sum, masked to
−∞ before the exponential where s > t), so nothing overflows at any length. The sequential
form is ops.scan's `linear_scan_sequential` over the (Bt, T, M, P, N) states, the reference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .scan import linear_scan, linear_scan_sequential


def ssd_chunked(log_decay: Tensor, u: Tensor, B: Tensor, C: Tensor, initial: Tensor,
                resets: Tensor | None = None, lengths: Tensor | None = None,
                chunk_size: int = 64) -> tuple[Tensor, Tensor]:
    """(y (Bt, T, M, P), final state (Bt, M, P, N)) by chunks of chunk_size steps."""
    batch, steps, heads, width = u.shape
    if steps == 0:
        return u.new_zeros(u.shape), initial
    if lengths is not None and bool((lengths < steps).any()):        # past the length: (1, 0)
        valid = torch.arange(steps, device=u.device) < lengths[:, None]              # (Bt, T)
        log_decay = log_decay * valid[..., None]
        u = u * valid[..., None, None]
        resets = None if resets is None else resets & valid
    if resets is not None and not bool(resets.any()):
        resets = None
    chunks = math.ceil(steps / chunk_size)
    size = math.ceil(steps / chunks)                  # equal chunks of at most chunk_size steps
    pad = chunks * size - steps                       # identity steps after the end
    if pad:
        log_decay, B, C = (F.pad(t, (0, 0, 0, pad)) for t in (log_decay, B, C))
        u = F.pad(u, (0, 0, 0, 0, 0, pad))
        resets = None if resets is None else F.pad(resets, (0, pad))

    cumulative = log_decay.view(batch, chunks, size, heads).cumsum(2)      # l_t (Bt, c, L, M)
    u = u.view(batch, chunks, size, heads, width)                          # (Bt, c, L, M, P)
    B, C = B.view(batch, chunks, size, -1), C.view(batch, chunks, size, -1)  # (Bt, c, L, N)
    pairs = torch.ones(size, size, dtype=torch.bool, device=u.device).tril()       # s ≤ t
    if resets is not None:
        segment = resets.view(batch, chunks, size).long().cumsum(-1)                # (Bt, c, L)
        pairs = pairs & (segment[..., :, None] == segment[..., None, :])        # (Bt, c, L, L)
        from_entry = (segment == 0)[..., None]              # t before the chunk's first reset
        to_exit = (segment == segment[..., -1:])[..., None]    # s in the chunk's last segment
        passes_on = (segment[..., -1] == 0)[..., None]      # (Bt, c, 1): no reset in the chunk
        pairs = pairs[:, :, None]                                           # (Bt, c, 1, L, L)

    # intra-chunk: y_t = Σ_s exp(l_t − l_s) (C_t·B_s) u_s, per head
    per_head = cumulative.transpose(-1, -2)                                # (Bt, c, M, L)
    exponent = per_head[..., :, None] - per_head[..., None, :]             # (Bt, c, M, L, L)
    decay = torch.exp(exponent.masked_fill(~pairs, -math.inf))
    y = (decay * (C @ B.transpose(-1, -2))[:, :, None]) @ u.transpose(2, 3)   # (Bt, c, M, L, P)

    # each chunk's own contribution to its exit state, and its decay of the entering state
    to_end = torch.exp(cumulative[:, :, -1:] - cumulative)                 # (Bt, c, L, M)
    through = torch.exp(cumulative[:, :, -1])                              # (Bt, c, M)
    if resets is not None:
        to_end, through = to_end * to_exit, through * passes_on
    own = (u * to_end[..., None]).flatten(-2).transpose(-1, -2) @ B        # (Bt, c, M·P, N)
    own = own.view(batch, chunks, heads, width, -1)                        # (Bt, c, M, P, N)
    exits = linear_scan(through[..., None, None], own, initial)            # S_c (Bt, c, M, P, N)
    entries = torch.cat([initial[:, None], exits[:, :-1]], 1)              # S_{c-1}

    # the entering state: exp(l_t) S_{c-1} C_t
    from_start = torch.exp(cumulative)                                     # (Bt, c, L, M)
    if resets is not None:
        from_start = from_start * from_entry
    entering = C @ entries.flatten(2, 3).transpose(-1, -2)                 # (Bt, c, L, M·P)
    y = y.transpose(2, 3) + entering.view(u.shape) * from_start[..., None]  # (Bt, c, L, M, P)
    return y.reshape(batch, chunks * size, heads, width)[:, :steps], exits[:, -1]


def ssd_sequential(log_decay: Tensor, u: Tensor, B: Tensor, C: Tensor, initial: Tensor,
                   resets: Tensor | None = None,
                   lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The same (y, final state) by a loop over t (ops.scan's linear_scan_sequential)."""
    a = torch.exp(log_decay)[..., None, None]                              # (Bt, T, M, 1, 1)
    b = u[..., None] * B[:, :, None, None, :]                              # (Bt, T, M, P, N)
    h = linear_scan_sequential(a, b, initial, resets, lengths)             # (Bt, T, M, P, N)
    y = (h @ C[:, :, None, :, None])[..., 0]                               # (Bt, T, M, P)
    return y, (h[:, -1] if u.shape[1] else initial)

