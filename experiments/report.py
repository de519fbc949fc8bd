"""`memrl report RESULTS_DIR`: the MMER table (markdown + CSV) and learning curves of a study.

MMER, as in the POPGym paper: for one trial, the maximum over training iterations of the mean
episodic return (`env_runners/episode_return_mean`); per (model, task) the mean over seeds with
its spread; per model the mean over tasks. POPGym scales every task's rewards so that an
episode's return lies in [-1, 1] (e.g. RepeatPrevious: +-1/(cards - k) per step, CountRecall and
the CartPoles: 1/max_episode_length), so tasks are averaged as they are.

    RESULTS_DIR/report/mmer.md       models x tasks, "mean ± std (n seeds)", last column: mean
    RESULTS_DIR/report/mmer.csv      one row per (model, task) and per (model, "mean")
    RESULTS_DIR/report/trials.csv    one row per trial: MMER, last return, env steps reached
    RESULTS_DIR/report/curves_<task>.png   return vs env steps, every model, mean ± std shaded

The spread over seeds is the sample standard deviation (0 for one seed); the CSV also has the
min and max. The "mean" column's spread is over seeds of the per-seed task average.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np

from experiments.launcher import ENV_STEPS, RETURN_MEAN, STUDY_FILE

MEAN = "mean"           # the task-average column


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="MMER table and learning curves of a finished (or running) study",
        description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="the study folder, e.g. results/quickstart")
    parser.add_argument("--out", default=None,
                        help="where to write the table and plots (default RESULTS/report)")
    parser.set_defaults(func=run)


def run(args) -> int:
    try:
        paths = report(args.results, args.out)
    except ReportError as error:
        print(f"memrl report: {error}", file=sys.stderr)
        return 2
    print(paths["table"].read_text())
    print(f"table:  {paths['table']}\n        {paths['csv']}\n        {paths['trials']}")
    print("plots:  " + "\n        ".join(str(p) for p in paths["plots"]))
    return 0


class ReportError(RuntimeError):
    """The folder is not a memrl study, or holds no results yet."""


# --------------------------------------------------------------------------- reading
def read_curve(progress_csv: Path) -> tuple[np.ndarray, np.ndarray]:
    """(env steps (N,), mean episodic return (N,)) of one trial, one entry per training
    iteration that had a finished episode; a repeated iteration (resume) keeps its last row."""
    rows: dict[int, tuple[float, float]] = {}
    with open(progress_csv, newline="") as file:
        for row in csv.DictReader(file):
            if row.get("training_iteration") in (None, "", "training_iteration"):
                continue
            steps, ret = _float(row.get(ENV_STEPS)), _float(row.get(RETURN_MEAN))
            if math.isfinite(steps) and math.isfinite(ret):
                rows[int(float(row["training_iteration"]))] = (steps, ret)
    ordered = [rows[i] for i in sorted(rows)]
    steps = np.array([s for s, _ in ordered], dtype=float)
    returns = np.array([r for _, r in ordered], dtype=float)
    return steps, returns


def _float(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def load_study(results: str | Path) -> tuple[dict, list[dict]]:
    """The study's manifest and, per trial, its entry plus `steps`/`returns` curves."""
    results = Path(results)
    manifest_file = results / STUDY_FILE
    if not manifest_file.is_file():
        raise ReportError(f"{results} is not a memrl study folder (no {STUDY_FILE}); "
                          f"run `memrl train CONFIG` first")
    manifest = json.loads(manifest_file.read_text())
    trials = []
    for entry in manifest["trials"]:
        progress = results / entry["name"] / "progress.csv"
        steps, returns = read_curve(progress) if progress.is_file() else (np.zeros(0),) * 2
        trials.append({**entry, "steps": steps, "returns": returns})
    if not any(len(t["returns"]) for t in trials):
        raise ReportError(f"no trial in {results} has reported an episode return yet")
    return manifest, trials


