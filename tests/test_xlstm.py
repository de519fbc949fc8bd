"""mlstm and slstm (xLSTM): the fast paths equal their sequential references (values and
gradients, resets inside and at the edges of chunks, lengths, carried state with its
stabiliser m), the paper's unstabilised equations written out, the xlstm package's native
PyTorch backends (2.0.6: `xlstm.blocks.mlstm.backends`, `xlstm.blocks.slstm.src.vanilla`, which
run on the CPU) given our projections, defaults and bad arguments (that they ignore elapsed
time, and the checks every cell shares: tests/test_interface.py).

Tolerances: float64 1e-10 (1e-12 against the xlstm package, whose denominators we call with
eps=0; its default eps=1e-6 is the one difference from the paper's form); float32 2e-4 for
values, 1e-3 for gradients (the inputs are scaled by 2 to reach large gates; rounding differs
between the fast and the reference paths and is summed over B·T for a weight's gradient).
"""

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

import memory_models
from memory_models import xlstm
from memory_models.checks import default_heads
from memory_models.xlstm import HEAD_CANDIDATES, MLSTM, SLSTM
from small_sizes import seeded_cell

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = {torch.float32: dict(atol=2e-4, rtol=2e-4), torch.float64: dict(atol=1e-10, rtol=1e-10)}
GRAD_TOL = {**TOL, torch.float32: dict(atol=1e-3, rtol=1e-3)}
STEPS = 13

build = partial(seeded_cell, input_size=3, hidden_size=8, heads=2)   # build(cls, dtype, seed)


def random_state(cell, batch, dtype, m_scale=1.0):
    """A non-zero state; n > 0 for sLSTM (its reachable states have n > 0)."""
    state = {k: torch.randn(v.shape, dtype=dtype) * 0.5
             for k, v in cell.initial_state(batch, dtype=dtype).items()}
    if isinstance(cell, SLSTM):
        state["n"] = state["n"].abs() + 0.5
    state["m"] = state["m"] * m_scale
    return state


def data(cell, dtype, steps=STEPS):
    """x (4, T, I), resets at chunk edges (t = 0, 4, 8 for chunks of 4) and inside, lengths
    [T, 9, 4, 0]."""
    generator = torch.Generator().manual_seed(1)
    x = (torch.randn(4, steps, cell.input_size, generator=generator) * 2).to(dtype)
    resets = torch.zeros(4, steps, dtype=torch.bool)
    resets[0, [4, 6]] = True          # at a chunk edge, inside a chunk
    resets[1, [0, 8, 9]] = True       # at the first step, at an edge, right after it
    resets[2, [3, 11]] = True         # the last step of a chunk; past the length
    lengths = torch.tensor([steps, 9, 4, 0])
    return x, resets, lengths


def outputs_and_gradients(cell, x, state, resets, lengths):
    """y (zero past the lengths: those outputs are only required to be finite), final state
    and the gradients of a loss on both (input, state, every parameter)."""
    x = x.clone().requires_grad_()
    state = {k: v.clone().requires_grad_() for k, v in state.items()}
    y, final = cell.scan(x, state, resets=resets, lengths=lengths)
    assert torch.isfinite(y).all()
    if lengths is not None:
        y = y * (torch.arange(y.shape[1]) < lengths[:, None])[..., None]
    weights = 1 + torch.arange(y.shape[-1], dtype=y.dtype) / y.shape[-1]
    loss = (y * weights).sin().sum() + sum((v * (1 + v.abs().mean())).sum()
                                           for v in final.values())
    grads = torch.autograd.grad(loss, [x, *state.values(), *cell.parameters()])
    return y, final, grads


def assert_same(first, second, dtype):
    (y1, s1, g1), (y2, s2, g2) = first, second
    torch.testing.assert_close(y1, y2, **TOL[dtype])
    for k in s1:
        torch.testing.assert_close(s1[k], s2[k], **TOL[dtype], msg=lambda m: f"state {k}: {m}")
    for i, (a, b) in enumerate(zip(g1, g2)):
        torch.testing.assert_close(a, b, **GRAD_TOL[dtype], msg=lambda m: f"gradient {i}: {m}")


# ---------------------------------------------------------------------- mLSTM
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
@pytest.mark.parametrize("chunk_size", [4, 5, 64])
@pytest.mark.parametrize("m_scale", [1.0, 20.0], ids=["m~0.5", "m~10"])
def test_mlstm_chunkwise_equals_sequential(dtype, forget_gate, chunk_size, m_scale):
    """Chunks of 4 (resets at their edges), 5 and one chunk: values and gradients equal the
    step-by-step recurrence, from a carried state whose m is small or large."""
    results = []
    for scan_impl in ("parallel", "sequential"):
        cell = build(MLSTM, dtype, forget_gate=forget_gate, scan_impl=scan_impl,
                     chunk_size=chunk_size)
        x, resets, lengths = data(cell, dtype)
        torch.manual_seed(2)
        state = random_state(cell, 4, dtype, m_scale)
        results.append(outputs_and_gradients(cell, x, state, resets, lengths))
    assert_same(*results, dtype)


