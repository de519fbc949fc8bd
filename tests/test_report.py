"""`memrl report` on a hand-made study folder: MMER per trial, over seeds, over tasks; files."""

import csv
import json
import math

import pytest

from experiments.report import write as report
from experiments.study.results import ENV_STEPS, RETURN_MEAN, STUDY_FILE

# (task, label, seed) -> mean episodic return per iteration (None: no episode finished yet)
CURVES = {
    ("popgym-RepeatPreviousEasy-v0", "A", 0): [None, -0.5, 0.2, 0.1],
    ("popgym-RepeatPreviousEasy-v0", "A", 1): [-0.4, 0.4, 0.3],
    ("popgym-RepeatPreviousEasy-v0", "B", 0): [-0.5, -0.5, -0.6],
    ("popgym-RepeatPreviousEasy-v0", "B", 1): [-0.6, -0.3],
    ("popgym-CountRecallEasy-v0", "A", 0): [0.0, 0.6],
    ("popgym-CountRecallEasy-v0", "A", 1): [0.8, 0.5],
    ("popgym-CountRecallEasy-v0", "B", 0): [-0.2, -0.1],
}                      # ("popgym-CountRecallEasy-v0", "B", 1) never reported


def write_progress(path, returns, steps_per_iteration=100, repeat_last=False):
    path.parent.mkdir(parents=True)
    rows = [{"training_iteration": i + 1, ENV_STEPS: (i + 1) * steps_per_iteration,
             RETURN_MEAN: "" if r is None else r} for i, r in enumerate(returns)]
    if repeat_last:              # a resumed trial re-logging its last iteration
        rows.append(dict(rows[-1]))
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["training_iteration", ENV_STEPS, RETURN_MEAN])
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def study(tmp_path):
    trials = []
    for task in ("popgym-RepeatPreviousEasy-v0", "popgym-CountRecallEasy-v0"):
        for label, model in (("A", "gru"), ("B", "mlp")):
            for seed in (0, 1):
                name = f"{task[7:-3]}-{label}-s{seed}"
                trials.append({"index": len(trials), "name": name, "task": task,
                               "model": model, "label": label, "kwargs": {}, "seed": seed})
                if (task, label, seed) in CURVES:
                    write_progress(tmp_path / name / "progress.csv", CURVES[task, label, seed],
                                   repeat_last=seed == 1)
    (tmp_path / STUDY_FILE).write_text(json.dumps({"study": {"name": "toy"}, "trials": trials}))
    return tmp_path


def test_mmer_is_max_over_training_then_mean_over_seeds_then_tasks(study):
    _, trials = report.load_study(study)
    labels, tasks, table = report.mmer_table(trials)
    assert labels == ["A", "B"]
    a_rp = table["A", "popgym-RepeatPreviousEasy-v0"]
    assert a_rp["n"] == 2 and a_rp["mean"] == pytest.approx((0.2 + 0.4) / 2)
    assert a_rp["std"] == pytest.approx(math.sqrt(2) * 0.1)          # sample std of 0.2, 0.4
    assert (a_rp["min"], a_rp["max"]) == (pytest.approx(0.2), pytest.approx(0.4))
    # per seed: task average of MMERs; then mean and spread over seeds
    a_mean = table["A", report.MEAN]
    assert a_mean["mean"] == pytest.approx(((0.2 + 0.6) / 2 + (0.4 + 0.8) / 2) / 2)
    # B seed 1 never ran CountRecall: its task cell has one seed, its average only seed 0
    assert table["B", "popgym-CountRecallEasy-v0"]["n"] == 1
    assert table["B", report.MEAN] == {"n": 1, "mean": pytest.approx((-0.5 - 0.1) / 2),
                                       "std": 0.0, "min": pytest.approx(-0.3),
                                       "max": pytest.approx(-0.3)}


def test_curves_skip_iterations_without_episodes_and_repeated_rows(study):
    steps, returns = report.read_curve(study / "RepeatPreviousEasy-A-s0" / "progress.csv")
    assert steps.tolist() == [200, 300, 400] and returns.tolist() == [-0.5, 0.2, 0.1]
    steps, returns = report.read_curve(study / "RepeatPreviousEasy-A-s1" / "progress.csv")
    assert steps.tolist() == [100, 200, 300]


def test_report_writes_table_csvs_and_one_png_per_task(study, capsys):
    from experiments import cli
    assert cli.main(["report", str(study)]) == 0
    out = capsys.readouterr().out
    table = (study / "report" / "mmer.md").read_text()
    assert "| A | 0.300 ± 0.141 (2) | 0.700 ± 0.141 (2) | 0.500 ± 0.141 (2) |" in table
    assert "| B |" in table and "RepeatPreviousEasy | CountRecallEasy | mean over tasks" in table
    assert str(study / "report" / "mmer.md") in out
    with open(study / "report" / "mmer.csv", newline="") as file:
        rows = {(r["model"], r["task"]): r for r in csv.DictReader(file)}
    assert float(rows["A", "mean"]["mmer_mean"]) == pytest.approx(0.5)
    with open(study / "report" / "trials.csv", newline="") as file:
        trials = list(csv.DictReader(file))
    assert len(trials) == 8
    missing = [t for t in trials if t["trial"] == "CountRecallEasy-B-s1"][0]
    assert missing["iterations"] == "0" and missing["mmer"] == ""
    for task in ("RepeatPreviousEasy", "CountRecallEasy"):
        assert (study / "report" / f"curves_{task}.png").read_bytes()[:4] == b"\x89PNG"


def test_not_a_study_folder_is_a_clear_error(tmp_path, capsys):
    from experiments import cli
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "not a memrl study folder" in capsys.readouterr().err
