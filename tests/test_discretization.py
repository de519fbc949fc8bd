"""Discretizations against exact solutions of ds/dt = a·s + b·u, stability, broadcasting."""

import cmath
import math

import numpy as np
import pytest
import torch
from scipy.linalg import expm

from memory_models.discretization import DISCRETIZATIONS, expm1

C128 = torch.complex128
# Re a < 0: slow, fast, oscillating, nearly undamped
POLES = torch.tensor([-0.5 + 0.0j, -3.0 + 2.0j, -0.01 + 40.0j, -1e-6 + 1.0j], dtype=C128)


def exact_hold(a: complex, s: complex, drive: complex, step: float) -> complex:
    """ds/dt = a·s + drive over `step`, by the matrix exponential of the augmented system
    [[a, drive], [0, 0]] (scipy's Padé expm: independent of the formulas under test)."""
    m = expm(np.array([[a, drive], [0, 0]], dtype=complex) * step)
    return complex(m[0, 0] * s + m[0, 1])


def run(name, a, delta, dts, inputs, b=1.0 + 0.5j):
    """s_k = A_bar_k s_{k-1} + B_scale_k·b·u_k from s = 0, one event per entry of dts."""
    A = torch.tensor([a], dtype=C128)
    A_bar, B_scale = DISCRETIZATIONS[name](A, torch.tensor(delta, dtype=torch.float64),
                                           torch.tensor(dts, dtype=torch.float64)[:, None])
    s, out = 0j, []
    for k, u in enumerate(inputs):
        s = complex(A_bar[k, 0]) * s + complex(B_scale[k, 0]) * b * u
        out.append(s)
    return out


@pytest.mark.parametrize("a", POLES.tolist())
def test_zoh_is_exact_for_piecewise_constant_input(a):
    dts = [0.3, 1.0, 0.05, 2.5, 0.7]
    inputs = [1.0, -2.0, 0.5, 3.0, 0.0]
    delta, b = 0.4, 1.0 + 0.5j
    got = run("zoh", a, delta, dts, inputs, b)
    s = 0j
    for dt, u, g in zip(dts, inputs, got):     # u held over the interval that ends at event k
        s = exact_hold(a, s, b * u, delta * dt)
        assert abs(g - s) < 1e-12 * max(1.0, abs(s))


@pytest.mark.parametrize("a", POLES.tolist())
def test_dirac_is_exact_for_impulses_at_events(a):
    """s(t) solves ds/dt = a s + b Σ_k u_k δ(t - t_k): s(t_k+) = Σ_{j<=k} e^{a(t_k - t_j)} b u_j."""
    dts = [0.0, 1.0, 0.25, 3.0, 0.5]
    inputs = [1.0, -1.0, 2.0, 0.5, 1.5]
    delta, b = 0.7, 0.3 - 1.0j
    got = run("dirac", a, delta, dts, inputs, b)
    times = torch.tensor(dts, dtype=torch.float64).cumsum(0) * delta
    for k in range(len(dts)):
        exact = sum(cmath.exp(a * float(times[k] - times[j])) * b * inputs[j]
                    for j in range(k + 1))
        assert abs(got[k] - exact) < 1e-12


@pytest.mark.parametrize("a", POLES[:2].tolist())
def test_bilinear_is_the_trapezoid_rule_and_second_order(a):
    delta, b = 1.0, 1.0
    # definition: s_k - s_{k-1} = h·a·(s_k + s_{k-1})/2 + h·b·u_k
    h, inputs = 0.1, [1.0, -0.5, 2.0, 0.0]
    got = run("bilinear", a, delta, [h] * 4, inputs, b)
    previous = 0j
    for s, u in zip(got, inputs):
        assert abs((s - previous) - (h * a * (s + previous) / 2 + h * b * u)) < 1e-12
        previous = s
    # free decay converges to exp(a t) with error O(h^2): halving h quarters the error
    errors = []
    for steps in (40, 80, 160):
        h = 1.0 / steps
        A_bar, _ = DISCRETIZATIONS["bilinear"](torch.tensor(a, dtype=C128),
                                               torch.tensor(h, dtype=torch.float64))
        errors.append(abs(complex(A_bar) ** steps - cmath.exp(a)))
    for coarse, fine in zip(errors, errors[1:]):
        assert 3.5 < coarse / fine < 4.5


def test_async_normalises_input_independently_of_elapsed_time():
    A = POLES
    delta = torch.tensor(0.3, dtype=torch.float64)
    dts = torch.tensor([0.0, 0.5, 1.0, 7.0], dtype=torch.float64)[:, None]
    A_bar, B_scale = DISCRETIZATIONS["async"](A, delta, dts)
    torch.testing.assert_close(A_bar, torch.exp(A * delta * dts))
    torch.testing.assert_close(B_scale, (torch.exp(A * delta) - 1).div(A).expand(4, -1))
    # Δt = 1 (or None) is zoh
    zoh = DISCRETIZATIONS["zoh"](A, delta)
    for got, want in zip(DISCRETIZATIONS["async"](A, delta, torch.ones(1, dtype=torch.float64)),
                         zoh):
        torch.testing.assert_close(got, want)
    for got, want in zip(DISCRETIZATIONS["async"](A, delta), zoh):
        torch.testing.assert_close(got, want)


