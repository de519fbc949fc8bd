"""SHM: Stable Hadamard Memory, after Le et al. 2025, "Stable Hadamard Memory: Revitalizing
Memory-Augmented Agents for Reinforcement Learning" (ICLR 2025, arXiv 2410.10132).

A d × d matrix memory updated by an elementwise (Hadamard) calibration and an outer-product
write, read by a query; the authors' POPGym agent (their `SHMAgent`, built on POPGym's
fast-weight model) around it, with POPGym's sine position embedding and a shortcut:

    e_t = (1 − s) x_t + s pe(p_t)                                (B, I)  sine embedding
    x̂_t = LayerNorm(e_t)                                         (B, I)
    v_t = W_v x̂_t,  v^c_t = W_c x̂_t                               (B, d)
    k_t = relu(W_k x̂_t) / (ε + Σ relu(W_k x̂_t))                   (B, d)  sum-normalised
    q_t = relu(W_q x̂_t) / (ε + Σ relu(W_q x̂_t))                   (B, d)  sum-normalised
    η_t = σ(w_η · x̂_t)                                            (B, 1)  write strength
    θ_t = Θ[p_t mod L]                                             (B, d)  calibration vector
    C_t = 1 + tanh(θ_t ⊗ v^c_t),   C_t[i, j] = 1 + tanh(θ_t,i v^c_t,j)     (B, d, d)
    U_t = (η_t v_t) ⊗ k_t,          U_t[i, j] = η_t v_t,i k_t,j             (B, d, d)
    M_t = C_t ⊙ M_{t-1} + U_t                                                (B, d, d)
    h_t = M_t q_t + W_s x̂_t + b_s                                            (B, d)
    y_t = W_o h_t + b_o                                                       (B, hidden_size)

d = memory_size (the paper's H), Θ (L × d) the L = num_thetas learned calibration vectors,
ε = 1e-5; W_v, W_c, W_k, W_q, w_η without bias, W_s with (one matmul), as the authors' code
(memorax alike). p_t is the position of x_t in its episode; M_{-1} = 0 and p = 0 at an
episode's start (the initial state). The embedding (pe, the learned strength s ∈ [0, 1]:
memory_models.windows.SinePositionEmbedding, as `fwp`'s) is the authors' POPGym config
("embedding": "sine"); `position_embedding=False` gives e_t = x_t. The shortcut W_s x̂ + b_s
is their POPGym agent's; `shortcut=False` gives the paper's bare read h_t = M_t q_t (their
stand-alone module's). Both default on: the model the paper ran on POPGym.

Stability, and the one departure from the paper. C_t's elements lie in (0, 2), so a product
of calibrations over time can vanish or explode. The paper's argument: θ_t is drawn at random
from the L learned vectors at every step, so the calibrations of different steps are (nearly)
independent and, Θ being initialised symmetric about 0 (Xavier uniform) and tanh odd,
E[C_t] = 1: the expected product over any span is 1, and the gradient through M_{t-1} → M_t
neither vanishes nor explodes in expectation. Exactly: log(1 + tanh a) = a − log cosh a, so
an entry's log-growth per step is, averaged over the vectors, mean_l(θ_l,i) v^c_j − mean_l
log cosh(θ_l,i v^c_j): with one fixed θ (L = 1) a constant input grows an entry by up to
|θ_i v^c_j| per step (2^T at worst); with L vectors of mean about 0 the first term shrinks by
about 1/sqrt(L) and the second contracts. It is bounded in expectation, not guaranteed: a
table whose mean drifts from 0 in training grows the memory under a steady input again.

Here θ_t is the row p_t mod L of Θ, p_t the position of x_t in its episode (0, 1, 2, ...): a
fixed cycle through the L vectors instead of a random draw. Every span of L steps meets every
vector once, so the average above is the same as the draws' expectation (exact for a span of
L steps, where the draws only match it on average), and the cell stays deterministic: `step`
equals `scan`, the rollout and the learner see the same calibrations (a random draw would
give PPO's learner other outputs than the rollout's), and the interface laws hold. (The
authors' released code draws `uniform_(0, 1).long()`, which is always 0: it trains with
θ_t = Θ[0] only; memorax draws at random given an rng, else uses Θ[0].) The counter is the
state {"t": (B, 1)}, the steps since the episode's start in the model's dtype, as `fwp`'s
(exact in float32 up to 2^24 steps); a counter that is not an integer (never
produced by the cell) interpolates linearly between neighbouring rows, so θ is a continuous
function of it. `theta_draw="random"` is the paper's draw, for comparison: a fresh draw at
every call, so that cell is random (a loop of `step` differs from `scan`, the interface laws
do not hold for it, and PPO's learner recomputes the rollout's outputs with other
calibrations). tests/test_shm.py checks float32 against float64 at T = 1024 (random inputs:
finite, close) and a constant input over 1024 steps (finite: entries of 1e4 to 1e7 at the
defaults over four seeds, 1e5 to 1e8 without the embedding, where one fixed θ overflows).

No elapsed time: the calibration is per observation, with no unit of time, so the cell
ignores `integration_timesteps` (as GRU and the LTI cells do).

Parallel form: M_t = a_t ⊙ M_{t-1} + b_t with a_t = C_t, b_t = U_t, (B, T, d, d) elements, by
the resettable associative scan of memory_models.ops.scan (`linear_scan`; resets fold in as
a zero decay, lengths as the identity); `scan_impl="sequential"` runs the reference loop
(an implementation option for tests and benchmarks). The elements take B·T·d² floats each
and the scan's passes over them bound the speed: at hidden 256 (1 thread, CPU time), d = 32
measured 1.05x to 1.2x GRU's time at B=16/T=1024 and 1.5x to 2x at the learner minibatch
(157 × 53), d = 16 0.25x and 0.28x (benchmarks/results/cells_shm_rtu.md). memory_size = None takes
min(16, round(sqrt(hidden_size))): 16 at hidden 256, as POPGym's fast-weight memory (fwp's
key size round(sqrt(hidden_size))); the paper's POPGym runs used H = 72.
Computes in float32 and float64 (the counter is exact there; float16 / bfloat16 count exactly
only up to 2048 / 256).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .checks import check_int
from .interface import State
from .ops.scan import SCAN_IMPLS, check_scan_impl
from .registry import register
from .windows import PositionCounter, positions_in_episode

EPSILON = 1e-5          # of the key and query sum-normalisation
THETA_DRAWS = ("cycle", "random")


def default_memory_size(hidden_size: int) -> int:
    """d for memory_size=None: min(16, round(sqrt(hidden_size)))."""
    return min(16, round(math.sqrt(hidden_size)))


@register("shm")
class SHM(PositionCounter):
    """Stable Hadamard Memory: a d × d matrix memory, calibrated elementwise, written by
    outer products, read by a query."""

    implementation_options = ("scan_impl",)

    def __init__(self, input_size: int, hidden_size: int, memory_size: int | None = None,
                 num_thetas: int = 128, theta_draw: str = "cycle",
                 position_embedding: bool = True, max_len: int = 1024, shortcut: bool = True,
                 scan_impl: str = "parallel"):
        super().__init__(input_size, hidden_size)
        self._setup_embedding(position_embedding, max_len)
        if not isinstance(shortcut, bool):
            raise ValueError(f"shortcut must be True or False (h = M q + W_s x̂ + b_s, or "
                             f"M q), got {shortcut!r}")
        if memory_size is None:
            memory_size = default_memory_size(hidden_size)
        check_int("memory_size", memory_size,
                  why=" (d of the d x d memory, or None: min(16, round(sqrt(hidden_size))))")
        check_int("num_thetas", num_thetas, why=" (L, the calibration vectors cycled through)")
        if theta_draw not in THETA_DRAWS:
            raise ValueError(f"theta_draw must be one of {THETA_DRAWS} (how θ_t is taken from "
                             f"the table), got {theta_draw!r}")
        self.theta_draw = theta_draw
        check_scan_impl(scan_impl)
        self.memory_size, self.num_thetas, self.scan_impl = memory_size, num_thetas, scan_impl
        d = memory_size
        self.norm = nn.LayerNorm(input_size)
        # [W_v; W_c; W_k; W_q; w_η] (4d + 1 rows, no bias) and W_s, b_s (d rows) if shortcut
        self.projections = nn.Linear(input_size, 4 * d + 1, bias=False)
        self.shortcut = nn.Linear(input_size, d) if shortcut else None
        self.thetas = nn.Parameter(nn.init.xavier_uniform_(torch.empty(num_thetas, d)))
        self.out = nn.Linear(d, hidden_size)

    # ------------------------------------------------------------------ the equations
    def calibration_vectors(self, positions: Tensor) -> Tensor:
        """θ = Θ[p mod L] (..., d) for positions p (...): row p mod L at an integer p, linear
        between rows ⌊p⌋ and ⌊p⌋ + 1 (mod L) otherwise; theta_draw="random": a row drawn
        uniformly for each position (torch's global generator), whatever p."""
        if self.theta_draw == "random":
            return self.thetas[torch.randint(self.num_thetas, positions.shape,
                                             device=positions.device)]
        below = torch.floor(positions.detach())
        weight = (positions - below)[..., None]
        row = torch.remainder(below.long(), self.num_thetas)
        if not bool((weight != 0).any()):
            return self.thetas[row]
        return torch.lerp(self.thetas[row], self.thetas[(row + 1) % self.num_thetas], weight)

    def elements(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(C, U, q, s) of M_t = C_t ⊙ M_{t-1} + U_t, h_t = M_t q_t + s_t: C, U (..., d, d), q
        and the shortcut s = W_s x̂ + b_s (0 without one) (..., d) for x (..., input_size) at
        positions p (...). The projections of x̂ are one matmul (their weights stacked)."""
        d = self.memory_size
        x_hat = self.norm(self._embed(x, positions))
        if self.shortcut is None:
            weight, bias, sizes = self.projections.weight, None, [d, d, d, d, 1]
        else:
            weight = torch.cat([self.projections.weight, self.shortcut.weight])
            bias = torch.cat([self.shortcut.bias.new_zeros(4 * d + 1), self.shortcut.bias])
            sizes = [d, d, d, d, 1, d]
        v, v_c, k, q, eta, *rest = nn.functional.linear(x_hat, weight, bias).split(sizes, -1)
        shortcut = rest[0] if rest else q.new_zeros(())
        k, q = torch.relu(k), torch.relu(q)
        k = k / (EPSILON + k.sum(-1, keepdim=True))
        q = q / (EPSILON + q.sum(-1, keepdim=True))
        theta = self.calibration_vectors(positions)
        calibration = 1 + torch.tanh(theta[..., :, None] * v_c[..., None, :])
        write = (torch.sigmoid(eta) * v)[..., :, None] * k[..., None, :]
        return calibration, write, q, shortcut

    def read(self, memory: Tensor, q: Tensor, shortcut: Tensor) -> Tensor:
        """y = W_o (M q + s) + b_o (..., hidden_size) for M (..., d, d), q, s (..., d)."""
        return self.out(torch.matmul(memory, q[..., None])[..., 0] + shortcut)

    # ------------------------------------------------------------------ interface
    def initial_state(self, batch_size, *, device=None, dtype=None) -> State:
        device, dtype = self._defaults(device, dtype)
        d = self.memory_size
        return {"memory": torch.zeros(batch_size, d, d, device=device, dtype=dtype),
                "t": self._counter(batch_size, device, dtype)}

    def _scan(self, x, state, resets, integration_timesteps, lengths):
        positions = positions_in_episode(state["t"], resets)                    # (B, T)
        calibration, write, q, shortcut = self.elements(x, positions)           # (B, T, d, d)
        memory = SCAN_IMPLS[self.scan_impl](calibration, write, state["memory"], resets,
                                            lengths)
        y = self.read(memory, q, shortcut)
        if not x.shape[1]:
            return y, dict(state)
        after = positions.gather(1, (lengths - 1).clamp(min=0)[:, None]) + 1     # (B, 1)
        counter = torch.where((lengths == 0)[:, None], state["t"], after)
        return y, {"memory": memory[:, -1], "t": counter}

    def _step(self, x_t, state, reset, integration_timestep):
        state = self.reset_state(state, reset)
        calibration, write, q, shortcut = self.elements(x_t, state["t"][:, 0])  # (B, d, d)
        memory = torch.addcmul(write, calibration, state["memory"])
        return self.read(memory, q, shortcut), {"memory": memory, "t": state["t"] + 1}
