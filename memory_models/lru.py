"""LRU: the Linear Recurrent Unit, after Orvieto et al. 2023, "Resurrecting Recurrent Neural
Networks for Long Sequences" (ICML 2023).

A complex diagonal linear recurrence with a normalised input and a real readout:

    x_t = λ^{Δt_t} ⊙ x_{t-1} + γ ⊙ (B u_t)                 (B, N) complex
    y_t = Re(C x_t) + D u_t                                 (B, hidden_size)
    λ = exp(−exp(ν) + i exp(θ))   (N,)   (|λ| = exp(−exp(ν)) < 1 for every ν)
    γ = sqrt(1 − |λ|²)            (N,)   the normalisation, computed from λ

N = state_size; B (N × input_size) and C (hidden_size × N) complex, D (hidden_size ×
input_size) real. u_t is the input x_t of the interface; x_t here is the paper's state.

Initialisation as the paper (its appendix code; "ring init"): with u₁, u₂ uniform on (0, 1],
|λ|² uniform on [r_min², r_max²] and arg λ uniform on [0, max_phase]:

    ν = log(−½ log(u₁ (r_max² − r_min²) + r_min²)),   θ = log(max_phase · u₂)
    B ~ N(0, 1/(2·input_size)) (real and imaginary parts), C ~ N(0, 1/N) (each part)

Differences from the paper's code: γ is computed from λ (the issue's γ = sqrt(1 − |λ|²)), where
the paper initialises a separate trained γ_log to that value; D is a full real matrix
~ N(0, 1/input_size), because input and output widths differ here, where the paper's D is a
diagonal (a vector ~ N(0, 1)) for equal widths.

Defaults: r_min = 0 and max_phase = 2π as the paper's code; r_max = 0.99 (the code's default
r_max = 1 is excluded, at |λ| = 1 the mode neither forgets nor takes input, γ = 0; 0.99 keeps
an input for ~100 steps at the slowest, the scale of POPGym's episodes; the paper's long-range
tasks raise it to 0.999 and above); N = 80 (issue 29): the modern study
(benchmarks/results/modern) ran N = 80 beside N = 256, memax's choice of N = hidden size at
POPGym's hidden size 256, and they learned the same on its three tasks (RepeatPreviousEasy 0.98
vs 0.99, CountRecallEasy -0.78 vs -0.79, PositionOnlyCartPoleEasy 1.00 both; P(> popgym:GRU)
0.81 vs 0.78), at GRU's parameter count for hidden 64 and 0.39x the learner's fwd+bwd time at
hidden 256 (55 vs 143 ms, 157 x 53, 1 thread). Studies before 2026-12-06 ran N = 256: their
configs say `state_size: 256`.

Elapsed time: λ is the decay per unit of time, so the time Δt_t elapsed before observation t
decays the state by λ^{Δt_t} = exp(Δt_t · log λ) = exp(Δt_t (−exp(ν) + i exp(θ))); the input
term γ ⊙ (B u_t) is the synchronous one (not scaled by Δt). Δt ≡ 1 is the synchronous LRU.
log λ is the parameters' −exp(ν) + i exp(θ) (rotation exp(θ) per unit of time), not the
principal logarithm: the two differ for non-integer Δt where exp(θ) > π.

Parallel form: x_t = a_t x_{t-1} + b_t (a_t = λ^{Δt_t}, b_t = γ ⊙ B u_t) by the resettable
associative scan of memory_models.ops.scan (`linear_scan`): exact and stable at any length,
with resets and any Δt. `scan_impl="sequential"` runs the reference loop over t instead (an
implementation option for tests and benchmarks). Computes in float32 and float64 (complex
arithmetic). The state is real: {"x": (B, N, 2)}, (Re, Im) on the last axis.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .checks import check_int, check_positive
from .derived import ParameterDerived
from .interface import RecurrentMemory, State
from .lrnn import as_complex
from .ops.scan import SCAN_IMPLS, check_scan_impl
from .registry import register


@register("lru")
class LRU(ParameterDerived, RecurrentMemory):
    """Linear Recurrent Unit with N complex modes (N = state_size)."""

    dtypes = (torch.float32, torch.float64)
    implementation_options = ("scan_impl",)
    elapsed_time = True

    def __init__(self, input_size: int, hidden_size: int, state_size: int = 80,
                 r_min: float = 0.0, r_max: float = 0.99, max_phase: float = 2 * math.pi,
                 scan_impl: str = "parallel"):
        super().__init__(input_size, hidden_size)
        check_int("state_size", state_size, why=" (complex modes N)")
        check_ring(r_min, r_max, max_phase)
        check_scan_impl(scan_impl)
        self.state_size, self.scan_impl = state_size, scan_impl
        self.r_min, self.r_max, self.max_phase = r_min, r_max, max_phase

        self.nu_log, self.theta_log = ring_init(state_size, r_min, r_max, max_phase)
        self.B_re = nn.Parameter(torch.randn(state_size, input_size) / math.sqrt(2 * input_size))
        self.B_im = nn.Parameter(torch.randn(state_size, input_size) / math.sqrt(2 * input_size))
        self.C_re = nn.Parameter(torch.randn(hidden_size, state_size) / math.sqrt(state_size))
        self.C_im = nn.Parameter(torch.randn(hidden_size, state_size) / math.sqrt(state_size))
        self.D = nn.Parameter(torch.randn(hidden_size, input_size) / math.sqrt(input_size))

    # ------------------------------------------------------------------ the equations
    def log_lambda(self) -> Tensor:
        """log λ = −exp(ν) + i exp(θ) (N,) complex."""
        return ring_log_lambda(self.nu_log, self.theta_log)

    def normalisation(self) -> Tensor:
        """γ = sqrt(1 − |λ|²) (N,) real."""
        return ring_normalisation(self.nu_log)

    def weights(self) -> LRUWeights:
        """What the equations take from the parameters (see LRUWeights)."""
        log_lambda, gamma = self.log_lambda(), self.normalisation()
        input_weight = torch.cat([torch.stack([self.B_re.T * gamma, self.B_im.T * gamma], -1)
                                  .flatten(-2), self.D.T], -1)                 # (I, 2N + H)
        readout_weight = torch.stack([self.C_re.T, -self.C_im.T], 1).flatten(0, 1)  # (2N, H)
        return LRUWeights(log_lambda, torch.exp(log_lambda), input_weight, readout_weight)

    def elements(self, u: Tensor, integration_timesteps: Tensor,
                 weights: LRUWeights | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(a, b) of x_t = a_t x_{t-1} + b_t: λ^{Δt}, γ ⊙ B u, (..., N) complex each, and
        D u (..., H) real. [γ B u, D u] is one real matmul, γ B u as (Re, Im) interleaved,
        viewed as complex (copied where an odd 2N + H leaves no complex view); in training
        two (column blocks of the same weight), so that backward does not concatenate their
        gradients."""
        weights = self.weights() if weights is None else weights
        a = decay_power(weights.log_lambda, integration_timesteps, weights.decay)
        if torch.is_grad_enabled():     # training: two matmuls, gradients kept apart
            b, direct = u @ weights.input[:, :2 * self.state_size], \
                u @ weights.input[:, 2 * self.state_size:]
        else:                           # rollout steps, value passes: one (launch-bound)
            b, direct = (u @ weights.input).split([2 * self.state_size, self.hidden_size], -1)
        return a, as_complex(b.unflatten(-1, (self.state_size, 2))), direct

    def readout(self, x: Tensor, direct: Tensor, weights: LRUWeights | None = None) -> Tensor:
        """y = Re(C x) + D u = C_re Re x − C_im Im x + D u, x (..., N) complex, direct = D u:
        one real matmul of the interleaved (Re, Im) pairs of x with [C_re, −C_im] interleaved
        alike."""
        weights = self.weights() if weights is None else weights
        return torch.addmm(direct.flatten(0, -2), torch.view_as_real(x).flatten(-2)
                           .flatten(0, -2), weights.readout).view(*direct.shape)

    # ------------------------------------------------------------------ interface
    def initial_state(self, batch_size, *, device=None, dtype=None) -> State:
        device, dtype = self._defaults(device, dtype)
        return {"x": torch.zeros(batch_size, self.state_size, 2, device=device, dtype=dtype)}

    def _scan(self, u, state, resets, integration_timesteps, lengths):
        weights = self.derived(self.weights)
        a, b, direct = self.elements(u, integration_timesteps, weights)        # (B, T, N)
        x0 = as_complex(state["x"])
        states = SCAN_IMPLS[self.scan_impl](a, b, x0, resets, lengths)
        final = states[:, -1] if u.shape[1] else x0
        return self.readout(states, direct, weights), {"x": torch.view_as_real(final)}

    def _step(self, u_t, state, reset, integration_timestep):
        weights = self.derived(self.weights)
        a, b, direct = self.elements(u_t, integration_timestep, weights)       # (B, N)
        x = torch.addcmul(b, a, as_complex(self.reset_state(state, reset)["x"]))
        return self.readout(x, direct, weights), {"x": torch.view_as_real(x)}


