"""Abstract linear recurrent networks: the LRNN / LTI_LRNN / LTV_LRNN class API.

    LRNN(discretization)   a linear recurrence s_k = A_bar s_{k-1} + B_bar u_k, y_k = C s_k + D u_k
    └── CachedStepLRNN     + step(x, inference_cache), allocate_inference_cache (abstract)
        ├── LTI_LRNN       A_bar, B_bar fixed over time: trainable as a convolution (FFT)
        └── LTV_LRNN       A_bar, B_bar change with time (Δt_k, input): trainable by a scan

`discretization` names a function of `memory_models.discretization.DISCRETIZATIONS`, stored as
`discretize_fn` (None for None: the model discretizes by itself). Each class lists the names
it accepts in `discretizations`; `check_discretization` is the one check of the argument.

The concrete cells (S4D, EventSSM) are also `RecurrentMemory`s, and two contracts name their
`step`: the LRNN API's `step(x, inference_cache) -> (y, inference_cache)` and the interface's
`step(x_t, state, *, reset=None, integration_timestep=None) -> (y_t, new_state)`. Both are
one method, `InferenceCacheStep.step`, and differ only in where the step matrices come from
and where the new state goes:

- a state dict (from `initial_state`): the matrices from the current parameters
  (`step_matrices`); a new state dict is returned.
- an `InferenceCache` (from `allocate_inference_cache`): a dict of the state entries plus the
  matrices computed once at allocation (`cache_matrix_keys`), a snapshot of the parameters
  (allocate a new cache after they change); the new state is written into the cache, which
  is returned.

The constructors are cooperative: `LRNN.__init__(discretization, **kwargs)` passes the other
keywords on along the MRO, so `class Cell(InferenceCacheStep, LTI_LRNN, RecurrentMemory)`
initialises both with
`super().__init__(discretization=..., input_size=..., hidden_size=...)`.
"""

from __future__ import annotations

import abc
from typing import Any

import torch
from torch import Tensor, nn

from .checks import check_int
from .derived import ParameterDerived
from .discretization import DISCRETIZATIONS
from .interface import RecurrentMemory, State

ALLOWED = (*DISCRETIZATIONS, None)


class LRNN(nn.Module, abc.ABC):
    """Base of every linear recurrent network; abstract (`forward` must be implemented)."""

    discretizations: tuple[str | None, ...] = ALLOWED        # the ones this class accepts

    def __init__(self, discretization: str | None, **kwargs):
        check_discretization(type(self), discretization)
        super().__init__(**kwargs)
        self.discretization = discretization
        self.discretize_fn = None if discretization is None else DISCRETIZATIONS[discretization]

    @abc.abstractmethod
    def forward(self, x: Tensor, integration_timesteps: Tensor | None = None,
                lengths: Tensor | None = None) -> Tensor:
        """x (B, L, H_in) -> y (B, L, H_out), from the initial state."""


