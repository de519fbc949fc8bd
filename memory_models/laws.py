"""The interface laws every memory obeys (README.md, "The memory API"), as functions that
raise AssertionError.

    from memory_models import laws
    laws.check("lmu", memory_size=8)                  # every law, in every dtype lmu accepts
    laws.step_loop_equals_scan(cell, torch.float32)    # one law, one dtype

`model` is a registered name (built with input_size 4, hidden_size 6 and the keywords given)
or a `RecurrentMemory` (a copy is checked; the model itself is left alone). Each law converts
the model to `dtype`, runs both sides on fixed random data (B = 3 rows, T = 13 steps) and
compares them within TOLERANCES[dtype]; a failure names the law, the dtype and the numbers.

    split_equals_whole               scan over a sequence = scans over its parts, state carried
    step_loop_equals_scan            a loop of step = scan (with resets and time steps)
    resets_equal_separate_episodes   scan with resets = each episode scanned from the initial state
    lengths_give_state_after_length  the state returned is the one after lengths[b] steps
    gradients_reach_everything       finite, non-zero gradients for input, state, every parameter
    outputs_follow_input_dtype_and_device   outputs and state in the input's dtype and device;
                                     the state real, with the initial state's keys and shapes
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import Tensor

from .interface import RecurrentMemory, State
from .registry import get, make

BATCH, STEPS = 3, 13
INPUT_SIZE, HIDDEN_SIZE = 4, 6                 # sizes of a model built from its name
TOLERANCES = {torch.float64: dict(atol=1e-9, rtol=1e-9),
              torch.float32: dict(atol=2e-4, rtol=2e-4),
              torch.float16: dict(atol=1e-2, rtol=1e-2),
              torch.bfloat16: dict(atol=5e-2, rtol=5e-2)}

Model = str | RecurrentMemory


def accepted_dtypes(model: Model) -> tuple[torch.dtype, ...]:
    """The dtypes `model` (a name or a cell) computes in: its class's `dtypes` (a built cell's
    own, which a DeepMemory narrows to its cells')."""
    return get(model).dtypes if isinstance(model, str) else model.dtypes


def build(model: Model, dtype: torch.dtype, seed: int = 0, **kwargs) -> RecurrentMemory:
    """A fresh copy of `model` in `dtype`: a name is built (seeded, small sizes, `kwargs`)."""
    if isinstance(model, str):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = make(model, input_size=INPUT_SIZE, hidden_size=HIDDEN_SIZE, **kwargs)
    elif kwargs:
        raise TypeError(f"keywords {sorted(kwargs)} are for building a model from its name; "
                        f"got a built {type(model).__name__}")
    else:
        model = copy.deepcopy(model)
    return model.to(dtype)


# ---------------------------------------------------------------------- the laws
def split_equals_whole(model: Model, dtype: torch.dtype = torch.float32, **kwargs) -> None:
    """scan(x) = scan(x[:, :cut]) then scan(x[:, cut:]) from the state it returned."""
    cell, data = build(model, dtype, **kwargs), _Data(dtype)
    x, dt, state = data.x(cell), data.timesteps(), data.state(cell)
    y, final = cell.scan(x, state, integration_timesteps=dt)
    for cut in (1, 5, STEPS - 1):
        y1, mid = cell.scan(x[:, :cut], state, integration_timesteps=dt[:, :cut])
        y2, end = cell.scan(x[:, cut:], mid, integration_timesteps=dt[:, cut:])
        _close(torch.cat([y1, y2], 1), y, dtype, f"outputs split at t = {cut}")
        _close_states(end, final, dtype, f"final state split at t = {cut}")


def step_loop_equals_scan(model: Model, dtype: torch.dtype = torch.float32, **kwargs) -> None:
    """A loop of step over x = scan(x), with resets and integration time steps."""
    cell, data = build(model, dtype, **kwargs), _Data(dtype)
    x, dt, resets, state = data.x(cell), data.timesteps(), data.resets(), data.state(cell)
    y, final = cell.scan(x, state, resets=resets, integration_timesteps=dt)
    outputs = []
    for t in range(STEPS):
        y_t, state = cell.step(x[:, t], state, reset=resets[:, t], integration_timestep=dt[:, t])
        outputs.append(y_t)
    _close(torch.stack(outputs, 1), y, dtype, "step loop vs scan: outputs")
    _close_states(state, final, dtype, "step loop vs scan: final state")


