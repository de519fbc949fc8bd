"""delta_net and gated_delta_net: the papers' equations written out (short convolution, L2
norms, the delta rule in the papers' (d_v, d_k) layout, RMSNorm, gate), chunked == sequential
(values and gradients of the input, the state and every parameter), Gated DeltaNet's elapsed
time α^Δt (that DeltaNet ignores Δt: tests/test_interface.py), row blocks, defaults and bad
arguments.

No reference package runs here: flash-linear-attention's naive references cannot be imported
without Triton (see tests/test_ops_delta_rule.py), so the cells are held to the equations as
a loop.
"""

from functools import partial

import pytest
import torch
import torch.nn.functional as F

import memory_models
import memory_models.delta_net as delta_net_module
from memory_models.delta_net import DeltaNet, GatedDeltaNet
from scan_cell_checks import (TOL, assert_parallel_equals_sequential, assert_scan_equals_loop,
                              random_state)
from small_sizes import seeded_cell

pytestmark = pytest.mark.usefixtures("one_thread")

CELLS = [DeltaNet, GatedDeltaNet]
IDS = ["delta_net", "gated_delta_net"]

build = partial(seeded_cell, input_size=3, hidden_size=8, heads=2)   # build(cls, dtype, seed)


def written_out(cell, x, dt, resets, state):
    """The module docstring's equations as a loop over t, per row, with the papers' memory
    S' = Sᵀ (d_v, d_k): S' = α S'(I − β k kᵀ) + β v kᵀ, o = S' q."""
    D, H, d, K = cell.hidden_size, cell.heads, cell.head_size, cell.conv_size
    W = cell.in_proj.weight
    batch, steps = x.shape[:2]
    dt = torch.ones(batch, steps, dtype=x.dtype) if dt is None else dt
    ys, finals_S, finals_conv = [], [], []
    for b in range(batch):
        S = state["S"][b].transpose(-1, -2).clone()                        # (H, d_v, d_k)
        window = list(state["conv"][b]) if "conv" in state else []         # K − 1 of (3D,)
        row = []
        for t in range(steps):
            if resets[b, t]:
                S = torch.zeros_like(S)
                window = [torch.zeros(3 * D, dtype=x.dtype) for _ in window]
            p = W @ x[b, t]
            u, b_pre = p[:3 * D], p[3 * D:3 * D + H]
            if cell.use_short_conv:
                taps = window + [u]                                         # oldest first
                conv = sum(cell.conv_weight[:, j] * taps[j] for j in range(K))
                window = taps[1:]
                u = conv
            u = F.silu(u)
            q, k, v = u[:D].view(H, d), u[D:2 * D].view(H, d), u[2 * D:].view(H, d)
            q = q / torch.sqrt((q * q).sum(-1, keepdim=True) + 1e-6) / d ** 0.5
            k = k / torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-6)
            beta = torch.sigmoid(b_pre)
            if cell.gated:
                a, r = p[3 * D + H:3 * D + 2 * H], p[3 * D + 2 * H:]
                g = -torch.exp(cell.A_log) * torch.log1p(torch.exp(a + cell.dt_bias)) * dt[b, t]
                alpha = torch.exp(g)
            else:
                alpha = torch.ones(H, dtype=x.dtype)
            o = torch.zeros(H, d, dtype=x.dtype)
            for h in range(H):
                kk = torch.outer(k[h], k[h])
                S[h] = alpha[h] * S[h] @ (torch.eye(d, dtype=x.dtype) - beta[h] * kk) \
                    + beta[h] * torch.outer(v[h], k[h])
                o[h] = S[h] @ q[h]
            normed = o / torch.sqrt((o * o).mean(-1, keepdim=True) + 1e-5) * cell.norm_weight
            out = normed.flatten()
            if cell.gated:
                out = out * F.silu(r)
            row.append(cell.out_proj.weight @ out)
        ys.append(torch.stack(row))
        finals_S.append(S.transpose(-1, -2))
        if window:
            finals_conv.append(torch.stack(window))
    final = {"S": torch.stack(finals_S)}
    if finals_conv:
        final["conv"] = torch.stack(finals_conv)
    return torch.stack(ys), final


@pytest.mark.parametrize("kw", [{}, {"use_short_conv": False}, {"conv_size": 2, "heads": 1}],
                         ids=["conv4", "no_conv", "conv2"])
@pytest.mark.parametrize("cls", CELLS, ids=IDS)
def test_scan_equals_the_papers_equations_written_out(cls, kw):
    cell = build(cls, chunk_size=4, **kw)
    assert_scan_equals_loop(cell, lambda x, dt, resets, state:
                            written_out(cell, x, dt, resets, state),
                            steps=11, reset_at=(1, 5), timesteps=cls.elapsed_time)


def implementations(cls):
    """cls with assert_parallel_equals_sequential's scan_impl names (parallel: chunked, in
    chunks of 4 steps so that the 45 steps span 12 chunks)."""
    def make(scan_impl, **kw):
        impl = {"parallel": "chunked", "sequential": "sequential"}[scan_impl]
        return cls(scan_impl=impl, chunk_size=4, **kw)
    return make


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("cls", CELLS, ids=IDS)
def test_chunked_scan_equals_sequential_loop(cls, dtype):
    """Values and gradients (input, state, every parameter) with resets, random Δt, lengths
    [T, 30, 0] and a carried state (conv window included)."""
    assert_parallel_equals_sequential(implementations(cls), dtype, input_size=3, hidden_size=8,
                                      heads=2)


