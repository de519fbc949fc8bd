"""transformer: a pre-LayerNorm transformer block over a sliding window of the episode.

One block, multi-head causal self-attention in which step t attends to the steps
max(t − W + 1, episode start) .. t, then a position-wise MLP, both with residuals:

    u_t = W_in x_t + b_in                                              (B, H)
    q_t, k_t, v_t = split(W_qkv LN₁(u_t) + b_qkv)                      (B, n, d) each
    s_{t,j} = q_t·k_j / √d + P_h(t − j) + log ω_j,    j ∈ S_t          (B, n)   per key j
    o_t = Σ_{j ∈ S_t} softmax_j(s_{t,j}) v_j                           (B, n, d)
    a_t = u_t + W_o o_t + b_o                                          (B, H)   residual 1
    y_t = a_t + W_2 GELU(W_1 LN₂(a_t) + b_1) + b_2                     (B, H)   residual 2

H = hidden_size, n = heads (default: the largest of 4, 2, 1 dividing H), d = H / n,
W = window, M = mlp_size (default H, as gtrxl's; W_1: M × H, W_2: H × M). S_t = the steps j with
t − W < j ≤ t of t's episode: the window. LN₁, LN₂ affine LayerNorms. ω_j ∈ {0, 1} is the
validity of key j (1 for every step of the current chunk; the state's flag for a cached key),
so log ω_j = −inf takes a slot out: softmax_j is the softmax weighted by ω.

Positions (`position`, the term P_h(t − j) of s_{t,j} above; every choice depends on the
offset t − j alone, so the cache holds no absolute positions):

    "alibi"    −m_h (t − j) + q_t·k_j/√d        (default) ALiBi (Press et al. 2022), the fixed
               slopes m_h = 2^(−8 (h + 1) / n) of the paper (h = 0 .. n−1)
    "learned"  b_h[t − j] + q_t·k_j/√d          a learned bias per head and offset, b (n, W),
               ALiBi's −m_h δ at init (from zero it learned the probe's recall 3x slower)
    "rotary"   (R_{p_t} q_t)·(R_{p_j} k_j)/√d = q_t·R_{p_j − p_t} k_j/√d   (RoFormer, Su et al.
               2021) in place of q_t·k_j/√d: R_p rotates each pair (z_i, z_{i+d'/2}) of the
               first d' = 2⌊d/2⌋ features of a head by the angle p θ_i, θ_i = 10000^(−2i/d')
               (i = 0 .. d'/2 − 1; an odd d's last feature is not rotated). p is the key's
               index in the window [cache; chunk] (0 .. W − 2 + T) and the query's own index
               there (W − 1 + its step in the chunk): the cache keeps the keys unrotated, they
               are rotated when a scan or a step uses them, and p_j − p_t = −(t − j)
    "none"     q_t·k_j/√d                       no position term

ALiBi is the default (the committed attention study ran it): the bias joins the window and
episode mask in the one additive mask of scaled_dot_product_attention, and each head's slope
is a recency scale from ~W steps (the smallest slope) to a few steps (the largest). Its
penalty is monotone in the offset, so no head can single out one offset (t − 3 in
RepeatPreviousEasy) over the steps nearer t: the probe in
benchmarks/results/attention/diagnosis.md measured chance there, rotary and learned offsets
not. No elapsed time: every position counts steps, `integration_timesteps` are ignored (an
offset in elapsed time would be new, and is left out).

State (a window of keys and values, W − 1 slots, the oldest first):

    keys    (B, W − 1, H)   k of the last W − 1 steps (heads side by side), 0 in an empty slot
    values  (B, W − 1, H)   v of the same steps
    valid   (B, W − 1)      ω: 1 where the slot holds a step of the current episode, else 0

The initial state is all zeros (an empty window); a reset empties the window before x_t.
After `lengths[b]` steps the state is the window of the last W − 1 steps before that point.

Parallel form (`sliding_window_attention`): the chunk's queries against [cached keys; chunk
keys] under one additive mask (within W, causal, same episode, log ω, the position bias), by
torch.nn.functional.scaled_dot_product_attention in blocks of Q = min(T, W) queries, each
against the W − 1 + Q keys before and in its block, so the cost is linear in T:
O(T (W + Q) H) and a mask of (B, T / Q, n, Q, W − 1 + Q). `step` (`step_attention`) is
the same for T = 1 without the blocks: [cache; new], then the oldest slot dropped.
Without gradients (the value pass) a scan of more than ROWS_PER_PASS rows runs them in
chunks of that many, to bound the masks' memory. The per-step reference (a loop over t,
written out) is in tests/test_transformer.py.
Computes in all four float dtypes.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import check_heads, check_int, default_heads
from .interface import RecurrentMemory, State
from .registry import register

HEAD_CANDIDATES = (4, 2, 1)
POSITIONS = ("alibi", "rotary", "learned", "none")     # the position term (module doc)
ROTARY_BASE = 10000.0


def log_weights(weights: Tensor) -> Tensor:
    """log ω where ω > 0, −inf where ω ≤ 0 (a slot out of the window); its gradient is finite
    (1/ω) where ω > 0 and 0 elsewhere."""
    tiny = torch.finfo(weights.dtype).tiny
    return torch.where(weights > 0, weights.clamp(min=tiny).log(),
                       torch.full_like(weights, -torch.inf))


def episode_of_slots(resets: Tensor, cache_slots: int) -> Tensor:
    """(B, W − 1 + T) long: the episode index of each slot of [cache; chunk], 0 for the cached
    steps and for the chunk's steps before its first reset, +1 at each reset."""
    episode = resets.long().cumsum(1)                                       # (B, T)
    return F.pad(episode, (cache_slots, 0))


