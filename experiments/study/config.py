"""Study files (configs/*.yaml): the schema, loading with `--set` overrides, and the grid of trials.

A study is the grid  tasks x models x seeds (x sweep values); every trial gets its own complete
settings:

    name: quickstart                  # results go to <output>/<name>/
    output: results                   # relative to the working directory
    imports: [my_cells]               # your modules registering memories (beside this file
                                      # or on the Python path), imported by every process
    tasks: [RepeatPreviousEasy, popgym-CountRecallEasy-v0, diagnostic]   # ids, short ids, groups
    models:
      - gru                           # a registry name ...
      - {name: lmu, label: LMU-64, kwargs: {memory_size: 64, theta: 64.0}}   # ... or a mapping
      - {name: gru, label: GRU-old, stack: old}    # our GRU on RLlib's old API stack
      - {name: "popgym:GRU"}          # POPGym's own model (old API stack)
      - {name: s4d, ppo: {lr: 1.0e-4}}             # PPO overrides for this model only
    seeds: [0, 1, 2]
    sweep: {ppo.lr: [1.0e-4, 5.0e-4]}            # multiplies the grid (ppo.*, model_config.*,
                                                 # models[i].kwargs.*, models[i].ppo.*)
    ppo: {lr: 5.0e-4, num_epochs: 10, max_seq_len: 256}   # over POPGym's protocol
    model_config: {hidden_size: 256}             # network widths: pre_, hidden_, head_size
    resources: {num_env_runners: 0, num_envs_per_env_runner: 8, num_gpus: 0}   # default 4 x 16
    stop: {env_steps: 100000}
    checkpoint: {frequency: 10, keep: 2}         # every 10 training iterations, and at the end
    max_failures: 3                              # restarts of a crashed trial (from checkpoint)
    eval: {episodes: 10, every: 0, greedy: true} # recurrent rollouts (every K iters; 0: at end)
    logging: {wandb: {project: my-project}}      # TensorBoard is always written

The schema is pydantic (`Study` and its sections; `PPOSettings` lists every `ppo` key with its
POPGym default). `load(path, overrides)` reads, applies `--set` overrides
(`ppo.lr=1e-4`, `models[0].kwargs.theta=8`) and validates; every error is a `ConfigError`
naming its path in the file (`models[2].kwargs.memory_sise: unknown key; allowed: [...]`).
Memory names and keywords need PyTorch, so they are checked by `check_models` (part of
`load`/`validate` unless `models=False`: `memrl train --dry-run` skips them to start fast).
`expand(study)` lists the trials in a fixed order.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field,
                      StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError,
                      ValidationInfo, create_model, field_validator)
from pydantic.dataclasses import dataclass

from experiments.rllib import workers
from experiments.rllib.defaults import POPGYM_PPO, POPGYM_SIZES
from experiments.rllib.popgym_models import canonical_name, check_popgym_model, is_popgym
from experiments.rllib.seeding import MAX_ENV_RUNNERS, MAX_ENVS_PER_ENV_RUNNER, MAX_SEED
from experiments.study.results import short_task

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_STRICT = ConfigDict(extra="forbid", frozen=True)


class ConfigError(ValueError):
    """A study file that does not follow the schema; the message names the path in the file."""


# --------------------------------------------------------------------------- sections
def _overrides(settings: BaseModel) -> dict[str, Any]:
    """A validated section as the dict of the keys the file sets (defaults are added later)."""
    return settings.model_dump(exclude_unset=True)


def _fragment_length(value):
    if value != "auto" and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"expected a positive int or 'auto', got {_kind(value)}")
    return value


class PPOSettings(BaseModel):
    """Every YAML `ppo` key, with POPGym's protocol as its default (RLlib PPOConfig.training()
    arguments, plus max_seq_len, batch_mode and rollout_fragment_length)."""
    model_config = ConfigDict(extra="forbid")

    lr: StrictFloat = Field(POPGYM_PPO["lr"], ge=0)
    gamma: StrictFloat = Field(POPGYM_PPO["gamma"], ge=0, le=1)
    lambda_: StrictFloat = Field(POPGYM_PPO["lambda_"], ge=0, le=1)
    clip_param: StrictFloat = Field(POPGYM_PPO["clip_param"], ge=0)
    vf_clip_param: StrictFloat = Field(POPGYM_PPO["vf_clip_param"], ge=0)
    vf_loss_coeff: StrictFloat = Field(POPGYM_PPO["vf_loss_coeff"], ge=0)
    entropy_coeff: StrictFloat = Field(POPGYM_PPO["entropy_coeff"], ge=0)
    kl_coeff: StrictFloat = Field(POPGYM_PPO["kl_coeff"], ge=0)
    kl_target: StrictFloat = Field(POPGYM_PPO["kl_target"], ge=0)
    use_kl_loss: StrictBool = True
    use_critic: StrictBool = True
    use_gae: StrictBool = True
    grad_clip: StrictFloat | None = Field(POPGYM_PPO["grad_clip"], ge=0)
    grad_clip_by: Literal["value", "norm", "global_norm"] = "global_norm"
    num_epochs: StrictInt = Field(POPGYM_PPO["num_epochs"], ge=1)
    train_batch_size_per_learner: StrictInt = Field(POPGYM_PPO["train_batch_size_per_learner"],
                                                    ge=1)
    minibatch_size: StrictInt = Field(POPGYM_PPO["minibatch_size"], ge=1)
    shuffle_batch_per_epoch: StrictBool = True      # permute the minibatch order each epoch
    max_seq_len: StrictInt = Field(POPGYM_PPO["max_seq_len"], ge=1)    # BPTT length
    batch_mode: Literal["complete_episodes", "truncate_episodes"] = POPGYM_PPO["batch_mode"]
    rollout_fragment_length: Annotated[Any, AfterValidator(_fragment_length)] = "auto"


class ModelSizes(BaseModel):
    """YAML `model_config`: the network's widths (the memory comes from `models`, the BPTT
    length from `ppo.max_seq_len`)."""
    model_config = ConfigDict(extra="forbid")

    pre_size: StrictInt = Field(POPGYM_SIZES["pre_size"], ge=1)
    hidden_size: StrictInt = Field(POPGYM_SIZES["hidden_size"], ge=1)
    head_size: StrictInt = Field(POPGYM_SIZES["head_size"], ge=1)


PPOOverrides = Annotated[PPOSettings, AfterValidator(_overrides)]
SizeOverrides = Annotated[ModelSizes, AfterValidator(_overrides)]


def _one_or_more(value):
    """A single task / seed / model may be written without a list."""
    return [value] if isinstance(value, (str, int)) and not isinstance(value, bool) else value


def _model_mapping(value):
    return {"name": value} if isinstance(value, str) else value


@dataclass(config=_STRICT)
class ModelEntry:
    name: StrictStr                             # registry name, or popgym:<Class>
    label: StrictStr = Field("", validate_default=True)   # tables, plots, folders; default: name
    kwargs: dict[StrictStr, Any] = dataclasses.field(default_factory=dict)
    stack: Literal["new", "old"] = "new"        # RLlib API stack; popgym:* is always "old"
    ppo: PPOOverrides = dataclasses.field(default_factory=dict)   # this model's own overrides

    @field_validator("name")
    @classmethod
    def _popgym_name(cls, name: str) -> str:
        return canonical_name(name) if is_popgym(name) else name

    @field_validator("label")
    @classmethod
    def _label(cls, label: str, info: ValidationInfo) -> str:
        return _folder_name(label or info.data.get("name", "").replace(":", "-"))

    def __post_init__(self):
        if self.is_popgym:                      # POPGym's models exist on the old stack only
            object.__setattr__(self, "stack", "old")

    @property
    def is_popgym(self) -> bool:
        return is_popgym(self.name)


@dataclass(config=_STRICT)
class Resources:
    num_env_runners: StrictInt = Field(POPGYM_PPO["num_env_runners"], ge=0, le=MAX_ENV_RUNNERS)
    num_envs_per_env_runner: StrictInt = Field(POPGYM_PPO["num_envs_per_env_runner"], ge=1,
                                               le=MAX_ENVS_PER_ENV_RUNNER)
    num_gpus: StrictFloat = Field(0.0, ge=0)    # GPUs for each trial's learner
    max_concurrent_trials: StrictInt = Field(0, ge=0)   # 0: as many as the cluster fits


@dataclass(config=_STRICT)
class Stop:
    env_steps: StrictInt = Field(ge=1)          # env steps sampled per trial


@dataclass(config=_STRICT)
class Checkpoint:
    frequency: StrictInt = Field(10, ge=0)      # every N training iterations (0: only at end)
    keep: StrictInt = Field(2, ge=0)            # most recent N kept (0: all)


@dataclass(config=_STRICT)
class Eval:
    episodes: StrictInt = Field(10, ge=1)       # complete episodes per evaluation
    every: StrictInt = Field(0, ge=0)           # every K training iterations (0: at the end)
    greedy: StrictBool = True                   # the distribution's mode, else sample


@dataclass(config=_STRICT)
class Wandb:
    project: StrictStr
    entity: StrictStr | None = None
    group: StrictStr | None = None


@dataclass(config=_STRICT)
class Logging:
    wandb: Wandb | None = None                  # Weights & Biases (pip install memrl[wandb])


def _folder_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"{name!r} must be a folder name: letters, digits, '_', '.', '-'")
    return name


def _unique_seeds(seeds: list[int]) -> list[int]:
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"repeated seed in {seeds}")
    return seeds


def _resolve_task(name: str) -> list[str]:
    import envs
    return envs.resolve([name])


def _flatten_unique(groups: list[list[str]]) -> list[str]:
    return list(dict.fromkeys(t for group in groups for t in group))


@dataclass(config=_STRICT)
class Study:
    name: Annotated[StrictStr, AfterValidator(_folder_name)]
    tasks: Annotated[list[Annotated[StrictStr, AfterValidator(_resolve_task)]],
                     Field(min_length=1), BeforeValidator(_one_or_more),
                     AfterValidator(_flatten_unique)]             # resolved POPGym ids
    models: Annotated[list[Annotated[ModelEntry, BeforeValidator(_model_mapping)]],
                      Field(min_length=1), BeforeValidator(_one_or_more)]
    seeds: Annotated[list[Annotated[StrictInt, Field(ge=0, le=MAX_SEED)]], Field(min_length=1),
                     BeforeValidator(_one_or_more), AfterValidator(_unique_seeds)]
    stop: Stop
    output: StrictStr = "results"
    imports: list[StrictStr] = dataclasses.field(default_factory=list)
    sweep: dict[StrictStr, Annotated[list[Any], Field(min_length=1)]] = \
        dataclasses.field(default_factory=dict)
    ppo: PPOOverrides = dataclasses.field(default_factory=dict)              # overrides only
    model_config: SizeOverrides = dataclasses.field(default_factory=dict)    # overrides only
    resources: Resources = Resources()
    checkpoint: Checkpoint = Checkpoint()
    max_failures: StrictInt = Field(3, ge=0)    # restarts of a failed trial, from checkpoint
    eval: Eval | None = None
    logging: Logging = Logging()
    base_dir: StrictStr = "."                   # the study file's folder (set by `load`)

    def __post_init__(self):
        labels = [m.label for m in self.models]
        for i, model in enumerate(self.models):
            first = labels.index(model.label)
            if first != i:
                raise ValueError(f"models[{i}].label: label {model.label!r} is already used "
                                 f"by models[{first}]; give each model a distinct label")
            for j, other in enumerate(self.models[:i]):
                if (model.name, model.kwargs, model.stack, model.ppo) == \
                        (other.name, other.kwargs, other.stack, other.ppo):
                    raise ValueError(f"models[{i}]: same model and kwargs as models[{j}] "
                                     f"({other.label!r})")
        for key in self.sweep:
            _check_sweep_key(key, len(self.models))

    @property
    def directory(self) -> Path:
        """Absolute folder of the study: <output>/<name>."""
        return (Path(self.output) / self.name).resolve()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- trials
@dataclasses.dataclass(frozen=True)
class Trial:
    """One run: a task, a model entry and a seed, with every setting it trains with."""
    index: int
    task: str                                   # POPGym id
    model: ModelEntry                           # after this trial's sweep values
    seed: int
    model_index: int                            # its entry in the study's `models`
    ppo: dict[str, Any]                         # PPO overrides: the study's, then the model's
    model_config: dict[str, Any]                # network-size overrides
    sweep: dict[str, Any] = dataclasses.field(default_factory=dict)  # swept key -> value

    @property
    def variant(self) -> str:
        """The model's label with the swept values, e.g. `LMU[ppo.lr=0.0001]`: a row of the
        report."""
        if not self.sweep:
            return self.model.label
        swept = ",".join(f"{_short_key(k)}={v}" for k, v in self.sweep.items())
        return f"{self.model.label}[{swept}]"

    @property
    def name(self) -> str:
        """e.g. `RepeatPreviousEasy-LMU-s0`; unique in a study, usable as a folder name."""
        swept = "".join(f"-{_short_key(k)}={v}" for k, v in self.sweep.items())
        return f"{short_task(self.task)}-{self.model.label}{swept}-s{self.seed}"


def _short_key(key: str) -> str:
    """models[0].kwargs.theta -> theta; ppo.lr -> lr (folder names stay short)."""
    return key.rsplit(".", 1)[-1]


_SWEEP_KEY = re.compile(r"^(ppo|model_config)\.\w+$|^models\[(\d+)\]\.(kwargs|ppo)\.\w+$")


def _check_sweep_key(key: str, num_models: int) -> None:
    match = _SWEEP_KEY.match(key)
    if not match:
        raise ValueError(f"sweep.{key}: sweep keys are ppo.KEY, model_config.KEY, "
                         f"models[i].kwargs.KEY or models[i].ppo.KEY")
    if match.group(2) is not None and int(match.group(2)) >= num_models:
        raise ValueError(f"sweep.{key}: models[{match.group(2)}] does not exist (the study "
                         f"has {num_models} models)")


def _sweep_model(key: str) -> int | None:
    """The model index a sweep key belongs to (None: every model)."""
    match = _SWEEP_KEY.match(key)
    return None if match.group(2) is None else int(match.group(2))


def expand(study: Study) -> list[Trial]:
    """Every trial: tasks (outer) x models x sweep points x seeds (inner). A sweep key of one
    model (`models[i]...`) multiplies only that model's trials."""
    points = [dict(zip(study.sweep, values))
              for values in itertools.product(*study.sweep.values())] or [{}]
    trials: list[Trial] = []
    for task, (i, _) in itertools.product(study.tasks, enumerate(study.models)):
        own = [k for k in study.sweep if _sweep_model(k) in (None, i)]
        for values in dict.fromkeys(tuple((k, p[k]) for k in own) for p in points):
            variant = _apply_sweep(study, dict(values))
            model = variant.models[i]
            for seed in study.seeds:
                trials.append(Trial(len(trials), task, model, seed, i,
                                    ppo={**variant.ppo, **model.ppo},
                                    model_config=dict(variant.model_config),
                                    sweep=dict(values)))
    return trials


