"""Fast-weight memories: POPGym's FastWeightProgrammer ("fwp") and LinearAttention
("linear_attention", "FART"), with their sine position embedding, as cells with explicit state.

Both are one linear-transformer block read recurrently: a matrix memory S is written with an
outer product of a key and a value at every step and read with a query. Shared skeleton
(x_t (input_size,) the cell's input, p_t its position in the episode, 0 at the first
observation):

    e_t = (1 - s)·x_t + s·pe(p_t)     POPGym's sine embedding, windows.SinePositionEmbedding
                                      (e_t = x_t with position_embedding=False)
    n_t = LayerNorm(e_t)                                                         (input_size,)
    k_t, q_t, v_t = f(W_k n_t), f(W_q n_t), W_v n_t                              (K,) each
    o_t = read(S_t, q_t)                                                         (K,)
    y_t = W_unmap (FF(o_t) + W_shortcut n_t) + b_unmap                           (hidden_size,)

FF = Linear-ReLU-Linear-ReLU (K -> K), W_shortcut (K x input_size) with bias, W_k, W_q, W_v
without bias: POPGym's block with its defaults feed_forward=True, residual=True, then its
model's `unmap`.

fwp (Schlag et al. 2021; POPGym's FWPBlock), K = key_size, default round(sqrt(hidden_size)):
    k_t = ReLU(W_k n_t), q_t = ReLU(W_q n_t); with sum_normalization k_t /= 1e-5 + Σ_j k_t[j]
    (q_t likewise)
    S_t = S_{t-1} + v_t k_tᵀ      (aggregator "sum";  "max": S_t = max(S_{t-1}, v_t k_tᵀ))
    o_t = S_t q_t                                                   S (K, K), S[i, j] ~ v_i k_j

linear_attention (Katharopoulos et al. 2020; POPGym's LinearAttentionBlock), K = key_size,
default round(sqrt(hidden_size) - 1), φ(a) = elu(a) + 1 > 0:
    k_t = φ(W_k n_t), q_t = φ(W_q n_t)
    S_t = S_{t-1} + k_t v_tᵀ,   z_t = z_{t-1} + k_t      (S_aggregator / Z_aggregator "sum";
                                                           "max": elementwise running max)
    o_t = (q_tᵀ S_t) / (q_tᵀ z_t + 1e-5)                 S (K, K), S[i, l] ~ k_i v_l;  z (K,)

The normalizer is the inner product q_tᵀ z_t of the paper. popgym 1.0.7 ships that form too:
its linear_attention.py is upstream's after PR #36 (July 2024), the fix of issue #35; popgym
releases before that fix computed einsum("bti, btl -> bt", q, z) = (Σ_i q_i)(Σ_l z_l), the sum
of the outer product.

State (B leading): "S" (B, K, K) [, "z" (B, K)], "t" (B, 1) the number of observations the
episode has had (a float; p_t = t before x_t). The initial state is zero; a reset makes it
zero again before x_t.

Parallel form: where every memory is a sum (the default aggregators), the reads o_t are causal
linear attention and come chunk by chunk (`ops.running_sum.chunked_linear_attention`): within
64 steps (q kᵀ ⊙ causal same-episode mask) v, plus q times the memory carried into the chunk;
only one memory per chunk is formed, never S_t at every step. fwp's S q is that read of Sᵀ =
Σ k vᵀ; linear_attention's [qᵀ S, qᵀ z] is the read of the one memory [S, z] = Σ k [v, 1]ᵀ.
Otherwise (a "max" aggregator) every memory is a running sum or max over the episode: the
resettable cumulative sum `ops.running_sum.cumulative_sum` (`ops.scan.linear_scan` with decay
a_t = 1: its reset rule, a zero decay, is the episode start; past `lengths` the element is the
identity), or the resettable cumulative max (`cumulative_max`: every episode repacked into its
own row by `scan_episodes_as_rows`, then torch.cummax). Positions are
windows.positions_in_episode. Implementation options (tests and benchmarks, not model
choices): `scan_impl="cumulative"` forms every S_t by the running sums also for sums (the
chunked read's reference), `scan_impl="sequential"` runs the reference loops.

Neither cell has a notion of elapsed time: `integration_timesteps` is accepted and ignored
(p_t counts observations, not time).

Where these differ from POPGym's models, deliberately:
- the embedding is part of the cell and mixed into the cell's input; POPGym's BaseModel mixes
  it into the LayerNorm output of its feature map, before its preprocessor;
- pe is computed for any position (POPGym looks p up in a table of max_seq_len rows and fails
  past it) and for odd input sizes (cut to input_size; POPGym's table cannot be built);
- the returned state is the one after `lengths[b]` steps (POPGym returns the state after the
  padded T steps) and resets inside a sequence are exact;
- POPGym clamps each chunk's cumulative sum to ±1e20 before adding the carried state; that
  clamp depends on where sequences are cut, so it is left out (it never acts below 1e20).
- key_size is a keyword (POPGym's ray models derive it from hidden_size; None, the default,
  does the same). The embedding strength is projected onto [0, 1] in place before use, as
  POPGym does (windows.SinePositionEmbedding).

Computes in float32 and float64 only, as windows.py's cells: the state carries the episode's
step counter as a float, and float16 / bfloat16 count exactly only up to 2048 / 256 (then
n + 1 rounds to n and the position stops). The normalizers themselves (1e-5 + Σk, q·z + 1e-5
with φ > 0) are not what rules half precision out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import check_int
from .interface import State, scan_episodes_as_rows
from .ops.running_sum import (chunked_linear_attention, cumulative_sum,
                                cumulative_sum_sequential)
from .registry import register
from .windows import PositionCounter, positions_in_episode

NORMALIZER_EPSILON = 1e-5           # POPGym's 1e-5 in the sum normalization and q·z + 1e-5


# ---------------------------------------------------------------------- running sums and maxima
def cumulative_max(values: Tensor, initial: Tensor, resets: Tensor | None = None,
                   lengths: Tensor | None = None) -> Tensor:
    """s_t = max(s_{t-1}, v_t) elementwise for values (B, T, *F) from s_{-1} = initial (B, *F);
    a reset at t makes s_{t-1} zero (the initial state); past lengths[b] s holds.

    Steps past the length become -inf (they change no maximum) and lose their resets; every
    episode is then its own row (`scan_episodes_as_rows`) and s = max(s_{-1}, cummax(v))."""
    batch, steps = values.shape[:2]
    if steps == 0:
        return values
    flat = values.flatten(2)                                                    # (B, T, F)
    if resets is None:
        resets = torch.zeros(batch, steps, dtype=torch.bool, device=values.device)
    if lengths is None:
        lengths = torch.full((batch,), steps, dtype=torch.long, device=values.device)
    valid = torch.arange(steps, device=values.device) < lengths[:, None]         # (B, T)
    flat = flat.masked_fill(~valid[..., None], -math.inf)
    resets = resets & valid

    def running_max(x, state, _timesteps, _lengths):
        s = torch.maximum(x.cummax(dim=1).values, state["s"][:, None])
        return s, {"s": s[:, -1]}

    def zeros(rows, *, device=None, dtype=None):
        return {"s": torch.zeros(rows, flat.shape[-1], device=device, dtype=dtype)}

    states, _ = scan_episodes_as_rows(running_max, zeros, flat, {"s": initial.flatten(1)},
                                      resets, flat.new_ones(batch, steps), lengths)
    return states.view_as(values)


def cumulative_max_sequential(values: Tensor, initial: Tensor, resets: Tensor | None = None,
                              lengths: Tensor | None = None) -> Tensor:
    """`cumulative_max` by a loop over t, with resets and lengths applied literally."""
    states, s = [], initial
    for t, v_t in enumerate(values.unbind(1)):
        before = s
        if resets is not None:
            before = torch.where(_expand(resets[:, t], s), torch.zeros_like(s), s)
        new = torch.maximum(before, v_t)
        if lengths is not None:                        # past the length nothing happens
            new = torch.where(_expand(t < lengths, s), new, s)
        s = new
        states.append(s)
    return torch.stack(states, dim=1) if states else values


AGGREGATORS = ("sum", "max")
ACCUMULATE = {"parallel": {"sum": cumulative_sum, "max": cumulative_max},
              "cumulative": {"sum": cumulative_sum, "max": cumulative_max},
              "sequential": {"sum": cumulative_sum_sequential, "max": cumulative_max_sequential}}
STEP = {"sum": torch.add, "max": torch.maximum}        # one step of each aggregator


def _expand(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(*mask.shape, *([1] * (like.ndim - mask.ndim)))


def _check_choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


# ---------------------------------------------------------------------- the shared block
class _FastWeightBlock(PositionCounter):
    """The skeleton of the module docstring: embedding, LayerNorm, key/query/value, memories
    written by aggregators, read-out, FF + shortcut, unmap. Subclasses give the feature maps
    (`_feature_maps`), the memories (`memory_shapes`, `aggregator_of`, `_writes`) and the
    read-out (`_read`)."""

    implementation_options = ("scan_impl",)

    def __init__(self, input_size: int, hidden_size: int, key_size: int,
                 aggregators: dict[str, str], position_embedding: bool, max_len: int,
                 scan_impl: str):
        super().__init__(input_size, hidden_size)
        self._setup_embedding(position_embedding, max_len)
        for name, aggregator in aggregators.items():
            _check_choice(name, aggregator, AGGREGATORS)
        _check_choice("scan_impl", scan_impl, tuple(ACCUMULATE))
        self.key_size, self.scan_impl = key_size, scan_impl
        self.norm = nn.LayerNorm(input_size)
        self.key = nn.Linear(input_size, key_size, bias=False)
        self.query = nn.Linear(input_size, key_size, bias=False)
        self.value = nn.Linear(input_size, key_size, bias=False)
        self.ff = nn.Sequential(nn.Linear(key_size, key_size), nn.ReLU(),
                                nn.Linear(key_size, key_size), nn.ReLU())
        self.shortcut = nn.Linear(input_size, key_size)
        self.unmap = nn.Linear(key_size, hidden_size)

    # ------------------------------------------------------------------ to implement
    def memory_shapes(self) -> dict[str, tuple[int, ...]]:
        """state key -> per-row shape of each memory, e.g. {"S": (K, K)}."""
        raise NotImplementedError

    def aggregator_of(self, key: str) -> str:
        """"sum" or "max": how the memory `key` accumulates its writes."""
        raise NotImplementedError

    def _feature_maps(self, key_query: Tensor) -> tuple[Tensor, Tensor]:
        """k, q (..., K) from [W_k n, W_q n] (..., 2K) (one feature map call for both)."""
        raise NotImplementedError

    def _writes(self, k: Tensor, v: Tensor) -> dict[str, Tensor]:
        """The term each memory accumulates at one step, (..., *memory_shapes()[key])."""
        raise NotImplementedError

    def _read(self, q: Tensor, memories: dict[str, Tensor]) -> Tensor:
        """o (..., K) from the query and the memories after the step."""
        raise NotImplementedError

    def _chunked_read(self, q: Tensor, k: Tensor, v: Tensor, state: State, resets: Tensor,
                      lengths: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """With every memory a sum: o (B, T, K) of `_read` at every step and the memories
        after lengths[b] steps, by ops.running_sum.chunked_linear_attention (no S_t formed)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the block
    def _inputs(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """W_shortcut n + b_shortcut, k, q, v (..., K) for inputs x (..., input_size) at
        positions p (...). The four projections of n are one matmul with the four weights
        stacked (K = 16 rows each would leave the matmuls, and their gradients above all,
        narrow and slow)."""
        normalized = self.norm(self._embed(x, positions))
        K = self.key_size
        weight = torch.cat([self.key.weight, self.query.weight, self.value.weight,
                            self.shortcut.weight])                           # (4K, input_size)
        bias = torch.cat([self.shortcut.bias.new_zeros(3 * K), self.shortcut.bias])
        key_query, v, shortcut = F.linear(normalized, weight, bias).split([2 * K, K, K], -1)
        k, q = self._feature_maps(key_query)
        return shortcut, k, q, v

    def _output(self, o: Tensor, shortcut: Tensor) -> Tensor:
        return self.unmap(self.ff(o) + shortcut)

    # ------------------------------------------------------------------ interface
    def initial_state(self, batch_size, *, device=None, dtype=None) -> State:
        device, dtype = self._defaults(device, dtype)
        state = {key: torch.zeros(batch_size, *shape, device=device, dtype=dtype)
                 for key, shape in self.memory_shapes().items()}
        return {**state, "t": self._counter(batch_size, device, dtype)}

    def _scan(self, x, state, resets, integration_timesteps, lengths):
        if x.shape[1] == 0:
            return x.new_zeros(x.shape[0], 0, self.hidden_size), dict(state)
        positions = positions_in_episode(state["t"], resets)                      # (B, T)
        shortcut, k, q, v = self._inputs(x, positions)
        if self.scan_impl == "parallel" and all(self.aggregator_of(key) == "sum"
                                                for key in self.memory_shapes()):
            o, final = self._chunked_read(q, k, v, state, resets, lengths)
        else:
            accumulate = ACCUMULATE[self.scan_impl]
            memories = {key: accumulate[self.aggregator_of(key)](write, state[key], resets,
                                                                 lengths)
                        for key, write in self._writes(k, v).items()}             # (B, T, ...)
            o, final = self._read(q, memories), {key: m[:, -1] for key, m in memories.items()}
        y = self._output(o, shortcut)
        after = positions.gather(1, (lengths - 1).clamp(min=0)[:, None]) + 1     # (B, 1)
        counter = torch.where((lengths == 0)[:, None], state["t"], after)
        return y, {**final, "t": counter}

    def _step(self, x_t, state, reset, integration_timestep):
        state = self.reset_state(state, reset)
        shortcut, k, q, v = self._inputs(x_t, state["t"][:, 0])
        memories = {key: STEP[self.aggregator_of(key)](state[key], write)
                    for key, write in self._writes(k, v).items()}
        return self._output(self._read(q, memories), shortcut), {**memories,
                                                                     "t": state["t"] + 1}


# ---------------------------------------------------------------------- the two cells
@register("fwp")
class FastWeightProgrammer(_FastWeightBlock):
    """POPGym's FastWeightProgrammer: fast weights S_t = S_{t-1} + v_t k_tᵀ (or a running
    max), read S_t q_t; key size K = key_size, by default POPGym's round(sqrt(hidden_size)).
    See the module docstring."""

    def __init__(self, input_size: int, hidden_size: int, key_size: int | None = None,
                 aggregator: str = "sum", sum_normalization: bool = True,
                 position_embedding: bool = True, max_len: int = 1024,
                 scan_impl: str = "parallel"):
        if not isinstance(sum_normalization, bool):
            raise ValueError(f"sum_normalization must be True or False, "
                             f"got {sum_normalization!r}")
        if key_size is None:                          # POPGym's FastWeightProgrammer
            check_int("hidden_size", hidden_size)
            key_size = round(math.sqrt(hidden_size))
        check_int("key_size", key_size, why=" (or None: round(sqrt(hidden_size)))")
        super().__init__(input_size, hidden_size, key_size, {"aggregator": aggregator},
                         position_embedding, max_len, scan_impl)
        self.aggregator, self.sum_normalization = aggregator, sum_normalization

    def memory_shapes(self):
        return {"S": (self.key_size, self.key_size)}

    def aggregator_of(self, key):
        return self.aggregator

    def _feature_maps(self, key_query):
        kq = F.relu(key_query).unflatten(-1, (2, self.key_size))                 # (..., 2, K)
        if self.sum_normalization:
            kq = kq / (NORMALIZER_EPSILON + kq.sum(-1, keepdim=True))
        return kq.unbind(-2)

    def _writes(self, k, v):
        return {"S": v[..., :, None] * k[..., None, :]}                       # v kᵀ

    def _read(self, q, memories):
        return (memories["S"] @ q[..., None])[..., 0]                          # S q

    def _chunked_read(self, q, k, v, state, resets, lengths):
        # S q = (qᵀ Sᵀ)ᵀ with Sᵀ = Σ k vᵀ: the op's memory is Sᵀ
        o, S_transposed = chunked_linear_attention(q, k, v, state["S"].transpose(-1, -2),
                                                   resets, lengths)
        return o, {"S": S_transposed.transpose(-1, -2).contiguous()}


@register("linear_attention")
class LinearAttention(_FastWeightBlock):
    """POPGym's LinearAttention ("FART"): S_t = S_{t-1} + φ(k_t) v_tᵀ, z_t = z_{t-1} + φ(k_t),
    o_t = φ(q_t)ᵀ S_t / (φ(q_t)ᵀ z_t + 1e-5), φ = elu + 1; key size K = key_size, by default
    POPGym's round(sqrt(hidden_size) - 1) (then hidden_size >= 3). The normalizer is the inner
    product (module docstring)."""

    def __init__(self, input_size: int, hidden_size: int, key_size: int | None = None,
                 S_aggregator: str = "sum", Z_aggregator: str = "sum",
                 position_embedding: bool = True, max_len: int = 1024,
                 scan_impl: str = "parallel"):
        if key_size is None:                          # POPGym's LinearAttention
            check_int("hidden_size", hidden_size, minimum=3,
                      why=" (with key_size=None the key size is round(sqrt(hidden_size) - 1), "
                          "which must be >= 1)")
            key_size = round(math.sqrt(hidden_size) - 1)
        check_int("key_size", key_size, why=" (or None: round(sqrt(hidden_size) - 1))")
        super().__init__(input_size, hidden_size, key_size,
                         {"S_aggregator": S_aggregator, "Z_aggregator": Z_aggregator},
                         position_embedding, max_len, scan_impl)
        self.S_aggregator, self.Z_aggregator = S_aggregator, Z_aggregator

    def memory_shapes(self):
        return {"S": (self.key_size, self.key_size), "z": (self.key_size,)}

    def aggregator_of(self, key):
        return self.S_aggregator if key == "S" else self.Z_aggregator

    def _feature_maps(self, key_query):
        return (F.elu(key_query) + 1).split(self.key_size, -1)

    def _writes(self, k, v):
        return {"S": k[..., :, None] * v[..., None, :], "z": k}               # k vᵀ, k

    def _read(self, q, memories):
        return normalized_read((q[..., None, :] @ memories["S"])[..., 0, :],     # qᵀ S
                               (q * memories["z"]).sum(-1, keepdim=True))       # qᵀ z

    def _chunked_read(self, q, k, v, state, resets, lengths):
        # [S, z] = Σ k [v, 1]ᵀ is one memory (K, K + 1); its read is [qᵀ S, qᵀ z]
        ones = v.new_ones(*v.shape[:-1], 1)
        joint = torch.cat([state["S"], state["z"][..., None]], -1)
        reads, final = chunked_linear_attention(q, k, torch.cat([v, ones], -1), joint, resets,
                                                lengths)
        read_S, read_z = reads.split([self.key_size, 1], -1)
        return normalized_read(read_S, read_z), {"S": final[..., :-1].contiguous(),
                                                 "z": final[..., -1].contiguous()}


def normalized_read(read_S: Tensor, read_z: Tensor) -> Tensor:
    """o = qᵀ S / (qᵀ z + 1e-5) from the reads qᵀ S (..., K) and qᵀ z (..., 1)."""
    return read_S / (read_z + NORMALIZER_EPSILON)
