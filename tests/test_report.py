"""`memrl report` on a hand-made study folder: MMER per trial, over seeds, over tasks; files."""

import csv
import json
import math

import numpy as np
import pytest

from experiments.report import sources
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
    iterations = sources.load([study]).iterations
    frame = report.mmer_frame(report.trial_table(iterations))       # as `report` computes it
    table = frame.to_dict("index")
    assert list(frame.index.unique("model")) == ["A", "B"]
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
    iterations = sources.load([study]).iterations
    a_rp = iterations[(iterations["task"] == "popgym-RepeatPreviousEasy-v0")
                      & (iterations["variant"] == "A")]
    (steps0, returns0), (steps1, returns1) = report.seed_curves(a_rp)
    assert steps0.tolist() == [200, 300, 400] and returns0.tolist() == [-0.5, 0.2, 0.1]
    assert steps1.tolist() == [100, 200, 300] and returns1.tolist() == [-0.4, 0.4, 0.3]


def test_task_curve_is_the_mean_over_seeds_on_the_steps_every_seed_covers(study):
    iterations = sources.load([study]).iterations
    curves = report.task_curves(iterations, "popgym-RepeatPreviousEasy-v0")
    assert list(curves) == ["A", "B"]
    a = curves["A"]             # seeds cover 200..400 and 100..300 (see the test above)
    assert a.seeds == 2 and len(a.steps) == 100 and (a.steps[0], a.steps[-1]) == (200, 300)
    at = {float(step): (mean, std) for step, mean, std in zip(a.steps, a.mean, a.std)}
    # the sample std of two values is their gap / sqrt(2)
    assert at[200.0] == pytest.approx(((-0.5 + 0.4) / 2, 0.9 / math.sqrt(2)))
    assert at[300.0] == pytest.approx(((0.2 + 0.3) / 2, 0.1 / math.sqrt(2)))
    middle = int(np.argmin(abs(a.steps - 250)))          # interpolated between iterations
    seed0, seed1 = np.interp(a.steps[middle], [200, 300], [-0.5, 0.2]), \
        np.interp(a.steps[middle], [200, 300], [0.4, 0.3])
    assert a.mean[middle] == pytest.approx((seed0 + seed1) / 2)
    one_seed = report.task_curves(iterations, "popgym-CountRecallEasy-v0")["B"]
    assert one_seed.seeds == 1 and np.all(one_seed.std == 0)
    assert (one_seed.mean[0], one_seed.mean[-1]) == pytest.approx((-0.2, -0.1))


def test_seeds_that_share_one_step_give_a_one_point_curve():
    curve = report.mean_curve([(np.array([100, 200]), np.array([0.1, 0.3])),
                               (np.array([200, 300]), np.array([0.5, 0.0]))])
    assert curve.steps.tolist() == [200.0] and curve.mean == pytest.approx([0.4])
    assert curve.std == pytest.approx([0.2 / math.sqrt(2)]) and curve.seeds == 2


def test_plot_draws_the_task_curves(study, tmp_path):
    iterations = sources.load([study]).iterations
    curves = report.task_curves(iterations, "popgym-RepeatPreviousEasy-v0")
    figure = report.plot_task("popgym-RepeatPreviousEasy-v0", curves, tmp_path / "c.png")
    axes = figure.axes[0]
    assert [line.get_label() for line in axes.get_lines()] == ["A (2)", "B (2)"]
    for line, curve in zip(axes.get_lines(), curves.values()):
        assert np.array_equal(line.get_xdata(), curve.steps)
        assert np.array_equal(line.get_ydata(), curve.mean)
    for band, curve in zip(axes.collections, curves.values()):       # mean ± std shaded
        lower, upper = band.get_paths()[0].vertices[:, 1].min(), \
            band.get_paths()[0].vertices[:, 1].max()
        assert (lower, upper) == pytest.approx(((curve.mean - curve.std).min(),
                                                (curve.mean + curve.std).max()))
    assert axes.get_title() == "RepeatPreviousEasy"
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


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
