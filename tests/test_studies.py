"""Studies of complete trials: every trial its own config (API stack, task kind, PPO settings),
sweeps, POPGym's models beside ours, evaluation by rollout inside the study."""

import csv
import json
import math
from pathlib import Path

import pytest
import yaml

from experiments import cli, config
from experiments.trials import algorithm_config, trial_spec

ROOT = Path(__file__).resolve().parents[1]
SMOKE = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())


def study(**changes) -> config.Study:
    return config.validate({**SMOKE, **changes}, where="test")


def specs(s: config.Study) -> dict[str, dict]:
    return {t.name: trial_spec(s, t) for t in config.expand(s)}


def test_each_trial_gets_its_own_config():
    s = study(tasks=["RepeatPreviousEasy", "RepeatPreviousEasy-EventTime"],
              models=["gru", {"name": "gru", "label": "gru-old", "stack": "old"},
                      {"name": "popgym:gru", "ppo": {"lr": 1.0e-3}}])
    built = {name: algorithm_config(spec) for name, spec in specs(s).items()}
    assert len(built) == 2 * 3
    new = built["RepeatPreviousEasy-EventTime-gru-s0"]
    assert new.enable_rl_module_and_learner
    assert new.rl_module_spec.model_config["timesteps_from_obs"]          # event time: Δt read
    plain = built["RepeatPreviousEasy-gru-s0"]
    assert not plain.rl_module_spec.model_config["timesteps_from_obs"]
    old = built["RepeatPreviousEasy-gru-old-s0"]
    assert not old.enable_rl_module_and_learner and old.model["custom_model"] == "memrl_gru"
    assert old.train_batch_size == SMOKE["ppo"]["train_batch_size_per_learner"]
    popgym = built["RepeatPreviousEasy-popgym-GRU-s0"]
    assert popgym.model["custom_model"].__module__ == "popgym.baselines.ray_models.ray_gru"
    assert popgym.lr == 1.0e-3 and old.lr == SMOKE["ppo"]["lr"]      # per-model PPO
    assert popgym.model["custom_model_config"]["hidden_size"] == 16  # the study's sizes


def test_sweep_multiplies_the_grid_and_names_the_values():
    s = study(models=["gru", {"name": "lmu", "label": "LMU"}],
              sweep={"ppo.lr": [1.0e-4, 1.0e-3], "models[1].kwargs.theta": [4.0, 8.0]})
    trials = config.expand(s)
    assert len(trials) == 2 * 1 + 2 * 2            # gru: lr only; LMU: lr x theta (1 seed)
    assert {t.variant for t in trials} == {
        "gru[lr=0.0001]", "gru[lr=0.001]", "LMU[lr=0.0001,theta=4.0]",
        "LMU[lr=0.0001,theta=8.0]", "LMU[lr=0.001,theta=4.0]", "LMU[lr=0.001,theta=8.0]"}
    lmu = next(t for t in trials if t.variant == "LMU[lr=0.001,theta=8.0]")
    assert lmu.ppo["lr"] == 1.0e-3 and lmu.model.kwargs == {"theta": 8.0}
    assert lmu.name == "RepeatPreviousEasy-LMU-lr=0.001-theta=8.0-s0"
    assert len({t.name for t in trials}) == len(trials)


@pytest.mark.parametrize("changes, fragment", [
    ({"sweep": {"ppo.lr": [1.0e-4, "fast"]}}, "sweep point {'ppo.lr': 'fast'}: ppo.lr: expected"),
    ({"sweep": {"models[0].kwargs.theta": [4.0]}}, "models[0].kwargs.theta: unknown key"),
    ({"sweep": {"stop.env_steps": [10]}}, "sweep keys are ppo.KEY"),
    ({"models": ["popgym:Transformer"]}, "models[0].name: unknown POPGym model"),
    ({"models": [{"name": "popgym:LMU", "kwargs": {"memory": 3}}]}, "not keys of POPGym's LMU"),
    ({"models": ["popgym:DiffNC"]}, "needs the 'dnc' package"),
])
def test_bad_sweeps_and_popgym_names_fail_validation(changes, fragment):
    with pytest.raises(config.ConfigError) as error:
        study(**changes)
    assert fragment in str(error.value)
    if "unknown POPGym model" in fragment:          # the valid names are listed
        assert "popgym:GRU" in str(error.value) and "popgym:S4D" in str(error.value)


def test_mixed_study_trains_evaluates_and_reports(tmp_path, ray_session):
    """Ours (new and old API stack) beside POPGym's GRU, 2 seeds, evaluation at the end."""
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump({
        **SMOKE, "name": "mixed", "output": str(tmp_path), "seeds": [0, 1],
        "models": ["gru", {"name": "gru", "label": "gru-old", "stack": "old"}, "popgym:GRU"],
        "eval": {"episodes": 3},
        "resources": {**SMOKE["resources"], "num_envs_per_env_runner": 1}}))
    assert cli.main(["train", str(path)]) == 0
    folder = tmp_path / "mixed"
    names = [t["name"] for t in json.loads((folder / "study.json").read_text())["trials"]]
    assert len(names) == 6
    for name in names:
        with open(folder / name / "progress.csv", newline="") as file:
            rows = list(csv.DictReader(file))
        assert float(rows[-1]["num_env_steps_sampled_lifetime"]) >= SMOKE["stop"]["env_steps"]
        assert float(rows[-1]["evaluation/episodes"]) == 3             # evaluated at the end
        assert math.isfinite(float(rows[-1]["evaluation/return_mean"]))
        assert all(math.isnan(float(r["evaluation/return_mean"])) for r in rows[:-1])
        assert list((folder / name).glob("events.out.tfevents.*")), "no TensorBoard events"
    assert cli.main(["report", str(folder)]) == 0
    table = (folder / "report" / "mmer.md").read_text()
    assert all(f"| {label} |" in table for label in ("gru", "gru-old", "popgym-GRU"))
