"""`memrl report` on hand-made study folders: rliable's aggregate (IQM, mean, probability of
improvement, performance profile) and the evaluation table. No Ray, no training."""

import csv
import json
import math

import numpy as np
import pytest
from rliable import library, metrics

from experiments.report import aggregate
from experiments.report import sources
from experiments.report import write as report
from experiments.study.results import ENV_STEPS, RETURN_MEAN, STUDY_FILE

REPS = 50                                   # bootstrap resamples (quick)
TASKS = ("popgym-RepeatPreviousEasy-v0", "popgym-CountRecallEasy-v0",
         "popgym-PositionOnlyCartPoleEasy-v0")
# label -> (model, stack, seeds): gru-old is our gru on the old stack; lmu has one seed
ENTRIES = {"gru": ("gru", "new", (0, 1, 2)), "popgym-GRU": ("popgym:GRU", "old", (0, 1, 2)),
           "gru-old": ("gru", "old", (0, 1, 2)), "lmu": ("lmu", "new", (0,)),
           "mlp": ("mlp", "new", (0, 1))}
RNG = np.random.default_rng(7)
MMER = {(label, task, seed): round(float(RNG.uniform(-1, 1)), 3)
        for label, (_, _, seeds) in ENTRIES.items() for task in TASKS for seed in seeds}
MISSING = ("mlp", TASKS[2], 1)              # never reported: mlp keeps one full seed


