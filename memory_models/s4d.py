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

Parallel path (`scan`), from the carried state s_{-1}, for ℓ = lengths[b]:

    k_t = 2·Re(Σ_n C B_bar A_bar^t)                               the SSM kernel      (H, T)
    z_t = Σ_{j<=t} k_(t-j) u_j + D u_t + 2·Re(Σ_n C A_bar^(t+1) s_{-1})               (H, B, T)
    s_ℓ = B_bar Σ_{j<ℓ} A_bar^(ℓ-1-j) u_j + A_bar^ℓ s_{-1}                            (B, H, N/2)

The first sum is a causal convolution (ops.causal_conv.causal_conv_channels: a Toeplitz matmul
per channel for short sequences such as the PPO learner's 53 steps, by FFT for long ones), the
last term the carried state's free response.
A_bar^t = exp(t·log A_bar) (no cumulative products) is never an (H, N/2, T) tensor: every sum
over the modes runs against ops.vandermonde.ChunkedPowers (two small tables of powers into
which C·B_bar, C·A_bar and B_bar fold; slow references and tests beside it). Resets repack
episodes into rows. The recurrent path (`step`) runs the recurrence above; both agree to
rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .interface import RecurrentMemory, State, scan_episodes_as_rows
from .lrnn import (LTI_LRNN, InferenceCacheStep, as_complex, check_state_size,
                   check_step_range, real_part_weights)
from .ops.causal_conv import causal_conv_channels
from .ops.vandermonde import ChunkedPowers, powers, times
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

        LTI_LRNN's K (N, L) and B_norm (N, H) with the channel axis leading: every channel has
        its own N/2 modes, so B_norm's (N, H) block-diagonal matrix is stored as its (H, N/2)
        diagonal.
        """
        dtype = self.C.dtype.to_complex()
        _, B_bar, log_A_bar = self._discretize_float64()
        exponents = torch.arange(length, device=log_A_bar.device, dtype=torch.float64)
        return torch.view_as_complex(powers(log_A_bar, exponents)).to(dtype), B_bar.to(dtype)

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

        The powers A_bar^t (t < T) are a `ChunkedPowers` table (ops.vandermonde: never an
        (H, n, T) tensor); C·B_bar, C·A_bar and B_bar fold into it.
        """
        batch, steps = x.shape[:2]
        channels, dtype = self.hidden_size, x.dtype
        # u = W_in x + b_in straight into the channel-major layout (one matmul, no transpose copy)
        u = torch.addmm(self.in_proj.bias[:, None], self.in_proj.weight, x.flatten(0, 1).T)
        u = u.view(channels, batch, steps)                                      # (H, B, T)
        A_bar, B_bar, log_A_bar = self._discretize_float64()                    # (H, n) c128
        A_bar, B_bar = torch.view_as_real(A_bar).to(dtype), torch.view_as_real(B_bar).to(dtype)
        A_bar_powers = ChunkedPowers(log_A_bar, steps, batch, dtype)            # A_bar^t, t < T
        kernel = A_bar_powers.real_readout(times(self.C, B_bar))   # k_t = 2·Re Σ_n C B_bar A_bar^t
        # the skip D u_t folded into lag 0 (k_0 + D) for speed: a pass less over (H, B, T)
        kernel = torch.cat([kernel[:, :1] + self.D[:, None], kernel[:, 1:]], dim=-1)
        z = causal_conv_channels(u, kernel)                        # Σ_{j<=t} k_(t-j) u_j (H, B, T)
        s0 = state["s"]                                                         # (B, H, n, 2)
        carried = s0.requires_grad or bool(s0.any())
        if carried:                                      # + 2·Re Σ_n C A_bar^(t+1) s_{-1}
            z = z + A_bar_powers.real_readout(times(self.C, A_bar), s0)         # (H, B, T)
        # the read-out in the (B·T, H) layout: its backward is a third faster than through
        # the channel-major one, more than the copy costs
        y = self.out_proj(F.gelu(z).permute(1, 2, 0).reshape(batch * steps, channels))
        # s_ℓ = B_bar Σ_{j<ℓ} A_bar^(ℓ-1-j) u_j + A_bar^ℓ s_{-1},  ℓ = lengths[b]   (B, H, n, 2)
        s = A_bar_powers.state_after(B_bar, u, lengths)
        if carried:
            s = torch.view_as_real(torch.addcmul(as_complex(s), as_complex(
                A_bar_powers.power_at(lengths)), as_complex(s0)))
        return y.view(batch, steps, -1), {"s": s}

    def _recurrence(self, x_t: Tensor, state: State, integration_timestep: Tensor,
                    matrices) -> tuple[Tensor, State]:
        """One step with `compute_step_matrices()`: s_t = A_bar s_{t-1} + B_bar u_t,
        z_t = 2·Re Σ_n C s_t + D u_t (the module equations). The cell is time-invariant:
        integration_timestep is ignored."""
        A_bar, B_bar, C_readout = matrices
        u = self.in_proj(x_t)                                                   # (B, H)
        s = A_bar * as_complex(state["s"])                                      # (B, H, n)
        s_pairs = torch.view_as_real(s).flatten(-2)                             # (B, H, N)
        s_pairs.addcmul_(torch.view_as_real(B_bar).flatten(-2), u[..., None])   # + B_bar u
        products = torch.mul(s_pairs, C_readout, out=self._step_scratch(s_pairs))
        z = torch.addcmul(products.sum(-1), self.D, u)                          # (B, H)
        return self.out_proj(F.gelu(z)), {"s": torch.view_as_real(s)}

    def _step_scratch(self, like: Tensor) -> Tensor | None:
        """A buffer like `like` for the read-out's products, kept between steps without
        autograd (None with autograd: a fresh tensor). A rollout step allocates only its new
        state: fresh MiB-sized temporaries cost more than their arithmetic (the allocator
        returns them to the system, so each is page-faulted in again)."""
        if torch.is_grad_enabled():
            return None
        scratch = self.__dict__.get("_scratch")
        if scratch is None or scratch.shape != like.shape or scratch.dtype != like.dtype \
                or scratch.device != like.device:
            scratch = self.__dict__["_scratch"] = torch.empty_like(like)
        return scratch

    def compute_step_matrices(self) -> tuple[Tensor, Tensor, Tensor]:
        """(A_bar, B_bar, C_readout) for the recurrence (reused by `step_matrices`; the
        inference cache holds them as "A_bar", "B_bar", "C"): A_bar, B_bar (H, N/2) complex
        from discretize(), C_readout (H, N) real, C_readout · interleave(s) = 2·Re Σ_n C s."""
        A_bar, B_bar, C = self.discretize()
        return A_bar, B_bar, 2 * real_part_weights(C)

    # ------------------------------------------------------------------ LRNN API
    def forward(self, x: Tensor, integration_timesteps: Tensor | None = None,
                lengths: Tensor | None = None) -> Tensor:
        """x (B, L, input_size) -> y (B, L, hidden_size) from the initial state (Δt ignored)."""
        return self.scan(x, self.initial_state(x.shape[0], device=x.device, dtype=x.dtype),
                         lengths=lengths)[0]
