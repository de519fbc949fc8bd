"""The horizon report of `memrl report`: how far back each memory remembers, when a study's
tasks form a length family (one env at several lengths L, e.g. `tmaze-Passive-L10-v0` ...
`tmaze-Passive-L1000-v0`; tasks whose id holds `-L<digits>`, grouped by the rest of the id).

    OUT/horizon.md    per family: score against L per model (mean [95% CI] over seeds, n),
                      the longest L each model solves, the settings that bound the answer
                      (ppo.max_seq_len, a windowed memory's `window`, the budget per L: env
                      steps reached and PPO train batch, read from the trials, so a study run
                      in pieces with a budget each reports each L's own)
    OUT/horizon.csv   one row per (family, model, L): n, mean, CI, min, max, solved, learned
    OUT/horizon.png   score against L (log axis), one panel per model (small multiples,
                      shared axes): the seeds' scores as dots, their mean and 95% CI, one
                      colour per family with two lengths or more; the chance level (T-Maze:
                      0.5) dotted and the threshold dashed

The score of a trial is its last evaluation's mean return (a study with `eval:`; greedy, many
episodes) when the family's trials have evaluations (a trial without one yet is left out of n),
else its MMER. The report says which: MMER
is the max over training of a mean over one iteration's episodes, and at long L an iteration
holds few episodes (4096 steps / (L + 1)), so MMER rises above the policy's success rate by
chance (at chance level 0.5, four episodes all succeed one iteration in 16). On T-Maze the
return is at most the success rate (goal +1 on success only, penalties <= 0): a score s means
a success rate of at least s.

Solved: a model solves L when EVERY seed's score is >= SOLVED_AT (0.9), not the mean. The
longest L solved is the largest such L ("—" if none); the table marks each solved L.
Learned (scored by evaluations only): every seed's MMER >= SOLVED_AT, i.e. at some iteration
the sampled policy's mean return over that iteration's episodes reached 0.9: the memory carried
the cue L steps at some point of training. The table's last column gives the longest L learned
beside the longest L solved: where they differ, the policy learned the recall and lost it
before the last evaluation (PPO's updates undoing a solved policy), which the final score
counts against the memory. With PPO batches of 128 episodes, as configs/horizon.yaml, an
iteration's mean at chance (0.5) does not reach 0.9 by luck.
The 95% CI over seeds is Student's t interval, mean ± t(0.975, n-1) · std / √n (none for one
seed). A family with one length gets a note in horizon.md and no plot. Files are written
whole or not at all (each to a temporary name first, then renamed); a stale horizon.png of an
earlier report is removed when no family has a plot.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from experiments.rllib.defaults import POPGYM_PPO
from experiments.study.results import short_task

__all__ = ["SOLVED_AT", "CHANCE_LEVELS", "Family", "length_families", "horizon_frame",
           "longest", "markdown", "figure", "plot", "write"]

SOLVED_AT = 0.9
# family name prefix -> the score of a policy without memory of the cue
CHANCE_LEVELS = {"tmaze-": 0.5}
# <head>-L<length><tail>: tmaze-Passive-L30-v0 -> head "tmaze-Passive", tail "-v0"
_LENGTH = re.compile(r"^(?P<head>.+)-L(?P<length>\d+)(?P<tail>(?:-.+)?)$")
FILES = ("horizon.md", "horizon.csv", "horizon.png")


class Family(NamedTuple):
    """One env at several lengths: its name (`tmaze-Passive-L*`) and {L: task id}, by L."""
    name: str
    tasks: dict[int, str]


def length_families(tasks) -> list[Family]:
    """The length families among `tasks` (in order of first appearance), each with its
    tasks sorted by L; tasks without `-L<digits>` in their id belong to none."""
    families: dict[str, dict[int, str]] = {}
    for task in tasks:
        match = _LENGTH.match(short_task(task))
        if match:
            name = f"{match['head']}-L*{match['tail']}"
            families.setdefault(name, {})[int(match["length"])] = task
    return [Family(name, dict(sorted(lengths.items()))) for name, lengths in families.items()]


def chance_level(family: Family) -> float | None:
    return next((level for prefix, level in CHANCE_LEVELS.items()
                 if family.name.startswith(prefix)), None)


def _score_column(trials: pd.DataFrame) -> str:
    """eval_return when a trial has an evaluation (the study has `eval:`), else mmer."""
    return "eval_return" if trials["eval_return"].notna().any() else "mmer"


def t_interval(values: np.ndarray) -> tuple[float, float]:
    """Student's t 95% interval of the mean of `values` (NaN, NaN for fewer than 2)."""
    if len(values) < 2:
        return math.nan, math.nan
    from scipy import stats
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return values.mean() - half, values.mean() + half


