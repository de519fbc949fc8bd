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

Parallel path (`scan`): with K_l = A_bar^l = exp(l·log A_bar) (no cumulative products),

    z_t = Σ_{j<=t} k_{t-j} u_j + 2·Re(Σ_n C A_bar^(t+1) s_{-1}) + D u_t,
    k_l = 2·Re(Σ_n C B_bar A_bar^l)                              the SSM kernel (H, L)

(the sum is a causal FFT convolution), and the state after `lengths[b]` = ℓ steps
s_ℓ = A_bar^ℓ s_{-1} + B_bar Σ_{j<ℓ} A_bar^(ℓ-1-j) u_j. Resets repack episodes into rows.
The recurrent path (`step`) runs the recurrence above; both agree to rounding.
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
        Built from the factor tables of `_power_tables` (the FFT path uses those directly).
        """
        _, B_bar, log_A_bar = self._discretize_float64()
        within, across = self._power_tables(length, log_A_bar)
        powers = (across[..., :, None] * within[..., None, :]).flatten(-2)        # (H, n, M·c)
        return powers[..., :length], B_bar.to(powers.dtype)

    def _power_tables(self, length: int, log_A_bar: Tensor) -> tuple[Tensor, Tensor]:
        """A_bar^l for l < L as two small tables, A_bar^(c·m + j) = across[..., m]·within[..., j].

        within (H, n, c) = A_bar^j and across (H, n, M) = A_bar^(c·m), c = ceil(sqrt(L)),
        M = ceil(L / c). Each entry is exp(l·log A_bar) taken in float64 (no cumulative
        products; the phase l·arg A_bar stays exact for long L), cast to the parameters' dtype.
        """
        dtype = self.C.dtype.to_complex()
        width = math.isqrt(max(length - 1, 0)) + 1                                # c
        j = torch.arange(width, device=log_A_bar.device, dtype=torch.float64)
        within = torch.exp(log_A_bar[..., None] * j).to(dtype)
        across = torch.exp(log_A_bar[..., None] * (j[:-(-length // width)] * width)).to(dtype)
        return within, across

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
        """FFT path without resets: x (B, T, I) from state -> y (B, T, hidden), state.

        Sequences are laid out channel-major, (H, B, T), and time is split as t = c·m + j
        (`_power_tables`), so every sum over modes is a batched matmul against the small
        table within (H, n, c) and no (H, n, T) tensor of powers is ever built.
        """
        batch, steps = x.shape[:2]
        channels = self.hidden_size
        # u = W_in x + b_in straight into the channel-major layout (one matmul, no transpose copy)
        u = torch.addmm(self.in_proj.bias[:, None], self.in_proj.weight, x.flatten(0, 1).T)
        u = u.view(channels, batch, steps)                                      # (H, B, T)
        A_bar, B_bar, log_A_bar = self._discretize_float64()
        C = torch.view_as_complex(self.C)
        A_bar, B_bar = A_bar.to(C.dtype), B_bar.to(C.dtype)
        within, across = self._power_tables(steps, log_A_bar)                   # (H,n,c) (H,n,M)
        within_re_im = _interleave(within)                                      # (H, 2n, c)

        def response(coefficients: Tensor) -> Tensor:
            """2·Re Σ_n q_n A_bar_n^t, t < T, for q (H, R, n) complex -> (H, R, T) real."""
            q = 2 * coefficients[..., None, :] * across.transpose(1, 2)[:, None]  # (H,R,M,n)
            out = real_part_weights(q).flatten(1, 2) @ within_re_im             # (H, R·M, c)
            return out.unflatten(1, (q.shape[1], -1)).flatten(2)[..., :steps]

        # the skip D u_t is the kernel's lag 0: k_0 + D
        kernel = response((C * B_bar)[:, None])                                 # (H, 1, T)
        kernel = torch.cat([kernel[..., :1] + self.D[:, None, None], kernel[..., 1:]], dim=-1)
        z = causal_fft_conv(u, kernel)                                          # (H, B, T)
        s0 = as_complex(state["s"])                                             # (B, H, n)
        if state["s"].requires_grad or bool(s0.any()):   # initial state's response C A_bar^(t+1) s0
            z = z + response((C * A_bar * s0).transpose(0, 1))
        activation = F.gelu(z).reshape(channels, batch * steps)                 # (H, B·T)
        y = torch.addmm(self.out_proj.bias, activation.T, self.out_proj.weight.T)
        state = self._state_after(u, s0, lengths, within_re_im, across, B_bar, log_A_bar)
        return y.view(batch, steps, -1), {"s": state}

    def _state_after(self, u, s0, lengths, within_re_im, across, B_bar, log_A_bar) -> Tensor:
        """s_ℓ = A_bar^ℓ s_{-1} + B_bar Σ_{k<ℓ} A_bar^k u_(ℓ-1-k) for ℓ = lengths[b].

        The input sum is split as k = c·m + j against the tables within (H, 2n, c) and
        across (H, n, M). When every row runs the whole sequence (ℓ = T) the inputs are read
        oldest first with flipped tables (u_i meets A_bar^(M·c-1-i) after M·c - T zeros in
        front, no copy when c divides T); otherwise each row's last ℓ inputs are gathered
        newest first.
        """
        channels, batch, steps = u.shape
        width, rows = within_re_im.shape[-1], across.shape[-1]
        if bool((lengths == steps).all()):
            u_blocks = F.pad(u, (rows * width - steps, 0))                      # (H, B, M·c)
            within_re_im, across = within_re_im.flip(-1), across.flip(-1)
        else:  # newest first: u_blocks[:, b, k] = u[:, b, ℓ_b - 1 - k] for k < ℓ_b, else 0
            source = (lengths - 1)[:, None] - torch.arange(rows * width, device=u.device)
            u_blocks = u.gather(2, source.clamp(min=0).expand(channels, -1, -1))
            u_blocks = u_blocks * (source >= 0).to(u.dtype)                     # (H, B, M·c)
        partial = u_blocks.view(channels, batch * rows, width) @ within_re_im.transpose(1, 2)
        partial = torch.view_as_complex(partial.unflatten(-1, (-1, 2)))         # (H, B·M, n)
        inputs = (partial.unflatten(1, (-1, rows)) * across.transpose(1, 2)[:, None]).sum(2)
        decay = torch.exp(lengths[:, None, None] * log_A_bar).to(s0.dtype)          # (B, H, n)
        return torch.view_as_real(decay * s0 + B_bar * inputs.transpose(0, 1))

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
        from discretize(), C_readout (H, N) real with C_readout · interleave(s) = 2·Re Σ_n C s."""
        A_bar, B_bar, C = self.discretize()
        return A_bar, B_bar, 2 * real_part_weights(C)

    # ------------------------------------------------------------------ seed API
    def forward(self, x: Tensor, integration_timesteps: Tensor | None = None,
                lengths: Tensor | None = None) -> Tensor:
        """x (B, L, input_size) -> y (B, L, hidden_size) from the initial state (Δt ignored)."""
        return self.scan(x, self.initial_state(x.shape[0], device=x.device, dtype=x.dtype),
                         lengths=lengths)[0]


def _interleave(z: Tensor) -> Tensor:
    """(H, n, L) complex -> (H, 2n, L) real, rows (Re z_1, Im z_1, Re z_2, ...)."""
    return torch.view_as_real(z).transpose(-1, -2).flatten(-3, -2)
