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
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .interface import RecurrentMemory, State, _check_tensor, scan_episodes_as_rows
from .lrnn import LTI_LRNN, as_complex, real_part_weights, split_inference_cache
from .ops.fft_conv import causal_fft_conv
from .registry import register

INITS = ("lin", "inv")


@register("s4d")
class S4D(LTI_LRNN, RecurrentMemory):
    """Diagonal S4 memory: H = hidden_size channels of N/2 complex modes (N = state_size)."""

    discretizations = ("zoh", "bilinear", "dirac")
    cache_matrix_keys = ("A_bar", "B_bar", "C")

    def __init__(self, input_size: int, hidden_size: int, state_size: int = 64,
                 init: str = "lin", discretization: str = "zoh", dt_min: float = 1e-3,
                 dt_max: float = 1e-1):
        super().__init__(discretization=discretization, input_size=input_size,
                         hidden_size=hidden_size)
        if discretization not in self.discretizations:
            raise ValueError(f"S4D discretization must be one of {self.discretizations}, "
                             f"got {discretization!r}")
        if isinstance(state_size, bool) or not isinstance(state_size, int) or state_size < 2 \
                or state_size % 2:
            raise ValueError(f"state_size must be an even int >= 2 (N/2 conjugate pairs), "
                             f"got {state_size!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
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
    def continuous_A(self) -> Tensor:
        """A (H, N/2) complex, Re A < 0."""
        return torch.complex(-torch.exp(self.log_A_real), self.A_imag)

    def discretize(self) -> tuple[Tensor, Tensor, Tensor]:
        """(A_bar, B_bar, C), each (H, N/2) complex."""
        delta = torch.exp(self.log_dt)[:, None]                                 # (H, 1)
        A_bar, B_bar = self.discretize_fn(self.continuous_A(), delta)
        return A_bar, B_bar, torch.view_as_complex(self.C)

    def compute_kernel(self, length: int) -> tuple[Tensor, Tensor]:
        """(K (H, N/2, L) complex: K[..., l] = A_bar^l, B_norm (H, N/2) = B_bar).

        The seed's (N, L) and (N, H) with the channel axis leading: every channel has its own
        N/2 modes, so B_norm's (N, H) block-diagonal matrix is stored as its (H, N/2) diagonal.
        A_bar^l = exp(l·log A_bar); |A_bar| is floored at the smallest normal number `tiny` so
        that a decay that underflowed to 0 gives A_bar^0 = 1 (not NaN) and |A_bar^l| <= tiny.
        """
        A_bar, B_bar, _ = self.discretize()
        tiny = torch.finfo(A_bar.real.dtype).tiny
        log_A_bar = torch.complex(A_bar.abs().clamp_min(tiny).log(), A_bar.angle())
        l = torch.arange(length, device=A_bar.device, dtype=A_bar.real.dtype)
        return torch.exp(log_A_bar[..., None] * l), B_bar

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
        """FFT path without resets: x (B, T, I) from state -> y (B, T, hidden), state."""
        steps = x.shape[1]
        u = self.in_proj(x).transpose(1, 2)                                     # (B, H, T)
        powers, B_bar = self.compute_kernel(steps + 1)                          # (H, n, T+1)
        C = torch.view_as_complex(self.C)
        powers_re_im = _interleave(powers)                                      # (H, 2n, T+1)
        kernel = 2 * torch.einsum("hm,hmt->ht", real_part_weights(C * B_bar),
                                  powers_re_im[..., :steps])                    # (H, T)
        z = causal_fft_conv(u, kernel) + self.D[:, None] * u                    # (B, H, T)
        s0 = state["s"]
        if s0.requires_grad or bool(s0.any()):      # the initial state's response, if any
            s0_c = as_complex(s0)                        # (B, H, n)
            z = z + 2 * torch.einsum("bhm,hmt->bht", real_part_weights(C * s0_c),
                                     powers_re_im[..., 1:])
        y = self.out_proj(F.gelu(z.transpose(1, 2)))                            # (B, T, hidden)
        return y, {"s": self._state_after(u, s0, lengths, powers, powers_re_im, B_bar)}

    def _state_after(self, u, s0, lengths, powers, powers_re_im, B_bar) -> Tensor:
        """s_ℓ = A_bar^ℓ s_{-1} + B_bar Σ_{j<ℓ} A_bar^(ℓ-1-j) u_j for ℓ = lengths[b]."""
        steps = u.shape[-1]
        # shift every row right so that its last valid input sits at T-1: the sum then is
        # Σ_j A_bar^(T-1-j) u_shifted_j for all rows at once
        source = torch.arange(steps, device=u.device) - (steps - lengths)[:, None]   # (B, T)
        shifted = u.gather(2, source.clamp(min=0)[:, None].expand_as(u))
        shifted = shifted * (source >= 0)[:, None].to(u.dtype)
        inputs = torch.einsum("bht,hmt->bhm", shifted, powers_re_im[..., :steps].flip(-1))
        inputs = torch.view_as_complex(inputs.unflatten(-1, (-1, 2)).contiguous())   # (B, H, n)
        decay = powers.permute(2, 0, 1)[lengths]                                # (B, H, n)
        s0_c = as_complex(s0)
        return torch.view_as_real(decay * s0_c + B_bar * inputs)

    def _recurrence(self, x_t: Tensor, state: State, matrices) -> tuple[Tensor, State]:
        """One step of the recurrence with the discrete matrices (A_bar, B_bar, C)."""
        A_bar, B_bar, C = matrices
        u = self.in_proj(x_t)                                                   # (B, H)
        s = state["s"]
        s = A_bar * as_complex(s) + B_bar * u[..., None]  # (B, H, n)
        z = 2 * (C * s).real.sum(-1) + self.D * u
        return self.out_proj(F.gelu(z)), {"s": torch.view_as_real(s)}

    def _step(self, x_t, state, reset, integration_timestep):
        return self._recurrence(x_t, self.reset_state(state, reset), self.discretize())

    # ------------------------------------------------------------------ seed API
    def forward(self, x: Tensor, integration_timesteps: Tensor | None = None,
                lengths: Tensor | None = None) -> Tensor:
        """x (B, L, input_size) -> y (B, L, hidden_size) from the initial state (Δt ignored)."""
        return self.scan(x, self.initial_state(x.shape[0], device=x.device, dtype=x.dtype),
                         lengths=lengths)[0]

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int = 1,
                                 dtype=None) -> dict[str, Any]:
        """{"s": zero state (B, H, N/2, 2), "A_bar", "B_bar", "C": (H, N/2) complex}.

        max_seqlen is unused (the matrices do not depend on time). The matrices are a snapshot
        of the parameters: allocate again after they change.
        """
        cache: dict[str, Any] = self.initial_state(batch_size, dtype=dtype)
        cache.update(zip(self.cache_matrix_keys, self.discretize()))
        return cache

    def step(self, x_t: Tensor, state: dict[str, Any], *, reset: Tensor | None = None,
             integration_timestep: Tensor | None = None):
        """One observation x_t (B, input_size), either API (see memory_models.lrnn):

        step(x_t, state)           -> (y_t, new state dict)           state from initial_state
        step(x_t, inference_cache) -> (y_t, the same cache, updated)  allocate_inference_cache
        """
        split = split_inference_cache(state, self.cache_matrix_keys)
        if split is None:
            return RecurrentMemory.step(self, x_t, state, reset=reset,
                                        integration_timestep=integration_timestep)
        own_state, matrices = split
        _check_tensor("x_t", x_t, ndim=2, last=self.input_size, what="(B, input_size)")
        self._check_dtype(x_t)
        self._check_state(own_state, x_t.shape[0])
        if reset is not None:
            own_state = self.reset_state(own_state, reset)
        y, new_state = self._recurrence(x_t, own_state, matrices)
        state.update(new_state)
        return y, state


def _interleave(z: Tensor) -> Tensor:
    """(H, n, L) complex -> (H, 2n, L) real, rows (Re z_1, Im z_1, Re z_2, ...)."""
    return torch.view_as_real(z).transpose(-1, -2).flatten(-3, -2)
