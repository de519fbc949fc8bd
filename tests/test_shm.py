"""SHM: the equations written out (the authors' POPGym agent and the bare memory, θ cycling
through the table; the paper's random draw), parallel == sequential, float32 at T = 1024, the
counter, defaults, bad arguments (that it ignores elapsed time: tests/test_interface.py)."""

from functools import partial

import pytest
import torch

import memory_models
from memory_models import SHM
from scan_cell_checks import (assert_long_float32_run_matches_float64,
                              assert_parallel_equals_sequential, random_state)
from small_sizes import seeded_cell

SMALL = dict(input_size=3, hidden_size=5, memory_size=4, num_thetas=3)

pytestmark = pytest.mark.usefixtures("one_thread")

build = partial(seeded_cell, SHM, **SMALL)         # build(dtype=float64, seed=0, **overrides)


def integer_state(cell, batch):
    """A random memory and integer counters (as the cell itself produces them)."""
    state = random_state(cell, batch, torch.float64)
    state["t"] = torch.randint(0, 20, (batch, 1)).double()
    return state


def sine_embedding(cell, x, p):
    """POPGym's sine embedding: (1 − s) x + s [sin(p ω_0), cos(p ω_0), ...], ω_i =
    max_len^(−2i/I), with the cell's strength s (x (B, I), p (B,))."""
    if cell.embedding is None:
        return x
    size = cell.input_size
    omega = cell.max_len ** (-torch.arange(0, size, 2, dtype=torch.float64) / size)
    angles = p[:, None].double() * omega
    pe = torch.stack([angles.sin(), angles.cos()], -1).flatten(-2)[:, :size]
    s = cell.embedding.strength.clamp(0, 1)
    return (1 - s) * x + s * pe


def written_out(cell, x, resets, state, rows=None):
    """The equations as a loop from state = (M, p), θ_t = Θ[p_t mod L] (or Θ[rows[:, t]] for
    given rows (B, T): the draws of theta_draw="random")."""
    d = cell.memory_size
    W = cell.projections.weight
    W_v, W_c, W_k, W_q, w_eta = W[:d], W[d:2 * d], W[2 * d:3 * d], W[3 * d:4 * d], W[4 * d]
    M, p = state["memory"], state["t"][:, 0].long()
    outputs = []
    for t in range(x.shape[1]):
        M = torch.where(resets[:, t, None, None], torch.zeros_like(M), M)
        p = torch.where(resets[:, t], torch.zeros_like(p), p)
        x_hat = torch.nn.functional.layer_norm(sine_embedding(cell, x[:, t], p),
                                               (cell.input_size,), cell.norm.weight,
                                               cell.norm.bias)
        v, v_c = x_hat @ W_v.T, x_hat @ W_c.T
        k, q = torch.relu(x_hat @ W_k.T), torch.relu(x_hat @ W_q.T)
        k = k / (1e-5 + k.sum(-1, keepdim=True))
        q = q / (1e-5 + q.sum(-1, keepdim=True))
        eta = torch.sigmoid(x_hat @ w_eta)
        theta = cell.thetas[p % cell.num_thetas if rows is None else rows[:, t]]
        C = 1 + torch.tanh(torch.einsum("bi,bj->bij", theta, v_c))
        U = torch.einsum("bi,bj->bij", eta[:, None] * v, k)
        M = C * M + U
        h = torch.einsum("bij,bj->bi", M, q)
        if cell.shortcut is not None:
            h = h + x_hat @ cell.shortcut.weight.T + cell.shortcut.bias
        outputs.append(cell.out(h))
        p = p + 1
    return torch.stack(outputs, 1), {"memory": M, "t": p[:, None].double()}


@pytest.mark.parametrize("kw", [{}, dict(position_embedding=False, shortcut=False)],
                         ids=["popgym_agent", "bare"])
