"""Loading a study file: read the YAML, apply `--set` overrides, validate, check the models.

    load(path, overrides)      the file with `ppo.lr=1e-4`, `models[0].kwargs.theta=8` applied,
                               validated; `models=False`: not the memory names and keywords
    validate(raw, where)       a mapping -> Study (the same checks)
    expand(study)              the trials, in a fixed order

Every error is a `ConfigError` naming its path in the file
(`models[2].kwargs.memory_sise: unknown key; allowed: [...]`). The schema is
`experiments.study.schema`, the grid `experiments.study.grid`, the dotted keys
`experiments.study.overrides`. Memory names and keywords need PyTorch, so `check_models` checks
them (part of `load`/`validate` unless `models=False`: `memrl report` re-reads a study's
settings without them).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import (BaseModel, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError,
                      create_model)

from experiments.rllib import workers
from experiments.rllib.defaults import POPGYM_PPO
from experiments.rllib.popgym_models import check_popgym_model, position_table_problem
from experiments.rllib.rllib_models import check_rllib_model, is_rllib
from experiments.study.errors import ConfigError, did_you_mean, messages, parse
from experiments.study.grid import Trial, expand
from experiments.study.overrides import YamlLoader, apply_overrides, parse_value, set_key
from experiments.study.schema import (Checkpoint, Eval, Logging, ModelEntry, ModelSizes,
                                      PPOSettings, Resources, Stop, Study, Wandb)

__all__ = ["ConfigError", "load", "validate", "check_models", "import_modules", "expand", "Trial",
           "Study", "ModelEntry", "PPOSettings", "ModelSizes", "Resources", "Stop", "Checkpoint",
           "Eval", "Wandb", "Logging", "YamlLoader", "apply_overrides", "set_key", "parse_value"]


def load(path: str | Path, overrides: list[str] = (), *, models: bool = True) -> Study:
    """Read the study file, apply `key=value` overrides, validate (`models=False`: not the
    memory names and keywords, which need PyTorch)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such study file")
    try:
        raw = yaml.load(path.read_text(), Loader=YamlLoader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    raw = apply_overrides(raw, overrides)
    if isinstance(raw, dict):
        raw.setdefault("base_dir", str(path.resolve().parent))
    return validate(raw, where=str(path), models=models)


def validate(raw: Any, where: str = "config", *, models: bool = True) -> Study:
    """Raw YAML mapping -> Study, or ConfigError naming every problem found."""
    study = parse(Study, raw, where)
    if models:
        check_models(study, where)
    return study


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
    bad values fail now. A POPGym model with a position table gets one long enough for each
    of its tasks' episodes (`popgym_models.position_table_problem`)."""
    import envs

    import_modules(study, where)
    errors, checked, episode_lengths = [], set(), {}
    for trial in expand(study):
        at = f"{where} (sweep point {trial.sweep})" if trial.sweep else where
        path = f"models[{trial.model_index}]"
        key = repr((trial.model_index, trial.model, trial.model_config))
        if key not in checked:
            checked.add(key)
            errors += _model_problems(trial.model, path, at, ModelSizes(**trial.model_config))
        settings = {**POPGYM_PPO, **trial.ppo}
        key = repr((trial.model_index, trial.model, trial.task, settings["max_seq_len"],
                    settings["batch_mode"]))
        if trial.model.is_popgym and key not in checked and not check_popgym_model(
                trial.model.name, trial.model.kwargs):
            checked.add(key)
            if trial.task not in episode_lengths:
                episode_lengths[trial.task] = envs.max_episode_length(trial.task)
            problem = position_table_problem(trial.model.name, trial.task,
                                             episode_lengths[trial.task],
                                             settings["max_seq_len"], settings["batch_mode"])
            errors += [f"{at}: {path}: {problem}"] if problem else []
    if errors:
        raise ConfigError("\n".join(errors))


def _model_problems(model: ModelEntry, path: str, where: str, sizes: ModelSizes) -> list[str]:
    import memory_models

    if model.is_popgym:
        problem = check_popgym_model(model.name, model.kwargs)
        return [f"{where}: {path}: {problem}"] if problem else []
    if is_rllib(model.name):
        problem = check_rllib_model(model.name, model.kwargs, sizes.hidden_size)
        return [f"{where}: {path}: {problem}"] if problem else []
    if model.name not in memory_models.available():
        close = difflib.get_close_matches(model.name, memory_models.available(), n=2)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        return [f"{where}: {path}.name: unknown memory model {model.name!r}{hint}; "
                f"available: {memory_models.available()}, popgym:<Model> and rllib:GTrXL"]
    try:
        memory_models.check_kwargs(model.name, model.kwargs)     # the registry's one check
    except memory_models.UnknownKeywordError as error:
        return [f"{where}: {path}.kwargs.{key}: " + (
                f"the memory's width is the study's `model_config: {{hidden_size: ...}}` "
                f"(its input, the network's pre_size); not a model keyword"
                if key in ("hidden_size", "input_size") else
                f"unknown key{did_you_mean(key, error.valid)}; allowed: {error.valid}")
                for key in error.unknown]
    kwargs_model = _kwargs_model(model.name, memory_models.keywords(model.name))
    try:
        kwargs_model(**model.kwargs)
        memory_models.make(model.name, input_size=4, hidden_size=sizes.hidden_size,
                           **model.kwargs)
    except ValidationError as error:
        return messages(where, error, kwargs_model, prefix=(path, "kwargs"))
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
