"""Resettable running sums along time, and causal linear attention read from one.

    cumulative_sum(values, initial, resets, lengths)            -> s    every s_t (B, T, *F)
    cumulative_sum_sequential(...)                              -> s    (a loop; reference)
    chunked_linear_attention(q, k, v, initial, resets, lengths) -> o, S_final

cumulative_sum: s_t = s_{t-1} + v_t from s_{-1} = initial: `linear_scan` with decay 1 (a
reset at t zeroes s_{t-1}; past lengths[b] the state holds).

chunked_linear_attention: the read o_t = q_tᵀ S_t of the running sum of outer products

    S_t = S_{t-1} + k_t v_tᵀ      (B, K, V), S_{-1} = initial, resets and lengths as above
    o_t = q_tᵀ S_t               (B, V)

without forming any S_t but one per chunk. Time is cut into chunks of C steps; for t in a
chunk that starts with the state S_start (the state before its first step),

    o_t = g_t · q_tᵀ S_start + Σ_{s in the chunk, s ≤ t, same episode as t} (q_t · k_s) v_s

g_t = 1 when no reset falls in the chunk at or before t, else 0; "same episode" means no reset
in (s, t]. Within the chunk this is (Q Kᵀ ⊙ M) V with M the causal same-episode mask (C × C).
The chunks' start states are a running sum over chunks, itself `linear_scan` with decay 1:

    S_end(c) = [no reset in c] · S_end(c − 1) + Σ_{s in c, after its last reset} k_s v_sᵀ

(a reset in chunk c is that scan's reset). Past lengths[b] every k_s is zeroed and every reset
dropped, so those steps write nothing and S_end of the last chunk is the state after
lengths[b] steps; o_t there reads that state, as the running sum's S_t = S_{len − 1} does.
Cost O(T·C·(K + V) + T·K·V) and memory O(T·C + (T/C)·K·V), against the running sum's
O(T·K·V) memory for every S_t; the reference is `cumulative_sum` of k_t v_tᵀ read at every t
(the fast-weight cells' scan_impl="cumulative").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .scan import linear_scan, linear_scan_sequential

CHUNK_SIZE = 64      # steps per chunk: the intra-chunk work grows with C, the carried states with T/C


def cumulative_sum(values: Tensor, initial: Tensor, resets: Tensor | None = None,
                   lengths: Tensor | None = None) -> Tensor:
    """s_t = s_{t-1} + v_t for values (B, T, *F) from s_{-1} = initial (B, *F): linear_scan
    with decay 1 (a reset zeroes s_{t-1}; past lengths[b] s holds). -> (B, T, *F)."""
    return linear_scan(values.new_ones(()).expand_as(values), values, initial, resets, lengths)


def cumulative_sum_sequential(values: Tensor, initial: Tensor, resets: Tensor | None = None,
                              lengths: Tensor | None = None) -> Tensor:
    """`cumulative_sum` by linear_scan's reference loop."""
    return linear_scan_sequential(values.new_ones(()).expand_as(values), values, initial,
                                  resets, lengths)


def chunked_linear_attention(q: Tensor, k: Tensor, v: Tensor, initial: Tensor,
                             resets: Tensor | None = None, lengths: Tensor | None = None,
                             chunk_size: int = CHUNK_SIZE) -> tuple[Tensor, Tensor]:
    """q, k (B, T, K), v (B, T, V), initial S_{-1} (B, K, V), resets (B, T) bool, lengths (B,)
    -> o (B, T, V) with o_t = q_tᵀ S_t, and the state after lengths[b] steps (B, K, V)."""
    batch, steps = k.shape[:2]
    if steps == 0:
        return v.new_zeros(batch, 0, v.shape[-1]), initial
    if lengths is not None and bool((lengths < steps).any()):
        valid = torch.arange(steps, device=k.device) < lengths[:, None]           # (B, T)
        k = k * valid[..., None].to(k.dtype)
        resets = None if resets is None else resets & valid
    if resets is not None and not bool(resets.any()):
        resets = None
    size = min(chunk_size, steps)
    chunks = -(-steps // size)
    pad = chunks * size - steps

    def chunked(x: Tensor) -> Tensor:                              # (B, T, F) -> (B, n, C, F)
        return F.pad(x, (0, 0, 0, pad)).view(batch, chunks, size, x.shape[-1])

    q, k, v = chunked(q), chunked(k), chunked(v)
    causal = torch.ones(size, size, dtype=torch.bool, device=k.device).tril()
    scores = q @ k.transpose(-1, -2)                                            # (B, n, C, C)
    if resets is None:
        scores = scores.masked_fill(~causal, 0)
        writes = k.transpose(-1, -2) @ v                                        # (B, n, K, V)
        ends = linear_scan(writes.new_ones(()).expand_as(writes), writes, initial)
        carried_gate = None
    else:
        episode = F.pad(resets, (0, pad)).view(batch, chunks, size).cumsum(-1)   # (B, n, C)
        same = (episode[..., :, None] == episode[..., None, :]) & causal
        scores = scores.masked_fill(~same, 0)
        after_last_reset = (episode == episode[..., -1:]).to(k.dtype)[..., None]
        writes = (k * after_last_reset).transpose(-1, -2) @ v
        ends = linear_scan(writes.new_ones(()).expand_as(writes), writes, initial,
                           episode[..., -1] > 0)
        carried_gate = (episode == 0).to(q.dtype)[..., None]                    # (B, n, C, 1)
    starts = torch.cat([initial[:, None], ends[:, :-1]], 1)                     # (B, n, K, V)
    carried = q @ starts
    if carried_gate is not None:
        carried = carried * carried_gate
    o = (scores @ v + carried).view(batch, chunks * size, -1)[:, :steps]
    return o, ends[:, -1]
