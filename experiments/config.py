"""Study files (configs/*.yaml): schema, validation and grid expansion.

A study is the grid  tasks x models x seeds,  every trial trained with the same PPO settings:

    name: quickstart                  # results go to <output>/<name>/
    output: results                   # relative to the working directory (default "results")
    tasks: [RepeatPreviousEasy, popgym-CountRecallEasy-v0, diagnostic]   # ids, short ids, groups
    models:
      - gru                           # a registry name ...
      - {name: lmu, label: LMU-64, kwargs: {memory_size: 64, theta: 64.0}}   # ... or a mapping
    seeds: [0, 1, 2]
    ppo: {lr: 5.0e-4, num_epochs: 10, max_seq_len: 256}   # over experiments.training.POPGYM_PPO
    model_config: {hidden_size: 256}             # MemoryRLModule sizes: pre_, hidden_, head_size
    resources: {num_env_runners: 0, num_envs_per_env_runner: 8, num_gpus: 0}   # default 4 x 16
    stop: {env_steps: 100000}
    checkpoint: {frequency: 10, keep: 2}         # every 10 training iterations; always at the end

`load(path, overrides)` reads, applies `--set` overrides (`ppo.lr=1e-4`, `models[0].kwargs.theta=8`)
and validates; every error is a `ConfigError` naming the path in the file (`models[2].kwargs.
memory_sise`) and the allowed values. `expand(study)` lists the trials in a fixed order.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import itertools
import re
from pathlib import Path
from typing import Any

import yaml

# ppo_config(...) arguments that the `resources` section sets, not `ppo`
_RESOURCE_KEYS = ("num_env_runners", "num_envs_per_env_runner")
# `ppo` keys that are env-runner settings, with their allowed values
_CHOICES = {"batch_mode": ("complete_episodes", "truncate_episodes")}
# training() arguments that are not plain hyperparameters, or are deprecated in RLlib 2.60
_NOT_HYPERPARAMETERS = {"self", "kwargs", "model", "optimizer", "learner_class",
                        "learner_connector", "add_default_connectors_to_learner_pipeline",
                        "learner_config_dict", "num_sgd_iter", "train_batch_size",
                        "max_requests_in_flight_per_sampler_worker", "vf_share_layers",
                        "num_aggregator_actors_per_learner",
                        "max_requests_in_flight_per_aggregator_actor"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ConfigError(ValueError):
    """A study file that does not follow the schema; the message names the path in the file."""


# --------------------------------------------------------------------------- schema
@dataclasses.dataclass(frozen=True)
class ModelEntry:
    name: str                                   # memory_models registry name
    label: str                                  # shown in tables and plots; unique in a study
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Resources:
    num_env_runners: int                        # remote env runners per trial (0: sample locally)
    num_envs_per_env_runner: int                # vectorised envs in each runner
    num_gpus: float = 0.0                       # GPUs for each trial's learner
    max_concurrent_trials: int = 0              # 0: as many as the cluster fits


@dataclasses.dataclass(frozen=True)
class Stop:
    env_steps: int                              # env steps sampled per trial


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    frequency: int = 0                          # every N training iterations (0: only at end)
    keep: int = 0                               # most recent N kept (0: all)


@dataclasses.dataclass(frozen=True)
class Study:
    name: str
    tasks: list[str]                            # resolved POPGym ids
    models: list[ModelEntry]
    seeds: list[int]
    stop: Stop
    resources: Resources
    ppo: dict[str, Any] = dataclasses.field(default_factory=dict)           # overrides only
    model_config: dict[str, Any] = dataclasses.field(default_factory=dict)  # overrides only
    checkpoint: Checkpoint = Checkpoint()
    output: str = "results"

    @property
    def directory(self) -> Path:
        """Absolute folder of the study: <output>/<name>."""
        return (Path(self.output) / self.name).resolve()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Trial:
    index: int
    task: str                                   # POPGym id
    model: ModelEntry
    seed: int

    @property
    def name(self) -> str:
        """e.g. `RepeatPreviousEasy-LMU-s0`; unique in a study, usable as a folder name."""
        return f"{short_task(self.task)}-{self.model.label}-s{self.seed}"


def short_task(env_id: str) -> str:
    """popgym-RepeatPreviousEasy-v0 -> RepeatPreviousEasy."""
    return re.sub(r"^popgym-|-v\d+$", "", env_id)


def expand(study: Study) -> list[Trial]:
    """Every trial of the grid: tasks (outer) x models x seeds (inner)."""
    grid = itertools.product(study.tasks, study.models, study.seeds)
    return [Trial(i, task, model, seed) for i, (task, model, seed) in enumerate(grid)]


# --------------------------------------------------------------------------- loading
class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` as a float (YAML 1.1 wants `1.0e-4`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)[eE][-+]?\d+$"),
    list("-+0123456789."))


def parse_value(text: str) -> Any:
    """A `--set` value as YAML: `1e-4` -> 0.0001, `[0, 1]` -> list, `gru` -> "gru"."""
    return yaml.load(text, Loader=_Loader)


def load(path: str | Path, overrides: list[str] = ()) -> Study:
    """Read the study file, apply `key=value` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such study file")
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    raw = apply_overrides(raw, overrides, where=str(path))
    return validate(raw, where=str(path))


