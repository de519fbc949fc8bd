"""transformer (memory_models/attention.py): the blocked sliding-window attention equals a
per-step loop written out here (values and gradients, float64) for every `position`, with
resets inside a chunk, at the window's edges and at block boundaries, lengths, a carried
window; window < T and window > T; bad keywords. The interface laws (tests/test_laws.py)
cover the default by registration, and every other `position` here."""

import math

import pytest
import torch

import memory_models
from memory_models import laws
from memory_models.attention import POSITIONS, Transformer, alibi_slopes
from small_sizes import small_memory_kwargs

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = dict(atol=1e-10, rtol=1e-10)


def rotated_by(z, angle_steps: int):
    """R_δ z for one head's z (d,): pairs (z_i, z_{i+d'/2}) as complex numbers times
    exp(i δ θ_i), θ_i = 10000^(−2i/d'), d' = 2⌊d/2⌋; an odd d's last feature kept."""
    half = z.shape[0] // 2
    theta = 10000.0 ** (-torch.arange(half, dtype=torch.float64) * 2 / max(2 * half, 1))
    turned = torch.complex(z[:half], z[half:2 * half]) * torch.exp(1j * angle_steps * theta)
    return torch.cat([turned.real, turned.imag, z[2 * half:]])


def position_score(cell: Transformer, q_h, k_h, h: int, age: int):
    """q·k/√d plus the position term at offset `age` = t − j, written per position."""
    scale = math.sqrt(cell.head_size)
    if cell.position == "rotary":                 # (R_t q)·(R_j k) = (R_{t−j} q)·k
        return rotated_by(q_h, age) @ k_h / scale
    term = {"alibi": lambda: -alibi_slopes(cell.heads)[h] * age,
            "learned": lambda: cell.offset_bias[h, age],
            "none": lambda: 0.0}[cell.position]()
    return q_h @ k_h / scale + term


def per_step_reference(cell: Transformer, x, state, resets, lengths):
    """The module docstring's equations, one row and one step at a time: a Python list holds
    the window's (k, v, ω) entries, the oldest first; a reset empties it. Positions enter
    through the offset (age) of each entry only.
    -> (y (B, T, H), state after lengths[b] steps)."""
    batch, steps = x.shape[:2]
    n, d, window, hidden = cell.heads, cell.head_size, cell.window, cell.hidden_size
    outputs, finals = [], {"keys": [], "values": [], "valid": []}
    for b in range(batch):
        entries = [(state["keys"][b, j], state["values"][b, j], state["valid"][b, j])
                   for j in range(window - 1)]
        row, final = [], list(entries)
        for t in range(steps):
            if resets[b, t]:
                entries = []
            u = cell.input(x[b, t])
            q, k, v = cell.qkv(cell.attention_norm(u)).chunk(3)
            entries = (entries + [(k, v, torch.ones((), dtype=x.dtype))])[-window:]
            heads_out = []
            for h in range(n):
                part = slice(h * d, (h + 1) * d)
                scores, vals = [], []
                for age, (k_j, v_j, w_j) in enumerate(reversed(entries)):
                    if w_j <= 0:
                        continue
                    scores.append(position_score(cell, q[part], k_j[part], h, age)
                                  + torch.log(w_j))
                    vals.append(v_j[part])
                weights = torch.softmax(torch.stack(scores), 0)
                heads_out.append((weights[:, None] * torch.stack(vals)).sum(0))
            a = u + cell.attention_out(torch.cat(heads_out))
            row.append(a + cell.mlp(cell.mlp_norm(a)))
            if t + 1 == lengths[b]:
                final = list(entries)
        outputs.append(torch.stack(row))
        final = final[-(window - 1):] if window > 1 else []
        empty = (torch.zeros(hidden, dtype=x.dtype),) * 2 + (torch.zeros((), dtype=x.dtype),)
        final = [empty] * (window - 1 - len(final)) + final
        for key, column in zip(("keys", "values", "valid"), zip(*final) if final else ()):
            finals[key].append(torch.stack(column))
    stacked = {k: torch.stack(v) if v else state[k].new_zeros(state[k].shape)
               for k, v in finals.items()}
    return torch.stack(outputs), stacked


