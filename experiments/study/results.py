"""What a study leaves on disk and what its results are called: read by the study, the report
and the tests (no Ray or PyTorch import).

    <output>/<name>/study.json               manifest(study, trials)
    <output>/<name>/<trial.name>/progress.csv, result.json   one row per training iteration
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from experiments.study.config import Study, Trial

__all__ = ["STUDY_FILE", "ENV_STEPS", "RETURN_MEAN", "EVALUATION", "EVAL_KEYS", "EVAL_RETURN",
           "manifest", "trial_settings", "settings_differences", "short_task"]

STUDY_FILE = "study.json"
# RLlib 2.60 new-stack result keys
ENV_STEPS = "num_env_steps_sampled_lifetime"
RETURN_MEAN = "env_runners/episode_return_mean"
# a study's in-trial evaluation (eval:), in every result as evaluation/<key>
EVALUATION = "evaluation"
EVAL_KEYS = ("return_mean", "return_std", "length_mean", "episodes")
EVAL_RETURN = f"{EVALUATION}/return_mean"


def manifest(study: Study, trials: list[Trial]) -> dict:
    """What `study.json` holds: the validated study and every trial's folder and settings."""
    return {"study": study.to_dict(),
            "trials": [{"index": t.index, "name": t.name, "task": t.task, "model": t.model.name,
                        "label": t.model.label, "variant": t.variant, "stack": t.model.stack,
                        "sweep": t.sweep, "seed": t.seed, **trial_settings(t)}
                       for t in trials]}


def trial_settings(trial: Trial) -> dict:
    """What a trial trains with besides its task, model and seed, as JSON holds it: the
    memory's `kwargs`, its `ppo` (overrides of POPGYM_PPO: the study's, the model's, the sweep's)
    and `model_config` (the network's sizes). Two trials of one name and equal settings are
    the same run (`memrl train --skip-done`)."""
    return json.loads(json.dumps({"kwargs": trial.model.kwargs, "ppo": trial.ppo,
                                  "model_config": trial.model_config}, sort_keys=True))


def settings_differences(before: dict, now: dict) -> str:
    """Where two trial_settings differ, e.g. `ppo.max_seq_len 128 -> 400, kwargs.max_len
    absent -> 400`."""
    changes = []
    for part in sorted(set(before) | set(now)):
        old, new = before.get(part) or {}, now.get(part) or {}
        for key in sorted(set(old) | set(new)):
            if old.get(key, "absent") != new.get(key, "absent"):
                changes.append(f"{part}.{key} {old.get(key, 'absent')} -> "
                               f"{new.get(key, 'absent')}")
    return ", ".join(changes)


def short_task(env_id: str) -> str:
    """popgym-RepeatPreviousEasy-v0 -> RepeatPreviousEasy."""
    return re.sub(r"^popgym-|-v\d+$", "", env_id)
