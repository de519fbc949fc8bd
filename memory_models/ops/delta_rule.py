"""The (gated) delta rule along time: chunkwise in parallel (WY / UT form), and step by step.

    chunked_delta_rule(q, k, v, beta, initial, log_decay, resets, lengths) -> o, S_final
    delta_rule_sequential(...)                                            -> o, S_final
    delta_rule_step(q_t, k_t, v_t, beta_t, S, log_decay_t)                -> o_t, S_t

Per batch row and head, with the memory S (d_k, d_v):

    S_t = α_t (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ        α_t = exp(g_t), g_t ≤ 0
    o_t = S_tᵀ q_t

S here is the transpose of the papers' (d_v, d_k) memory (Yang et al. 2024, DeltaNet:
S_t = S_{t-1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ, o_t = S_t q_t; Yang et al. 2025, Gated
DeltaNet: the same with α_t S_{t-1}), the layout of flash-linear-attention's kernels. Without
`log_decay`, α_t = 1 (DeltaNet).

    q, k   (B, T, H, d_k)     v (B, T, H, d_v)     beta, log_decay (B, T, H)
    initial S_{-1} (B, H, d_k, d_v)     o (B, T, H, d_v)     S_final (B, H, d_k, d_v)

resets (B, T) bool: a reset at t makes S_{t-1} zero (the initial state), as a zero decay
α_t = 0 would. lengths (B,) long: S_final is the state after lengths[b] steps; past the
length a step is the identity (β = 0: nothing written, g = 0: nothing decayed).

Chunkwise form. Time is cut into chunks of C steps. Write the step as S_t = α_t S_{t-1} +
k_t δ_tᵀ with the correction δ_t = β_t (v_t − α_t S_{t-1}ᵀ k_t) (d_v). Inside a chunk that
starts from S_0 (the state before its first step), with γ_t = g_1 + … + g_t the cumulative
log decay inside the chunk and Γ_ts = exp(γ_t − γ_s) ⊙ [s ≤ t, same episode] (C, C):

    S_t = exp(γ_t) S_0 + Σ_{s ≤ t} Γ_ts k_s δ_sᵀ
    (I + A) Δ = diag(β) V − diag(β exp(γ)) K S_0,   A_ts = β_t Γ_ts (k_t·k_s) for s < t

A is strictly lower triangular, so with the UT transform T = (I + A)^{-1} (a (C, C)
triangular solve per chunk, batched over all chunks at once):

    U = T diag(β) V   (C, d_v)      W = T diag(β exp(γ)) K   (C, d_k)      Δ = U − W S_0
    O = diag(exp(γ)) Q S_0 + (Q Kᵀ ⊙ Γ) Δ                                       (C, d_v)
    S_C = exp(γ_C) S_0 + (diag(exp(γ_C − γ)) K)ᵀ Δ                              (d_k, d_v)

U, W and Q Kᵀ ⊙ Γ depend on the chunk alone; only Δ and S_0 need the chunk before, so the
chunk states come from a sequential pass over the T/C chunks of two (C, d) x (d_k, d_v)
matmuls each, and O from one batched matmul after it. Only differences γ_t − γ_s ≤ 0 of
cumulative log decays are exponentiated (masked to −inf where the mask is 0, before exp),
never a quotient of decay products: nothing overflows or divides by an underflowed product.
Resets fold into the masks: the episode index inside the chunk (a running count of resets)
must match for Γ_ts, only rows before the chunk's first reset read S_0 (the exp(γ) factors),
only the chunk's last episode writes S_C, and S_0 is carried into S_C only without a reset in
the chunk. Cost O(T·C·(d_k + d_v) + T·d_k·d_v) per head, no S_t formed but one per chunk.

`delta_rule_sequential` is the recurrence as a loop over t (`delta_rule_step` per step), with
resets and lengths applied literally: the reference of the chunkwise form. Both read the
held state past the length (o_t = S_finalᵀ q_t there), so their outputs agree everywhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

CHUNK_SIZE = 32      # steps per chunk: intra-chunk work grows with C, the sequential pass with T/C


def delta_rule_step(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, state: Tensor,
                    log_decay: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One step: q, k (..., d_k), v (..., d_v), beta, log_decay (...), S_{t-1} (..., d_k, d_v)
    -> o_t (..., d_v), S_t = α (I − β k kᵀ) S_{t-1} + β k vᵀ with α = exp(log_decay).

    As S_t = α S_{t-1} + k δᵀ with δ = β (v − α S_{t-1}ᵀ k), and o_t = S_tᵀ q = α S_{t-1}ᵀ q +
    (k·q) δ: S_{t-1} is read once (one matmul for [k, q]) and S_t only written (the state is
    the largest tensor of a rollout step: 32 KiB per row at the defaults)."""
    d_k, d_v = state.shape[-2:]
    reads = torch.stack([k, q], -2) @ state                  # [Sᵀk, Sᵀq] (..., 2, d_v): S read once
    alpha = None if log_decay is None else torch.exp(log_decay)[..., None, None]
    if alpha is not None:
        reads = reads * alpha                                                   # (α S)ᵀ [k, q]
    read_k, read_q = reads.unbind(-2)
    delta = beta[..., None] * (v - read_k)                                      # δ (..., d_v)
    o = torch.addcmul(read_q, torch.linalg.vecdot(k, q)[..., None], delta)  # (αS)ᵀq + (k·q) δ
    if alpha is None:
        new = torch.baddbmm(state.reshape(-1, d_k, d_v), k.reshape(-1, d_k, 1),
                            delta.reshape(-1, 1, d_v))                          # S + k δᵀ
    else:
        new = (state * alpha).reshape(-1, d_k, d_v)                             # α S (fresh)
        new.baddbmm_(k.reshape(-1, d_k, 1), delta.reshape(-1, 1, d_v))          # + k δᵀ
    return o, new.view(state.shape)


