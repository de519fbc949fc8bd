"""`memrl report SOURCE [SOURCE ...]`: the MMER table (markdown + CSV), rliable's aggregate,
the evaluation table and learning curves of a study: of its folder, of an earlier report of it,
or of its pieces (several folders combined by trial name; experiments.report.sources).

MMER, as in the POPGym paper: for one trial, the maximum over training iterations of the mean
episodic return (`env_runners/episode_return_mean`); per (model, task) the mean over seeds with
its spread; per model the mean over tasks. POPGym scales every task's rewards so that an
episode's return lies in [-1, 1] (e.g. RepeatPrevious: +-1/(cards - k) per step, CountRecall and
the CartPoles: 1/max_episode_length), so tasks are averaged as they are. A "model" is a row of
the study (its label, with the swept values when the study sweeps).

    OUT/mmer.md            models x tasks, "mean ± std (n seeds)", last column: mean
    OUT/mmer.csv           one row per (model, task) and per (model, "mean")
    OUT/trials.csv         one row per trial: MMER, last return, env steps reached, last
                           evaluation
    OUT/aggregate.md       rliable: IQM and mean of MMER with 95% bootstrap CIs, probability
                           of improvement over POPGym's originals and over `--against` models
                           (+ aggregate.csv, performance_profile.png); see
                           experiments.report.aggregate
    OUT/eval.md            studies with `eval:`: the last evaluation's mean return per
                           (model, task), mean ± std over seeds, beside MMER (+ eval.csv)
    OUT/curves_<task>.png  return vs env steps, every model, mean ± std shaded
    OUT/horizon.md         studies whose tasks are one env at several lengths L (T-Maze):
                           score against L, the longest L each model solves, BPTT and window
                           (+ horizon.csv, horizon.png; experiments.report.horizon)
    OUT/iterations.csv, OUT/study.json   every trial's iterations and the study's settings
                           (and the report's --models and --against): OUT is itself a source
                           for a later report (commit it)

OUT is `--out`, by default SOURCE/report of the first source.

The spread over seeds is the sample standard deviation (0 for one seed); the CSV also has the
min and max. The "mean" column's spread is over seeds of the per-seed task average, over the
seeds that have every task.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd

from experiments.report import aggregate, horizon
from experiments.report.sources import (FINAL_COLUMNS, ITERATIONS_FILE, TRIAL_FILE_COLUMNS,
                                        TRIAL_KEYS, TRIALS_FILE, ReportError, load,
                                        with_episodes, write_iterations)
from experiments.study.results import STUDY_FILE, short_task

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MEAN = "mean"           # the task-average column


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="MMER table, aggregate statistics, evaluation and learning curves of a "
                       "finished (or running) study",
        description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="the study folder (e.g. results/quickstart), a folder an earlier "
                             "report wrote, or several of them: the pieces of one study")
    parser.add_argument("--out", default=None,
                        help="where to write the tables and plots (default SOURCE/report of "
                             "the first source)")
    parser.add_argument("--against", action="append", default=[], metavar="MODEL",
                        help="also give P(X > MODEL) for every other model X of the study, "
                             "over all tasks and per task (a model's label as in the tables, "
                             "e.g. popgym-GRU); repeatable")
    parser.add_argument("--models", action="append", default=[], metavar="MODEL",
                        help="report only these models (labels as in the tables, "
                             "comma-separated or repeated), e.g. a diagnosis that gave two "
                             "of a study's models more seeds")
    parser.add_argument("--reps", type=int, default=aggregate.BOOTSTRAP_REPS,
                        help="bootstrap resamples of the aggregate's confidence intervals "
                             "(default %(default)s; the time grows with reps x tasks x models)")
    parser.set_defaults(func=run)


def run(args) -> int:
    try:
        only = [model for value in args.models for model in value.split(",") if model]
        paths = report(args.sources, args.out, args.reps, args.against, only)
    except ReportError as error:
        print(f"memrl report: {error}", file=sys.stderr)
        return 2
    print(paths["table"].read_text())
    print(paths["aggregate"].read_text())
    print(f"table:      {paths['table']}\n            {paths['csv']}\n            "
          f"{paths['trials']}")
    print("aggregate:  " + "\n            ".join(
        str(p) for p in (paths["aggregate"], paths["aggregate_csv"], paths["profile"]) if p))
    print(f"evaluation: {paths['eval']}\n            {paths['eval_csv']}" if paths["eval"]
          else f"evaluation: none, {paths['eval_note']}")
    print("plots:      " + ("\n            ".join(str(p) for p in paths["plots"])
                             or f"none, {paths['plots_note']}"))
    if paths["horizon"]:
        print("horizon:    " + "\n            ".join(
            str(p) for p in (paths["horizon"], paths["horizon_csv"], paths["horizon_plot"]) if p))
    return 0


# --------------------------------------------------------------------------- per trial
def trial_table(iterations: pd.DataFrame) -> pd.DataFrame:
    """One row per trial, in the study's order: its TRIAL_KEYS, `iterations` and `env_steps`
    (over iterations with a finished episode; 0 without any), `mmer` and `last_return` (NaN
    without), `eval_return` (the last evaluation's mean return; NaN without)."""
    by_trial = with_episodes(iterations).groupby("name", sort=False)
    trials = iterations.drop_duplicates("name").set_index("name")[list(TRIAL_KEYS[1:])]
    trials = trials.join(pd.DataFrame({
        "iterations": by_trial.size(), "env_steps": by_trial["env_steps"].last(),
        "mmer": by_trial["return_mean"].max(), "last_return": by_trial["return_mean"].last()}))
    trials["eval_return"] = iterations.groupby("name", sort=False)["eval_return"].last()
    trials[["iterations", "env_steps"]] = trials[["iterations", "env_steps"]].fillna(0).astype(int)
    return trials.reset_index()


def complete_runs(trials: pd.DataFrame) -> pd.DataFrame:
    """MMER per (variant, seed) x task, only the seeds that have every task of the study."""
    tasks = list(trials["task"].unique())
    scored = trials.dropna(subset=["mmer"])
    return (scored.pivot(index=["variant", "seed"], columns="task", values="mmer")
            .reindex(columns=tasks).dropna())


def seed_stats(values: pd.Series, by) -> pd.DataFrame:
    """n, mean, std (sample std; 0 for one seed), min and max of `values` per group of `by`."""
    stats = values.groupby(by, sort=False).agg(["count", "mean", "std", "min", "max"])
    stats = stats.rename(columns={"count": "n"})
    stats.loc[stats["n"] == 1, "std"] = 0.0
    return stats


# --------------------------------------------------------------------------- MMER
def mmer_frame(trials: pd.DataFrame) -> pd.DataFrame:
    """MMER stats (seed_stats columns) per (model, task or MEAN), every pair, in study order;
    a pair without results has n = 0 and NaN stats."""
    models, tasks = list(trials["variant"].unique()), list(trials["task"].unique())
    scored = trials.dropna(subset=["mmer"])
    cells = seed_stats(scored["mmer"], [scored["variant"], scored["task"]])
    per_seed = complete_runs(trials).mean(axis=1)           # task average of each full seed
    means = seed_stats(per_seed, per_seed.index.get_level_values("variant"))
    means.index = pd.MultiIndex.from_product([means.index, [MEAN]])
    frame = pd.concat([cells, means]).reindex(
        pd.MultiIndex.from_product([models, [*tasks, MEAN]], names=["model", "task"]))
    frame["n"] = frame["n"].fillna(0).astype(int)
    return frame


def markdown(models, tasks, table, title: str) -> str:
    header = ["model", *map(short_task, tasks), "mean over tasks"]
    lines = [f"# MMER: {title}", "",
             "Max over training of the mean episodic return; mean ± std over seeds (n seeds). "
             "POPGym returns lie in [-1, 1].", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in models:
        cells = [cell(table[model, task]) for task in (*tasks, MEAN)]
        lines.append("| " + " | ".join([model, *cells]) + " |")
    return "\n".join(lines) + "\n"


def cell(stats: dict) -> str:
    """`mean ± std (n)`, or a dash without results."""
    if not stats["n"]:
        return "—"
    return f"{stats['mean']:.3f} ± {stats['std']:.3f} ({stats['n']})"


# --------------------------------------------------------------------------- evaluation
def eval_frame(trials: pd.DataFrame, mmer: pd.DataFrame,
               carried: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (model, task) with an evaluation, in the trials' order: eval_seeds/mean/std of the
    last evaluation's mean return over seeds (of `carried`, an older report's eval.csv rows,
    for a pair whose trials have no per-trial evaluation), and the MMER of mmer_frame beside
    it."""
    evaluated = trials.dropna(subset=["eval_return"])
    stats = seed_stats(evaluated["eval_return"], [evaluated["variant"], evaluated["task"]])
    stats = stats[["n", "mean", "std"]].add_prefix("eval_").rename(
        columns={"eval_n": "eval_seeds"})
    if carried is not None and len(carried):
        carried = carried.set_index(["model", "task"])[list(stats.columns)]
        stats = pd.concat([stats, carried[~carried.index.isin(stats.index)]])
    pairs = pd.MultiIndex.from_frame(trials[["variant", "task"]]).unique()
    stats = stats.reindex([pair for pair in pairs if pair in stats.index])
    stats["eval_seeds"] = stats["eval_seeds"].astype(int)
    stats.index.names = ["model", "task"]
    return stats.join(mmer[["n", "mean", "std"]].add_prefix("mmer_")
                      .rename(columns={"mmer_n": "mmer_seeds"}))


def eval_markdown(frame: pd.DataFrame, settings: dict | None, title: str) -> str:
    how = (f"{settings['episodes']} complete episodes, "
           f"{'greedy' if settings['greedy'] else 'sampled'} actions, " if settings else "")
    lines = [f"# Evaluation: {title}", "",
             f"Mean return of each trial's last evaluation ({how}played one step at a time, "
             "the memory reset at each episode start); mean ± std over seeds (n seeds). "
             "MMER (mmer.md) beside it.", "",
             "| model | task | eval return | MMER |", "|---|---|---|---|"]
    for row in frame.itertuples():
        model, task = row.Index
        evaluation = {"n": row.eval_seeds, "mean": row.eval_mean, "std": row.eval_std}
        mmer = {"n": row.mmer_seeds, "mean": row.mmer_mean, "std": row.mmer_std}
        lines.append(f"| {model} | {short_task(task)} | {cell(evaluation)} | {cell(mmer)} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- curves
class Curve(NamedTuple):
    """A model's learning curve on one task: mean and std of the return over seeds (G,) at
    env steps (G,)."""
    steps: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    seeds: int


def seed_curves(iterations: pd.DataFrame) -> list[tuple[np.ndarray, np.ndarray]]:
    """(env steps (N,), mean episodic return (N,)) of each trial in `iterations` (sources.load's
    rows), in order: its iterations that finished an episode, a resumed trial's repeated
    iteration once."""
    return [(trial["env_steps"].to_numpy(), trial["return_mean"].to_numpy())
            for _, trial in with_episodes(iterations).groupby("name", sort=False)]


def mean_curve(curves: list[tuple[np.ndarray, np.ndarray]], points: int = 100) -> Curve:
    """The seeds' curves interpolated linearly at `points` env steps spanning the range every
    seed covers (one point if they share only one), then mean and std over seeds (the sample
    std, 0 for one seed, as in the tables)."""
    end = min(steps[-1] for steps, _ in curves)
    start = max(steps[0] for steps, _ in curves)
    grid = np.linspace(start, end, points) if end > start else np.array([end], dtype=float)
    values = np.stack([np.interp(grid, steps, returns) for steps, returns in curves])
    std = values.std(0, ddof=1) if len(curves) > 1 else np.zeros_like(grid)
    return Curve(grid, values.mean(0), std, len(curves))


def task_curves(iterations: pd.DataFrame, task: str) -> dict[str, Curve]:
    """What curves_<task>.png shows: each model's mean_curve over its seeds on `task` (the
    models with a finished episode there, in study order)."""
    episodes = with_episodes(iterations[iterations["task"] == task])
    return {model: mean_curve(seed_curves(rows))
            for model, rows in episodes.groupby("variant", sort=False)}


def plot_task(task: str, curves: dict[str, Curve], path: Path) -> Figure:
    """Draw task_curves: one line per model, mean ± std shaded; saved to `path`, returned."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.2), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for model, curve in curves.items():
        line, = axes.plot(curve.steps, curve.mean, label=f"{model} ({curve.seeds})",
                          marker="o" if len(curve.steps) == 1 else None)
        axes.fill_between(curve.steps, curve.mean - curve.std, curve.mean + curve.std,
                          color=line.get_color(), alpha=0.2)
    axes.set_title(short_task(task))
    axes.set_xlabel("env steps")
    axes.set_ylabel("mean episodic return")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", title="model (seeds)", title_fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
    return figure


# --------------------------------------------------------------------------- report
def check_models(option: str, names, models: list[str]) -> None:
    """ReportError naming the `names` (given with `option`) that are not among `models`."""
    unknown = sorted(set(names) - set(models))
    if unknown:
        raise ReportError(f"{option} {', '.join(unknown)}: not a model of the study "
                          f"(its models: {', '.join(models)})")


def report(sources: str | Path | list, out: str | Path | None = None,
           reps: int = aggregate.BOOTSTRAP_REPS, against: list[str] = (),
           only: list[str] = ()) -> dict:
    """Write the tables, CSVs and plots of the sources (one folder or a list; `reps` bootstrap
    resamples for the aggregate's CIs, `against`: models to give P(X > model) for, `only`: the
    models to report, all when empty); returns
    their paths (`eval`, `eval_csv` and `profile` None when not written, `eval_note` saying why
    there is no eval.md; `plots` only for tasks with a trial's iterations)."""
    sources = [sources] if isinstance(sources, (str, Path)) else list(sources)
    out = Path(out) if out else Path(sources[0]) / "report"
    if (out / STUDY_FILE).is_file() and not (out / ITERATIONS_FILE).is_file() and \
            not (out / TRIALS_FILE).is_file():
        raise ReportError(f"--out {out} is a study folder: write the report elsewhere (the "
                          f"default is {out / 'report'})")
    study, iterations, finals, names, carried = load(sources)
    title = study["name"]
    trials = pd.concat([frame for frame in (trial_table(iterations),
                                            finals.reindex(columns=list(FINAL_COLUMNS)))
                        if len(frame)], ignore_index=True)
    trials = trials.set_index("name").loc[names].reset_index()       # the sources' order
    models = list(trials["variant"].unique())
    check_models("--models", only, models)
    if only:
        trials = trials[trials["variant"].isin(only)].reset_index(drop=True)
        iterations = iterations[iterations["name"].isin(trials["name"])]
        models = [model for model in models if model in only]
    tasks = list(trials["task"].unique())
    check_models("--against", against, models)
    mmer = mmer_frame(trials)
    out.mkdir(parents=True, exist_ok=True)

    paths = {"table": out / "mmer.md", "csv": out / "mmer.csv", "trials": out / TRIALS_FILE,
             "eval": None, "eval_csv": None, "eval_note": None, "plots": [], "plots_note": None}
    paths["table"].write_text(markdown(models, tasks, mmer.to_dict("index"), title))
    mmer.set_axis(["seeds", "mmer_mean", "mmer_std", "mmer_min", "mmer_max"], axis=1).to_csv(
        paths["csv"])
    trials.rename(columns={"name": "trial"})[list(TRIAL_FILE_COLUMNS)].to_csv(
        paths["trials"], index=False)
    write_iterations(iterations, out / ITERATIONS_FILE)
    (out / STUDY_FILE).write_text(json.dumps(
        {"study": study, "sources": [str(source) for source in sources],
         **({"models": list(only)} if only else {}),
         **({"against": list(against)} if against else {})}, indent=1))
    paths.update(aggregate.write(complete_runs(trials), trials, out, title, reps, against))

    evaluation = eval_frame(trials, mmer, carried)
    if len(evaluation):
        paths["eval"], paths["eval_csv"] = out / "eval.md", out / "eval.csv"
        paths["eval"].write_text(eval_markdown(evaluation, study.get("eval"), title))
        evaluation.to_csv(paths["eval_csv"])
    else:
        paths["eval_note"] = ("no trial has finished an evaluation yet" if study.get("eval")
                              else "the study has no `eval:` key (add `eval: {episodes: 10}`)")
    for task in tasks:
        curves = task_curves(iterations, task)
        if curves:
            path = out / f"curves_{short_task(task)}.png"
            plot_task(task, curves, path)
            paths["plots"].append(path)
    paths.update(horizon.write(trials, study, out, title))
    if not paths["plots"]:
        paths["plots_note"] = ("the trials are known by their final numbers only (trials.csv "
                               "of a report written before iterations.csv): no curves to draw")
    return paths