def apply_overrides(raw: Any, overrides: list[str], where: str = "config") -> Any:
    """Set dotted keys (`ppo.lr=1e-4`, `models[1].kwargs.theta=8`, `seeds=[0,1]`) in a copy."""
    import copy
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. ppo.lr=1e-4")
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
            raise ConfigError(f"--set {key}: {_join(parts[:-1])} is not a mapping")
        node[last] = parse_value(text)
    return raw


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
            raise ConfigError(f"--set {key}: {_join(parts)} does not exist ({size})")
        return node[part]
    if not isinstance(node, dict):
        raise ConfigError(f"--set {key}: {_join(parts[:-1])} is not a mapping")
    return node.get(part)


def _join(parts: list[str | int]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "<top level>"


# --------------------------------------------------------------------------- validation
class _Validator:
    """Checks one raw mapping; `fail` raises ConfigError with `where: path: message`."""

    def __init__(self, where: str):
        self.where = where

    def fail(self, path: str, message: str):
        raise ConfigError(f"{self.where}: {path}: {message}" if path else f"{self.where}: {message}")

    def mapping(self, value, path, allowed, required=()):
        if not isinstance(value, dict):
            self.fail(path, f"expected a mapping with keys {sorted(allowed)}, "
                            f"got {_kind(value)}")
        for key in value:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), list(allowed), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.fail(_at(path, key),
                          f"unknown key{hint}; allowed: {sorted(allowed) or 'none'}")
        for key in required:
            if key not in value:
                self.fail(_at(path, key), "missing (required)")
        return value

    def typed(self, value, path, kind: type, *, minimum=None):
        """`value` of type int, float (int accepted), bool or str, optionally >= minimum."""
        ok = {int: isinstance(value, int) and not isinstance(value, bool),
              float: isinstance(value, (int, float)) and not isinstance(value, bool),
              bool: isinstance(value, bool),
              str: isinstance(value, str)}[kind]
        if not ok:
            self.fail(path, f"expected {kind.__name__}, got {_kind(value)}")
        if minimum is not None and value < minimum:
            self.fail(path, f"must be >= {minimum}, got {value!r}")
        return float(value) if kind is float else value

    def like(self, value, path, default):
        """`value` of the same kind as `default` (None/containers: anything YAML)."""
        if isinstance(default, (bool, int, float, str)):
            return self.typed(value, path, type(default))
        return value


def validate(raw: Any, where: str = "config") -> Study:
    """Raw YAML mapping -> Study, or ConfigError naming the first problem."""
    check = _Validator(where)
    fields = {f.name for f in dataclasses.fields(Study)}
    check.mapping(raw, "", fields, required=("name", "tasks", "models", "seeds", "stop"))

    name = check.typed(raw["name"], "name", str)
    if not _NAME.match(name):
        check.fail("name", f"{name!r} must be a folder name: letters, digits, '_', '.', '-'")
    output = check.typed(raw.get("output", "results"), "output", str)

    tasks = _tasks(check, raw["tasks"])
    model_config = _model_config(check, raw.get("model_config", {}) or {})
    models = [_model(check, entry, f"models[{i}]", model_config)
              for i, entry in enumerate(_list(check, raw["models"], "models"))]
    labels = [m.label for m in models]
    for i, label in enumerate(labels):
        if labels.index(label) != i:
            check.fail(f"models[{i}].label", f"label {label!r} is already used by "
                       f"models[{labels.index(label)}]; give each model a distinct label")
    for i, model in enumerate(models):
        for j, other in enumerate(models[:i]):
            if (model.name, model.kwargs) == (other.name, other.kwargs):
                check.fail(f"models[{i}]", f"same model and kwargs as models[{j}] "
                                           f"({other.label!r})")

    seeds = [check.typed(s, f"seeds[{i}]", int, minimum=0)
             for i, s in enumerate(_list(check, raw["seeds"], "seeds"))]
    if len(set(seeds)) != len(seeds):
        check.fail("seeds", f"repeated seed in {seeds}")

    ppo = _ppo(check, raw.get("ppo", {}) or {})
    from experiments.training import POPGYM_PPO
    resources = _section(check, raw.get("resources", {}) or {}, "resources", Resources,
                         defaults={k: POPGYM_PPO[k] for k in _RESOURCE_KEYS})
    stop = _section(check, raw["stop"], "stop", Stop, minimum=1)
    checkpoint = _section(check, raw.get("checkpoint", {}) or {}, "checkpoint", Checkpoint)
    return Study(name=name, tasks=tasks, models=models, seeds=seeds, stop=stop, ppo=ppo,
                 model_config=model_config, resources=resources, checkpoint=checkpoint,
                 output=output)


def _list(check: _Validator, value, path) -> list:
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]                      # a single task / model / seed
    if not isinstance(value, list) or not value:
        check.fail(path, f"expected a non-empty list, got {_kind(value)}")
    return value