def write_study(root, evaluations=None, eval_settings=None):
    """study.json and one progress.csv per trial whose best mean return is MMER[...]; with
    `evaluations` {(label, task, seed): [eval return per iteration or None]} the evaluation
    columns too."""
    eval_columns = ["evaluation/return_mean", "evaluation/return_std",
                    "evaluation/length_mean", "evaluation/episodes"] if evaluations else []
    trials = []
    for (label, task, seed), best in MMER.items():
        model, stack, _ = ENTRIES[label]
        name = f"{task[7:-3]}-{label}-s{seed}"
        trials.append({"index": len(trials), "name": name, "task": task, "model": model,
                       "label": label, "variant": label, "stack": stack, "kwargs": {},
                       "sweep": {}, "seed": seed})
        if (label, task, seed) == MISSING:
            continue
        returns = [best - 0.5, best, best - 0.1]
        evals = (evaluations or {}).get((label, task, seed), [None] * 3)
        (root / name).mkdir()
        with open(root / name / "progress.csv", "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["training_iteration", ENV_STEPS, RETURN_MEAN, *eval_columns])
            for i, (ret, ev) in enumerate(zip(returns, evals)):
                extra = ([ev, 0.1, 50, 10] if ev is not None else ["", "", "", ""]) \
                    if eval_columns else []
                writer.writerow([i + 1, 100 * (i + 1), ret, *extra])
    study = {"name": "stats", "eval": eval_settings}
    (root / STUDY_FILE).write_text(json.dumps({"study": study, "trials": trials}))
    return root


def matrix(label):
    """MMER (seeds with every task, tasks) as rliable takes it."""
    seeds = [s for s in ENTRIES[label][2]
             if all((label, t, s) != MISSING for t in TASKS)]
    return np.array([[MMER[label, task, seed] for task in TASKS] for seed in seeds])


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The study, reported once."""
    root = write_study(tmp_path_factory.mktemp("stats"))
    report.report(root, reps=REPS)
    return root


@pytest.fixture(scope="module")
def table(study):
    with open(study / "report" / "aggregate.csv", newline="") as file:
        return {(r["statistic"], r["model"], r["reference"]): r for r in csv.DictReader(file)}


def test_iqm_and_mean_with_their_cis_are_rliables_on_the_same_matrix(table):
    for label in ("gru", "popgym-GRU", "gru-old"):
        np.random.seed(aggregate.BOOTSTRAP_SEED)
        point, ci = library.get_interval_estimates(
            {label: matrix(label)},
            lambda x: np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x)]),
            reps=REPS)
        for i, statistic in enumerate(("IQM", "mean")):
            row = table[statistic, label, ""]
            assert row["runs"] == "3"
            assert float(row["estimate"]) == pytest.approx(point[label][i], abs=1e-12)
            assert float(row["ci_low"]) == pytest.approx(ci[label][0, i], abs=1e-12)
            assert float(row["ci_high"]) == pytest.approx(ci[label][1, i], abs=1e-12)
            assert float(row["ci_low"]) <= float(row["estimate"]) <= float(row["ci_high"])
    assert float(table["mean", "gru", ""]["estimate"]) == pytest.approx(matrix("gru").mean())


def test_too_few_seeds_gives_the_point_estimate_and_says_so_instead_of_a_ci(study, table):
    for label in ("lmu", "mlp"):                # one seed; one seed with every task
        row = table["IQM", label, ""]
        assert row["runs"] == "1" and row["ci_low"] == row["ci_high"] == ""
        assert float(row["estimate"]) == pytest.approx(metrics.aggregate_iqm(matrix(label)))
    text = (study / "report" / "aggregate.md").read_text()
    lmu = [line for line in text.splitlines() if line.startswith("| lmu |")][0]
    assert lmu.count(aggregate.TOO_FEW) == 2 and "[" not in lmu
    assert "| gru | 3 |" in text


def test_probability_of_improvement_pairs_our_cells_with_popgyms_and_the_old_stack(table):
    pairs = [key[1:] for key in table if key[0] == "P(X > Y)"]
    assert pairs == [("gru", "popgym-GRU"), ("gru-old", "gru"), ("gru-old", "popgym-GRU")]
    for x, y in pairs:
        row = table["P(X > Y)", x, y]
        assert float(row["estimate"]) == pytest.approx(
            metrics.probability_of_improvement(matrix(x), matrix(y)))
        np.random.seed(aggregate.BOOTSTRAP_SEED)
        _, ci = library.get_interval_estimates({x: [matrix(x), matrix(y)]},
                                               metrics.probability_of_improvement, reps=REPS)
        assert (float(row["ci_low"]), float(row["ci_high"])) == \
            pytest.approx(tuple(ci[x].ravel()), abs=1e-12)


def test_pairs_need_equal_study_wide_sweep_values_and_the_old_stack_equal_keywords():
    import pandas as pd
    lr, theta, old_theta = "ppo.lr", "models[3].kwargs.theta", "models[4].kwargs.theta"
    rows = [("gru", "gru", "new", {}, {lr: 1}), ("gru-lr2", "gru", "new", {}, {lr: 2}),
            ("popgym-GRU", "popgym:GRU", "old", {}, {lr: 1}),
            ("lmu[theta=8]", "lmu", "new", {"theta": 8}, {lr: 1, theta: 8}),
            ("lmu-old[theta=8]", "lmu", "old", {"theta": 8}, {lr: 1, old_theta: 8}),
            ("lmu-old[theta=16]", "lmu", "old", {"theta": 16}, {lr: 1, old_theta: 16}),
            ("popgym-LMU", "popgym:LMU", "old", {}, {lr: 1}),
            ("mlp", "mlp", "new", {}, {lr: 2}), ("peer", "popgym:BasicMLP", "old", {}, {lr: 2})]
    trials = pd.DataFrame(rows, columns=["variant", "model", "stack", "kwargs", "sweep"])
    assert aggregate.comparisons(trials) == [
        ("gru", "popgym-GRU"), ("lmu[theta=8]", "popgym-LMU"), ("lmu-old[theta=8]", "lmu[theta=8]"),
        ("lmu-old[theta=8]", "popgym-LMU"), ("lmu-old[theta=16]", "popgym-LMU"), ("mlp", "peer")]


def test_report_writes_aggregate_files_and_prints_them(study, tmp_path, capsys):
    from experiments import cli
    assert cli.main(["report", str(study), "--reps", str(REPS), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "# Aggregate MMER: stats" in out and "| gru | popgym-GRU | 3 / 3 |" in out
    assert str(tmp_path / "aggregate.md") in out
    assert (tmp_path / "performance_profile.png").read_bytes()[:4] == b"\x89PNG"
    assert "evaluation: none, the study has no `eval:` key" in out
    assert not (tmp_path / "eval.md").exists()


def test_aggregate_is_reproducible(study, tmp_path):
    again = report.report(study, tmp_path, reps=REPS)["aggregate_csv"].read_text()
    assert again == (study / "report" / "aggregate.csv").read_text()


# ---------------------------------------------------------------- evaluation
def test_eval_md_has_the_last_evaluation_mean_over_seeds_beside_mmer(tmp_path, capsys):
    task = TASKS[0]
    evaluations = {("gru", task, 0): [0.1, None, 0.5],       # last evaluation: 0.5
                   ("gru", task, 1): [0.3, 0.7, None],       # last evaluation: 0.7
                   ("gru", task, 2): [None, None, None],     # none yet
                   ("lmu", task, 0): [None, None, -0.2]}
    study = write_study(tmp_path, evaluations, {"episodes": 10, "every": 0, "greedy": True})
    from experiments import cli
    assert cli.main(["report", str(study), "--reps", str(REPS)]) == 0
    assert str(study / "report" / "eval.md") in capsys.readouterr().out
    with open(study / "report" / "eval.csv", newline="") as file:
        rows = {(r["model"], r["task"]): r for r in csv.DictReader(file)}
    assert set(rows) == {("gru", task), ("lmu", task)}
    gru = rows["gru", task]
    assert gru["eval_seeds"] == "2" and float(gru["eval_mean"]) == pytest.approx(0.6)
    assert float(gru["eval_std"]) == pytest.approx(math.sqrt(2) * 0.1)
    mmers = [MMER["gru", task, s] for s in (0, 1, 2)]
    assert gru["mmer_seeds"] == "3" and float(gru["mmer_mean"]) == pytest.approx(np.mean(mmers))
    assert float(gru["mmer_std"]) == pytest.approx(np.std(mmers, ddof=1))
    text = (study / "report" / "eval.md").read_text()
    assert "10 complete episodes, greedy actions" in text
    assert (f"| gru | RepeatPreviousEasy | 0.600 ± 0.141 (2) | {np.mean(mmers):.3f} ± "
            f"{np.std(mmers, ddof=1):.3f} (3) |") in text
    assert f"| lmu | RepeatPreviousEasy | -0.200 ± 0.000 (1) | {MMER['lmu', task, 0]:.3f}" in text


def test_a_study_with_eval_but_no_evaluation_yet_says_so(tmp_path):
    study = write_study(tmp_path, {("gru", TASKS[0], 0): [None, None, None]},
                        {"episodes": 4, "every": 0, "greedy": False})
    paths = report.report(study, reps=REPS)
    assert paths["eval"] is None and "no trial has finished an evaluation yet" in \
        paths["eval_note"]


def test_progress_with_a_repeated_header_row_reads_as_numbers(tmp_path):
    path = tmp_path / "progress.csv"
    path.write_text(f"training_iteration,{ENV_STEPS},{RETURN_MEAN},other\n1,100,0.5,x\n"
                    f"training_iteration,{ENV_STEPS},{RETURN_MEAN},other\n2,200,0.7,y\n")
    frame = sources.read_progress(path)
    assert frame["iteration"].tolist() == [1, 2] and frame["return_mean"].tolist() == [0.5, 0.7]
    assert frame["eval_return"].isna().all()
