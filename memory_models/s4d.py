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
real einsums over the modes against one small Vandermonde table (`powers`) into which the
coefficients fold; complex numbers are stored as (Re, Im) pairs and multiplied elementwise
(`times`), so no complex tensor larger than the state (or its value at each chunk start) is
built, in the forward or the backward pass. Resets repack episodes into rows. The recurrent
path (`step`) runs the recurrence above; both agree to rounding.
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

        Time is split as t = c·m + j (`chunk_width`: one chunk, c = T, for short sequences),
        so that A_bar^t = A_bar^(c·m)·A_bar^j. The powers within a chunk, A_bar^j (j < c), are
        one small table that the coefficients fold into, and every term is one real einsum
        over the modes ((Re, Im) pairs, `times` multiplies them):

            kernel  k_(c·m+j) = 2·Re Σ_n A_bar^(c·m) (C B_bar A_bar^j)                   (H, T)
            output  z_(c·m+j) = Σ_{i<=t} k_(t-i) u_i + D u_t + 2·Re Σ_n σ_m (C A_bar A_bar^j)
                    σ_m = A_bar^(c·m) s_{-1}: the carried state's free response at chunk starts
        """
        batch, steps = x.shape[:2]
        channels, dtype = self.hidden_size, x.dtype
        # u = W_in x + b_in straight into the channel-major layout (one matmul, no transpose copy)
        u = torch.addmm(self.in_proj.bias[:, None], self.in_proj.weight, x.flatten(0, 1).T)
        u = u.view(channels, batch, steps)                                      # (H, B, T)
        A_bar, B_bar, log_A_bar = self._discretize_float64()                    # (H, n) c128
        A_bar, B_bar = torch.view_as_real(A_bar).to(dtype), torch.view_as_real(B_bar).to(dtype)
        width = chunk_width(batch, steps)                                       # c
        chunks = -(-steps // width)                                             # M
        within = powers(log_A_bar.to(dtype.to_complex()),
                        torch.arange(width, device=x.device))                   # (H, n, c, 2)
        across = powers(log_A_bar, torch.arange(chunks, device=x.device) * width).to(dtype)

        kernel = torch.einsum("hnmd,hnjd->hmj", across, twice_conj(times(
            times(self.C, B_bar)[..., None, :], within))).flatten(1)[:, :steps]  # (H, T)
        # the skip D u_t is the kernel's lag 0: k_0 + D
        kernel = torch.cat([kernel[:, :1] + self.D[:, None], kernel[:, 1:]], dim=-1)
        z = causal_fft_conv(u, kernel[:, None])                                 # (H, B, T)
        s0 = state["s"]                                                         # (B, H, n, 2)
        carried = s0.requires_grad or bool(s0.any())
        if carried:
            sigma = s0[..., None, :] if chunks == 1 else times(s0[..., None, :], across)
            free = torch.einsum("bhnmd,hnjd->hbmj", sigma, twice_conj(times(
                times(self.C, A_bar)[..., None, :], within)))                   # (H, B, M, c)
            z = z + free.flatten(2)[..., :steps]
        # the read-out in the (B·T, H) layout: its backward is a third faster than through
        # the channel-major one, more than the copy costs
        y = self.out_proj(F.gelu(z).permute(1, 2, 0).reshape(batch * steps, channels))
        s = _state_after(u, s0 if carried else None, lengths, B_bar, log_A_bar, within, across)
        return y.view(batch, steps, -1), {"s": s}

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


def chunk_width(batch: int, steps: int) -> int:
    """The chunk width c of `S4D._scan_from_state`: T (one chunk) when T <= B, else
    ceil(sqrt(B·T) / 2). The table within (H, n, c) and the per-chunk terms (B, H, n, M) then
    stay near H·n·sqrt(B·T) entries, never (H, n, T) or (B, H, n, T); the table's entries
    cost more (powers, coefficients, their gradients), hence the half (measured on CPU)."""
    if steps <= batch:
        return max(steps, 1)
    return math.isqrt(batch * steps - 1) // 2 + 1


def _state_after(u: Tensor, s0: Tensor | None, lengths: Tensor, B_bar: Tensor,
                 log_A_bar: Tensor, within: Tensor, across: Tensor) -> Tensor:
    """s_ℓ = A_bar^ℓ s_{-1} + Σ_m A_bar^(c·m) Σ_j (B_bar A_bar^j) u_(ℓ-1-c·m-j) for ℓ =
    lengths[b]: (B, H, n, 2) pairs, from u (H, B, T), B_bar (H, n, 2), log A_bar (H, n)
    complex128 and the tables within (H, n, c, 2), across (H, n, M, 2); s0 None stands for
    a zero s_{-1}. The inputs are read newest first, inputs[h, b, m, j] = u_(ℓ-1-k) for
    k = c·m + j < ℓ, else 0; when every row ends at T, oldest first against the reversed
    tables instead (u_i meets A_bar^(T-1-i) after M·c - T zeros in front: no copy of u when
    c divides T)."""
    channels, batch, steps = u.shape
    width, chunks = within.shape[2], across.shape[2]
    if bool((lengths == steps).all()):
        inputs = F.pad(u, (chunks * width - steps, 0)) if steps % width else u
        within, across = within.flip(2), across.flip(2)
    else:
        before_end = (lengths - 1)[:, None] - torch.arange(chunks * width, device=u.device)
        inputs = u.gather(2, before_end.clamp(min=0).expand(channels, -1, -1))
        inputs = inputs * (before_end >= 0)
    inputs = inputs.view(channels, batch, chunks, width)
    per_chunk = torch.einsum("hbmj,hnjd->bhnmd", inputs, times(B_bar[..., None, :], within))
    s = per_chunk[..., 0, :] if chunks == 1 else times(across, per_chunk).sum(-2)
    if s0 is None:
        return s
    ends, row_end = lengths.unique(return_inverse=True)
    decay = powers(log_A_bar, ends).to(s.dtype).permute(2, 0, 1, 3)            # A_bar^ℓ
    decay = decay[row_end] if len(ends) > 1 else decay      # (B or 1, H, n, 2): one per row
    return torch.view_as_real(torch.addcmul(as_complex(s), as_complex(decay), as_complex(s0)))


def times(a: Tensor, b: Tensor) -> Tensor:
    """The complex product of (Re, Im) pairs a (..., 2) and b (..., 2), broadcast, as pairs:
    one elementwise complex multiply on views (no copies of either operand)."""
    return torch.view_as_real(as_complex(a) * as_complex(b))


def twice_conj(pairs: Tensor) -> Tensor:
    """(Re, Im) pairs of w -> those of 2·conj(w), so that for pairs a
    Σ_d a[..., d]·twice_conj(w)[..., d] = 2·Re(a·w): a real einsum over (n, d) sums 2·Re."""
    return pairs * pairs.new_tensor([2.0, -2.0])


def powers(log_z: Tensor, exponents: Tensor) -> Tensor:
    """z^k = exp(k·log z) as (Re, Im) pairs: log z (H, n) complex, k (K,) real -> (H, n, K, 2)
    in log z's precision. No cumulative products; the gradient is Σ_k k·G_k·conj(z^k)
    (`_Powers`), with no (H, n, K) intermediates kept beyond the result."""
    return _Powers.apply(log_z, exponents.to(device=log_z.device, dtype=log_z.real.dtype))


class _Powers(torch.autograd.Function):
    @staticmethod
    def forward(ctx, log_z: Tensor, exponents: Tensor) -> Tensor:
        magnitude = torch.exp(log_z.real[..., None] * exponents)
        pairs = torch.view_as_real(torch.polar(magnitude, log_z.imag[..., None] * exponents))
        ctx.save_for_backward(pairs, exponents)
        return pairs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        pairs, exponents = ctx.saved_tensors
        weighted = torch.view_as_complex(grad.contiguous()) * exponents
        return (weighted * torch.view_as_complex(pairs).conj()).sum(-1), None


def powers_reference(log_z: Tensor, exponents: Tensor) -> Tensor:
    """`powers` by torch.exp and autograd (tests)."""
    return torch.view_as_real(torch.exp(log_z[..., None] * exponents.to(log_z.real.dtype)))
