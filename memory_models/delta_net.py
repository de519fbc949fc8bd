"""DeltaNet and Gated DeltaNet: a matrix memory written by the delta rule.

DeltaNet (Yang et al. 2024, "Parallelizing Linear Transformers with the Delta Rule over
Sequence Length", NeurIPS 2024) and Gated DeltaNet (Yang, Kautz & Hatamizadeh 2025, "Gated
Delta Networks: Improving Mamba2 with Delta Rule", ICLR 2025), as flash-linear-attention's
layers compute them. Per head h = 1..H, with D = hidden_size, H = heads, d = D / H:

    p_t = W_in x_t                                  [u_t (3D), b_t (H) | a_t (H), r_t (D)]
    ū_t = SiLU(conv(u)_t)                           (3D,) depthwise causal conv of kernel K
                                                    (use_short_conv; else ū_t = SiLU(u_t))
    q_t, k_t, v_t = ū_t split into heads            (H, d) each
    q_t = d^{-1/2} q_t / ‖q_t‖,  k_t = k_t / ‖k_t‖  (‖·‖ with ε = 1e-6 under the root)
    β_t = σ(b_t)                                    (H,) write strength in (0, 1)
    S_t = α_t (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ       (H, d, d) per head
    o_t = S_tᵀ q_t                                  (H, d)
    y_t = W_out [RMSNorm(o_t) (⊙ SiLU(r_t))]        (D,) RMSNorm per head, weight (d,)

DeltaNet: α_t = 1 (and no a_t, r_t). Gated DeltaNet, with Mamba-2's decay and the output gate:

    g_t = −exp(A_log) ⊙ softplus(a_t + dt_bias) · Δt_t    (H,) ≤ 0,   α_t = exp(g_t)

S is kept as (d_k, d_v) = the transpose of the papers' S_t = S_{t-1}(I − β k kᵀ) + β v kᵀ,
o_t = S_t q_t (fla's layout); the maths is the same. Initialisation as fla: A uniform on
(0, 16), A_log = log A; dt log-uniform on [0.001, 0.1], dt_bias = softplus⁻¹(dt); the linear
maps torch's default, no biases (fla's projections have none), RMSNorm weight 1, ε = 1e-5.

Choices: heads (default: the largest of 8, 4, 2, 1 that divides hidden_size, so d = 32 at
hidden_size 256: a state of H·d² = 8192 floats, 32 KiB per row, which the rollout copies at
every step; 4 heads of 64 would double it and the chunk's d² work) and d_k = d_v = d (fla's
DeltaNet expand_k = expand_v = 1; fla's GatedDeltaNet's expand_v = 2 is not taken). The
short convolution is on by default (kernel 4, no bias), as both papers and fla: it mixes each
of q, k, v with the previous K − 1 observations of the episode; its window (the last K − 1
pre-conv u's, zeros at an episode's start) is part of the state.

Elapsed time. Gated DeltaNet's α_t is the state's decay over one step, so the time Δt_t
elapsed before observation t decays it by α_t^{Δt_t} = exp(g_t Δt_t) (`elapsed_time = True`;
Δt ≡ 1 is the synchronous form, Δt = 0 keeps the old memory undecayed). The delta-rule write
(the erase I − β k kᵀ and the write β k vᵀ) is one per observation, whatever the time between
them: it is not scaled by Δt. DeltaNet has no decay and ignores `integration_timesteps`.

Parallel form: the chunkwise WY / UT form of `ops.delta_rule.chunked_delta_rule` (resets and
lengths folded into its masks); the short convolution by `ops.short_conv` (K shifted multiply-adds
in place, masked so that no term reaches across a reset); q's scale d^{-1/2} folded exactly
into the read-out's RMSNorm (`heads_from`, `readout`). `scan_impl="sequential"` runs the step-by-step recurrence instead and
`chunk_size` sets the chunk length (implementation options, for tests and benchmarks).
Computes in float32 and float64: the triangular solve has no half-precision CPU kernel.

State (B leading): "S" (B, H, d, d); "conv" (B, K − 1, 3D) with use_short_conv and K > 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import check_heads, check_int, default_heads
from .derived import ParameterDerived
from .interface import RecurrentMemory, State
from .ops.delta_rule import (CHUNK_SIZE, DELTA_RULE_IMPLS, check_delta_rule_impl,
                             delta_rule_step)
from .ops.short_conv import causal_conv, conv_step, episode_positions, window_after
from .registry import register

HEAD_CANDIDATES = (8, 4, 2, 1)       # default heads: the largest of these that divides hidden_size
L2_EPSILON = 1e-6                 # fla's l2norm: x / sqrt(Σx² + 1e-6)
NORM_EPSILON = 1e-5               # fla's RMSNorm of the read-out
BLOCK_STEPS = 2048                # scan rows in blocks of about this many steps (see _scan)


def unit_rms(x: Tensor) -> Tensor:
    """√n · x / sqrt(Σ x² + ε) over the last axis of n entries (0 stays 0): √n times the L2
    normalisation, by torch's fused RMSNorm (Σ x² + ε = n (mean x² + ε/n))."""
    return F.rms_norm(x, (x.shape[-1],), eps=L2_EPSILON / x.shape[-1])


