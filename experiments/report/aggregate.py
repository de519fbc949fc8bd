"""rliable's aggregate of a study's MMER: `report/aggregate.md`, `aggregate.csv` and
`performance_profile.png` (Agarwal et al., "Deep RL at the edge of the statistical precipice",
2021; computed by the `rliable` package):

- IQM (interquartile mean: the mean of the middle 50% of runs x tasks) and mean of MMER over
  tasks x seeds per model, each with a 95% stratified-bootstrap confidence interval (seeds
  resampled within each task);
- probability of improvement P(X > Y), the chance that X's MMER beats Y's on a task averaged
  over tasks, with its CI: each of our cells against its POPGym original (`gru` ->
  `popgym:GRU`, ...; same study-wide sweep values), and each of our old-API-stack entries
  against the same cell (same keywords and sweep values) on the new stack;
- against a reference model the report is asked for (`memrl report --against popgym-GRU`):
  P(X > reference) for every other model X, over all tasks and on each task alone (the
  task's column of the same runs);
- a performance profile: the fraction of runs x tasks whose MMER exceeds tau, tau in [-1, 1].

A run is one seed of a model with an MMER on every task of the study. A CI needs at least 2
runs (the bootstrap of one run is that run): with fewer, the table says so instead of an
interval. The bootstrap draws BOOTSTRAP_REPS resamples from a generator seeded with
BOOTSTRAP_SEED for each model and each pair, so a report is reproducible and a model's interval
does not depend on the other models of the study.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.rllib.popgym_models import POPGYM_ORIGINAL
from experiments.study.results import short_task

BOOTSTRAP_REPS = 2000
BOOTSTRAP_SEED = 0
TAUS = np.linspace(-1.0, 1.0, 41)       # MMER thresholds of the performance profile
# our cell -> its POPGym original
TOO_FEW = "too few seeds for a CI (needs 2 runs)"
NO_RUN = "no seed has every task"


@contextlib.contextmanager
def seeded(seed: int = BOOTSTRAP_SEED):
    """rliable 1.2 resamples with numpy's global generator (not its `random_state`): seed it
    for the block, then restore it."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def iqm_and_mean(scores: np.ndarray) -> np.ndarray:
    """rliable's IQM and mean of a (runs, tasks) score matrix, as one array (2,)."""
    from rliable import metrics
    return np.array([metrics.aggregate_iqm(scores), metrics.aggregate_mean(scores)])


def score_matrices(runs: pd.DataFrame) -> dict[str, np.ndarray]:
    """complete_runs' frame ((variant, seed) x task) -> {variant: (runs, tasks) matrix}."""
    return {variant: frame.to_numpy() for variant, frame in
            runs.groupby(level="variant", sort=False)}


def comparisons(trials: pd.DataFrame) -> list[tuple[str, str]]:
    """(X, Y) variant pairs for the probability of improvement (see the module docstring).
    Sweep values count where both have the key: a study-wide key (`ppo.lr`) must agree, one
    model's own key (`models[0].kwargs.theta`) does not keep it from its POPGym original."""
    entries = list(trials.drop_duplicates("variant").itertuples())
    pairs = []
    for x in entries:
        for y in entries:
            if any(x.sweep[key] != y.sweep[key] for key in x.sweep.keys() & y.sweep.keys()):
                continue
            original = y.model == POPGYM_ORIGINAL.get(x.model)
            new_stack = (x.stack, y.stack) == ("old", "new") and x.model == y.model and \
                x.kwargs == y.kwargs
            if original or new_stack:
                pairs.append((x.variant, y.variant))
    return pairs


