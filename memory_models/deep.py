"""DeepMemory: N residual blocks of any memory cell, `make(name, layers=N)` for every name.

Block i (i = 0 .. N-1) maps its input h_{i-1} (h_{-1} = x) through its own cell, a gated
linear mix, a residual add and a LayerNorm:

    u_i      = cell_i(h_{i-1})                              (B, T, H)   the cell's outputs
    [a; g]   = W_i GELU(u_i) + b_i,  W_i (2H × H)           (B, T, 2H)
    m_i      = a ⊙ σ(g)                                     (B, T, H)   GLU
    h_i      = LayerNorm_i(m_i + R_i h_{i-1})               (B, T, H)   affine LayerNorm
    y        = h_{N-1}                                      (B, T, H)

cell_0 maps input_size I -> hidden_size H, the others H -> H. R_i is the identity, except
R_0 = a learned linear projection (H × I, no bias) when I != H. The N cells are built from one
registered name with the same keywords.

This is the sequence layer of S5's PPO agent in popjaxrl (its `full_glu` activation: GELU,
then a Dense product gated by σ of another Dense; two Dense maps of H -> H are one
Linear(H, 2H) here) and of memax's stacked models, with two differences stated: popjaxrl
normalises before the SSM (pre-norm) and widens the observation with an encoder in front of
the stack so every block is H -> H; here the block is post-norm (LayerNorm after the residual
add, as the block order [cell, GLU, add, LayerNorm] says) and the first block's residual
takes the projection R_0 in place of the encoder (the policy's own pre-layers stay in front).

State: every block's state under the block's index, "{i}.{key}" (e.g. "0.h", "1.h" for two
GRU blocks; {} for a memoryless cell). `scan` and `step` pass the same resets,
integration_timesteps and lengths to every block, so each block resets, integrates elapsed
time and stops its state at the same steps as the plain cell would.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .interface import FLOAT_DTYPES, RecurrentMemory, State


class ResidualBlock(nn.Module):
    """One block: h = LayerNorm(GLU(mix(GELU(cell(x)))) + residual(x)), see the module doc."""

    def __init__(self, cell: RecurrentMemory):
        super().__init__()
        self.cell = cell
        hidden = cell.hidden_size
        self.mix = nn.Linear(hidden, 2 * hidden)                 # W_i, b_i: [a; g]
        self.norm = nn.LayerNorm(hidden)
        self.residual = (nn.Identity() if cell.input_size == hidden
                         else nn.Linear(cell.input_size, hidden, bias=False))    # R_i

    def output(self, u: Tensor, x: Tensor) -> Tensor:
        """h from the cell's outputs u (..., H) and the block's input x (..., input_size)."""
        mixed = F.glu(self.mix(F.gelu(u)), dim=-1)              # a ⊙ σ(g)
        return self.norm(mixed + self.residual(x))


class DeepMemory(RecurrentMemory):
    """N residual blocks of memory cells (module doc); built by `make(name, layers=N)`."""

    def __init__(self, cells: Sequence[RecurrentMemory]):
        if not cells:
            raise ValueError("DeepMemory needs at least one cell")
        super().__init__(cells[0].input_size, cells[-1].hidden_size)
        for i, (before, cell) in enumerate(zip(cells[:-1], cells[1:]), start=1):
            if cell.input_size != before.hidden_size:
                raise ValueError(f"cell {i} takes input_size {cell.input_size}, but cell {i - 1} "
                                 f"gives hidden_size {before.hidden_size}")
        self.blocks = nn.ModuleList(ResidualBlock(cell) for cell in cells)
        self.dtypes = tuple(d for d in FLOAT_DTYPES if all(d in c.dtypes for c in cells))
        self.elapsed_time = any(c.elapsed_time for c in cells)

    @classmethod
    def stack(cls, cell_class: type[RecurrentMemory], layers: int, input_size: int,
              hidden_size: int, **kwargs) -> DeepMemory:
        """`layers` cells of `cell_class` (first input_size -> hidden_size, then hidden ->
        hidden), each built with `kwargs`, in residual blocks."""
        return cls([cell_class(input_size=input_size if i == 0 else hidden_size,
                               hidden_size=hidden_size, **kwargs) for i in range(layers)])

    @property
    def layers(self) -> int:
        return len(self.blocks)

    def initial_state(self, batch_size: int, *, device=None, dtype=None) -> State:
        return {f"{i}.{key}": value
                for i, block in enumerate(self.blocks)
                for key, value in block.cell.initial_state(batch_size, device=device,
                                                           dtype=dtype).items()}

    def _block_states(self, state: State) -> list[State]:
        """The prefixed state (keys "{i}.{key}") -> one state per block."""
        states: list[State] = [{} for _ in self.blocks]
        for name, value in state.items():
            index, _, key = name.partition(".")
            states[int(index)][key] = value
        return states

    def _scan(self, x: Tensor, state: State, resets: Tensor, integration_timesteps: Tensor,
              lengths: Tensor) -> tuple[Tensor, State]:
        h, new_state = x, {}
        for i, (block, block_state) in enumerate(zip(self.blocks, self._block_states(state))):
            u, block_state = block.cell._scan(h, block_state, resets, integration_timesteps,
                                              lengths)
            h = block.output(u, h)
            new_state.update({f"{i}.{key}": value for key, value in block_state.items()})
        return h, new_state

    def _step(self, x_t: Tensor, state: State, reset: Tensor,
              integration_timestep: Tensor) -> tuple[Tensor, State]:
        h, new_state = x_t, {}
        for i, (block, block_state) in enumerate(zip(self.blocks, self._block_states(state))):
            u, block_state = block.cell._step(h, block_state, reset, integration_timestep)
            h = block.output(u, h)
            new_state.update({f"{i}.{key}": value for key, value in block_state.items()})
        return h, new_state
