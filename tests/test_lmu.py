"""LMU family: discretisation, impulse, LMUFFT against the plain recurrence, popgym API, parity.

The interface laws (split/step/resets/lengths/gradients/dtype) run for lmu and lmu_fft in
tests/test_laws.py; these tests check the maths and the published API.
"""

import inspect

import numpy as np
import pytest
import scipy.integrate
import scipy.signal
import torch
from popgym.baselines.models import lmu as popgym_lmu

import memory_models
from memory_models import LMU, LMUFFT, LMUCell, leCunUniform
from memory_models.lmu import discrete_legendre_system, legendre_delay_system


@pytest.mark.parametrize("memory_size, theta", [(1, 1.0), (6, 4.0), (32, 64.0), (128, 1000.0)])
def test_zoh_matches_cont2discrete(memory_size, theta):
    A, B = legendre_delay_system(memory_size, theta)
    expected = scipy.signal.cont2discrete((A, B, np.ones((1, memory_size)), np.zeros(1)),
                                          dt=1.0, method="zoh")
    A_bar, B_bar = LMUCell(2, 3, memory_size, theta).stateSpaceMatrices(memory_size, theta)
    assert A_bar.dtype == np.float64 and A_bar.shape == (memory_size, memory_size)
    assert B_bar.shape == (memory_size, 1)
    np.testing.assert_allclose(A_bar, expected[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(B_bar, expected[1], rtol=1e-10, atol=1e-12)


def test_zoh_matches_ode_integration():
    """m(1) of dm/dt = A m + B u with u constant over the step is Ā m(0) + B̄ u."""
    A, B = legendre_delay_system(6, 5.0)
    A_bar, B_bar = LMUCell(2, 3, 6, 5.0).stateSpaceMatrices(6, 5.0)
    m0, u = np.random.default_rng(0).normal(size=6), 0.7
    solution = scipy.integrate.solve_ivp(lambda t, m: A @ m + B[:, 0] * u, (0.0, 1.0), m0,
                                         rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(solution.y[:, -1], A_bar @ m0 + B_bar[:, 0] * u, atol=1e-9)


def test_both_state_space_matrices_are_the_discrete_legendre_system():
    """LMUCell's (numpy, float64) and LMUFFT's (tensors in the layer's dtype, its buffers)."""
    A_bar, B_bar = discrete_legendre_system(6, 5.0)
    for got, want in zip(LMUCell(2, 3, 6, 5.0).stateSpaceMatrices(6, 5.0), (A_bar, B_bar)):
        np.testing.assert_array_equal(got, want)
    layer = LMUFFT(2, 3, 6, 10, 5.0)
    for dtype in (torch.float32, torch.float64):
        layer = layer.to(dtype)
        A, B = layer.stateSpaceMatrices()
        assert A.dtype == B.dtype == dtype
        torch.testing.assert_close(A, torch.from_numpy(A_bar).to(dtype), rtol=0, atol=0)
        torch.testing.assert_close(B, torch.from_numpy(B_bar).to(dtype), rtol=0, atol=0)
        torch.testing.assert_close((A, B), (layer.A, layer.B), rtol=0, atol=0)


def test_legendre_matrices_follow_the_formula():
    A, B = legendre_delay_system(4, 2.0)
    assert A[0, 0] == -0.5 and A[0, 1] == -0.5 and A[1, 0] == 1.5 and A[2, 0] == -2.5
    np.testing.assert_array_equal(B[:, 0], [0.5, -1.5, 2.5, -3.5])


def test_impulse_equals_repeated_multiplication_up_to_2000_steps():
    cell = LMUFFT(2, 3, memory_size=16, seq_len=2001, theta=700.0).double()
    A, B = cell.stateSpaceMatrices()
    assert A.dtype == torch.float64
    H, spectrum = cell.impulse()
    column, expected = B[:, 0], []
    for _ in range(2001):
        expected.append(column)
        column = A @ column
    expected = torch.stack(expected, 1)
    assert H.shape == (16, 2001)
    torch.testing.assert_close(H, expected, atol=1e-12 * float(expected.abs().max()), rtol=1e-9)
    torch.testing.assert_close(spectrum, torch.fft.rfft(H, n=2 * 2001))


@pytest.mark.parametrize("seq_len", [1, 100, 128])
def test_impulse_has_popgyms_shapes_for_any_seq_len(seq_len):
    """popgym's impulse(): H (N, seq_len) and rfft(H, n=2·seq_len) (N, seq_len + 1)."""
    mine, theirs = LMUFFT(3, 6, 8, seq_len, 12.0), popgym_lmu.LMUFFT(3, 6, 8, seq_len, 12.0)
    for got, want in zip(mine.impulse(), theirs.impulse()):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def lmu_fft_by_recurrence(cell, x, m0):
    """The plain recurrence m_t = Ā m_{t-1} + B̄ u_t, h_t = ReLU(W_h [m_t; x_t])."""
    A, B = cell.stateSpaceMatrices()
    m, outputs = m0, []
    for t in range(x.shape[1]):
        u = torch.relu(cell.W_u(x[:, t]))
        m = m @ A.T + u * B[:, 0]
        outputs.append(torch.relu(cell.W_h(torch.cat([m, x[:, t]], -1))))
    return torch.stack(outputs, 1), m


# theta 3 decays within a few steps (short kernel, Toeplitz matmul, horizon cut well inside T);
# theta 400 does not (long kernel, FFT, no cut)
@pytest.mark.parametrize("theta", [3.0, 400.0])
@pytest.mark.parametrize("steps", [9, 40, 300])          # shorter than, equal to, longer than seq_len
def test_lmu_fft_equals_recurrence_from_nonzero_state(steps, theta):
    torch.manual_seed(0)
    cell = LMUFFT(3, 5, memory_size=12, seq_len=40, theta=theta).double()
    x = torch.randn(2, steps, 3, dtype=torch.float64)
    m0 = torch.randn(2, 12, dtype=torch.float64)
    y, final = cell.scan(x, {"m": m0})
    y_ref, m_ref = lmu_fft_by_recurrence(cell, x, m0)
    scale = 1 + float(y_ref.detach().abs().max())
    torch.testing.assert_close(y, y_ref, atol=1e-10 * scale, rtol=1e-9)
    torch.testing.assert_close(final["m"], m_ref, atol=1e-10 * (1 + float(m_ref.detach().abs().max())), rtol=1e-9)
    assert (cell.horizon is not None and cell.horizon < 300) == (theta == 3.0)
    lengths = torch.tensor([steps // 2, steps - 1])
    _, part = cell.scan(x, {"m": m0}, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        _, m_n = lmu_fft_by_recurrence(cell, x[b:b + 1, :n], m0[b:b + 1])
        torch.testing.assert_close(part["m"][b:b + 1], m_n, atol=1e-10, rtol=1e-9)


def test_lmu_fft_float32_matches_float64():
    torch.manual_seed(1)
    cell = LMUFFT(4, 8, memory_size=64, seq_len=128, theta=32.0)
    x, m0 = torch.randn(3, 500, 4), torch.randn(3, 64)
    y32, s32 = cell.scan(x, {"m": m0})
    y64, s64 = cell.double().scan(x.double(), {"m": m0.double()})
    torch.testing.assert_close(y32.double(), y64, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(s32["m"].double(), s64["m"], atol=2e-5, rtol=1e-4)


def parameter_names(fn):
    return [p for p in inspect.signature(fn).parameters if p != "self"]


def test_popgym_signatures():
    sizes = ["input_size", "hidden_size", "memory_size", "theta"]
    assert parameter_names(LMUCell.__init__) == sizes + ["learn_a", "learn_b"]
    assert parameter_names(LMU.__init__) == sizes + ["learn_a", "learn_b"]
    assert parameter_names(LMUFFT.__init__) == ["input_size", "hidden_size", "memory_size",
                                                "seq_len", "theta"]
    assert parameter_names(LMUCell.initParameters) == []
    assert parameter_names(LMUCell.stateSpaceMatrices) == ["memory_size", "theta"]
    assert parameter_names(LMUCell.forward) == ["x", "state"]
    assert parameter_names(LMU.forward) == ["x", "state"]
    assert inspect.signature(LMU.forward).parameters["state"].default is None
    assert parameter_names(LMUFFT.stateSpaceMatrices) == []
    assert parameter_names(LMUFFT.impulse) == []
    assert parameter_names(LMUFFT.forward) == ["x"]
    assert parameter_names(leCunUniform) == ["tensor"]
    assert {"lmu", "lmu_fft"} <= set(memory_models.available())


def test_popgym_style_calls():
    x = torch.randn(2, 7, 3)
    lmu = LMU(3, 5, memory_size=4, theta=6.0)
    y, (h, m) = lmu(x)
    assert y.shape == (2, 7, 5) and h.shape == (2, 5) and m.shape == (2, 4)
    y2, (h2, m2) = lmu(x[:, 3:], state=lmu(x[:, :3])[1])
    torch.testing.assert_close(y2, y[:, 3:])
    torch.testing.assert_close((h2, m2), (h, m))
    cell_h, cell_m = lmu.cell(x[:, 0], (torch.zeros(2, 5), torch.zeros(2, 4)))
    assert cell_h.shape == (2, 5) and cell_m.shape == (2, 4)
    fft = LMUFFT(3, 5, memory_size=4, seq_len=8, theta=6.0)
    for steps in (5, 8, 20):
        y, h_n = fft(torch.randn(2, steps, 3))
        assert y.shape == (2, steps, 5) and h_n.shape == (2, 5)
        torch.testing.assert_close(h_n, y[:, -1])


@pytest.mark.parametrize("learn_a, learn_b", [(False, False), (True, False), (False, True),
                                              (True, True)])
def test_learn_a_learn_b_make_trained_parameters(learn_a, learn_b):
    lmu = LMU(3, 5, memory_size=4, theta=6.0, learn_a=learn_a, learn_b=learn_b)
    params, buffers = dict(lmu.cell.named_parameters()), dict(lmu.cell.named_buffers())
    assert ("A" in params) == learn_a and ("A" in buffers) != learn_a
    assert ("B" in params) == learn_b and ("B" in buffers) != learn_b
    y, _ = lmu(torch.randn(2, 6, 3))
    y.square().mean().backward()
    for name in [n for n, on in (("A", learn_a), ("B", learn_b)) if on]:
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0


def test_lecun_uniform_bounds():
    weight = leCunUniform(torch.empty(500, 12))
    limit = (3 / 12) ** 0.5
    assert weight.abs().max() <= limit and weight.abs().max() > 0.9 * limit
    with pytest.raises(ValueError, match="dims"):
        leCunUniform(torch.empty(5))


def test_equals_popgym_lmu_cell_and_layer():
    torch.manual_seed(0)
    mine = LMU(3, 6, memory_size=5, theta=9.0).double()
    with torch.no_grad():
        mine.cell.e_m.normal_()                 # popgym initialises e_m to 0: test it too
    theirs = popgym_lmu.LMU(3, 6, 5, 9.0).double()
    torch.testing.assert_close(theirs.cell.A, mine.cell.A, atol=1e-7, rtol=1e-6)   # float32 A
    theirs.cell.load_state_dict(mine.cell.state_dict())
    x = torch.randn(2, 11, 3, dtype=torch.float64)
    state = (torch.randn(2, 6, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64))
    torch.testing.assert_close(mine.cell(x[:, 0], state), theirs.cell(x[:, 0], state))
    y, (h, m) = mine(x, state)
    y_ref, (h_ref, m_ref) = theirs(x, state)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close((h, m), (h_ref, m_ref))


def test_equals_popgym_lmu_fft_from_zero_state():
    torch.manual_seed(0)
    mine = LMUFFT(3, 6, memory_size=8, seq_len=32, theta=12.0)
    theirs = popgym_lmu.LMUFFT(3, 6, 8, 32, 12.0)
    theirs.W_u.load_state_dict(mine.W_u.state_dict())
    theirs.W_h.load_state_dict(mine.W_h.state_dict())
    x = torch.randn(2, 32, 3)
    y, h_n = mine(x)
    y_ref, h_n_ref = theirs(x)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(h_n, h_n_ref, atol=1e-5, rtol=1e-4)


def test_double_recomputes_exact_matrices():
    cell = LMUFFT(2, 3, memory_size=10, seq_len=16, theta=5.0)
    A32 = cell.A.clone()
    cell = cell.double()
    A_bar, _ = LMUCell(2, 3, 10, 5.0).stateSpaceMatrices(10, 5.0)
    assert cell.A.dtype == cell.H.dtype == cell.A_powers.dtype == torch.float64
    np.testing.assert_array_equal(cell.A.numpy(), A_bar)          # not the rounded float32 Ā
    assert not torch.equal(cell.A, A32.double())
    assert LMU(2, 3, 4, 5.0).double().cell.A.dtype == torch.float64


@pytest.mark.parametrize("kwargs, match", [
    (dict(memory_size=0), "memory_size"), (dict(theta=0.0), "theta"),
    (dict(theta=float("nan")), "theta"), (dict(seq_len=0), "seq_len")])
def test_bad_sizes_name_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        memory_models.make("lmu_fft", input_size=2, hidden_size=3, **kwargs)
    if "seq_len" not in kwargs:
        with pytest.raises(ValueError, match=match):
            memory_models.make("lmu", input_size=2, hidden_size=3, **kwargs)


def test_lmu_scan_backward_matches_autograd_of_the_cell():
    """The hand-written BPTT of the fused scan against gradcheck, with resets and lengths."""
    torch.manual_seed(0)
    lmu = LMU(3, 4, memory_size=5, theta=6.0, learn_a=True, learn_b=True).double()
    with torch.no_grad():
        lmu.cell.e_m.normal_()
    x = torch.randn(3, 7, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    m0 = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    resets = torch.zeros(3, 7, dtype=torch.bool)
    resets[0, 3] = resets[2, 0] = resets[1, 5] = True
    lengths = torch.tensor([7, 4, 2])

    def run(x, h0, m0, *params):
        y, final = lmu.scan(x, {"h": h0, "m": m0}, resets=resets, lengths=lengths)
        return y, final["h"], final["m"]

    assert torch.autograd.gradcheck(run, (x, h0, m0, *lmu.parameters()))