def test_scan_equals_the_equations_written_out(kw):
    """11 steps through a table of 3 vectors (the cycle wraps), a reset inside; the authors'
    POPGym agent (embedding, shortcut) and the bare memory."""
    cell = build(**kw)
    with torch.no_grad():
        if cell.embedding is not None:
            cell.embedding.strength.fill_(0.3)
    x = torch.randn(2, 11, 3, dtype=torch.float64) * 2
    resets = torch.zeros(2, 11, dtype=torch.bool)
    resets[0, 5] = True
    state = integer_state(cell, 2)
    y, final = cell.scan(x, state, resets=resets)
    y_ref, final_ref = written_out(cell, x, resets, state)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for k in final:
        torch.testing.assert_close(final[k], final_ref[k], rtol=1e-10, atol=1e-10)
    for t in range(11):                           # step by step alike
        y_t, state = cell.step(x[:, t], state, reset=resets[:, t])
        torch.testing.assert_close(y_t, y_ref[:, t], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_parallel_scan_equals_sequential_loop(dtype):
    assert_parallel_equals_sequential(SHM, dtype, **SMALL)


def test_parallel_equals_sequential_with_resets_at_the_edges():
    """Resets at t = 0 and t = T - 1, T = 1 and T = 2, from a carried state."""
    cells = [build(scan_impl=impl) for impl in ("parallel", "sequential")]
    for steps in (1, 2, 9):
        x = torch.randn(2, steps, 3, dtype=torch.float64)
        resets = torch.zeros(2, steps, dtype=torch.bool)
        resets[0, 0] = resets[1, -1] = True
        state = integer_state(cells[0], 2)
        (y1, s1), (y2, s2) = [cell.scan(x, state, resets=resets) for cell in cells]
        torch.testing.assert_close(y1, y2, rtol=1e-12, atol=1e-12)
        for k in s1:
            torch.testing.assert_close(s1[k], s2[k], rtol=1e-12, atol=1e-12)


def test_random_draw_is_the_papers():
    """theta_draw="random": θ_t = Θ[j_t], j_t uniform on the L rows for every row and step
    (torch's generator: the same seed, the same draws), whatever the position; the loop of the
    equations with those draws equals scan; two calls differ; every row is drawn."""
    cell = build(theta_draw="random", num_thetas=5)
    x = torch.randn(2, 11, 3, dtype=torch.float64)
    resets = torch.zeros(2, 11, dtype=torch.bool)
    resets[1, 4] = True
    state = integer_state(cell, 2)
    torch.manual_seed(7)
    rows = torch.randint(5, (2, 11))
    torch.manual_seed(7)
    y, final = cell.scan(x, state, resets=resets)
    y_ref, final_ref = written_out(cell, x, resets, state, rows=rows)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for k in final:
        torch.testing.assert_close(final[k], final_ref[k], rtol=1e-10, atol=1e-10)
    assert not torch.equal(cell.scan(x, state)[0], cell.scan(x, state)[0])
    drawn = cell.calibration_vectors(torch.zeros(5000, dtype=torch.float64))
    counts = (drawn[:, None] == cell.thetas[None]).all(-1).sum(0)
    assert counts.sum() == 5000 and counts.min() > 800


def test_float32_at_1024_steps_is_finite_and_matches_float64():
    """At the default table (L = 128) and d = 16, random inputs, 1024 steps."""
    assert_long_float32_run_matches_float64(build(hidden_size=16, memory_size=16,
                                                  num_thetas=128), steps=1024)


def test_a_constant_input_over_1024_steps_stays_finite_in_float32():
    """The worst case for a calibration that depends on the input alone: the same
    observation 1024 times (a constant v^c). With one fixed θ (L = 1) some entries grow by
    the same factor 1 + tanh(θ_i v^c_j) > 1 at every step and float32 overflows; cycling
    through the default L = 128 vectors averages the factors (module docstring): the memory
    stays finite, and its log-growth is the table average, far below the fixed θ's."""
    def final_memory(num_thetas):
        cell = build(torch.float32, input_size=8, hidden_size=32, memory_size=16,
                     num_thetas=num_thetas)
        _, final = cell.scan(x, cell.initial_state(4))
        return final["memory"]

    torch.manual_seed(1)
    x = torch.randn(4, 1, 8).expand(4, 1024, 8)
    cycled, fixed = final_memory(128), final_memory(1)
    assert torch.isfinite(cycled).all() and cycled.abs().max() < 1e12
    assert not torch.isfinite(fixed).all() or fixed.abs().max() > 1e6 * cycled.abs().max()


def test_theta_cycles_through_the_table_by_the_position_in_the_episode():
    """θ_t = Θ[p_t mod L], p_t = steps since the episode's start; the counter returned is the
    position after the last step (lengths: after lengths[b] steps)."""
    cell = build(num_thetas=4)
    positions = torch.tensor([[0.0, 1, 2, 3, 4, 9]], dtype=torch.float64)
    torch.testing.assert_close(cell.calibration_vectors(positions),
                               cell.thetas[[0, 1, 2, 3, 0, 1]][None], rtol=0, atol=0)
    x = torch.randn(3, 6, 3, dtype=torch.float64)
    state = {"memory": torch.zeros(3, 4, 4, dtype=torch.float64),
             "t": torch.tensor([[1.0], [3.0], [2.0]], dtype=torch.float64)}
    resets = torch.zeros(3, 6, dtype=torch.bool)
    resets[1, 2] = True
    _, final = cell.scan(x, state, resets=resets, lengths=torch.tensor([6, 5, 0]))
    assert final["t"][:, 0].tolist() == [1 + 6, 3, 2]


def test_defaults_follow_hidden_size():
    assert dict(memory_size=None, num_thetas=128, theta_draw="cycle", position_embedding=True,
                max_len=1024, shortcut=True).items() <= \
        memory_models.keywords("shm").items()
    for hidden, d in ((4, 2), (6, 2), (64, 8), (128, 11), (256, 16), (1024, 16)):
        cell = memory_models.make("shm", input_size=8, hidden_size=hidden)
        assert cell.memory_size == d
        state = cell.initial_state(2)
        assert state["memory"].shape == (2, d, d) and state["t"].shape == (2, 1)
        y, _ = cell.scan(torch.randn(2, 5, 8), state)
        assert y.shape == (2, 5, hidden)


def test_bad_arguments_name_the_keyword_and_the_allowed_values():
    for kw, match in [(dict(memory_size=0), "memory_size must be a positive int"),
                      (dict(memory_size=2.5), "memory_size must be a positive int"),
                      (dict(num_thetas=0), "num_thetas must be a positive int"),
                      (dict(theta_draw="uniform"), r"theta_draw must be one of \('cycle', "),
                      (dict(shortcut=1), "shortcut must be True or False"),
                      (dict(position_embedding="sine"), "position_embedding must be a bool"),
                      (dict(max_len=0), "max_len must be a positive int")]:
        with pytest.raises(ValueError, match=match):
            build(**kw)