def _apply_sweep(study: Study, values: dict[str, Any]) -> Study:
    if not values:
        return study
    raw = _raw(study)
    raw.pop("sweep")
    for key, value in values.items():
        set_key(raw, key, value)
    return _validate_schema(raw, where=f"sweep point {values}")


def _raw(study: Study) -> dict:
    """The study as the mapping a file would hold (tasks resolved, labels filled)."""
    raw = study.to_dict()
    for model in raw["models"]:
        model["ppo"] = dict(model["ppo"])
    return raw


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


def load(path: str | Path, overrides: list[str] = (), *, models: bool = True) -> Study:
    """Read the study file, apply `key=value` overrides, validate (`models=False`: not the
    memory names and keywords, which need PyTorch)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such study file")
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    raw = apply_overrides(raw, overrides, where=str(path))
    if isinstance(raw, dict):
        raw.setdefault("base_dir", str(path.resolve().parent))
    return validate(raw, where=str(path), models=models)


def validate(raw: Any, where: str = "config", *, models: bool = True) -> Study:
    """Raw YAML mapping -> Study, or ConfigError naming every problem found."""
    study = _validate_schema(raw, where)
    if models:
        check_models(study, where)
    return study


def _validate_schema(raw: Any, where: str) -> Study:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with keys {_keys(Study)}, "
                          f"got {_kind(raw)}")
    try:
        return Study(**raw)
    except ValidationError as error:
        raise ConfigError("\n".join(_message(where, e, Study) for e in error.errors())) from None


def import_modules(study: Study, where: str = "config") -> None:
    """Import the study's `imports` (found beside the study file or on the Python path), as
    every worker process does (experiments.rllib.workers)."""
    for i, module in enumerate(study.imports):
        try:
            workers.import_modules([module], study.base_dir)
        except Exception as error:  # noqa: BLE001 - any import failure is a config error
            raise ConfigError(f"{where}: imports[{i}]: cannot import {module!r} (looked beside the "
                              f"study file, {study.base_dir}, and on the Python path): "
                              f"{type(error).__name__}: {error}") from None


def check_models(study: Study, where: str = "config") -> None:
    """Every model entry (at every sweep point) names a registered memory (after `imports`)
    or a POPGym model that runs here, with keywords it accepts; each is built once, small, so
    bad values fail now."""
    import_modules(study, where)
    errors, checked = [], set()
    for trial in expand(study):
        key = repr((trial.model_index, trial.model, trial.model_config))
        if key not in checked:
            checked.add(key)
            at = f"{where} (sweep point {trial.sweep})" if trial.sweep else where
            errors += _model_problems(trial.model, f"models[{trial.model_index}]", at,
                                      {**POPGYM_SIZES, **trial.model_config})
    if errors:
        raise ConfigError("\n".join(errors))


def _model_problems(model: ModelEntry, path: str, where: str, sizes: dict) -> list[str]:
    import memory_models

    if model.is_popgym:
        problem = check_popgym_model(model.name, model.kwargs)
        return [f"{where}: {path}: {problem}"] if problem else []
    if model.name not in memory_models.available():
        close = difflib.get_close_matches(model.name, memory_models.available(), n=2)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        return [f"{where}: {path}.name: unknown memory model {model.name!r}{hint}; "
                f"available: {memory_models.available()} and popgym:<Model>"]
    try:
        memory_models.check_kwargs(model.name, model.kwargs)     # the registry's one check
    except memory_models.UnknownKeywordError as error:
        return [f"{where}: {path}.kwargs.{key}: unknown key{_did_you_mean(key, error.valid)}; "
                f"allowed: {error.valid}" for key in error.unknown]
    kwargs_model = _kwargs_model(model.name, memory_models.keywords(model.name))
    try:
        kwargs_model(**model.kwargs)
        memory_models.make(model.name, input_size=4, hidden_size=sizes["hidden_size"],
                           **model.kwargs)
    except ValidationError as error:
        return [_message(where, e, kwargs_model, prefix=(path, "kwargs"))
                for e in error.errors()]
    except Exception as error:  # noqa: BLE001 - any constructor error is a config error
        return [f"{where}: {path}.kwargs: {model.name} rejects these arguments: {error}"]
    return []


def _kwargs_model(name: str, keywords: dict[str, Any]) -> type[BaseModel]:
    """A pydantic model of the types of a memory's keywords, as their defaults have them
    (None or no default: anything); which keys exist is the registry's check."""
    strict = {bool: StrictBool, int: StrictInt, float: StrictFloat, str: StrictStr}
    fields = {key: (strict.get(type(default), Any), default)
              for key, default in keywords.items()}
    return create_model(f"{name}_kwargs", **fields)


