"""EventSSM: Δt = 1 is the synchronous S5 recurrence, async formulas, parallel == sequential,
non-default options obey the interface laws, causality, long runs, the LRNN API (LTV_LRNN)."""

import inspect

import pytest
import torch
import torch.nn.functional as F

import memory_models
from memory_models import DISCRETIZATIONS, LTV_LRNN, EventSSM
from ssm_checks import assert_cache_step_validates_like_state_step, assert_rejects_bad_ssm_arguments

TOL = {torch.float32: dict(atol=2e-4, rtol=2e-4), torch.float64: dict(atol=1e-10, rtol=1e-10)}


def build(dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    kw = {"input_size": 3, "hidden_size": 5, "state_size": 8, "dt_min": 0.05, "dt_max": 0.5,
          **kw}
    return EventSSM(**kw).to(dtype)


def written_out(cell, x, dt, discretization):
    """The recurrence of the module docstring as a plain loop (non-selective cell), s_{-1} = 0."""
    A = torch.complex(-torch.exp(cell.log_A_real), cell.A_imag)
    B, C = torch.view_as_complex(cell.B), torch.view_as_complex(cell.C)
    delta = torch.exp(cell.log_dt)
    s = torch.zeros(x.shape[0], A.shape[0], dtype=A.dtype)
    outputs = []
    for t in range(x.shape[1]):
        elapsed = delta * dt[:, t, None]
        A_bar = torch.exp(A * elapsed)
        scale = {"async": (torch.exp(A * delta) - 1) / A,
                 "zoh": (torch.exp(A * elapsed) - 1) / A,
                 "dirac": torch.ones_like(A_bar)}[discretization]
        s = A_bar * s + scale * (x[:, t].to(A.dtype) @ B.T)
        outputs.append(F.gelu(2 * (s @ C.T).real + cell.D(x[:, t])))
    return torch.stack(outputs, 1)


@pytest.mark.parametrize("discretization", ["async", "zoh", "dirac"])
def test_unit_timesteps_equal_the_synchronous_recurrence(discretization):
    cell = build(discretization=discretization)
    x = torch.randn(2, 17, 3, dtype=torch.float64)
    ones = torch.ones(2, 17, dtype=torch.float64)
    y, _ = cell.scan(x, cell.initial_state(2), integration_timesteps=ones)
    torch.testing.assert_close(y, written_out(cell, x, ones, "zoh" if discretization == "async"
                                              else discretization))
    torch.testing.assert_close(cell.scan(x, cell.initial_state(2))[0], y)   # None means 1


@pytest.mark.parametrize("discretization", ["async", "zoh", "dirac"])
def test_event_timesteps_follow_the_formulas(discretization):
    cell = build(discretization=discretization)
    x = torch.randn(2, 12, 3, dtype=torch.float64)
    dt = torch.rand(2, 12, dtype=torch.float64) * 4
    dt[0, 3] = 0.0                                     # two events at the same time
    y, _ = cell.scan(x, cell.initial_state(2), integration_timesteps=dt)
    torch.testing.assert_close(y, written_out(cell, x, dt, discretization))


def test_async_differs_from_zoh_only_by_input_normalisation():
    x = torch.randn(1, 6, 3, dtype=torch.float64)
    dt = torch.full((1, 6), 3.0, dtype=torch.float64)
    y_async = build(discretization="async").scan(x, build().initial_state(1),
                                                 integration_timesteps=dt)[0]
    y_zoh = build(discretization="zoh").scan(x, build().initial_state(1),
                                             integration_timesteps=dt)[0]
    assert (y_async - y_zoh).abs().max() > 1e-3


@pytest.mark.parametrize("selective", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_parallel_scan_equals_sequential_loop(dtype, selective):
    parallel = build(dtype, selective=selective)
    sequential = build(dtype, selective=selective, scan_impl="sequential")
    x = torch.randn(3, 45, 3, dtype=dtype, requires_grad=True)
    dt = torch.rand(3, 45, dtype=dtype) * 3
    resets = torch.rand(3, 45) < 0.1
    lengths = torch.tensor([45, 30, 0])
    state = {"s": torch.randn(3, 4, 2, dtype=dtype)}
    outs = []
    for cell in (parallel, sequential):
        y, final = cell.scan(x, state, resets=resets, integration_timesteps=dt, lengths=lengths)
        grads = torch.autograd.grad(y.square().sum() + final["s"].sum(),
                                    [x, *cell.parameters()])
        outs.append((y, final["s"], grads))
    (y1, s1, g1), (y2, s2, g2) = outs
    torch.testing.assert_close(y1, y2, **TOL[dtype])
    torch.testing.assert_close(s1, s2, **TOL[dtype])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, **TOL[dtype])


@pytest.mark.parametrize("kw", [dict(selective=True), dict(discretization="zoh"),
                                dict(discretization="dirac"), dict(scan_impl="sequential")],
                         ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_options_obey_step_and_split_laws(kw):
    """tests/test_laws.py covers the default cell; the same laws for the other options."""
    cell = build(**kw)
    x = torch.randn(3, 13, 3, dtype=torch.float64)
    dt = torch.rand(3, 13, dtype=torch.float64) * 2
    resets = torch.rand(3, 13) < 0.2
    state = {"s": torch.randn(3, 4, 2, dtype=torch.float64)}
    y, final = cell.scan(x, state, resets=resets, integration_timesteps=dt)
    s, outputs = state, []
    for t in range(13):
        y_t, s = cell.step(x[:, t], s, reset=resets[:, t], integration_timestep=dt[:, t])
        outputs.append(y_t)
    torch.testing.assert_close(torch.stack(outputs, 1), y)
    torch.testing.assert_close(s["s"], final["s"])
    y1, mid = cell.scan(x[:, :6], state, resets=resets[:, :6], integration_timesteps=dt[:, :6])
    y2, end = cell.scan(x[:, 6:], mid, resets=resets[:, 6:], integration_timesteps=dt[:, 6:])
    torch.testing.assert_close(torch.cat([y1, y2], 1), y)
    torch.testing.assert_close(end["s"], final["s"])


@pytest.mark.parametrize("selective", [False, True])
def test_causal(selective):
    cell = build(selective=selective)
    x = torch.randn(2, 20, 3, dtype=torch.float64)
    dt = torch.rand(2, 20, dtype=torch.float64)
    y, _ = cell.scan(x, cell.initial_state(2), integration_timesteps=dt)
    x2, dt2 = x.clone(), dt.clone()
    x2[:, 11:] = torch.randn(2, 9, 3, dtype=torch.float64)
    dt2[:, 11:] = 5.0
    y2, _ = cell.scan(x2, cell.initial_state(2), integration_timesteps=dt2)
    torch.testing.assert_close(y2[:, :11], y[:, :11])
    assert (y2[:, 11:] - y[:, 11:]).abs().max() > 1e-6


@pytest.mark.parametrize("selective", [False, True])
def test_long_sequence_float32_is_finite_and_matches_float64(selective):
    cell = build(torch.float64, state_size=64, selective=selective)
    x = torch.randn(2, 8192, 3, dtype=torch.float64)
    dt = torch.rand(2, 8192, dtype=torch.float64) * 10       # long gaps between events too
    state = {"s": torch.randn(2, 32, 2, dtype=torch.float64)}
    y64, final64 = cell.scan(x, state, integration_timesteps=dt)
    y32, final32 = cell.float().scan(x.float(), {"s": state["s"].float()},
                                     integration_timesteps=dt.float())
    assert torch.isfinite(y32).all() and torch.isfinite(final32["s"]).all()
    assert (y32.double() - y64).abs().max() < 1e-3 * y64.abs().max()
    assert (final32["s"].double() - final64["s"]).abs().max() < 1e-3 * final64["s"].abs().max()


def test_inference_cache_step_matches_state_step():
    cell = build(selective=True)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    dt = torch.rand(2, 5, dtype=torch.float64)
    cache = cell.allocate_inference_cache(2, dtype=torch.float64)
    assert set(cache) == {"s", "A", "B", "C"}
    state = cell.initial_state(2)
    for t in range(5):
        y_cache, returned = cell.step(x[:, t], cache, integration_timestep=dt[:, t])
        y_state, state = cell.step(x[:, t], state, integration_timestep=dt[:, t])
        assert returned is cache
        torch.testing.assert_close(y_cache, y_state)
        torch.testing.assert_close(cache["s"], state["s"])
    y_plain, _ = cell.step(x[:, 0], cell.allocate_inference_cache(2, dtype=torch.float64))
    torch.testing.assert_close(y_plain, cell.step(x[:, 0], cell.initial_state(2))[0])


def test_forward_uses_timesteps():
    cell = build()
    x = torch.randn(2, 7, 3, dtype=torch.float64)
    dt = torch.rand(2, 7, dtype=torch.float64) * 3
    y = cell(x, integration_timesteps=dt)
    torch.testing.assert_close(
        y, cell.scan(x, cell.initial_state(2), integration_timesteps=dt)[0])
    assert y.shape == (2, 7, 5)


def test_registered_and_bad_arguments():
    assert "event_ssm" in memory_models.available()
    kw = memory_models.keywords("event_ssm")
    assert kw["discretization"] == "async" and kw["state_size"] == 64 and kw["selective"] is False
    assert_rejects_bad_ssm_arguments(EventSSM, "bilinear")
    with pytest.raises(ValueError, match="unknown discretization 'eular'"):
        EventSSM(3, 5, discretization="eular")
    with pytest.raises(ValueError, match="scan_impl must be one of"):
        EventSSM(3, 5, scan_impl="fast")
    with pytest.raises(ValueError, match="even int"):
        EventSSM(3, 5, state_size=3)
    with pytest.raises(TypeError, match="selective must be a bool"):
        EventSSM(3, 5, selective="yes")


def test_ltv_lrnn_api():
    with pytest.raises(TypeError):
        LTV_LRNN("async")

    class OnlyForward(LTV_LRNN):
        def forward(self, x, integration_timesteps=None, lengths=None):
            return x

    with pytest.raises(TypeError):          # step, allocate_inference_cache still abstract
        OnlyForward("async")
    assert list(inspect.signature(EventSSM.forward).parameters) == \
        ["self", "x", "integration_timesteps", "lengths"]


@pytest.mark.parametrize("discretization", ["async", "zoh", "dirac"])
def test_time_varying_by_its_named_function(discretization):
    """EventSSM is an LTV_LRNN: its discretize_fn is DISCRETIZATIONS[name], and the elapsed
    times change its outputs (an LTI cell's would not), in scan, forward and step alike."""
    cell = build(discretization=discretization)
    assert cell.discretize_fn is DISCRETIZATIONS[discretization]
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    elapsed = torch.rand(2, 9, dtype=torch.float64) * 3 + 0.5
    y = cell.scan(x, cell.initial_state(2))[0]
    y_elapsed = cell.scan(x, cell.initial_state(2), integration_timesteps=elapsed)[0]
    assert (y_elapsed[:, 1:] - y[:, 1:]).abs().amin() > 0         # every step after the first
    torch.testing.assert_close(cell(x, integration_timesteps=elapsed), y_elapsed)
    state = {"s": torch.randn(2, 4, 2, dtype=torch.float64)}
    y_one, _ = cell.step(x[:, 0], state)
    y_longer, _ = cell.step(x[:, 0], state, integration_timestep=elapsed[:, 0] + 1)
    assert (y_longer - y_one).abs().amin() > 0


def test_cache_step_validates_its_arguments():
    assert_cache_step_validates_like_state_step(memory_models.EventSSM(3, 5, state_size=4))


def test_step_tells_an_inference_cache_from_a_state_by_its_type():
    from memory_models.lrnn import InferenceCache
    cell = build()
    cache = cell.allocate_inference_cache(2, dtype=torch.float64)
    assert isinstance(cache, InferenceCache) and isinstance(cache, dict)
    assert cache.matrix_keys == cell.cache_matrix_keys
    x_t = torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="state keys"):     # a plain dict is a state
        cell.step(x_t, dict(cache))