def aggregate(runs: pd.DataFrame, models: list[str], pairs: list[tuple[str, str]],
              reps: int = BOOTSTRAP_REPS, against: list[str] = ()) -> pd.DataFrame:
    """One row per (statistic, model[, reference][, task]): statistic IQM, mean or P(X > Y);
    runs (and reference_runs); estimate; ci_low and ci_high (NaN without 2 runs on each side);
    task: "all", or one task for the per-task rows against each `against` model."""
    from rliable import library
    scores = score_matrices(runs)
    rows = []
    for model in models:
        matrix = scores.get(model)
        point, ci = np.full(2, np.nan), np.full((2, 2), np.nan)
        if matrix is not None:
            point = iqm_and_mean(matrix)
        if matrix is not None and len(matrix) >= 2:
            with seeded():
                _, cis = library.get_interval_estimates({model: matrix}, iqm_and_mean,
                                                        reps=reps)
            ci = cis[model]
        for i, statistic in enumerate(("IQM", "mean")):
            rows.append({"statistic": statistic, "model": model, "task": "all",
                         "runs": _runs(matrix),
                         "estimate": point[i], "ci_low": ci[0, i], "ci_high": ci[1, i]})
    tasks = list(runs.columns)
    against_pairs = [(x, y) for y in against for x in models if x != y]
    for x, y in list(dict.fromkeys([*pairs, *against_pairs])):
        rows.append(_improvement(scores.get(x), scores.get(y), x, y, "all", reps))
    for x, y in against_pairs:
        sx, sy = scores.get(x), scores.get(y)
        for j, task in enumerate(tasks):
            rows.append(_improvement(None if sx is None else sx[:, [j]],
                                     None if sy is None else sy[:, [j]], x, y, task, reps))
    columns = ["statistic", "model", "reference", "task", "runs", "reference_runs",
               "estimate", "ci_low", "ci_high"]
    return pd.DataFrame(rows, columns=columns).astype({"runs": int, "reference_runs": "Int64"})


def _improvement(sx: np.ndarray | None, sy: np.ndarray | None, x: str, y: str, task: str,
                 reps: int) -> dict:
    """The P(X > Y) row of score matrices sx, sy ((runs, tasks); None: no run)."""
    from rliable import library, metrics
    point, ci = np.nan, np.full(2, np.nan)
    if sx is not None and sy is not None:
        point = metrics.probability_of_improvement(sx, sy)
    if sx is not None and sy is not None and min(len(sx), len(sy)) >= 2:
        with seeded():
            _, cis = library.get_interval_estimates(
                {x: [sx, sy]}, metrics.probability_of_improvement, reps=reps)
        ci = cis[x].ravel()
    return {"statistic": "P(X > Y)", "model": x, "reference": y, "task": task,
            "runs": _runs(sx), "reference_runs": _runs(sy), "estimate": point,
            "ci_low": ci[0], "ci_high": ci[1]}


def _runs(matrix: np.ndarray | None) -> int:
    return 0 if matrix is None else len(matrix)


def markdown(table: pd.DataFrame, tasks: int, title: str, reps: int = BOOTSTRAP_REPS,
             pairs: list[tuple[str, str]] = (), against: list[str] = ()) -> str:
    """aggregate.md: the IQM/mean table, the probability-of-improvement table of `pairs`,
    then one table per `against` model: P(X > it) over all tasks and per task."""
    lines = [f"# Aggregate MMER: {title}", "",
             "IQM (interquartile mean: the mean of the middle 50% of runs x tasks) and mean of "
             "MMER, with 95% stratified-bootstrap confidence intervals (rliable; "
             f"{reps} resamples of the seeds within each task, seeded). A run is a seed with "
             f"an MMER on every task ({tasks} tasks); a CI needs at least 2 runs.", "",
             "| model | runs | IQM | 95% CI | mean | 95% CI |", "|---|---|---|---|---|---|"]
    by_model = table[table["statistic"].isin(["IQM", "mean"])].groupby("model", sort=False)
    for model, rows in by_model:
        cells = [f"{_number(r.estimate)} | {_interval(r, r.runs)}" for r in rows.itertuples()]
        lines.append(f"| {model} | {rows['runs'].iloc[0]} | " + " | ".join(cells) + " |")
    improvements = table[table["statistic"] == "P(X > Y)"]
    wanted = set(pairs)
    in_pairs = np.array([pair in wanted for pair in zip(improvements["model"],
                                                        improvements["reference"])], dtype=bool)
    pairs = improvements[(improvements["task"] == "all") & in_pairs]
    lines += ["", "## Probability of improvement", "",
              "P(X > Y): the probability that X's MMER beats Y's on a task (one run of each), "
              "averaged over tasks; 0.5 is a tie, a CI above 0.5 means X is better. Each of our "
              "cells against its POPGym original, and our cells on RLlib's old API stack "
              "against the same cell on the new stack.", ""]
    if pairs.empty:
        lines.append("No pair in this study: none of our cells "
                     f"({', '.join(POPGYM_ORIGINAL)}) beside its POPGym original "
                     f"({', '.join(POPGYM_ORIGINAL.values())}), nor an old-stack entry beside "
                     "its new-stack one.")
    else:
        lines += ["| X | Y | runs X / Y | P(X > Y) | 95% CI |", "|---|---|---|---|---|"]
        for r in pairs.itertuples():
            lines.append(f"| {r.model} | {r.reference} | {r.runs} / {r.reference_runs} | "
                         f"{_number(r.estimate)} | "
                         f"{_interval(r, min(r.runs, r.reference_runs))} |")
    for reference in against:
        lines += _against_markdown(improvements[improvements["reference"] == reference],
                                   reference)
    return "\n".join(lines) + "\n"


