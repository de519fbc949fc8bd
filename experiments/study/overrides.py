"""Dotted keys into a study's mapping: `--set ppo.lr=1e-4`, `models[1].kwargs.theta=8`,
`seeds=[0,1]` (and a sweep point's values), each value read as YAML."""

from __future__ import annotations

import copy
import re
from typing import Any

import yaml

from experiments.study.errors import ConfigError, dotted

__all__ = ["YamlLoader", "parse_value", "apply_overrides", "set_key"]


class YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` as a float (YAML 1.1 wants `1.0e-4`)."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)[eE][-+]?\d+$"),
    list("-+0123456789."))


def parse_value(text: str) -> Any:
    """A `--set` value as YAML: `1e-4` -> 0.0001, `[0, 1]` -> list, `gru` -> "gru"; text that
    is not valid YAML (`[0,1`) is a ConfigError."""
    try:
        return yaml.load(text, Loader=YamlLoader)
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"value {text!r} is not valid YAML ({problem}); e.g. a list "
                          f"[0, 1] or a quoted string 'x', the whole KEY=VALUE quoted for the "
                          f"shell") from None


def apply_overrides(raw: Any, overrides: list[str]) -> Any:
    """Set dotted keys (`ppo.lr=1e-4`, `models[1].kwargs.theta=8`, `seeds=[0,1]`) in a copy."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. ppo.lr=1e-4")
        try:
            value = parse_value(text)
        except ConfigError as error:
            raise ConfigError(f"--set {key}: {error}") from None
        set_key(raw, key, value)
    return raw


def set_key(raw: Any, key: str, value: Any) -> None:
    """raw[...] = value at the dotted `key`, creating mappings on the way."""
    parts = _split_key(key)
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = _child(node, part, parts[:depth + 1], key)
        if child is None:                       # missing mapping on the way: create it
            child = node[part] = {}
        elif isinstance(child, str) and parts[0] == "models" and depth == 1:
            child = node[part] = {"name": child}    # `- gru` shorthand -> mapping
        node = child
    last = parts[-1]
    if isinstance(last, int):
        _child(node, last, parts, key)          # checks the index is in range
    elif not isinstance(node, dict):
        raise ConfigError(f"--set {key}: {dotted(parts[:-1])} is not a mapping")
    node[last] = value


def _split_key(key: str) -> list[str | int]:
    parts: list[str | int] = []
    for token in key.split("."):
        match = re.fullmatch(r"([^\[\]]*)((?:\[\d+\])*)", token)
        if not match or (not match.group(1) and not match.group(2)):
            raise ConfigError(f"--set {key}: cannot parse key {token!r}")
        if match.group(1):
            parts.append(int(match.group(1)) if match.group(1).isdigit() else match.group(1))
        parts.extend(int(i) for i in re.findall(r"\[(\d+)\]", match.group(2)))
    return parts


def _child(node: Any, part: str | int, parts: list, key: str) -> Any:
    if isinstance(part, int):
        if not isinstance(node, list) or part >= len(node):
            size = f"the list has {len(node)}" if isinstance(node, list) else "not a list"
            raise ConfigError(f"--set {key}: {dotted(parts)} does not exist ({size})")
        return node[part]
    if not isinstance(node, dict):
        raise ConfigError(f"--set {key}: {dotted(parts[:-1])} is not a mapping")
    return node.get(part)
