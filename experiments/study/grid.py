"""A study's trials: `expand(study)` lists tasks (outer) x models x sweep points x seeds (inner),
each a `Trial` with every setting it trains with."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from experiments.study.errors import parse
from experiments.study.overrides import set_key
from experiments.study.results import short_task
from experiments.study.schema import ModelEntry, Study, sweep_model

__all__ = ["Trial", "expand"]


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


def expand(study: Study) -> list[Trial]:
    """Every trial: tasks (outer) x models x sweep points x seeds (inner). A sweep key of one
    model (`models[i]...`) multiplies only that model's trials."""
    points = [dict(zip(study.sweep, values))
              for values in itertools.product(*study.sweep.values())] or [{}]
    trials: list[Trial] = []
    for task, (i, _) in itertools.product(study.tasks, enumerate(study.models)):
        own = [k for k in study.sweep if sweep_model(k) in (None, i)]
        for values in dict.fromkeys(tuple((k, p[k]) for k in own) for p in points):
            variant = _apply_sweep(study, dict(values))
            model = variant.models[i]
            for seed in study.seeds:
                trials.append(Trial(len(trials), task, model, seed, i,
                                    ppo=trial_ppo(variant.ppo, model.ppo, dict(values)),
                                    model_config=dict(variant.sizes),
                                    sweep=dict(values)))
    return trials


def trial_ppo(study_ppo: dict, model_ppo: dict, sweep: dict) -> dict:
    """A trial's PPO overrides: the study's, then its model's own, then the swept values: a
    swept `ppo.KEY` wins over the model's own `ppo: {KEY: ...}` it sweeps past, so a trial
    named `...-lr=0.0005-...` trains with lr 5e-4."""
    swept = {key.removeprefix("ppo."): value for key, value in sweep.items()
             if key.startswith("ppo.")}
    return {**study_ppo, **model_ppo, **swept}


def _apply_sweep(study: Study, values: dict[str, Any]) -> Study:
    """The study at one sweep point: its values set in the study's mapping, validated again."""
    if not values:
        return study
    raw = study.to_dict()
    raw.pop("sweep")
    for key, value in values.items():
        set_key(raw, key, value)
    return parse(Study, raw, where=f"sweep point {values}")
