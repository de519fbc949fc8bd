"""ops.selective_scan: the fused loop (hand-written backward) equals the materialised form
through ops.scan's sequential loop and its parallel scan, values and gradients of every
input, with resets (at the first and last step too), lengths and a carried state."""

import pytest
import torch

import memory_models.ops.selective_scan as selective_scan_module
from memory_models.ops.selective_scan import SELECTIVE_SCAN_IMPLS, selective_scan

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float64: dict(atol=1e-11, rtol=1e-11)}


def inputs(batch=3, steps=17, channels=5, modes=4, dtype=torch.float64, seed=0):
    """δ ≥ 0, A < 0, u, B, C, a non-zero initial state."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(dtype)

    return (torch.rand(batch, steps, channels, generator=generator).to(dtype) * 2,
            -torch.rand(channels, modes, generator=generator).to(dtype) * 3,
            randn(batch, steps, channels), randn(batch, steps, modes), randn(batch, steps, modes),
            randn(batch, channels, modes))


def run(impl, args, resets, lengths):
    leaves = [t.clone().requires_grad_() for t in args]
    y, final = SELECTIVE_SCAN_IMPLS[impl](*leaves, resets, lengths)
    steps = y.shape[1]
    valid = (torch.arange(steps) < (lengths if lengths is not None
                                    else torch.full((y.shape[0],), steps))[:, None])[..., None]
    loss = (y * valid).square().sum() + (final * 1.7).sum()
    return y * valid, final, torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("impl", ["parallel", "fused", "fused-blocks"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_equals_the_sequential_reference(impl, dtype, monkeypatch):
    """fused-blocks: the fused loop over blocks of one row each."""
    if impl == "fused-blocks":
        monkeypatch.setattr(selective_scan_module, "BLOCK_BYTES", 1)
        impl = "fused"
    args = inputs(dtype=dtype)
    resets = torch.rand(3, 17, generator=torch.Generator().manual_seed(2)) < 0.2
    resets[0, 0] = resets[1, 16] = resets[2, 5] = True
    for lengths in (None, torch.tensor([17, 9, 0])):
        (y1, s1, g1), (y2, s2, g2) = run(impl, args, resets, lengths), run("sequential", args,
                                                                           resets, lengths)
        torch.testing.assert_close(y1, y2, **TOL[dtype])
        torch.testing.assert_close(s1, s2, **TOL[dtype])
        for name, a, b in zip(("delta", "A", "u", "B", "C", "initial"), g1, g2):
            torch.testing.assert_close(a, b, **TOL[dtype], msg=name)


def test_gradient_of_the_outputs_alone_and_of_the_final_state_alone():
    args = inputs()
    for use_y in (True, False):
        leaves = [t.clone().requires_grad_() for t in args]
        y, final = selective_scan(*leaves)
        grads = torch.autograd.grad(y.sum() if use_y else final.sum(), leaves)
        reference = [t.clone().requires_grad_() for t in args]
        y_ref, final_ref = SELECTIVE_SCAN_IMPLS["sequential"](*reference)
        expected = torch.autograd.grad(y_ref.sum() if use_y else final_ref.sum(), reference,
                                       allow_unused=True)       # the final state has no C
        for a, b in zip(grads, expected):
            torch.testing.assert_close(a, torch.zeros_like(a) if b is None else b,
                                       **TOL[torch.float64])


def test_empty_sequence_returns_the_initial_state():
    delta, A, u, B, C, initial = inputs(steps=0)
    y, final = selective_scan(delta, A, u, B, C, initial)
    assert y.shape == u.shape and final is initial


def test_without_gradients_the_loop_keeps_no_states_and_gives_the_same():
    """Under no_grad (the value pass, rollouts) the loop runs without the autograd Function
    and its stored states: the same outputs and final state."""
    args = inputs()
    resets = torch.zeros(3, 17, dtype=torch.bool)
    resets[1, 4] = True
    with torch.no_grad():
        y, final = selective_scan(*args, resets, torch.tensor([17, 9, 0]))
        selective_scan_module.BLOCK_BYTES, default = 1, selective_scan_module.BLOCK_BYTES
        try:                                           # blocks of one row
            y_blocks, final_blocks = selective_scan(*args, resets, torch.tensor([17, 9, 0]))
        finally:
            selective_scan_module.BLOCK_BYTES = default
    torch.testing.assert_close(y_blocks, y, atol=0, rtol=0)
    torch.testing.assert_close(final_blocks, final, atol=0, rtol=0)
    y_ref, final_ref = SELECTIVE_SCAN_IMPLS["sequential"](*args, resets, torch.tensor([17, 9, 0]))
    torch.testing.assert_close(y[:, :9], y_ref[:, :9], **TOL[torch.float64])
    torch.testing.assert_close(final, final_ref, **TOL[torch.float64])
