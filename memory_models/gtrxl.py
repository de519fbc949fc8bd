"""gtrxl: GTrXL (Parisotto et al. 2020, "Stabilizing Transformers for Reinforcement
Learning") as RLlib's old-stack `ray.rllib.models.torch.attention_net.GTrXLNet` defines it,
over a sliding window of the episode.

One transformer unit with identity-map reordering (LayerNorm at each sublayer's input only)
and GRU-type gates in place of both residual connections, on the linear map of the input,
Transformer-XL relative multi-head attention over a memory of the unit's previous inputs:

    u_t = W_in x_t + b_in                                              (B, H)  unit input
    z_j = LN₁(u_j),  j ∈ S_t (the memory and u_t)                      (B, H)
    q_t = W_q z_t,  k_j = W_k z_j,  v_j = W_v z_j                     (B, n, d)
    r_δ = W_R φ(δ),  δ = t − j ∈ [0, W − 1]                             (n, d)  φ sinusoid
    s_{t,j} = ((q_t + c)·k_j + (q_t + p)·r_{t−j}) / √d + log ω_j       (B, n)
    o_t = Σ_j softmax_j(s_{t,j}) v_j                                   (B, n, d)
    a_t = gate₁(u_t, ReLU(W_o o_t))                                    (B, H)
    e_t = ReLU(W_2 ReLU(W_1 LN₂(a_t)))                                 (B, H)
    y_t = gate₂(a_t, e_t)                                              (B, H)
    gate(h, x) = (1 − g) ⊙ h + g ⊙ ĥ,  r = σ(x W_r + h U_r),
                 g = σ(x W_g + h U_g − b_g),  ĥ = tanh(x W_h + (r ⊙ h) U_h)

H = hidden_size (RLlib's attention_dim), n = heads (default: the largest of 4, 2, 1 dividing
H), d = head_dim (default H / n), M = mlp_size (RLlib's position_wise_mlp_dim; default
H), W = window. c, p (n × d) are Transformer-XL's u and v biases; φ(δ) = [sin(δ f), cos(δ f)],
f_i = 10000^(−2i / H), RLlib's RelativePositionEmbedding; W_R is its `_pos_proj`. None of
the projections in the unit has a bias, as RLlib's. b_g = gate_bias (2.0, RLlib's
init_gru_gate_bias): g starts near σ(−2) ≈ 0.12, so each gate starts near the identity
y ≈ h, the point of GTrXL's gating. Initialisation as RLlib's (xavier-uniform weights, zero
biases, LayerNorms at 1, 0). S_t: the steps t − W < j ≤ t of t's episode (the window);
ω_j: the validity of a slot, as in memory_models.attention.

The memory: the unit inputs u of the last W − 1 steps. RLlib's GTrXLNet(num_outputs=None)
(as its AttentionWrapper builds it, the pre and post layers outside) is this cell with one
unit: `linear_layer` is W_in, its memory the linear layer's outputs. tests/test_gtrxl.py
holds the two equal (float64) with RLlib's weights copied in. Where they differ:

  - window: RLlib's query i of a chunk of T sees its whole memory (`memory_training` or
    `memory_inference` steps, τ) plus the chunk's steps up to i: τ + i + 1 keys, a segment
    recurrence; here every step sees the last W steps, so training and rollout see the same
    window. At T = 1 with τ = W − 1 the two are the same.
  - episodes: RLlib attends over the zero-filled (or previous-episode) memory at an episode's
    start and has no resets inside a sequence; here a reset empties the window (ω = 0).
  - gradient: RLlib detaches the memory; here gradients reach it (the interface's law).
  - `lengths`: RLlib's memory is assembled by its view requirements; here the state after
    lengths[b] steps.
  - layers: RLlib stacks its N units on the same memory scheme (each unit's memory is its
    own input); `make("gtrxl", layers=N)` stacks N cells in memory_models.deep's residual
    blocks. At the default (one unit) the two agree.

State: {"memory": (B, W − 1, H) the unit inputs u of the last W − 1 steps (0 in an empty
slot), "valid": (B, W − 1) ω}; the initial state all zeros. The parallel form is
memory_models.attention.sliding_window_attention (blocks of min(T, W) queries; the
Transformer-XL position term enters as an additive score term gathered from the (W, n, d)
table r by offset), the step its `step_attention` over [memory; u_t] (LN₁ and the key and
value maps recomputed over the W slots at every step, as RLlib's: the state is the unit's
inputs, not keys); without gradients, more than ROWS_PER_PASS rows run in chunks of rows
(attention.in_row_chunks: the value pass's memory). No elapsed time: δ counts steps.
Computes in all four float dtypes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .attention import (HEAD_CANDIDATES, ROWS_PER_PASS, emptied, in_row_chunks,
                        sliding_window_attention, step_attention, window_after)
from .checks import check_heads, check_int, default_heads
from .interface import RecurrentMemory, State
from .registry import register


def xavier_linear(in_size: int, out_size: int, bias: bool = False) -> nn.Linear:
    """nn.Linear with xavier-uniform weight and zero bias (RLlib's SlimFC default)."""
    linear = nn.Linear(in_size, out_size, bias=bias)
    nn.init.xavier_uniform_(linear.weight)
    if bias:
        nn.init.zeros_(linear.bias)
    return linear


class GRUGate(nn.Module):
    """gate(h, x) = (1 − g) ⊙ h + g ⊙ ĥ (module doc), RLlib's GRUGate; h, x (..., H).
    The three input and three state matrices side by side (in × out), one matmul each."""

    def __init__(self, size: int, gate_bias: float):
        super().__init__()
        self.input_weights = nn.Parameter(torch.empty(size, 3 * size))   # [W_r W_g W_h]
        self.state_weights = nn.Parameter(torch.empty(size, 3 * size))   # [U_r U_g U_h]
        for weights in (self.input_weights, self.state_weights):
            for block in weights.detach().split(size, dim=1):
                nn.init.xavier_uniform_(block)                          # each H × H, as RLlib
        self.gate_bias = nn.Parameter(torch.full((size,), float(gate_bias)))   # b_g

    def forward(self, h: Tensor, x: Tensor) -> Tensor:
        size = h.shape[-1]
        x_r, x_g, x_h = (x @ self.input_weights).split(size, dim=-1)
        h_r, h_g = (h @ self.state_weights[:, :2 * size]).split(size, dim=-1)
        r = torch.sigmoid(x_r + h_r)
        g = torch.sigmoid(x_g + h_g - self.gate_bias)
        candidate = torch.tanh(x_h + (r * h) @ self.state_weights[:, 2 * size:])
        return torch.lerp(h, candidate, g)                              # (1 − g) h + g ĥ


def sinusoid(offsets: int, size: int) -> Tensor:
    """φ(δ) for δ = 0 .. offsets − 1: [sin(δ f), cos(δ f)] truncated to `size`, float64."""
    inverse_frequency = 1.0 / 10000 ** (torch.arange(0, size, 2, dtype=torch.float64) / size)
    angle = torch.arange(offsets, dtype=torch.float64)[:, None] * inverse_frequency
    return torch.cat([angle.sin(), angle.cos()], dim=-1)[:, :size]      # (W, H)


@register("gtrxl")
class GTrXL(RecurrentMemory):
    """One GTrXL unit (RLlib's GTrXLNet) over a sliding window of W steps (module doc)."""

    def __init__(self, input_size: int, hidden_size: int, window: int = 64,
                 heads: int | None = None, head_dim: int | None = None,
                 mlp_size: int | None = None, gate_bias: float = 2.0):
        super().__init__(input_size, hidden_size)
        check_int("window", window, why=" (steps each step attends to, itself included)")
        if heads is None:
            heads = default_heads(hidden_size, HEAD_CANDIDATES)
        if head_dim is None:
            check_heads(heads, hidden_size, "hidden_size (or give head_dim)")
            head_dim = hidden_size // heads
        check_int("heads", heads)
        check_int("head_dim", head_dim, why=" (width of one attention head)")
        mlp_size = hidden_size if mlp_size is None else mlp_size
        check_int("mlp_size", mlp_size, why=" (width of the position-wise MLP)")
        if isinstance(gate_bias, bool) or not isinstance(gate_bias, (int, float)) \
                or not math.isfinite(gate_bias):
            raise ValueError(f"gate_bias must be a finite number (the GRU gates' initial "
                             f"bias b_g), got {gate_bias!r}")
        self.window, self.heads, self.head_size, self.mlp_size = window, heads, head_dim, mlp_size
        width = heads * head_dim
        self.input = xavier_linear(input_size, hidden_size, bias=True)   # W_in, b_in
        self.attention_norm = nn.LayerNorm(hidden_size)                  # LN₁
        self.qkv = xavier_linear(hidden_size, 3 * width)                 # W_q, W_k, W_v
        self.position = xavier_linear(hidden_size, width)                # W_R
        self.content_bias = nn.Parameter(torch.empty(heads, head_dim))   # c
        self.position_bias = nn.Parameter(torch.empty(heads, head_dim))  # p
        nn.init.xavier_uniform_(self.content_bias)
        nn.init.xavier_uniform_(self.position_bias)
        self.attention_out = xavier_linear(width, hidden_size)           # W_o
        self.attention_gate = GRUGate(hidden_size, gate_bias)            # gate₁
        self.mlp_norm = nn.LayerNorm(hidden_size)                        # LN₂
        self.mlp = nn.Sequential(xavier_linear(hidden_size, mlp_size), nn.ReLU(),
                                 xavier_linear(mlp_size, hidden_size), nn.ReLU())   # W_1, W_2
        self.mlp_gate = GRUGate(hidden_size, gate_bias)                  # gate₂
        self._sinusoids: dict = {}

    def initial_state(self, batch_size, *, device=None, dtype=None) -> State:
        device, dtype = self._defaults(device, dtype)
        cache = self.window - 1
        return {"memory": torch.zeros(batch_size, cache, self.hidden_size, device=device,
                                      dtype=dtype),
                "valid": torch.zeros(batch_size, cache, device=device, dtype=dtype)}

    def relative_positions(self, like: Tensor) -> Tensor:
        """r_δ = W_R φ(δ), δ = 0 .. W − 1: (W, n, d) in like's dtype (φ cached per dtype)."""
        key = (like.dtype, like.device)
        if key not in self._sinusoids:
            self._sinusoids[key] = sinusoid(self.window, self.hidden_size).to(like)
        return self.position(self._sinusoids[key]).view(self.window, self.heads, self.head_size)

    def _scan(self, x, state, resets, integration_timesteps, lengths):
        batch, steps = x.shape[:2]
        if steps == 0:
            return x.new_zeros(batch, 0, self.hidden_size), dict(state)
        if batch > ROWS_PER_PASS and not torch.is_grad_enabled():        # the value pass
            return in_row_chunks(lambda *a: self._scan(a[0], a[1], a[2], None, a[3]),
                                 x, state, resets, lengths, ROWS_PER_PASS)
        split = (batch, -1, self.heads, self.head_size)
        u = self.input(x)                                                  # (B, T, H)
        memory = torch.cat([state["memory"], u], 1)                        # (B, W−1+T, H)
        q, k, v = self.qkv(self.attention_norm(memory)).chunk(3, dim=-1)
        q = q[:, self.window - 1:].reshape(split)                          # (B, T, n, d)
        r = self.relative_positions(x)                                     # (W, n, d)
        to_position_query = (self.position_bias - self.content_bias)[:, None]   # (n, 1, d)
        scale = self.head_size ** -0.5

        def transformer_xl_term(query_blocks: Tensor, offsets: Tensor) -> Tensor:
            # query_blocks: q + c (B, N, n, Q, d); (q + p)·r_δ / √d for every δ, then by offset
            by_offset = torch.einsum("bnhqd,whd->bnhqw", query_blocks + to_position_query, r)
            index = offsets.expand(*by_offset.shape[:-1], offsets.shape[-1])
            return by_offset.gather(-1, index) * scale                     # (B, N, n, Q, span)

        o = sliding_window_attention(q + self.content_bias, k.reshape(split), v.reshape(split),
                                     state["valid"], resets, self.window, transformer_xl_term)
        attended = torch.relu(self.attention_out(o.reshape(batch, steps, -1)))
        a = self.attention_gate(u, attended)                               # (B, T, H)
        y = self.mlp_gate(a, self.mlp(self.mlp_norm(a)))                   # (B, T, H)
        return y, window_after({"memory": memory}, state["valid"], resets, lengths, self.window)

    def _step(self, x_t, state, reset, integration_timestep):
        batch = x_t.shape[0]
        state = emptied(state, reset)
        u = self.input(x_t)                                                # (B, H)
        memory = torch.cat([state["memory"], u[:, None]], 1)               # (B, W, H)
        weight = torch.cat([state["valid"], state["valid"].new_ones(batch, 1)], 1)   # (B, W)
        q, k, v = self.qkv(self.attention_norm(memory)).chunk(3, dim=-1)   # (B, W, n·d)
        split = (batch, self.window, self.heads, self.head_size)
        q = q[:, -1].view(batch, self.heads, self.head_size)              # (B, n, d)
        r = self.relative_positions(x_t).flip(0)                          # slot j: δ = W − 1 − j
        position_term = torch.einsum("bhd,whd->bhw", q + self.position_bias, r) \
            * self.head_size ** -0.5                                       # (B, n, W)
        o = step_attention(q + self.content_bias, k.reshape(split), v.reshape(split), weight,
                           position_term)                                  # (B, n, d)
        a = self.attention_gate(u, torch.relu(self.attention_out(o.reshape(batch, -1))))
        y = self.mlp_gate(a, self.mlp(self.mlp_norm(a)))
        return y, {"memory": memory[:, 1:], "valid": weight[:, 1:]}