def resets_equal_separate_episodes(model: Model, dtype: torch.dtype = torch.float32,
                                   **kwargs) -> None:
    """scan with resets = every episode scanned alone from the initial state (the first
    episode of a row without a reset at t = 0 from the carried state)."""
    cell, data = build(model, dtype, **kwargs), _Data(dtype)
    x, dt, state = data.x(cell), data.timesteps(), data.state(cell)
    starts = [[0, 4, 9], [0, 1, 2, 12], [0]]         # row 2: no reset, keeps its state
    resets = torch.zeros(BATCH, STEPS, dtype=torch.bool)
    for b, row in enumerate(starts[:2]):
        resets[b, row] = True
    y, final = cell.scan(x, state, resets=resets, integration_timesteps=dt)
    for b, row in enumerate(starts):
        bounds = row + [STEPS]
        for t0, t1 in zip(bounds[:-1], bounds[1:]):
            s0 = _row(state, b) if b == 2 else cell.initial_state(1, dtype=dtype)
            y_e, s_e = cell.scan(x[b:b + 1, t0:t1], s0, integration_timesteps=dt[b:b + 1, t0:t1])
            _close(y[b:b + 1, t0:t1], y_e, dtype, f"row {b}, episode t = {t0}..{t1 - 1}")
        _close_states(_row(final, b), s_e, dtype, f"row {b}: final state")


def lengths_give_state_after_length(model: Model, dtype: torch.dtype = torch.float32,
                                    **kwargs) -> None:
    """scan(x, lengths=ℓ) returns the state after ℓ[b] steps (0: the state given); outputs
    past the length are finite."""
    cell, data = build(model, dtype, **kwargs), _Data(dtype)
    x, state = data.x(cell), data.state(cell)
    lengths = torch.tensor([STEPS, 5, 0])
    y, final = cell.scan(x, state, lengths=lengths)
    assert torch.isfinite(y).all(), f"{_name(dtype)}: outputs past the lengths are not finite"
    for b, n in enumerate(lengths.tolist()):
        y_b, s_n = cell.scan(x[b:b + 1, :n], _row(state, b)) if n else (y[b:b + 1, :0],
                                                                          _row(state, b))
        _close(y[b:b + 1, :n], y_b, dtype, f"row {b}, length {n}: outputs")
        _close_states(_row(final, b), s_n, dtype, f"row {b}, length {n}: state")


def gradients_reach_everything(model: Model, dtype: torch.dtype = torch.float32,
                               **kwargs) -> None:
    """Gradients of a loss on outputs and final state reach the input, the initial state
    (every row without a reset) and every trained parameter, and are finite and non-zero."""
    cell, data = build(model, dtype, **kwargs), _Data(dtype)
    x = data.x(cell).requires_grad_()
    state = {k: v.requires_grad_() for k, v in data.state(cell).items()}
    resets = torch.zeros(BATCH, STEPS, dtype=torch.bool)
    resets[0, 6] = True
    y, final = cell.scan(x, state, resets=resets, integration_timesteps=data.timesteps() + 0.5)
    loss = y.float().square().mean() + sum(v.float().square().mean() for v in final.values())
    params = {name: p for name, p in cell.named_parameters() if p.requires_grad}
    leaves = {"input": x, **{f"state[{k!r}]": v for k, v in state.items()},
              **{f"parameter {name}": p for name, p in params.items()}}
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    for what, grad in zip(leaves, grads):
        assert grad is not None, f"{_name(dtype)}: no gradient reaches the {what}"
        assert torch.isfinite(grad).all(), f"{_name(dtype)}: gradient of the {what} is not finite"
        reached = grad[1:] if what.startswith("state") else grad    # row 0 resets at t = 6
        assert reached.abs().sum() > 0, f"{_name(dtype)}: zero gradient for the {what}"


