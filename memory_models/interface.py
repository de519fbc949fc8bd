"""The recurrent-memory interface every cell implements.

A memory maps an input sequence x (B, T, input_size) to outputs y (B, T, hidden_size) while
carrying an explicit state: a dict of real floating tensors, each with leading batch dim B.

    initial_state(batch_size)                        -> state
    scan(x, state, resets=, integration_timesteps=, lengths=) -> (y, new_state)
    step(x_t, state, reset=, integration_timestep=)  -> (y_t, new_state)

`scan` and `step` validate their arguments and fill in defaults, then call the subclass's
`_scan` / `_step` with every argument as a tensor:

    resets                 bool  (B, T)  resets[b, t]: state := initial state before x[b, t]
    integration_timesteps  float (B, T)  time elapsed between observation t-1 and t (>= 0)
    lengths                long  (B,)    the returned state is the one after lengths[b] steps

Cells whose parallel path cannot take resets inside a sequence (FFT convolutions, cuDNN-style
fused RNNs) wrap it with `scan_episodes_as_rows`, which repacks every episode into its own row.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor, nn

from .checks import check_int

State = dict[str, Tensor]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class RecurrentMemory(nn.Module, abc.ABC):
    """Base class of every memory cell. Subclasses implement `initial_state` and `_scan`.

    Class attributes a cell may narrow:
        dtypes                  the floating dtypes it computes in; `scan` and `step` refuse
                                the others with a clear error (default: all four)
        implementation_options  constructor keywords that choose how it computes, not what it
                                is (tests, benchmarks); the registry does not offer them
        elapsed_time            True for a cell whose maths integrates over the time elapsed
                                between observations (`integration_timesteps`); the others
                                ignore it (default False; tests hold every cell to its claim)
    """

    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES
    implementation_options: tuple[str, ...] = ()
    elapsed_time: bool = False

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        check_int("input_size", input_size)
        check_int("hidden_size", hidden_size)
        self.input_size = input_size
        self.hidden_size = hidden_size

    # ------------------------------------------------------------------ to implement
    @abc.abstractmethod
    def initial_state(self, batch_size: int, *, device=None, dtype=None) -> State:
        """The state before the first observation of an episode: dict of (B, ...) tensors."""

    @abc.abstractmethod
    def _scan(self, x: Tensor, state: State, resets: Tensor, integration_timesteps: Tensor,
              lengths: Tensor) -> tuple[Tensor, State]:
        """`scan` on validated, fully specified arguments (see module docstring)."""

    def _step(self, x_t: Tensor, state: State, reset: Tensor,
              integration_timestep: Tensor) -> tuple[Tensor, State]:
        """One step; the default runs `_scan` on a length-1 sequence. Override for speed."""
        lengths = torch.ones(x_t.shape[0], dtype=torch.long, device=x_t.device)
        y, state = self._scan(x_t[:, None], state, reset[:, None], integration_timestep[:, None],
                              lengths)
        return y[:, 0], state

    # ------------------------------------------------------------------ public API
    def scan(self, x: Tensor, state: State, *, resets: Tensor | None = None,
             integration_timesteps: Tensor | None = None,
             lengths: Tensor | None = None) -> tuple[Tensor, State]:
        """Run the memory over x (B, T, input_size) -> y (B, T, hidden_size), new state."""
        _check_tensor("x", x, ndim=3, last=self.input_size, what="(B, T, input_size)")
        self._check_dtype(x)
        batch, steps = x.shape[:2]
        self._check_state(state, batch)
        resets = _flags("resets", resets, (batch, steps), x.device)
        integration_timesteps = _timesteps("integration_timesteps", integration_timesteps,
                                           (batch, steps), x)
        if lengths is None:
            lengths = torch.full((batch,), steps, dtype=torch.long, device=x.device)
        else:
            _check_lengths(lengths, batch, steps)
        return self._scan(x, state, resets, integration_timesteps,
                          lengths.to(device=x.device, dtype=torch.long))

    def step(self, x_t: Tensor, state: State, *, reset: Tensor | None = None,
             integration_timestep: Tensor | None = None) -> tuple[Tensor, State]:
        """One observation x_t (B, input_size) -> y_t (B, hidden_size), new state."""
        reset, integration_timestep = self._check_step_args(x_t, state, reset,
                                                            integration_timestep)
        return self._step(x_t, state, reset, integration_timestep)

    def _check_step_args(self, x_t: Tensor, state: State, reset: Tensor | None,
                         integration_timestep: Tensor | None) -> tuple[Tensor, Tensor]:
        """Validate `step`'s arguments (clear errors); -> (reset (B,) bool, Δt (B,) float)."""
        _check_tensor("x_t", x_t, ndim=2, last=self.input_size, what="(B, input_size)")
        self._check_dtype(x_t)
        batch = x_t.shape[0]
        self._check_state(state, batch)
        reset = _flags("reset", reset, (batch,), x_t.device)
        integration_timestep = _timesteps("integration_timestep", integration_timestep,
                                          (batch,), x_t)
        return reset, integration_timestep

    # ------------------------------------------------------------------ helpers for cells
    def reset_state(self, state: State, reset: Tensor) -> State:
        """state where reset (B,) is False, the initial state where it is True."""
        if not state or not bool(reset.any()):
            return state
        first = next(iter(state.values()))
        initial = self.initial_state(reset.shape[0], device=first.device, dtype=first.dtype)
        return {k: torch.where(_expand(reset, v), initial[k], v) for k, v in state.items()}

    def parameter_dtype(self) -> torch.dtype | None:
        """The floating dtype of the first parameter or buffer, None for none (cached)."""
        if "_parameter_dtype" not in self.__dict__:
            floating = [t for t in (*self.parameters(), *self.buffers()) if t.is_floating_point()]
            self.__dict__["_parameter_dtype"] = floating[0].dtype if floating else None
        return self.__dict__["_parameter_dtype"]

    def _apply(self, fn, *args, **kwargs):
        """Module conversion (.to, .double, .cuda, ...) drops the cached parameter dtype."""
        self.__dict__.pop("_parameter_dtype", None)
        return super()._apply(fn, *args, **kwargs)

    def _defaults(self, device, dtype) -> tuple[torch.device, torch.dtype]:
        """device and dtype for new state tensors: the arguments, else the parameters'."""
        params = [p for p in (*self.parameters(), *self.buffers()) if p.is_floating_point()]
        if device is None:
            device = params[0].device if params else torch.device("cpu")
        if dtype is None:
            dtype = params[0].dtype if params else torch.get_default_dtype()
        return torch.device(device), dtype

    def _check_dtype(self, x: Tensor) -> None:
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"input must be a floating tensor (one of {_names(FLOAT_DTYPES)}), "
                            f"got {x.dtype}")
        if x.dtype not in self.dtypes:
            raise TypeError(f"{type(self).__name__} computes in {_names(self.dtypes)} only, "
                            f"got {_names([x.dtype])} input; convert the model and the input, "
                            f"e.g. model.float() and x.float()")
        own = self.parameter_dtype()
        if own is not None and own != x.dtype:
            raise TypeError(f"input is {_names([x.dtype])} but {type(self).__name__}'s parameters "
                            f"are {_names([own])}; convert one of them, e.g. model.to({x.dtype})")

    def _check_state(self, state: State, batch: int) -> None:
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict of tensors as returned by initial_state(), "
                            f"got {type(state).__name__}")
        if "_state_shapes" not in self.__dict__:     # per-row shapes, fixed at construction
            self.__dict__["_state_shapes"] = {
                k: tuple(v.shape[1:]) for k, v in self.initial_state(1, device="meta").items()}
        expected = self.__dict__["_state_shapes"]
        if state.keys() != expected.keys():
            raise ValueError(f"state keys {sorted(state)} do not match "
                             f"{type(self).__name__}'s state keys {sorted(expected)}")
        for key, row_shape in expected.items():
            value = state[key]
            if not isinstance(value, Tensor) or value.shape != (batch, *row_shape):
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"state[{key!r}] must have shape {(batch, *row_shape)}, "
                                 f"got {got}")


