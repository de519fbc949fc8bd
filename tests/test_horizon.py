"""experiments.report.horizon: the horizon report of a length family, on hand-made studies."""

import csv
import json
import math

import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from scipy import stats

from experiments.report import horizon, sources
from experiments.report import write as report
from experiments.study.results import ENV_STEPS, EVAL_RETURN, RETURN_MEAN, STUDY_FILE

PASSIVE = {10: "tmaze-Passive-L10-v0", 30: "tmaze-Passive-L30-v0", 100: "tmaze-Passive-L100-v0"}
# model label -> (registry name, kwargs, ppo overrides)
MODELS = {"gru-bptt8": ("gru", {}, {"max_seq_len": 8}),
          "win": ("transformer", {"window": 16}, {}),
          "lru": ("lru", {}, {})}
# a budget per L, as the pieces of a study set it (the protocol's batch where not set)
BATCH = {10: 1408, 100: 12928}
# (label, L) -> the last evaluation's return of seeds 0, 1, 2 (None: none yet)
EVAL = {("gru-bptt8", 10): [1.0, 0.95, 0.92], ("gru-bptt8", 30): [1.0, 0.85, 0.95],
        ("gru-bptt8", 100): [0.5, 0.55, 0.45],
        ("win", 10): [1.0, 1.0, 1.0], ("win", 30): [0.5, 0.5, 0.5], ("win", 100): [0.5, 0.45, 0.6],
        ("lru", 10): [0.9, 1.0, 0.95], ("lru", 30): [0.92, 0.97, 1.0],
        ("lru", 100): [1.0, 0.9, None]}
# (label, L) -> the peak training return of every seed where it is not 0.6: "win" learned
# L = 30 during training (MMER 0.95) and lost it by its last evaluation (0.5)
PEAK = {("win", 10): 0.95, ("win", 30): 0.95, ("lru", 10): 0.95, ("lru", 30): 0.95}


def write_progress(path, returns, evaluation, steps_per_iteration):
    path.parent.mkdir(parents=True)
    rows = [{"training_iteration": i + 1, ENV_STEPS: (i + 1) * steps_per_iteration,
             RETURN_MEAN: r, EVAL_RETURN: ""} for i, r in enumerate(returns)]
    rows[-1][EVAL_RETURN] = "" if evaluation is None else evaluation
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def make_study(folder, tasks=PASSIVE, evaluation=True, name="horizon-toy", peak=None):
    trials = []
    for length, task in tasks.items():
        for label, (model, kwargs, ppo) in MODELS.items():
            for seed in range(3):
                trial = f"{task[:-3]}-{label}-s{seed}"
                batch = {"train_batch_size_per_learner": BATCH[length]} \
                    if length in BATCH and (length, label) != (10, "lru") else {}
                trials.append({"index": len(trials), "name": trial, "task": task, "model": model,
                               "label": label, "kwargs": kwargs, "seed": seed,
                               "ppo": {**ppo, **batch}, "model_config": {}})
                final = EVAL[label, length][seed]
                top = (peak or {}).get((label, length), 0.6)
                write_progress(folder / trial / "progress.csv", [0.3, top, 0.4 + seed / 10],
                               final if evaluation else None, 1000 * length)
    study = {"name": name, "stop": {"env_steps": 3000 * max(tasks)}}
    (folder / STUDY_FILE).write_text(json.dumps({"study": study, "trials": trials}))
    return folder


def test_length_families_group_one_env_by_l():
    families = horizon.length_families(
        ["tmaze-Passive-L30-v0", "popgym-RepeatPreviousEasy-v0", "tmaze-Passive-L10-v0",
         "tmaze-Active-L10-v0", "tmaze-Passive-L30-EventTime-v0", "tmaze-Passive-L5-EventTime-v0"])
    assert families == [
        horizon.Family("tmaze-Passive-L*",
                       {10: "tmaze-Passive-L10-v0", 30: "tmaze-Passive-L30-v0"}),
        horizon.Family("tmaze-Active-L*", {10: "tmaze-Active-L10-v0"}),
        horizon.Family("tmaze-Passive-L*-EventTime",
                       {5: "tmaze-Passive-L5-EventTime-v0", 30: "tmaze-Passive-L30-EventTime-v0"})]
    assert horizon.length_families(["popgym-RepeatPreviousEasy-v0"]) == []


