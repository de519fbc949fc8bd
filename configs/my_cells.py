"""A memory of your own in a study: register it, check it (`memrl check leaky --imports
my_cells`), train it beside the baselines (configs/leaky_vs_gru.yaml)."""

import torch
from torch import nn

import memory_models


@memory_models.register("leaky")
class Leaky(memory_models.RecurrentMemory):
    """Leaky integrator: h_t = a * h_{t-1} + (1 - a) * tanh(W x_t + b), a = sigmoid(decay)."""

    def __init__(self, input_size: int, hidden_size: int, init_decay: float = 2.0):
        super().__init__(input_size=input_size, hidden_size=hidden_size)
        self.proj = nn.Linear(input_size, hidden_size)
        self.decay = nn.Parameter(torch.full((hidden_size,), init_decay))

    def initial_state(self, batch_size, *, device=None, dtype=None):
        like = self.decay                                    # parameters' device and dtype
        return {"h": torch.zeros(batch_size, self.hidden_size, device=device or like.device,
                                 dtype=dtype or like.dtype)}

    def _scan(self, x, state, resets, integration_timesteps, lengths):
        a, u = torch.sigmoid(self.decay).to(x.dtype), torch.tanh(self.proj(x))  # (H,), (B, T, H)
        h = final = state["h"]                                                   # (B, H)
        ys = []
        for t in range(x.shape[1]):
            h = a * torch.where(resets[:, t, None], torch.zeros_like(h), h) + (1 - a) * u[:, t]
            final = torch.where((lengths == t + 1)[:, None], h, final)   # state after lengths[b]
            ys.append(h)
        return torch.stack(ys, dim=1), {"h": final}                      # (B, T, H)
