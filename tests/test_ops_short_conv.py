"""ops.short_conv: the parallel causal conv (and the window it leaves) equals the step loop
with resets, values and gradients, with and without bias, any kernel."""

import pytest
import torch

from memory_models.ops.short_conv import (causal_conv, causal_conv_sequential, episode_positions,
                                          window_after)

pytestmark = pytest.mark.usefixtures("one_thread")


def inputs(kernel: int, bias: bool, steps: int = 11, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    u = torch.randn(3, steps, 5, generator=generator, dtype=torch.float64)
    window = torch.randn(3, kernel - 1, 5, generator=generator, dtype=torch.float64)
    weight = torch.randn(5, kernel, generator=generator, dtype=torch.float64)
    b = torch.randn(5, generator=generator, dtype=torch.float64) if bias else None
    resets = torch.zeros(3, steps, dtype=torch.bool)
    resets[0, 0] = resets[1, 4] = resets[1, 6] = resets[2, steps - 1] = True
    return [t.requires_grad_() if t is not None else None for t in (u, window, weight, b)], resets


@pytest.mark.parametrize("kernel", [1, 2, 4])
@pytest.mark.parametrize("bias", [True, False])
def test_parallel_conv_equals_the_step_loop_values_and_gradients(kernel, bias):
    (u, window, weight, b), resets = inputs(kernel, bias)
    positions = episode_positions(resets)
    y = causal_conv(u, window, weight, b, positions)
    y_ref, _ = causal_conv_sequential(u, window, weight, b, resets)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    leaves = [t for t in (u, window, weight, b) if t is not None and t.numel()]
    probe = torch.randn_like(y)
    grads = torch.autograd.grad((y * probe).sum(), leaves)
    grads_ref = torch.autograd.grad((y_ref * probe).sum(), leaves)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel", [2, 4])
def test_window_after_lengths_is_the_step_loops_window(kernel):
    (u, window, weight, b), resets = inputs(kernel, True)
    positions = episode_positions(resets)
    lengths = torch.tensor([11, 5, 0])
    after = window_after(u, window, positions, lengths)
    for row, length in enumerate(lengths.tolist()):
        _, want = causal_conv_sequential(u[row:row + 1, :length], window[row:row + 1], weight,
                                         b, resets[row:row + 1, :length])
        torch.testing.assert_close(after[row:row + 1], want, rtol=0, atol=0)


def test_without_resets_no_positions_and_the_window_carries():
    (u, window, weight, b), resets = inputs(4, True)
    assert episode_positions(torch.zeros_like(resets)) is None
    whole = causal_conv(u, window, weight, b, None)
    first = causal_conv(u[:, :6], window, weight, b, None)
    carried = window_after(u[:, :6], window, None, torch.full((3,), 6))
    second = causal_conv(u[:, 6:], carried, weight, b, None)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=0, atol=1e-14)
