"""Mamba (Gu & Dao 2023, arXiv 2312.00752) and Mamba-2 (Dao & Gu 2024, arXiv 2405.21060): the
selective state-space blocks, one layer each, as recurrent memories.

Mamba (`mamba`): E = expand · hidden_size channels, each with N = state_size real modes.

    (u_t, z_t) = W_in x_t                                       (B, E) each     in_proj
    c_t = SiLU(b_conv + Σ_{j<K} w_{K-1-j} ⊙ u_{t-j})            (B, E)          ops.short_conv
    (δ_t, B_t, C_t) = W_x c_t                                   (B, R), (B, N), (B, N)
    Δ_t = softplus(W_Δ δ_t + b_Δ)                               (B, E)          selection
    h_t = exp(Δ_t τ_t A) ⊙ h_{t-1} + (Δ_t ⊙ c_t) ⊗ B_t          (B, E, N)       the SSM
    y_t = W_out ((h_t C_t + D ⊙ c_t) ⊙ SiLU(z_t))               (B, hidden_size)

A = −exp(A_log) (E, N) < 0, D (E,), K = conv_kernel, R = dt_rank, τ_t = integration_timesteps.
The conv is depthwise over time with kernel K; u before an episode's first step is 0.
Initialisation as the paper's code (mambapy, mamba_simple.py): A = −(1 … N) per channel (S4D
real), D = 1, Δ's bias the inverse softplus of Δ₀ log-uniform in [0.001, 0.1], W_Δ uniform
±R^{-1/2}, the projections and the conv torch's defaults.

Mamba-2 (`mamba2`): SSD, a scalar decay per head. E = expand · hidden_size channels in
M = E / P heads of P = head_size channels; one B and C for all heads (one group).

    (z_t, x_t, B_t, C_t, δ_t) = W_in x_t                 (B, E), (B, E), (B, N), (B, N), (B, M)
    (x_t, B_t, C_t) = SiLU(causal conv of (x_t, B_t, C_t))  the same conv, E + 2N channels
    Δ_t = softplus(δ_t + b_Δ)                                     (B, M)
    h_t = exp(Δ_t τ_t A) h_{t-1} + Δ_t x_t ⊗ B_t                  (B, M, P, N)   A (M,) < 0
    o_t = h_t C_t + D ⊙ x_t                                       (B, M, P) -> (B, E)
    y_t = W_out (g ⊙ RMSNorm(o_t ⊙ SiLU(z_t)))                    (B, hidden_size)

as mamba_ssm's Mamba2Simple (ngroups 1, norm_before_gate False): A = −U(1, 16) per head, D = 1
per head, Δ's bias as Mamba's. Its parallel form is the chunked SSD of memory_models.ops.ssd.

Shapes at the defaults: expand 2, state_size N = 16 (the Mamba paper's; Mamba-2 papers use
64-128, but the env runner stores the state at every step: 16 keeps it at E·N floats, as a
256-wide GRU's 256 times 32), conv_kernel 4, dt_rank ⌈hidden_size / 16⌉, head_size the largest
of 64, 32, ..., 1 that divides E (64 at hidden 256: 8 heads).

State: {"h": (B, E, N)} for Mamba, {"h": (B, M, P, N)} for Mamba-2, and {"conv": (B, K-1, C)}
(both; C the conv's channels): the last K−1 conv inputs, oldest first (absent for K = 1).

Resets: a reset at t restores the initial state (h = 0, an empty conv window) before x_t: the
scan folds a zero decay into the SSM (ops.scan's resets) and masks every conv tap that would
reach back across the episode start, so the conv never sees the previous episode's inputs.

Elapsed time (`elapsed_time = True`): Δ_t is the step of a continuous-time system
ḣ = A h + B c, so τ_t, the time elapsed since the previous observation, scales the decay
exponent: exp(Δ_t τ_t A) = exp(Δ_t A)^{τ_t}. The input term Δ_t c_t ⊗ B_t is not scaled by
τ_t: it is Event-SSM's asynchronous choice (input normalisation independent of the gap), not
zero-order hold (which would also scale the input by the time the input was held): an
observation is an event that arrives once, and a long gap before it should fade what the
memory held, not make the new observation louder (with ZOH its weight would grow with the gap
up to the mode's saturation −1/A). τ ≡ 1 is the synchronous block exactly. The conv window is
per observation (the last K−1 observations, whatever time separates them).

Fast forms: Mamba's SSM is ops.selective_scan's fused loop over t (`scan_impl="fused"`, the
default: one step's decays exp(Δ_t τ_t A) formed and consumed in cache, a hand-written
backward pass); `scan_impl="parallel"` materialises the (B, T, E, N) decays and inputs and runs
ops.scan's parallel `linear_scan` over them (slower on the CPU, see benchmarks/results/
cells_mamba.md). Mamba-2's is ops.ssd's chunked SSD (`scan_impl="parallel"`, its default),
chunks of at most `chunk_size` steps. `scan_impl="sequential"` runs either over its reference
loop (implementation options, for tests and benchmarks: they change how it computes, not
what). Computes in all four float dtypes (Mamba-2's RMSNorm takes its mean square in float32
at least: in float16 its gradient overflows).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import check_int
from .interface import RecurrentMemory, State
from .ops.scan import check_scan_impl
from .ops.selective_scan import SELECTIVE_SCAN_IMPLS, check_selective_scan_impl
from .ops.short_conv import causal_conv, conv_step, episode_positions, window_after
from .ops.ssd import ssd_chunked, ssd_sequential
from .registry import register


def inverse_softplus_step_bias(size: int, dt_min: float = 1e-3, dt_max: float = 0.1,
                               floor: float = 1e-4) -> Tensor:
    """softplus⁻¹(Δ₀) (size,) for Δ₀ log-uniform in [dt_min, dt_max] (the Mamba papers' init)."""
    dt = torch.exp(torch.rand(size) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))


