"""Studies of complete trials: every trial its own config (API stack, task kind, PPO settings),
sweeps, POPGym's models beside ours, evaluation by rollout inside the study."""

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from experiments import cli
from experiments.study import config
from experiments.study.results import ENV_STEPS
from processes import act_when, assert_progress_is_results, start_memrl
from experiments.study.trials import algorithm_config, trial_spec

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
])
def test_bad_sweeps_and_popgym_names_fail_validation(changes, fragment):
    with pytest.raises(config.ConfigError) as error:
        study(**changes)
    assert fragment in str(error.value)
    if "unknown POPGym model" in fragment:          # the valid names are listed
        assert "popgym:GRU" in str(error.value) and "popgym:S4D" in str(error.value)


def test_popgym_position_tables_must_hold_every_step_of_an_episode():
    """POPGym's MLP, FWP, LinearAttention, Framestack and Frameconv index a table of
    max_seq_len rows by the step within the episode: a study whose episodes outrun it is
    refused before it starts (PositionOnlyCartPoleEasy: 200 steps), with the length it needs."""
    import gymnasium as gym
    import torch
    from experiments.rllib.popgym_models import popgym_class

    rows = 8                                        # POPGym's own lookup at the table's end
    model = popgym_class("popgym:MLP")(
        gym.spaces.Box(-1.0, 1.0, (3,)), gym.spaces.Discrete(2), 2,
        {"max_seq_len": rows, "custom_model_config": {"preprocessor_input_size": 4,
                                                      "preprocessor_output_size": 4}}, "m")
    x = torch.zeros(2, 3, 4)
    model.apply_embedding(x, torch.tensor([0, rows - 3]))          # last step: row rows - 1
    with pytest.raises(IndexError):
        model.apply_embedding(x, torch.tensor([0, rows - 2]))

    def cartpole(model, **ppo):
        return study(tasks=["PositionOnlyCartPoleEasy"], models=[model],
                     ppo={**SMOKE["ppo"], **ppo})

    with pytest.raises(config.ConfigError, match=r"models\[0\]: popgym:MLP indexes its position "
                       r"table \(199 rows.*run to 200 steps.*max_seq_len >= 200"):
        cartpole("popgym:MLP", max_seq_len=199)
    cartpole("popgym:MLP", max_seq_len=200)
    with pytest.raises(config.ConfigError, match="truncate_episodes.*max_seq_len >= 399"):
        cartpole("popgym:Frameconv", max_seq_len=398, batch_mode="truncate_episodes")
    cartpole({"name": "popgym:Frameconv", "ppo": {"max_seq_len": 399}},
             batch_mode="truncate_episodes")            # a model's own ppo is the one used
    cartpole("popgym:GRU", max_seq_len=64)              # no position table
    cartpole("frame_conv", max_seq_len=64)              # ours: positions past the table go on
    study(models=["popgym:FastWeightProgrammer"])       # RepeatPreviousEasy fits SMOKE's 64
    from experiments.rllib.ppo import algorithm_config     # the Python API refuses it too
    with pytest.raises(ValueError, match="popgym:Framestack indexes its position table"):
        algorithm_config({"name": "popgym:Framestack", "kwargs": {}, "stack": "old"},
                         "PositionOnlyCartPoleEasy", seed=0, sizes={},
                         ppo={"max_seq_len": 128})


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
        assert float(rows[-1][ENV_STEPS]) >= SMOKE["stop"]["env_steps"]
        assert float(rows[-1]["evaluation/episodes"]) == 3             # evaluated at the end
        assert math.isfinite(float(rows[-1]["evaluation/return_mean"]))
        assert all(math.isnan(float(r["evaluation/return_mean"])) for r in rows[:-1])
        assert list((folder / name).glob("events.out.tfevents.*")), "no TensorBoard events"
    assert cli.main(["report", str(folder), "--reps", "100"]) == 0
    table = (folder / "report" / "mmer.md").read_text()
    assert all(f"| {label} |" in table for label in ("gru", "gru-old", "popgym-GRU"))


