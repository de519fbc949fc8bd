"""Name -> memory class. `make(name, input_size=..., hidden_size=..., **kwargs)` builds one.

    keywords(name)            the model choices `name` takes beyond the sizes, with defaults
    check_kwargs(name, kw)    the one check of those keywords (make, and every config, call it)

Every name also takes `layers` (default 1: the plain cell): `make(name, layers=N)` with N > 1
builds N residual blocks of the cell (memory_models.deep.DeepMemory), whatever the cell.

A cell's constructor may also take implementation options (how it computes, not what it is,
e.g. event_ssm's `scan_impl` for tests and benchmarks), listed in its class attribute
`implementation_options`: `keywords` leaves them out, so `make` and configs reject them;
code that wants one builds the class itself (`get(name)(..., scan_impl="sequential")`).
"""

from __future__ import annotations

import difflib
import inspect

from .checks import check_int
from .deep import DeepMemory
from .interface import RecurrentMemory

_MODELS: dict[str, type[RecurrentMemory]] = {}
SHARED_KEYWORDS = {"layers": 1}     # taken by every name; make handles them, not the cells
SIZE_KEYWORDS = ("input_size", "hidden_size")     # make's required sizes


class UnknownKeywordError(TypeError, ValueError):
    """A memory got keywords it does not take. A TypeError, as Python's own for an unexpected
    keyword, and a ValueError, as for any bad config value. `unknown` and `valid` list them."""

    def __init__(self, message: str, unknown: list[str], valid: list[str]):
        super().__init__(message)
        self.unknown, self.valid = unknown, valid


def register(name: str):
    """Class decorator: make the RecurrentMemory subclass available as `name`."""

    def decorate(cls):
        if not (isinstance(cls, type) and issubclass(cls, RecurrentMemory)):
            raise TypeError(f"register({name!r}) expects a RecurrentMemory subclass, got {cls!r}")
        taken = set(SHARED_KEYWORDS) & set(inspect.signature(cls.__init__).parameters)
        if taken:
            raise TypeError(f"register({name!r}): {cls.__qualname__} must not take the keyword(s) "
                            f"{sorted(taken)}: make gives them to every memory")
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
    """The model choices `name` takes besides input_size and hidden_size, with their defaults
    (inspect.Parameter.empty for none), then `layers`; implementation options are not among
    them."""
    cls = get(name)
    skip = {"self", "input_size", "hidden_size", *cls.implementation_options}
    signature = inspect.signature(cls.__init__)
    own = {k: p.default for k, p in signature.parameters.items()
           if k not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {**own, **SHARED_KEYWORDS}


def check_kwargs(name: str, kwargs) -> None:
    """Raise UnknownKeywordError (a ValueError and a TypeError) naming every key of `kwargs`
    that is not one of `keywords(name)`, and the valid ones. Values are the class's to check."""
    valid = sorted(keywords(name))
    unknown = sorted(set(kwargs) - set(valid), key=str)
    if unknown:
        close = {key: difflib.get_close_matches(str(key), [*SIZE_KEYWORDS, *valid], n=1)
                 for key in unknown}
        hints = [f"{key!r} -> {match[0]!r}" for key, match in close.items() if match]
        hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
        raise UnknownKeywordError(f"memory model {name!r} got unknown keyword(s) {unknown}"
                                  f"{hint}; valid keywords: {valid}", unknown, valid)


def make(name: str, *, input_size: int | None = None, hidden_size: int | None = None,
         layers: int = 1, **kwargs) -> RecurrentMemory:
    """Build the memory registered as `name`, or `layers` > 1 residual blocks of it (a
    DeepMemory); unknown keywords (a misspelled size too) list the valid ones."""
    check_kwargs(name, kwargs)
    missing = [key for key, value in zip(SIZE_KEYWORDS, (input_size, hidden_size))
               if value is None]
    if missing:
        raise TypeError(f"make({name!r}) needs {' and '.join(missing)} (the widths of x and y)")
    check_int("layers", layers, why=" (residual blocks of the memory; 1: the plain cell)")
    if layers == 1:
        return get(name)(input_size=input_size, hidden_size=hidden_size, **kwargs)
    return DeepMemory.stack(get(name), layers, input_size, hidden_size, **kwargs)