def test_mlstm_row_blocks_equal_the_sequential_reference(monkeypatch):
    """Without gradients the chunkwise form runs over blocks of rows (one row each here): the
    outputs (within the lengths) and final state equal the sequential reference's."""
    monkeypatch.setattr(xlstm, "BLOCK_BYTES", 1)
    monkeypatch.setattr(xlstm, "MIN_BLOCK_ROWS", 1)
    results = []
    for scan_impl in ("parallel", "sequential"):
        cell = build(MLSTM, scan_impl=scan_impl, chunk_size=4)
        assert len(cell._row_blocks(4, STEPS)) == 4
        x, resets, lengths = data(cell, torch.float64)
        torch.manual_seed(2)
        state = random_state(cell, 4, torch.float64)
        with torch.no_grad():
            y, final = cell.scan(x, state, resets=resets, lengths=lengths)
        results.append((y * (torch.arange(STEPS) < lengths[:, None])[..., None], final, ()))
    assert_same(*results, torch.float64)


def test_mlstm_step_loop_equals_sequential_scan():
    cell = build(MLSTM, scan_impl="sequential")
    x, resets, _ = data(cell, torch.float64)
    state = random_state(cell, 4, torch.float64)
    y, final = cell.scan(x, state, resets=resets)
    for t in range(STEPS):
        y_t, state = cell.step(x[:, t], state, reset=resets[:, t])
        torch.testing.assert_close(y_t, y[:, t], **TOL[torch.float64])
    for k in final:
        torch.testing.assert_close(state[k], final[k], **TOL[torch.float64])


def mlstm_written_out(cell, x, resets, state):
    """The paper's unstabilised mLSTM as a loop: C = f C + i k vᵀ, n = f n + i k,
    h = o ⊙ Cᵀq / max(|nᵀq|, 1), from the true memory (C, n) e^m of the stabilised state."""
    H, NH, D = cell.hidden_size, cell.heads, cell.head_size
    W, b = cell.projection.weight, cell.projection.bias
    C = state["C"] * state["m"].exp()[..., None, None]
    n = state["n"] * state["m"].exp()[..., None]
    outputs = []
    for t in range(x.shape[1]):
        p = x[:, t] @ W.T + b
        q, k, v = (p[:, j * H:(j + 1) * H].view(-1, NH, D) for j in range(3))
        k = k / math.sqrt(D)
        i = torch.exp(p[:, 3 * H:3 * H + NH])
        f = torch.sigmoid(p[:, 3 * H + NH:3 * H + 2 * NH])
        o = torch.sigmoid(p[:, 3 * H + 2 * NH:])
        keep = (~resets[:, t]).double()
        C, n = C * keep[:, None, None, None], n * keep[:, None, None]
        C = f[..., None, None] * C + i[..., None, None] * k[..., :, None] * v[..., None, :]
        n = f[..., None] * n + i[..., None] * k
        numerator = torch.einsum("bhk,bhkv->bhv", q, C)
        denominator = torch.clamp((q * n).sum(-1).abs(), min=1.0)
        outputs.append(o * (numerator / denominator[..., None]).flatten(-2))
    return torch.stack(outputs, 1), C, n


@pytest.mark.parametrize("scan_impl", ["parallel", "sequential"])
def test_mlstm_equals_the_papers_unstabilised_equations(scan_impl):
    """The stabiliser changes nothing: outputs and the true memory e^m (C, n) equal the
    paper's recurrence without it (gates kept small enough for it not to overflow)."""
    cell = build(MLSTM, scan_impl=scan_impl, chunk_size=4)
    x, resets, _ = data(cell, torch.float64)
    state = random_state(cell, 4, torch.float64)
    y, final = cell.scan(x, state, resets=resets)
    y_ref, C_ref, n_ref = mlstm_written_out(cell, x, resets, state)
    torch.testing.assert_close(y, y_ref, **TOL[torch.float64])
    torch.testing.assert_close(final["C"] * final["m"].exp()[..., None, None], C_ref,
                               **TOL[torch.float64])
    torch.testing.assert_close(final["n"] * final["m"].exp()[..., None], n_ref,
                               **TOL[torch.float64])


