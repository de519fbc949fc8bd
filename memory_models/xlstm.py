"""xLSTM's two cells, after Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory" (NeurIPS
2024, arXiv 2405.04517): `mlstm` (matrix memory, parallel in time) and `slstm` (scalar memory
with recurrent connections, sequential).

Both gate their memory with an exponential input gate i = exp(ĩ) and a forget gate
f = σ(f̃) (`forget_gate="sigmoid"`, the default, as the xlstm package) or f = exp(f̃) ("exp"),
so log f = log σ(f̃) or f̃. The exponentials are kept in range by a stabiliser m, the log of the
scale the stored memory is kept at: the stored (C, n) or (c, n) are the paper's times e^{−m}.
m is part of the state, so `step` and `scan` (and scans split anywhere) agree exactly.

mLSTM: NH heads (`heads`, default the largest of 4, 2, 1 that divides H = hidden_size) of
size D = H / NH; per step, x_t (B, I):

    q_t = W_q x_t + b_q,   k_t = (W_k x_t + b_k) / √D,   v_t = W_v x_t + b_v    (B, NH, D)
    ĩ_t = W_i x_t + b_i,   f̃_t = W_f x_t + b_f                                  (B, NH)
    o_t = σ(W_o x_t + b_o)                                                      (B, H)
    m_t = max(log f_t + m_{t-1}, ĩ_t)                                           (B, NH)
    C_t = e^{log f_t + m_{t-1} − m_t} C_{t-1} + e^{ĩ_t − m_t} k_t v_tᵀ           (B, NH, D, D)
    n_t = e^{log f_t + m_{t-1} − m_t} n_{t-1} + e^{ĩ_t − m_t} k_t                (B, NH, D)
    h̃_t = C_tᵀ q_t / max(|n_tᵀ q_t|, e^{−m_t})                                 (B, NH, D)
    y_t = o_t ⊙ h̃_t  (heads concatenated)                                      (B, H)

(`mlstm_step`.) With the paper's unstabilised memory e^{m} C this is its
h̃ = C q / max(|nᵀ q|, 1): the output does not depend on the stabiliser (the xlstm package adds
1e-6 to the denominator, which does; we do not). C is stored as Σ k vᵀ (key rows), as the xlstm
package's backends. State {"C": (B, NH, D, D), "n": (B, NH, D), "m": (B, NH)}, all zero
initially (the xlstm package's initial m = 0). The paper's cell: the xLSTM block's up-projection,
convolution, output norm and skip are not part of it (`layers: N` stacks cells in residual
blocks as for every cell).

Chunkwise parallel form (`mlstm_chunkwise`, chunks of equal length L <= chunk_size (64); the
state carried from chunk to chunk). Within a chunk, with local steps t, j and
b_t = Σ_{s ≤ t} log f_s:

    log D_tj = b_t − b_j + ĩ_j       j ≤ t in the same episode segment, else −∞  (B, NH, L, L)
    a_t = m_in + b_t                 t before the chunk's first reset (the carried state),
          b_t − b_{r−1}              t in the segment that starts with a reset at r (m = 0)
    m_t = max(a_t, max_j log D_tj)   (= the recurrence's max, unrolled)
    h̃_t = [Σ_j e^{log D_tj − m_t} (q_t·k_j) v_j + e^{a_t − m_t} C_inᵀ q_t]
          / max(|Σ_j e^{log D_tj − m_t} (q_t·k_j) + e^{a_t − m_t} n_inᵀ q_t|, e^{−m_t})

where the e^{a_t − m_t} terms are those of the carried state (C_in, n_in, m_in), zero after a
reset; the chunk's last row gives the state carried on. Every chunk's own terms are computed
at once, the states entering the chunks by a loop over them, then every chunk's outputs at
once; values and normaliser are read by one matmul with [v | 1], the state carried as
[C | n]. Past lengths[b] a step is the identity (log f = 0, ĩ = −∞). Many rows run in blocks
(BLOCK_BYTES) so that the (L, L) matrices stay in cache. `scan_impl="sequential"` runs the
recurrence step by step (the reference; an implementation option, as `chunk_size`).

sLSTM: NH heads (`heads`, as mLSTM's) of size D, a block-diagonal recurrent matrix R (one
D × 4D block per head); per step:

    [ĩ, f̃, z̃, õ]_t = W x_t + b + R h_{t-1}                                    (B, NH, 4, D)
    m_t = max(log f_t + m_{t-1}, ĩ_t)                                          (B, H)
    c_t = e^{log f_t + m_{t-1} − m_t} c_{t-1} + e^{ĩ_t − m_t} tanh(z̃_t)
    n_t = e^{log f_t + m_{t-1} − m_t} n_{t-1} + e^{ĩ_t − m_t}
    h_t = σ(õ_t) ⊙ c_t / n_t = y_t                                              (B, H)

(`slstm_step`.) State {"h", "c", "n", "m"} (B, H) each, zero initially. Sequential by nature:
the input terms W x + b of all steps are one matmul, then a fused loop over t with a
hand-written backward (`ops.slstm_scan`); `scan_impl="sequential"` is the reference, a loop of
`slstm_step` through autograd.

Initialisation (the xlstm package's, but for the weights): projections as nn.Linear's default;
forget-gate biases spaced linearly in [3, 6] (over heads for mLSTM, over each head's units for
sLSTM); mLSTM's input-gate biases N(0, 0.1²); sLSTM's R uniform in ±1/√D (nn.LSTM's rule per
head; the xlstm package starts R at zero).

No elapsed time: the gates have no unit of time, so both ignore `integration_timesteps`.
Both compute in float32 and float64 (half precision is refused: the exponential gates and
their stabiliser are not computed in it here).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import check_heads, check_int, default_heads
from .derived import ParameterDerived
from .interface import RecurrentMemory, State
from .ops.scan import check_scan_impl
from .ops.slstm_scan import slstm_scan
from .registry import register

BLOCK_BYTES = 4 << 20        # mlstm's chunkwise form runs over blocks of rows of about this,
MIN_BLOCK_ROWS = 32          # and at least this many rows
HEAD_CANDIDATES = (4, 2, 1)         # default heads: the largest of these dividing hidden_size
FORGET_GATES = ("sigmoid", "exp")
SLSTM_SCAN_IMPLS = ("fused", "sequential")
SLSTM_STATE = ("h", "c", "n", "m")


def check_forget_gate(forget_gate) -> None:
    if forget_gate not in FORGET_GATES:
        raise ValueError(f"forget_gate must be one of {FORGET_GATES}, got {forget_gate!r}")


def log_forget(preactivation: Tensor, forget_gate: str) -> Tensor:
    """log f: log σ(f̃) for "sigmoid", f̃ itself for "exp"."""
    return F.logsigmoid(preactivation) if forget_gate == "sigmoid" else preactivation


# ---------------------------------------------------------------------- mLSTM
def mlstm_step(q: Tensor, k: Tensor, v: Tensor, igate: Tensor, log_f: Tensor, C: Tensor,
               n: Tensor, m: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One step of the stabilised recurrence: q, k, v (B, NH, D), ĩ, log f (B, NH), state
    C (B, NH, D, D), n (B, NH, D), m (B, NH) -> h̃ (B, NH, D), C, n, m."""
    forget_m = log_f + m                                                       # (B, NH)
    m_new = torch.maximum(forget_m, igate)
    decay, gain = torch.exp(forget_m - m_new), torch.exp(igate - m_new)
    gained_k = gain[..., None] * k                                             # (B, NH, D)
    C = torch.addcmul(decay[..., None, None] * C, gained_k[..., :, None], v[..., None, :])
    n = torch.addcmul(gained_k, decay[..., None], n)                           # (B, NH, D)
    numerator = (q[..., None, :] @ C)[..., 0, :]                               # (B, NH, D)
    denominator = torch.maximum((q * n).sum(-1).abs(), torch.exp(-m_new))      # (B, NH)
    return numerator / denominator[..., None], C, n, m_new


