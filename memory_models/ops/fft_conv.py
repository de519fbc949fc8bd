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
    """u (..., L), kernel (..., K) broadcastable -> y (..., L), real. A kernel longer than the
    sequence is cropped to L; a shorter one (K < L) is zero beyond K."""
    return _CausalFFTConv.apply(u, kernel[..., :u.shape[-1]])


class _CausalFFTConv(torch.autograd.Function):
    """y = irfft(rfft(u) · rfft(k))[:L] with the FFT length n = fft_length(L).

    The gradients are correlations, done with the spectra saved by the forward pass
    (one rfft of the incoming gradient, one irfft per input, no padding ops in the graph):

        ∂L/∂u_j = Σ_t g_t k_(t-j) = irfft(G · conj(K))[j]      ∂L/∂k_l = irfft(G · conj(U))[l]

    (the pad to n >= 2L - 1 keeps negative lags in the zero tail), each summed over the
    dimensions that input was broadcast along.
    """

    @staticmethod
    def forward(ctx, u: Tensor, kernel: Tensor) -> Tensor:
        steps = u.shape[-1]
        n = fft_length(steps)
        u_spectrum, kernel_spectrum = _rfft_padded(u, n), _rfft_padded(kernel, n)
        # the spectra are intermediates (not inputs or outputs), kept on ctx; backward
        # conjugates them in place once, as only conj(U) and conj(K) are used from then on
        ctx.spectra, ctx.conjugated = (u_spectrum, kernel_spectrum), False
        ctx.shapes = u.shape, kernel.shape
        return torch.fft.irfft(u_spectrum * kernel_spectrum, n=n)[..., :steps]

    @staticmethod
    def backward(ctx, grad: Tensor):
        if not ctx.conjugated:                  # also right for a second backward (retain_graph)
            for spectrum in ctx.spectra:
                spectrum.conj_physical_()
            ctx.conjugated = True
        u_spectrum_conj, kernel_spectrum_conj = ctx.spectra
        u_shape, kernel_shape = ctx.shapes
        steps = u_shape[-1]
        n = fft_length(steps)
        grad_spectrum = _rfft_padded(grad, n)
        grad_u = grad_kernel = None
        if ctx.needs_input_grad[1]:
            correlation = _sum_to(grad_spectrum * u_spectrum_conj, kernel_shape)
            grad_kernel = torch.fft.irfft(correlation, n=n)[..., :kernel_shape[-1]]
        if ctx.needs_input_grad[0]:                 # G is spent after this: multiply in place
            correlation = grad_spectrum.mul_(kernel_spectrum_conj) \
                if grad_spectrum.shape == torch.broadcast_shapes(grad_spectrum.shape,
                                                                 kernel_spectrum_conj.shape) \
                else grad_spectrum * kernel_spectrum_conj
            grad_u = torch.fft.irfft(_sum_to(correlation, u_shape), n=n)[..., :steps]
        return grad_u, grad_kernel


def _rfft_padded(signal: Tensor, n: int) -> Tensor:
    """rfft of signal (..., L) zero-padded to n >= L: only the tail of the buffer is zeroed."""
    steps = signal.shape[-1]
    padded = signal.new_empty(*signal.shape[:-1], n)
    padded[..., steps:] = 0
    padded[..., :steps] = signal
    return torch.fft.rfft(padded)


def _sum_to(spectrum: Tensor, shape: torch.Size) -> Tensor:
    """Sum a (..., F) spectrum over the leading dimensions that `shape` (..., L) broadcast."""
    return spectrum.sum_to_size(*shape[:-1], spectrum.shape[-1])


def causal_conv_reference(u: Tensor, kernel: Tensor) -> Tensor:
    """The same sum, written out as a loop over t. Slow; for tests."""
    steps = u.shape[-1]
    u, kernel = torch.broadcast_tensors(u, kernel[..., :steps])
    outputs = [(kernel[..., :t + 1].flip(-1) * u[..., :t + 1]).sum(-1) for t in range(steps)]
    return torch.stack(outputs, dim=-1)
