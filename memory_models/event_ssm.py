"""EventSSM: an S5-style diagonal state-space memory with event-driven (asynchronous) steps,
after Schöne et al. 2024, "Scalable Event-by-event Processing of Neuromorphic Sensory Signals
With Deep State-Space Models" (arXiv 2404.18508).

One complex diagonal state of P/2 modes (P = state_size) shared by all channels:

    s_t = A_bar_t ⊙ s_{t-1} + B_scale_t ⊙ (B x_t)            (B, P/2) complex
    y_t = GELU(2·Re(C s_t) + D x_t)                          (B, hidden_size)

A = -exp(log_A_real) + i·A_imag (P/2,) (S4D-Lin init -1/2 + iπn), B (P/2 × input_size) and
C (hidden_size × P/2) complex, D a real (hidden_size × input_size) skip with bias. The modes
come in conjugate pairs (output 2·Re); the state is stored as real (B, P/2, 2) (re, im).

Discretization with step δ and the time Δt_t elapsed before observation t:

    async (default)  A_bar_t = exp(A δ Δt_t),  B_scale = (exp(A δ) - 1)/A   (Δt-independent)
    zoh              A_bar_t = exp(A δ Δt_t),  B_scale_t = (exp(A δ Δt_t) - 1)/A
    dirac            A_bar_t = exp(A δ Δt_t),  B_scale = 1

With Δt ≡ 1 all three are the synchronous (time-invariant) recurrence of their kind.

δ is a learned step per mode, exp(log_dt), or with `selective=True` an input-dependent step
δ_t = softplus(W_δ x_t + b_δ) per mode (Mamba-style). δ_t depends only on the observation x_t
that arrives at t, so the model stays causal and `step` can compute it online.

Training runs the recurrence as a parallel associative scan (memory_models.ops.scan);
`scan_impl="sequential"` runs the same model with the reference loop over t instead (an
implementation option for tests and benchmarks, not a model choice: `make` does not take it).
Computes in float32 and float64 (torch's complex arithmetic has no half-precision CPU kernels).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .interface import RecurrentMemory, State
from .lrnn import (LTV_LRNN, InferenceCacheStep, as_complex, check_state_size, check_step_range,
                   real_part_weights)
from .ops.scan import SCAN_IMPLS, check_scan_impl
from .registry import register

@register("event_ssm")
class EventSSM(InferenceCacheStep, LTV_LRNN, RecurrentMemory):
    """Event-driven S5-style memory with P/2 complex modes (P = state_size)."""

    discretizations = ("async", "zoh", "dirac")
    dtypes = (torch.float32, torch.float64)
    implementation_options = ("scan_impl",)
    elapsed_time = True
    cache_matrix_keys = ("A", "B", "C")

    def __init__(self, input_size: int, hidden_size: int, state_size: int = 64,
                 discretization: str = "async", selective: bool = False, dt_min: float = 1e-3,
                 dt_max: float = 1e-1, scan_impl: str = "parallel"):
        super().__init__(discretization=discretization, input_size=input_size,
                         hidden_size=hidden_size)
        check_state_size(state_size, "P/2")
        if not isinstance(selective, bool):
            raise TypeError(f"selective must be a bool, got {selective!r}")
        check_step_range(dt_min, dt_max)
        check_scan_impl(scan_impl)
        self.state_size, self.selective, self.scan_impl = state_size, selective, scan_impl
        modes = state_size // 2

        self.log_A_real = nn.Parameter(torch.full((modes,), math.log(0.5)))
        self.A_imag = nn.Parameter(math.pi * torch.arange(modes, dtype=torch.float32))
        self.B = nn.Parameter(torch.randn(modes, input_size, 2) / math.sqrt(2 * input_size))
        self.C = nn.Parameter(torch.randn(hidden_size, modes, 2) / math.sqrt(2 * modes))
        self.D = nn.Linear(input_size, hidden_size)
        dt = torch.exp(torch.rand(modes) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min))
        if selective:                         # softplus(b_δ) = dt at init
            self.dt_proj = nn.Linear(input_size, modes)
            with torch.no_grad():
                self.dt_proj.weight.mul_(0.1)
                self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        else:
            self.log_dt = nn.Parameter(torch.log(dt))                             # (P/2,)

    # ------------------------------------------------------------------ the SSM
    def continuous_matrices(self) -> tuple[Tensor, Tensor, Tensor]:
        """A (P/2,), B (P/2, input_size), C (hidden_size, P/2), complex."""
        A = torch.complex(-torch.exp(self.log_A_real), self.A_imag)
        return A, torch.view_as_complex(self.B), torch.view_as_complex(self.C)

    def step_size(self, x: Tensor) -> Tensor:
        """δ: (..., P/2) from x (..., input_size) if selective, else (P/2,)."""
        if self.selective:
            return F.softplus(self.dt_proj(x))
        return torch.exp(self.log_dt)

    def compute_step_matrices(self) -> tuple[Tensor, Tensor, Tensor]:
        """The continuous matrices in the forms the scan and the step use:

            A      (P/2,) complex
            B_in   (input_size, P) real: x @ B_in = interleaved (Re, Im) of B x
            C_out  (P, hidden_size) real: interleaved (Re, Im) of s @ C_out = Re(C s)

        The discretization depends on each step's Δt (and on x_t when selective), so it is
        done in the step itself."""
        A, B, C = self.continuous_matrices()
        return A, _as_real_matrix(B), real_part_weights(C).T

    def _elements(self, x: Tensor, integration_timesteps: Tensor, matrices):
        """(A_bar, B_scale·B x) for x (..., input_size), Δt (...): (..., P/2) complex each."""
        A, B_in, _ = matrices
        A_bar, B_scale = self.discretize_fn(A, self.step_size(x), integration_timesteps[..., None])
        Bx = torch.view_as_complex((x @ B_in).unflatten(-1, (-1, 2)))
        return A_bar, B_scale * Bx

    def _readout(self, x: Tensor, s: Tensor, C_out: Tensor) -> Tensor:
        """y = GELU(2·Re(C s) + D x) for s (..., P/2) complex."""
        s_pairs = torch.view_as_real(s).flatten(-2).flatten(0, -2)              # (N, P)
        z = torch.addmm(self.D.bias, x.flatten(0, -2), self.D.weight.T)         # (N, hidden)
        z.addmm_(s_pairs, C_out, alpha=2)           # in place: no copy of the skip term
        return F.gelu(z).view(*x.shape[:-1], -1)

    # ------------------------------------------------------------------ interface
    def initial_state(self, batch_size, *, device=None, dtype=None) -> State:
        device, dtype = self._defaults(device, dtype)
        return {"s": torch.zeros(batch_size, self.state_size // 2, 2, device=device,
                                 dtype=dtype)}

    def _scan(self, x, state, resets, integration_timesteps, lengths):
        matrices = self.compute_step_matrices()
        a, b = self._elements(x, integration_timesteps, matrices)               # (B, T, P/2)
        s0 = as_complex(state["s"])
        states = SCAN_IMPLS[self.scan_impl](a, b, s0, resets, lengths)          # (B, T, P/2)
        y = self._readout(x, states, matrices[2])
        final = states[:, -1] if x.shape[1] else s0
        return y, {"s": torch.view_as_real(final)}

    def _recurrence(self, x_t, state, integration_timestep, matrices):
        """One step s_t = A_bar_t s_{t-1} + B_scale_t B x_t with `compute_step_matrices()`."""
        a, b = self._elements(x_t, integration_timestep, matrices)              # (B, P/2)
        s = torch.addcmul(b, a, as_complex(state["s"]))
        return self._readout(x_t, s, matrices[2]), {"s": torch.view_as_real(s)}

    # ------------------------------------------------------------------ the LRNN API
    def forward(self, x: Tensor, integration_timesteps: Tensor | None = None,
                lengths: Tensor | None = None) -> Tensor:
        """x (B, L, input_size) -> y (B, L, hidden_size) from the initial state."""
        return self.scan(x, self.initial_state(x.shape[0], device=x.device, dtype=x.dtype),
                         integration_timesteps=integration_timesteps, lengths=lengths)[0]


def _as_real_matrix(B: Tensor) -> Tensor:
    """B (n, I) complex -> (I, 2n) real with x @ out = interleaved (Re, Im) of B x."""
    return torch.view_as_real(B).permute(1, 0, 2).flatten(1)
