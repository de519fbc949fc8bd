"""What a new user hit (issue 25), each held by a test: sweeps that win over the entry they
sweep past, the README's and configs' YAML, clear errors for bad --set values, misspelled
models in a dry run, missing paths, sizes and module names, and committed report folders that
re-report to the same tables."""

import importlib
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

import memory_models
from experiments import cli
from experiments.report.write import report
from experiments.study import config
from experiments.study.config import ConfigError
from experiments.study.grid import expand

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"


def study(**changes):
    raw = {"name": "t", "tasks": ["RepeatPreviousEasy"], "seeds": [0, 1],
           "stop": {"env_steps": 100},
           "models": [{"name": "s4d", "ppo": {"lr": 1.0e-4, "num_epochs": 2}}, "gru"]}
    return config.validate({**raw, **changes}, where="f.yaml")


# --------------------------------------------------------------------------- 1. sweeps
def swept_setting(trial, key):
    """The value `trial` trains with for the sweep key `key`."""
    section, name = key.rsplit(".", 1)
    if section == "ppo" or section.endswith("].ppo"):
        return trial.ppo.get(name)
    if section == "model_config":
        return trial.model_config.get(name)
    return trial.model.kwargs.get(name)             # models[i].kwargs


def test_every_trial_trains_with_the_values_its_name_shows():
    """A swept ppo.lr wins over a model's own `ppo: {lr: ...}`: the trial named lr=0.0005
    trains at 5e-4 (it trained at the model's 1e-4), and every swept key of every trial,
    read from the settings it trains with, is the value in its name."""
    swept = study(sweep={"ppo.lr": [1.0e-4, 5.0e-4], "models[0].kwargs.state_size": [16, 64],
                         "model_config.hidden_size": [32, 64], "models[1].ppo.num_epochs": [3]})
    trials = expand(swept)
    assert len(trials) == 2 * (8 + 4)
    for trial in trials:
        assert trial.sweep, trial.name
        for key, value in trial.sweep.items():
            assert f"-{key.rsplit('.', 1)[-1]}={value}" in trial.name
            assert swept_setting(trial, key) == value, (trial.name, key)
    s4d = [t for t in trials if t.model.name == "s4d"]
    assert {t.ppo["lr"] for t in s4d} == {1.0e-4, 5.0e-4}
    assert all(t.ppo["num_epochs"] == 2 for t in s4d)     # the model's own unswept key stays


def test_sweeping_a_key_both_study_wide_and_for_one_model_is_refused():
    with pytest.raises(ConfigError, match=r"sweep.models\[0\].ppo.lr and sweep.ppo.lr"):
        study(sweep={"ppo.lr": [1.0e-4], "models[0].ppo.lr": [2.0e-4]})


# --------------------------------------------------------------------------- 2. YAML examples
def readme_yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.S)


def test_every_yaml_example_of_the_readme_parses_and_validates():
    """The first block is a whole study; each later one shows other keys, valid laid over
    it (models, names and keywords checked as a run checks them)."""
    blocks = [yaml.load(text, Loader=config.YamlLoader) for text in readme_yaml_blocks()]
    assert len(blocks) >= 2 and all(isinstance(block, dict) for block in blocks)
    whole = config.validate({**blocks[0], "base_dir": str(ROOT / "configs")}, where="README")
    for block in blocks[1:]:
        raw = {**whole.to_dict(), **block}
        if "imports" in block:
            raw["base_dir"] = str(ROOT / "configs")
            raw["imports"] = ["my_cells"]            # the README's example module
        config.validate(raw, where="README")


