"""Sums against the powers z^t of diagonal complex decays (a Vandermonde matrix), chunked.

Per channel h, mode n: z (H, n) complex (given as log z), t = 0 .. T-1. Complex tensors are
(Re, Im) pairs (..., 2) throughout; `times` multiplies two of them.

    powers(log_z, k)                      z^k = exp(k·log z)                  -> (H, n, K, 2)
    table = ChunkedPowers(log_z, T, B, dtype)                 z^t for t < T, as two small tables
    table.real_readout(w)                 r_t    = 2·Re Σ_n w_n z_n^t       w (H, n)    -> (H, T)
    table.real_readout(w, v)              r_bt   = 2·Re Σ_n w_n z_n^t v_bn  v (B, H, n) -> (H, B, T)
    table.state_after(w, u, ℓ)            x_b    = Σ_{k<ℓ_b} w_n z_n^k u_b(ℓ_b-1-k)
                                                 (the recurrence x_t = z x_{t-1} + w u_t run from
                                                 zero for ℓ_b steps)   u (H, B, T) -> (B, H, n)
    table.power_at(ℓ)                     z^ℓ_b                                -> (B or 1, H, n)

The Vandermonde matrix V[h, n, t] = z^t (H, n, T), or its product with v (B, H, n, T), is never
built. Time is split as t = c·m + j (c = `chunk_width(B, T)`, M = ceil(T / c) chunks), so
z^t = z^(c·m)·z^j, and two small tables stand for it:

    within[h, n, j] = z^j        j < c        (H, n, c)   in the working dtype
    across[h, n, m] = z^(c·m)    m < M        (H, n, M)   from float64, cast

The coefficients w fold into `within`, and each sum above is one real einsum over the modes
(n, re/im) against `across` (`twice_conj` turns Σ_d a_d·b_d over pairs into 2·Re of a product).
The powers are exp(k·log z), never cumulative products, with a hand-written gradient (`_Powers`)
that keeps no (H, n, K) intermediates.

The `*_reference` functions compute the same by plain loops over t (repeated multiplication by
z, the recurrence written out); tests/test_ops_vandermonde.py holds values and gradients equal.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..lrnn import as_complex


def chunk_width(batch: int, steps: int) -> int:
    """The chunk width c: T (one chunk) when T <= B, else ceil(sqrt(B·T) / 2). The table
    `within` (H, n, c) and the per-chunk terms (B, H, n, M) then stay near H·n·sqrt(B·T)
    entries, never (H, n, T) or (B, H, n, T); the table's entries cost more (powers,
    coefficients, their gradients), hence the half (measured on CPU)."""
    if steps <= batch:
        return max(steps, 1)
    return math.isqrt(batch * steps - 1) // 2 + 1


class ChunkedPowers:
    """z^t for t < T (module docstring) as the tables within (H, n, c, 2) and across
    (H, n, M, 2) in `dtype` (a real dtype; the pairs' components), built for B rows.

    log_z (H, n) complex128: `within` is computed from it in dtype's precision, `across`
    and `power_at` in float64 and cast (the large exponents c·m and ℓ need the precision)."""

    def __init__(self, log_z: Tensor, steps: int, batch: int, dtype: torch.dtype):
        self.log_z, self.steps, self.dtype = log_z, steps, dtype
        self.width = chunk_width(batch, steps)                                  # c
        self.chunks = -(-steps // self.width)                                   # M
        device = log_z.device
        self.within = powers(log_z.to(dtype.to_complex()),
                             torch.arange(self.width, device=device))           # (H, n, c, 2)
        self.across = powers(log_z, torch.arange(self.chunks, device=device)
                             * self.width).to(dtype)                            # (H, n, M, 2)

    def real_readout(self, w: Tensor, v: Tensor | None = None) -> Tensor:
        """2·Re Σ_n w_n z_n^t (v_bn): w (H, n, 2) -> (H, T); with v (B, H, n, 2) -> (H, B, T)."""
        folded = twice_conj(times(w[..., None, :], self.within))                # (H, n, c, 2)
        if v is None:
            readout = torch.einsum("hnmd,hnjd->hmj", self.across, folded)       # (H, M, c)
            return readout.flatten(1)[:, :self.steps]
        # v z^(c·m): the vector at each chunk start (z^0 = 1 when there is one chunk)
        starts = v[..., None, :] if self.chunks == 1 else times(v[..., None, :], self.across)
        readout = torch.einsum("bhnmd,hnjd->hbmj", starts, folded)              # (H, B, M, c)
        return readout.flatten(2)[..., :self.steps]

    def state_after(self, w: Tensor, u: Tensor, lengths: Tensor) -> Tensor:
        """Σ_{k<ℓ} w z^k u_(ℓ-1-k) for ℓ = lengths[b]: w (H, n, 2), u (H, B, T) real ->
        (B, H, n, 2). The inputs are read newest first, inputs[h, b, m, j] = u_(ℓ-1-k) for
        k = c·m + j < ℓ, else 0; when every row ends at T, oldest first against the reversed
        tables instead (u_i meets z^(T-1-i) after M·c - T zeros in front: no copy of u when
        c divides T)."""
        channels, batch, steps = u.shape
        width, chunks = self.width, self.chunks
        within, across = self.within, self.across
        if bool((lengths == steps).all()):
            inputs = F.pad(u, (chunks * width - steps, 0)) if steps % width else u
            within, across = within.flip(2), across.flip(2)
        else:
            before_end = (lengths - 1)[:, None] - torch.arange(chunks * width, device=u.device)
            inputs = u.gather(2, before_end.clamp(min=0).expand(channels, -1, -1))
            inputs = inputs * (before_end >= 0)
        inputs = inputs.view(channels, batch, chunks, width)
        per_chunk = torch.einsum("hbmj,hnjd->bhnmd", inputs, times(w[..., None, :], within))
        return per_chunk[..., 0, :] if chunks == 1 else times(across, per_chunk).sum(-2)

    def power_at(self, lengths: Tensor) -> Tensor:
        """z^ℓ for ℓ = lengths[b]: (B, H, n, 2), or (1, H, n, 2) when every row has one ℓ."""
        ends, row_end = lengths.unique(return_inverse=True)
        power = powers(self.log_z, ends).to(self.dtype).permute(2, 0, 1, 3)     # (E, H, n, 2)
        return power[row_end] if len(ends) > 1 else power


def times(a: Tensor, b: Tensor) -> Tensor:
    """The complex product of (Re, Im) pairs a (..., 2) and b (..., 2), broadcast, as pairs:
    one elementwise complex multiply on views (no copies of either operand)."""
    return torch.view_as_real(as_complex(a) * as_complex(b))


def twice_conj(pairs: Tensor) -> Tensor:
    """(Re, Im) pairs of w -> those of 2·conj(w), so that for pairs a
    Σ_d a[..., d]·twice_conj(w)[..., d] = 2·Re(a·w): a real einsum over (n, d) sums 2·Re."""
    return pairs * pairs.new_tensor([2.0, -2.0])


def powers(log_z: Tensor, exponents: Tensor) -> Tensor:
    """z^k = exp(k·log z) as (Re, Im) pairs: log z (H, n) complex, k (K,) real -> (H, n, K, 2)
    in log z's precision. No cumulative products; the gradient is Σ_k k·G_k·conj(z^k)
    (`_Powers`), with no (H, n, K) intermediates kept beyond the result."""
    return _Powers.apply(log_z, exponents.to(device=log_z.device, dtype=log_z.real.dtype))


class _Powers(torch.autograd.Function):
    @staticmethod
    def forward(ctx, log_z: Tensor, exponents: Tensor) -> Tensor:
        magnitude = torch.exp(log_z.real[..., None] * exponents)
        pairs = torch.view_as_real(torch.polar(magnitude, log_z.imag[..., None] * exponents))
        ctx.save_for_backward(pairs, exponents)
        return pairs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        pairs, exponents = ctx.saved_tensors
        weighted = torch.view_as_complex(grad.contiguous()) * exponents
        return (weighted * torch.view_as_complex(pairs).conj()).sum(-1), None


# ---------------------------------------------------------------------- references (tests)
def powers_reference(log_z: Tensor, exponents: Tensor) -> Tensor:
    """`powers` by torch.exp and autograd."""
    return torch.view_as_real(torch.exp(log_z[..., None] * exponents.to(log_z.real.dtype)))


def real_readout_reference(log_z: Tensor, w: Tensor, steps: int,
                           v: Tensor | None = None) -> Tensor:
    """`ChunkedPowers.real_readout` by a loop over t: z^t by repeated multiplication."""
    z, w = torch.exp(log_z), torch.view_as_complex(w)                          # (H, n)
    v = None if v is None else torch.view_as_complex(v)                        # (B, H, n)
    power, outputs = torch.ones_like(z), []
    for _ in range(steps):
        term = w * power if v is None else w * power * v
        outputs.append(2 * term.sum(-1).real)                                  # (H,) / (B, H)
        power = power * z
    readout = torch.stack(outputs, -1)                                         # (H, T) / (B, H, T)
    return readout if v is None else readout.transpose(0, 1)


def state_after_reference(log_z: Tensor, w: Tensor, u: Tensor, lengths: Tensor) -> Tensor:
    """`ChunkedPowers.state_after` by the recurrence x_t = z x_{t-1} + w u_t, a loop over
    t < ℓ_b from x_{-1} = 0: log_z (H, n), w (H, n, 2), u (H, B, T) -> (B, H, n, 2)."""
    z, w = torch.exp(log_z), torch.view_as_complex(w)
    x = torch.zeros(u.shape[1], *z.shape, dtype=z.dtype, device=z.device)     # (B, H, n)
    for t in range(u.shape[2]):
        stepped = z * x + w * u[:, :, t].T[..., None]
        x = torch.where((t < lengths)[:, None, None], stepped, x)
    return torch.view_as_real(x)


def power_at_reference(log_z: Tensor, lengths: Tensor) -> Tensor:
    """`ChunkedPowers.power_at` for every row by repeated multiplication: (B, H, n, 2)."""
    z = torch.exp(log_z)
    power, by_row = torch.ones_like(z), []
    for ell in range(int(lengths.max()) + 1 if len(lengths) else 0):
        by_row.append(power)
        power = power * z
    return torch.view_as_real(torch.stack([by_row[ell] for ell in lengths.tolist()]))