# --------------------------------------------------------------------------- overrides
def apply_overrides(raw: Any, overrides: list[str], where: str = "config") -> Any:
    """Set dotted keys (`ppo.lr=1e-4`, `models[1].kwargs.theta=8`, `seeds=[0,1]`) in a copy."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. ppo.lr=1e-4")
        set_key(raw, key, parse_value(text))
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
        raise ConfigError(f"--set {key}: {_join(parts[:-1])} is not a mapping")
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
            raise ConfigError(f"--set {key}: {_join(parts)} does not exist ({size})")
        return node[part]
    if not isinstance(node, dict):
        raise ConfigError(f"--set {key}: {_join(parts[:-1])} is not a mapping")
    return node.get(part)


def _join(parts: tuple | list) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# --------------------------------------------------------------------------- messages
def _message(where: str, error: dict, root: type, prefix: tuple = ()) -> str:
    """One pydantic error as `where: path: message`, with the allowed keys or values."""
    loc = tuple(part for part in error["loc"] if part != "[key]")
    kind, value = error["type"], error.get("input")
    expected = {"int_type": "int", "float_type": "float", "string_type": "str",
                "bool_type": "bool"}
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        allowed = _keys(_section_at(root, loc[:-1]))
        text = f"unknown key{_did_you_mean(loc[-1], allowed)}; allowed: {allowed}"
    elif kind in ("missing", "missing_argument"):
        text = "missing (required)"
    elif kind in ("model_type", "dataclass_type", "model_attributes_type", "dict_type"):
        text = (f"expected a mapping with keys {_keys(_section_at(root, loc))}, "
                f"got {_kind(value)}")
    elif kind in ("too_short", "list_type"):
        text = f"expected a non-empty list, got {_kind(value)}"
    elif kind in expected:
        text = f"expected {expected[kind]}, got {_kind(value)}"
    elif kind in ("greater_than_equal", "less_than_equal"):
        sign, bound = (">=", error["ctx"]["ge"]) if "ge" in error["ctx"] else \
            ("<=", error["ctx"]["le"])
        text = f"must be {sign} {bound}, got {value!r}"
    elif kind == "literal_error":
        text = f"{value!r} is not one of {error['ctx']['expected']}"
    elif kind == "value_error":
        text = str(error["ctx"]["error"])
        if re.match(r"^(models\[\d+\]|sweep\.)", text):       # the message names its path
            return f"{where}: {text}"
    else:
        text = error["msg"]
    path = _join((*prefix, *loc))
    return f"{where}: {path}: {text}" if path else f"{where}: {text}"


def _did_you_mean(key, allowed: list[str]) -> str:
    close = difflib.get_close_matches(str(key), allowed, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _section_at(root: type, loc: tuple) -> type | None:
    """The schema class (dataclass or model) at `loc`, walking field annotations."""
    cls = root
    for part in loc:
        if isinstance(part, int) or cls is None:
            continue
        hints = typing.get_type_hints(cls, include_extras=True)
        cls = _schema_class(hints.get(part))
    return cls


def _schema_class(annotation) -> type | None:
    if isinstance(annotation, type) and (dataclasses.is_dataclass(annotation)
                                         or issubclass(annotation, BaseModel)):
        return annotation
    for arg in typing.get_args(annotation):
        found = _schema_class(arg)
        if found is not None:
            return found
    return None


def _keys(cls: type | None) -> list[str]:
    if cls is None:
        return []
    if dataclasses.is_dataclass(cls):
        return sorted(f.name for f in dataclasses.fields(cls) if f.name != "base_dir")
    return sorted(cls.model_fields)


def _kind(value) -> str:
    return "nothing (null)" if value is None else f"{type(value).__name__} {value!r}"