class LRUWeights(NamedTuple):
    """The parameters in the form the equations use them: log λ and λ = exp(log λ) (N,)
    complex; input [γ B (Re, Im) interleaved, D]ᵀ (input_size, 2N + H) and readout
    [C_re, −C_im] interleaved, transposed (2N, H), real, each laid out as the right-hand side
    of its matmul (u @ input; a transposed view costs a rollout step ~10% at batch 16)."""

    log_lambda: Tensor
    decay: Tensor
    input: Tensor
    readout: Tensor


def decay_power(log_decay: Tensor, integration_timesteps: Tensor,
                decay: Tensor | None = None) -> Tensor:
    """exp(log_decay · Δt) (*Δt.shape, *log_decay.shape) for Δt (...): the decay over each
    elapsed time. With Δt ≡ 1 (synchronous steps) it is exp(log_decay) itself, expanded (one
    exp of the parameters, not one per step; the same value and gradient), `decay` when the
    caller has it already."""
    broadcast = integration_timesteps.view(*integration_timesteps.shape,
                                           *[1] * log_decay.ndim)
    if bool((integration_timesteps == 1).all()):
        decay = torch.exp(log_decay) if decay is None else decay
        return decay.expand(*integration_timesteps.shape, *log_decay.shape)
    return torch.exp(log_decay * broadcast)


