import pytest
import torch

from memory_models.ops import causal_conv
from memory_models.ops.causal_conv import (DIRECT_MAX_STEPS, causal_conv_channels,
                                            causal_conv_many, causal_conv_reference,
                                            causal_fft_conv, fft_length)


@pytest.mark.parametrize("steps", [1, 2, 7, 64, 100])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_fft_conv_equals_direct_sum(steps, dtype):
    torch.manual_seed(steps)
    u = torch.randn(3, 4, steps, dtype=dtype)
    kernel = torch.randn(4, steps, dtype=dtype)
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else {}
    torch.testing.assert_close(causal_fft_conv(u, kernel), causal_conv_reference(u, kernel), **tol)


def test_fft_length_never_wraps():
    for steps in range(1, 300):
        n = fft_length(steps)
        assert n >= 2 * steps - 1 and n & (n - 1) == 0


def test_no_wraparound_from_kernel_tail():
    u = torch.zeros(8, dtype=torch.float64)
    u[-1] = 1.0                          # an impulse at the last step
    kernel = torch.ones(8, dtype=torch.float64)
    y = causal_fft_conv(u, kernel)
    torch.testing.assert_close(y[:-1], torch.zeros(7, dtype=torch.float64))


@pytest.mark.parametrize("blocks", ["one-block", "row-blocks"])
@pytest.mark.parametrize("steps", [1, 5, 64])
@pytest.mark.parametrize("extra", [3, -3], ids=["long-kernel", "short-kernel"])
@pytest.mark.parametrize("shapes", [((3, 4), (4,)), ((2, 1), (1, 3)), ((4,), (2, 4)),
                                    ((3, 2, 1), (3, 1, 2)), ((5,), ())],
                         ids=["kernel-broadcast", "both-broadcast", "u-broadcast",
                              "both-split", "1d"])
def test_fft_conv_gradients_equal_direct_sum(steps, extra, shapes, blocks, monkeypatch):
    """The hand-written backward (correlations by FFT, summed over broadcast dims) against
    autograd through the direct sum, with a kernel longer or shorter than the sequence, in
    one block or in blocks of one row of the first dimension."""
    if blocks == "row-blocks":
        monkeypatch.setattr(causal_conv, "BLOCK_BYTES", 1)
    torch.manual_seed(steps)
    u_shape, kernel_shape = shapes
    u = torch.randn(*u_shape, steps, dtype=torch.float64, requires_grad=True)
    kernel = torch.randn(*kernel_shape, max(steps + extra, 1), dtype=torch.float64,
                         requires_grad=True)
    padded = torch.nn.functional.pad(kernel, (0, max(steps - kernel.shape[-1], 0)))
    weight = torch.randn(torch.broadcast_shapes(u.shape, padded[..., :steps].shape),
                         dtype=torch.float64)
    grads = [torch.autograd.grad((causal_fft_conv(u, kernel) * weight).sum(), (u, kernel)),
             torch.autograd.grad((causal_conv_reference(u, padded) * weight).sum(), (u, kernel))]
    torch.testing.assert_close(causal_fft_conv(u, kernel), causal_conv_reference(u, padded))
    for got, want in zip(*grads):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want)
    if steps <= 5 and blocks == "one-block":                       # numerical Jacobian: small sizes only
        assert torch.autograd.gradcheck(causal_fft_conv, (u, kernel))


def test_fft_conv_second_backward_with_retained_graph():
    """backward conjugates the saved spectra in place once; a second pass must agree."""
    u = torch.randn(2, 3, 9, dtype=torch.float64, requires_grad=True)
    kernel = torch.randn(3, 9, dtype=torch.float64, requires_grad=True)
    loss = causal_fft_conv(u, kernel).square().sum()
    first = torch.autograd.grad(loss, (u, kernel), retain_graph=True)
    second = torch.autograd.grad(loss, (u, kernel))
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("steps, reach", [(1, 1), (9, 4), (64, 64), (200, 30), (300, 300)])
def test_causal_conv_many_equals_direct_sum_on_both_paths(steps, reach):
    """Short kernels take the Toeplitz matmul, long ones the FFT; both are the same sum."""
    torch.manual_seed(steps + reach)
    u = torch.randn(3, steps, dtype=torch.float64, requires_grad=True)
    kernel = torch.randn(5, reach, dtype=torch.float64, requires_grad=True)
    y = causal_conv_many(u, kernel)                                          # (B, L, H)
    padded = torch.nn.functional.pad(kernel, (0, steps - reach))             # zero beyond K
    expected = causal_conv_reference(u[:, None, :], padded).transpose(1, 2)
    torch.testing.assert_close(y, expected)
    weights = torch.randn_like(y)
    grads = torch.autograd.grad((y * weights).sum(), (u, kernel))
    expected_grads = torch.autograd.grad((expected * weights).sum(), (u, kernel))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("steps, reach", [(1, 1), (9, 4), (9, 20), (53, 53),
                                         (DIRECT_MAX_STEPS, DIRECT_MAX_STEPS),
                                         (DIRECT_MAX_STEPS + 1, 30), (150, 150)])
def test_causal_conv_channels_equals_direct_sum_on_both_paths(steps, reach):
    """Up to DIRECT_MAX_STEPS a Toeplitz matmul per channel, beyond it the FFT: both the same
    sum, values and gradients (signals and kernels), kernels shorter or longer than L."""
    torch.manual_seed(steps + reach)
    u = torch.randn(4, 3, steps, dtype=torch.float64, requires_grad=True)     # (C, B, L)
    kernel = torch.randn(4, reach, dtype=torch.float64, requires_grad=True)    # (C, K)
    y = causal_conv_channels(u, kernel)
    padded = torch.nn.functional.pad(kernel, (0, max(steps - reach, 0)))[:, None]
    expected = causal_conv_reference(u, padded)
    torch.testing.assert_close(y, expected)
    weights = torch.randn_like(y)
    grads = torch.autograd.grad((y * weights).sum(), (u, kernel))
    expected_grads = torch.autograd.grad((expected * weights).sum(), (u, kernel))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)


def test_fft_conv_backward_is_not_differentiable_again():
    """A second derivative fails clearly instead of silently."""
    u = torch.randn(2, 9, dtype=torch.float64, requires_grad=True)
    kernel = torch.randn(9, dtype=torch.float64)
    (grad,) = torch.autograd.grad(causal_fft_conv(u, kernel).square().sum(), u, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_fft_conv_of_half_inputs_runs_in_float32(dtype):
    """torch has no half-precision FFT on the CPU: the convolution runs in float32."""
    u = torch.randn(2, 3, 300, requires_grad=True)
    kernel = torch.randn(3, 300, requires_grad=True)
    y = causal_fft_conv(u.to(dtype), kernel.to(dtype))
    assert y.dtype == dtype
    expected = causal_fft_conv(u.to(dtype).float(), kernel.to(dtype).float()).to(dtype)
    torch.testing.assert_close(y, expected)
    y.float().sum().backward()
    assert u.grad.dtype == torch.float32 and torch.isfinite(u.grad).all()