class _DeltaRuleCell(ParameterDerived, RecurrentMemory):
    """The block of the module docstring; `gated` chooses Gated DeltaNet's decay and gate."""

    dtypes = (torch.float32, torch.float64)
    implementation_options = ("scan_impl", "chunk_size")
    gated = False

    def __init__(self, input_size: int, hidden_size: int, heads: int | None = None,
                 use_short_conv: bool = True, conv_size: int = 4, scan_impl: str = "chunked",
                 chunk_size: int = CHUNK_SIZE):
        super().__init__(input_size, hidden_size)
        if heads is None:
            heads = default_heads(hidden_size, HEAD_CANDIDATES)
        check_heads(heads, hidden_size)
        if not isinstance(use_short_conv, bool):
            raise ValueError(f"use_short_conv must be True or False, got {use_short_conv!r}")
        check_int("conv_size", conv_size, why=" (kernel of the short convolution, in steps)")
        check_delta_rule_impl(scan_impl)
        check_int("chunk_size", chunk_size, why=" (steps per chunk of the chunkwise form)")
        self.heads, self.head_size = heads, hidden_size // heads
        self.use_short_conv, self.conv_size = use_short_conv, conv_size
        self.scan_impl, self.chunk_size = scan_impl, chunk_size
        D, H = hidden_size, heads
        self.split_sizes = [3 * D, H] + ([H, D] if self.gated else [])      # [u, b | a, r]
        self.in_proj = nn.Linear(input_size, sum(self.split_sizes), bias=False)
        if use_short_conv:                 # weight[c, j] multiplies u[c] at lag K − 1 − j
            bound = 1 / math.sqrt(conv_size)                         # nn.Conv1d's default
            self.conv_weight = nn.Parameter(torch.empty(3 * D, conv_size).uniform_(-bound, bound))
        if self.gated:
            self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(0, 16)))
            dt = torch.exp(torch.rand(H) * (math.log(0.1) - math.log(0.001)) + math.log(0.001))
            dt = dt.clamp(min=1e-4)
            self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))    # softplus⁻¹(dt)
        self.norm_weight = nn.Parameter(torch.ones(self.head_size))
        self.out_proj = nn.Linear(D, hidden_size, bias=False)

    @property
    def window(self) -> int:
        """Steps of the short convolution's window kept in the state (K − 1, 0 without)."""
        return self.conv_size - 1 if self.use_short_conv else 0

    # ------------------------------------------------------------------ the equations
    def heads_from(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """d·q, k, v (..., H, d) from the convolved, activated ū (..., 3D): q and k L2-normalised
        (q with its scale d^{-1/2}) in one fused RMSNorm, which leaves both √d too long; k is
        scaled back, q's factor √d · √d = d is folded into the read-out's RMSNorm (`readout`)."""
        qk, v = u.unflatten(-1, (3 * self.heads, self.head_size)).split(
            [2 * self.heads, self.heads], -2)                                   # (..., 2H, d)
        q, k = unit_rms(qk).split(self.heads, -2)
        return q, k * self.head_size ** -0.5, v

    def readout(self, o: Tensor, r: Tensor | None) -> Tensor:
        """y = W_out [RMSNorm(o) (⊙ SiLU(r))] (..., D) for the reads o' = d·o (..., H, d) of
        d·q (`heads_from`) and r (..., D). RMSNorm_ε(o) = RMSNorm_{ε d²}(d·o) exactly, so the
        norm of o' with ε d² is the norm of the equations' o with ε."""
        epsilon = NORM_EPSILON * self.head_size ** 2
        o = F.rms_norm(o, (self.head_size,), self.norm_weight, epsilon).flatten(-2)
        if r is not None:
            o = o * F.silu(r)
        return self.out_proj(o)

    def log_decay(self, a: Tensor, integration_timesteps: Tensor) -> Tensor:
        """g = −exp(A_log) softplus(a + dt_bias) Δt (..., H), for a (..., H), Δt (...)."""
        g = self.derived(self.decay_rate) * F.softplus(a + self.dt_bias)
        return g * integration_timesteps[..., None]

    def decay_rate(self) -> Tensor:
        """−exp(A_log) (H,): g per unit of softplus (kept between rollout steps)."""
        return -torch.exp(self.A_log)


    def short_conv(self, u: Tensor, window: Tensor, resets: Tensor,
                   lengths: Tensor) -> tuple[Tensor, Tensor]:
        """conv(u) (B, T, 3D) over u (B, T, 3D) after the window (B, K − 1, 3D) of the last
        pre-conv inputs, no lag reaching before the episode's start, and the window after
        lengths[b] steps (ops.short_conv)."""
        positions = episode_positions(resets)
        out = causal_conv(u, window, self.conv_weight, None, positions)
        return out, window_after(u, window, positions, lengths)

    # ------------------------------------------------------------------ interface
    def initial_state(self, batch_size, *, device=None, dtype=None) -> State:
        device, dtype = self._defaults(device, dtype)
        d = self.head_size
        state = {"S": torch.zeros(batch_size, self.heads, d, d, device=device, dtype=dtype)}
        if self.window:
            state["conv"] = torch.zeros(batch_size, self.window, 3 * self.hidden_size,
                                        device=device, dtype=dtype)
        return state

    def _scan(self, x, state, resets, integration_timesteps, lengths):
        batch, steps = x.shape[:2]
        if steps == 0:
            return x.new_zeros(batch, 0, self.hidden_size), dict(state)
        rows = max(1, BLOCK_STEPS // steps)
        if rows >= batch:
            return self._scan_rows(x, state, resets, integration_timesteps, lengths)
        outputs, states = [], []
        for start in range(0, batch, rows):
            block = slice(start, start + rows)
            y, final = self._scan_rows(x[block], {k: v[block] for k, v in state.items()},
                                       resets[block], integration_timesteps[block],
                                       lengths[block])
            outputs.append(y)
            states.append(final)
        return torch.cat(outputs), {k: torch.cat([s[k] for s in states]) for k in states[0]}

    def _scan_rows(self, x, state, resets, integration_timesteps, lengths):
        """`_scan` of one block of rows."""
        u, b, *gate = self.in_proj(x).split(self.split_sizes, -1)
        new_state = {}
        if self.window:
            u, new_state["conv"] = self.short_conv(u, state["conv"], resets, lengths)
        elif self.use_short_conv:                           # K = 1: a per-channel scale
            u = u * self.conv_weight[:, 0]
        q, k, v = self.heads_from(F.silu(u))                                 # (B, T, H, d)
        g = self.log_decay(gate[0], integration_timesteps) if self.gated else None
        impl = DELTA_RULE_IMPLS[self.scan_impl]
        options = {"chunk_size": self.chunk_size} if self.scan_impl == "chunked" else {}
        o, new_state["S"] = impl(q, k, v, torch.sigmoid(b), state["S"], g, resets, lengths,
                                 **options)
        return self.readout(o, gate[1] if self.gated else None), new_state

    def _step(self, x_t, state, reset, integration_timestep):
        state = self.reset_state(state, reset)
        u, b, *gate = self.in_proj(x_t).split(self.split_sizes, -1)
        new_state = {}
        if self.window:
            u, new_state["conv"] = conv_step(u, state["conv"], self.conv_weight, None)
        elif self.use_short_conv:
            u = u * self.conv_weight[:, 0]
        q, k, v = self.heads_from(F.silu(u))                                 # (B, H, d)
        g = self.log_decay(gate[0], integration_timestep) if self.gated else None
        o, new_state["S"] = delta_rule_step(q, k, v, torch.sigmoid(b), state["S"], g)
        return self.readout(o, gate[1] if self.gated else None), new_state


@register("delta_net")
class DeltaNet(_DeltaRuleCell):
    """DeltaNet: S_t = (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ per head, o_t = S_tᵀ q_t, with
    a short convolution, L2-normalised q and k, per-head RMSNorm and an output projection
    (module docstring). No elapsed time: `integration_timesteps` is ignored."""

    gated = False


@register("gated_delta_net")
class GatedDeltaNet(_DeltaRuleCell):
    """Gated DeltaNet: DeltaNet's memory decayed by α_t = exp(g_t) ≤ 1 before each write
    (Mamba-2's g = −exp(A_log) softplus(a + dt_bias)), raised to the elapsed time Δt_t, and
    an output gate SiLU(r_t) after the RMSNorm (module docstring)."""

    gated = True
    elapsed_time = True
