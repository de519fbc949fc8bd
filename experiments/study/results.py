"""What a study leaves on disk and what its results are called: read by the study, the report
and the tests (no Ray or PyTorch import).

    <output>/<name>/study.json               manifest(study, trials)
    <output>/<name>/<trial.name>/progress.csv, result.json   one row per training iteration
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from experiments.study.config import Study, Trial

__all__ = ["STUDY_FILE", "ENV_STEPS", "RETURN_MEAN", "EVALUATION", "EVAL_KEYS", "EVAL_RETURN",
           "manifest", "short_task"]

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
                        "kwargs": t.model.kwargs, "sweep": t.sweep, "seed": t.seed}
                       for t in trials]}


def short_task(env_id: str) -> str:
    """popgym-RepeatPreviousEasy-v0 -> RepeatPreviousEasy."""
    return re.sub(r"^popgym-|-v\d+$", "", env_id)
