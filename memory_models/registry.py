"""Name -> memory class. `make(name, input_size=..., hidden_size=..., **kwargs)` builds one."""

from __future__ import annotations

import difflib
import inspect

from .interface import RecurrentMemory

_MODELS: dict[str, type[RecurrentMemory]] = {}


def register(name: str):
    """Class decorator: make the RecurrentMemory subclass available as `name`."""

    def decorate(cls):
        if not (isinstance(cls, type) and issubclass(cls, RecurrentMemory)):
            raise TypeError(f"register({name!r}) expects a RecurrentMemory subclass, got {cls!r}")
        if name in _MODELS and _MODELS[name] is not cls:
            raise ValueError(f"memory name {name!r} is already registered to "
                             f"{_MODELS[name].__qualname__}")
        _MODELS[name] = cls
        cls.registry_name = name
        return cls

    return decorate


def available() -> list[str]:
    """Sorted names of every registered memory."""
    return sorted(_MODELS)


def get(name: str) -> type[RecurrentMemory]:
    """The class registered as `name`; an unknown name lists the valid ones."""
    if name not in _MODELS:
        close = difflib.get_close_matches(str(name), _MODELS, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown memory model {name!r}.{hint} "
                         f"Available: {', '.join(available())}")
    return _MODELS[name]


def keywords(name: str) -> dict[str, object]:
    """The extra keyword arguments `name` accepts, with their defaults."""
    signature = inspect.signature(get(name).__init__)
    return {k: p.default for k, p in signature.parameters.items()
            if k not in ("self", "input_size", "hidden_size")
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def make(name: str, *, input_size: int, hidden_size: int, **kwargs) -> RecurrentMemory:
    """Build the memory registered as `name`; unknown keywords list the valid ones."""
    valid = keywords(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise TypeError(f"memory model {name!r} got unknown keyword(s) {unknown}; "
                        f"valid keywords: {sorted(valid) or 'none'}")
    return get(name)(input_size=input_size, hidden_size=hidden_size, **kwargs)
