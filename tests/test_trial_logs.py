"""A restarted trial's logs: the staged log is kept, records after its checkpoint are dropped,
progress.csv appends under its own header (the loggers driven directly, no Ray processes)."""

import csv
import json
import shutil
from types import SimpleNamespace

import pyarrow.fs

from experiments.study.trial_logs import ProgressCSV, ResultJSON


class StagedTrial:
    """What Tune's loggers use of a trial: its staging folder on the driver, its folder in the
    study (`storage`), its config and its checkpoint (None until it has one)."""

    def __init__(self, staging, study_folder):
        self.local_path = str(staging)
        self.storage = SimpleNamespace(trial_fs_path=str(study_folder),
                                       storage_filesystem=pyarrow.fs.LocalFileSystem())
        self.config = {"seed": 0}
        self.checkpoint = None

    def init_local_path(self):
        pass

    def restarted(self, log: str, synced_lines: int):
        """The trial now has a checkpoint; the study folder's copy of `log` is older than the
        staged one (its first `synced_lines` lines)."""
        self.checkpoint = "checkpoint at iteration 3"
        lines = open(f"{self.local_path}/{log}").read().splitlines(keepends=True)
        open(f"{self.storage.trial_fs_path}/{log}", "w").write("".join(lines[:synced_lines]))


def staged_trial(tmp_path) -> StagedTrial:
    (tmp_path / "staging").mkdir()
    (tmp_path / "study").mkdir()
    return StagedTrial(tmp_path / "staging", tmp_path / "study")


def result(iteration: int, **timers) -> dict:
    return {"training_iteration": iteration, "env_runners": {"episode_return_mean": iteration / 10},
            **timers}


# The actor dies after iteration 5, its checkpoint at 3: Tune (the same driver) calls
# on_trial_recover, which the loggers do not handle, then starts the actor again.

def test_progress_csv_restarted_from_iteration_3_keeps_rows_1_to_3_under_its_header(tmp_path):
    trial = staged_trial(tmp_path)
    progress = ProgressCSV()
    progress.log_trial_start(trial)
    for iteration in range(1, 6):
        progress.log_trial_result(iteration, trial, result(iteration, **(
            {"timers/sync": 0.5} if iteration > 1 else {})))
    trial.restarted("progress.csv", synced_lines=3)         # the study folder has 1 and 2
    (tmp_path / "staging/progress.csv").open("a").write("6,0.")  # a row cut short by a crash

    progress.log_trial_start(trial)
    for iteration in range(4, 7):
        progress.log_trial_result(iteration, trial, {"timers/sync": 0.25, **result(iteration)})
    progress.log_trial_end(trial)

    with open(tmp_path / "staging/progress.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [int(r["training_iteration"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["env_runners/episode_return_mean"] for r in rows] == \
        [str(i / 10) for i in range(1, 7)]
    assert all(None not in row and None not in row.values() for row in rows), rows


def test_result_json_restarted_from_iteration_3_keeps_lines_1_to_3(tmp_path):
    trial = staged_trial(tmp_path)
    results = ResultJSON()
    results.log_trial_start(trial)
    for iteration in range(1, 6):
        results.log_trial_result(iteration, trial, result(iteration))
    trial.restarted("result.json", synced_lines=2)
    (tmp_path / "staging/result.json").open("a").write('{"training_iter')

    results.log_trial_start(trial)
    for iteration in range(4, 7):
        results.log_trial_result(iteration, trial, result(iteration, restarted=True))
    results.log_trial_end(trial)

    text = (tmp_path / "staging/result.json").read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["training_iteration"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert [line.get("restarted", False) for line in lines] == [False] * 3 + [True] * 3


def test_a_new_driver_continues_the_study_folders_copy(tmp_path):
    """After `--resume` the staging folder is empty: the study folder's copy is continued."""
    trial = staged_trial(tmp_path)
    progress, results = ProgressCSV(), ResultJSON()
    progress.log_trial_start(trial)
    results.log_trial_start(trial)
    for iteration in (1, 2):
        progress.log_trial_result(iteration, trial, result(iteration))
        results.log_trial_result(iteration, trial, result(iteration))
    progress.log_trial_end(trial)
    results.log_trial_end(trial)
    for log in ("progress.csv", "result.json"):
        trial.restarted(log, synced_lines=99)
        shutil.move(tmp_path / "staging" / log, tmp_path / "study" / log)
    progress, results = ProgressCSV(), ResultJSON()
    progress.log_trial_start(trial)
    results.log_trial_start(trial)
    progress.log_trial_result(3, trial, result(3))
    results.log_trial_result(3, trial, result(3))
    progress.log_trial_end(trial)
    results.log_trial_end(trial)
    with open(tmp_path / "staging/progress.csv", newline="") as file:
        assert [row["training_iteration"] for row in csv.DictReader(file)] == ["1", "2", "3"]
    lines = (tmp_path / "staging/result.json").read_text().splitlines()
    assert [json.loads(line)["training_iteration"] for line in lines] == [1, 2, 3]