def carried_state(cell, batch, dtype, generator):
    """A window from an earlier chunk: random keys and values, ω 1 on the last slots of each
    row and 0 (zeroed slot) before, as the cell leaves them."""
    state = cell.initial_state(batch, dtype=dtype)
    cache = cell.window - 1
    for b, filled in enumerate([cache, cache // 2, 0][:batch]):
        if filled:
            state["keys"][b, -filled:] = torch.randn(filled, cell.hidden_size,
                                                     generator=generator, dtype=dtype)
            state["values"][b, -filled:] = torch.randn(filled, cell.hidden_size,
                                                       generator=generator, dtype=dtype)
            state["valid"][b, -filled:] = 1.0
    return state


def run_both(cell, x, state, resets, lengths):
    """(outputs, final state, gradients) of the cell's scan and of the reference."""
    results = []
    for run in (lambda *a: cell.scan(a[0], a[1], resets=a[2], lengths=a[3]),
                per_step_reference):
        x_leaf = x.clone().requires_grad_()
        leaves = {k: v.clone().requires_grad_() for k, v in state.items()}
        if run is per_step_reference:
            y, final = run(cell, x_leaf, leaves, resets, lengths)
        else:
            y, final = run(x_leaf, leaves, resets, lengths)
        valid_y = torch.cat([y[b, :max(int(n), 0)] for b, n in enumerate(lengths)])
        loss = valid_y.square().sum() + sum((v * (1 + i)).sum()
                                            for i, v in enumerate(final.values()))
        grads = torch.autograd.grad(loss, [x_leaf, *leaves.values(), *cell.parameters()],
                                    allow_unused=True)
        results.append((valid_y, final, grads))
    return results


def built(position: str, **kwargs) -> Transformer:
    """A float64 cell with hidden 10 and 2 heads (d = 5: rotary turns 4 features, keeps 1);
    a learned position bias drawn at random (it starts at ALiBi's)."""
    torch.manual_seed(0)
    cell = Transformer(3, 10, heads=2, mlp_size=10, position=position, **kwargs).double()
    if position == "learned":
        with torch.no_grad():
            cell.offset_bias.normal_()
    return cell


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("window, steps, reset_steps", [
    (4, 19, [(0, 0), (0, 3), (0, 4), (1, 8), (1, 9), (2, 12)]),    # W < T: edges, blocks
    (5, 23, [(0, 11), (1, 1), (2, 5), (2, 6)]),                      # blocks of 5, padding
    (30, 7, [(0, 2), (1, 6)]),                                       # W > T: one block
    (1, 6, [(0, 3)]),                                                # itself only
])
def test_scan_equals_per_step_reference(window, steps, reset_steps, position):
    cell = built(position, window=window)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, steps, 3, generator=generator, dtype=torch.float64)
    resets = torch.zeros(3, steps, dtype=torch.bool)
    for b, t in reset_steps:
        resets[b, t] = True
    lengths = torch.tensor([steps, steps // 2 + 1, 0])
    state = carried_state(cell, 3, torch.float64, generator)
    (y, final, grads), (y_ref, final_ref, grads_ref) = run_both(cell, x, state, resets, lengths)
    torch.testing.assert_close(y, y_ref, **TOL)
    for key in final:
        torch.testing.assert_close(final[key], final_ref[key], **TOL, msg=key)
    names = ["x", *state, *(n for n, _ in cell.named_parameters())]
    for name, g, g_ref in zip(names, grads, grads_ref):
        if g is None or g_ref is None:
            assert g is None and g_ref is None or (g if g is not None else g_ref).abs().sum() == 0
            continue
        torch.testing.assert_close(g, g_ref, **TOL, msg=name)


@pytest.mark.parametrize("position", POSITIONS)
def test_step_loop_equals_scan_across_window_edges(position):
    """step after step (resets at W − 1 and W) equals one scan, outputs and window."""
    cell = built(position, window=4)
    x = torch.randn(2, 12, 3, dtype=torch.float64)
    resets = torch.zeros(2, 12, dtype=torch.bool)
    resets[0, 3] = resets[1, 4] = True
    state = carried_state(cell, 2, torch.float64, torch.Generator().manual_seed(2))
    y, final = cell.scan(x, state, resets=resets)
    outputs = []
    for t in range(12):
        y_t, state = cell.step(x[:, t], state, reset=resets[:, t])
        outputs.append(y_t)
    torch.testing.assert_close(torch.stack(outputs, 1), y, **TOL)
    for key in final:
        torch.testing.assert_close(state[key], final[key], **TOL)


def test_window_bounds_what_a_step_sees():
    """y_t depends on x_{t−W+1} .. x_t and on nothing before (same episode, no reset)."""
    torch.manual_seed(0)
    cell = Transformer(2, 4, window=3).double()
    x = torch.randn(1, 10, 2, dtype=torch.float64, requires_grad=True)
    y, _ = cell.scan(x, cell.initial_state(1))
    grad = torch.autograd.grad(y[0, 7].sum(), x)[0][0].abs().sum(-1)
    assert (grad[5:8] > 0).all() and (grad[:5] == 0).all() and (grad[8:] == 0).all()


def test_invalid_slots_are_ignored():
    """A cached slot with ω = 0 changes nothing, whatever its key and value."""
    torch.manual_seed(0)
    cell = Transformer(3, 8, window=5).double()
    state = carried_state(cell, 2, torch.float64, torch.Generator().manual_seed(3))
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    y, _ = cell.scan(x, state)
    noisy = {k: v.clone() for k, v in state.items()}
    empty = state["valid"] == 0
    noisy["keys"][empty] = 5.0
    noisy["values"][empty] = -3.0
    torch.testing.assert_close(cell.scan(x, noisy)[0], y, **TOL)


@pytest.mark.parametrize("hidden", [4, 12, 20, 64, 100, 256])
def test_defaults_follow_hidden_size(hidden):
    cell = memory_models.make("transformer", input_size=3, hidden_size=hidden)
    assert cell.window == 64 and hidden % cell.heads == 0 and cell.mlp_size == hidden
    assert cell.heads == (4 if hidden % 4 == 0 else 2 if hidden % 2 == 0 else 1)
    y, state = cell.scan(torch.randn(2, 5, 3), cell.initial_state(2))
    assert y.shape == (2, 5, hidden) and state["keys"].shape == (2, 63, hidden)


@pytest.mark.parametrize("kwargs, message", [
    ({"window": 0}, r"window must be a positive int"),
    ({"window": 2.5}, r"window must be a positive int"),
    ({"mlp_size": 0}, r"mlp_size must be a positive int"),
    ({"position": "rope"}, r"position must be one of \('alibi', 'rotary', 'learned', 'none'\)"),
])
def test_bad_keywords_fail_clearly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        memory_models.make("transformer", input_size=4, hidden_size=6, **kwargs)


@pytest.mark.parametrize("law", list(laws.LAWS))
@pytest.mark.parametrize("position", [p for p in POSITIONS if p != "alibi"])
@pytest.mark.parametrize("dtype", laws.accepted_dtypes("transformer"),
                         ids=lambda d: str(d).replace("torch.", ""))
def test_laws_hold_for_every_position(law, position, dtype):
    """The interface laws for the non-default positions (test_laws runs the default)."""
    laws.LAWS[law]("transformer", dtype, **small_memory_kwargs("transformer",
                                                               position=position))


@pytest.mark.parametrize("position", ["rotary", "learned"])
def test_position_term_moves_the_output(position):
    """Against "none", the position term changes y (the keyword reaches the attention)."""
    x = torch.randn(2, 9, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    plain = built("none", window=5)
    y_none = plain.scan(x, plain.initial_state(2))[0]
    cell = built(position, window=5)
    y = cell.scan(x, cell.initial_state(2))[0]
    assert not torch.allclose(y[:, 1:], y_none[:, 1:])
    torch.testing.assert_close(y[:, 0], y_none[:, 0], **TOL)     # one key, offset 0


def test_learned_offsets_start_at_alibi():
    """At init position="learned" computes what "alibi" does: b_h[δ] = −m_h δ."""
    x = torch.randn(2, 9, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    outputs = []
    for position in ("alibi", "learned"):
        torch.manual_seed(0)
        cell = Transformer(3, 8, window=5, position=position).double()
        outputs.append(cell.scan(x, cell.initial_state(2))[0])
    torch.testing.assert_close(outputs[1], outputs[0], **TOL)


def test_long_chunk_float32_matches_float64():
    """Many blocks (T = 300, W = 16) in float32 against float64: the blocked form is stable."""
    torch.manual_seed(0)
    cell = Transformer(3, 8, window=16)
    x = torch.randn(2, 300, 3)
    resets = torch.rand(2, 300) < 0.02
    y32, s32 = cell.scan(x, cell.initial_state(2), resets=resets)
    y64, s64 = cell.double().scan(x.double(), cell.initial_state(2), resets=resets)
    torch.testing.assert_close(y32.double(), y64, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s32["keys"].double(), s64["keys"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["transformer", "gtrxl"])
def test_rows_in_chunks_without_gradients_equal_one_pass(name, monkeypatch):
    """A scan without gradients over more than ROWS_PER_PASS rows runs them in chunks
    (the value pass's memory): the same outputs and state as one pass."""
    import memory_models.attention as attention
    import memory_models.gtrxl as gtrxl
    torch.manual_seed(0)
    cell = memory_models.make(name, input_size=3, hidden_size=8, window=4).double()
    x = torch.randn(7, 9, 3, dtype=torch.float64)
    resets = torch.rand(7, 9) < 0.2
    lengths = torch.tensor([9, 3, 0, 9, 5, 9, 1])
    state = {k: torch.randn_like(v) for k, v in cell.initial_state(7).items()}
    with torch.no_grad():
        y, final = cell.scan(x, state, resets=resets, lengths=lengths)
        for module in (attention, gtrxl):
            monkeypatch.setattr(module, "ROWS_PER_PASS", 3)
        y_chunks, final_chunks = cell.scan(x, state, resets=resets, lengths=lengths)
    torch.testing.assert_close(y_chunks, y, **TOL)
    for key in final:
        torch.testing.assert_close(final_chunks[key], final[key], **TOL)
