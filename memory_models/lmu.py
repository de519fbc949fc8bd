"""Legendre Memory Units: the recurrent LMU and the parallel (FFT) LMUFFT.

The memory m (N,) is the Legendre delay system, which keeps the last `theta` steps of a scalar
signal u as the coefficients of N Legendre polynomials (Voelker et al., 2019):

    continuous:  dm/dt = A m + B u
                 A[i, j] = (2i+1)/theta * (-1 if i < j else (-1)^(i-j+1)),  B[i] = (2i+1)/theta * (-1)^i
    discrete:    m_t = Ā m_{t-1} + B̄ u_t          (zero-order hold over one step)

A is highly non-normal, so Ā and B̄ come from one dense matrix exponential in float64, never from
an eigendecomposition; powers Ā^k come from repeated squaring of Ā, also in float64.

LMU (recurrent, registered "lmu"), state {"h": (B, H), "m": (B, N)}:
    u_t = e_x·x_t + e_h·h_{t-1} + e_m·m_{t-1}
    m_t = Ā m_{t-1} + B̄ u_t
    h_t = tanh(W_x x_t + W_h h_{t-1} + W_m m_t);   y_t = h_t
`LMUCell` is one step of it, `lmu_loop` the sequence as a loop of LMUCell steps through autograd
(the reference); training runs `ops.lmu_scan`, the same loop fused with a hand-written backward.

LMUFFT (parallel, registered "lmu_fft"), state {"m": (B, N)}:
    u_t = ReLU(W_u x_t)
    m_t = Ā^(t+1) m_{-1} + Σ_{j<=t} Ā^(t-j) B̄ u_j        (free response + causal convolution)
    h_t = ReLU(W_h [m_t; x_t]);   y_t = h_t

The public names and signatures follow popgym.baselines.models.lmu.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .checks import check_int, check_positive
from .interface import RecurrentMemory, State, scan_episodes_as_rows
from .ops.causal_conv import causal_conv_many
from .ops.lmu_scan import lmu_scan
from .registry import register


def leCunUniform(tensor: Tensor) -> Tensor:
    """LeCun uniform initialisation in place: U(-sqrt(3/fan_in), sqrt(3/fan_in))."""
    if tensor.ndim < 2:
        raise ValueError(f"leCunUniform needs a tensor with >= 2 dims (out, in, ...), "
                         f"got shape {tuple(tensor.shape)}")
    fan_in = tensor[0].numel()
    limit = math.sqrt(3.0 / fan_in)
    with torch.no_grad():
        return tensor.uniform_(-limit, limit)


# ---------------------------------------------------------------------- the Legendre system
def legendre_delay_system(memory_size: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Continuous Legendre delay system in float64: A (N, N), B (N, 1)."""
    _check_sizes(memory_size, theta)
    q = np.arange(memory_size, dtype=np.float64)
    rate = (2 * q + 1)[:, None] / theta                                        # (N, 1)
    i, j = np.meshgrid(q, q, indexing="ij")
    A = rate * np.where(i < j, -1.0, (-1.0) ** (i - j + 1))                     # (N, N)
    B = rate * (-1.0) ** q[:, None]                                            # (N, 1)
    return A, B