def scan_episodes_as_rows(scan_fn, initial_state_fn, x: Tensor, state: State, resets: Tensor,
                          integration_timesteps: Tensor, lengths: Tensor) -> tuple[Tensor, State]:
    """Exact resets for a parallel path that has none: every episode becomes its own row.

    scan_fn(x, state, integration_timesteps, lengths) -> (y, state) must handle sequences that
    start from the given state and end after `lengths` steps. The segments of all rows are
    packed into S rows of the longest segment's length, scanned once, and unpacked.
    """
    batch, steps = resets.shape
    first_reset = resets[:, 0]
    if state and bool(first_reset.any()):
        initial = initial_state_fn(batch, device=x.device, dtype=x.dtype)
        state = {k: torch.where(_expand(first_reset, v), initial[k], v) for k, v in state.items()}
    if not bool(resets[:, 1:].any()):
        return scan_fn(x, state, integration_timesteps, lengths)

    time = torch.arange(steps, device=x.device)
    starts = resets.clone()
    starts[:, 0] = True
    segment_in_row = starts.long().cumsum(1) - 1                                   # (B, T)
    segments_per_row = segment_in_row[:, -1] + 1                                   # (B,)
    row_offset = segments_per_row.cumsum(0) - segments_per_row                     # (B,)
    segment = row_offset[:, None] + segment_in_row                                 # (B, T)
    start_time = torch.cummax(torch.where(starts, time, 0), dim=1).values          # (B, T)
    position = time - start_time                                                   # (B, T)
    total = int(segments_per_row.sum())
    longest = int(position.max()) + 1

    packed_x = x.new_zeros(total, longest, x.shape[-1])
    packed_x = packed_x.index_put((segment.flatten(), position.flatten()), x.flatten(0, 1))
    packed_dt = integration_timesteps.new_ones(total, longest)
    packed_dt = packed_dt.index_put((segment.flatten(), position.flatten()),
                                    integration_timesteps.flatten())
    valid = (time < lengths[:, None]).long()
    packed_lengths = torch.zeros(total, dtype=torch.long, device=x.device)
    packed_lengths = packed_lengths.index_add(0, segment.flatten(), valid.flatten())
    packed_state = initial_state_fn(total, device=x.device, dtype=x.dtype)
    packed_state = {k: v.index_copy(0, row_offset, state[k]) for k, v in packed_state.items()}

    packed_y, packed_final = scan_fn(packed_x, packed_state, packed_dt, packed_lengths)
    y = packed_y[segment, position]                                                # (B, T, H)
    last = (lengths - 1).clamp(min=0)
    final_segment = segment.gather(1, last[:, None])[:, 0]                         # (B,)
    return y, {k: v[final_segment] for k, v in packed_final.items()}


