"""What `memrl report` reads: one or more sources, the pieces of one study, as one table of
training iterations (and, for trials known only by their final numbers, one row per trial).

A source is
- a study folder written by `memrl train`: study.json and one folder per trial holding its
  progress.csv;
- a report folder written by `memrl report`: study.json, iterations.csv (every trial's
  training iterations, the columns below) and trials.csv. It is the committed record of a
  study: re-reported and combined without the trial folders, which stay on the machine that
  ran them. A trial in trials.csv without rows in iterations.csv (reports written before
  iterations.csv existed, or combined from one) is known by its final numbers only: it counts
  in the tables and the aggregate, not in the curves.

Pieces combine by trial name, so a study run in pieces (tasks or seeds on different machines,
a study resumed on a machine that lost the first piece's folder) reports as one: a trial in
several sources is taken whole from the one where it reached the most env steps (on a tie,
the later source). The first source with a study.json names the study and its settings.

    iterations (ITERATION_COLUMNS): one row per (trial, training iteration); a trial without
        results yet is one row of NaN results
    finals (FINAL_COLUMNS): one row per trial known only by trials.csv
    evaluations (EVALUATION_COLUMNS): a report folder's eval.csv rows, per (model, task), for
        the evaluations its trials.csv does not hold per trial (reports written before the
        eval_return column): the evaluation table carries them over as they were

A report folder written before trials.csv had the `stack` column (or the settings) takes them
from its study.json's trial list where it has one, as a study folder's do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from experiments.study.results import ENV_STEPS, EVAL_RETURN, RETURN_MEAN, STUDY_FILE

ITERATIONS_FILE = "iterations.csv"
TRIALS_FILE = "trials.csv"
# a trial's entry in study.json, as read here (older studies lack variant/stack/sweep and the
# SETTINGS_KEYS: those are taken from the study's own settings where it validates, else None)
TRIAL_KEYS = ("name", "task", "model", "label", "variant", "stack", "kwargs", "sweep", "seed",
              "ppo", "model_config")
SETTINGS_KEYS = ("ppo", "model_config")
RESULT_COLUMNS = ("iteration", "env_steps", "return_mean", "eval_return")
ITERATION_COLUMNS = (*TRIAL_KEYS, *RESULT_COLUMNS)
# trials.csv as `memrl report` writes it ("trial" is TRIAL_KEYS' "name")
TRIAL_FILE_COLUMNS = ("trial", "task", "model", "label", "variant", "stack", "seed",
                      "iterations", "env_steps", "mmer", "last_return", "eval_return")
FINAL_COLUMNS = (*TRIAL_KEYS, "iterations", "env_steps", "mmer", "last_return", "eval_return")
JSON_KEYS = ("kwargs", "sweep", *SETTINGS_KEYS)
EVAL_FILE = "eval.csv"
EVALUATION_COLUMNS = ("model", "task", "eval_seeds", "eval_mean", "eval_std")


class ReportError(RuntimeError):
    """The folder is not a memrl study or report, or holds no results yet."""


def read_progress(progress_csv: Path) -> pd.DataFrame:
    """One trial's progress.csv: one row per training iteration (a repeated iteration, as a
    resumed trial logs it, keeps its last row), with the RESULT_COLUMNS (NaN where absent)."""
    names = {"training_iteration": "iteration", ENV_STEPS: "env_steps",
             RETURN_MEAN: "return_mean", EVAL_RETURN: "eval_return"}
    frame = pd.read_csv(progress_csv, usecols=lambda c: c in names, index_col=False,
                        on_bad_lines="warn")
    frame = frame.rename(columns=names).reindex(columns=list(names.values()))
    frame = frame.apply(pd.to_numeric, errors="coerce").dropna(subset=["iteration"])
    return frame.drop_duplicates("iteration", keep="last").sort_values("iteration")


def with_episodes(iterations: pd.DataFrame) -> pd.DataFrame:
    """The iterations that finished an episode (have env steps and a mean return)."""
    return iterations.dropna(subset=["env_steps", "return_mean"])


def _json_values(frame: pd.DataFrame) -> pd.DataFrame:
    """The JSON_KEYS columns as dicts: kwargs and sweep {} where missing, the SETTINGS_KEYS
    None (not known)."""
    for key in JSON_KEYS:
        missing = None if key in SETTINGS_KEYS else {}
        frame[key] = [value if isinstance(value, dict) else missing for value in frame[key]]
    return frame


def _trial_entries(manifest: dict) -> pd.DataFrame:
    """study.json's trial list as TRIAL_KEYS columns, older studies' missing keys filled (the
    settings from the study's own, `_study_settings`)."""
    frame = pd.DataFrame(manifest["trials"]).reindex(columns=list(TRIAL_KEYS))
    frame["variant"] = frame["variant"].fillna(frame["label"])          # before variants
    frame["stack"] = frame["stack"].fillna("new")
    if frame[list(SETTINGS_KEYS)].isna().any(axis=None):
        known = _study_settings(manifest.get("study"))
        for key in SETTINGS_KEYS:
            frame[key] = [value if isinstance(value, dict) else known.get(name, {}).get(key)
                          for name, value in zip(frame["name"], frame[key])]
    return _json_values(frame)


def _study_settings(study: dict | None) -> dict[str, dict]:
    """{trial name: its trial_settings} of a study.json's study, expanded again ({} if it does
    not validate: a study of an older format)."""
    from experiments.study.config import ConfigError, expand, validate
    from experiments.study.results import trial_settings

    try:
        return {trial.name: trial_settings(trial)
                for trial in expand(validate(study, models=False))}
    except ConfigError:
        return {}


class Loaded(NamedTuple):
    """One source, or the sources as one study: the study's settings (of the first source
    with a study.json; None for a source without one, {"name": the first folder's name} for
    sources without any), iterations, finals, every trial's name in the sources' order
    (a study's trial list, a report's trials.csv, then first appearance over the sources) and
    the evaluations carried over from older reports (module docstring)."""
    study: dict | None
    iterations: pd.DataFrame
    finals: pd.DataFrame
    names: list[str]
    evaluations: pd.DataFrame


def _study_folder(folder: Path, manifest: dict) -> pd.DataFrame:
    """A study folder's iterations, read from its trials' progress.csv."""
    trials = _trial_entries(manifest)
    files = {name: folder / name / "progress.csv" for name in trials["name"]}
    progress = [read_progress(path).assign(name=name) for name, path in files.items()
                if path.is_file() and path.stat().st_size]
    progress = pd.concat(progress) if progress else pd.DataFrame(columns=["name",
                                                                          *RESULT_COLUMNS])
    return trials.merge(progress, on="name", how="left").reindex(
        columns=list(ITERATION_COLUMNS))


def _report_folder(folder: Path, manifest: dict | None
                   ) -> tuple[pd.DataFrame, pd.DataFrame, list[str], pd.DataFrame]:
    """A report folder's iterations (iterations.csv, if written), finals (the trials of
    trials.csv without iterations; columns it lacks from the manifest's trial list, if any),
    trial names (trials.csv's order) and carried evaluations (module docstring)."""
    iterations = pd.DataFrame(columns=list(ITERATION_COLUMNS))
    if (folder / ITERATIONS_FILE).is_file():
        iterations = pd.read_csv(folder / ITERATIONS_FILE).reindex(
            columns=list(ITERATION_COLUMNS))
        iterations = _json_values(iterations.assign(**{
            key: [json.loads(v) if isinstance(v, str) else None for v in iterations[key]]
            for key in JSON_KEYS}))
    finals = pd.DataFrame(columns=list(FINAL_COLUMNS))
    if (folder / TRIALS_FILE).is_file():
        finals = pd.read_csv(folder / TRIALS_FILE).rename(columns={"trial": "name"})
        finals = finals[~finals["name"].isin(iterations["name"])].copy()
        finals["variant"] = finals.get("variant", finals["label"]).fillna(finals["label"])
        entries = _trial_entries(manifest).set_index("name") \
            if manifest and manifest.get("trials") else None
        for key in ("stack", *JSON_KEYS):       # reports before these columns
            if key not in finals and entries is not None:
                finals[key] = [entries[key].get(name) for name in finals["name"]]
        if "stack" not in finals:               # and no trial list: POPGym's ran on the old
            finals["stack"] = np.where(finals["model"].str.startswith("popgym:"), "old", "new")
        finals = _json_values(finals.reindex(columns=list(FINAL_COLUMNS)))
    names = pd.read_csv(folder / TRIALS_FILE, usecols=["trial"])["trial"] \
        if (folder / TRIALS_FILE).is_file() else iterations["name"]
    return iterations, finals, list(pd.unique(names)), _carried_evaluations(folder, finals)


def _carried_evaluations(folder: Path, finals: pd.DataFrame) -> pd.DataFrame:
    """The rows of the folder's eval.csv for (model, task) pairs whose trials it knows by
    their final numbers without a per-trial evaluation."""
    if not (folder / EVAL_FILE).is_file() or finals.empty:
        return pd.DataFrame(columns=list(EVALUATION_COLUMNS))
    rows = pd.read_csv(folder / EVAL_FILE).reindex(columns=list(EVALUATION_COLUMNS))
    unevaluated = finals[finals["eval_return"].isna()]
    pairs = set(zip(unevaluated["variant"], unevaluated["task"]))
    return rows[[pair in pairs for pair in zip(rows["model"], rows["task"])]]


def load_source(source: str | Path) -> Loaded:
    """One source (module docstring)."""
    folder = Path(source)
    manifest = json.loads((folder / STUDY_FILE).read_text()) \
        if (folder / STUDY_FILE).is_file() else None
    study = (manifest or {}).get("study")
    if (folder / ITERATIONS_FILE).is_file() or (folder / TRIALS_FILE).is_file():
        return Loaded(study, *_report_folder(folder, manifest))
    if manifest is not None:
        iterations = _study_folder(folder, manifest)
        return Loaded(study, iterations, pd.DataFrame(columns=list(FINAL_COLUMNS)),
                      [trial["name"] for trial in manifest["trials"]],
                      pd.DataFrame(columns=list(EVALUATION_COLUMNS)))
    if not folder.exists():
        raise ReportError(f"{folder} does not exist; give a study folder (`memrl train` writes "
                          f"<output>/<name>/) or a folder `memrl report` wrote")
    raise ReportError(f"{folder} is not a memrl study folder (no {STUDY_FILE}) nor a "
                      f"report folder (no {ITERATIONS_FILE} or {TRIALS_FILE}); run "
                      f"`memrl train CONFIG` first")


def env_steps_reached(source: Loaded) -> dict[str, float]:
    """The env steps each trial of one source reached (0 without an episode), by trial name,
    in the source's order."""
    reached = with_episodes(source.iterations).groupby("name")["env_steps"].max().to_dict()
    reached |= source.finals.set_index("name")["env_steps"].fillna(0).to_dict()
    return {name: reached.get(name, 0.0) for name in source.names}


def load(sources: list[str | Path]) -> Loaded:
    """The sources as one study (module docstring)."""
    loaded = [load_source(source) for source in sources]
    owner, reached = {}, {}                 # trial name -> the source it is taken from, steps
    for i, source in enumerate(loaded):
        for name, steps in env_steps_reached(source).items():
            if name not in reached or steps >= reached[name]:
                owner[name], reached[name] = i, steps
    iterations = _concat([source.iterations[source.iterations["name"].map(owner) == i]
                          for i, source in enumerate(loaded)], ITERATION_COLUMNS)
    finals = _concat([source.finals[source.finals["name"].map(owner) == i]
                      for i, source in enumerate(loaded)], FINAL_COLUMNS)
    evaluations = _concat([source.evaluations for source in loaded], EVALUATION_COLUMNS)
    evaluations = evaluations.drop_duplicates(["model", "task"], keep="last")
    if with_episodes(iterations).empty and finals["mmer"].isna().all():
        raise ReportError(f"no trial in {', '.join(map(str, sources))} has reported an "
                          f"episode return yet")
    study = next((source.study for source in loaded if source.study),
                 {"name": Path(sources[0]).name})
    return Loaded(study, iterations, finals, list(owner), evaluations)


def finished_trials(folders: list[str | Path], env_steps: int) -> dict[str, dict | None]:
    """The trials that reached `env_steps` in any of the folders (sources): name -> the
    settings it ran with (`trial_settings`: kwargs, ppo, model_config), None where the source
    does not say (a trial known by trials.csv only, a report written before settings)."""
    finished = {}
    for folder in folders:
        source = load_source(folder)
        settings = source.iterations.drop_duplicates("name").set_index("name")
        for name, steps in env_steps_reached(source).items():
            if steps < env_steps:
                continue
            row = settings.loc[name] if name in settings.index else None
            known = row is not None and all(row[key] is not None for key in SETTINGS_KEYS)
            finished[name] = {key: row[key] for key in ("kwargs", *SETTINGS_KEYS)} \
                if known else None
    return finished


def _concat(frames: list[pd.DataFrame], columns: tuple[str, ...]) -> pd.DataFrame:
    """The non-empty frames one after the other (an empty frame of `columns` without any)."""
    frames = [frame for frame in frames if len(frame)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=list(columns))


def write_iterations(iterations: pd.DataFrame, path: Path) -> None:
    """iterations.csv: the ITERATION_COLUMNS, kwargs and sweep as JSON."""
    frame = iterations.reindex(columns=list(ITERATION_COLUMNS)).copy()
    for key in JSON_KEYS:
        frame[key] = [json.dumps(value, sort_keys=True) for value in frame[key]]
    frame.to_csv(path, index=False)
