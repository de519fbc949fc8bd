"""A study file's problems as `where: path: message` lines (`ConfigError`), from pydantic's own
errors: the path is the error's `loc` written as in the file (`models[1].kwargs.theta`), the
message pydantic's `msg`, with two additions:

    extra_forbidden       "unknown key; allowed: [...]", the keys of the section that holds it
    "Input should be X"   "expected X, got <the value>" (the value is what the file holds there)
    string_pattern_mismatch   the one pattern of the schema, a folder name, in words

and a `ValueError` of the schema's own validators in its own words.
"""

from __future__ import annotations

import difflib
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

__all__ = ["ConfigError", "parse", "messages", "dotted", "did_you_mean", "kind"]


class ConfigError(ValueError):
    """A study file that does not follow the schema; the message names the path in the file."""


def parse(model: type[BaseModel], raw: Any, where: str) -> BaseModel:
    """`model` validated from `raw`, or ConfigError with one line per problem."""
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise ConfigError("\n".join(messages(where, error, model))) from None


def messages(where: str, error: ValidationError, model: type[BaseModel],
             prefix: tuple = ()) -> list[str]:
    """Every error of validating `model` as `where: path: message` (`prefix`: the path of
    `model` in the file)."""
    return [_message(where, e, model, prefix) for e in error.errors()]


def _message(where: str, error: dict, model: type[BaseModel], prefix: tuple) -> str:
    loc = tuple(part for part in error["loc"] if part != "[key]")
    if error["type"] == "extra_forbidden":
        allowed = _keys(_section_at(model, loc[:-1]))
        text = f"unknown key{did_you_mean(loc[-1], allowed)}; allowed: {allowed}"
    elif error["type"] == "value_error":
        text = str(error["ctx"]["error"])
    elif error["type"] == "string_pattern_mismatch":          # the schema's FolderName
        text = (f"must be a folder name (letters, digits, '_', '.', '-'; starting with a "
                f"letter or digit), got {kind(error['input'])}")
    elif error["msg"].startswith("Input should be "):
        text = f"expected {error['msg'].removeprefix('Input should be ')}, " \
               f"got {kind(error['input'])}"
    else:
        text = error["msg"]
    path = dotted((*prefix, *loc))
    return f"{where}: {path}: {text}" if path else f"{where}: {text}"


def _keys(model: type[BaseModel]) -> list[str]:
    """A section's keys as the file writes them (a field's alias, else its name), less the
    keys the loader sets itself (the section's `internal_keys`)."""
    internal = getattr(model, "internal_keys", frozenset())
    return sorted(field.alias or name for name, field in model.model_fields.items()
                  if name not in internal)


def _section_at(model: type[BaseModel], loc: tuple) -> type[BaseModel]:
    """The section at `loc` below `model`: each key names a field, whose annotation holds the
    next section (list indices and mapping keys pass through)."""
    for part in loc:
        fields = {field.alias or name: field for name, field in model.model_fields.items()}
        if part in fields:
            model = _model_in(fields[part].annotation) or model
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model in an annotation such as `list[ModelEntry]` or `Eval | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next(filter(None, map(_model_in, get_args(annotation))), None)


def dotted(parts: tuple | list) -> str:
    """("models", 1, "kwargs", "theta") -> "models[1].kwargs.theta"."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def did_you_mean(key: Any, allowed: list[str]) -> str:
    close = difflib.get_close_matches(str(key), allowed, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def kind(value: Any) -> str:
    """A value as a message shows it: `str 'big'`, `nothing (null)`."""
    return "nothing (null)" if value is None else f"{type(value).__name__} {value!r}"