def _expand(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(mask.shape[0], *([1] * (like.ndim - 1)))


def _names(dtypes) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def _check_tensor(name: str, value, *, ndim: int, last: int, what: str) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {what}, "
                        f"got {type(value).__name__}")
    if value.ndim != ndim or value.shape[-1] != last:
        raise ValueError(f"{name} must have shape {what} with input_size={last}, "
                         f"got {tuple(value.shape)}")


def _check_tensor_arg(name: str, value, dtypes, shape: tuple[int, ...], kind: str) -> None:
    """value must be a tensor of one of `dtypes` ("a `kind` tensor") of the given shape."""
    if not isinstance(value, Tensor) or value.dtype not in dtypes:
        got = value.dtype if isinstance(value, Tensor) else type(value).__name__
        raise TypeError(f"{name} must be {kind} tensor of shape {shape}, got {got}")
    if tuple(value.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(value.shape)}")


def _flags(name: str, value, shape: tuple[int, ...], device) -> Tensor:
    if value is None:
        return torch.zeros(shape, dtype=torch.bool, device=device)
    _check_tensor_arg(name, value, (torch.bool,), shape, "a bool")
    return value.to(device)


def _timesteps(name: str, value, shape: tuple[int, ...], like: Tensor) -> Tensor:
    if value is None:
        return torch.ones(shape, dtype=like.dtype, device=like.device)
    _check_tensor_arg(name, value, FLOAT_DTYPES, shape, "a floating")
    if bool(((value < 0) | ~torch.isfinite(value)).any()):          # one host sync
        raise ValueError(f"{name} must be finite and >= 0 (time elapsed between observations)")
    return value.to(device=like.device, dtype=like.dtype)


def _check_lengths(lengths, batch: int, steps: int) -> None:
    _check_tensor_arg("lengths", lengths, (torch.int32, torch.int64), (batch,), "an int64")
    if bool(((lengths < 0) | (lengths > steps)).any()):              # one host sync
        raise ValueError(f"lengths must lie in [0, T={steps}], got {lengths.tolist()}")