# --------------------------------------------------------------------------- MMER
def mmer_table(trials: list[dict]) -> tuple[list[str], list[str], dict]:
    """labels, tasks and {(label, task or MEAN): stats} with n, mean, std, min, max, values."""
    labels = list(dict.fromkeys(t["label"] for t in trials))
    tasks = list(dict.fromkeys(t["task"] for t in trials))
    mmer = {(t["label"], t["task"], t["seed"]): float(t["returns"].max())
            for t in trials if len(t["returns"])}
    seeds = sorted({t["seed"] for t in trials})
    table = {}
    for label in labels:
        for task in tasks:
            table[label, task] = _stats([mmer[label, task, s] for s in seeds
                                         if (label, task, s) in mmer])
        # per seed: the task average, over seeds that have every task
        per_seed = [np.mean([mmer[label, task, s] for task in tasks]) for s in seeds
                    if all((label, task, s) in mmer for task in tasks)]
        table[label, MEAN] = _stats(per_seed)
    return labels, tasks, table


def _stats(values: list[float]) -> dict:
    values = [float(v) for v in values]
    if not values:
        return {"n": 0, "mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan}
    return {"n": len(values), "mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def markdown(labels, tasks, table, title: str) -> str:
    from experiments.config import short_task
    header = ["model", *map(short_task, tasks), "mean over tasks"]
    lines = [f"# MMER: {title}", "",
             "Max over training of the mean episodic return; mean ± std over seeds (n seeds). "
             "POPGym returns lie in [-1, 1].", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label in labels:
        cells = [_cell(table[label, task]) for task in (*tasks, MEAN)]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines) + "\n"


def _cell(stats: dict) -> str:
    if not stats["n"]:
        return "—"
    return f"{stats['mean']:.3f} ± {stats['std']:.3f} ({stats['n']})"


# --------------------------------------------------------------------------- plots
def plot_task(task: str, trials: list[dict], path: Path) -> None:
    """Mean return over seeds vs env steps, one line per model, std shaded."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from experiments.config import short_task
    figure = Figure(figsize=(6.4, 4.2), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label in dict.fromkeys(t["label"] for t in trials):
        curves = [(t["steps"], t["returns"]) for t in trials
                  if t["label"] == label and t["task"] == task and len(t["returns"])]
        if not curves:
            continue
        end = min(steps[-1] for steps, _ in curves)       # range every seed covers
        start = max(steps[0] for steps, _ in curves)
        grid = np.linspace(start, end, 100) if end > start else np.array([end])
        values = np.stack([np.interp(grid, steps, returns) for steps, returns in curves])
        mean, std = values.mean(0), values.std(0)
        line, = axes.plot(grid, mean, label=f"{label} ({len(curves)})",
                          marker="o" if len(grid) == 1 else None)
        axes.fill_between(grid, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    axes.set_title(short_task(task))
    axes.set_xlabel("env steps")
    axes.set_ylabel("mean episodic return")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", title="model (seeds)", title_fontsize="small")
    figure.tight_layout()
    figure.savefig(path)


# --------------------------------------------------------------------------- report
def report(results: str | Path, out: str | Path | None = None) -> dict:
    """Write the table, CSVs and plots; returns their paths."""
    results = Path(results)
    manifest, trials = load_study(results)
    out = Path(out) if out else results / "report"
    out.mkdir(parents=True, exist_ok=True)
    labels, tasks, table = mmer_table(trials)

    paths = {"table": out / "mmer.md", "csv": out / "mmer.csv", "trials": out / "trials.csv",
             "plots": []}
    paths["table"].write_text(markdown(labels, tasks, table, manifest["study"]["name"]))
    with open(paths["csv"], "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["model", "task", "seeds", "mmer_mean", "mmer_std", "mmer_min",
                         "mmer_max"])
        for label in labels:
            for task in (*tasks, MEAN):
                s = table[label, task]
                writer.writerow([label, task, s["n"], s["mean"], s["std"], s["min"], s["max"]])
    with open(paths["trials"], "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["trial", "task", "model", "label", "seed", "iterations", "env_steps",
                         "mmer", "last_return"])
        for t in trials:
            has = len(t["returns"]) > 0
            writer.writerow([t["name"], t["task"], t["model"], t["label"], t["seed"],
                             len(t["returns"]), int(t["steps"][-1]) if has else 0,
                             float(t["returns"].max()) if has else "",
                             float(t["returns"][-1]) if has else ""])
    from experiments.config import short_task
    for task in tasks:
        path = out / f"curves_{short_task(task)}.png"
        plot_task(task, trials, path)
        paths["plots"].append(path)
    return paths