# --------------------------------------------------------------------------- 3, 4. the CLI
@pytest.mark.parametrize("item", ["seeds=[0,1", 'name="x', "ppo.lr={"])
def test_a_malformed_set_value_is_one_clear_line(item, capsys):
    smoke = str(ROOT / "configs" / "smoke.yaml")
    assert cli.main(["train", smoke, "--dry-run", "--set", item]) == 2
    err = capsys.readouterr().err
    assert "is not valid YAML" in err and f"--set {item.split('=')[0]}" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_dry_run_checks_model_names_and_keywords_as_a_run_does(tmp_path, capsys):
    path = tmp_path / "typo.yaml"
    path.write_text("name: typo\ntasks: [RepeatPreviousEasy]\nseeds: [0]\n"
                    "stop: {env_steps: 100}\n"
                    "models: [gur, {name: lmu, kwargs: {memory_sise: 8}}]\n")
    assert cli.main(["train", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "models[0].name: unknown memory model 'gur' (did you mean 'gru'?)" in err
    assert "models[1].kwargs.memory_sise: unknown key (did you mean 'memory_size'?)" in err


def test_hidden_size_in_kwargs_points_to_model_config():
    with pytest.raises(ConfigError, match=r"models\[0\].kwargs.hidden_size: the memory's width "
                                          r"is the study's `model_config"):
        config.validate({"name": "t", "tasks": ["RepeatPreviousEasy"], "seeds": [0],
                         "stop": {"env_steps": 100},
                         "models": [{"name": "gru", "kwargs": {"hidden_size": 8}}]})


def test_internal_keys_are_not_offered_as_allowed_keys():
    with pytest.raises(ConfigError) as error:
        config.validate({"name": "t", "tasks": ["RepeatPreviousEasy"], "seeds": [0],
                         "stop": {"env_steps": 100}, "models": ["gru"], "bogus": 1})
    assert "allowed:" in str(error.value) and "base_dir" not in str(error.value)


def test_rollout_of_a_missing_path_says_so_first(tmp_path, capsys):
    assert cli.main(["rollout", str(tmp_path / "no_such_checkpoint")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "--env" not in err


def test_report_of_a_missing_folder_says_it_does_not_exist(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "nosuchdir")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_make_names_a_misspelled_size():
    with pytest.raises(TypeError, match=r"unknown keyword\(s\) \['hiden_size'\] \(did you mean "
                                        r"'hiden_size' -> 'hidden_size'\?\)"):
        memory_models.make("gru", input_size=4, hiden_size=8)
    with pytest.raises(TypeError, match=r"make\('gru'\) needs hidden_size"):
        memory_models.make("gru", input_size=4)


def test_check_takes_model_keywords_and_wants_a_module_name(capsys, monkeypatch):
    monkeypatch.chdir(ROOT / "configs")
    assert cli.main(["check", "lmu", "--imports", "./my_cells.py"]) == 2
    assert "expected a module name, not a path" in capsys.readouterr().err
    assert cli.main(["check", "lmu", "--set", "memory_sise=8"]) == 2
    assert "unknown keyword(s) ['memory_sise']" in capsys.readouterr().err
    assert cli.main(["check", "lmu", "--set", "memory_size=[1"]) == 2
    assert "is not valid YAML" in capsys.readouterr().err
    assert cli.main(["check", "min_gru", "--set", "layers=2"]) == 0
    assert "min_gru: every law holds" in capsys.readouterr().out


# --------------------------------------------------------------------------- 7. dotted paths
def dotted_paths() -> set[str]:
    texts = [README.read_text(), *(p.read_text() for p in (ROOT / "configs").glob("*.y*ml"))]
    return {path.rstrip(".") for text in texts
            for path in re.findall(r"\bexperiments(?:\.[A-Za-z_]\w*)+", text)}


@pytest.mark.parametrize("path", sorted(dotted_paths()))
def test_every_dotted_experiments_path_in_the_docs_imports(path):
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):        # the longest importable module, then attributes
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            target = getattr(target, attribute)
        return
    pytest.fail(f"{path} does not import")


def test_every_experiments_file_path_in_the_docs_exists():
    texts = [README.read_text(), *(p.read_text() for p in (ROOT / "configs").glob("*.y*ml"))]
    paths = {p for text in texts for p in re.findall(r"\bexperiments/[\w/]+\.py", text)}
    assert paths and all((ROOT / p).is_file() for p in paths), sorted(paths)


# --------------------------------------------------------------------------- 6. re-reports
REPORT_FOLDERS = sorted(p.parent for p in RESULTS.glob("**/trials.csv"))
TABLES = ("mmer.md", "mmer.csv", "trials.csv", "eval.md", "eval.csv")


@pytest.mark.parametrize("folder", REPORT_FOLDERS, ids=lambda p: str(p.relative_to(RESULTS)))
def test_every_committed_report_folder_re_reports_to_its_own_tables(folder, tmp_path):
    """`memrl report FOLDER` (with the --models and --against it was written with, recorded in
    its study.json) writes the same tables: nothing is lost on the way. The aggregate's rows
    and point estimates are the same (its CIs are bootstrapped: 20 resamples here, for time)."""
    recorded = json.loads((folder / "study.json").read_text())
    paths = report(folder, tmp_path, reps=20, against=recorded.get("against", []),
                   only=recorded.get("models", []))
    for table in TABLES:
        if (folder / table).is_file():
            assert (tmp_path / table).read_text() == (folder / table).read_text(), table
    if (folder / "eval.md").is_file():
        assert paths["eval"] is not None
    keys = ["statistic", "model", "reference", "task", "runs", "reference_runs"]
    committed, again = (pd.read_csv(path / "aggregate.csv") for path in (folder, tmp_path))
    pd.testing.assert_frame_equal(again[keys], committed[keys])
    pd.testing.assert_series_equal(again["estimate"], committed["estimate"], rtol=1e-12)


def test_folders_written_before_the_stack_column_keep_the_old_stack_comparison(tmp_path):
    paths = report(RESULTS / "reproduce", tmp_path, reps=20)
    assert "| GRU-old-stack | GRU |" in paths["aggregate"].read_text()
    assert paths["eval"] is not None and paths["plots"] == []
    assert "final numbers only" in paths["plots_note"]

