import pytest
import torch

from memory_models.ops.fft_conv import causal_conv_reference, causal_fft_conv, fft_length


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
