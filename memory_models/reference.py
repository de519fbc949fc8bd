"""Reference memories: torch's fused GRU and LSTM under the interface, and a memoryless MLP.

GRU:  h_t = GRU(x_t, h_{t-1});              y_t = h_t;  state {"h": (B, H)}
LSTM: (h_t, c_t) = LSTM(x_t, h_{t-1}, c_{t-1}); y_t = h_t;  state {"h", "c": (B, H)}
MLP:  y_t = W2 LeakyReLU(W1 x_t);           state {}
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .interface import RecurrentMemory, State, scan_episodes_as_rows
from .registry import register


class _FusedRNN(RecurrentMemory):
    """Shared scan for torch's fused nn.GRU / nn.LSTM: resets by episode repacking."""

    state_keys: tuple[str, ...]
    rnn: nn.RNNBase
    cell_step: staticmethod    # torch's one-step kernel on rnn's weights (gru_cell, lstm_cell)

    def initial_state(self, batch_size, *, device=None, dtype=None) -> State:
        device, dtype = self._defaults(device, dtype)
        return {k: torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
                for k in self.state_keys}

    def _scan(self, x, state, resets, integration_timesteps, lengths):
        return scan_episodes_as_rows(self._scan_one_episode, self.initial_state, x, state, resets,
                                     integration_timesteps, lengths)

    def _scan_one_episode(self, x, state, integration_timesteps, lengths):
        hidden = tuple(state[k][None].contiguous() for k in self.state_keys)   # (1, B, H) each
        hidden = hidden[0] if len(hidden) == 1 else hidden
        steps = x.shape[1]
        if bool((lengths == steps).all()):
            y, final = self.rnn(x, hidden)
        else:   # packing stops each row's state at its length; empty rows keep their state
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths.clamp(min=1).cpu(),
                                                       batch_first=True, enforce_sorted=False)
            packed_y, final = self.rnn(packed, hidden)
            y, _ = nn.utils.rnn.pad_packed_sequence(packed_y, batch_first=True,
                                                    total_length=steps)
        final = (final,) if isinstance(final, Tensor) else final
        empty = (lengths == 0)[:, None]
        new_state = {k: torch.where(empty, state[k], f[0]) for k, f in zip(self.state_keys, final)}
        return y, new_state

    def _step(self, x_t, state, reset, integration_timestep):
        """One step by torch's single-step kernel: half the cost of a length-1 rnn call."""
        state = self.reset_state(state, reset)
        hidden = tuple(state[k] for k in self.state_keys)
        rnn = self.rnn
        new = self.cell_step(x_t, hidden[0] if len(hidden) == 1 else hidden, rnn.weight_ih_l0,
                             rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)
        new = (new,) if isinstance(new, Tensor) else new
        return new[0], dict(zip(self.state_keys, new))


@register("gru")
class GRU(_FusedRNN):
    """torch.nn.GRU (one layer, batch_first) under the recurrent-memory interface."""

    state_keys = ("h",)
    cell_step = staticmethod(torch.gru_cell)

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size)
        self.rnn = nn.GRU(input_size, hidden_size, batch_first=True)


@register("lstm")
class LSTM(_FusedRNN):
    """torch.nn.LSTM (one layer, batch_first) under the recurrent-memory interface."""

    state_keys = ("h", "c")
    cell_step = staticmethod(torch.lstm_cell)

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size)
        self.rnn = nn.LSTM(input_size, hidden_size, batch_first=True)


@register("mlp")
class MLP(RecurrentMemory):
    """No memory: y_t = W2 LeakyReLU(W1 x_t), state {}. The memoryless control."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size)
        self.net = nn.Sequential(nn.Linear(input_size, hidden_size), nn.LeakyReLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def initial_state(self, batch_size, *, device=None, dtype=None) -> State:
        return {}

    def _scan(self, x, state, resets, integration_timesteps, lengths):
        return self.net(x), {}

    def _step(self, x_t, state, reset, integration_timestep):
        return self.net(x_t), {}
