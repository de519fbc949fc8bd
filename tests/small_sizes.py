"""Small keyword arguments for any registered memory, so tests of every model stay fast."""

import memory_models

SMALL_MEMORY = {"memory_size": 5, "state_size": 4, "theta": 7.0, "seq_len": 8, "context_size": 3,
                "stack_size": 2, "key_size": 4, "window": 4}


def small_memory_kwargs(name: str, **override) -> dict:
    """The SMALL_MEMORY keywords (with `override`) that the memory `name` accepts."""
    accepted = memory_models.keywords(name)
    return {k: v for k, v in {**SMALL_MEMORY, **override}.items() if k in accepted}