def every_seed_reaches(values: np.ndarray) -> bool:
    """Some seeds, and every one of them >= SOLVED_AT."""
    return bool(len(values)) and bool((values >= SOLVED_AT).all())


def horizon_frame(trials: pd.DataFrame, family: Family, score: str) -> pd.DataFrame:
    """Per (model, L) of `family`, every pair in study order: n, mean, ci_low, ci_high, min,
    max of the seeds' `score`, `solved` (every seed's score >= SOLVED_AT, n >= 1) and
    `learned` (every seed's MMER >= SOLVED_AT)."""
    models = list(trials["variant"].unique())
    rows = []
    for model in models:
        for length, task in family.tasks.items():
            chosen = trials[(trials["variant"] == model) & (trials["task"] == task)]
            values = chosen[score].dropna().to_numpy(dtype=float)
            low, high = t_interval(values)
            rows.append({"family": family.name, "model": model, "L": length, "task": task,
                         "n": len(values), "mean": values.mean() if len(values) else math.nan,
                         "ci_low": low, "ci_high": high,
                         "min": values.min() if len(values) else math.nan,
                         "max": values.max() if len(values) else math.nan,
                         "solved": every_seed_reaches(values),
                         "learned": every_seed_reaches(
                             chosen["mmer"].dropna().to_numpy(dtype=float))})
    return pd.DataFrame(rows)


def longest(frame: pd.DataFrame, column: str = "solved") -> dict[str, int | None]:
    """model -> the largest L where `column` ("solved" or "learned") holds (None if none)."""
    held = frame[frame[column]]
    return {model: (int(held.loc[held["model"] == model, "L"].max())
                    if (held["model"] == model).any() else None)
            for model in frame["model"].unique()}


def _setting(trials: pd.DataFrame, model: str, read) -> str:
    """The distinct values `read(trial row)` takes over `model`'s trials, "/"-joined."""
    values = [read(row) for row in trials[trials["variant"] == model].itertuples()]
    distinct = list(dict.fromkeys(str(v) for v in values))
    return " / ".join(distinct) if distinct else "—"


def _bptt(row) -> str:
    ppo = row.ppo if isinstance(row.ppo, dict) else None
    return "?" if ppo is None else ppo.get("max_seq_len", POPGYM_PPO["max_seq_len"])


def _window(row) -> str:
    return row.kwargs.get("window", "—") if isinstance(row.kwargs, dict) else "—"


def _reached(trials: pd.DataFrame, task: str) -> str:
    """The env steps the trials of `task` reached (min–max when they differ)."""
    reached = trials.loc[trials["task"] == task, "env_steps"].dropna()
    reached = reached[reached > 0]
    if reached.empty:
        return "—"
    low, high = int(reached.min()), int(reached.max())
    return f"{low:,}" if low == high else f"{low:,}–{high:,}"


def _batch(trials: pd.DataFrame, task: str) -> str:
    """ppo.train_batch_size_per_learner of the trials of `task` (distinct values)."""
    values = [row.ppo.get("train_batch_size_per_learner",
                          POPGYM_PPO["train_batch_size_per_learner"])
              if isinstance(row.ppo, dict) else "?"
              for row in trials[trials["task"] == task].itertuples()]
    return " / ".join(dict.fromkeys(f"{v:,}" if isinstance(v, int) else str(v)
                                    for v in values)) or "—"


def _cell(row) -> str:
    if not row.n:
        return "—"
    interval = "" if row.n < 2 else f" [{row.ci_low:.2f}, {row.ci_high:.2f}]"
    return f"{row.mean:.2f}{interval} ({row.n}){' ✓' if row.solved else ''}"


