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
needed. `scan_impl="sequential"` runs the reference loop over t instead (an implementation
option for tests and benchmarks). No elapsed time: the model has no unit of time, so it
ignores `integration_timesteps` (as the LTI cells do). Computes in all four float dtypes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .interface import RecurrentMemory, State
from .ops.scan import SCAN_IMPLS, check_scan_impl
from .registry import register


def positive_activation(v: Tensor) -> Tensor:
    """g(v) = v + ½ for v ≥ 0, σ(v) for v < 0: continuous, increasing, positive."""
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


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
        gate, candidate = self.gate_and_candidate(x).chunk(2, dim=-1)
        z = torch.sigmoid(gate)
        return 1 - z, z * positive_activation(candidate)

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
