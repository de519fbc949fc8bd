"""What a cell computes from its parameters alone, kept between steps without autograd.

    class MyCell(ParameterDerived, RecurrentMemory):
        def _step(...):
            weights = self.derived(self.step_weights)    # recomputed only when a parameter changed
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch
from torch import nn

__all__ = ["ParameterDerived", "parameter_versions"]

Derived = TypeVar("Derived")


class ParameterDerived(nn.Module):
    """Mixin: `derived(compute)` for what a cell computes from its parameters alone.

    With autograd recording, compute() runs on every call (its graph is needed, e.g. training
    through `step`). Without (rollouts, value passes), its result is kept and reused for as
    long as every parameter is the same storage at the same version: an optimizer step
    (torch's default for-loop and foreach optimizers write in place and bump the version),
    load_state_dict (copy_) or a module conversion (.to, .double: `_apply` drops the cache)
    makes the next call compute afresh. Writes that bypass the version counter (through
    `.data`, or torch's opt-in `fused=True` optimizers, which leave it unchanged) are not
    seen: after one, call `forget_derived()`."""

    def derived(self, compute: Callable[[], Derived]) -> Derived:
        if torch.is_grad_enabled():
            return compute()
        key = (compute.__name__, *parameter_versions(self))
        cached = self.__dict__.get("_derived_cache")
        if cached is None or cached[0] != key:
            cached = (key, compute())
            self.__dict__["_derived_cache"] = cached
        return cached[1]

    def forget_derived(self) -> None:
        """Drop what `derived` keeps (the next call without autograd computes afresh)."""
        self.__dict__.pop("_derived_cache", None)

    def _apply(self, fn, *args, **kwargs):
        self.forget_derived()
        return super()._apply(fn, *args, **kwargs)


def parameter_versions(module: nn.Module) -> list[tuple]:
    """(storage, version, dtype, device) of every parameter of module and its submodules, in
    registration order (nn.Module.parameters() without its bookkeeping: this runs per step)."""
    own = [(p.data_ptr(), p._version, p.dtype, p.device)
           for p in module._parameters.values() if p is not None]
    return own + [key for child in module._modules.values() if child is not None
                  for key in parameter_versions(child)]
