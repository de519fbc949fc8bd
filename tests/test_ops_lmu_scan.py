"""The fused LMU scan (ops.lmu_scan, hand-written BPTT) against its reference, the autograd loop
over LMUCell (lmu.lmu_loop): values and gradients, with resets, lengths and learned Ā, B̄."""

import pytest
import torch

from memory_models.lmu import LMUCell, lmu_loop
from memory_models.ops.lmu_scan import lmu_scan

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-4), torch.float64: dict(atol=1e-12, rtol=1e-10)}


def case(dtype, batch=4, steps=23, seed=0):
    """A cell with every weight non-zero and trained, inputs, a state, resets, lengths."""
    torch.manual_seed(seed)
    cell = LMUCell(3, 5, 6, 8.0, learn_a=True, learn_b=True).to(dtype)
    with torch.no_grad():
        cell.e_m.normal_()                     # initialised to zero: exercise it too
    x = torch.randn(batch, steps, 3, dtype=dtype)
    h, m = torch.randn(batch, 5, dtype=dtype), torch.randn(batch, 6, dtype=dtype)
    resets = torch.rand(batch, steps) < 0.15
    resets[0, 0] = True
    lengths = torch.tensor([steps, steps - 1, steps // 2, 0][:batch])
    return cell, x, h, m, resets, lengths


@pytest.mark.parametrize("full_lengths", [True, False], ids=["full", "lengths"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_values_and_gradients_equal_the_reference(dtype, full_lengths):
    cell, x, h, m, resets, lengths = case(dtype)
    if full_lengths:
        lengths = torch.full_like(lengths, x.shape[1])
    leaves = [x, h, m]
    results = []
    for scan in (lmu_scan, lmu_loop):
        inputs = [t.clone().requires_grad_() for t in leaves]
        y, h_T, m_T = scan(cell, *inputs, resets, lengths)
        loss = (y * torch.linspace(-1, 1, y.shape[1], dtype=dtype)[:, None]).sum() \
            + (h_T.square().sum() + m_T.sum())
        grads = torch.autograd.grad(loss, [*inputs, *cell.parameters()])
        results.append(((y, h_T, m_T), grads))
    (values, grads), (ref_values, ref_grads) = results
    for got, want in zip(values, ref_values):
        torch.testing.assert_close(got, want, **TOL[dtype])
    names = ["x", "h", "m", *(n for n, _ in cell.named_parameters())]
    for name, got, want in zip(names, grads, ref_grads):
        torch.testing.assert_close(got, want, **TOL[dtype], msg=lambda text: f"{name}: {text}")


def test_empty_sequence_returns_the_state():
    cell, x, h, m, resets, lengths = case(torch.float64)
    y, h_T, m_T = lmu_scan(cell, x[:, :0], h, m, resets[:, :0], torch.zeros_like(lengths))
    assert y.shape == (4, 0, 5) and torch.equal(h_T, h) and torch.equal(m_T, m)


def test_backward_is_not_differentiable_again():
    """A second derivative (e.g. a gradient penalty) fails clearly instead of silently."""
    cell, x, h, m, resets, lengths = case(torch.float64, steps=4)
    x.requires_grad_()
    y, _, _ = lmu_scan(cell, x, h, m, resets, lengths)
    (grad,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()