# --------------------------------------------------------------------------- running for days
def run_memrl(*args, cwd=ROOT, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_help_and_report_load_neither_ray_nor_torch_dry_run_no_ray(tmp_path):
    """--help and report start without Ray or PyTorch; --dry-run checks the memory names and
    keywords as a run does (PyTorch) but starts no Ray."""
    probe = ("import sys; from experiments import cli\n"
             "try:\n    code = cli.main(sys.argv[1:])\nexcept SystemExit as exit:\n"
             "    code = exit.code\n"
             "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'torch'})\n"
             "print('HEAVY', heavy, 'CODE', code)")
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "study.json").write_text(json.dumps({"study": {"name": "s"}, "trials": [
        {"index": 0, "name": "T-gru-s0", "task": "popgym-T-v0", "model": "gru", "label": "gru",
         "variant": "gru", "stack": "new", "kwargs": {}, "sweep": {}, "seed": 0}]}))
    (folder / "T-gru-s0").mkdir()
    (folder / "T-gru-s0" / "progress.csv").write_text(
        "training_iteration,num_env_steps_sampled_lifetime,env_runners/episode_return_mean\n"
        "1,100,0.5\n")
    for args, heavy in ((["--help"], []), (["report", str(folder)], []),
                        (["train", str(ROOT / "configs" / "quickstart.yaml"), "--dry-run"],
                         ["torch"])):
        done = subprocess.run([sys.executable, "-c", probe, *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert f"HEAVY {heavy} CODE 0" in done.stdout, (args, done.stdout, done.stderr)


def test_models_lists_the_lineup_without_ray_and_shows_own_memories():
    """`memrl models`: every registered name with its POPGym original and elapsed time, no Ray
    loaded; `memrl models NAME` its keywords; --imports adds the user's own; bad names exit 2."""
    import memory_models
    probe = ("import sys; from experiments import cli\n"
             "code = cli.main(sys.argv[1:])\n"
             "print('RAY', 'ray' in sys.modules, 'CODE', code)")
    done = subprocess.run([sys.executable, "-c", probe, "models"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert "RAY False CODE 0" in done.stdout, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    ours = [n for n in memory_models.available()          # not a user's, imported by a test
            if memory_models.get(n).__module__.startswith("memory_models.")]
    for name in ours:
        assert any(line.startswith(name + " ") for line in lines), name
    assert "~ popgym:FastWeightProgrammer" in done.stdout
    ffm = [line for line in lines if line.startswith("ffm ")]
    assert "elapsed time;" in lines[lines.index(ffm[0]) + 1]
    one = run_memrl("models", "event_ssm")
    assert one.returncode == 0 and "  selective = False" in one.stdout, one.stdout
    own = run_memrl("models", "--imports", "my_cells", cwd=ROOT / "configs")
    assert own.returncode == 0 and any(line.startswith("leaky ")
                                       for line in own.stdout.splitlines()), own.stdout
    bad = run_memrl("models", "gruu")
    assert bad.returncode == 2 and "unknown memory model 'gruu'" in bad.stderr


def test_trials_that_cannot_fit_fail_at_once(tmp_path, ray_session, capsys):
    """2 CPUs here: 4 env runners + the trial's own CPU cannot fit; nothing is left behind."""
    assert cli.main(["train", str(ROOT / "configs" / "smoke.yaml"), "--set",
                     f"output={tmp_path}", "--set", "resources.num_env_runners=4"]) == 2
    error = capsys.readouterr().err
    assert "needs 5 CPU(s) and 0 GPU(s) but the Ray cluster has 2 CPU(s)" in error, error
    assert "--set resources.num_env_runners=1" in error
    assert not (tmp_path / "smoke").exists()


def test_own_memory_checked_and_trained_with_a_quiet_console(tmp_path):
    """configs/my_cells.py's "leaky" passes `memrl check`, then trains in a study beside gru
    with a remote env runner (a separate process that must import my_cells too); the console
    holds only memrl's lines, Ray's logs are in the study's logs/ folder."""
    checked = run_memrl("check", "leaky", "--imports", "my_cells", cwd=ROOT / "configs")
    assert checked.returncode == 0 and "every law holds" in checked.stdout, checked.stdout
    done = run_memrl("train", str(ROOT / "configs" / "leaky_vs_gru.yaml"),
                     "--set", f"output={tmp_path}", "--set", "seeds=[0]",
                     "--set", "stop.env_steps=200", "--set", "ppo.max_seq_len=16",
                     "--set", "ppo.train_batch_size_per_learner=128",
                     "--set", "ppo.minibatch_size=64", "--set", "ppo.num_epochs=1",
                     "--set", "resources.num_env_runners=1",
                     "--set", "resources.num_envs_per_env_runner=2",
                     "--set", "resources.max_concurrent_trials=1")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = (done.stdout + done.stderr).splitlines()
    ours = re.compile(r"^(memrl train: |\[ *[\d.]+ min\] |next: |      tensorboard )")
    assert all(ours.match(line) for line in lines if line.strip()), "\n".join(lines)
    assert "2/2 trial(s) finished" in done.stdout
    logs = tmp_path / "leaky_vs_gru" / "logs"
    assert (logs / "driver.log").is_file() and list(logs.glob("worker-*.log"))


def _trial_processes(driver_pid: int) -> list:
    """The trial actors of the Ray that `memrl train` (driver_pid) started: its descendants."""
    import psutil
    return [p for p in psutil.Process(driver_pid).children(recursive=True)
            if any("StudyTrial" in part for part in p.cmdline())]


def test_killed_trial_resumes_from_its_checkpoint(tmp_path):
    """SIGKILL a running trial's process after its first checkpoint: Tune restarts it from
    that checkpoint (FailureConfig), no trial starts over, the study finishes (exit 0)."""
    trial, steps = tmp_path / "smoke" / "RepeatPreviousEasy-gru-s0", 48000
    process = start_memrl(
        "train", str(ROOT / "configs" / "smoke.yaml"), "--set", f"output={tmp_path}",
        "--set", "models=[gru]", "--set", "checkpoint.frequency=1", "--set", "checkpoint.keep=0",
        "--set", f"stop.env_steps={steps}", "--set", "ppo.train_batch_size_per_learner=512")
    # The trial writes its checkpoints, the driver its progress.csv, seconds behind (results
    # come in bursts: on a fast machine the driver had logged 2 results when the trial had
    # written 29 checkpoints): the trial is long enough (about 87 iterations) to be killed
    # mid-run.
    def registered():        # two results processed: the first checkpoint is surely registered
        progress = trial / "progress.csv"
        return bool(list(trial.glob("checkpoint_*"))) and progress.exists() \
            and len(progress.read_text().splitlines()) >= 3

    checkpoints_at_kill = []

    def kill():
        victims = _trial_processes(process.pid)
        assert victims, "no StudyTrial process found"
        checkpoints_at_kill.append(len(list(trial.glob("checkpoint_*"))))
        for victim in victims:
            os.kill(victim.pid, signal.SIGKILL)

    output = act_when(process, registered, kill, wait_s=300, what="checkpointed")
    assert process.returncode == 0, output
    with open(trial / "progress.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    since_restore = [int(r["iterations_since_restore"]) for r in rows]
    assert 1 in since_restore[1:], f"the trial never resumed from a checkpoint (one started " \
        f"over logs 1 first only): {since_restore} (killed with {checkpoints_at_kill} written)"
    assert float(rows[-1][ENV_STEPS]) >= steps
    assert_progress_is_results(trial)


def test_wandb_logs_every_trial_offline(tmp_path):
    """Tune's WandbLoggerCallback (offline): one W&B run per trial, in the trial's folder."""
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump({**SMOKE, "output": str(tmp_path),
                                    "logging": {"wandb": {"project": "memrl-test"}}}))
    done = run_memrl("train", str(path), env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert done.returncode == 0, done.stdout + done.stderr
    for trial in ("RepeatPreviousEasy-gru-s0", "RepeatPreviousEasy-MLP-s0"):
        runs = list((tmp_path / "smoke" / trial / "wandb").glob("offline-run-*/*.wandb"))
        assert len(runs) == 1, (trial, sorted(map(str, (tmp_path / "smoke").rglob("*")))[:30])
