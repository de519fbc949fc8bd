"""POPGym's position-only and window baselines: MLP with a sine position embedding ("PosMLP"),
Framestack and Frameconv.

The sine position embedding (POPGym's `positional_encoding`, mixed in as its BaseModel's
`apply_embedding` with a learned strength; its MLP, Framestack and Frameconv all use it):

    p_t         position of x_t in its episode (0 at the episode's first observation)
    ω_i         = max_len^(-2i/I)                                   i = 0 .. ⌈I/2⌉ - 1
    pe(p)       = [sin(p ω_0), cos(p ω_0), sin(p ω_1), cos(p ω_1), ...]   (I,), cut to I
    e_t         = (1 - s) x_t + s pe(p_t)

pe(0 .. max_len - 1) is a table computed once in float64 (as POPGym's, which is float32), cast
to the model's dtype; positions off the table (non-integers, p >= max_len) take the formula.
s ∈ [0, 1] is learned (0.5 at init) and projected in place onto [0, 1] before it is used, as
POPGym's `embedding_strength`. The position counter is the state {"t": (B, 1)}: the number of
steps the episode has had; a reset sets it to 0, `lengths` stop it.

pos_mlp (POPGym's `MLP`), state {"t"}:

    y_t = LeakyReLU(W_2 LeakyReLU(W_1 e_t + b_1) + b_2)

frame_stack (POPGym's `Framestack`, k = stack_size) and frame_conv (POPGym's `Frameconv`) see
the window of the last k embedded inputs, f_t = [e_{t-k+1}, ..., e_t], where frames from before
the episode's start are zero (POPGym's initial state is k - 1 zero frames). State
{"window": (B, k - 1, I) the last k - 1 frames, "t": (B, 1)}.

    frame_stack:  y_t = LeakyReLU(W_2 LeakyReLU(W_1 [C f_t^1; ...; C f_t^k] + b_1) + b_2)
                  C e + c: (H/k × I) compresses every frame (H a multiple of k), W_1, W_2: H × H
    frame_conv:   y_t = Σ_j K_j f_t^j + b        (conv1d over time, kernel k, I -> H channels)

With `position_embedding=False` the windows see x_t itself (POPGym with embedding None).

Parallel forms: pos_mlp's positions are the counter plus the steps since the row's start, or
the steps since the last reset; the windows run on every episode as its own row
(`scan_episodes_as_rows`) with the window state in front, [window; e] (B, k - 1 + T, I), by
`unfold` (frame_stack) or conv1d (frame_conv). `step` pushes one frame through the same maps.

No elapsed time in the maths: all three ignore `integration_timesteps` (a position counts
observations). They compute in float32 and float64 only: the step counter is part of the
state, in the model's dtype, and float16 (bfloat16) counts exactly only up to 2048 (256).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .checks import check_int
from .interface import RecurrentMemory, State, scan_episodes_as_rows
from .registry import register


class SinePositionEmbedding(nn.Module):
    """e = (1 - s)·x + s·pe(p) for x (..., size), positions p (...): POPGym's "sine" embedding
    with its learned strength s (`embedding_strength`).

    pe is looked up, as POPGym does, in `table` (max_len, size): pe(0 .. max_len - 1) computed
    once in float64 by `encode` and cast to the module's dtype (a non-persistent buffer; it is
    re-cast from float64 whenever the module is moved or cast, so `.float().double()` keeps the
    float64 values). Positions that are not an integer in [0, max_len) (ours allows any position,
    POPGym's table does not; the laws' random counters are not integers) take `encode` itself.
    The table carries no gradient: positions are step counts; s keeps its gradient."""

    def __init__(self, size: int, max_len: int):
        super().__init__()
        self.size, self.max_len = size, max_len
        self.strength = nn.Parameter(torch.tensor([0.5]))
        self.register_buffer("table", self._table(torch.device("cpu"), torch.get_default_dtype()),
                             persistent=False)

    def encode(self, positions: Tensor) -> Tensor:
        """pe(p): (..., size) for positions (...), by the formula, in the positions' dtype."""
        even = torch.arange(0, self.size, 2, device=positions.device, dtype=positions.dtype)
        frequencies = torch.exp(even * (-math.log(self.max_len) / self.size))
        angles = positions[..., None] * frequencies
        return torch.stack([angles.sin(), angles.cos()], -1).flatten(-2)[..., :self.size]

    def _table(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        """pe(0 .. max_len - 1) (max_len, size): computed in float64, then cast."""
        return self.encode(torch.arange(self.max_len, dtype=torch.float64)).to(device, dtype)

    def _apply(self, fn, recurse=True):
        """Moves and casts as any module, then re-casts the table from float64 (a float32 table
        cast to float64 would keep float32's rounding)."""
        super()._apply(fn, recurse)
        self.table = self._table(self.table.device, self.table.dtype)
        return self

    def lookup(self, positions: Tensor) -> Tensor:
        """pe(p): (..., size) in the table's dtype; table rows for integer p in [0, max_len),
        `encode` elsewhere (computed only when some position is off the table, looked up only
        when some is on it)."""
        index = positions.detach().long().clamp_(0, self.max_len - 1)
        on_table = index == positions
        if bool(on_table.all()):
            return nn.functional.embedding(index, self.table)     # 3-9x table[index] on CPU
        computed = self.encode(positions).to(self.table.dtype)
        if not bool(on_table.any()):
            return computed
        return torch.where(on_table[..., None], nn.functional.embedding(index, self.table),
                           computed)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        self.strength.data.clamp_(0.0, 1.0)           # POPGym's in-place projection
        return torch.lerp(x, self.lookup(positions), self.strength)


class PositionCounter(RecurrentMemory):
    """The step counter {"t": (B, 1)} and the embedding of the cells of this module."""

    dtypes = (torch.float32, torch.float64)

    def _setup_embedding(self, position_embedding: bool, max_len: int) -> None:
        if not isinstance(position_embedding, bool):
            raise ValueError(f"position_embedding must be a bool (True: POPGym's sine "
                             f"embedding), got {position_embedding!r}")
        check_int("max_len", max_len, why=" (the sine embedding's longest period)")
        self.max_len = max_len
        self.embedding = SinePositionEmbedding(self.input_size, max_len) \
            if position_embedding else None

    def _embed(self, x: Tensor, positions: Tensor) -> Tensor:
        return x if self.embedding is None else self.embedding(x, positions)

    def _counter(self, batch_size, device, dtype) -> Tensor:
        return torch.zeros(batch_size, 1, device=device, dtype=dtype)


@register("pos_mlp")
class PosMLP(PositionCounter):
    """POPGym's MLP: a memoryless MLP that sees the step's position in the episode."""

    def __init__(self, input_size: int, hidden_size: int, max_len: int = 1024):
        super().__init__(input_size, hidden_size)
        self._setup_embedding(True, max_len)
        self.net = nn.Sequential(nn.Linear(input_size, hidden_size), nn.LeakyReLU(),
                                 nn.Linear(hidden_size, hidden_size), nn.LeakyReLU())

    def initial_state(self, batch_size, *, device=None, dtype=None) -> State:
        device, dtype = self._defaults(device, dtype)
        return {"t": self._counter(batch_size, device, dtype)}

    def _scan(self, x, state, resets, integration_timesteps, lengths):
        positions = positions_in_episode(state["t"], resets)                    # (B, T)
        y = self.net(self._embed(x, positions))
        after = positions.gather(1, (lengths - 1).clamp(min=0)[:, None]) + 1 \
            if x.shape[1] else state["t"]
        return y, {"t": torch.where((lengths == 0)[:, None], state["t"], after)}

    def _step(self, x_t, state, reset, integration_timestep):
        t = self.reset_state(state, reset)["t"]
        return self.net(self._embed(x_t, t[:, 0])), {"t": t + 1}


def positions_in_episode(counter: Tensor, resets: Tensor) -> Tensor:
    """p (B, T): steps since the last reset at or before t, or counter (B, 1) + t if none."""
    time = torch.arange(resets.shape[1], device=resets.device)
    last_reset = torch.cummax(torch.where(resets, time, -1), dim=1).values
    return torch.where(last_reset >= 0, (time - last_reset).to(counter.dtype), counter + time)


class _FrameWindow(PositionCounter):
    """The window of the last k embedded inputs; subclasses map it: `_map_padded`."""

    def _setup_window(self, stack_size: int, position_embedding: bool, max_len: int) -> None:
        check_int("stack_size", stack_size, why=" (frames in the window)")
        self.stack_size = stack_size
        self._setup_embedding(position_embedding, max_len)

    def _map_padded(self, padded: Tensor) -> Tensor:
        """(B, k - 1 + T, I) frames -> (B, T, H): output t sees padded[:, t : t + k]."""
        raise NotImplementedError

    def initial_state(self, batch_size, *, device=None, dtype=None) -> State:
        device, dtype = self._defaults(device, dtype)
        return {"window": torch.zeros(batch_size, self.stack_size - 1, self.input_size,
                                      device=device, dtype=dtype),
                "t": self._counter(batch_size, device, dtype)}

    def _scan(self, x, state, resets, integration_timesteps, lengths):
        return scan_episodes_as_rows(self._scan_one_episode, self.initial_state, x, state,
                                     resets, integration_timesteps, lengths)

    def _scan_one_episode(self, x, state, integration_timesteps, lengths):
        time = torch.arange(x.shape[1], device=x.device, dtype=x.dtype)
        padded = torch.cat([state["window"], self._embed(x, state["t"] + time)], 1)
        y = self._map_padded(padded)
        kept = lengths[:, None] + torch.arange(self.stack_size - 1, device=x.device)
        window = padded.gather(1, kept[..., None].expand(-1, -1, self.input_size))
        return y, {"window": window, "t": state["t"] + lengths[:, None].to(x.dtype)}

    def _step(self, x_t, state, reset, integration_timestep):
        state = self.reset_state(state, reset)
        padded = torch.cat([state["window"], self._embed(x_t, state["t"][:, 0])[:, None]], 1)
        return self._map_padded(padded)[:, 0], {"window": padded[:, 1:], "t": state["t"] + 1}


@register("frame_stack")
class FrameStack(_FrameWindow):
    """POPGym's Framestack: the last stack_size frames, each compressed to hidden_size /
    stack_size features, concatenated and mapped by a two-layer LeakyReLU MLP."""

    def __init__(self, input_size: int, hidden_size: int, stack_size: int = 4,
                 position_embedding: bool = True, max_len: int = 1024):
        super().__init__(input_size, hidden_size)
        self._setup_window(stack_size, position_embedding, max_len)
        if hidden_size % stack_size:
            raise ValueError(f"hidden_size must be a multiple of stack_size (each of the "
                             f"stack_size frames is compressed to hidden_size / stack_size "
                             f"features), got hidden_size={hidden_size}, "
                             f"stack_size={stack_size}")
        self.compress = nn.Linear(input_size, hidden_size // stack_size)
        self.net = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.LeakyReLU(),
                                 nn.Linear(hidden_size, hidden_size), nn.LeakyReLU())

    def _map_padded(self, padded):
        compressed = self.compress(padded)                       # (B, k - 1 + T, H / k)
        frames = compressed.unfold(1, self.stack_size, 1)        # (B, T, H / k, k)
        return self.net(frames.transpose(-1, -2).flatten(-2))    # oldest frame first


@register("frame_conv")
class FrameConv(_FrameWindow):
    """POPGym's Frameconv: a causal conv1d of kernel stack_size over time, I -> H channels."""

    def __init__(self, input_size: int, hidden_size: int, stack_size: int = 4,
                 position_embedding: bool = True, max_len: int = 1024):
        super().__init__(input_size, hidden_size)
        self._setup_window(stack_size, position_embedding, max_len)
        self.conv = nn.Conv1d(input_size, hidden_size, stack_size)

    def _map_padded(self, padded):
        return self.conv(padded.transpose(1, 2)).transpose(1, 2)