def markdown(families: list[tuple[Family, pd.DataFrame]], single: list[Family],
             trials: pd.DataFrame, score: str, title: str) -> str:
    what = ("the last evaluation's mean return (a trial not yet evaluated is left out)"
            if score == "eval_return" else
            "MMER (max over training of an iteration's mean return; biased upward at long L, "
            "where an iteration holds few episodes: add `eval:` to the study)")
    lines = [f"# Horizon: {title}", "",
             f"Score: {what}; mean [95% t-interval] over seeds (n seeds). ✓: solved, every "
             f"seed's score >= {SOLVED_AT}. Longest L: the largest L solved. BPTT: "
             f"ppo.max_seq_len (the trained gradient reaches at most that many steps back); "
             f"window: the memory's `window` keyword, if any."
             + (f" Longest L learned: the largest L at which every seed's MMER (training, "
                f"sampled actions) reached {SOLVED_AT}; above the longest L solved, a policy "
                f"learned the recall and lost it before its last evaluation."
                if score == "eval_return" else ""), ""]
    for family, frame in families:
        lengths = list(family.tasks)
        chance = chance_level(family)
        lines += [f"## {family.name}", ""]
        if chance is not None:
            lines += [f"Chance level (no memory of the cue): {chance}.", ""]
        columns = {"solved": "longest L solved"}
        if score == "eval_return":
            columns["learned"] = "longest L learned"
        header = ["model", "BPTT", "window", *(f"L={n}" for n in lengths), *columns.values()]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        best = {column: longest(frame, column) for column in columns}
        for model in frame["model"].unique():
            cells = [_cell(row) for row in frame[frame["model"] == model].itertuples()]
            lines.append("| " + " | ".join(
                [model, _setting(trials, model, _bptt), _setting(trials, model, _window),
                 *cells, *("—" if best[c][model] is None else str(best[c][model])
                           for c in columns)]) + " |")
        lines += ["", "Budget per L: the env steps its trials reached, and their PPO train "
                  "batch (ppo.train_batch_size_per_learner):", "",
                  "| L | task | env steps | train batch |", "|---|---|---|---|"]
        lines += [f"| {n} | {short_task(task)} | {_reached(trials, task)} | "
                  f"{_batch(trials, task)} |" for n, task in family.tasks.items()]
        lines.append("")
    for family in single:
        (length, task), = family.tasks.items()
        lines += [f"## {family.name}", "",
                  f"One length only (L = {length}, {short_task(task)}): no horizon to plot. "
                  f"A horizon needs the family at two lengths or more.", ""]
    return "\n".join(lines)


