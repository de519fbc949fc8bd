"""S4D: FFT path == recurrence for every discretization, LRNN API (LRNN, LTI_LRNN), long runs."""

import inspect

import pytest
import torch

import memory_models
from memory_models import DISCRETIZATIONS, LRNN, LTI_LRNN, S4D
from ssm_checks import assert_cache_step_validates_like_state_step, assert_rejects_bad_ssm_arguments

TOL = {torch.float32: dict(atol=2e-4, rtol=2e-4), torch.float64: dict(atol=1e-10, rtol=1e-10)}


def build(dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    kw = {"input_size": 3, "hidden_size": 5, "state_size": 6, **kw}
    return S4D(**kw).to(dtype)


def step_loop(cell, x, state, lengths=None):
    """y and the state after lengths[b] steps by the recurrence, one step at a time."""
    outputs = []
    for t in range(x.shape[1]):
        y_t, new = cell.step(x[:, t], state)
        if lengths is not None:
            keep = (t < lengths).view(-1, 1, 1, 1)
            new = {"s": torch.where(keep, new["s"], state["s"])}
        state = new
        outputs.append(y_t)
    return torch.stack(outputs, 1), state


@pytest.mark.parametrize("init", ["lin", "inv"])
@pytest.mark.parametrize("discretization", ["zoh", "bilinear", "dirac"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_fft_path_equals_recurrence_from_nonzero_state(discretization, init, dtype):
    cell = build(dtype, discretization=discretization, init=init, dt_min=0.01, dt_max=0.5)
    x = torch.randn(4, 37, 3, dtype=dtype)
    state = {"s": torch.randn(4, 5, 3, 2, dtype=dtype)}
    lengths = torch.tensor([37, 20, 1, 0])
    y, final = cell.scan(x, state, lengths=lengths)
    y_ref, final_ref = step_loop(cell, x, state, lengths)
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(y[b, :n], y_ref[b, :n], **TOL[dtype])
    torch.testing.assert_close(final["s"], final_ref["s"], **TOL[dtype])


@pytest.mark.parametrize("lengths", [[29, 13, 0], [29, 29, 29]], ids=["ragged", "full"])
def test_fft_path_gradients_equal_the_recurrences(lengths):
    """The einsums over the chunked power tables (T = 29 from B = 3: 6 chunks of c = 5, ends
    inside a chunk, or every row whole: inputs oldest first, 1 zero in front) differentiate
    like the step loop: input, state and every parameter."""
    cell = build(discretization="bilinear", dt_min=0.01, dt_max=0.5)
    x = torch.randn(3, 29, 3, dtype=torch.float64, requires_grad=True)
    s0 = torch.randn(3, 5, 3, 2, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor(lengths)
    weights = torch.randn(3, 29, 5, dtype=torch.float64) * (torch.arange(29) < lengths[:, None])[
        ..., None]

    def gradients(run):
        y, final = run(cell, x, {"s": s0}, lengths)
        loss = (y * weights).sum() + final["s"].square().sum()
        return torch.autograd.grad(loss, [x, s0, *cell.parameters()])

    scanned = gradients(lambda c, x, state, n: c.scan(x, state, lengths=n))
    for got, expected in zip(scanned, gradients(step_loop)):
        torch.testing.assert_close(got, expected, **TOL[torch.float64])


def test_compute_kernel_is_powers_of_A_bar_and_B_norm():
    cell = build()
    A_bar, B_bar, C = cell.discretize()
    assert A_bar.shape == B_bar.shape == C.shape == (5, 3) and A_bar.is_complex()
    K, B_norm = cell.compute_kernel(9)
    assert K.shape == (5, 3, 9) and B_norm.shape == (5, 3)
    torch.testing.assert_close(B_norm, B_bar)
    power = torch.ones_like(A_bar)
    for l in range(9):
        torch.testing.assert_close(K[..., l], power)
        power = power * A_bar
    assert (A_bar.abs() < 1).all()


def test_kernel_survives_decays_that_underflow():
    cell = build(torch.float32)
    with torch.no_grad():
        cell.log_A_real.fill_(8.0)                     # A ≈ -3000: exp(δA) underflows to 0
        cell.log_dt.fill_(0.0)
    K, _ = cell.compute_kernel(5)
    assert torch.isfinite(torch.view_as_real(K)).all()
    assert torch.all(K[..., 0] == 1)
    assert torch.all(K[..., 1:].abs() <= torch.finfo(torch.float32).tiny)
    y, final = cell.scan(torch.randn(2, 5, 3), {"s": torch.randn(2, 5, 3, 2)})
    assert torch.isfinite(y).all() and torch.isfinite(final["s"]).all()
    (y.sum() + final["s"].sum()).backward()
    for name, p in cell.named_parameters():
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_long_sequence_float32_is_finite_and_matches_float64(discretization):
    cell = build(torch.float64, state_size=64, discretization=discretization)
    x = torch.randn(2, 8192, 3, dtype=torch.float64)
    state = {"s": torch.randn(2, 5, 32, 2, dtype=torch.float64)}
    y64, final64 = cell.scan(x, state)
    y32, final32 = cell.float().scan(x.float(), {"s": state["s"].float()})
    assert torch.isfinite(y32).all() and torch.isfinite(final32["s"]).all()
    scale = y64.abs().max()
    assert (y32.double() - y64).abs().max() < 1e-3 * scale
    assert (final32["s"].double() - final64["s"]).abs().max() < 1e-3 * final64["s"].abs().max()


def test_inference_cache_step_matches_state_step_and_updates_in_place():
    cell = build()
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    cache = cell.allocate_inference_cache(2, max_seqlen=6, dtype=torch.float64)
    assert set(cache) == {"s", "A_bar", "B_bar", "C"}
    state = cell.initial_state(2)
    for t in range(6):
        y_cache, returned = cell.step(x[:, t], cache)
        y_state, state = cell.step(x[:, t], state)
        assert returned is cache
        torch.testing.assert_close(y_cache, y_state)
        torch.testing.assert_close(cache["s"], state["s"])
    y_scan, _ = cell.scan(x, cell.initial_state(2))
    torch.testing.assert_close(y_state, y_scan[:, -1])


def test_forward_is_scan_from_initial_state_and_ignores_timesteps():
    cell = build()
    x = torch.randn(2, 7, 3, dtype=torch.float64)
    y = cell(x)
    torch.testing.assert_close(y, cell.scan(x, cell.initial_state(2))[0])
    torch.testing.assert_close(cell(x, integration_timesteps=torch.rand(2, 7,
                                                                         dtype=torch.float64)), y)
    assert y.shape == (2, 7, 5)


def test_registered_with_keywords():
    assert "s4d" in memory_models.available()
    kw = memory_models.keywords("s4d")
    assert kw["state_size"] == 64 and kw["init"] == "lin" and kw["discretization"] == "zoh"
    assert (kw["dt_min"], kw["dt_max"]) == (1e-3, 1e-1)


def test_bad_arguments_name_the_allowed_values():
    with pytest.raises(ValueError, match="LTI model cannot use discretization 'async'"):
        S4D(3, 5, discretization="async")
    assert_rejects_bad_ssm_arguments(S4D, "no_discretization")
    with pytest.raises(ValueError, match="init must be one of"):
        S4D(3, 5, init="legs")


# ---------------------------------------------------------------------- LRNN API: LRNN, LTI_LRNN
class Minimal(LRNN):
    def forward(self, x, integration_timesteps=None, lengths=None):
        return x


def test_lrnn_is_abstract():
    with pytest.raises(TypeError):
        LRNN("zoh")

    class NoForward(LRNN):
        pass

    with pytest.raises(TypeError):
        NoForward("zoh")


@pytest.mark.parametrize("name", ["zoh", "bilinear", "dirac", "async", "no_discretization"])
def test_discretize_fn_is_the_named_function(name):
    model = Minimal(name)
    assert model.discretize_fn is DISCRETIZATIONS[name] and model.discretization == name
    assert isinstance(model, torch.nn.Module)


def test_no_discretization_and_unknown_names():
    assert Minimal(None).discretize_fn is None
    with pytest.raises(ValueError) as err:
        Minimal("euler")
    for allowed in ("'zoh'", "'bilinear'", "'dirac'", "'async'", "'no_discretization'", "None"):
        assert allowed in str(err.value)


def test_lti_rejects_async_and_is_abstract():
    with pytest.raises(TypeError):
        LTI_LRNN("zoh")

    class OnlyForward(LTI_LRNN):
        def forward(self, x, integration_timesteps=None, lengths=None):
            return x

    with pytest.raises(TypeError):
        OnlyForward("zoh")

    class Complete(OnlyForward):
        def discretize(self):
            return None

        def compute_kernel(self, length):
            return None

        def step(self, x, inference_cache):
            return x, inference_cache

        def allocate_inference_cache(self, batch_size, max_seqlen=1, dtype=None):
            return {}

    assert Complete("bilinear").discretize_fn is DISCRETIZATIONS["bilinear"]
    with pytest.raises(ValueError, match="LTI model cannot use discretization 'async'.*LTV"):
        Complete("async")


def test_lrnn_api_signatures():
    forward = inspect.signature(LRNN.forward).parameters
    assert list(forward) == ["self", "x", "integration_timesteps", "lengths"]
    assert forward["integration_timesteps"].default is None and forward["lengths"].default is None
    assert list(inspect.signature(LTI_LRNN.step).parameters) == ["self", "x", "inference_cache"]
    cache = inspect.signature(LTI_LRNN.allocate_inference_cache).parameters
    assert list(cache) == ["self", "batch_size", "max_seqlen", "dtype"]
    assert cache["max_seqlen"].default == 1 and cache["dtype"].default is None
    assert {"discretize", "compute_kernel", "step", "allocate_inference_cache", "forward"} <= \
        LTI_LRNN.__abstractmethods__
    # the concrete cell answers both step APIs positionally: step(x, state_or_cache)
    step = list(inspect.signature(S4D.step).parameters)
    assert step[:3] == ["self", "x_t", "state"]


@pytest.mark.parametrize("discretization", ["zoh", "bilinear", "dirac"])
def test_discretizes_by_its_named_function_and_ignores_timesteps(discretization):
    """S4D is an LTI_LRNN: (A_bar, B_bar) = DISCRETIZATIONS[name](A, δ) of its parameters, one
    pair for every step, so the elapsed times change nothing (an LTV cell's output would)."""
    cell = build(discretization=discretization, dt_min=0.01, dt_max=0.5)
    assert cell.discretize_fn is DISCRETIZATIONS[discretization]
    A = torch.complex(-torch.exp(cell.log_A_real), cell.A_imag)
    A_bar, B_bar = DISCRETIZATIONS[discretization](A, torch.exp(cell.log_dt)[:, None])
    got_A_bar, got_B_bar, C = cell.discretize()
    torch.testing.assert_close(got_A_bar, A_bar)
    torch.testing.assert_close(got_B_bar, torch.broadcast_to(B_bar, A_bar.shape))
    torch.testing.assert_close(C, torch.view_as_complex(cell.C))
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    state = {"s": torch.randn(2, 5, 3, 2, dtype=torch.float64)}
    elapsed = torch.rand(2, 9, dtype=torch.float64) * 5
    y, final = cell.scan(x, state)
    y_elapsed, final_elapsed = cell.scan(x, state, integration_timesteps=elapsed)
    torch.testing.assert_close(y_elapsed, y)
    torch.testing.assert_close(final_elapsed["s"], final["s"])
    y_step, _ = cell.step(x[:, 0], state, integration_timestep=elapsed[:, 0])
    torch.testing.assert_close(y_step, y[:, 0])


def test_rollout_step_reuses_matrices_until_parameters_change():
    cell = build()
    x = torch.randn(2, 3, dtype=torch.float64)
    with torch.no_grad():
        y1, _ = cell.step(x, cell.initial_state(2))
        cell.log_dt.add_(0.5)                        # an optimizer step: in place
        y2, _ = cell.step(x, cell.initial_state(2))
    with torch.no_grad():
        fresh, _ = cell._recurrence(x, cell.initial_state(2), x.new_ones(2),
                                    cell.compute_step_matrices())
    torch.testing.assert_close(y2, fresh)
    assert (y1 - y2).abs().max() > 1e-6
    y3, _ = cell.float().step(x.float(), cell.initial_state(2, dtype=torch.float32))
    assert y3.dtype == torch.float32


def test_cache_step_validates_its_arguments():
    assert_cache_step_validates_like_state_step(memory_models.S4D(3, 5, state_size=4))


def test_rollout_steps_without_autograd_equal_steps_with_it():
    """Without autograd the step writes its read-out products into a buffer kept between
    steps: the same outputs and states as with autograd, every returned state its own tensor
    (earlier states unchanged by later steps), and a new batch size or dtype gets a new
    buffer."""
    cell = build()
    xs = torch.randn(5, 4, 3, dtype=torch.float64)
    state = {"s": torch.randn(4, 5, 3, 2, dtype=torch.float64)}
    with_grad, states = [], [state]
    for x in xs:
        y, new = cell.step(x, states[-1])
        with_grad.append(y.detach())
        states.append({"s": new["s"].detach()})
    with torch.no_grad():
        rollout = [state]
        for t, x in enumerate(xs):
            y, new = cell.step(x, rollout[-1])
            torch.testing.assert_close(y, with_grad[t], rtol=0, atol=0)
            rollout.append(new)
        for got, want in zip(rollout, states):
            torch.testing.assert_close(got["s"], want["s"], rtol=0, atol=0)
        y2, _ = cell.step(xs[0, :2], {"s": state["s"][:2]})         # batch 2: a new buffer
        torch.testing.assert_close(y2, with_grad[0][:2], rtol=0, atol=0)
        y32, _ = cell.float().step(xs[0].float(), {"s": state["s"].float()})
        assert y32.dtype == torch.float32
