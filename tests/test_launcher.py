"""`memrl train`: dry run, refusals, a smoke study end to end, resume after Ctrl-C, --address.

The studies are configs/smoke.yaml (two models, one task, a few PPO iterations) written under
pytest's tmp_path. Interrupting and attaching to a cluster run `memrl train` in subprocesses.
"""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import cli
from experiments.study.results import ENV_STEPS
from processes import act_when, assert_progress_is_results, start_memrl

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
TRIALS = ["RepeatPreviousEasy-gru-s0", "RepeatPreviousEasy-MLP-s0"]


# `ray start --head` (Ray 2.60) turns on token authentication (token in ~/.ray/auth_token);
# a driver attaching to it must run with RAY_AUTH_MODE=token.
TOKEN_AUTH = {**os.environ, "RAY_AUTH_MODE": "token"}


def iterations(progress_csv: Path) -> list[int]:
    with open(progress_csv, newline="") as file:
        return [int(row["training_iteration"]) for row in csv.DictReader(file)]


def last_steps(progress_csv: Path) -> float:
    with open(progress_csv, newline="") as file:
        return float(list(csv.DictReader(file))[-1][ENV_STEPS])


def test_dry_run_lists_trials_and_starts_nothing(tmp_path, capsys):
    assert cli.main(["train", SMOKE, "--dry-run", "--set", f"output={tmp_path}",
                     "--set", "seeds=[0, 1]"]) == 0
    out = capsys.readouterr().out
    assert "2 model(s) x 2 seed(s) = 4 trial(s)" in out
    for name in ("RepeatPreviousEasy-gru-s0", "RepeatPreviousEasy-MLP-s1"):
        assert name in out
    assert not any(tmp_path.iterdir())


def test_dry_run_into_a_closed_pipe_ends_without_a_traceback(tmp_path):
    """`memrl train --dry-run | head -1`: the reader closes the pipe after one line."""
    command = [sys.executable, "-m", "experiments.cli", "train", SMOKE, "--dry-run",
               "--set", f"output={tmp_path}", "--set", f"seeds={list(range(2000))}"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               cwd=ROOT)
    process.stdout.readline()
    process.stdout.close()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    assert b"Traceback" not in stderr and b"BrokenPipeError" not in stderr, stderr.decode()


def test_skip_done_leaves_out_the_trials_another_piece_finished(tmp_path, capsys):
    """A report folder of an earlier piece (trials.csv as `memrl report` writes it): the
    trial that reached stop.env_steps (768) is left out, the unfinished one runs."""
    done = tmp_path / "first_piece"
    done.mkdir()
    (done / "trials.csv").write_text(
        "trial,task,model,label,variant,stack,seed,iterations,env_steps,mmer,last_return,"
        "eval_return\n"
        "RepeatPreviousEasy-gru-s0,popgym-RepeatPreviousEasy-v0,gru,gru,gru,new,0,3,768,"
        "0.1,0.1,\n"
        "RepeatPreviousEasy-MLP-s1,popgym-RepeatPreviousEasy-v0,mlp,MLP,MLP,new,1,2,512,"
        "0.1,0.1,\n")
    assert cli.main(["train", SMOKE, "--dry-run", "--set", f"output={tmp_path}",
                     "--set", "seeds=[0, 1]", "--skip-done", str(done)]) == 0
    out = capsys.readouterr().out
    assert "1 trial(s) finished in" in out and "left out; 3 to run" in out
    listed = out.split("4 trial(s), ")[1]
    assert "RepeatPreviousEasy-gru-s0" not in listed
    for name in ("RepeatPreviousEasy-gru-s1", "RepeatPreviousEasy-MLP-s0",
                 "RepeatPreviousEasy-MLP-s1"):
        assert name in listed
    assert cli.main(["train", SMOKE, "--dry-run", "--skip-done", str(tmp_path / "no")]) == 2
    assert "--skip-done: " in capsys.readouterr().err


def finished_study(folder: Path, overrides: list[str], with_settings: bool = True) -> Path:
    """A study folder as `memrl train SMOKE --set ...overrides` leaves it, every trial at
    stop.env_steps (768); without settings in its trial entries as studies before them."""
    from experiments.study import config
    from experiments.study.results import RETURN_MEAN, STUDY_FILE, manifest

    study = config.load(SMOKE, overrides, models=False)
    trials = config.expand(study)
    written = manifest(study, trials)
    if not with_settings:
        for entry in written["trials"]:
            del entry["ppo"], entry["model_config"]
    folder.mkdir()
    (folder / STUDY_FILE).write_text(json.dumps(written))
    for trial in trials:
        (folder / trial.name).mkdir()
        (folder / trial.name / "progress.csv").write_text(
            f"training_iteration,{ENV_STEPS},{RETURN_MEAN}\n1,768,0.5\n")
    return folder