def test_row_blocks_equal_one_block(monkeypatch):
    """Rows are scanned in blocks of about BLOCK_STEPS steps: 1 row per block == all at once."""
    cell = build(GatedDeltaNet)
    x = torch.randn(5, 9, 3, dtype=torch.float64)
    resets = torch.rand(5, 9) < 0.2
    state = random_state(cell, 5, torch.float64)
    lengths = torch.tensor([9, 3, 0, 9, 7])
    y, final = cell.scan(x, state, resets=resets, lengths=lengths)
    monkeypatch.setattr(delta_net_module, "BLOCK_STEPS", 9)
    y_blocks, final_blocks = cell.scan(x, state, resets=resets, lengths=lengths)
    torch.testing.assert_close(y_blocks, y, **TOL[torch.float64])
    for key in final:
        torch.testing.assert_close(final_blocks[key], final[key], **TOL[torch.float64])


def test_gated_delta_net_elapsed_time_is_a_decay_power():
    """Δt ≡ 1 is the synchronous form; an observation after Δt = 2 equals: the memory first
    decayed by that observation's α (no write), then the observation's step at Δt = 1 (the
    write is one per observation, unscaled); Δt = 0 leaves the old memory undecayed, α^0 = 1."""
    cell = build(GatedDeltaNet)
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    state = random_state(cell, 2, torch.float64)
    y, final = cell.scan(x, state)
    y_ones, final_ones = cell.scan(x, state, integration_timesteps=torch.ones(2, 6).double())
    torch.testing.assert_close(y_ones, y, **TOL[torch.float64])

    _, before = cell.scan(x[:, :5], state)
    a = cell.in_proj(x[:, 5]).split(cell.split_sizes, -1)[2]                  # (B, H)
    alpha = torch.exp(cell.log_decay(a, torch.ones(2, dtype=torch.float64)))
    decayed = {**before, "S": before["S"] * alpha[..., None, None]}
    y_two_steps, s_two_steps = cell.scan(x[:, 5:], decayed)
    dt = torch.ones(2, 6, dtype=torch.float64)
    dt[:, 5] = 2
    y_gap, s_gap = cell.scan(x, state, integration_timesteps=dt)
    torch.testing.assert_close(y_gap[:, 5], y_two_steps[:, 0], **TOL[torch.float64])
    for key in s_gap:
        torch.testing.assert_close(s_gap[key], s_two_steps[key], **TOL[torch.float64])
    assert (y_gap[:, 5] - y[:, 5]).abs().max() > 1e-6

    dt[:, 5] = 0
    y_zero, _ = cell.scan(x, state, integration_timesteps=dt)
    y_undecayed, _ = cell.scan(x[:, 5:], before, integration_timesteps=dt[:, 5:])
    torch.testing.assert_close(y_zero[:, 5], y_undecayed[:, 0], **TOL[torch.float64])
    a_zero = torch.exp(cell.log_decay(a, torch.zeros(2, dtype=torch.float64)))
    torch.testing.assert_close(a_zero, torch.ones_like(a_zero), rtol=0, atol=0)


@pytest.mark.parametrize("cls", CELLS, ids=IDS)
def test_long_float32_run_matches_float64(cls):
    """T = 2048 at hidden 16 (2 heads of 8): float32 chunked within 1e-3 of float64."""
    cell = build(cls, hidden_size=16)
    x = torch.randn(2, 2048, 3, dtype=torch.float64)
    state = random_state(cell, 2, torch.float64)
    y64, _ = cell.scan(x, state)
    y32, _ = cell.float().scan(x.float(), {k: v.float() for k, v in state.items()})
    assert torch.isfinite(y32).all()
    assert (y32.double() - y64).abs().max() < 1e-3 * y64.abs().max()


@pytest.mark.parametrize("hidden_size, heads", [(4, 4), (6, 2), (8, 8), (12, 4), (64, 8),
                                                (256, 8), (7, 1)])
@pytest.mark.parametrize("name", IDS)
def test_defaults_follow_hidden_size(name, hidden_size, heads):
    cell = memory_models.make(name, input_size=3, hidden_size=hidden_size)
    assert (cell.heads, cell.head_size) == (heads, hidden_size // heads)
    state = cell.initial_state(2)
    assert state["S"].shape == (2, heads, hidden_size // heads, hidden_size // heads)
    assert state["conv"].shape == (2, 3, 3 * hidden_size)
    y, _ = cell.scan(torch.randn(2, 5, 3), state)
    assert y.shape == (2, 5, hidden_size)


@pytest.mark.parametrize("name", IDS)
def test_bad_arguments_name_the_keyword_and_the_allowed_values(name):
    def make(**kw):
        return memory_models.make(name, input_size=3, hidden_size=8, **kw)
    with pytest.raises(ValueError, match="conv_size must be a positive int"):
        make(conv_size=0)
    with pytest.raises(ValueError, match="use_short_conv must be True or False"):
        make(use_short_conv=1)
