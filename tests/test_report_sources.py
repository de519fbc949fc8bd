"""`memrl report` on several sources: a report folder re-reported, a study in pieces, a
report from before iterations.csv, and `--against`. Hand-made study folders (see
test_report_stats), no Ray, no training."""

import csv
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from rliable import library, metrics
from test_report_stats import MMER, REPS, TASKS, matrix, write_study

from experiments import cli
from experiments.report import aggregate, sources
from experiments.report import write as report
from experiments.study.results import STUDY_FILE

# the report's files that depend only on the trials (the plots are checked for presence)
TABLES = ("mmer.md", "mmer.csv", "trials.csv", "aggregate.md", "aggregate.csv")


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The study in one folder, reported once into whole/report."""
    root = write_study(tmp_path_factory.mktemp("whole"))
    report.report(root, reps=REPS)
    return root


def split_by_task(study, root, tasks_per_piece):
    """The study folder copied into pieces, each with the trials of some tasks (its own
    study.json listing only them), as `memrl train --set tasks=[...]` would leave them."""
    manifest = json.loads((study / STUDY_FILE).read_text())
    pieces = []
    for i, tasks in enumerate(tasks_per_piece):
        piece = root / f"piece{i}"
        piece.mkdir()
        trials = [t for t in manifest["trials"] if t["task"] in tasks]
        for trial in trials:
            if (study / trial["name"]).is_dir():
                shutil.copytree(study / trial["name"], piece / trial["name"])
        (piece / STUDY_FILE).write_text(json.dumps({**manifest, "trials": trials}))
        pieces.append(piece)
    return pieces


def same_tables(a, b):
    """The same tables; trials.csv the same rows (its order is the sources' order)."""
    for name in TABLES:
        text_a, text_b = (a / name).read_text(), (b / name).read_text()
        if name == "trials.csv":
            text_a, text_b = sorted(text_a.splitlines()), sorted(text_b.splitlines())
        assert text_a == text_b, name


def test_a_report_folder_reports_as_its_study(whole, tmp_path):
    paths = report.report(whole / "report", tmp_path, reps=REPS)
    same_tables(whole / "report", tmp_path)
    assert len(paths["plots"]) == len(TASKS)
    again = sources.load([tmp_path])
    assert again.study["name"] == "stats"
    assert again.finals.empty and again.iterations["kwargs"].map(type).eq(dict).all()


def test_a_study_in_pieces_reports_as_the_whole_study(whole, tmp_path):
    pieces = split_by_task(whole, tmp_path, [TASKS[:1], TASKS[1:]])
    report.report(pieces, tmp_path / "out", reps=REPS)
    same_tables(whole / "report", tmp_path / "out")
    study = json.loads((tmp_path / "out" / STUDY_FILE).read_text())
    assert study["sources"] == [str(p) for p in pieces]


def test_a_trial_in_two_pieces_is_taken_whole_from_the_one_that_went_further(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first, second = write_study(tmp_path / "a"), write_study(tmp_path / "b")
    name = f"{TASKS[0][7:-3]}-gru-s0"
    rows = "training_iteration,num_env_steps_sampled_lifetime,env_runners/episode_return_mean\n"
    (first / name / "progress.csv").write_text(rows + "1,100,0.9\n2,200,0.95\n3,300,-1\n"
                                               "4,400,-1\n")
    (second / name / "progress.csv").write_text(rows + "1,100,0.1\n")
    loaded = sources.load([first, second])
    trial = loaded.iterations[loaded.iterations["name"] == name]
    assert trial["return_mean"].tolist() == [0.9, 0.95, -1, -1]           # 400 steps > 100
    other = f"{TASKS[1][7:-3]}-gru-s0"                                    # a tie: the later
    (second / other / "progress.csv").write_text(rows + "1,100,0.5\n2,200,0.25\n3,300,0.0\n")
    loaded = sources.load([first, second])
    assert loaded.iterations[loaded.iterations["name"] == other]["return_mean"].tolist() == \
        [0.5, 0.25, 0.0]
    assert len(loaded.names) == len(set(loaded.names)) == len(MMER)


def test_a_report_from_before_iterations_csv_adds_its_final_numbers(whole, tmp_path):
    """An older report (trials.csv without the evaluation column, no iterations.csv) for the
    first task, the study folder of the others: the tables are the whole study's; the curves
    only for the tasks with iterations."""
    old = tmp_path / "old"
    old.mkdir()
    frame = pd.read_csv(whole / "report" / "trials.csv")
    frame = frame[frame["task"] == TASKS[0]].drop(columns=["eval_return"])
    frame.to_csv(old / "trials.csv", index=False)
    _, rest = split_by_task(whole, tmp_path, [TASKS[:1], TASKS[1:]])
    paths = report.report([old, rest], tmp_path / "out", reps=REPS)
    same_tables(whole / "report", tmp_path / "out")
    assert [p.name for p in paths["plots"]] == [
        f"curves_{t[7:-3]}.png" for t in TASKS[1:]]
    # and the combined report keeps them when it is re-reported
    report.report(tmp_path / "out", tmp_path / "again", reps=REPS)
    same_tables(whole / "report", tmp_path / "again")


def test_a_report_without_the_stack_column_reads_popgyms_models_as_old_stack(whole,
                                                                             tmp_path):
    frame = pd.read_csv(whole / "report" / "trials.csv").drop(columns=["stack"])
    frame.to_csv(tmp_path / "trials.csv", index=False)
    finals = sources.load([tmp_path]).finals
    assert set(finals[finals["model"] == "popgym:GRU"]["stack"]) == {"old"}
    assert set(finals[finals["model"] != "popgym:GRU"]["stack"]) == {"new"}


def test_against_gives_p_of_improvement_over_all_tasks_and_per_task(whole, tmp_path, capsys):
    assert cli.main(["report", str(whole), "--out", str(tmp_path), "--reps", str(REPS),
                     "--against", "popgym-GRU"]) == 0
    with open(tmp_path / "aggregate.csv", newline="") as file:
        rows = {(r["model"], r["reference"], r["task"]): r for r in csv.DictReader(file)
                if r["statistic"] == "P(X > Y)"}
    for x in ("gru", "gru-old", "lmu", "mlp"):
        sx, sy = matrix(x), matrix("popgym-GRU")
        for task, columns in [("all", slice(None)),
                              *((t, [j]) for j, t in enumerate(TASKS))]:
            row = rows[x, "popgym-GRU", task]
            assert float(row["estimate"]) == pytest.approx(
                metrics.probability_of_improvement(sx[:, columns], sy[:, columns]))
            if min(len(sx), len(sy)) < 2:                     # one complete run: no CI
                assert row["ci_low"] == ""
                continue
            np.random.seed(aggregate.BOOTSTRAP_SEED)
            _, ci = library.get_interval_estimates(
                {x: [sx[:, columns], sy[:, columns]]}, metrics.probability_of_improvement,
                reps=REPS)
            assert (float(row["ci_low"]), float(row["ci_high"])) == \
                pytest.approx(tuple(ci[x].ravel()), abs=1e-12)
    text = capsys.readouterr().out
    assert "## Against popgym-GRU" in text
    assert "| X | runs X / popgym-GRU | all tasks | RepeatPreviousEasy | CountRecallEasy | " \
           "PositionOnlyCartPoleEasy |" in text
    # the cell-vs-original table keeps its pairs only
    pairs = text.split("## Probability of improvement")[1].split("## Against")[0]
    assert "| gru | popgym-GRU |" in pairs and "| mlp | popgym-GRU |" not in pairs


def test_against_an_unknown_model_names_the_studys_models(whole, tmp_path, capsys):
    assert cli.main(["report", str(whole), "--out", str(tmp_path), "--against", "GRU"]) == 2
    err = capsys.readouterr().err
    assert "--against GRU: not a model of the study" in err and "popgym-GRU" in err
    assert not list(tmp_path.iterdir())                               # nothing half-written


def test_out_refuses_a_study_folder_and_a_source_must_be_a_study_or_report(whole, tmp_path,
                                                                          capsys):
    assert cli.main(["report", str(whole), "--out", str(whole)]) == 2
    assert "is a study folder" in capsys.readouterr().err
    assert cli.main(["report", str(whole), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path} is not a memrl study folder" in err and "nor a report folder" in err


def test_models_reports_only_the_named_models(whole, tmp_path, capsys):
    assert cli.main(["report", str(whole), "--out", str(tmp_path), "--reps", str(REPS),
                     "--models", "gru,popgym-GRU"]) == 0
    with open(tmp_path / "trials.csv", newline="") as file:
        assert {row["label"] for row in csv.DictReader(file)} == {"gru", "popgym-GRU"}
    table = (tmp_path / "mmer.md").read_text()
    assert "| gru |" in table and "| popgym-GRU |" in table and "| lmu |" not in table
    with open(whole / "report" / "aggregate.csv", newline="") as file:
        whole_rows = [r for r in csv.DictReader(file) if r["model"] in ("gru", "popgym-GRU")
                      and r["reference"] in ("", "popgym-GRU")]
    with open(tmp_path / "aggregate.csv", newline="") as file:
        assert list(csv.DictReader(file)) == whole_rows         # the same numbers for the two
    assert json.loads((tmp_path / STUDY_FILE).read_text())["models"] == ["gru", "popgym-GRU"]
    assert sources.load([tmp_path]).iterations["variant"].unique().tolist() == \
        ["gru", "popgym-GRU"]


def test_models_naming_an_unknown_model_lists_the_studys(whole, tmp_path, capsys):
    assert cli.main(["report", str(whole), "--out", str(tmp_path), "--models", "gru,GRU"]) == 2
    err = capsys.readouterr().err
    assert "--models GRU: not a model of the study" in err and "popgym-GRU" in err
    assert not list(tmp_path.iterdir())
