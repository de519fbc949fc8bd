"""minGRU, after Feng et al. 2024, "Were RNNs All We Needed?" (arXiv 2410.01201).

A GRU whose gate and candidate see only the input, so the recurrence is linear in the state:

    z_t = σ(W_z x_t + b_z)                                 (B, H)  update gate
    h̃_t = g(W_h x_t + b_h),  g(v) = v + ½ (v ≥ 0), σ(v) (v < 0)   (B, H)  candidate, > 0
    h_t = (1 − z_t) ⊙ h_{t-1} + z_t ⊙ h̃_t                  (B, H)  state and output

H = hidden_size; h_{-1} = 0 (the initial state). g is the paper's: it keeps h̃ positive for
the paper's log-space scan, and is kept here so the model is the paper's.

Parallel form: h_t = a_t h_{t-1} + b_t with a_t = 1 − z_t ∈ (0, 1), b_t = z_t h̃_t, by the
resettable associative scan of memory_models.ops.scan (`linear_scan`) in linear space. The
scan only forms products of the a_t and never divides by them, and every h_t is a convex
combination of h_{-1} and the h̃'s, so it is exact and stable in float32 at any length
(tests/test_min_gru.py holds it equal to the sequential loop at T = 8192): no log space is
needed. The elements (a, b) come from the two matmuls by one autograd Function with a
hand-written backward (`_Elements`: no stored graph of the gates, no select).
`scan_impl="sequential"` runs the reference loop over t instead (an implementation
option for tests and benchmarks). No elapsed time: the model has no unit of time, so it
ignores `integration_timesteps` (as the LTI cells do). Computes in all four float dtypes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .interface import RecurrentMemory, State
from .ops.scan import SCAN_IMPLS, check_scan_impl
from .registry import register


def positive_activation(v: Tensor) -> Tensor:
    """g(v) = v + ½ for v ≥ 0, σ(v) for v < 0: continuous, increasing, positive.

    Computed as σ(min(v, 0)) + max(v, 0), the same values to the bit (σ(0) = ½ exactly, and
    x + 0 = x), without a select (torch.where over a bool mask is ~8x an elementwise op on
    the CPU)."""
    return torch.sigmoid(v.clamp(max=0)).add_(torch.relu(v))


class _Elements(torch.autograd.Function):
    """(a, b) = (1 − z, z ⊙ g(c)), z = σ(gate), from gate, c (..., H), with a hand-written
    backward:

        ∂L/∂gate = (∂L/∂b ⊙ g(c) − ∂L/∂a) ⊙ z (1 − z)
        ∂L/∂c    = ∂L/∂b ⊙ z ⊙ g'(c),   g'(c) = 1 (c ≥ 0), σ(c)(1 − σ(c)) (c < 0)

    g'(c) = s(1 − s) + ¾·[c ≥ 0] with s = σ(min(c, 0)) (s = ½ where c ≥ 0: exactly 1 there).
    Autograd through the forward's ops would store each op's graph and inputs and select
    with torch.where (~8x an elementwise op on the CPU); this writes its few passes in place.
    """

    @staticmethod
    def forward(ctx, gate: Tensor, candidate: Tensor) -> tuple[Tensor, Tensor]:
        z = torch.sigmoid(gate)                                                  # (..., H)
        s = torch.sigmoid_(candidate.clamp(max=0))                  # σ(min(c, 0))
        g = torch.relu(candidate).add_(s)                           # g(c) = s + max(c, 0)
        ctx.save_for_backward(candidate, z, s, g)
        return torch.rsub(z, 1), z * g

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_a: Tensor | None, grad_b: Tensor | None):
        candidate, z, s, g = ctx.saved_tensors
        if grad_b is None:
            grad_b = torch.zeros_like(z)
        grad_gate = torch.mul(grad_b, g)                                        # ∂L/∂z
        if grad_a is not None:
            grad_gate.sub_(grad_a)
        scratch = torch.addcmul(z, z, z, value=-1)                              # z (1 − z)
        grad_gate.mul_(scratch)
        # (few fresh tensors: each is page-faulted in when the allocator gave it back)
        step = torch.ge(candidate, 0, out=scratch)                              # [c ≥ 0]
        slope = torch.addcmul(s, s, s, value=-1).add_(step, alpha=0.75)        # g'(c)
        grad_candidate = torch.mul(grad_b, z, out=scratch).mul_(slope)
        return grad_gate, grad_candidate


@register("min_gru")
class MinGRU(RecurrentMemory):
    """minGRU: an input-only update gate and candidate, a linear recurrence in the state."""

    implementation_options = ("scan_impl",)

    def __init__(self, input_size: int, hidden_size: int, scan_impl: str = "parallel"):
        super().__init__(input_size, hidden_size)
        check_scan_impl(scan_impl)
        self.scan_impl = scan_impl
        self.gate_and_candidate = nn.Linear(input_size, 2 * hidden_size)   # [W_z; W_h], [b_z; b_h]

    def elements(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(a, b) = (1 − z, z ⊙ h̃) of h_t = a_t h_{t-1} + b_t, (..., H) each."""
        # [W_z; W_h] as two matmuls: z's and h̃'s inputs each contiguous (elementwise ops
        # over a strided half cost up to 3x), their gradients apart (no concatenation)
        weight, bias = self.gate_and_candidate.weight, self.gate_and_candidate.bias
        H = self.hidden_size
        gate = F.linear(x, weight[:H], bias[:H])
        candidate = F.linear(x, weight[H:], bias[H:])
        return _Elements.apply(gate, candidate)

    def initial_state(self, batch_size, *, device=None, dtype=None) -> State:
        device, dtype = self._defaults(device, dtype)
        return {"h": torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)}

    def _scan(self, x, state, resets, integration_timesteps, lengths):
        a, b = self.elements(x)                                                 # (B, T, H)
        h = SCAN_IMPLS[self.scan_impl](a, b, state["h"], resets, lengths)
        return h, {"h": h[:, -1] if x.shape[1] else state["h"]}

    def _step(self, x_t, state, reset, integration_timestep):
        a, b = self.elements(x_t)                                               # (B, H)
        h = torch.addcmul(b, a, self.reset_state(state, reset)["h"])
        return h, {"h": h}