def ring_init(n: int, r_min: float, r_max: float,
              max_phase: float) -> tuple[nn.Parameter, nn.Parameter]:
    """(ν, θ_log) (n,) each: |λ|² uniform on [r_min², r_max²], arg λ uniform on (0, max_phase]
    (the LRU paper's ring initialisation, λ = exp(−exp(ν) + i exp(θ_log)))."""
    u1, u2 = 1 - torch.rand(n), 1 - torch.rand(n)                          # (0, 1]
    nu_log = torch.log(-0.5 * torch.log(u1 * (r_max ** 2 - r_min ** 2) + r_min ** 2))
    return nn.Parameter(nu_log), nn.Parameter(torch.log(max_phase * u2))


def ring_log_lambda(nu_log: Tensor, theta_log: Tensor) -> Tensor:
    """log λ = −exp(ν) + i exp(θ_log) (N,) complex."""
    return torch.complex(-torch.exp(nu_log), torch.exp(theta_log))


def ring_normalisation(nu_log: Tensor) -> Tensor:
    """γ = sqrt(1 − |λ|²) = sqrt(−expm1(−2 exp(ν))) (N,) real."""
    return torch.sqrt(-torch.expm1(-2 * torch.exp(nu_log)))


def check_ring(r_min, r_max, max_phase) -> None:
    """0 ≤ r_min < r_max < 1 (the ring of initial |λ|) and max_phase > 0."""
    for name, value in (("r_min", r_min), ("r_max", r_max)):
        if not (isinstance(value, (int, float)) and not isinstance(value, bool)
                and 0 <= value < 1):
            raise ValueError(f"{name} must be a number in [0, 1) (initial |λ|), got {value!r}")
    if not r_min < r_max:
        raise ValueError(f"r_min must be < r_max (the ring of initial |λ|), got r_min={r_min}, "
                         f"r_max={r_max}")
    check_positive("max_phase", max_phase, why=" (largest initial arg λ)")