def check_conv_kernel(conv_kernel) -> None:
    check_int("conv_kernel", conv_kernel, why=" (steps the causal conv sees, 1: the current "
                                              "one only)")


def check_expand(expand) -> None:
    check_int("expand", expand, why=" (channels E = expand · hidden_size)")


class _ConvMemory(RecurrentMemory):
    """What the two blocks share: the conv window state and its scan / step."""

    elapsed_time = True
    conv_channels: int

    def _conv_state(self, batch_size, device, dtype) -> State:
        if self.conv_kernel == 1:
            return {}
        return {"conv": torch.zeros(batch_size, self.conv_kernel - 1, self.conv_channels,
                                    device=device, dtype=dtype)}

    def _conv_scan(self, u: Tensor, state: State, positions: Tensor | None,
                   lengths: Tensor) -> tuple[Tensor, State]:
        """SiLU(conv(u)) (B, T, C) and the conv window after lengths steps."""
        window = state["conv"] if "conv" in state else u[:, :0]           # K = 1: empty
        out = F.silu(causal_conv(u, window, self.conv_weight, self.conv_bias, positions))
        if self.conv_kernel == 1:
            return out, {}
        return out, {"conv": window_after(u, window, positions, lengths)}

    def _conv_step(self, u_t: Tensor, state: State) -> tuple[Tensor, State]:
        """SiLU(conv) (B, C) and the next window, from a state already reset."""
        window = state["conv"] if "conv" in state else u_t[:, None][:, :0]   # K = 1: empty
        out, window = conv_step(u_t, window, self.conv_weight, self.conv_bias)
        return F.silu(out), ({"conv": window} if self.conv_kernel > 1 else {})


