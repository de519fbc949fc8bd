"""RTU: Recurrent Trace Units, after Elelimy et al. 2024, "Real-Time Recurrent Learning using
Trace Units in Reinforcement Learning" (NeurIPS 2024, arXiv 2409.01449); the linear RTU.

A diagonal complex linear recurrence written in real (cosine) form, with the nonlinearity on
the output, not in the recurrence (the paper's "linear recurrence, nonlinear output" RTU):

    h¹_t = g ⊙ h¹_{t-1} − φ ⊙ h²_{t-1} + γ ⊙ (W¹ x_t)        (B, N)
    h²_t = g ⊙ h²_{t-1} + φ ⊙ h¹_{t-1} + γ ⊙ (W² x_t)        (B, N)
    y_t  = f([h¹_t, h²_t])                                     (B, hidden_size = 2N)
    g = r cos θ,  φ = r sin θ,  r = exp(−exp(ν)),  θ = exp(θ_log)    (N,)
    γ = sqrt(1 − r²)                                            (N,) the input normalisation

N = hidden_size / 2 (hidden_size must be even), W¹, W² (N × input_size), f = ReLU (the
paper's default; `activation` "tanh" or "linear" are its other choices). In complex form, with
h_t = h¹_t + i h²_t and λ = r e^{iθ} = exp(−exp(ν) + i exp(θ_log)):

    h_t = λ ⊙ h_{t-1} + γ ⊙ (W¹ x_t + i W² x_t),   y_t = f([Re h_t, Im h_t])

which is the recurrence of memory_models.lru (the same λ, the same γ) without LRU's readout
C, D: the output is the trace itself through f. The paper trains RTUs with RTRL, which a
diagonal recurrence makes cheap; here they are trained by BPTT as every other cell (the
gradient is the same, RTRL is not asked for). The paper's other kind, the non-linear RTU
(f inside the recurrence: h_t = f(...), memorax's RTUCell), is sequential by nature and is
not built here.

Initialisation as the authors' code ("exp_exp" parameterisation, LRU's ring init): |λ|²
uniform on [r_min², r_max²], arg λ uniform on (0, max_phase]; W¹, W² ~ N(0, 1/input_size)
(flax Dense's LeCun normal, untruncated). Their code's r_max = 1 is excluded as in LRU (at
|λ| = 1 a unit neither forgets nor takes input, γ = 0); r_max = 0.99 is LRU's default.

Elapsed time: λ is the decay per unit of time, so the time Δt_t elapsed before observation t
decays (and rotates) the trace by λ^{Δt_t} = exp(Δt_t (−exp(ν) + i exp(θ_log))); the input
term is the synchronous one (not scaled by Δt). Δt ≡ 1 is the paper's RTU (lru.decay_power).

Parallel form: h_t = a_t h_{t-1} + b_t (a_t = λ^{Δt_t}, b_t = γ ⊙ (W¹ + i W²) x_t) by the
resettable associative scan of memory_models.ops.scan (`linear_scan`); `scan_impl=
"sequential"` runs the reference loop over t (an implementation option for tests and
benchmarks). Computes in float32 and float64 (complex arithmetic). The state is real:
{"h": (B, N, 2)}, (h¹, h²) = (Re, Im) on the last axis.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .derived import ParameterDerived
from .interface import RecurrentMemory, State
from .lrnn import as_complex
from .lru import check_ring, decay_power, ring_init, ring_log_lambda, ring_normalisation
from .ops.scan import SCAN_IMPLS, check_scan_impl
from .registry import register

ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "linear": lambda v: v}


@register("rtu")
class RTU(ParameterDerived, RecurrentMemory):
    """Linear Recurrent Trace Units: N = hidden_size / 2 complex units, output f([Re h, Im h])."""

    dtypes = (torch.float32, torch.float64)
    implementation_options = ("scan_impl",)
    elapsed_time = True

    def __init__(self, input_size: int, hidden_size: int, activation: str = "relu",
                 r_min: float = 0.0, r_max: float = 0.99, max_phase: float = 2 * math.pi,
                 scan_impl: str = "parallel"):
        super().__init__(input_size, hidden_size)
        if hidden_size % 2:
            raise ValueError(f"hidden_size must be even for rtu (the output is [Re h, Im h] of "
                             f"hidden_size / 2 complex units), got {hidden_size}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)} (f of the "
                             f"output), got {activation!r}")
        check_ring(r_min, r_max, max_phase)
        check_scan_impl(scan_impl)
        self.units = hidden_size // 2
        self.activation, self.scan_impl = activation, scan_impl
        self.r_min, self.r_max, self.max_phase = r_min, r_max, max_phase

        n = self.units
        self.nu_log, self.theta_log = ring_init(n, r_min, r_max, max_phase)
        self.W_c1 = nn.Parameter(torch.randn(n, input_size) / math.sqrt(input_size))
        self.W_c2 = nn.Parameter(torch.randn(n, input_size) / math.sqrt(input_size))

    # ------------------------------------------------------------------ the equations
    def log_lambda(self) -> Tensor:
        """log λ = −exp(ν) + i exp(θ_log) (N,) complex: λ = r e^{iθ} = g + i φ."""
        return ring_log_lambda(self.nu_log, self.theta_log)

    def normalisation(self) -> Tensor:
        """γ = sqrt(1 − r²) = sqrt(−expm1(−2 exp(ν))) (N,) real."""
        return ring_normalisation(self.nu_log)

    def weights(self) -> RTUWeights:
        """What the equations take from the parameters (see RTUWeights)."""
        log_lambda, gamma = self.log_lambda(), self.normalisation()
        input_weight = torch.stack([self.W_c1.T * gamma, self.W_c2.T * gamma], -1).flatten(-2)
        return RTUWeights(log_lambda, torch.exp(log_lambda), input_weight)

    def elements(self, x: Tensor, integration_timesteps: Tensor,
                 weights: RTUWeights | None = None) -> tuple[Tensor, Tensor]:
        """(a, b) of h_t = a_t h_{t-1} + b_t: λ^{Δt} and γ ⊙ (W¹ + i W²) x, (..., N) complex
        each; γ W x is one real matmul, (Re, Im) interleaved, viewed as complex."""
        weights = self.weights() if weights is None else weights
        a = decay_power(weights.log_lambda, integration_timesteps, weights.decay)
        b = as_complex((x @ weights.input).unflatten(-1, (self.units, 2)))
        return a, b

    def output(self, h: Tensor) -> Tensor:
        """y = f([Re h, Im h]) (..., 2N) for h (..., N) complex."""
        pairs = torch.view_as_real(h)                                           # (..., N, 2)
        return ACTIVATIONS[self.activation](pairs.transpose(-1, -2).flatten(-2))

    # ------------------------------------------------------------------ interface
    def initial_state(self, batch_size, *, device=None, dtype=None) -> State:
        device, dtype = self._defaults(device, dtype)
        return {"h": torch.zeros(batch_size, self.units, 2, device=device, dtype=dtype)}

    def _scan(self, x, state, resets, integration_timesteps, lengths):
        a, b = self.elements(x, integration_timesteps, self.derived(self.weights))  # (B, T, N)
        h0 = as_complex(state["h"])
        h = SCAN_IMPLS[self.scan_impl](a, b, h0, resets, lengths)
        final = h[:, -1] if x.shape[1] else h0
        return self.output(h), {"h": torch.view_as_real(final)}

    def _step(self, x_t, state, reset, integration_timestep):
        a, b = self.elements(x_t, integration_timestep, self.derived(self.weights))  # (B, N)
        h = torch.addcmul(b, a, as_complex(self.reset_state(state, reset)["h"]))
        return self.output(h), {"h": torch.view_as_real(h)}


class RTUWeights(NamedTuple):
    """log λ and λ = exp(log λ) (N,) complex; the input weight [γ W¹, γ W²]ᵀ with the (Re, Im)
    columns of each unit interleaved (input_size, 2N), the right-hand side of x @ input."""

    log_lambda: Tensor
    decay: Tensor
    input: Tensor
