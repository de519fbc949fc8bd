"""Small keyword arguments for any registered memory, so tests of every model stay fast, and
the seeded build of a cell that a cell's test file makes its `build`."""

import torch

import memory_models

SMALL_MEMORY = {"memory_size": 5, "state_size": 4, "theta": 7.0, "seq_len": 8, "context_size": 3,
                "stack_size": 2, "key_size": 4, "window": 4}


def small_memory_kwargs(name: str, **override) -> dict:
    """The SMALL_MEMORY keywords (with `override`) that the memory `name` accepts."""
    accepted = memory_models.keywords(name)
    return {k: v for k, v in {**SMALL_MEMORY, **override}.items() if k in accepted}


def seeded_cell(cls, dtype: torch.dtype = torch.float64, seed: int = 0, **kwargs):
    """cls(**kwargs) built right after torch.manual_seed(seed), in `dtype`: the same weights
    for the same arguments. A test file binds its sizes, `build = partial(seeded_cell, FFM,
    **SMALL)`, and overrides any of them per call: build(torch.float32, hidden_size=16)."""
    torch.manual_seed(seed)
    return cls(**kwargs).to(dtype)