# ---------------------------------------------------------------------- Mamba
@register("mamba")
class Mamba(_ConvMemory):
    """Mamba's selective SSM block: E = expand · hidden_size channels of N real modes each."""

    implementation_options = ("scan_impl",)

    def __init__(self, input_size: int, hidden_size: int, state_size: int = 16,
                 expand: int = 2, conv_kernel: int = 4, dt_rank: int | None = None,
                 scan_impl: str = "fused"):
        super().__init__(input_size, hidden_size)
        check_int("state_size", state_size, why=" (modes N per channel)")
        check_expand(expand)
        check_conv_kernel(conv_kernel)
        dt_rank = math.ceil(hidden_size / 16) if dt_rank is None else dt_rank
        check_int("dt_rank", dt_rank, why=" (rank of the step size Δ's projection; "
                                          "None: ceil(hidden_size / 16))")
        check_selective_scan_impl(scan_impl)
        channels = expand * hidden_size
        self.state_size, self.expand, self.conv_kernel = state_size, expand, conv_kernel
        self.dt_rank, self.channels, self.scan_impl = dt_rank, channels, scan_impl
        self.conv_channels = channels

        self.in_proj = nn.Linear(input_size, 2 * channels, bias=False)       # (u, z)
        conv = nn.Conv1d(channels, channels, conv_kernel, groups=channels)   # its default init
        self.conv_weight = nn.Parameter(conv.weight.detach()[:, 0].clone())  # (E, K)
        self.conv_bias = nn.Parameter(conv.bias.detach().clone())            # (E,)
        self.x_proj = nn.Linear(channels, dt_rank + 2 * state_size, bias=False)   # (δ, B, C)
        self.dt_proj = nn.Linear(dt_rank, channels)                          # W_Δ, b_Δ
        nn.init.uniform_(self.dt_proj.weight, -dt_rank ** -0.5, dt_rank ** -0.5)
        with torch.no_grad():
            self.dt_proj.bias.copy_(inverse_softplus_step_bias(channels))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, state_size + 1, dtype=torch.float32)
                                            ).repeat(channels, 1))            # (E, N)
        self.D = nn.Parameter(torch.ones(channels))
        self.out_proj = nn.Linear(channels, hidden_size, bias=False)

    # ------------------------------------------------------------------ the equations
    def selection(self, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Δ (..., E), B (..., N), C (..., N) from the conv output c (..., E)."""
        low_rank, B, C = self.x_proj(c).split([self.dt_rank, self.state_size, self.state_size],
                                              -1)
        return F.softplus(self.dt_proj(low_rank)), B, C

    def ssm_inputs(self, c: Tensor, step: Tensor,
                   integration_timesteps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """δ = Δ τ (..., E) (decay exp(δ ⊗ A)), A = −exp(A_log) (E, N), the input Δ ⊙ c (..., E)."""
        return step * integration_timesteps[..., None], -torch.exp(self.A_log), step * c

    def readout(self, ssm: Tensor, c: Tensor, z: Tensor) -> Tensor:
        """W_out ((h C + D ⊙ c) ⊙ SiLU(z)) (..., hidden) for ssm = h C (..., E)."""
        return self.out_proj(torch.addcmul(ssm, self.D, c) * F.silu(z))

    # ------------------------------------------------------------------ interface
    def initial_state(self, batch_size, *, device=None, dtype=None) -> State:
        device, dtype = self._defaults(device, dtype)
        return {"h": torch.zeros(batch_size, self.channels, self.state_size, device=device,
                                 dtype=dtype), **self._conv_state(batch_size, device, dtype)}

    def _scan(self, x, state, resets, integration_timesteps, lengths):
        u, z = self.in_proj(x).chunk(2, -1)                                  # (B, T, E)
        c, conv_state = self._conv_scan(u, state, episode_positions(resets), lengths)
        step, B, C = self.selection(c)
        delta, A, inputs = self.ssm_inputs(c, step, integration_timesteps)
        ssm, h = SELECTIVE_SCAN_IMPLS[self.scan_impl](delta, A, inputs, B, C, state["h"],
                                                      resets, lengths)
        return self.readout(ssm, c, z), {"h": h, **conv_state}

    def _step(self, x_t, state, reset, integration_timestep):
        state = self.reset_state(state, reset)
        u, z = self.in_proj(x_t).chunk(2, -1)                                # (B, E)
        c, conv_state = self._conv_step(u, state)
        step, B, C = self.selection(c)
        delta, A, inputs = self.ssm_inputs(c, step, integration_timestep)
        decay = torch.mul(delta[..., None], A).exp_()                        # (B, E, N)
        h = torch.addcmul(inputs[..., None] * B[:, None], decay, state["h"])
        return self.readout((h * C[:, None]).sum(-1), c, z), {"h": h, **conv_state}


# ---------------------------------------------------------------------- Mamba-2
HEAD_SIZES = (64, 32, 16, 8, 4, 2, 1)     # the default head_size: the first that divides E


@register("mamba2")
class Mamba2(_ConvMemory):
    """Mamba-2's SSD block: E = expand · hidden_size channels in heads of head_size, one
    scalar decay per head, N = state_size modes shared by the heads' channels."""

    implementation_options = ("scan_impl", "chunk_size")

    def __init__(self, input_size: int, hidden_size: int, state_size: int = 16,
                 expand: int = 2, head_size: int | None = None, conv_kernel: int = 4,
                 scan_impl: str = "parallel", chunk_size: int = 32):
        super().__init__(input_size, hidden_size)
        check_int("state_size", state_size, why=" (modes N per channel)")
        check_expand(expand)
        check_conv_kernel(conv_kernel)
        channels = expand * hidden_size
        if head_size is None:
            head_size = next(size for size in HEAD_SIZES if channels % size == 0)
        check_int("head_size", head_size, why=" (channels per head)")
        if channels % head_size:
            divisors = [d for d in range(1, channels + 1) if channels % d == 0]
            raise ValueError(f"head_size must divide the channels expand · hidden_size = "
                             f"{channels} (one of {divisors}), got {head_size}")
        check_scan_impl(scan_impl)
        check_int("chunk_size", chunk_size, why=" (steps per chunk of the SSD)")
        heads = channels // head_size
        self.state_size, self.expand, self.conv_kernel = state_size, expand, conv_kernel
        self.channels, self.head_size, self.heads = channels, head_size, heads
        self.scan_impl, self.chunk_size = scan_impl, chunk_size
        self.conv_channels = channels + 2 * state_size                       # (x, B, C)

        self.in_proj = nn.Linear(input_size, 2 * channels + 2 * state_size + heads, bias=False)
        conv = nn.Conv1d(self.conv_channels, self.conv_channels, conv_kernel,
                         groups=self.conv_channels)
        self.conv_weight = nn.Parameter(conv.weight.detach()[:, 0].clone())  # (E + 2N, K)
        self.conv_bias = nn.Parameter(conv.bias.detach().clone())            # (E + 2N,)
        self.dt_bias = nn.Parameter(inverse_softplus_step_bias(heads))       # b_Δ (M,)
        self.A_log = nn.Parameter(torch.log(torch.empty(heads).uniform_(1, 16)))   # (M,)
        self.D = nn.Parameter(torch.ones(heads))
        self.norm_weight = nn.Parameter(torch.ones(channels))                # g (E,)
        self.norm_eps = 1e-5
        self.out_proj = nn.Linear(channels, hidden_size, bias=False)

    # ------------------------------------------------------------------ the equations
    def projections(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """z (..., E), the conv's input (x, B, C) (..., E + 2N), δ (..., M)."""
        return self.in_proj(x).split([self.channels, self.conv_channels, self.heads], -1)

    def ssm_inputs(self, conv_out: Tensor, low: Tensor, integration_timesteps: Tensor):
        """From SiLU(conv) (..., E + 2N) and δ (..., M): log decay Δ τ A (..., M), the input
        Δ ⊙ x (..., M, P), B and C (..., N), and x (..., M, P)."""
        x, B, C = conv_out.split([self.channels, self.state_size, self.state_size], -1)
        x = x.unflatten(-1, (self.heads, self.head_size))                     # (..., M, P)
        step = F.softplus(low + self.dt_bias)                                 # Δ (..., M)
        log_decay = step * integration_timesteps[..., None] * -torch.exp(self.A_log)
        return log_decay, step[..., None] * x, B, C, x

    def readout(self, ssm: Tensor, x: Tensor, z: Tensor) -> Tensor:
        """W_out (g ⊙ RMSNorm((h C + D ⊙ x) ⊙ SiLU(z))) (..., hidden) for ssm = h C (..., M, P);
        RMSNorm(o) = o / sqrt(mean(o²) + ε) over the E channels, the mean in float32 or wider."""
        o = torch.addcmul(ssm, self.D[:, None], x).flatten(-2) * F.silu(z)    # (..., E)
        wide = o.to(torch.promote_types(o.dtype, torch.float32))   # in float16 it overflows
        normed = o * torch.rsqrt(wide.square().mean(-1, keepdim=True) + self.norm_eps).to(o.dtype)
        return self.out_proj(normed * self.norm_weight)

    # ------------------------------------------------------------------ interface
    def initial_state(self, batch_size, *, device=None, dtype=None) -> State:
        device, dtype = self._defaults(device, dtype)
        return {"h": torch.zeros(batch_size, self.heads, self.head_size, self.state_size,
                                 device=device, dtype=dtype),
                **self._conv_state(batch_size, device, dtype)}

    def _scan(self, x, state, resets, integration_timesteps, lengths):
        z, conv_in, low = self.projections(x)
        conv_out, conv_state = self._conv_scan(conv_in, state, episode_positions(resets),
                                               lengths)
        log_decay, u, B, C, xs = self.ssm_inputs(conv_out, low, integration_timesteps)
        if self.scan_impl == "parallel":
            ssm, h = ssd_chunked(log_decay, u, B, C, state["h"], resets, lengths,
                                 self.chunk_size)
        else:
            ssm, h = ssd_sequential(log_decay, u, B, C, state["h"], resets, lengths)
        return self.readout(ssm, xs, z), {"h": h, **conv_state}

    def _step(self, x_t, state, reset, integration_timestep):
        state = self.reset_state(state, reset)
        z, conv_in, low = self.projections(x_t)
        conv_out, conv_state = self._conv_step(conv_in, state)
        log_decay, u, B, C, xs = self.ssm_inputs(conv_out, low, integration_timestep)
        h = torch.addcmul(u[..., None] * B[:, None, None], torch.exp(log_decay)[..., None, None],
                          state["h"])                                       # (B, M, P, N)
        ssm = (h * C[:, None, None]).sum(-1)                                 # (B, M, P)
        return self.readout(ssm, xs, z), {"h": h, **conv_state}