def mlstm_raw_inputs(cell, x):
    """q, k (unscaled), v (B, NH, T, D), ĩ, f̃ (B, NH, T, 1), o (B, T, H): the xlstm
    package's arguments from our projection."""
    H, NH, D = cell.hidden_size, cell.heads, cell.head_size
    p = cell.projection(x)
    q, k, v = (p[..., j * H:(j + 1) * H].unflatten(-1, (NH, D)).transpose(1, 2)
               for j in range(3))
    igate = p[..., 3 * H:3 * H + NH].transpose(1, 2)[..., None]
    fgate = p[..., 3 * H + NH:3 * H + 2 * NH].transpose(1, 2)[..., None]
    return q, k, v, igate, fgate, torch.sigmoid(p[..., 3 * H + 2 * NH:])


def test_mlstm_equals_the_xlstm_package():
    """xlstm 2.0.6's recurrent step from a carried state and its parallel form from the
    initial state (eps=0), given our q, k, v, gates; its k is scaled by 1/√D inside, as ours."""
    backends = pytest.importorskip("xlstm.blocks.mlstm.backends")
    cell = build(MLSTM, chunk_size=4, input_size=5, hidden_size=12, heads=3)
    x = torch.randn(2, STEPS, 5, dtype=torch.float64)
    state = random_state(cell, 2, torch.float64)
    q, k, v, igate, fgate, o = mlstm_raw_inputs(cell, x)
    with torch.no_grad():
        y, final = cell.scan(x, state)
        C, n, m = state["C"], state["n"][..., None], state["m"][..., None, None]
        outputs = []
        for t in range(STEPS):
            h, (C, n, m) = backends.recurrent_step_stabilized_simple(
                C, n, m, q[:, :, t:t + 1].clone(), k[:, :, t:t + 1].clone(),
                v[:, :, t:t + 1].clone(), igate[:, :, t:t + 1], fgate[:, :, t:t + 1], eps=0.0)
            outputs.append(h[:, :, 0])
        theirs = o * torch.stack(outputs, 2).transpose(1, 2).flatten(-2)
        torch.testing.assert_close(y, theirs, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(final["C"], C, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(final["n"], n[..., 0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(final["m"], m[..., 0, 0], rtol=1e-12, atol=1e-12)

        y0, _ = cell.scan(x, cell.initial_state(2, dtype=torch.float64))
        h = backends.parallel_stabilized_simple(q, k, v, igate, fgate, eps=0.0)
        torch.testing.assert_close(y0, o * h.transpose(1, 2).flatten(-2), rtol=1e-12,
                                   atol=1e-12)


@pytest.mark.parametrize("forget_gate, bound", [("sigmoid", 1e-4), ("exp", 3e-3)])
def test_mlstm_chunkwise_is_stable_in_float32_at_4096_steps(forget_gate, bound):
    """Over 4096 steps the float32 chunks stay finite and within `bound` (relative to the
    largest |y|) of float64's. The exp forget gate lets the memory grow (f > 1), and its
    outputs (up to ~1e4 here) are less well conditioned: float32 is looser there."""
    cell = build(MLSTM, hidden_size=16, heads=4, forget_gate=forget_gate)
    x = torch.randn(2, 4096, 3, dtype=torch.float64)
    state = random_state(cell, 2, torch.float64)
    y64, final64 = cell.scan(x, state)
    y32, final32 = cell.float().scan(x.float(), {k: v.float() for k, v in state.items()})
    assert torch.isfinite(y32).all()
    assert (y32.double() - y64).abs().max() < bound * y64.abs().max()
    torch.testing.assert_close(final32["m"].double(), final64["m"], rtol=bound, atol=bound)


# ---------------------------------------------------------------------- sLSTM
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
@pytest.mark.parametrize("m_scale", [1.0, 20.0], ids=["m~0.5", "m~10"])
def test_slstm_fused_equals_autograd_loop(dtype, forget_gate, m_scale):
    """ops.slstm_scan (hand-written BPTT) == slstm_step through autograd: values and
    gradients, with resets, lengths and a carried state."""
    results = []
    for scan_impl in ("fused", "sequential"):
        cell = build(SLSTM, dtype, forget_gate=forget_gate, scan_impl=scan_impl)
        x, resets, lengths = data(cell, dtype)
        torch.manual_seed(2)
        state = random_state(cell, 4, dtype, m_scale)
        results.append(outputs_and_gradients(cell, x, state, resets, lengths))
    assert_same(*results, dtype)


def test_slstm_tied_stabiliser_splits_the_gradient_as_torch_maximum():
    """From the zero state with ĩ = log f exactly (a tie in m's max), the fused backward
    gives torch.maximum's half-and-half gradient, as the autograd loop."""
    results = []
    for scan_impl in ("fused", "sequential"):
        cell = build(SLSTM, scan_impl=scan_impl, input_size=1)
        with torch.no_grad():
            cell.input_projection.weight.zero_()
            bias = cell.input_projection.bias.view(2, 4, 4)
            bias[:, 0] = F.logsigmoid(bias[:, 1])
            cell.recurrent.zero_()
        x = torch.zeros(2, 3, 1, dtype=torch.float64)
        results.append(outputs_and_gradients(cell, x, cell.initial_state(2, dtype=torch.float64),
                                             None, None))
    assert_same(*results, torch.float64)


def test_slstm_equals_the_xlstm_package():
    """xlstm 2.0.6's vanilla sLSTM (slstm_forward with its "slstm" pointwise function) given
    our W x (its gates ordered i, f, z, o, gate-major), R and b: outputs, state and gradients
    (input, R, bias) from a carried state with n > 0 (from n = 0 its m takes another branch:
    the same outputs, another stabiliser)."""
    vanilla = pytest.importorskip("xlstm.blocks.slstm.src.vanilla")
    cell = build(SLSTM, input_size=5, hidden_size=12, heads=3, forget_gate="sigmoid")
    NH, D = cell.heads, cell.head_size
    x = torch.randn(2, STEPS, 5, dtype=torch.float64)
    state = random_state(cell, 2, torch.float64)
    y, final, grads = outputs_and_gradients(cell, x, state, None, None)

    x = x.clone().requires_grad_()
    W, b, R = cell.input_projection.weight, cell.input_projection.bias, cell.recurrent
    to_gate_major = lambda t: t.unflatten(-1, (NH, 4, D)).transpose(-3, -2).flatten(-3)  # noqa
    Wx = to_gate_major(x @ W.T).transpose(0, 1)                          # (T, B, 4H)
    R_theirs = R.transpose(1, 2)                                         # (NH, 4D, D)
    states = torch.stack([state[k] for k in "hcnm"])                     # (4, B, H)
    all_states, last, _ = vanilla.slstm_forward(
        Wx, states, R_theirs, to_gate_major(b), vanilla.slstm_pointwise_function_registry["slstm"])
    y_theirs = all_states[0, 1:].transpose(0, 1)
    torch.testing.assert_close(y, y_theirs, rtol=1e-12, atol=1e-12)
    for k, s in zip("hcnm", last):
        torch.testing.assert_close(final[k], s, rtol=1e-12, atol=1e-12)
    weights = 1 + torch.arange(y.shape[-1], dtype=y.dtype) / y.shape[-1]
    loss = (y_theirs * weights).sin().sum() + sum((v * (1 + v.abs().mean())).sum() for v in last)
    theirs = torch.autograd.grad(loss, [x, R, b])
    ours = (grads[0], grads[5], grads[7])              # x, (h, c, n, m), R, W, b
    for a, b_ in zip(ours, theirs):
        torch.testing.assert_close(a, b_, rtol=1e-10, atol=1e-10)

    with torch.no_grad():                              # from the initial state: same outputs
        y0, _ = cell.scan(x, cell.initial_state(2, dtype=torch.float64))
        zero = torch.zeros(4, 2, cell.hidden_size, dtype=torch.float64)
        theirs0, _, _ = vanilla.slstm_forward(Wx, zero, R_theirs, to_gate_major(b),
                                              vanilla.slstm_pointwise_function_registry["slstm"])
        torch.testing.assert_close(y0, theirs0[0, 1:].transpose(0, 1), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------- both
@pytest.mark.parametrize("name", ["mlstm", "slstm"])
def test_defaults_follow_hidden_size(name):
    for hidden, heads in [(4, 4), (6, 2), (12, 4), (20, 4), (64, 4), (256, 4), (7, 1)]:
        assert default_heads(hidden, HEAD_CANDIDATES) == heads
    for hidden in (4, 8, 12, 20, 36):
        cell = memory_models.make(name, input_size=3, hidden_size=hidden)
        y, _ = cell.scan(torch.randn(2, 5, 3), cell.initial_state(2))
        assert y.shape == (2, 5, hidden) and torch.isfinite(y).all()
        assert cell.heads * cell.head_size == hidden


@pytest.mark.parametrize("name", ["mlstm", "slstm"])
def test_bad_arguments_name_the_keyword_and_the_allowed_values(name):
    with pytest.raises(ValueError, match=r"forget_gate must be one of \('sigmoid', 'exp'\)"):
        memory_models.make(name, input_size=3, hidden_size=12, forget_gate="tanh")
