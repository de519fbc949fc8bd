"""FFM: Fast and Forgetful Memory, after Morad et al. 2023, "Reinforcement Learning with Fast
and Forgetful Memory" (NeurIPS 2023; reference code proroklab/ffm, `standalone/ffm`).

From the input one linear layer gives the memory input, a skip path and two sigmoid gates:

    ŷ_t, thru_t, (g_in_t, g_out_t) = split(W x_t + b)          (m), (H), σ(·) (m), (H)
    S_t = γ^{Δt_t} ⊙ S_{t-1} + (ŷ_t ⊙ g_in_t) ⊗ 1_c              (B, m, c) complex
    γ^{Δt}_{jk} = exp((α_j + i ω_k) Δt)
    z_t = LayerNorm(Mix [Re S_t, Im S_t])                        (H), no affine
    y_t = z_t ⊙ g_out_t + thru_t ⊙ (1 − g_out_t)                 (B, H)

m = memory_size (decay rates α ∈ ℝ^m), c = context_size (complex oscillations ω ∈ ℝ^c),
H = hidden_size. Mix is a linear layer over the 2mc reals of S_t in the original's order
(view_as_real(S_t).flatten(): for each (j, k), Re then Im).

α is clamped to [−limit, −1e-8] where it is used, as the original does, with the original's
limit = ln(float64 max) / 1024 − 0.01 ≈ 0.683 (its chunk length max_len = 1024 and fudge 0.01):
the clamp keeps every decay |γ| < 1, and the same range as the original keeps its trained
weights meaningful here. Initialisation as the original's (its `linspace` init):

    α_j = linspace(−limit + 0.01, max(min(−1e-6, ln(forgotten_at) / max_period), −limit + 0.01), m)
    ω_k = 2π / linspace(min_period, max_period, c)

Defaults are the paper's RLlib model (`RayFFM` in proroklab/ffm models/ray_ffm.py): m = 32 and
`context_size: 8` reals there, i.e. c = 4 complex oscillations (its aggregator is built with
context_size // 2 and its mixing layer reads 32·8 = 256 reals), min_period 1, max_period 1024,
forgotten_at 0.01; POPGym's hidden size 256 is the H the RLlib model passes.

Elapsed time: γ is the decay per unit of time, so the time Δt_t elapsed before observation t
decays the state by γ^{Δt_t} = exp((α + iω) Δt_t); the input term is the synchronous one (it is
not scaled by Δt). Δt ≡ 1 is the synchronous FFM.

Parallel form: the recurrence S_t = a_t S_{t-1} + b_t with a_t = γ^{Δt_t}, b_t = (ŷ_t ⊙ g_in_t)
⊗ 1_c is run by the resettable associative scan of memory_models.ops.scan (`linear_scan`),
which only multiplies decays and never divides by them: it is exact and stable at any length,
with resets (a zero decay) and any Δt. The original instead takes a cumulative sum of
γ^{−t}-scaled inputs in chunks of max_len = 1024 steps, which overflows without the chunks and
the clamp, and cannot take resets inside a sequence. `scan_impl="sequential"` runs the same
model with the reference loop over t (an implementation option for tests and benchmarks).
Computes in float32 and float64 (torch's complex arithmetic has no half-precision CPU kernels).
The state is real: {"S": (B, m, c, 2)}, (Re, Im) on the last axis.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import check_int, check_positive
from .derived import ParameterDerived
from .interface import RecurrentMemory, State
from .lrnn import as_complex
from .lru import decay_power
from .ops.scan import SCAN_IMPLS, check_scan_impl
from .registry import register

ORIGINAL_MAX_LEN = 1024       # the original's chunk length, which sets its clamp of α
FUDGE = 0.01                  # the original's margin below the overflow bound
DECAY_LIMIT = math.log(torch.finfo(torch.float64).max) / ORIGINAL_MAX_LEN - FUDGE
SLOWEST_DECAY = -1e-8         # α ≤ this: every mode forgets


@register("ffm")
class FFM(ParameterDerived, RecurrentMemory):
    """Fast and Forgetful Memory: m decays × c oscillations of gated inputs, mixed, normed."""

    dtypes = (torch.float32, torch.float64)
    implementation_options = ("scan_impl",)
    elapsed_time = True

    def __init__(self, input_size: int, hidden_size: int, memory_size: int = 32,
                 context_size: int = 4, min_period: float = 1.0, max_period: float = 1024.0,
                 forgotten_at: float = 0.01, scan_impl: str = "parallel"):
        super().__init__(input_size, hidden_size)
        check_int("memory_size", memory_size, why=" (decay rates m)")
        check_int("context_size", context_size, why=" (complex oscillations c)")
        check_positive("min_period", min_period, why=" (shortest initial period, steps)")
        check_positive("max_period", max_period, why=" (longest initial period, steps)")
        if not min_period < max_period:
            raise ValueError(f"min_period must be < max_period, got min_period={min_period}, "
                             f"max_period={max_period}")
        if not (isinstance(forgotten_at, (int, float)) and not isinstance(forgotten_at, bool)
                and 0 < forgotten_at < 1):
            raise ValueError(f"forgotten_at must be a number in (0, 1) (the fraction of an "
                             f"input left at max_period), got {forgotten_at!r}")
        check_scan_impl(scan_impl)
        self.memory_size, self.context_size, self.scan_impl = memory_size, context_size, scan_impl

        self.pre = nn.Linear(input_size, 2 * memory_size + 2 * hidden_size)
        fastest = -DECAY_LIMIT + FUDGE
        slowest = max(min(-1e-6, math.log(forgotten_at) / max_period), fastest)
        self.alpha = nn.Parameter(torch.linspace(fastest, slowest, memory_size))       # (m,)
        self.omega = nn.Parameter(
            2 * math.pi / torch.linspace(min_period, max_period, context_size))       # (c,)
        self.mix = nn.Linear(2 * memory_size * context_size, hidden_size)

    # ------------------------------------------------------------------ the equations
    def weights(self) -> FFMWeights:
        """What the equations take from the parameters (see FFMWeights)."""
        alpha = self.alpha.clamp(-DECAY_LIMIT, SLOWEST_DECAY)
        log_gamma = torch.complex(alpha[:, None].expand(-1, self.context_size),
                                  self.omega[None, :].expand(self.memory_size, -1))
        return FFMWeights(log_gamma, torch.exp(log_gamma), self.pre.weight.T.contiguous(),
                          self.pre.bias, self.mix.weight.T.contiguous(), self.mix.bias)

    def gates(self, x: Tensor, weights: FFMWeights) -> tuple[Tensor, Tensor, Tensor]:
        """x (..., input_size) -> memory input ŷ ⊙ g_in (..., m), thru (..., H), g_out (..., H)."""
        rows, shape = x.flatten(0, -2), x.shape[:-1]
        sizes = [self.memory_size, self.hidden_size, self.memory_size + self.hidden_size]
        if torch.is_grad_enabled():
            # training: one matmul per part (column blocks of W), each output contiguous:
            # elementwise ops over a strided slice cost up to 3x, and the parts' gradients
            # stay apart (splitting one output concatenates them in backward)
            bounds = [0, sizes[0], sizes[0] + sizes[1], None]
            y_hat, thru, gate = [torch.addmm(weights.pre_bias[start:stop], rows,
                                             weights.pre[:, start:stop]).unflatten(0, shape)
                                 for start, stop in zip(bounds, bounds[1:])]
        else:      # rollout steps, value passes: one matmul (a step is launch-bound)
            y_hat, thru, gate = torch.addmm(weights.pre_bias, rows, weights.pre).unflatten(
                0, shape).split(sizes, dim=-1)
        in_gate, out_gate = gate.sigmoid().split([self.memory_size, self.hidden_size], dim=-1)
        return y_hat * in_gate, thru, out_gate

    def decay(self, integration_timesteps: Tensor, weights: FFMWeights | None = None) -> Tensor:
        """γ^{Δt} = exp((α + iω) Δt) (..., m, c) complex for Δt (...)."""
        weights = self.weights() if weights is None else weights
        return decay_power(weights.log_gamma, integration_timesteps, weights.gamma)

    def readout(self, S: Tensor, thru: Tensor, out_gate: Tensor, weights: FFMWeights) -> Tensor:
        """y = LayerNorm(Mix [Re S, Im S]) ⊙ g_out + thru ⊙ (1 − g_out), S (..., m, c) complex."""
        features = torch.view_as_real(S).flatten(-3)
        z = torch.addmm(weights.mix_bias, features.flatten(0, -2), weights.mix).unflatten(
            0, features.shape[:-1])
        z = F.layer_norm(z, (self.hidden_size,))
        return torch.lerp(thru, z, out_gate)

    # ------------------------------------------------------------------ interface
    def initial_state(self, batch_size, *, device=None, dtype=None) -> State:
        device, dtype = self._defaults(device, dtype)
        return {"S": torch.zeros(batch_size, self.memory_size, self.context_size, 2,
                                 device=device, dtype=dtype)}

    def _scan(self, x, state, resets, integration_timesteps, lengths):
        weights = self.derived(self.weights)
        memory_input, thru, out_gate = self.gates(x, weights)                   # (B, T, ...)
        a = self.decay(integration_timesteps, weights)                         # (B, T, m, c)
        b = torch.complex(memory_input, torch.zeros_like(memory_input))[..., None]
        S0 = as_complex(state["S"])
        states = SCAN_IMPLS[self.scan_impl](a, b, S0, resets, lengths)
        final = states[:, -1] if x.shape[1] else S0
        return self.readout(states, thru, out_gate, weights), {"S": torch.view_as_real(final)}

    def _step(self, x_t, state, reset, integration_timestep):
        weights = self.derived(self.weights)
        memory_input, thru, out_gate = self.gates(x_t, weights)                # (B, ...)
        S = self.decay(integration_timestep, weights) * as_complex(
            self.reset_state(state, reset)["S"]) + memory_input[..., None]     # (B, m, c)
        return self.readout(S, thru, out_gate, weights), {"S": torch.view_as_real(S)}


class FFMWeights(NamedTuple):
    """The parameters in the form the equations use them: log γ = α + iω (α clamped) and
    γ = exp(log γ) (m, c) complex; the input and mixing layers' weights transposed,
    contiguous, as the right-hand side of their matmuls (pre (input_size, 2m + 2H), mix
    (2mc, H); a transposed view costs a rollout step ~10% at batch 16), and their biases."""

    log_gamma: Tensor
    gamma: Tensor
    pre: Tensor
    pre_bias: Tensor
    mix: Tensor
    mix_bias: Tensor
