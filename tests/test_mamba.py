"""mamba and mamba2: the papers' equations written out as loops, parallel == sequential (values
and gradients), mamba == mambapy's MambaBlock, elapsed time as a decay power, the conv window
across resets, defaults at any hidden size, bad arguments."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F

import memory_models
from memory_models import Mamba, Mamba2
from scan_cell_checks import (TOL, assert_long_float32_run_matches_float64,
                              assert_parallel_equals_sequential, assert_scan_equals_loop,
                              random_state)
from small_sizes import seeded_cell

SMALL = dict(input_size=3, hidden_size=4, state_size=3)

pytestmark = pytest.mark.usefixtures("one_thread")

build = partial(seeded_cell, **SMALL)       # build(cls, dtype=float64, seed=0, **overrides)


def conv_written_out(cell, window, inputs_t, reset_t):
    """One step of the depthwise causal conv from its window of the last K−1 inputs (emptied
    at a reset): (SiLU(b + Σ_k w_k · [window, input]_k), the next window)."""
    window = torch.where(reset_t[:, None, None], torch.zeros_like(window), window)
    taps = torch.cat([window, inputs_t[:, None]], 1)                        # (B, K, C)
    out = cell.conv_bias + sum(cell.conv_weight[:, k] * taps[:, k] for k in range(taps.shape[1]))
    return F.silu(out), taps[:, 1:]


def mamba_written_out(cell, x, dt, resets, state):
    """Mamba's block (Gu & Dao 2023, Algorithm 2 and Figure 3) step by step from `state`."""
    E, N, R = cell.channels, cell.state_size, cell.dt_rank
    h, window = state["h"], state["conv"]
    A = -torch.exp(cell.A_log)                                              # (E, N)
    outputs = []
    for t in range(x.shape[1]):
        h = torch.where(resets[:, t, None, None], torch.zeros_like(h), h)
        u, z = (x[:, t] @ cell.in_proj.weight.T).split([E, E], -1)
        c, window = conv_written_out(cell, window, u, resets[:, t])
        low, B, C = (c @ cell.x_proj.weight.T).split([R, N, N], -1)
        step = torch.log1p(torch.exp(low @ cell.dt_proj.weight.T + cell.dt_proj.bias))  # Δ
        tau = dt[:, t, None, None] if dt is not None else 1.0
        h = torch.exp(step[..., None] * tau * A) * h + (step * c)[..., None] * B[:, None, :]
        y = ((h * C[:, None, :]).sum(-1) + cell.D * c) * (z * torch.sigmoid(z))
        outputs.append(y @ cell.out_proj.weight.T)
    return torch.stack(outputs, 1), {"h": h, "conv": window}


def mamba2_written_out(cell, x, dt, resets, state):
    """Mamba-2's block (Dao & Gu 2024, Mamba2Simple with one group) step by step."""
    E, N, M, P = cell.channels, cell.state_size, cell.heads, cell.head_size
    h, window = state["h"], state["conv"]
    A = -torch.exp(cell.A_log)                                              # (M,)
    outputs = []
    for t in range(x.shape[1]):
        h = torch.where(resets[:, t, None, None, None], torch.zeros_like(h), h)
        z, xBC, low = (x[:, t] @ cell.in_proj.weight.T).split([E, E + 2 * N, M], -1)
        conv, window = conv_written_out(cell, window, xBC, resets[:, t])
        xs, B, C = conv.split([E, N, N], -1)
        xs = xs.reshape(-1, M, P)
        step = torch.log1p(torch.exp(low + cell.dt_bias))                   # Δ (B, M)
        tau = dt[:, t, None] if dt is not None else 1.0
        decay = torch.exp(step * tau * A)                                   # (B, M)
        h = decay[..., None, None] * h + (step[..., None] * xs)[..., None] * B[:, None, None, :]
        o = ((h * C[:, None, None, :]).sum(-1) + cell.D[:, None] * xs).reshape(-1, E)
        o = o * (z * torch.sigmoid(z))
        o = o / torch.sqrt((o ** 2).mean(-1, keepdim=True) + 1e-5) * cell.norm_weight
        outputs.append(o @ cell.out_proj.weight.T)
    return torch.stack(outputs, 1), {"h": h, "conv": window}


# ---------------------------------------------------------------------- the equations
def test_mamba_scan_equals_the_papers_equations_written_out():
    cell = build(Mamba)
    assert_scan_equals_loop(cell, lambda x, dt, resets, state: mamba_written_out(
        cell, x, dt, resets, state), steps=11, reset_at=(1, 5))


@pytest.mark.parametrize("chunk_size", [3, 64])
def test_mamba2_scan_equals_the_papers_equations_written_out(chunk_size):
    cell = build(Mamba2, hidden_size=8, head_size=4, chunk_size=chunk_size)
    assert_scan_equals_loop(cell, lambda x, dt, resets, state: mamba2_written_out(
        cell, x, dt, resets, state), steps=11, reset_at=(1, 6))