def _against_markdown(rows: pd.DataFrame, reference: str) -> list[str]:
    """The table of P(X > reference): X, runs, all tasks, then each task."""
    tasks = [t for t in rows["task"].unique() if t != "all"]
    header = ["X", f"runs X / {reference}", "all tasks", *map(short_task, tasks)]
    lines = ["", f"## Against {reference}", "",
             f"P(X > {reference}) with its 95% CI, over all tasks and on each task alone (the "
             "same runs' MMER on that task). A CI that holds 0.5 is within the noise of these "
             f"seeds; above 0.5, X is better than {reference} there.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, group in rows.groupby("model", sort=False):
        by_task = group.set_index("task")
        first = by_task.loc["all"]
        cells = [f"{_number(r.estimate)} {_interval(r, min(r.runs, r.reference_runs))}"
                 for r in (by_task.loc[t] for t in ["all", *tasks])]
        lines.append(f"| {model} | {first.runs} / {first.reference_runs} | "
                     + " | ".join(cells) + " |")
    return lines


def _number(value: float) -> str:
    return "—" if np.isnan(value) else f"{value:.3f}"


def _interval(row, runs: int) -> str:
    if not runs:
        return NO_RUN
    if np.isnan(row.ci_low):
        return TOO_FEW
    return f"[{row.ci_low:.3f}, {row.ci_high:.3f}]"


def plot_performance_profile(runs: pd.DataFrame, path: Path,
                             reps: int = BOOTSTRAP_REPS) -> None:
    """rliable's performance profile of every model with a run: the fraction of runs x tasks
    with MMER > tau, its 95% CI shaded for models with at least 2 runs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from rliable import library, plot_utils
    scores = score_matrices(runs)
    with seeded():
        profiles, cis = library.create_performance_profile(scores, TAUS, reps=reps)
    figure = Figure(figsize=(6.4, 4.2), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    plot_utils.plot_performance_profiles(
        profiles, TAUS, {m: ci for m, ci in cis.items() if len(scores[m]) >= 2}, ax=axes,
        xlabel=r"MMER ($\tau$)", ylabel=r"fraction of runs x tasks with MMER > $\tau$",
        xticks=[-1.0, -0.5, 0.0, 0.5, 1.0], labelsize="medium", ticklabelsize="medium",
        legend=True, legendsize="small")
    figure.tight_layout()
    figure.savefig(path)


def write(runs: pd.DataFrame, trials: pd.DataFrame, out: Path, title: str,
          reps: int = BOOTSTRAP_REPS, against: list[str] = ()) -> dict:
    """Writes aggregate.md, aggregate.csv and (with any run) performance_profile.png under
    `out` from complete_runs' frame and the trial table; returns {"aggregate",
    "aggregate_csv", "profile" (None when not written)}."""
    models = list(trials["variant"].unique())
    pairs = comparisons(trials)
    table = aggregate(runs, models, pairs, reps, against)
    paths = {"aggregate": out / "aggregate.md", "aggregate_csv": out / "aggregate.csv",
             "profile": None}
    paths["aggregate"].write_text(markdown(table, trials["task"].nunique(), title, reps,
                                           pairs, against))
    table.to_csv(paths["aggregate_csv"], index=False)
    if not runs.empty:
        paths["profile"] = out / "performance_profile.png"
        plot_performance_profile(runs, paths["profile"], reps)
    return paths