def sliding_window_attention(queries: Tensor, keys: Tensor, values: Tensor, cache_weight: Tensor,
                             resets: Tensor, window: int,
                             position_bias: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Each query t of the chunk attends to the keys t − W < j ≤ t of its episode.

    queries (B, T, n, d): the chunk's; keys, values (B, W − 1 + T, n, d): [cache; chunk];
    cache_weight (B, W − 1): ω of the cached slots (the chunk's are 1); resets (B, T) bool.
    position_bias(query_blocks (B, N, n, Q, d), offsets (Q, W − 1 + Q) long in [0, W − 1])
    -> an additive score term broadcastable to (B, N, n, Q, W − 1 + Q) (the ALiBi or the
    Transformer-XL term), added with the mask to the scaled scores.
    Returns the attention outputs (B, T, n, d), softmax(q k / √d + bias + mask) v.
    """
    batch, steps, heads, head_size = queries.shape
    cache = window - 1
    block = min(steps, window)                                   # Q queries per block
    blocks = -(-steps // block)                                  # N
    pad = blocks * block - steps                                 # padded steps: see themselves
    span = cache + block                                         # keys per block
    episode = episode_of_slots(F.pad(resets, (0, pad)), cache)                # (B, W−1+T')
    weight = F.pad(torch.cat([cache_weight, cache_weight.new_ones(batch, steps)], 1), (0, pad),
                   value=1.0)                                                 # (B, W−1+T')
    if pad:
        queries, keys, values = (F.pad(t, (0, 0, 0, 0, 0, pad))
                                 for t in (queries, keys, values))

    def blocks_of(slots: Tensor) -> Tensor:      # (B, W−1+T', ...) -> (B, N, span, ...)
        if blocks == 1:                          # a view (T <= W: the learner's, a step's)
            return slots[:, None]
        return slots.unfold(1, span, block).movedim(-1, 2)

    query_blocks = queries.reshape(batch, blocks, block, heads, head_size).transpose(2, 3)
    #                                                                       (B, N, n, Q, d)
    key_blocks = blocks_of(keys).transpose(2, 3)                           # (B, N, n, span, d)
    value_blocks = blocks_of(values).transpose(2, 3)
    # offset t − j of query i (slot W − 1 + i of its block) and key j of the block
    position = torch.arange(span, device=queries.device)
    offsets = cache + position[:block, None] - position[None, :]          # (Q, span)
    in_window = (offsets >= 0) & (offsets < window)
    key_episode = blocks_of(episode)                                       # (B, N, span)
    query_episode = key_episode[:, :, cache:]                              # (B, N, Q)
    same = (query_episode[..., :, None] == key_episode[..., None, :]) & in_window  # (B,N,Q,span)
    mask = torch.where(same, blocks_of(log_weights(weight))[:, :, None, :],
                       torch.full((), -torch.inf, dtype=queries.dtype, device=queries.device))
    mask = mask[:, :, None] + position_bias(query_blocks, offsets.clamp(0, cache))
    flat = batch * blocks
    if blocks == 1:                              # views in (B, n, ·, d), no copies
        query_blocks, key_blocks, value_blocks = (b[:, 0] for b in (query_blocks, key_blocks,
                                                                    value_blocks))
    out = F.scaled_dot_product_attention(
        query_blocks.reshape(flat, heads, block, head_size),
        key_blocks.reshape(flat, heads, span, head_size),
        value_blocks.reshape(flat, heads, span, head_size),
        attn_mask=mask.reshape(flat, -1, block, span))                     # (B·N, n, Q, d)
    out = out.view(batch, blocks, heads, block, head_size).transpose(2, 3)
    return out.reshape(batch, blocks * block, heads, head_size)[:, :steps]


def step_attention(query: Tensor, keys: Tensor, values: Tensor, weight: Tensor,
                   position_bias: Tensor) -> Tensor:
    """One step of `sliding_window_attention`: the query against its window of W slots.

    query (B, n, d); keys, values (B, W, n, d): [cache; this step's], the oldest first;
    weight (B, W): ω (0 for the slots a reset emptied, 1 for this step's); position_bias
    (n, W) or (B, n, W): the additive term of slot j at offset W − 1 − j. -> (B, n, d)."""
    mask = log_weights(weight)[:, None, None, :] + position_bias.unsqueeze(-2)  # (B, n, 1, W)
    return F.scaled_dot_product_attention(query[:, :, None], keys.transpose(1, 2),
                                          values.transpose(1, 2), attn_mask=mask)[:, :, 0]


def emptied(state: State, reset: Tensor) -> State:
    """The window with every slot zeroed (ω = 0) in the rows that reset (B,) before this step."""
    if not bool(reset.any()):
        return state
    return {k: torch.where(reset.view(-1, *[1] * (v.ndim - 1)), 0, v) for k, v in state.items()}


def window_after(slots: dict[str, Tensor], cache_weight: Tensor, resets: Tensor,
                 lengths: Tensor, window: int) -> dict[str, Tensor]:
    """The window state after lengths[b] steps: the last W − 1 slots of [cache; chunk] up to
    that step, zeroed (and ω = 0) where they belong to an earlier episode than its last step.

    slots: name -> (B, W − 1 + T, ...) [cache; chunk] entries; cache_weight (B, W − 1);
    resets (B, T); lengths (B,). Returns {name: (B, W − 1, ...)} and "valid": (B, W − 1)."""
    batch, steps = resets.shape
    cache = window - 1
    episode = episode_of_slots(resets, cache)                               # (B, W−1+T)
    weight = torch.cat([cache_weight, cache_weight.new_ones(batch, steps)], 1)
    index = lengths[:, None] + torch.arange(cache, device=resets.device)    # (B, W−1)
    last = episode.gather(1, (lengths[:, None] + cache - 1).clamp(min=0))   # (B, 1)
    if steps:
        last = torch.where(lengths[:, None] > 0, last, 0)
    keep = episode.gather(1, index) == last                                 # (B, W−1)
    state = {}
    for name, value in slots.items():
        kept = value.gather(1, index.view(batch, cache, *[1] * (value.ndim - 2)).expand(
            batch, cache, *value.shape[2:]))
        state[name] = torch.where(keep.view(batch, cache, *[1] * (value.ndim - 2)), kept, 0)
    state["valid"] = torch.where(keep, weight.gather(1, index), 0)
    return state


ROWS_PER_PASS = 256     # rows a scan without gradients runs at once (the GAE value pass)


def in_row_chunks(scan, x: Tensor, state: State, resets: Tensor, lengths: Tensor,
                  rows: int):
    """scan(x, state, resets, lengths) -> (y, state) run on `rows` rows at a time and joined:
    without gradients, a pass over many rows (the value pass: 1260 x 53 at POPGym's
    protocol) holds the attention's (rows, n, Q, W − 1 + Q) masks of one chunk of rows at a
    time. The rows are independent, so the result is the same."""
    parts = [scan(x[i:i + rows], {k: v[i:i + rows] for k, v in state.items()},
                  resets[i:i + rows], lengths[i:i + rows]) for i in range(0, x.shape[0], rows)]
    return (torch.cat([y for y, _ in parts]),
            {k: torch.cat([final[k] for _, final in parts]) for k in state})


def alibi_slopes(heads: int) -> Tensor:
    """m_h = 2^(−8 (h + 1) / n), h = 0 .. n − 1 (ALiBi's geometric slopes), float64 (n,)."""
    return 2.0 ** (-8.0 * torch.arange(1, heads + 1, dtype=torch.float64) / heads)


def rotary_frequencies(head_size: int) -> Tensor:
    """θ_i = 10000^(−2i/d'), i = 0 .. d'/2 − 1, d' = 2⌊d/2⌋: float64 (d'/2,)."""
    rotated = head_size - head_size % 2
    return ROTARY_BASE ** (-torch.arange(0, rotated, 2, dtype=torch.float64) / max(rotated, 1))


def rotate(z: Tensor, positions: Tensor, frequencies: Tensor) -> Tensor:
    """R_p z: each pair (z_i, z_{i+d'/2}) of the first d' features turned by the angle p θ_i.

    z (..., P, n, d); positions (P,) (float64 or long); frequencies θ (d'/2,) float64.
    The angles are taken in float64 and their cos and sin cast to z's dtype."""
    angles = positions.to(torch.float64)[:, None] * frequencies.to(positions.device)  # (P, d'/2)
    cos, sin = (f(angles).to(z.dtype)[:, None, :] for f in (torch.cos, torch.sin))   # (P, 1, d'/2)
    half = frequencies.numel()
    first, second, rest = z[..., :half], z[..., half:2 * half], z[..., 2 * half:]
    return torch.cat([first * cos - second * sin, first * sin + second * cos, rest], -1)


@register("transformer")
class Transformer(RecurrentMemory):
    """A pre-LayerNorm transformer block over a sliding window of W steps (module doc)."""

    def __init__(self, input_size: int, hidden_size: int, window: int = 64,
                 heads: int | None = None, mlp_size: int | None = None,
                 position: str = "alibi"):
        super().__init__(input_size, hidden_size)
        if position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS} (the attention's position "
                             f"term), got {position!r}")
        check_int("window", window, why=" (steps each step attends to, itself included)")
        heads = default_heads(hidden_size, HEAD_CANDIDATES) if heads is None else heads
        check_heads(heads, hidden_size)
        mlp_size = hidden_size if mlp_size is None else mlp_size
        check_int("mlp_size", mlp_size, why=" (width of the position-wise MLP)")
        self.window, self.heads, self.mlp_size, self.position = window, heads, mlp_size, position
        self.head_size = hidden_size // heads
        self.input = nn.Linear(input_size, hidden_size)                   # W_in, b_in
        self.attention_norm = nn.LayerNorm(hidden_size)                   # LN₁
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)                # W_qkv, b_qkv
        self.attention_out = nn.Linear(hidden_size, hidden_size)          # W_o, b_o
        self.mlp_norm = nn.LayerNorm(hidden_size)                         # LN₂
        self.mlp = nn.Sequential(nn.Linear(hidden_size, mlp_size), nn.GELU(),
                                 nn.Linear(mlp_size, hidden_size))        # W_1, b_1, W_2, b_2
        if position == "alibi":
            self.register_buffer("slopes", alibi_slopes(heads).float())   # m_h (n,)
        if position == "learned":
            offsets = torch.arange(window, dtype=torch.float64)
            self.offset_bias = nn.Parameter(                               # b_h[δ] (n, W)
                (-alibi_slopes(heads)[:, None] * offsets).float())
        # θ (d'/2,), float64 whatever the cell's dtype: a plain attribute, not a buffer, so
        # that .float() / .half() leave it in float64 (rotate moves it to the device)
        self.rotary_frequencies = rotary_frequencies(self.head_size)

    def initial_state(self, batch_size, *, device=None, dtype=None) -> State:
        device, dtype = self._defaults(device, dtype)
        cache = self.window - 1
        zeros = torch.zeros(batch_size, cache, self.hidden_size, device=device, dtype=dtype)
        return {"keys": zeros, "values": zeros.clone(),
                "valid": torch.zeros(batch_size, cache, device=device, dtype=dtype)}

    def position_bias(self, query_blocks: Tensor, offsets: Tensor) -> Tensor:
        """The additive position term at the offsets t − j (long, in [0, W − 1]):
        −m_h (t − j) ("alibi"), b_h[t − j] ("learned"), 0 (rotary, none), (n, *offsets.shape),
        to broadcast over (B, N)."""
        dtype = query_blocks.dtype
        if self.position == "alibi":
            return -self.slopes.to(dtype).view(-1, *[1] * offsets.ndim) * offsets.to(dtype)
        if self.position == "learned":
            return self.offset_bias.to(dtype)[:, offsets]
        return query_blocks.new_zeros((1,) * (1 + offsets.ndim))

    def rotated(self, queries: Tensor, keys: Tensor) -> tuple[Tensor, Tensor]:
        """Rotary positions (module doc) on the queries (B, T, n, d) and the keys
        [cache; chunk] (B, W − 1 + T, n, d): key j turned by j θ, query i by (W − 1 + i) θ.
        Unchanged for the other positions."""
        if self.position != "rotary":
            return queries, keys
        slots = torch.arange(keys.shape[1], device=keys.device)
        return (rotate(queries, slots[keys.shape[1] - queries.shape[1]:],
                       self.rotary_frequencies),
                rotate(keys, slots, self.rotary_frequencies))

    def _scan(self, x, state, resets, integration_timesteps, lengths):
        batch, steps = x.shape[:2]
        if steps == 0:
            return x.new_zeros(batch, 0, self.hidden_size), dict(state)
        if batch > ROWS_PER_PASS and not torch.is_grad_enabled():
            return in_row_chunks(lambda *a: self._scan(a[0], a[1], a[2], None, a[3]),
                                 x, state, resets, lengths, ROWS_PER_PASS)
        split = (batch, -1, self.heads, self.head_size)
        u = self.input(x)                                                  # (B, T, H)
        q, k, v = self.qkv(self.attention_norm(u)).chunk(3, dim=-1)        # (B, T, H) each
        keys = torch.cat([state["keys"], k], 1)                            # (B, W−1+T, H)
        values = torch.cat([state["values"], v], 1)
        queries, rotated_keys = self.rotated(q.reshape(split), keys.view(split))
        o = sliding_window_attention(queries, rotated_keys, values.view(split),
                                     state["valid"], resets, self.window, self.position_bias)
        a = u + self.attention_out(o.reshape(batch, steps, self.hidden_size))
        y = a + self.mlp(self.mlp_norm(a))                                 # (B, T, H)
        return y, window_after({"keys": keys, "values": values}, state["valid"], resets,
                               lengths, self.window)

    def _step(self, x_t, state, reset, integration_timestep):
        batch = x_t.shape[0]
        state = emptied(state, reset)
        u = self.input(x_t)                                                # (B, H)
        q, k, v = self.qkv(self.attention_norm(u)).chunk(3, dim=-1)        # (B, H) each
        keys = torch.cat([state["keys"], k[:, None]], 1)                   # (B, W, H)
        values = torch.cat([state["values"], v[:, None]], 1)
        weight = torch.cat([state["valid"], state["valid"].new_ones(batch, 1)], 1)   # (B, W)
        offsets = torch.arange(self.window - 1, -1, -1, device=x_t.device)
        split = (batch, self.window, self.heads, self.head_size)
        query, rotated_keys = self.rotated(q.view(batch, 1, self.heads, self.head_size),
                                           keys.view(split))
        o = step_attention(query[:, 0], rotated_keys, values.view(split), weight,
                           self.position_bias(q, offsets))                 # (B, n, d)
        a = u + self.attention_out(o.reshape(batch, self.hidden_size))
        y = a + self.mlp(self.mlp_norm(a))
        return y, {"keys": keys[:, 1:], "values": values[:, 1:], "valid": weight[:, 1:]}