# ---------------------------------------------------------------------- fast == reference
def fused_as_parallel(scan_impl, **kw):
    """Mamba with its fused loop where the check asks for the parallel form."""
    return Mamba(scan_impl="fused" if scan_impl == "parallel" else scan_impl, **kw)


@pytest.mark.parametrize("cell_class", [Mamba, fused_as_parallel], ids=["parallel", "fused"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_mamba_fast_scans_equal_sequential_loop(dtype, cell_class):
    assert_parallel_equals_sequential(cell_class, dtype, **SMALL)


@pytest.mark.parametrize("chunk_size", [1, 4, 11, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_mamba2_chunked_scan_equals_sequential_loop(dtype, chunk_size):
    """Resets inside chunks and at a chunk's first step (t = 22 at chunk_size 11), lengths
    [45, 30, 0], a carried state: the same outputs, state and gradients."""
    assert_parallel_equals_sequential(Mamba2, dtype, chunk_size=chunk_size,
                                      **{**SMALL, "hidden_size": 8, "head_size": 2})


@pytest.mark.parametrize("cls", [Mamba, Mamba2])
def test_float32_long_run_matches_float64(cls):
    cell = build(cls, hidden_size=8)
    assert_long_float32_run_matches_float64(cell, steps=2048)


# ---------------------------------------------------------------------- mambapy
def test_mamba_equals_mambapys_mamba_block():
    """Our `mamba` given the weights of mambapy 1.2's MambaBlock (one layer, no residual or
    norm around it) gives its outputs, in float64 within 1e-10: the whole sequence from the
    zero state (its parallel pscan and its sequential selective scan) and its step from a
    non-zero cache (h, the last K−1 conv inputs). mambapy computes A = −exp(A_log) and D in
    float32 (`.float()`, whatever the module's dtype): D holds float32 values (the cast is
    exact) and our A_log is the float64 log of its float32 exp(A_log), the same A. What
    mambapy lacks: resets, lengths, elapsed time, an initial state for its sequence pass,
    input_size ≠ hidden_size."""
    mambapy = pytest.importorskip("mambapy.mamba")
    torch.manual_seed(0)
    config = mambapy.MambaConfig(d_model=8, n_layers=1, d_state=4, expand_factor=2, d_conv=4)
    theirs = mambapy.MambaBlock(config)
    ours = Mamba(8, 8, state_size=4, expand=2, conv_kernel=4)
    assert ours.dt_rank == config.dt_rank
    with torch.no_grad():
        theirs.A_log.add_(0.1 * torch.randn(theirs.A_log.shape))     # off the initial values
        theirs.D.add_(0.5 * torch.randn(theirs.D.shape))
        ours, theirs = ours.double(), theirs.double()
        for name in ("in_proj", "x_proj", "dt_proj", "out_proj"):
            getattr(ours, name).load_state_dict(getattr(theirs, name).state_dict())
        ours.conv_weight.copy_(theirs.conv1d.weight[:, 0])
        ours.conv_bias.copy_(theirs.conv1d.bias)
        ours.A_log.copy_(torch.log(torch.exp(theirs.A_log.float()).double()))   # its float32 A
        ours.D.copy_(theirs.D)                                  # float32 values: .float() exact
    x = torch.randn(2, 21, 8, dtype=torch.float64)
    y, _ = ours.scan(x, ours.initial_state(2))
    for pscan in (True, False):
        theirs.config.pscan = pscan
        torch.testing.assert_close(y, theirs(x), atol=1e-10, rtol=1e-10)

    state = random_state(ours, 2, torch.float64)
    y_t, new = ours.step(x[:, 0], state)
    their_y, (their_h, their_inputs) = theirs.step(x[:, 0], (state["h"],
                                                             state["conv"].transpose(1, 2)))
    torch.testing.assert_close(y_t, their_y, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(new["h"], their_h, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(new["conv"], their_inputs.transpose(1, 2), atol=0, rtol=0)


# ---------------------------------------------------------------------- elapsed time
@pytest.mark.parametrize("cls", [Mamba, Mamba2])
def test_elapsed_time_scales_the_decay_exponent_not_the_input(cls):
    """A step after a gap τ decays the state by exp(Δ A)^τ and adds the same input term
    whatever τ: with h(τ, h0) the state after one step from h0 (same observation, same conv
    window), h(τ, 0) is independent of τ and (h(τ, h0) − h(τ, 0)) / h0 = d^τ with
    d = (h(1, h0) − h(1, 0)) / h0 in (0, 1). τ ≡ 1 equals the synchronous scan."""
    cell = build(cls, hidden_size=8)
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    state = random_state(cell, 2, torch.float64)
    zero_h = {**state, "h": torch.zeros_like(state["h"])}

    def h_after(tau, start):
        _, new = cell.step(x[:, 0], start, integration_timestep=torch.full((2,), tau,
                                                                           dtype=torch.float64))
        return new["h"]

    decay = (h_after(1.0, state) - h_after(1.0, zero_h)) / state["h"]
    assert ((decay > 0) & (decay < 1)).all()
    for tau in (0.0, 0.5, 2.0, 7.0):
        torch.testing.assert_close(h_after(tau, zero_h), h_after(1.0, zero_h), **TOL[torch.float64])
        torch.testing.assert_close((h_after(tau, state) - h_after(tau, zero_h)) / state["h"],
                                   decay ** tau, **TOL[torch.float64])

    y, final = cell.scan(x, state)
    y_ones, final_ones = cell.scan(x, state, integration_timesteps=torch.ones(2, 9).double())
    torch.testing.assert_close(y_ones, y, atol=0, rtol=0)
    y_gap, _ = cell.scan(x, state, integration_timesteps=torch.full((2, 9), 3.0).double())
    assert (y_gap - y).abs().max() > 1e-6


# ---------------------------------------------------------------------- the conv window
@pytest.mark.parametrize("cls", [Mamba, Mamba2])
@pytest.mark.parametrize("conv_kernel", [1, 2, 4])
def test_the_conv_does_not_see_across_a_reset(cls, conv_kernel):
    """After a reset at t, the outputs from t on and the final state are those of the
    episode scanned alone from the initial state, whatever came before (a reset one step
    before the end leaves only the new input in the window); a kernel of 1 keeps no window."""
    cell = build(cls, hidden_size=8, conv_kernel=conv_kernel)
    assert ("conv" in cell.initial_state(1)) == (conv_kernel > 1)
    x = torch.randn(2, 10, 3, dtype=torch.float64)
    state = random_state(cell, 2, torch.float64)
    for start in (2, 9):
        resets = torch.zeros(2, 10, dtype=torch.bool)
        resets[:, start] = True
        y, final = cell.scan(x, state, resets=resets)
        y_alone, final_alone = cell.scan(x[:, start:], cell.initial_state(2, dtype=torch.float64))
        torch.testing.assert_close(y[:, start:], y_alone, **TOL[torch.float64])
        for key in final:
            torch.testing.assert_close(final[key], final_alone[key], **TOL[torch.float64])


@pytest.mark.parametrize("cls", [Mamba, Mamba2])
def test_lengths_with_resets_give_the_state_after_the_length(cls):
    """A reset just before the length, at its last step, or past it (ignored): the state
    returned with lengths is the one of the sequence cut at its length, conv window included."""
    cell = build(cls, hidden_size=8, chunk_size=4) if cls is Mamba2 else build(cls, hidden_size=8)
    x = torch.randn(4, 12, 3, dtype=torch.float64)
    state = random_state(cell, 4, torch.float64)
    lengths = torch.tensor([7, 7, 7, 12])
    resets = torch.zeros(4, 12, dtype=torch.bool)
    resets[0, 5] = resets[1, 6] = resets[2, 7] = resets[3, 10] = True
    _, final = cell.scan(x, state, resets=resets, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        _, cut = cell.scan(x[b:b + 1, :n], {k: v[b:b + 1] for k, v in state.items()},
                           resets=resets[b:b + 1, :n])
        for key in final:
            torch.testing.assert_close(final[key][b:b + 1], cut[key], **TOL[torch.float64])


# ---------------------------------------------------------------------- sizes and arguments
@pytest.mark.parametrize("name", ["mamba", "mamba2"])
@pytest.mark.parametrize("hidden_size", [4, 12, 20, 64, 100, 256])
def test_defaults_follow_hidden_size(name, hidden_size):
    cell = memory_models.make(name, input_size=3, hidden_size=hidden_size)
    if name == "mamba":
        assert cell.channels == 2 * hidden_size and cell.dt_rank == -(-hidden_size // 16)
    else:
        assert cell.heads * cell.head_size == cell.channels == 2 * hidden_size
        assert cell.head_size == (64 if hidden_size % 32 == 0 else
                                  max(s for s in (32, 16, 8) if (2 * hidden_size) % s == 0))
    y, _ = cell.scan(torch.randn(2, 5, 3), cell.initial_state(2))
    assert y.shape == (2, 5, hidden_size) and torch.isfinite(y).all()


def test_bad_arguments_name_the_keyword_and_the_allowed_values():
    for cls in (Mamba, Mamba2):
        with pytest.raises(ValueError, match="conv_kernel must be a positive int"):
            cls(3, 4, conv_kernel=0)
        with pytest.raises(ValueError, match="state_size must be a positive int"):
            cls(3, 4, state_size=0)
        with pytest.raises(ValueError, match="expand must be a positive int"):
            cls(3, 4, expand=1.5)
    with pytest.raises(ValueError, match=r"scan_impl must be one of \('fused', 'parallel', "
                                         r"'sequential'\)"):
        Mamba(3, 4, scan_impl="chunked")
    with pytest.raises(ValueError, match="dt_rank must be a positive int"):
        Mamba(3, 4, dt_rank=0)
    with pytest.raises(ValueError, match=r"head_size must divide the channels expand · "
                                         r"hidden_size = 8 \(one of \[1, 2, 4, 8\]\), got 3"):
        Mamba2(3, 4, head_size=3)
