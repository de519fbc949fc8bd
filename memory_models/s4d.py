"""S4D: a diagonal state-space layer (Gu et al. 2022, "On the Parameterization and
Initialization of Diagonal State Space Models") as a recurrent memory.

Per channel h = 1..H (H = hidden_size) and complex mode n = 1..N/2 (N = state_size):

    u_t   = W_in x_t + b_in                                   (B, H)      input projection
    s_t   = A_bar ⊙ s_{t-1} + B_bar ⊙ u_t                     (B, H, N/2) complex state
    z_t   = 2·Re(Σ_n C ⊙ s_t) + D ⊙ u_t                       (B, H)
    y_t   = W_out GELU(z_t) + b_out                           (B, hidden_size)

A = -exp(log_A_real) + i·A_imag (H, N/2), Re A < 0; step δ = exp(log_dt) per channel;
(A_bar, B_scale) = DISCRETIZATIONS[discretization](A, δ), B_bar = B_scale (B = 1 as in the
minimal S4D: C absorbs it). The modes come in conjugate pairs, so N/2 complex modes stand for N
real ones and the output is 2·Re; the state is stored as real (B, H, N/2, 2) (re, im).

Inits: "lin" (S4D-Lin) A_n = -1/2 + iπn; "inv" (S4D-Inv) A_n = -1/2 + i(N/π)(N/(2n+1) - 1).

Parallel path (`scan`), with A_bar^t = exp(t·log A_bar) (no cumulative products):

    z_t = Σ_{j<=t} k_(t-j) u_j + D u_t + 2·Re(Σ_n C A_bar^(t+1) s_{-1}),
    k_t = 2·Re(Σ_n C B_bar A_bar^t)                              the SSM kernel (H, T)

(the sum is a causal FFT convolution), and the state after `lengths[b]` = ℓ steps
s_ℓ = A_bar^ℓ s_{-1} + B_bar Σ_{j<ℓ} A_bar^(ℓ-1-j) u_j. The kernel and both state terms are
real einsums over the modes against two small tables of powers (`_power_tables`): complex
tensors hold only those tables and, with a carried state, the state, in the forward and the
backward pass. Resets repack episodes into rows. The recurrent path (`step`) runs the
recurrence above; both agree to rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .interface import RecurrentMemory, State, scan_episodes_as_rows
from .lrnn import (LTI_LRNN, InferenceCacheStep, as_complex, check_state_size,
                   check_step_range, real_part_weights)
from .ops.causal_conv import causal_fft_conv
from .registry import register

INITS = ("lin", "inv")


@register("s4d")
class S4D(InferenceCacheStep, LTI_LRNN, RecurrentMemory):
    """Diagonal S4 memory: H = hidden_size channels of N/2 complex modes (N = state_size)."""

    discretizations = ("zoh", "bilinear", "dirac")
    dtypes = (torch.float32, torch.float64)      # complex arithmetic: no half-precision kernels
    cache_matrix_keys = ("A_bar", "B_bar", "C")

    def __init__(self, input_size: int, hidden_size: int, state_size: int = 64,
                 init: str = "lin", discretization: str = "zoh", dt_min: float = 1e-3,
                 dt_max: float = 1e-1):
        super().__init__(discretization=discretization, input_size=input_size,
                         hidden_size=hidden_size)
        check_state_size(state_size, "N/2")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        check_step_range(dt_min, dt_max)
        self.state_size = state_size
        channels, modes = hidden_size, state_size // 2

        self.in_proj = nn.Linear(input_size, channels)
        log_dt = torch.rand(channels) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)                                       # (H,)
        n = torch.arange(modes, dtype=torch.float32)
        if init == "lin":
            imag = math.pi * n
        else:
            imag = state_size / math.pi * (state_size / (2 * n + 1) - 1)
        self.log_A_real = nn.Parameter(torch.full((channels, modes), math.log(0.5)))
        self.A_imag = nn.Parameter(imag.repeat(channels, 1))                    # (H, N/2)
        self.C = nn.Parameter(torch.randn(channels, modes, 2) * math.sqrt(0.5))  # (H, N/2, re/im)
        self.D = nn.Parameter(torch.randn(channels))
        self.out_proj = nn.Linear(channels, hidden_size)

    # ------------------------------------------------------------------ the SSM
    def discretize(self) -> tuple[Tensor, Tensor, Tensor]:
        """(A_bar, B_bar, C), each (H, N/2) complex in the parameters' dtype."""
        C = torch.view_as_complex(self.C)
        A_bar, B_bar, _ = self._discretize_float64()
        return A_bar.to(C.dtype), B_bar.to(C.dtype), C

    def _discretize_float64(self) -> tuple[Tensor, Tensor, Tensor]:
        """(A_bar, B_bar, log A_bar), (H, N/2) complex128 whatever the parameters' dtype
        (cheap: H·N/2 entries). |A_bar| is floored at the smallest normal float64 before the
        log, so a decay that underflowed to 0 gives A_bar^0 = 1 (not NaN) and 0 beyond."""
        A = torch.complex(-torch.exp(self.log_A_real.double()), self.A_imag.double())
        delta = torch.exp(self.log_dt.double())[:, None]                          # (H, 1)
        A_bar, B_bar = self.discretize_fn(A, delta)
        magnitude = A_bar.abs().clamp_min(torch.finfo(torch.float64).tiny)
        return A_bar, B_bar, torch.complex(magnitude.log(), A_bar.angle())

    def compute_kernel(self, length: int) -> tuple[Tensor, Tensor]:
        """(K (H, N/2, L) complex: K[..., l] = A_bar^l, B_norm (H, N/2) = B_bar).

        The seed's (N, L) and (N, H) with the channel axis leading: every channel has its own
        N/2 modes, so B_norm's (N, H) block-diagonal matrix is stored as its (H, N/2) diagonal.
        """
        dtype = self.C.dtype.to_complex()
        _, B_bar, log_A_bar = self._discretize_float64()
        exponents = torch.arange(length, device=log_A_bar.device, dtype=torch.float64)
        return _complex(_powers(log_A_bar, exponents)).to(dtype), B_bar.to(dtype)

    # ------------------------------------------------------------------ interface
    def initial_state(self, batch_size, *, device=None, dtype=None) -> State:
        device, dtype = self._defaults(device, dtype)
        return {"s": torch.zeros(batch_size, self.hidden_size, self.state_size // 2, 2,
                                 device=device, dtype=dtype)}

    def _scan(self, x, state, resets, integration_timesteps, lengths):
        return scan_episodes_as_rows(self._scan_from_state, self.initial_state, x, state,
                                     resets, integration_timesteps, lengths)

    def _scan_from_state(self, x: Tensor, state: State, integration_timesteps: Tensor,
                         lengths: Tensor) -> tuple[Tensor, State]:
        """FFT path without resets: x (B, T, I) from state s_{-1} -> y (B, T, hidden), state.

        Sequences are channel-major, u (H, B, T). Each term is one real einsum over the modes
        against the power tables of `_power_tables` (t = c·m + j), complex numbers held as
        (Re, Im) pairs and 2x2 real multipliers (`_multiplier`):

            kernel  k_t = 2·Re Σ_n C B_bar A_bar^t                                  (H, T)
            output  z_t = Σ_{j<=t} k_(t-j) u_j + D u_t + 2·Re Σ_n C A_bar A_bar^t s_{-1}
        """
        batch, steps = x.shape[:2]
        channels, dtype = self.hidden_size, x.dtype
        # u = W_in x + b_in straight into the channel-major layout (one matmul, no transpose copy)
        u = torch.addmm(self.in_proj.bias[:, None], self.in_proj.weight, x.flatten(0, 1).T)
        u = u.view(channels, batch, steps)                                      # (H, B, T)
        A_bar, B_bar, log_A_bar = self._discretize_float64()                    # (H, n) c128
        C = torch.view_as_complex(self.C).to(A_bar.dtype)
        within, across = _power_tables(log_A_bar, batch, steps, dtype)    # (H,n,2,c) (H,n,M+1)
        chunks = -(-steps // within.shape[-1])                                  # M
        readout = within * within.new_tensor([[2.0], [-2.0]])   # Σ pairs(q)·readout = 2·Re(q w)

        kernel = torch.einsum("hncm,hncj->hmj", _pairs((C * B_bar)[..., None] * across, dtype)
                              [..., :chunks], readout).flatten(1)[:, :steps]    # (H, T)
        # the skip D u_t is the kernel's lag 0: k_0 + D
        kernel = torch.cat([kernel[:, :1] + self.D[:, None], kernel[:, 1:]], dim=-1)
        z = causal_fft_conv(u, kernel[:, None])                                 # (H, B, T)
        s0 = state["s"]                                                         # (B, H, n, 2)
        carried = s0.requires_grad or bool(s0.any())
        if carried:                                     # the free response of s_{-1}
            free = torch.einsum("bhnc,hnmcd,hndj->hbmj", s0, _multiplier(
                (C * A_bar)[..., None] * across[..., :chunks], dtype), readout)
            z = z + free.flatten(2)[..., :steps]
        activation = F.gelu(z).reshape(channels, batch * steps)                 # (H, B·T)
        y = torch.addmm(self.out_proj.bias, activation.T, self.out_proj.weight.T)
        s = self._state_after(u, s0 if carried else None, lengths, B_bar, within, across)
        return y.view(batch, steps, -1), {"s": s}

    @staticmethod
    def _state_after(u: Tensor, s0: Tensor | None, lengths: Tensor, B_bar: Tensor,
                     within: Tensor, across: Tensor) -> Tensor:
        """s_ℓ = A_bar^ℓ s_{-1} + B_bar Σ_{k<ℓ} A_bar^k u_(ℓ-1-k) for ℓ = lengths[b], as
        (B, H, n, 2) pairs; s0 None stands for a zero s_{-1}. The inputs are read newest first,
        k = c·m + j: newest[h, b, m, j] = u_(ℓ-1-k) (0 for k >= ℓ)."""
        channels, batch, steps = u.shape
        width = within.shape[-1]
        chunks = -(-steps // width)
        before_end = (lengths - 1)[:, None] - torch.arange(chunks * width, device=u.device)
        newest = u.gather(2, before_end.clamp(min=0).expand(channels, -1, -1))
        newest = (newest * (before_end >= 0)).view(channels, batch, chunks, width)
        s = torch.einsum("hbmj,hncj,hnmcd->bhnd", newest, within,
                         _multiplier(B_bar[..., None] * across[..., :chunks], u.dtype))
        if s0 is None:
            return s
        # A_bar^ℓ = A_bar^(c·(ℓ // c)) A_bar^(ℓ % c)
        power = _complex(within)[..., lengths % width]
        decay = across.to(power.dtype)[..., lengths // width] * power               # (H, n, B)
        return s + torch.view_as_real(decay.permute(2, 0, 1) * as_complex(s0))

    def _recurrence(self, x_t: Tensor, state: State, integration_timestep: Tensor,
                    matrices) -> tuple[Tensor, State]:
        """One step with `compute_step_matrices()`: s_t = A_bar s_{t-1} + B_bar u_t,
        z_t = 2·Re Σ_n C s_t + D u_t (the module equations). The cell is time-invariant:
        integration_timestep is ignored."""
        A_bar, B_bar, C_readout = matrices
        u = self.in_proj(x_t)                                                   # (B, H)
        Bu = torch.view_as_complex(torch.view_as_real(B_bar) * u[..., None, None])
        s = torch.addcmul(Bu, A_bar, as_complex(state["s"]))                    # (B, H, n)
        readout = torch.linalg.vecdot(torch.view_as_real(s).flatten(-2), C_readout)
        z = torch.addcmul(readout, self.D, u)                                   # (B, H)
        return self.out_proj(F.gelu(z)), {"s": torch.view_as_real(s)}

    def compute_step_matrices(self) -> tuple[Tensor, Tensor, Tensor]:
        """(A_bar, B_bar, C_readout) for the recurrence (reused by `step_matrices`; the
        inference cache holds them as "A_bar", "B_bar", "C"): A_bar, B_bar (H, N/2) complex
        from discretize(), C_readout (H, N) real, C_readout · interleave(s) = 2·Re Σ_n C s."""
        A_bar, B_bar, C = self.discretize()
        return A_bar, B_bar, 2 * real_part_weights(C)

    # ------------------------------------------------------------------ seed API
    def forward(self, x: Tensor, integration_timesteps: Tensor | None = None,
                lengths: Tensor | None = None) -> Tensor:
        """x (B, L, input_size) -> y (B, L, hidden_size) from the initial state (Δt ignored)."""
        return self.scan(x, self.initial_state(x.shape[0], device=x.device, dtype=x.dtype),
                         lengths=lengths)[0]


def _power_tables(log_A_bar: Tensor, batch: int, steps: int,
                  dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """A_bar^t for t < T as two small tables, A_bar^(c·m + j) = across[..., m]·within[..., j]:

        within (H, n, 2, c)   (Re, Im) of A_bar^j, j < c, in `dtype`
        across (H, n, M + 1)  A_bar^(c·m), m <= T // c, complex128 (phase exact for long T)

    from log A_bar (H, n) complex128, c = ceil(sqrt(B·T)) at most T, M = ceil(T / c). The
    tables and the per-chunk intermediates of the einsums, (B, H, n, M), then stay near
    H·n·sqrt(B·T) entries: no (H, n, T) table is built for long sequences, and short ones
    (c = T, M = 1) use the plain Vandermonde table within.
    """
    width = max(1, min(steps, math.isqrt(max(batch * steps - 1, 0)) + 1))
    j = torch.arange(width, device=log_A_bar.device, dtype=dtype)
    m = torch.arange(steps // width + 1, device=log_A_bar.device, dtype=torch.float64)
    return (_powers(log_A_bar.to(dtype.to_complex()), j),
            _complex(_powers(log_A_bar, width * m)))


def _powers(log_z: Tensor, exponents: Tensor) -> Tensor:
    """(Re, Im) of z^k = exp(k·log z) for log z (H, n) complex and k (K,) real
    -> (H, n, 2, K) real. No cumulative products."""
    magnitude = torch.exp(log_z.real[..., None] * exponents)
    phase = log_z.imag[..., None] * exponents
    return torch.stack([magnitude * torch.cos(phase), magnitude * torch.sin(phase)], dim=-2)


def _complex(pairs: Tensor) -> Tensor:
    """(H, n, 2, K) real (Re, Im) -> (H, n, K) complex (a copy)."""
    return torch.complex(pairs[..., 0, :], pairs[..., 1, :])


def _pairs(z: Tensor, dtype: torch.dtype) -> Tensor:
    """(H, n, K) complex -> (H, n, 2, K) real (Re, Im) in `dtype`: the einsum operand layout."""
    return torch.view_as_real(z).to(dtype).transpose(-1, -2)


def _multiplier(z: Tensor, dtype: torch.dtype) -> Tensor:
    """(H, n, K) complex -> (H, n, K, 2, 2) real M with (Re x, Im x) @ M = (Re, Im)(x·z)."""
    re, im = z.real.to(dtype), z.imag.to(dtype)
    return torch.stack([torch.stack([re, im], -1), torch.stack([-im, re], -1)], -2)