def test_table_scores_cis_solved_lengths_and_bounding_settings(tmp_path):
    folder = make_study(tmp_path / "study", peak=PEAK)
    paths = report.report(folder, tmp_path / "out", reps=50)
    assert paths["horizon"] == tmp_path / "out" / "horizon.md"
    assert paths["horizon_plot"].stat().st_size > 1000
    text = paths["horizon"].read_text()
    rows = {line.split(" | ")[0].strip("| "): line.strip("| ").split(" | ")
            for line in text.splitlines() if line.startswith("| ")}
    assert rows["model"] == ["model", "BPTT", "window", "L=10", "L=30", "L=100",
                             "longest L solved", "longest L learned"]
    # gru at BPTT 8: solves 10 (every seed >= 0.9), not 30 (one seed 0.85): longest 10
    assert rows["gru-bptt8"][1:3] == ["8", "—"] and rows["gru-bptt8"][-2:] == ["10", "—"]
    values = [1.0, 0.95, 0.92]
    half = stats.t.ppf(0.975, 2) * pd.Series(values).std() / math.sqrt(3)
    mean = sum(values) / 3
    assert rows["gru-bptt8"][3] == f"{mean:.2f} [{mean - half:.2f}, {mean + half:.2f}] (3) ✓"
    assert not rows["gru-bptt8"][4].endswith("✓")
    # the windowed memory: window 16 shown, solves only L = 10; BPTT the protocol's 1024
    # ... and learned 30 in training (MMER 0.95 on every seed), lost by its evaluation
    assert rows["win"][1:3] == ["1024", "16"] and rows["win"][-2:] == ["10", "30"]
    # lru: 30 on every seed; at 100 one seed has no evaluation: 2 seeds, still solved;
    # learned (MMER) only to 30: the two columns are independent
    assert rows["lru"][-2:] == ["100", "30"] and rows["lru"][5].endswith("(2) ✓")
    assert "every seed's score >= 0.9" in text
    assert "Chance level (no memory of the cue): 0.5" in text
    assert "last evaluation's mean return" in text
    # the budget per L: env steps reached, train batch (lru at 10: the protocol's 65,536)
    assert rows["100"] == ["100", "tmaze-Passive-L100", "300,000", "12,928"]
    assert rows["10"] == ["10", "tmaze-Passive-L10", "30,000", "1,408 / 65,536"]
    table = pd.read_csv(paths["horizon_csv"])
    assert len(table) == 9 and set(table["L"]) == {10, 30, 100}
    assert not table.set_index(["model", "L"]).loc[("win", 30), "solved"]
    assert table.set_index(["model", "L"]).loc[("win", 30), "learned"]


def test_without_evaluations_the_score_is_mmer_and_says_why_to_add_eval(tmp_path):
    folder = make_study(tmp_path / "study", evaluation=False)
    paths = report.report(folder, tmp_path / "out", reps=50)
    text = paths["horizon"].read_text()
    assert "Score: MMER" in text and "add `eval:`" in text
    assert "longest L learned" not in text                # the score is MMER already
    frame = pd.read_csv(paths["horizon_csv"]).set_index(["model", "L"])
    assert frame.loc[("lru", 10), "mean"] == pytest.approx((0.6 + 0.6 + 0.6) / 3)


def test_a_family_with_one_length_gets_a_note_and_no_plot(tmp_path):
    folder = make_study(tmp_path / "study", tasks={30: PASSIVE[30]})
    out = tmp_path / "out"
    out.mkdir()
    (out / "horizon.png").write_bytes(b"stale")                  # an earlier report's plot
    paths = report.report(folder, out, reps=50)
    assert paths["horizon_plot"] is None and not (out / "horizon.png").exists()
    text = paths["horizon"].read_text()
    assert "One length only (L = 30, tmaze-Passive-L30): no horizon to plot" in text


def test_a_study_without_a_length_family_writes_no_horizon(tmp_path):
    trials = pd.DataFrame({"task": ["popgym-RepeatPreviousEasy-v0"], "variant": ["a"],
                           "mmer": [0.5], "eval_return": [float("nan")]})
    assert horizon.write(trials, {}, tmp_path, "t") == \
        {"horizon": None, "horizon_csv": None, "horizon_plot": None}
    assert not list(tmp_path.iterdir())


def test_nothing_is_half_written_when_the_plot_fails(tmp_path, monkeypatch):
    folder = make_study(tmp_path / "study")
    trials = report.trial_table(sources.load([folder]).iterations)
    out = tmp_path / "out"
    out.mkdir()

    def broken(*args, **kwargs):
        raise RuntimeError("no display")
    monkeypatch.setattr(horizon, "plot", broken)
    with pytest.raises(RuntimeError, match="no display"):
        horizon.write(trials, {}, out, "toy")
    assert not list(out.iterdir())
    monkeypatch.undo()
    paths = horizon.write(trials, {}, out, "toy")
    assert sorted(p.name for p in out.iterdir()) == ["horizon.csv", "horizon.md", "horizon.png"]
    assert paths["horizon"].read_text().startswith("# Horizon: toy")


def test_the_plot_is_one_panel_per_model_with_every_seed_and_each_family_a_line(tmp_path):
    """Small multiples: a panel per model in study order titled with its longest L solved and
    learned; in each, one line per family (mean over seeds) and a dot per seed's score."""
    make_study(tmp_path / "passive", peak=PEAK)
    active = {n: task.replace("Passive", "Active") for n, task in PASSIVE.items()}
    make_study(tmp_path / "active", tasks=active, peak=PEAK)
    trials = report.trial_table(sources.load([tmp_path / "passive",
                                              tmp_path / "active"]).iterations)
    families = [(family, horizon.horizon_frame(trials, family, "eval_return"))
                for family in horizon.length_families(trials["task"].unique())]
    drawing = horizon.figure(families, trials, "eval_return", "toy")
    panels = [axes for axes in drawing.axes if axes.get_visible()]
    assert [axes.get_title().split("\n")[0] for axes in panels] == list(MODELS)
    # win: solved L = 10 only, learned up to 30 (MMER 0.95), in both families
    assert panels[1].get_title().split("\n")[1] == \
        "solved: L ≤ 10, L ≤ 10 · learned: L ≤ 30, L ≤ 30"
    # lru at L = 100 has 2 evaluated seeds of 3: 3 + 3 + 2 dots per family
    lru = panels[2]
    dots = [c.get_offsets() for c in lru.collections if isinstance(c, PathCollection)]
    assert sum(len(d) for d in dots) == 2 * 8
    means = [line for line in lru.get_lines() if line.get_linestyle() == "-"]
    assert [list(line.get_xdata()) for line in means] == [[10, 30, 100]] * 2
    assert means[0].get_ydata()[0] == pytest.approx((0.9 + 1.0 + 0.95) / 3)