def figure(families: list[tuple[Family, pd.DataFrame]], trials: pd.DataFrame, score: str,
           title: str):
    """horizon.png's figure: one panel per model (small multiples, shared axes, in study
    order), each with score against L for every family (one colour each): the seeds' scores
    as dots, their mean joined by a line with its 95% CI as error bars, the chance level
    (dotted) and the solved threshold (dashed); the panel's title gives the model's longest L
    solved (and learned). The y axis spans the seeds' scores, so an interval wider than the
    seeds (a t-interval over 3 seeds often is) runs off it rather than squeezing the data."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = list(dict.fromkeys(m for _, frame in families for m in frame["model"]))
    columns = min(5, len(models))
    rows = math.ceil(len(models) / columns)
    drawing = Figure(figsize=(2.7 * columns + 0.6, 2.3 * rows + 1.0), dpi=110)
    FigureCanvasAgg(drawing)
    grid = drawing.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)
    colours = colormaps["tab10"].colors
    lengths = sorted({n for family, _ in families for n in family.tasks})
    chances = {chance_level(family) for family, _ in families} - {None}
    seeds_low = min(frame["min"].min() for _, frame in families)
    seeds_high = max(frame["max"].max() for _, frame in families)
    best = {column: {} for column in ("solved", "learned")}
    for family, frame in families:
        for column in best:
            for model, length in longest(frame, column).items():
                best[column].setdefault(model, []).append(length)
    for axes, model in zip(grid.flat, models):
        for rank, (family, frame) in enumerate(families):
            colour = colours[rank % len(colours)]
            points = frame[(frame["model"] == model) & (frame["n"] > 0)]
            errors = np.abs(np.stack([points["mean"] - points["ci_low"],
                                      points["ci_high"] - points["mean"]]).astype(float))
            axes.errorbar(points["L"], points["mean"], yerr=np.nan_to_num(errors), marker="o",
                          markersize=3, capsize=2, linewidth=1.2, color=colour)
            for length, task in family.tasks.items():
                seeds = trials.loc[(trials["variant"] == model) & (trials["task"] == task),
                                   score].dropna().to_numpy(dtype=float)
                spread = 1.07 ** (np.arange(len(seeds)) - (len(seeds) - 1) / 2)
                axes.scatter(length * spread, seeds, s=14, alpha=0.6, color=colour,
                             linewidths=0)
        for chance in chances:
            axes.axhline(chance, color="grey", linestyle=":", linewidth=1)
        axes.axhline(SOLVED_AT, color="black", linestyle="--", linewidth=0.8)
        heading = f"{model}\nsolved: {_reach(best['solved'][model])}"
        if score == "eval_return":
            heading += f" · learned: {_reach(best['learned'][model])}"
        axes.set_title(heading, fontsize="small")
        axes.grid(alpha=0.3)
    for axes in grid.flat[len(models):]:
        axes.set_visible(False)
    for column in range(columns):           # each column's lowest panel shows its L axis
        lowest = grid[(len(models) - 1 - column) // columns, column]
        lowest.xaxis.set_tick_params(labelbottom=True)
        lowest.set_xlabel("length L")
    first = grid.flat[0]
    first.set_xscale("log")
    first.minorticks_off()
    first.set_xticks(lengths, [str(n) for n in lengths])
    low = min([seeds_low, SOLVED_AT, *chances])
    first.set_ylim(low - 0.1, max(seeds_high, SOLVED_AT) + 0.1)
    for axes in grid[:, 0]:
        axes.set_ylabel("score")
    what = "last evaluation" if score == "eval_return" else "MMER"
    legend = [f"{f.name}: seeds (dots), mean and 95% CI" for f, _ in families]
    notes = ([f"chance {', '.join(str(c) for c in sorted(chances))} (dotted)"] if chances
             else []) + [f"solved {SOLVED_AT} (dashed)"]
    drawing.suptitle(f"{title}: score ({what}) against L; " + "; ".join(legend + notes),
                     fontsize="small")
    drawing.tight_layout()
    return drawing


def _reach(lengths: list[int | None]) -> str:
    """A panel title's longest L, one per family: "L ≤ 30", "none", "L ≤ 30, none"."""
    return ", ".join("none" if n is None else f"L ≤ {n}" for n in lengths)


def plot(families: list[tuple[Family, pd.DataFrame]], trials: pd.DataFrame, score: str,
         title: str, path: Path) -> None:
    """horizon.png: `figure`'s small multiples."""
    figure(families, trials, score, title).savefig(path, format="png")


def write(trials: pd.DataFrame, study: dict | None, out: Path, title: str) -> dict:
    """The horizon files of `trials` (write.trial_table's rows) into `out` when their tasks
    hold a length family (`study`: the study's settings, unused: the settings that matter are
    each trial's own, as pieces of a study may differ); returns {"horizon": md path or None,
    "horizon_csv": ..., "horizon_plot": png path or None}. Nothing is written without a
    family."""
    paths = {"horizon": None, "horizon_csv": None, "horizon_plot": None}
    found = length_families(trials["task"].unique())
    if not found:
        return paths
    in_families = trials[trials["task"].isin([t for f in found for t in f.tasks.values()])]
    score = _score_column(in_families)
    plotted = [(family, horizon_frame(trials, family, score)) for family in found
               if len(family.tasks) > 1]
    single = [family for family in found if len(family.tasks) == 1]
    text = markdown(plotted, single, trials, score, title)
    frames = [frame for _, frame in plotted]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["family", "model", "L", "task", "n", "mean", "ci_low", "ci_high", "min",
                 "max", "solved", "learned"])
    targets = {"horizon": out / "horizon.md", "horizon_csv": out / "horizon.csv"}
    if plotted:
        targets["horizon_plot"] = out / "horizon.png"
    temporary = {key: path.with_name(f".{path.name}.tmp") for key, path in targets.items()}
    try:
        temporary["horizon"].write_text(text)
        table.to_csv(temporary["horizon_csv"], index=False)
        if plotted:
            plot(plotted, trials, score, title, temporary["horizon_plot"])
    except BaseException:
        for path in temporary.values():
            path.unlink(missing_ok=True)
        raise
    for key, path in temporary.items():
        os.replace(path, targets[key])
        paths[key] = targets[key]
    if not plotted:
        (out / "horizon.png").unlink(missing_ok=True)            # an earlier report's
    return paths
