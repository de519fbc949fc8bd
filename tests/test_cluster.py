"""Studies past one machine: a local two-node Ray cluster (`ray.cluster_utils.Cluster`, a head
and a worker node of 1 CPU each) that `memrl train --address` attaches to as a user would, and
loses its worker node mid-study."""

import contextlib
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from processes import act_when, assert_progress_is_results, start_memrl
from experiments.study.results import ENV_STEPS

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def two_node_cluster(start_s: float = 180):
    """A head and a worker node, 1 CPU each, shut down at the end whatever happens. The
    cluster does not become this machine's default (`/tmp/ray/ray_current_cluster`): another
    `ray.init()` meanwhile starts its own Ray instead of attaching to this one."""
    import ray._common.utils
    import ray._private.utils
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ray._private.utils, "write_ray_address", lambda *args, **kwargs: None)
        patch.setattr(ray._common.utils, "reset_ray_address", lambda *args, **kwargs: None)
        cluster = Cluster()
        try:
            cluster.add_node(wait=False, num_cpus=1, include_dashboard=False)
            worker = cluster.add_node(wait=False, num_cpus=1)
            cluster.wait_for_nodes(timeout=start_s)
            yield cluster, worker
        finally:
            cluster.shutdown()


def _descendants(pid: int) -> list:
    import psutil                                   # Ray's own copy: on the path once imported
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def trial_on(node, trial_names: list[str]) -> str | None:
    """The trial whose actor runs on `node` (its raylet's descendants), by its working
    directory (Tune names it after the trial's folder); None while there is none."""
    import psutil
    raylet = node.all_processes["raylet"][0].process.pid
    for process in _descendants(raylet):
        try:
            if not any("StudyTrial" in part for part in process.cmdline()):
                continue
            cwd = Path(process.cwd()).name
        except psutil.Error:
            continue
        if cwd in trial_names:
            return cwd
    return None


def read_progress(trial: Path) -> list[dict]:
    with open(trial / "progress.csv", newline="") as file:
        return list(csv.DictReader(file))


def test_study_survives_losing_a_node(tmp_path):
    """Two trials, one on each node; once the worker node's trial has checkpointed, the
    worker node goes (`cluster.remove_node`): that trial restarts from its last checkpoint on
    the head node (max_failures), the study completes, every trial's logs hold iterations
    1..N once each up to the stop, and `memrl report` reads the folder."""
    env_steps = 6000
    study = tmp_path / "smoke"
    names = ["RepeatPreviousEasy-gru-s0", "RepeatPreviousEasy-MLP-s0"]
    with two_node_cluster() as (cluster, worker):
        process = start_memrl(
            "train", str(ROOT / "configs" / "smoke.yaml"), "--address", cluster.address,
            "--set", f"output={tmp_path}", "--set", "checkpoint.frequency=1",
            "--set", "checkpoint.keep=0", "--set", f"stop.env_steps={env_steps}",
            "--set", "ppo.train_batch_size_per_learner=512",
            env={**os.environ, "OMP_NUM_THREADS": "1"})
        lost = []

        def checkpointed_on_worker() -> bool:   # two results processed: the checkpoint is
            name = lost[0] if lost else trial_on(worker, names)   # surely registered
            if name is None:
                return False
            lost[:] = [name]
            trial = study / name
            progress = trial / "progress.csv"
            return bool(list(trial.glob("checkpoint_*"))) and progress.exists() \
                and len(progress.read_text().splitlines()) >= 3

        def remove_worker() -> None:
            cluster.remove_node(worker)

        output = act_when(process, checkpointed_on_worker, remove_worker, wait_s=400,
                          what="checkpointed a trial on the worker node", finish_s=600)
        assert process.returncode == 0, output
    assert "attached to the Ray cluster" in output and "2/2 trial(s) finished" in output, output
    for name in names:
        rows = read_progress(study / name)
        since_restore = [int(row["iterations_since_restore"]) for row in rows]
        restarts = [i for i, n in enumerate(since_restore) if n == 1 and i > 0]
        if name == lost[0]:             # resumed after a checkpoint, not started over
            assert restarts and all(int(rows[i]["training_iteration"]) > 1 for i in restarts), \
                (name, since_restore)
            assert rows[restarts[0]]["pid"] != rows[0]["pid"]
            assert "its node has died" in (study / name / "error.txt").read_text()
        else:
            assert not restarts, (name, since_restore)
        assert float(rows[-1][ENV_STEPS]) >= env_steps, (name, rows[-1][ENV_STEPS])
        assert_progress_is_results(study / name)
    report = subprocess.run([sys.executable, "-m", "experiments.cli", "report", str(study),
                             "--reps", "100"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "| gru |" in (study / "report" / "mmer.md").read_text()
