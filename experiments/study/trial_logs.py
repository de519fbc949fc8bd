"""Each trial's progress.csv and result.json as one record of its iterations, 1, 2, ... once.

Tune writes a trial's logs on the driver, in a staging folder it copies to the study's folder
every few seconds. When a trial restarts from its checkpoint at iteration c (its actor died, or
`memrl train --resume` started a new driver), each of Tune's loggers copies the study folder's
older copy back over its staged log, at its own moment (progress.csv's logger not at all when
the same driver restarts the actor), and appends the restarted trial's results: a log can then
miss iterations before c, hold c + 1, ... twice, and disagree with the other log (measured: 27
rows in progress.csv, 26 in result.json; iteration 9 twice). These loggers keep the log this
driver staged (a new driver has only the study folder's copy, synced with the state that named
the checkpoint), and drop its records from c + 1 on before the restarted trial's first result.
progress.csv also appends under its own header (Tune takes the columns of the first new result,
and RLlib adds timers from the second iteration on)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ray.air.constants import EXPR_PROGRESS_FILE, EXPR_RESULT_FILE, TRAINING_ITERATION
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from experiments.rllib.rllib_private import TrialLogHooks

__all__ = ["ProgressCSV", "ResultJSON"]


class _RestartableLog(TrialLogHooks):
    """A trial's log, continued where it (re)started: before a trial's first result since Tune
    started its actor, the log keeps only the iterations before that result's. Tune copies the
    study folder's log over the staged one only where none is staged."""

    def __init__(self):
        super().__init__()
        self._starting: set = set()         # trials started (again) that have not reported since

    def log_trial_start(self, trial) -> None:
        super().log_trial_start(trial)
        self._starting.add(trial)

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        if trial in self._starting:
            self._starting.discard(trial)
            self._continue_before(trial, result[TRAINING_ITERATION])
        super().log_trial_result(iteration, trial, result)

    def restore_from_study_folder(self, file_name: str, trial) -> None:
        staged = Path(trial.local_path, file_name)
        if not (staged.exists() and staged.stat().st_size > 0):
            super().restore_from_study_folder(file_name, trial)

    def _continue_before(self, trial, iteration: int) -> None:
        raise NotImplementedError


class ProgressCSV(_RestartableLog, CSVLoggerCallback):
    """progress.csv: one row per iteration under the file's own header."""

    def _continue_before(self, trial, iteration: int) -> None:
        self.log_trial_end(trial)                   # an actor restarted by this driver
        self.setup_trial(trial)                     # opens the staged log (or the copy) to append
        if self.trial_continues(trial):
            path = Path(trial.local_path, EXPR_PROGRESS_FILE)
            self.trial_file(trial).close()
            header = _keep_rows_before(path, iteration)
            self.set_trial_file(trial, path.open("a", newline=""))
            if header:
                self.set_trial_csv_writer(trial, csv.DictWriter(self.trial_file(trial), header))


class ResultJSON(_RestartableLog, JsonLoggerCallback):
    """result.json: one line per iteration."""

    def _continue_before(self, trial, iteration: int) -> None:
        path = Path(trial.local_path, EXPR_RESULT_FILE)
        self.trial_file(trial).close()              # opened by log_trial_start
        _keep_lines_before(path, iteration)
        self.set_trial_file(trial, path.open("a"))


def _keep_rows_before(path: Path, iteration: int) -> list[str] | None:
    """Rewrite progress.csv with its header and its complete rows of iterations before
    `iteration`; returns the header (None for an empty file)."""
    with open(path, newline="") as file:
        rows = list(csv.reader(file))
    if not rows:
        return None
    header, kept = rows[0], [rows[0]]
    column = header.index(TRAINING_ITERATION)
    kept += [row for row in rows[1:] if len(row) == len(header) and _before(row[column], iteration)]
    with open(path, "w", newline="") as file:
        csv.writer(file).writerows(kept)
    return header


def _keep_lines_before(path: Path, iteration: int) -> None:
    """Rewrite result.json with its complete lines of iterations before `iteration`."""
    kept = []
    for line in path.read_text().splitlines():
        try:
            if _before(json.loads(line)[TRAINING_ITERATION], iteration):
                kept.append(line + "\n")
        except (ValueError, KeyError):                      # a line cut short by a crash
            continue
    path.write_text("".join(kept))


def _before(value, iteration: int) -> bool:
    try:
        return int(value) < iteration
    except (TypeError, ValueError):
        return False