@pytest.mark.parametrize("with_settings", [True, False])
def test_skip_done_runs_again_a_trial_finished_with_other_settings(tmp_path, capsys,
                                                                   with_settings):
    """A trial of the same name counts as done only if it ran with the same kwargs, ppo and
    model_config (a study.json without them per trial: its study's own settings)."""
    from experiments.report.sources import load

    done = finished_study(tmp_path / "done", ["ppo.max_seq_len=64"], with_settings)
    ppo = load([done]).iterations.drop_duplicates("name")["ppo"]
    assert [p["max_seq_len"] for p in ppo] == [64, 64]          # what the report records
    assert cli.main(["train", SMOKE, "--dry-run", "--skip-done", str(done)]) == 0
    assert "2 trial(s) finished in" in capsys.readouterr().out
    assert cli.main(["train", SMOKE, "--dry-run", "--skip-done", str(done),
                     "--set", "ppo.max_seq_len=32"]) == 0
    out = capsys.readouterr().out
    assert "RepeatPreviousEasy-gru-s0 finished in" in out
    assert "with other settings (ppo.max_seq_len 64 -> 32): it runs again" in out
    assert "0 trial(s) finished in" in out and "left out; 2 to run" in out


def test_bad_config_exits_2_naming_the_path(tmp_path, capsys):
    assert cli.main(["train", SMOKE, "--set", "models[1].kwargs.memory_sise=3"]) == 2
    err = capsys.readouterr().err
    assert "models[1].kwargs.memory_sise: unknown key" in err


def test_existing_study_is_not_overwritten_without_resume(tmp_path, capsys):
    (tmp_path / "smoke").mkdir()
    (tmp_path / "smoke" / "something").write_text("x")
    assert cli.main(["train", SMOKE, "--set", f"output={tmp_path}"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_smoke_study_trains_and_reports(tmp_path, ray_session, capsys):
    assert cli.main(["train", SMOKE, "--set", f"output={tmp_path}"]) == 0
    study = tmp_path / "smoke"
    out = capsys.readouterr().out
    assert "2/2 trial(s) finished" in out and f"memrl report {study}" in out
    for name, memory in zip(TRIALS, ["gru", "mlp"]):
        spec = json.loads((study / name / "params.json").read_text())["trial"]
        assert spec["task"] == "popgym-RepeatPreviousEasy-v0" and spec["name"] == name
        assert spec["model"]["name"] == memory                 # the folder names its model
        assert last_steps(study / name / "progress.csv") >= 768
        assert list((study / name).glob("checkpoint_*")), "no checkpoint at the end"

    assert cli.main(["report", str(study)]) == 0
    table = (study / "report" / "mmer.md").read_text()
    assert "| gru |" in table and "| MLP |" in table and "RepeatPreviousEasy" in table
    with open(study / "report" / "mmer.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert {(r["model"], r["task"]) for r in rows} == {
        ("gru", "popgym-RepeatPreviousEasy-v0"), ("gru", "mean"),
        ("MLP", "popgym-RepeatPreviousEasy-v0"), ("MLP", "mean")}
    assert all(-1 <= float(r["mmer_mean"]) <= 1 for r in rows)
    png = study / "report" / "curves_RepeatPreviousEasy.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_interrupted_study_resumes_without_rerunning_finished_trials(tmp_path, ray_session):
    study = tmp_path / "smoke"
    settings = ["--set", f"output={tmp_path}", "--set", "resources.max_concurrent_trials=1",
                "--set", "checkpoint.frequency=1", "--set", "stop.env_steps=1500"]
    first, second = (study / name for name in TRIALS)
    process = start_memrl("train", SMOKE, *settings)
    # one trial at a time: Ctrl-C once the second has started
    output = act_when(process, (second / "progress.csv").exists,
                      lambda: os.killpg(process.pid, signal.SIGINT), wait_s=240,
                      what="started the second trial", finish_s=120)
    assert last_steps(first / "progress.csv") >= 1500, output
    assert last_steps(second / "progress.csv") < 1500, "second trial finished before Ctrl-C"
    finished = (first / "progress.csv").read_text()

    assert cli.main(["train", SMOKE, *settings, "--resume"]) == 0
    assert (first / "progress.csv").read_text() == finished, "a finished trial ran again"
    for trial in (first, second):
        done = iterations(trial / "progress.csv")
        assert done == list(range(1, len(done) + 1)), f"{trial.name}: iterations {done}"
        assert last_steps(trial / "progress.csv") >= 1500
        assert_progress_is_results(trial)      # the resumed trial's rows under the right names


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path_factory):
    """A Ray head on 127.0.0.1 with its own ports and temp dir; stopped by its process group
    (never `ray stop`, which would stop every Ray on the machine)."""
    temp_dir = tmp_path_factory.mktemp("ray_head")
    port = free_port()
    command = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
               f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
               "--include-dashboard=false", f"--temp-dir={temp_dir}",
               f"--dashboard-agent-listen-port={free_port()}",
               f"--metrics-export-port={free_port()}"]
    head = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, env=TOKEN_AUTH)
    try:
        deadline = time.monotonic() + 120
        for line in head.stdout:                    # wait until the head is up
            if "Ray runtime started" in line:
                break
            assert time.monotonic() < deadline, "ray start --head did not come up"
        else:
            pytest.fail(f"ray start --head exited with {head.wait()}")
        yield f"127.0.0.1:{port}"
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


def test_address_runs_the_study_on_an_existing_cluster(tmp_path, ray_head):
    process = start_memrl("train", SMOKE, "--address", ray_head, "--set", f"output={tmp_path}",
                          "--set", "models=[mlp]", env=TOKEN_AUTH)
    try:
        output, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, output
    assert f"attached to the Ray cluster at {ray_head}" in output, output
    assert last_steps(tmp_path / "smoke" / "RepeatPreviousEasy-mlp-s0" / "progress.csv") >= 768