def mlstm_chunkwise(qkv: Tensor, igate: Tensor, log_f: Tensor, resets: Tensor, C: Tensor,
                    n: Tensor, m: Tensor, chunk_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The chunkwise parallel form (module docstring): qkv = [q, k, v] (B, T, 3, NH, D)
    (k scaled by 1/√D), ĩ, log f (B, T, NH) with the identity steps past
    the lengths folded in, resets (B, T) bool, state C, n, m -> h̃ (B, T, NH, D) and the state
    after the last step.

    Three passes: every chunk's own terms at once, stabilised by their row maxima r_t
    (no gradient: every quantity built from them is scaled back by e^{r_t − m_t}, so the
    result does not depend on them); a loop over chunks for the states entering each chunk;
    every chunk's outputs at once. The outputs' m_t carries no gradient either: h̃ does not
    depend on the stabiliser (module docstring); the states' m does, and keeps it."""
    batch, steps, _, heads, size = qkv.shape
    chunks = -(-steps // chunk_size)
    length = -(-steps // chunks)                     # chunks of equal length <= chunk_size
    pad = chunks * length - steps
    if pad:                                          # identity steps after the end
        qkv = F.pad(qkv, (0, 0, 0, 0, 0, 0, 0, pad))
        igate = F.pad(igate, (0, 0, 0, pad), value=-math.inf)
        log_f, resets = F.pad(log_f, (0, 0, 0, pad)), F.pad(resets, (0, pad))
    # (B, NH, NC, L, ·): heads, chunks and their steps
    q, k, v = qkv.view(batch, chunks, length, 3, heads, size).permute(3, 0, 4, 1, 2, 5) \
        .contiguous().unbind(0)                                  # one copy for all three
    igate, log_f = (t.view(batch, chunks, length, heads).permute(0, 3, 1, 2)
                    for t in (igate, log_f))
    cumulative = log_f.cumsum(-1)                                # b_t (B, NH, NC, L)
    causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    resets = resets.view(batch, chunks, length)
    if bool(resets.any()):
        time = torch.arange(length, device=q.device)
        segment = resets.long().cumsum(-1)                       # (B, NC, L); 0: carried
        start = torch.cummax(torch.where(resets, time, 0), -1).values  # t's segment's start
        before_start = (cumulative - log_f).gather(-1, start[:, None].expand_as(log_f))
        carried = (segment == 0)[:, None]                        # (B, 1, NC, L)
        since_start = cumulative - before_start                  # a_t − (m_in or 0)
        keep = (causal & (segment[..., :, None] == segment[..., None, :]))[:, None]
        last_keep = (segment == segment[..., -1:])[:, None]      # the last step's segment
    else:
        carried, since_start, keep = None, cumulative, causal
        last_keep = None
    log_D = (cumulative[..., :, None] - cumulative[..., None, :] + igate[..., None, :])
    log_D = log_D.masked_fill(~keep, -math.inf)                  # (B, NH, NC, L, L)
    with torch.no_grad():
        row_max = log_D.amax(-1)                                 # (B, NH, NC, L)
        empty = row_max == -math.inf                             # no own term (padding)
        local = row_max.masked_fill(empty, 0.0)                  # r_t
    weights = torch.exp(log_D - local[..., None])
    scores = (q @ k.transpose(-1, -2)) * weights                 # (B, NH, NC, L, L)
    # [v | 1]: one matmul reads the values and the normaliser alike, and the state is [C | n]
    v_ones = F.pad(v, (0, 1), value=1.0)                         # (B, NH, NC, L, D+1)
    own_read = scores @ v_ones                                   # [Σ w (q·k) v | Σ w q·k]
    # log D's last row again from the small tensors (a row taken from log_D or weights would
    # cost their backward a zero-filled copy of the whole matrix)
    last_log_D = cumulative[..., -1:] - cumulative + igate       # (B, NH, NC, L)
    if last_keep is not None:
        last_log_D = last_log_D.masked_fill(~last_keep, -math.inf)
    last_max = last_log_D.amax(-1)                               # (B, NH, NC), with gradient
    last_k = k * torch.exp(last_log_D - local[..., -1:])[..., None]   # (B, NH, NC, L, D)
    own_state = last_k.transpose(-1, -2) @ v_ones                # [C | n] at scale e^{r_{L-1}}

    state = torch.cat([C, n[..., None]], -1)                     # [C | n] (B, NH, D, D+1)
    entering = []                                                # ([C | n], m) entering chunk c
    per_chunk = zip(since_start[..., -1].unbind(-1), last_max.unbind(-1),
                    local[..., -1].unbind(-1), empty[..., -1].unbind(-1), own_state.unbind(2),
                    (carried[..., -1].unbind(-1) if carried is not None else [None] * chunks))
    for gain, own_max, own_log, no_own, chunk_state, continues in per_chunk:
        entering.append((state, m))
        carry = gain + (m if continues is None else torch.where(continues, m, 0.0))   # (B, NH)
        m_new = torch.maximum(carry, own_max)
        from_carried = torch.exp(carry - m_new)
        if continues is not None:
            from_carried = torch.where(continues, from_carried, 0.0)
        from_own = torch.exp(own_log - m_new).masked_fill(no_own, 0.0)
        state = from_carried[..., None, None] * state + from_own[..., None, None] * chunk_state
        m = m_new
    state_in, m_in = (torch.stack(s, 2) for s in zip(*entering))   # (B, NH, NC, ...)

    carry = since_start + (m_in[..., None] if carried is None else
                           torch.where(carried, m_in[..., None], 0.0))      # a_t (B, NH, NC, L)
    with torch.no_grad():
        m_t = torch.maximum(carry, row_max)
        own_scale = torch.exp(local - m_t).masked_fill(empty, 0.0)
        floor = torch.exp(-m_t)
    carried_scale = torch.exp(carry - m_t)
    if carried is not None:
        carried_scale = torch.where(carried, carried_scale, 0.0)
    read = own_scale[..., None] * own_read + (carried_scale[..., None] * q) @ state_in
    numerator, qn = read.split([size, 1], -1)
    h = numerator / torch.maximum(qn.abs(), floor[..., None])   # (B, NH, NC, L, D)
    h = h.permute(0, 2, 3, 1, 4).reshape(batch, chunks * length, heads, size)[:, :steps]
    return h, state[..., :-1], state[..., -1], m


@register("mlstm")
class MLSTM(ParameterDerived, RecurrentMemory):
    """xLSTM's mLSTM cell: multi-head matrix memory, exponential gates, stabiliser in the state."""

    dtypes = (torch.float32, torch.float64)
    implementation_options = ("scan_impl", "chunk_size")

    def __init__(self, input_size: int, hidden_size: int, heads: int | None = None,
                 forget_gate: str = "sigmoid", scan_impl: str = "parallel",
                 chunk_size: int = 64):
        super().__init__(input_size, hidden_size)
        self.heads = default_heads(hidden_size, HEAD_CANDIDATES) if heads is None else heads
        check_heads(self.heads, hidden_size)
        check_forget_gate(forget_gate)
        check_scan_impl(scan_impl)
        check_int("chunk_size", chunk_size, why=" (steps per chunk of the parallel form)")
        self.forget_gate, self.scan_impl, self.chunk_size = forget_gate, scan_impl, chunk_size
        self.head_size = hidden_size // self.heads
        # [W_q; W_k; W_v; W_i; W_f; W_o]: (3H + 2NH + H) outputs
        self.projection = nn.Linear(input_size, 4 * hidden_size + 2 * self.heads)
        with torch.no_grad():
            igate_bias, fgate_bias = self.projection.bias[3 * hidden_size:][:2 * self.heads] \
                .view(2, self.heads)
            igate_bias.normal_(0.0, 0.1)
            fgate_bias.copy_(torch.linspace(3.0, 6.0, self.heads))

    def scaled_projection(self) -> tuple[Tensor, Tensor]:
        """The projection's weight and bias with W_k, b_k's rows scaled by 1/√D (4H + 2NH
        rows): k comes out scaled, at the cost of scaling a weight, not every step's k."""
        H = self.hidden_size
        scale = torch.ones(4 * H + 2 * self.heads, 1, dtype=self.projection.weight.dtype,
                           device=self.projection.weight.device)
        scale[H:2 * H] = 1 / math.sqrt(self.head_size)
        return self.projection.weight * scale, self.projection.bias * scale[:, 0]

    def projections(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """[q, k, v] (..., 3, NH, D) (k scaled by 1/√D), ĩ, log f (..., NH), o (..., H) of
        x (..., I). A sequence is projected by three matmuls, one per part (no split whose
        backward copies the whole projection), a step by one."""
        H, NH, D = self.hidden_size, self.heads, self.head_size
        weight, bias = self.derived(self.scaled_projection)
        if x.ndim == 2:
            qkv, igate, fgate, out = F.linear(x, weight, bias).split([3 * H, NH, NH, H], -1)
        else:
            parts = [slice(0, 3 * H), slice(3 * H, 3 * H + 2 * NH), slice(3 * H + 2 * NH, None)]
            qkv, gates, out = (F.linear(x, weight[p], bias[p]) for p in parts)
            igate, fgate = gates.split([NH, NH], -1)
        return (qkv.unflatten(-1, (3, NH, D)), igate, log_forget(fgate, self.forget_gate),
                torch.sigmoid(out))

    def inputs(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """q, k (scaled by 1/√D), v (..., NH, D), ĩ, log f (..., NH), o (..., H) of x (..., I)."""
        qkv, igate, log_f, out = self.projections(x)
        q, k, v = qkv.unbind(-3)
        return q, k, v, igate, log_f, out

    def initial_state(self, batch_size, *, device=None, dtype=None) -> State:
        device, dtype = self._defaults(device, dtype)
        NH, D = self.heads, self.head_size
        return {"C": torch.zeros(batch_size, NH, D, D, device=device, dtype=dtype),
                "n": torch.zeros(batch_size, NH, D, device=device, dtype=dtype),
                "m": torch.zeros(batch_size, NH, device=device, dtype=dtype)}

    def _scan(self, x, state, resets, integration_timesteps, lengths):
        batch, steps = x.shape[:2]
        if steps == 0:
            return x.new_zeros(batch, 0, self.hidden_size), state
        if self.scan_impl == "sequential":
            q, k, v, igate, log_f, out = self.inputs(x)  # (B, T, NH, D) x3, (B, T, NH) x2
            h, final = self._sequential(q, k, v, igate, log_f, state, resets, lengths)
        else:
            qkv, igate, log_f, out = self.projections(x)
            h, final = self._chunkwise(qkv, igate, log_f, state, resets, lengths)
        return out * h.flatten(-2), final                                      # (B, T, H)

    def _chunkwise(self, qkv, igate, log_f, state, resets, lengths):
        steps = qkv.shape[1]
        if bool((lengths < steps).any()):               # past the length: identity steps
            valid = torch.arange(steps, device=qkv.device) < lengths[:, None]     # (B, T)
            igate = igate.masked_fill(~valid[..., None], -math.inf)
            log_f = log_f.masked_fill(~valid[..., None], 0.0)
            resets = resets & valid
        inputs = (qkv, igate, log_f, resets, state["C"], state["n"], state["m"])
        blocks = self._row_blocks(qkv.shape[0], steps)
        if len(blocks) == 1 or (torch.is_grad_enabled() and any(t.requires_grad
                                                                 for t in inputs)):
            # one block with a graph: a slice's backward copies its whole input (the learner
            # minibatch, 157 x 53, ~8% faster so)
            parts = [mlstm_chunkwise(*inputs, self.chunk_size)]
        else:
            parts = [mlstm_chunkwise(*(t[rows] for t in inputs), self.chunk_size)
                     for rows in blocks]
        h, C, n, m = parts[0] if len(parts) == 1 else (torch.cat(p) for p in zip(*parts))
        return h, {"C": C, "n": n, "m": m}

    def _row_blocks(self, batch: int, steps: int) -> list[slice]:
        """Slices of the batch whose (L, L) decay matrices take about BLOCK_BYTES (4-byte
        floats), of at least MIN_BLOCK_ROWS rows: the many elementwise passes over them then
        stay in cache (the value pass without gradients: 1260 rows of 53 steps, 1370 -> 900
        ms), while a few long rows (B = 16, T = 1024) run as one block (each block runs the
        loop over chunks)."""
        chunks = -(-steps // self.chunk_size)
        length = -(-steps // chunks)
        row_bytes = 4 * self.heads * chunks * length * length
        rows = max(MIN_BLOCK_ROWS, BLOCK_BYTES // row_bytes)
        return [slice(start, start + rows) for start in range(0, batch, rows)]

    def _sequential(self, q, k, v, igate, log_f, state, resets, lengths):
        outputs = []
        for t in range(q.shape[1]):
            before = self.reset_state(state, resets[:, t])
            h, C, n, m = mlstm_step(q[:, t], k[:, t], v[:, t], igate[:, t], log_f[:, t],
                                    before["C"], before["n"], before["m"])
            active = t < lengths                                                # (B,)
            state = {key: torch.where(active.view(-1, *[1] * (new.ndim - 1)), new, state[key])
                     for key, new in (("C", C), ("n", n), ("m", m))}
            outputs.append(h)
        return torch.stack(outputs, 1), state

    def _step(self, x_t, state, reset, integration_timestep):
        q, k, v, igate, log_f, out = self.inputs(x_t)
        state = self.reset_state(state, reset)
        h, C, n, m = mlstm_step(q, k, v, igate, log_f, state["C"], state["n"], state["m"])
        return out * h.flatten(-2), {"C": C, "n": n, "m": m}


# ---------------------------------------------------------------------- sLSTM
def slstm_step(from_x: Tensor, recurrent: Tensor, h: Tensor, c: Tensor, n: Tensor, m: Tensor,
               forget_gate: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One step: from_x = W x_t + b (B, NH, 4D), recurrent = R (NH, D, 4D), state h, c, n, m
    (B, H) -> the new h, c, n, m (h is the output)."""
    batch, heads, _ = from_x.shape
    size = recurrent.shape[1]
    from_h = torch.bmm(h.view(batch, heads, size).transpose(0, 1), recurrent)   # (NH, B, 4D)
    igate, fgate, cell_input, ogate = (g.reshape(batch, heads * size)          # (B, H) each
                                       for g in (from_x + from_h.transpose(0, 1))
                                       .view(batch, heads, 4, size).unbind(2))
    log_f = log_forget(fgate, forget_gate)
    m_new = torch.maximum(log_f + m, igate)
    decay, gain = torch.exp(log_f + m - m_new), torch.exp(igate - m_new)
    c = decay * c + gain * torch.tanh(cell_input)
    n = decay * n + gain
    return torch.sigmoid(ogate) * c / n, c, n, m_new


@register("slstm")
class SLSTM(RecurrentMemory):
    """xLSTM's sLSTM cell: scalar memory, exponential gates, block-diagonal recurrence."""

    dtypes = (torch.float32, torch.float64)
    implementation_options = ("scan_impl",)

    def __init__(self, input_size: int, hidden_size: int, heads: int | None = None,
                 forget_gate: str = "sigmoid", scan_impl: str = "fused"):
        super().__init__(input_size, hidden_size)
        self.heads = default_heads(hidden_size, HEAD_CANDIDATES) if heads is None else heads
        check_heads(self.heads, hidden_size)
        check_forget_gate(forget_gate)
        if scan_impl not in SLSTM_SCAN_IMPLS:
            raise ValueError(f"scan_impl must be one of {SLSTM_SCAN_IMPLS}, got {scan_impl!r}")
        self.forget_gate, self.scan_impl = forget_gate, scan_impl
        self.head_size = D = hidden_size // self.heads
        # W x + b in (NH, 4, D) order: per head [ĩ; f̃; z̃; õ]
        self.input_projection = nn.Linear(input_size, 4 * hidden_size)
        self.recurrent = nn.Parameter(torch.empty(self.heads, D, 4 * D).uniform_(
            -1 / math.sqrt(D), 1 / math.sqrt(D)))                               # R (NH, D, 4D)
        with torch.no_grad():
            self.input_projection.bias.view(self.heads, 4, D)[:, 1].copy_(
                torch.linspace(3.0, 6.0, D))

    def initial_state(self, batch_size, *, device=None, dtype=None) -> State:
        device, dtype = self._defaults(device, dtype)
        return {k: torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
                for k in SLSTM_STATE}

    def from_x(self, x: Tensor) -> Tensor:
        """W x + b (..., NH, 4D) of x (..., I)."""
        return self.input_projection(x).unflatten(-1, (self.heads, 4 * self.head_size))

    def _scan(self, x, state, resets, integration_timesteps, lengths):
        if self.scan_impl == "sequential":
            return self._sequential(x, state, resets, lengths)
        from_x = self.from_x(x.transpose(0, 1))                               # (T, B, NH, 4D)
        y, *final = slstm_scan(from_x, self.recurrent, *(state[k] for k in SLSTM_STATE),
                               resets, lengths, self.forget_gate)
        return y, dict(zip(SLSTM_STATE, final))

    def _sequential(self, x, state, resets, lengths):
        """The reference: slstm_step through autograd, a loop over t; past the length the
        state is held (and is the output, as the fused loop's)."""
        from_x = self.from_x(x)                                               # (B, T, NH, 4D)
        outputs = []
        for t in range(x.shape[1]):
            before = self.reset_state(state, resets[:, t])
            new = slstm_step(from_x[:, t], self.recurrent, *(before[k] for k in SLSTM_STATE),
                             self.forget_gate)
            active = (t < lengths)[:, None]
            state = {k: torch.where(active, v, state[k]) for k, v in zip(SLSTM_STATE, new)}
            outputs.append(state["h"])
        y = torch.stack(outputs, 1) if outputs else x.new_zeros(*x.shape[:2], self.hidden_size)
        return y, state

    def _step(self, x_t, state, reset, integration_timestep):
        state = self.reset_state(state, reset)
        new = slstm_step(self.from_x(x_t), self.recurrent, *(state[k] for k in SLSTM_STATE),
                         self.forget_gate)
        return new[0], dict(zip(SLSTM_STATE, new))