class CachedStepLRNN(LRNN):
    """An LRNN that also runs one step at a time from an inference cache; abstract."""

    @abc.abstractmethod
    def step(self, x: Tensor, inference_cache: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        """One step from an inference cache; see the module docstring for the two contracts."""

    @abc.abstractmethod
    def allocate_inference_cache(self, batch_size: int, max_seqlen: int = 1,
                                 dtype=None) -> dict[str, Any]:
        """Initial state plus the time-invariant matrices `step` needs, computed once."""


class LTI_LRNN(CachedStepLRNN):
    """Linear time-invariant LRNN: one (A_bar, B_bar, C) for every step. No 'async'."""

    discretizations = tuple(d for d in ALLOWED if d != "async")

    @abc.abstractmethod
    def discretize(self) -> tuple[Tensor, Tensor | float, Tensor]:
        """The discrete (A_bar, B_bar, C) from the learned continuous parameters and step."""

    @abc.abstractmethod
    def compute_kernel(self, *args) -> tuple[Tensor, Tensor]:
        """(K, B_norm): K the powers A_bar^0 .. A_bar^(L-1), B_norm the discrete input matrix."""


class LTV_LRNN(CachedStepLRNN):
    """Linear time-varying LRNN: A_bar_k, B_bar_k depend on Δt_k (and maybe on the input)."""


class InferenceCache(dict):
    """The LRNN API's inference cache: a dict of the state entries (as `initial_state`) and
    the step matrices under `matrix_keys`. `step` updates the state entries in place."""

    def __init__(self, state: State, matrices: dict[str, Tensor]):
        super().__init__(state)
        self.update(matrices)
        self.matrix_keys = tuple(matrices)

    def state(self) -> State:
        return {k: v for k, v in self.items() if k not in self.matrix_keys}

    def matrices(self) -> tuple[Tensor, ...]:
        return tuple(self[k] for k in self.matrix_keys)


class InferenceCacheStep(ParameterDerived):
    """The dual-API `step` of the concrete LRNN cells (module docstring), written once.

    Mixed into a `RecurrentMemory` LRNN cell, which provides

        cache_matrix_keys                     names of the matrices an inference cache holds
        compute_step_matrices() -> tuple      those matrices, from the current parameters
        _recurrence(x_t, state, integration_timestep, matrices) -> (y_t, new state)
                                              one step on a state that is already reset
    """

    cache_matrix_keys: tuple[str, ...]

    def step_matrices(self) -> tuple[Tensor, ...]:
        """compute_step_matrices(); without autograd (rollouts) the result is reused for as
        long as no parameter was replaced or updated in place (derived.ParameterDerived)."""
        return self.derived(self.compute_step_matrices)

    def _step(self, x_t: Tensor, state: State, reset: Tensor, integration_timestep: Tensor,
              matrices: tuple[Tensor, ...] | None = None):
        """One step on checked arguments with `matrices` (None: `step_matrices()`)."""
        if matrices is None:
            matrices = self.step_matrices()
        return self._recurrence(x_t, self.reset_state(state, reset), integration_timestep,
                                matrices)

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int = 1,
                                 dtype=None) -> InferenceCache:
        """The zero state (`initial_state`) plus the step matrices under `cache_matrix_keys`.

        max_seqlen is unused (the cached matrices do not depend on time). The matrices are a
        snapshot of the parameters: allocate again after they change.
        """
        return InferenceCache(self.initial_state(batch_size, dtype=dtype),
                              dict(zip(self.cache_matrix_keys, self.step_matrices())))

    def step(self, x_t: Tensor, state: State | InferenceCache, *, reset: Tensor | None = None,
             integration_timestep: Tensor | None = None):
        """One observation x_t (B, input_size), by either contract (module docstring):

        step(x_t, state, ...)           -> (y_t, new state dict)    state from initial_state
        step(x_t, inference_cache, ...) -> (y_t, the cache updated)  allocate_inference_cache
        """
        cache = state if isinstance(state, InferenceCache) else None
        current = state if cache is None else cache.state()
        reset, integration_timestep = self._check_step_args(x_t, current, reset,
                                                            integration_timestep)
        y, new_state = self._step(x_t, current, reset, integration_timestep,
                                  None if cache is None else cache.matrices())
        if cache is None:
            return y, new_state
        cache.update(new_state)
        return y, cache


# ---------------------------------------------------------------------- constructor checks
def check_discretization(model: type[LRNN], discretization) -> None:
    """The one check of a `discretization` argument: a name of DISCRETIZATIONS (or None) that
    `model.discretizations` lists; the error says which names are allowed, and why not."""
    if discretization in model.discretizations:
        return
    if discretization not in ALLOWED:
        raise ValueError(f"unknown discretization {discretization!r}; allowed: "
                         f"{', '.join(map(repr, ALLOWED))}")
    if discretization == "async" and issubclass(model, LTI_LRNN):
        raise ValueError("an LTI model cannot use discretization 'async': event-driven "
                         "steps make the dynamics time-varying; use an LTV model (e.g. "
                         "EventSSM) or one of 'zoh', 'bilinear', 'dirac', "
                         "'no_discretization'")
    raise ValueError(f"{model.__name__} discretization must be one of "
                     f"{model.discretizations}, got {discretization!r}")


def check_state_size(state_size, pairs: str) -> None:
    """state_size N must be an even int >= 2: N/2 complex modes stand for N real ones."""
    check_int("state_size", state_size, minimum=2, even=True, why=f" ({pairs} conjugate pairs)")


def check_step_range(dt_min: float, dt_max: float) -> None:
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")


# ---------------------------------------------------------------------- complex helpers
# Diagonal complex cells keep their state and complex parameters as real (..., 2) pairs.

def as_complex(pairs: Tensor) -> Tensor:
    """(..., 2) real (re, im) -> (...) complex: a view when the strides allow one (read it,
    never write it in place), else a copy."""
    if pairs.stride(-1) == 1 and pairs.storage_offset() % 2 == 0 \
            and all(stride % 2 == 0 for stride in pairs.stride()[:-1]):
        return torch.view_as_complex(pairs)
    return torch.complex(pairs[..., 0], pairs[..., 1])


def real_part_weights(c: Tensor) -> Tensor:
    """c (..., n) complex -> w (..., 2n) real with w · interleave(z) = Re Σ_n c_n z_n,

    where interleave(z) = (Re z_1, Im z_1, Re z_2, ...) (torch.view_as_real(z).flatten(-2)).
    """
    return torch.stack([c.real, -c.imag], dim=-1).flatten(-2)