def test_zoh_scales_input_with_elapsed_time_and_dirac_does_not():
    A, delta = POLES, torch.tensor(0.3, dtype=torch.float64)
    dts = torch.tensor([0.0, 2.0], dtype=torch.float64)[:, None]
    _, zoh_scale = DISCRETIZATIONS["zoh"](A, delta, dts)
    assert torch.all(zoh_scale[0] == 0)                 # no time, no input integrated
    torch.testing.assert_close(zoh_scale[1], torch.expm1(A * 0.6) / A)
    _, dirac_scale = DISCRETIZATIONS["dirac"](A, delta, dts)
    assert torch.all(dirac_scale == 1)


def test_no_discretization_is_identity():
    A = torch.tensor([0.9 + 0.1j, 0.5 - 0.2j], dtype=C128)
    A_bar, B_scale = DISCRETIZATIONS["no_discretization"](A, torch.tensor(0.1))
    assert torch.equal(A_bar, A) and torch.all(B_scale == 1)


@pytest.mark.parametrize("name", ["zoh", "bilinear", "dirac", "async"])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=str)
def test_stable_for_every_step_when_real_part_negative(name, dtype):
    real = torch.tensor([-1e-4, -0.5, -1.0, -1e3])
    imag = torch.tensor([0.0, 1.0, 100.0, -5.0])
    A = torch.complex(real[:, None].expand(4, 4), imag[None].expand(4, 4)).flatten().to(dtype)
    steps = torch.tensor([1e-8, 1e-3, 1.0, 1e3, 1e8, 1e30], dtype=A.real.dtype)[:, None]
    A_bar, B_scale = DISCRETIZATIONS[name](A, torch.ones((), dtype=A.real.dtype), steps)
    assert torch.isfinite(A_bar).all() and torch.isfinite(B_scale).all()
    assert (A_bar.abs() <= 1).all()
    # strictly inside the unit circle wherever the dtype can tell |A_bar| from 1
    exact, _ = DISCRETIZATIONS[name](A.to(C128), torch.ones((), dtype=torch.float64),
                                     steps.double())
    resolvable = (1 - exact.abs()) > 10 * torch.finfo(A.real.dtype).eps
    assert resolvable.sum() > A_bar.numel() // 3
    assert (A_bar.abs()[resolvable] < 1).all()


def test_bilinear_sign_is_stable_not_flipped():
    A_bar, B_scale = DISCRETIZATIONS["bilinear"](torch.tensor(-2.0 + 0j, dtype=C128),
                                                 torch.tensor(0.5, dtype=torch.float64))
    torch.testing.assert_close(A_bar, torch.tensor((1 - 0.5) / (1 + 0.5) + 0j, dtype=C128))
    torch.testing.assert_close(B_scale, torch.tensor(0.5 / 1.5 + 0j, dtype=C128))


def test_complex_expm1_has_no_cancellation():
    z64 = torch.tensor([1e-7 + 1e-7j, -3e-6 + 2e-8j, 1e-9 - 1e-5j, 0.5 + 2.0j], dtype=C128)
    exact = torch.exp(z64) - 1                       # fine in float64 at these magnitudes...
    exact[:3] = z64[:3] + z64[:3] ** 2 / 2 + z64[:3] ** 3 / 6   # ...Taylor where it is not
    got = expm1(z64.to(torch.complex64)).to(C128)
    rel = ((got - exact).abs() / exact.abs())
    assert (rel < 1e-6).all(), rel
    naive = (torch.exp(z64.to(torch.complex64)) - 1).to(C128)
    assert ((naive - exact).abs() / exact.abs())[:3].max() > 1e-3   # what expm1 avoids
    assert torch.equal(expm1(torch.tensor([1e-8])), torch.expm1(torch.tensor([1e-8])))


@pytest.mark.parametrize("name", list(DISCRETIZATIONS))
def test_broadcast_shapes(name):
    fn = DISCRETIZATIONS[name]
    A = torch.complex(-torch.rand(5, 3), torch.randn(5, 3))
    A_bar, B_scale = fn(A, torch.rand(5, 1))                           # per-channel step
    assert A_bar.shape == B_scale.shape == (5, 3)
    A = A[0]
    A_bar, B_scale = fn(A, torch.rand(2, 7, 3), torch.rand(2, 7, 1))    # per-step, per-mode
    expected = (3,) if name == "no_discretization" else (2, 7, 3)
    assert A_bar.shape == B_scale.shape == expected
    assert A_bar.dtype == B_scale.dtype == torch.complex64


def test_names_are_the_seed_names():
    assert set(DISCRETIZATIONS) == {"zoh", "bilinear", "dirac", "async", "no_discretization"}
    assert math.isclose(float(DISCRETIZATIONS["zoh"](torch.tensor(-1.0), torch.tensor(1.0))[0]),
                        math.exp(-1.0), rel_tol=1e-6)
