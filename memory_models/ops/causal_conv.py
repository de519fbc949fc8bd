"""Causal convolution of a sequence with a kernel, by FFT or, for short kernels, by matmul.

    y[..., t] = sum_{j <= t} kernel[..., t - j] * u[..., j]        t = 0 .. L-1

    causal_fft_conv(u, kernel)     u (..., L), kernel (..., K) broadcastable -> y (..., L)
    causal_conv_many(u, kernel)    one signal through many kernels: u (B, L), kernel (H, K)
                                   -> y (B, L, H); a short kernel is one Toeplitz matmul,
                                   a long one goes through causal_fft_conv
    causal_conv_channels(u, kernel)    many signals per channel: u (C, B, L), kernel (C, K)
                                   -> y (C, B, L); a short sequence is one batched Toeplitz
                                   matmul per channel, a long one goes through causal_fft_conv
    causal_conv_reference(u, kernel)   the sum written out as a loop over t (tests)

The linear convolution has length 2L - 1, so the FFT length is the first power of two >= 2L - 1;
a length of L would wrap the tail of the kernel around onto the start of the sequence.

float16 and bfloat16 inputs are convolved in float32 (torch has no half-precision FFT on the
CPU, and on CUDA only for power-of-two lengths) and the result cast back.

Large inputs are transformed in blocks along the first (broadcast) dimension, each block's
FFT buffers a few MiB: whole-tensor buffers of tens of MiB are fresh memory on every call
(the allocator returns them to the system), and writing fresh pages costs more than the FFTs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

BLOCK_BYTES = 4 << 20          # target size of one block's spectrum
HALF_DTYPES = (torch.float16, torch.bfloat16)


def fft_length(steps: int) -> int:
    """Smallest power of two that holds a linear convolution of two length-`steps` signals."""
    return 1 << max(2 * steps - 2, 0).bit_length()


def causal_fft_conv(u: Tensor, kernel: Tensor) -> Tensor:
    """u (..., L), kernel (..., K) broadcastable -> y (..., L), real. A kernel longer than the
    sequence is cropped to L; a shorter one (K < L) is zero beyond K."""
    kernel = kernel[..., :u.shape[-1]]
    if u.dtype in HALF_DTYPES or kernel.dtype in HALF_DTYPES:
        dtype = torch.promote_types(u.dtype, kernel.dtype)
        return _CausalFFTConv.apply(u.float(), kernel.float()).to(dtype)
    return _CausalFFTConv.apply(u, kernel)


def causal_conv_many(u: Tensor, kernel: Tensor) -> Tensor:
    """u (B, L), kernel (H, K) -> y (B, L, H): y[b, t, h] = Σ_{j < min(K, t+1)} kernel[h, j] u[b, t-j].

    A kernel that is short next to the FFT's cost (K <= 24·log2 n) is applied as one Toeplitz
    matmul over windows of the last K inputs; a long one by FFT.
    """
    steps, reach = u.shape[-1], min(kernel.shape[-1], u.shape[-1])
    kernel = kernel[:, :reach]
    if reach <= 24 * math.log2(fft_length(steps)):
        windows = F.pad(u, (reach - 1, 0)).unfold(1, reach, 1)     # (B, L, K): u_{t-K+1} .. u_t
        return windows @ kernel.flip(1).T
    return causal_fft_conv(u[:, None, :], kernel).transpose(1, 2)


# causal_conv_channels: sequences up to this length are convolved as a Toeplitz matmul. The
# matmul costs B·C·L² multiply-adds, the FFT's transforms O(B·C·n log n) with n >= 2L; at 1
# thread (CPU time, fwd+bwd, 256 channels) the matmul is 2.3x faster at L = 53, even at
# L ~ 100 and 2x slower at L = 160.
DIRECT_MAX_STEPS = 64


def causal_conv_channels(u: Tensor, kernel: Tensor) -> Tensor:
    """u (C, B, L), kernel (C, K) -> y (C, B, L): y[c, b, t] = Σ_{j <= t} kernel[c, t-j] u[c, b, j].

    Up to DIRECT_MAX_STEPS steps one batched matmul of each channel's B signals with its
    (L, L) Toeplitz matrix T[c, j, t] = kernel[c, t - j] (t >= j, else 0), whose gradient
    autograd sums back onto the kernel's lags; longer sequences by causal_fft_conv.
    """
    steps = u.shape[-1]
    if steps > DIRECT_MAX_STEPS:
        return causal_fft_conv(u, kernel[:, None])
    kernel = kernel[:, :steps]
    # zeros in front: window w of the padded kernel is kernel[w + t - (L-1)], t = 0..L-1, so
    # row j = L-1-w of the flipped windows is kernel[t - j]
    padded = F.pad(kernel, (steps - 1, steps - kernel.shape[-1]))              # (C, 2L-1)
    toeplitz = padded.unfold(-1, steps, 1).flip(-2)                            # (C, L, L)
    return torch.bmm(u, toeplitz)


class _CausalFFTConv(torch.autograd.Function):
    """y = irfft(rfft(u) · rfft(k))[:L] with the FFT length n = fft_length(L), by blocks.

    The gradients are correlations, done with the spectra saved by the forward pass
    (one rfft of the incoming gradient, one irfft per input, no padding ops in the graph):

        ∂L/∂u_j = Σ_t g_t k_(t-j) = irfft(G · conj(K))[j]      ∂L/∂k_l = irfft(G · conj(U))[l]

    (the pad to n >= 2L - 1 keeps negative lags in the zero tail), each summed over the
    dimensions that input was broadcast along. The backward is not itself differentiable.
    """

    @staticmethod
    def forward(ctx, u: Tensor, kernel: Tensor) -> Tensor:
        steps = u.shape[-1]
        n = fft_length(steps)
        shape = (*torch.broadcast_shapes(u.shape[:-1], kernel.shape[:-1]), steps)
        operands = [_lead(u, len(shape)), _lead(kernel, len(shape))]
        blocks = _blocks(shape, n, u.dtype)
        split = [len(shape) > 1 and t.shape[0] > 1 for t in operands]   # else shared by blocks
        shared = [None if s else _rfft_padded(t, n) for t, s in zip(operands, split)]
        y = u.new_empty(shape, dtype=torch.promote_types(u.dtype, kernel.dtype))
        spectra = []                                        # per block: (U, K) of that block
        for block in blocks:
            pair = [_rfft_padded(t[block], n) if s else whole
                    for t, s, whole in zip(operands, split, shared)]
            y[block] = torch.fft.irfft(pair[0] * pair[1], n=n)[..., :steps]
            spectra.append(pair)
        # the spectra are intermediates (not inputs or outputs), kept on ctx; never changed
        ctx.spectra, ctx.blocks, ctx.split = spectra, blocks, split
        ctx.shapes = u.shape, kernel.shape
        ctx.lead_shapes = [t.shape for t in operands]
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        n = fft_length(grad.shape[-1])
        wanted = [i for i in (1, 0) if ctx.needs_input_grad[i]]   # kernel first: u reuses G
        # a split operand's gradient is written block by block; a shared one's spectrum summed
        grads = [grad.new_empty(ctx.lead_shapes[i]) if ctx.split[i] else None for i in (0, 1)]
        for block, spectra in zip(ctx.blocks, ctx.spectra):
            grad_spectrum = _rfft_padded(grad[block], n)
            for i in wanted:
                other = spectra[1 - i].conj()                           # a view: no copy
                if i == 0 and _broadcasts_into(other, grad_spectrum):
                    correlation = grad_spectrum.mul_(other)             # G is spent after this
                else:
                    correlation = grad_spectrum * other
                correlation = correlation.sum_to_size(*spectra[i].shape)
                if ctx.split[i]:
                    length = ctx.lead_shapes[i][-1]
                    grads[i][block] = torch.fft.irfft(correlation, n=n)[..., :length]
                else:
                    grads[i] = correlation if grads[i] is None else grads[i] + correlation
        out = []
        for i, shape in enumerate(ctx.shapes):
            if i not in wanted:
                out.append(None)
                continue
            if not ctx.split[i]:
                grads[i] = torch.fft.irfft(grads[i], n=n)[..., :shape[-1]]
            out.append(grads[i].reshape(shape))
        return tuple(out)


def _broadcasts_into(small: Tensor, big: Tensor) -> bool:
    return torch.broadcast_shapes(small.shape, big.shape) == big.shape


def _lead(t: Tensor, ndim: int) -> Tensor:
    """t viewed with ndim dimensions (leading ones added)."""
    return t.view(*([1] * (ndim - t.ndim)), *t.shape)


def _blocks(shape: tuple[int, ...], n: int, dtype: torch.dtype) -> list[slice]:
    """Slices of dim 0 whose spectra are about BLOCK_BYTES each (one slice for 1-d)."""
    if len(shape) < 2:
        return [slice(None)]
    row_bytes = (n // 2 + 1) * 2 * torch.finfo(dtype).bits // 8
    for size in shape[1:-1]:
        row_bytes *= size
    rows = max(1, BLOCK_BYTES // max(row_bytes, 1))
    return [slice(start, start + rows) for start in range(0, shape[0], rows)]


def _rfft_padded(signal: Tensor, n: int) -> Tensor:
    """rfft of signal (..., L) zero-padded to n >= L: only the tail of the buffer is zeroed."""
    steps = signal.shape[-1]
    padded = signal.new_empty(*signal.shape[:-1], n)
    padded[..., steps:] = 0
    padded[..., :steps] = signal
    return torch.fft.rfft(padded)


def causal_conv_reference(u: Tensor, kernel: Tensor) -> Tensor:
    """The same sum, written out as a loop over t. Slow; for tests."""
    steps = u.shape[-1]
    u, kernel = torch.broadcast_tensors(u, kernel[..., :steps])
    outputs = [(kernel[..., :t + 1].flip(-1) * u[..., :t + 1]).sum(-1) for t in range(steps)]
    return torch.stack(outputs, dim=-1)
