"""POPGym's plain recurrent baselines: the Elman network and the IndRNN.

Elman (Elman 1990; POPGym's `Elman`, one layer), state {"h": (B, H)}:

    h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh);   y_t = h_t

It runs as torch's fused nn.RNN (reference.py's `_FusedRNN`: resets by episode repacking, one
step by torch's `rnn_tanh_cell`), the module POPGym's `Elman` uses.

IndRNN (Li et al. 2018, "Independently Recurrent Neural Network"; POPGym's `IndRNN`, i.e.
popgym.baselines.models.indrnn.IndRNN): L = 2 stacked layers as POPGym's, state
{"h": (B, 2, H)} as POPGym's (deeper stacks: the registry's `layers` residual blocks):

    h^0_t = x_t
    h^l_t = ReLU(W_l h^{l-1}_t + c_l + u_l ⊙ h^l_{t-1} + b_l)         l = 1..L
    y_t   = h^L_t

W_l, c_l an nn.Linear (torch's default init); u_l (H,) the recurrent weights and b_l (H,) a
second bias, both U(0, 1) at init, as POPGym's. Before every scan and step u_l is projected in
place onto [-r, r], r = 2^(1/max_len) (POPGym's `clamp_weights`, Li et al.'s bound for ReLU
over max_len steps): the maths sees the projected value and the gradient is the plain one, so
training is projected gradient descent as in POPGym. POPGym's ReLU is fixed (the `activation`
of its RLlib model's config reaches nothing), and so is ours.

The fast path computes W_l h^{l-1} + c_l + b_l for all t at once per layer, then runs the
elementwise recurrence as a loop over t; `step` is the literal cell, one layer after another.

Neither cell has elapsed time in its maths: both ignore `integration_timesteps`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import check_int
from .interface import RecurrentMemory, State
from .reference import _FusedRNN
from .registry import register


@register("elman")
class Elman(_FusedRNN):
    """torch.nn.RNN (tanh, one layer, batch_first) under the recurrent-memory interface."""

    state_keys = ("h",)
    cell_step = staticmethod(torch.rnn_tanh_cell)

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size)
        self.rnn = nn.RNN(input_size, hidden_size, batch_first=True)


@register("indrnn")
class IndRNN(RecurrentMemory):
    """Two stacked IndRNN layers with ReLU and projected recurrent weights (POPGym's)."""

    num_layers = 2

    def __init__(self, input_size: int, hidden_size: int, max_len: int = 1024):
        super().__init__(input_size, hidden_size)
        check_int("max_len", max_len, why=" (the recurrent weights are bounded by "
                                          "2^(1/max_len))")
        self.max_len = max_len
        self.weight_bound = 2.0 ** (1.0 / max_len)
        sizes = [input_size] + [hidden_size] * (self.num_layers - 1)
        self.inputs = nn.ModuleList(nn.Linear(size, hidden_size) for size in sizes)
        self.recurrent_weights = nn.ParameterList(
            nn.Parameter(torch.rand(hidden_size)) for _ in range(self.num_layers))
        self.biases = nn.ParameterList(
            nn.Parameter(torch.rand(hidden_size)) for _ in range(self.num_layers))

    def project_recurrent_weights(self) -> None:
        """u_l := clamp(u_l, -r, r) in place, as POPGym's clamp_weights (on .data: no autograd
        version bump, so graphs built before stay usable, as in POPGym)."""
        for u in self.recurrent_weights:
            u.data.clamp_(-self.weight_bound, self.weight_bound)

    def initial_state(self, batch_size, *, device=None, dtype=None) -> State:
        device, dtype = self._defaults(device, dtype)
        return {"h": torch.zeros(batch_size, self.num_layers, self.hidden_size, device=device,
                                 dtype=dtype)}

    def _scan(self, x, state, resets, integration_timesteps, lengths):
        self.project_recurrent_weights()
        keep = (~resets).to(x.dtype)[..., None] if bool(resets.any()) else None  # (B, T, 1)
        inputs, finals = x, []
        for layer in range(self.num_layers):
            linear = self.inputs[layer]                          # W_l h + (c_l + b_l) in one
            drive = F.linear(inputs, linear.weight, linear.bias + self.biases[layer])  # (B, T, H)
            h0 = state["h"][:, layer]
            inputs = _elementwise_recurrence(drive, self.recurrent_weights[layer], h0, keep)
            finals.append(_state_after_lengths(inputs, h0, lengths))
        return inputs, {"h": torch.stack(finals, 1)}

    def _step(self, x_t, state, reset, integration_timestep):
        self.project_recurrent_weights()
        h = self.reset_state(state, reset)["h"]
        inputs, new = x_t, []
        for layer in range(self.num_layers):
            inputs = torch.relu(self.inputs[layer](inputs) + self.recurrent_weights[layer]
                                * h[:, layer] + self.biases[layer])
            new.append(inputs)
        return inputs, {"h": torch.stack(new, 1)}


def _elementwise_recurrence(drive: Tensor, u: Tensor, h: Tensor, keep: Tensor | None) -> Tensor:
    """h_t = ReLU(drive_t + u ⊙ keep_t h_{t-1}) for drive (B, T, H), u (H,), h (B, H), keep
    (B, T, 1) (0 where the episode restarts; None: no restart) -> (B, T, H).

    The steps are taken with `unbind` (one gradient stack for all t; indexing drive[:, t]
    would make a (B, T, H) zero gradient per step in backward, O(T²))."""
    outputs = []
    keeps = keep.unbind(1) if keep is not None else [None] * drive.shape[1]
    for drive_t, keep_t in zip(drive.unbind(1), keeps):
        h = torch.addcmul(drive_t, u, h if keep_t is None else h * keep_t).relu_()
        outputs.append(h)
    return torch.stack(outputs, 1) if outputs else drive


def _state_after_lengths(outputs: Tensor, initial: Tensor, lengths: Tensor) -> Tensor:
    """outputs[b, lengths[b] - 1] (B, H), initial[b] where lengths[b] = 0."""
    last = (lengths - 1).clamp(min=0)
    gathered = outputs.gather(1, last[:, None, None].expand(-1, 1, outputs.shape[-1]))[:, 0]
    return torch.where((lengths == 0)[:, None], initial, gathered) if outputs.shape[1] \
        else initial