def _tasks(check: _Validator, value) -> list[str]:
    import envs
    ids: list[str] = []
    for i, name in enumerate(_list(check, value, "tasks")):
        check.typed(name, f"tasks[{i}]", str)
        try:
            found = envs.resolve([name])
        except ValueError as error:
            check.fail(f"tasks[{i}]", str(error))
        ids.extend(t for t in found if t not in ids)
    event_time = [envs.is_event_time(t) for t in ids]
    if any(event_time) and not all(event_time):   # one PPO/module config serves every task
        check.fail("tasks", "event-time tasks (the memory reads Δt from the observation) and "
                            "plain tasks cannot share a study; put them in two studies")
    return ids


def _model(check: _Validator, entry, path, model_config) -> ModelEntry:
    import memory_models
    if isinstance(entry, str):
        entry = {"name": entry}
    check.mapping(entry, path, {"name", "label", "kwargs"}, required=("name",))
    name = check.typed(entry["name"], f"{path}.name", str)
    if name not in memory_models.available():
        close = difflib.get_close_matches(name, memory_models.available(), n=2)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        check.fail(f"{path}.name", f"unknown memory model {name!r}{hint}; "
                                   f"available: {memory_models.available()}")
    label = check.typed(entry.get("label", name), f"{path}.label", str)
    if not _NAME.match(label):
        check.fail(f"{path}.label", f"{label!r}: use letters, digits, '_', '.', '-' (it names "
                                    f"folders and plot legends)")
    kwargs = entry.get("kwargs", {}) or {}
    accepted = memory_models.keywords(name)
    check.mapping(kwargs, f"{path}.kwargs", accepted)
    for key, value in kwargs.items():
        default = accepted[key]
        if default is not inspect.Parameter.empty and default is not None:
            check.like(value, f"{path}.kwargs.{key}", default)
    sizes = {**model_config_keys(), **model_config}
    try:     # build it once, small input: bad values fail here, before any trial starts
        memory_models.make(name, input_size=4, hidden_size=sizes["hidden_size"], **kwargs)
    except Exception as error:   # noqa: BLE001 - any constructor error is a config error
        check.fail(f"{path}.kwargs", f"{name} rejects these arguments: {error}")
    return ModelEntry(name=name, label=label, kwargs=dict(kwargs))


def model_config_keys() -> dict[str, Any]:
    """YAML `model_config` keys (MemoryRLModule sizes) with defaults; the memory comes from
    `models` and the BPTT length from `ppo.max_seq_len`."""
    from experiments.rl_module import MODEL_CONFIG_DEFAULTS
    return {k: v for k, v in MODEL_CONFIG_DEFAULTS.items()
            if k not in ("memory", "memory_kwargs", "max_seq_len")}


def _model_config(check: _Validator, value) -> dict:
    check.mapping(value, "model_config", model_config_keys())
    return {k: check.typed(v, f"model_config.{k}", int, minimum=1) for k, v in value.items()}


def ppo_hyperparameters() -> dict[str, Any]:
    """Every YAML `ppo` key with its default: POPGym's protocol (POPGYM_PPO) over RLlib's
    PPOConfig defaults; env runner counts belong to `resources`."""
    from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
    from ray.rllib.algorithms.ppo import PPOConfig

    from experiments.training import POPGYM_PPO
    defaults = PPOConfig()
    names = [k for method in (PPOConfig.training, AlgorithmConfig.training)
             for k in inspect.signature(method).parameters if k not in _NOT_HYPERPARAMETERS]
    table = {k: getattr(defaults, k) for k in names if hasattr(defaults, k)}
    table["rollout_fragment_length"] = defaults.rollout_fragment_length
    table.update({k: v for k, v in POPGYM_PPO.items() if k not in _RESOURCE_KEYS})
    return table


def _ppo(check: _Validator, value) -> dict:
    defaults = ppo_hyperparameters()
    check.mapping(value, "ppo", defaults)
    ppo = {}
    for key, item in value.items():
        path = f"ppo.{key}"
        if key in _CHOICES:
            if item not in _CHOICES[key]:
                check.fail(path, f"{item!r} is not one of {list(_CHOICES[key])}")
        elif key == "rollout_fragment_length":      # an int or "auto"
            if item != "auto":
                check.typed(item, path, int, minimum=1)
        elif isinstance(defaults[key], (int, float)) and not isinstance(defaults[key], bool):
            item = check.typed(item, path, type(defaults[key]), minimum=0)
        else:
            item = check.like(item, path, defaults[key])
        ppo[key] = item
    return ppo


def _section(check: _Validator, value, path, cls, defaults=None, minimum=0):
    """A dataclass section; `defaults` fill fields that have no dataclass default."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    defaults = defaults or {}
    required = [n for n, f in fields.items() if n not in defaults
                and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    check.mapping(value, path, fields, required=required)
    kinds = {"int": int, "float": float, "bool": bool, "str": str}
    return cls(**{**defaults, **{k: check.typed(v, f"{path}.{k}", kinds[fields[k].type],
                                                 minimum=minimum)
                                 for k, v in value.items()}})


def _at(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


def _kind(value) -> str:
    return "nothing (null)" if value is None else f"{type(value).__name__} {value!r}"
