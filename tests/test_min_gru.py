"""minGRU: the paper's equations written out, parallel == sequential (also float32 at
T = 8192), no elapsed time, the positive candidate, bad arguments."""

import pytest
import torch

import memory_models
from memory_models import MinGRU
from memory_models.min_gru import _Elements, positive_activation
from scan_cell_checks import (assert_parallel_equals_sequential, assert_scan_equals_loop,
                              random_state)

SMALL = dict(input_size=3, hidden_size=5)

pytestmark = pytest.mark.usefixtures("one_thread")

def build(dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    return MinGRU(**{**SMALL, **kw}).to(dtype)


def written_out(cell, x, resets, state):
    """z = σ(W_z x + b_z), h̃ = g(W_h x + b_h), h = (1 − z) h + z h̃, as a loop from state["h"]."""
    h = state["h"]
    H = cell.hidden_size
    W, b = cell.gate_and_candidate.weight, cell.gate_and_candidate.bias
    outputs = []
    for t in range(x.shape[1]):
        z = torch.sigmoid(x[:, t] @ W[:H].T + b[:H])
        v = x[:, t] @ W[H:].T + b[H:]
        h_tilde = torch.where(v >= 0, v + 0.5, 1 / (1 + torch.exp(-v)))
        h = torch.where(resets[:, t, None], torch.zeros_like(h), h)
        h = (1 - z) * h + z * h_tilde
        outputs.append(h)
    return torch.stack(outputs, 1), {"h": h}


def test_scan_equals_the_papers_equations_written_out():
    cell = build()
    assert_scan_equals_loop(cell, lambda x, dt, resets, state: written_out(cell, x, resets, state),
                            steps=10, reset_at=(1, 3), timesteps=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_parallel_scan_equals_sequential_loop(dtype):
    assert_parallel_equals_sequential(MinGRU, dtype, **SMALL)


def test_parallel_scan_is_exact_in_float32_at_8192_steps():
    """The linear-space scan only multiplies the decays 1 − z (never divides), and every h_t
    is a convex combination of h_{-1} and h̃'s: float32 parallel == float32 sequential at
    T = 8192 within 1e-5 (relative to the largest |h|), and both within 1e-4 of float64."""
    cells = [build(torch.float32, scan_impl=impl, hidden_size=16) for impl in
             ("parallel", "sequential")]
    x = torch.randn(2, 8192, 3) * 3
    state = {"h": torch.randn(2, 16)}
    resets = torch.zeros(2, 8192, dtype=torch.bool)
    resets[0, 4000] = True
    (y_par, s_par), (y_seq, s_seq) = [c.scan(x, state, resets=resets) for c in cells]
    scale = y_seq.abs().max()
    assert torch.isfinite(y_par).all()
    assert (y_par - y_seq).abs().max() < 1e-5 * scale
    assert (s_par["h"] - s_seq["h"]).abs().max() < 1e-5 * scale
    y64, _ = cells[0].double().scan(x.double(), {"h": state["h"].double()}, resets=resets)
    assert (y_par.double() - y64).abs().max() < 1e-4 * scale


def test_gradients_equal_the_papers_equations_written_out():
    """The hand-written backward of the elements (a, b) (min_gru._Elements) through the scan:
    every gradient (input, initial state, parameters) equals autograd through the written-out
    loop, with a reset and a carried state, float64."""
    cell = build()
    x = torch.randn(2, 9, 3, dtype=torch.float64, requires_grad=True)
    resets = torch.zeros(2, 9, dtype=torch.bool)
    resets[1, 4] = True
    state = {"h": torch.randn(2, 5, dtype=torch.float64, requires_grad=True)}
    weight = torch.randn(2, 9, 5, dtype=torch.float64)
    grads = []
    for run in (lambda: cell.scan(x, state, resets=resets),
                lambda: written_out(cell, x, resets, state)):
        y, final = run()
        loss = (y * weight).sum() + final["h"].square().sum()
        grads.append(torch.autograd.grad(loss, [x, state["h"], *cell.parameters()]))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_elements_backward_equals_autograd_of_the_formula_at_and_around_zero():
    """(1 − σ(gate), σ(gate) g(c)) by _Elements and by autograd through torch.where (the
    paper's g): values to the bit, gradients equal, also at c = 0 exactly (g'(0) = 1, the
    v ≥ 0 branch), and gradcheck away from the kink at 0."""
    gate = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, 7, dtype=torch.float64) * 3
    c[0, :3] = 0.0
    c.requires_grad_()
    grad_a, grad_b = torch.randn(4, 7, dtype=torch.float64), torch.randn(4, 7, dtype=torch.float64)
    z = torch.sigmoid(gate)
    want = (1 - z, z * torch.where(c >= 0, c + 0.5, torch.sigmoid(c)))
    got = _Elements.apply(gate, c)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    want_grads = torch.autograd.grad(want, [gate, c], [grad_a, grad_b])
    got_grads = torch.autograd.grad(got, [gate, c], [grad_a, grad_b])
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    smooth = (c + 0.1 * (c == 0)).detach().requires_grad_()       # g has a kink at 0
    assert torch.autograd.gradcheck(_Elements.apply, (gate, smooth))


def test_ignores_integration_timesteps():
    cell = build()
    x = torch.randn(2, 7, 3, dtype=torch.float64)
    state = random_state(cell, 2, torch.float64)
    y, final = cell.scan(x, state)
    y_dt, final_dt = cell.scan(x, state, integration_timesteps=torch.rand(2, 7).double() * 5)
    torch.testing.assert_close(y_dt, y, rtol=0, atol=0)
    torch.testing.assert_close(final_dt["h"], final["h"], rtol=0, atol=0)


def test_candidate_activation_is_positive_continuous_and_increasing():
    v = torch.linspace(-30, 30, 6001, dtype=torch.float64)
    g = positive_activation(v)
    assert (g > 0).all() and (g.diff() > 0).all()
    assert positive_activation(torch.tensor([0.0])).item() == 0.5        # both sides meet
    v = torch.randn(1000) * 4
    assert torch.equal(positive_activation(v), torch.where(v >= 0, v + 0.5, torch.sigmoid(v)))
    torch.testing.assert_close(positive_activation(torch.tensor([-1e-12, 2.0])),
                               torch.tensor([0.5, 2.5]))


def test_bad_arguments_name_the_keyword_and_the_allowed_values():
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        MinGRU(3, 0)
    with pytest.raises(ValueError, match="scan_impl must be one of"):
        MinGRU(3, 5, scan_impl="log")
    with pytest.raises(ValueError, match="unknown keyword.*'state_size'"):
        memory_models.make("min_gru", input_size=3, hidden_size=5, state_size=4)