def discretize_zoh(A: np.ndarray, B: np.ndarray, step: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Zero-order hold: expm([[A, B], [0, 0]] * step) = [[Ā, B̄], [0, I]], in float64."""
    n, m = B.shape
    block = np.zeros((n + m, n + m), dtype=np.float64)
    block[:n, :n] = A * step
    block[:n, n:] = B * step
    exp_block = scipy.linalg.expm(block)
    return exp_block[:n, :n], exp_block[:n, n:]


def discrete_legendre_system(memory_size: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Ā (N, N), B̄ (N, 1) of the Legendre delay system for a unit step, float64."""
    return discretize_zoh(*legendre_delay_system(memory_size, theta))


def _check_sizes(memory_size, theta) -> None:
    check_int("memory_size", memory_size)
    check_positive("theta", theta, why=" (window length in steps)")


# ---------------------------------------------------------------------- powers by doubling
def doublings(steps: int) -> int:
    """How many squarings Ā, Ā^2, Ā^4, ... cover `steps` steps (at least one: Ā itself)."""
    return max(1, (steps - 1).bit_length())


def power_ladder(A: Tensor, count: int) -> Tensor:
    """(count, N, N): Ā^(2^k) for k < count, by repeated squaring."""
    powers = [A]
    for _ in range(count - 1):
        powers.append(powers[-1] @ powers[-1])
    return torch.stack(powers)


def impulse_response(B: Tensor, ladder: Tensor, steps: int) -> Tensor:
    """(N, steps) with [:, j] = Ā^j B̄, by doubling: H[:, 2^k:2^(k+1)] = Ā^(2^k) H[:, :2^k]."""
    H = B                                                                      # (N, 1)
    for power in ladder:
        if H.shape[1] >= steps:
            break
        H = torch.cat([H, power @ H[:, :steps - H.shape[1]]], dim=1)
    return H[:, :steps]


def free_response(m0: Tensor, ladder: Tensor, steps: int) -> Tensor:
    """m0 (B, N) -> (B, steps, N) with [:, t] = Ā^(t+1) m0, by doubling (no eigendecomposition):
    z[:, 2^k:2^(k+1)] = z[:, :2^k] @ (Ā^(2^k))ᵀ."""
    z = (m0 @ ladder[0].T)[:, None]                                            # (B, 1, N)
    for power in ladder:
        if z.shape[1] >= steps:
            break
        z = torch.cat([z, z[:, :steps - z.shape[1]] @ power.T], dim=1)
    return z[:, :steps]


# ---------------------------------------------------------------------- LMU
class LMUCell(nn.Module):
    """One LMU step: x (B, input_size), state (h (B, H), m (B, N)) -> (h, m). See module doc."""

    def __init__(self, input_size, hidden_size, memory_size, theta, learn_a=False, learn_b=False):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.memory_size = memory_size
        self.theta = theta
        dtype = torch.get_default_dtype()
        A, B = (torch.from_numpy(v).to(dtype) for v in self.stateSpaceMatrices(memory_size, theta))
        if learn_a:
            self.A = nn.Parameter(A)                                           # Ā (N, N)
        else:
            self.register_buffer("A", A)
        if learn_b:
            self.B = nn.Parameter(B)                                           # B̄ (N, 1)
        else:
            self.register_buffer("B", B)
        self.e_x = nn.Parameter(torch.empty(1, input_size))
        self.e_h = nn.Parameter(torch.empty(1, hidden_size))
        self.e_m = nn.Parameter(torch.empty(1, memory_size))
        self.W_x = nn.Parameter(torch.empty(hidden_size, input_size))
        self.W_h = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.W_m = nn.Parameter(torch.empty(hidden_size, memory_size))
        self.initParameters()

    def initParameters(self) -> None:
        """Encoders LeCun-uniform (e_m zero), kernels Xavier-normal, as in the LMU paper."""
        leCunUniform(self.e_x)
        leCunUniform(self.e_h)
        nn.init.zeros_(self.e_m)
        for kernel in (self.W_x, self.W_h, self.W_m):
            nn.init.xavier_normal_(kernel)

    def stateSpaceMatrices(self, memory_size, theta) -> tuple[np.ndarray, np.ndarray]:
        """popgym's name: Ā (N, N), B̄ (N, 1) = `discrete_legendre_system`, float64 numpy."""
        return discrete_legendre_system(memory_size, theta)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """x (B, input_size), state (h (B, H), m (B, N)) -> (h_t, m_t). F.linear(v, W) = W v."""
        h, m = state
        u = F.linear(x, self.e_x) + F.linear(h, self.e_h) + F.linear(m, self.e_m)        # (B, 1)
        m = F.linear(m, self.A) + F.linear(u, self.B)                                    # (B, N)
        h = torch.tanh(F.linear(x, self.W_x) + F.linear(h, self.W_h) + F.linear(m, self.W_m))
        return h, m


def lmu_loop(cell: LMUCell, x: Tensor, h: Tensor, m: Tensor, resets: Tensor,
             lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The LMU over a sequence, one `cell` step at a time (the reference of `ops.lmu_scan`).

    x (B, T, I) from (h (B, H), m (B, N)) -> y (B, T, H), h_T, m_T. resets (B, T): the state is
    zero before x[b, t] where resets[b, t]; lengths (B,): rows past lengths[b] keep their state.
    """
    outputs = []
    for t in range(x.shape[1]):
        reset, active = resets[:, t, None], (t < lengths)[:, None]
        h_t, m_t = cell(x[:, t], (torch.where(reset, 0.0, h), torch.where(reset, 0.0, m)))
        h, m = torch.where(active, h_t, h), torch.where(active, m_t, m)
        outputs.append(h)
    y = torch.stack(outputs, 1) if outputs else x.new_zeros(x.shape[0], 0, h.shape[1])
    return y, h, m


@register("lmu")
class LMU(RecurrentMemory):
    """Recurrent LMU layer over sequences; state {"h": (B, H), "m": (B, N)}, zero initially.

    `step` runs `LMUCell`; `scan` runs `ops.lmu_scan`, the fused form of `lmu_loop`.
    """

    def __init__(self, input_size: int, hidden_size: int, memory_size: int = 256,
                 theta: float = 64.0, learn_a: bool = False, learn_b: bool = False):
        super().__init__(input_size, hidden_size)
        self.memory_size = memory_size
        self.cell = LMUCell(input_size, hidden_size, memory_size, theta, learn_a, learn_b)

    def initial_state(self, batch_size, *, device=None, dtype=None) -> State:
        device, dtype = self._defaults(device, dtype)
        return {"h": torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype),
                "m": torch.zeros(batch_size, self.memory_size, device=device, dtype=dtype)}

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None):
        """popgym call: x (B, T, input_size), state (h, m) or None -> (h (B, T, H), (h_T, m_T))."""
        if state is None:
            start = self.initial_state(x.shape[0], device=x.device, dtype=x.dtype)
        else:
            start = {"h": state[0], "m": state[1]}
        y, final = self.scan(x, start)
        return y, (final["h"], final["m"])

    def _scan(self, x, state, resets, integration_timesteps, lengths):
        y, h, m = lmu_scan(self.cell, x, state["h"], state["m"], resets, lengths)
        return y, {"h": h, "m": m}

    def _step(self, x_t, state, reset, integration_timestep):
        state = self.reset_state(state, reset)
        h, m = self.cell(x_t, (state["h"], state["m"]))
        return h, {"h": h, "m": m}


# ---------------------------------------------------------------------- LMUFFT
@register("lmu_fft")
class LMUFFT(RecurrentMemory):
    """Parallel LMU: the memory is a causal convolution of u with the impulse response Ā^j B̄,
    plus the free response Ā^(t+1) m_{-1} of the carried state. Any sequence length: `seq_len`
    only sets how long an impulse response is precomputed. State {"m": (B, N)}.

    The scan never materialises m (B, T, N). With W_h = [W_m | W_x], the output is
        h_t = ReLU(Σ_j K[:, j] u_{t-j} + W_m Ā^(t+1) m_{-1} + W_x x_t + b),   K = W_m H  (H, T)
    (one causal convolution with the projected kernel), and the returned state is m at
    lengths[b] alone. Ā^j decays: past the horizon L, the smallest power of two with
    ‖Ā^L‖_F <= 0.01·eps(dtype), both Ā^j B̄ and Ā^(t+1) m_{-1} are below working precision
    (bounded by 0.01·eps·max_s‖Ā^s‖ times ‖B̄‖ or ‖m_{-1}‖), so the kernel and the free response
    stop at L (`horizon`; None when Ā does not decay that far within 2^30 steps: no cut).
    A short kernel is applied as a Toeplitz matmul, a long one by FFT (`causal_conv_many`).
    """

    def __init__(self, input_size: int, hidden_size: int, memory_size: int = 256,
                 seq_len: int = 1024, theta: float = 64.0):
        super().__init__(input_size, hidden_size)
        _check_sizes(memory_size, theta)
        check_int("seq_len", seq_len)
        self.memory_size = memory_size
        self.seq_len = seq_len
        self.theta = theta
        self.W_u = nn.Linear(input_size, 1)
        self.W_h = nn.Linear(memory_size + input_size, hidden_size)
        A, B = discrete_legendre_system(memory_size, theta)
        self._A64, self._B64 = torch.from_numpy(A), torch.from_numpy(B)   # float64 masters, CPU
        dtype = torch.get_default_dtype()
        self.register_buffer("A", torch.empty(0, dtype=dtype))                    # Ā (N, N)
        self.register_buffer("B", torch.empty(0, dtype=dtype))                    # B̄ (N, 1)
        self.register_buffer("H", torch.empty(0, dtype=dtype), persistent=False)  # (N, seq_len)
        self.register_buffer("A_powers", torch.empty(0, dtype=dtype), persistent=False)
        self._derive_buffers()

    def _derive_buffers(self) -> None:
        """Ā, B̄, H, Ā^(2^k) and the horizon from the float64 masters, in the buffers' dtype."""
        like = dict(dtype=self.A.dtype, device=self.A.device)
        self.horizon = _horizon(self._A64, 0.01 * torch.finfo(self.A.dtype).eps)
        ladder = power_ladder(self._A64, doublings(max(self.seq_len, self.horizon or 1)))
        self.A, self.B = self._A64.to(**like), self._B64.to(**like)
        self.H = impulse_response(self._B64, ladder, self.seq_len).to(**like)
        self.A_powers = ladder.to(**like)                                        # (K, N, N)

    def _apply(self, fn, recurse=True):
        """After .to()/.double()/.cuda(): recompute the derived buffers in float64 and cast, so
        a float64 LMUFFT is exact and its kernel agrees with its own Ā."""
        super()._apply(fn, recurse)
        self._derive_buffers()
        return self

    def stateSpaceMatrices(self) -> tuple[Tensor, Tensor]:
        """popgym's name: Ā (N, N), B̄ (N, 1) = `discrete_legendre_system` of this layer's
        sizes, as tensors in the module's dtype and device (the values of the buffers A, B)."""
        like = dict(dtype=self.A.dtype, device=self.A.device)
        return tuple(torch.from_numpy(matrix).to(**like)
                     for matrix in discrete_legendre_system(self.memory_size, self.theta))

    def impulse(self) -> tuple[Tensor, Tensor]:
        """H (N, seq_len) with H[:, j] = Ā^j B̄, and its rfft zero-padded to 2·seq_len
        (N, seq_len + 1), as popgym's (enough for a linear convolution of seq_len steps)."""
        return self.H.clone(), torch.fft.rfft(self.H, n=2 * self.seq_len, dim=-1)

    def _kernel_and_powers(self, steps: int) -> tuple[Tensor, Tensor]:
        """Impulse response (N, steps) and a ladder Ā^(2^k) covering `steps`, extended past
        seq_len in float64 when needed."""
        if steps <= self.seq_len and doublings(steps) <= len(self.A_powers):
            return self.H[:, :steps], self.A_powers
        like = dict(dtype=self.A.dtype, device=self.A.device)
        ladder = power_ladder(self._A64, doublings(steps))
        return impulse_response(self._B64, ladder, steps).to(**like), ladder.to(**like)

    def initial_state(self, batch_size, *, device=None, dtype=None) -> State:
        device, dtype = self._defaults(device, dtype)
        return {"m": torch.zeros(batch_size, self.memory_size, device=device, dtype=dtype)}

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """popgym call: x (B, T, input_size) from a zero memory -> (h (B, T, H), h_T (B, H))."""
        h, _ = self.scan(x, self.initial_state(x.shape[0], device=x.device, dtype=x.dtype))
        return h, h[:, -1]

    def _scan(self, x, state, resets, integration_timesteps, lengths):
        return scan_episodes_as_rows(self._scan_from_state, self.initial_state, x, state, resets,
                                     integration_timesteps, lengths)

    def _scan_from_state(self, x, state, integration_timesteps, lengths):
        """One episode per row: x (B, T, I) from state m_{-1} -> y (B, T, H), {"m": m_{len-1}}."""
        batch, steps, _ = x.shape
        m0 = state["m"]                                                              # (B, N)
        if steps == 0:
            return x.new_zeros(batch, 0, self.hidden_size), {"m": m0}
        N = self.memory_size
        W_m, W_x = self.W_h.weight[:, :N], self.W_h.weight[:, N:]                   # (H, N), (H, I)
        reach = steps if self.horizon is None else min(steps, self.horizon)
        kernel, ladder = self._kernel_and_powers(reach)                             # (N, L)
        u = F.relu(self.W_u(x))[..., 0]                                              # (B, T)
        h = F.linear(x, W_x, self.W_h.bias) + causal_conv_many(u, W_m @ kernel)        # (B, T, H)
        free = torch.zeros_like(m0)                                   # Ā^len m_{-1} (B, N)
        if m0.requires_grad or bool(m0.any()):
            free_seq = free_response(m0, ladder, reach)                              # (B, L, N)
            free = free_seq.gather(1, _index(lengths - 1, reach, N)).squeeze(1)
            free = free * (lengths <= reach)[:, None]                 # past the horizon: 0
            h[:, :reach] += free_seq @ W_m.T                           # W_m Ā^(t+1) m_{-1}
        # m at the last valid step: Σ_{j<L} H[:, j] u_{len-1-j} + Ā^len m_{-1}
        before_end = lengths[:, None] - 1 - torch.arange(reach, device=x.device)    # (B, L)
        window = u.gather(1, before_end.clamp(min=0)) * (before_end >= 0)           # (B, L)
        m_last = window @ kernel.T + free                                            # (B, N)
        return F.relu(h, inplace=True), {"m": torch.where((lengths == 0)[:, None], m0, m_last)}

    def _step(self, x_t, state, reset, integration_timestep):
        m = state["m"]                                                               # (B, N)
        if bool(reset.any()):
            m = torch.where(reset[:, None], 0.0, m)
        u = F.relu(self.W_u(x_t))                                                    # (B, 1)
        m = torch.addmm(u * self.B[:, 0], m, self.A.T)                              # Ā m + B̄ u
        h = F.relu(self.W_h(torch.cat([m, x_t], dim=-1)))
        return h, {"m": m}


def _index(position: Tensor, size: int, width: int) -> Tensor:
    """(B,) positions clamped to [0, size) -> gather index (B, 1, width) along dim 1."""
    return position.clamp(0, size - 1)[:, None, None].expand(-1, 1, width)


def _horizon(A: Tensor, tolerance: float, max_doublings: int = 30) -> int | None:
    """Smallest power of two L with ‖A^L‖_F <= tolerance (float64 squaring), None if > 2^30."""
    power = A
    for k in range(max_doublings + 1):
        if float(torch.linalg.matrix_norm(power)) <= tolerance:
            return 1 << k
        power = power @ power
    return None