def outputs_follow_input_dtype_and_device(model: Model, dtype: torch.dtype = torch.float32,
                                          **kwargs) -> None:
    """Outputs and state in the input's dtype and device (CPU, and CUDA where present); the
    state real, with the initial state's keys and shapes."""
    cell, data = build(model, dtype, **kwargs), _Data(dtype)
    x = data.x(cell)
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        cell, x = cell.to(device), x.to(device)
        state = cell.initial_state(BATCH)
        y, final = cell.scan(x, state)
        y_t, _ = cell.step(x[:, 0], state)
        for what, out in (("y", y), ("step's y", y_t), *final.items()):
            assert out.dtype == dtype and out.device.type == device, \
                f"{what} is {out.dtype} on {out.device}, input {dtype} on {device}"
        for k, v in final.items():
            assert v.is_floating_point() and not v.is_complex(), f"state[{k!r}] is {v.dtype}"
        shapes = ({k: tuple(v.shape) for k, v in final.items()},
                  {k: tuple(v.shape) for k, v in state.items()})
        assert shapes[0] == shapes[1], f"state shapes {shapes[0]} != initial {shapes[1]}"
        assert all(v.shape[0] == BATCH and v.dtype == dtype for v in state.values()), \
            f"initial state {[(k, v.shape, v.dtype) for k, v in state.items()]}"
        hidden = cell.hidden_size
        assert y.shape == (BATCH, STEPS, hidden) and y_t.shape == (BATCH, hidden), \
            f"y {tuple(y.shape)}, step's y {tuple(y_t.shape)}, hidden_size {hidden}"


LAWS: dict[str, Callable[..., None]] = {law.__name__: law for law in (
    split_equals_whole, step_loop_equals_scan, resets_equal_separate_episodes,
    lengths_give_state_after_length, gradients_reach_everything,
    outputs_follow_input_dtype_and_device)}


def check(model: Model, dtypes: tuple[torch.dtype, ...] | None = None, **kwargs) -> None:
    """Every law of LAWS in every dtype the model accepts (or in `dtypes`); raises the first
    failure as an AssertionError: "law: dtype, what: the numbers"."""
    for dtype in accepted_dtypes(model) if dtypes is None else dtypes:
        for name, law in LAWS.items():
            try:
                law(model, dtype, **kwargs)
            except AssertionError as error:
                raise AssertionError(f"{name}: {error}") from error


# ---------------------------------------------------------------------- helpers
class _Data:
    """Fixed random data of the laws (seeded, independent of the global random state)."""

    def __init__(self, dtype: torch.dtype, seed: int = 0):
        self.dtype = dtype
        self.generator = torch.Generator().manual_seed(seed)

    def _randn(self, *shape) -> Tensor:
        return torch.randn(*shape, generator=self.generator).to(self.dtype)

    def x(self, cell: RecurrentMemory) -> Tensor:                     # (B, T, input_size)
        return self._randn(BATCH, STEPS, cell.input_size)

    def timesteps(self) -> Tensor:                                    # (B, T) in [0, 2)
        return (torch.rand(BATCH, STEPS, generator=self.generator) * 2).to(self.dtype)

    def resets(self) -> Tensor:                                       # (B, T), ~20% True
        return torch.rand(BATCH, STEPS, generator=self.generator) < 0.2

    def state(self, cell: RecurrentMemory) -> State:
        """A non-zero state with the cell's keys and shapes."""
        return {k: self._randn(*v.shape) * 0.5
                for k, v in cell.initial_state(BATCH, dtype=self.dtype).items()}


def _row(state: State, b: int) -> State:
    return {k: v[b:b + 1] for k, v in state.items()}


def _close(actual: Tensor, expected: Tensor, dtype: torch.dtype, what: str) -> None:
    torch.testing.assert_close(actual, expected, **TOLERANCES[dtype],
                               msg=lambda message: f"{_name(dtype)}, {what}: {message}")


def _close_states(actual: State, expected: State, dtype: torch.dtype, what: str) -> None:
    assert set(actual) == set(expected), f"{what}: keys {sorted(actual)} != {sorted(expected)}"
    for k in actual:
        _close(actual[k], expected[k], dtype, f"{what} [{k!r}]")


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
