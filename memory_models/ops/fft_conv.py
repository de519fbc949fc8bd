"""Causal convolution of a sequence with a kernel, by FFT.

    y[..., t] = sum_{j <= t} kernel[..., t - j] * u[..., j]        t = 0 .. L-1

The linear convolution has length 2L - 1, so the FFT length is the first power of two >= 2L - 1;
a length of L would wrap the tail of the kernel around onto the start of the sequence.
"""

from __future__ import annotations

import torch
from torch import Tensor


def fft_length(steps: int) -> int:
    """Smallest power of two that holds a linear convolution of two length-`steps` signals."""
    return 1 << max(2 * steps - 2, 0).bit_length()


def causal_fft_conv(u: Tensor, kernel: Tensor) -> Tensor:
    """u (..., L), kernel (..., L) broadcastable -> y (..., L), real."""
    steps = u.shape[-1]
    n = fft_length(steps)
    spectrum = torch.fft.rfft(u, n=n) * torch.fft.rfft(kernel[..., :steps], n=n)
    return torch.fft.irfft(spectrum, n=n)[..., :steps]


def causal_conv_reference(u: Tensor, kernel: Tensor) -> Tensor:
    """The same sum, written out as a loop over t. Slow; for tests."""
    steps = u.shape[-1]
    u, kernel = torch.broadcast_tensors(u, kernel[..., :steps])
    outputs = [(kernel[..., :t + 1].flip(-1) * u[..., :t + 1]).sum(-1) for t in range(steps)]
    return torch.stack(outputs, dim=-1)
