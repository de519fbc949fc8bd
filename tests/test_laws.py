"""The five interface laws of DESIGN.md, for every registered memory, float32 and float64.

Parametrised over memory_models.available(): a model registered later is covered here with no
new code. Models are built with the small keywords of tests/small_sizes.py.
"""

import pytest
import torch

import memory_models
from small_sizes import small_memory_kwargs

B, T, D, H = 3, 13, 4, 6
TOL = {torch.float32: dict(atol=2e-4, rtol=2e-4), torch.float64: dict(atol=1e-9, rtol=1e-9)}
DTYPES = [torch.float32, torch.float64]


def build(name, dtype, seed=0):
    torch.manual_seed(seed)
    cell = memory_models.make(name, input_size=D, hidden_size=H, **small_memory_kwargs(name))
    return cell.to(dtype)


def random_state(cell, dtype, batch=B):
    """A non-zero state with the cell's keys and shapes."""
    return {k: torch.randn_like(v) * 0.5 for k, v in cell.initial_state(batch, dtype=dtype).items()}


def close(a, b, dtype):
    torch.testing.assert_close(a, b, **TOL[dtype])


def close_states(a, b, dtype):
    assert set(a) == set(b)
    for k in a:
        close(a[k], b[k], dtype)


MODELS = memory_models.available()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", MODELS)
class TestLaws:
    def test_split_equals_whole(self, name, dtype):
        cell = build(name, dtype)
        x = torch.randn(B, T, D, dtype=dtype)
        dt = torch.rand(B, T, dtype=dtype) * 2
        state = random_state(cell, dtype)
        y, final = cell.scan(x, state, integration_timesteps=dt)
        for cut in (1, 5, T - 1):
            y1, mid = cell.scan(x[:, :cut], state, integration_timesteps=dt[:, :cut])
            y2, end = cell.scan(x[:, cut:], mid, integration_timesteps=dt[:, cut:])
            close(torch.cat([y1, y2], 1), y, dtype)
            close_states(end, final, dtype)

    def test_step_loop_equals_scan(self, name, dtype):
        cell = build(name, dtype)
        x = torch.randn(B, T, D, dtype=dtype)
        dt = torch.rand(B, T, dtype=dtype) * 2
        resets = torch.rand(B, T) < 0.2
        state = random_state(cell, dtype)
        y, final = cell.scan(x, state, resets=resets, integration_timesteps=dt)
        outputs = []
        for t in range(T):
            y_t, state = cell.step(x[:, t], state, reset=resets[:, t],
                                   integration_timestep=dt[:, t])
            outputs.append(y_t)
        close(torch.stack(outputs, 1), y, dtype)
        close_states(state, final, dtype)

    def test_resets_equal_separate_episodes(self, name, dtype):
        cell = build(name, dtype)
        x = torch.randn(B, T, D, dtype=dtype)
        dt = torch.rand(B, T, dtype=dtype) * 2
        starts = [[0, 4, 9], [0, 1, 2, 12], [0]]        # row 2: no reset, keeps its state
        resets = torch.zeros(B, T, dtype=torch.bool)
        for b, row in enumerate(starts):
            for t in row[:-1] if b == 2 else row:
                resets[b, t] = b != 2
        state = random_state(cell, dtype)
        y, final = cell.scan(x, state, resets=resets, integration_timesteps=dt)
        for b, row in enumerate(starts):
            bounds = row + [T]
            for i, (t0, t1) in enumerate(zip(bounds[:-1], bounds[1:])):
                if b == 2:
                    s0 = {k: v[b:b + 1] for k, v in state.items()}
                else:
                    s0 = cell.initial_state(1, dtype=dtype)
                y_e, s_e = cell.scan(x[b:b + 1, t0:t1], s0, integration_timesteps=dt[b:b + 1, t0:t1])
                close(y[b:b + 1, t0:t1], y_e, dtype)
            close_states({k: v[b:b + 1] for k, v in final.items()}, s_e, dtype)

    def test_lengths_give_state_after_length(self, name, dtype):
        cell = build(name, dtype)
        x = torch.randn(B, T, D, dtype=dtype)
        state = random_state(cell, dtype)
        lengths = torch.tensor([T, 5, 0])
        y, final = cell.scan(x, state, lengths=lengths)
        assert torch.isfinite(y).all()
        for b, n in enumerate(lengths.tolist()):
            s_b = {k: v[b:b + 1] for k, v in state.items()}
            y_b, s_n = cell.scan(x[b:b + 1, :n], s_b) if n else (y[b:b + 1, :0], s_b)
            close(y[b:b + 1, :n], y_b, dtype)
            close_states({k: v[b:b + 1] for k, v in final.items()}, s_n, dtype)

    def test_gradients_reach_everything(self, name, dtype):
        cell = build(name, dtype)
        x = torch.randn(B, T, D, dtype=dtype, requires_grad=True)
        state = {k: v.requires_grad_() for k, v in random_state(cell, dtype).items()}
        resets = torch.zeros(B, T, dtype=torch.bool)
        resets[0, 6] = True
        y, final = cell.scan(x, state, resets=resets, integration_timesteps=torch.rand(B, T, dtype=dtype) + 0.5)
        loss = y.square().mean() + sum(v.square().mean() for v in final.values())
        loss.backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        for k, v in state.items():
            assert v.grad is not None and torch.isfinite(v.grad).all(), k
            assert v.grad[1:].abs().sum() > 0, f"no gradient reaches initial state {k!r}"
        for pname, p in cell.named_parameters():
            assert p.grad is not None, f"no gradient for parameter {pname}"
            assert torch.isfinite(p.grad).all(), pname
            assert p.grad.abs().sum() > 0, f"zero gradient for parameter {pname}"

    def test_outputs_follow_input_dtype_and_device(self, name, dtype):
        cell = build(name, dtype)
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for device in devices:
            cell = cell.to(device)
            x = torch.randn(B, T, D, dtype=dtype, device=device)
            state = cell.initial_state(B)
            y, final = cell.scan(x, state)
            y_t, _ = cell.step(x[:, 0], state)
            for out in (y, y_t, *final.values()):
                assert out.dtype == dtype and out.device.type == device
            for k, v in final.items():
                assert v.is_floating_point() and not v.is_complex(), k
            assert y.shape == (B, T, H) and y_t.shape == (B, H)


@pytest.mark.parametrize("name", MODELS)
def test_state_has_same_keys_and_shapes(name):
    cell = build(name, torch.float32)
    state = cell.initial_state(B)
    _, final = cell.scan(torch.randn(B, T, D), state)
    assert {k: v.shape for k, v in final.items()} == {k: v.shape for k, v in state.items()}
    for v in state.values():
        assert v.shape[0] == B and v.dtype == torch.float32