def delta_rule_sequential(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, initial: Tensor,
                          log_decay: Tensor | None = None, resets: Tensor | None = None,
                          lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The recurrence as a loop over t (module docstring): o (B, T, H, d_v), S_final."""
    state, outputs = initial, []
    for t in range(q.shape[1]):
        before, beta_t = state, beta[:, t]
        g = None if log_decay is None else log_decay[:, t]
        valid = None if lengths is None else t < lengths                       # (B,)
        if valid is not None:              # past the length: the identity step (β = 0, g = 0)
            beta_t = beta_t * valid[:, None]
            g = None if g is None else g * valid[:, None]
        if resets is not None:
            reset = resets[:, t] if valid is None else resets[:, t] & valid
            before = torch.where(reset[:, None, None, None], 0, state)
        o, new = delta_rule_step(q[:, t], k[:, t], v[:, t], beta_t, before, g)
        if valid is not None:                          # past the length nothing happens
            new = torch.where(valid[:, None, None, None], new, state)
        state = new
        outputs.append(o)
    if not outputs:
        return v.new_zeros(v.shape), initial
    return torch.stack(outputs, 1), state


def chunked_delta_rule(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, initial: Tensor,
                       log_decay: Tensor | None = None, resets: Tensor | None = None,
                       lengths: Tensor | None = None,
                       chunk_size: int = CHUNK_SIZE) -> tuple[Tensor, Tensor]:
    """The chunkwise (WY / UT) form of the module docstring: o (B, T, H, d_v), S_final."""
    batch, steps, heads, _ = k.shape
    if steps == 0:
        return v.new_zeros(v.shape), initial
    if lengths is not None and bool((lengths < steps).any()):
        valid = torch.arange(steps, device=k.device) < lengths[:, None]         # (B, T)
        beta = beta * valid[..., None]
        log_decay = None if log_decay is None else log_decay * valid[..., None]
        resets = None if resets is None else resets & valid
    if resets is not None and not bool(resets.any()):
        resets = None
    chunks = -(-steps // chunk_size)
    size = -(-steps // chunks)           # chunks of at most chunk_size, evened out: T = 53 in
    pad = chunks * size - steps          # 2 of 27 (1 padded step); padded: β = 0, g = 0, no reset

    def chunked(x: Tensor) -> Tensor:                     # (B, T, H, F) -> (B, H, n, C, F)
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        return x.view(batch, chunks, size, heads, x.shape[-1]).permute(0, 3, 1, 2, 4)

    q, k, v, beta = chunked(q), chunked(k), chunked(v), chunked(beta[..., None])
    # Γ's mask (C, C) or (B, 1, n, C, C): s ≤ t in the same episode; and the reset gates
    mask = torch.ones(size, size, dtype=torch.bool, device=k.device).tril()
    start_gate = end_gate = carry_gate = None
    if resets is not None:
        episode = F.pad(resets, (0, pad)).view(batch, 1, chunks, size).cumsum(-1)  # (B,1,n,C)
        mask = mask & (episode[..., :, None] == episode[..., None, :])
        start_gate = (episode == 0)[..., None]                  # rows that read S_0
        end_gate = (episode == episode[..., -1:])[..., None]    # rows that write S_C
        carry_gate = (episode[..., -1] == 0)[..., None, None]   # S_0 carried into S_C
    if log_decay is None:
        decays = mask.to(k.dtype)                                               # Γ
        start_decay, end_decay, carry_decay = start_gate, end_gate, carry_gate
    else:
        gamma = chunked(log_decay[..., None])[..., 0].cumsum(-1)                # (B, H, n, C)
        differences = gamma[..., :, None] - gamma[..., None, :]                 # γ_t − γ_s
        decays = torch.exp(differences.masked_fill(~mask, -math.inf))           # Γ
        start_decay = _gated(torch.exp(gamma)[..., None], start_gate)           # exp(γ_t)
        end_decay = _gated(torch.exp(gamma[..., -1:] - gamma)[..., None], end_gate)
        carry_decay = _gated(torch.exp(gamma[..., -1])[..., None, None], carry_gate)

    k_beta = k * beta                                                           # diag(β) K
    A = (k_beta @ k.transpose(-1, -2)) * decays            # strictly lower part used (+ I)
    eye = torch.eye(size, dtype=k.dtype, device=k.device).expand(A.shape)
    T = torch.linalg.solve_triangular(A, eye, upper=False, unitriangular=True)  # (I + A)^{-1}
    U = T @ (v * beta)                                                           # T diag(β) V
    W = T @ _gated(k_beta, start_decay)                                          # T diag(β e^γ) K
    k_end = _gated(k, end_decay)                                                 # exp(γ_C − γ) K

    # the pass over chunks, on per-chunk views (unbind: a slice's gradient would be a zero
    # tensor of the whole input per chunk)
    carries = [None] * chunks if carry_decay is None else carry_decay.unbind(2)
    state, starts, deltas = initial, [], []
    for U_c, W_c, k_end_c, carry in zip(U.unbind(2), W.unbind(2),
                                        k_end.transpose(-1, -2).unbind(2), carries):
        starts.append(state)
        delta = U_c - W_c @ state                                                # (B, H, C, d_v)
        deltas.append(delta)
        state = (state if carry is None else state * carry) + k_end_c @ delta
    starts, deltas = torch.stack(starts, 2), torch.stack(deltas, 2)            # (B, H, n, ...)
    scores = (q @ k.transpose(-1, -2)) * decays                                  # Q Kᵀ ⊙ Γ
    o = _gated(q, start_decay) @ starts + scores @ deltas                        # (B, H, n, C, d_v)
    o = o.permute(0, 2, 3, 1, 4).reshape(batch, chunks * size, heads, -1)[:, :steps]
    return o, state


def _gated(x: Tensor, gate: Tensor | None) -> Tensor:
    """x times a (bool or float) gate that broadcasts against it; x itself for None."""
    if gate is None:
        return x
    return x * gate.to(x.dtype)


DELTA_RULE_IMPLS = {"chunked": chunked_delta_rule, "sequential": delta_rule_sequential}


def check_delta_rule_impl(name: str) -> None:
    """A cell's `scan_impl` option: "chunked" (training) or "sequential" (the reference loop,
    for tests and benchmarks)."""
    if name not in DELTA_RULE_IMPLS:
        raise ValueError(f"scan_impl must be one of {tuple(DELTA_RULE_IMPLS)}, got {name!r}")
