"""Studies past one machine: a local two-node Ray cluster (`ray.cluster_utils.Cluster`, a head
and a worker node of 1 CPU each) that `memrl train --address` attaches to as a user would, and
loses its worker node mid-study; its `output` a local folder (what NFS gives every node) or a
bucket of a local S3-compatible server (moto's), which no node needs to share."""

import contextlib
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pyarrow import fs

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


def trial_on(node, trial_names: list[str]) -> Path | None:
    """The working directory of the trial whose actor runs on `node` (its raylet's
    descendants): <Ray session>/artifacts/<time>/<study>/working_dirs/<trial name>; None while
    there is none."""
    import psutil
    raylet = node.all_processes["raylet"][0].process.pid
    for process in _descendants(raylet):
        try:
            if not any("StudyTrial" in part for part in process.cmdline()):
                continue
            cwd = Path(process.cwd())
        except psutil.Error:
            continue
        if cwd.name in trial_names:
            return cwd
    return None


class Stored:
    """A study's folder on a pyarrow filesystem (local or the S3 bucket), read by the test."""

    def __init__(self, filesystem, path: str):
        self.filesystem, self.path = filesystem, path

    def files(self, folder: str) -> list[str]:
        found = self.filesystem.get_file_info(
            fs.FileSelector(f"{self.path}/{folder}", allow_not_found=True))
        return [info.base_name for info in found]

    def text(self, file: str) -> str:
        """The file's text; "" while it does not exist."""
        if not self.filesystem.get_file_info(f"{self.path}/{file}").is_file:
            return ""
        with self.filesystem.open_input_stream(f"{self.path}/{file}") as stream:
            return stream.read().decode()


def run_memrl(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def read_progress(trial: Path) -> list[dict]:
    with open(trial / "progress.csv", newline="") as file:
        return list(csv.DictReader(file))


@contextlib.contextmanager
def s3_server():
    """moto's S3 server on a free local port, for this test's processes and Ray's (the
    credentials go to the environment the cluster's nodes start with): (pyarrow filesystem,
    the URI options that reach it); its bucket memrl is created."""
    import logging
    pytest.importorskip("moto", reason="moto[server] is in the dev extra")
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)          # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {"AWS_ACCESS_KEY_ID": "memrl", "AWS_SECRET_ACCESS_KEY": "memrl",
                           "AWS_EC2_METADATA_DISABLED": "true"}.items():
            patch.setenv(key, value)
        server.start()
        try:
            host, port = server.get_host_and_port()
            options = f"endpoint_override={host}:{port}&scheme=http&region=us-east-1"
            creating, _ = fs.FileSystem.from_uri(f"s3://memrl?{options}&allow_bucket_creation=1")
            creating.create_dir("memrl")
            yield fs.FileSystem.from_uri(f"s3://memrl?{options}")[0], options
        finally:
            server.stop()


@pytest.mark.parametrize("output", ["folder", "s3"])
def test_study_survives_losing_a_node(tmp_path, output):
    """Two trials, one on each node; once the worker node's trial has checkpointed, the
    worker node goes (`cluster.remove_node`): that trial restarts from its last checkpoint on
    the head node (max_failures), the study completes, every trial's logs hold iterations
    1..N once each up to the stop, and `memrl report` reads the folder. With an s3:// output
    the checkpoints are in the bucket only (the restarted trial read its own from there), the
    driver's local copy (results/<name> in its working directory) has the rest, and --resume
    restores the study from the bucket."""
    env_steps = 5000
    study = tmp_path / "results" / "smoke"
    names = ["RepeatPreviousEasy-gru-s0", "RepeatPreviousEasy-MLP-s0"]
    with contextlib.ExitStack() as stack:
        if output == "s3":
            bucket, options = stack.enter_context(s3_server())
            location = f"s3://memrl/studies?{options}"
        else:
            location = str(tmp_path / "results")
        cluster, worker = stack.enter_context(two_node_cluster())
        train = ["train", str(ROOT / "configs" / "smoke.yaml"), "--address", cluster.address,
                 "--set", f"output={location}", "--set", "checkpoint.frequency=1",
                 "--set", "checkpoint.keep=0", "--set", f"stop.env_steps={env_steps}",
                 "--set", "ppo.train_batch_size_per_learner=512"]
        process = start_memrl(*train, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
        stored = Stored(bucket, "memrl/studies/smoke") if output == "s3" else Stored(
            fs.LocalFileSystem(), str(study))
        lost = []

        def checkpointed_on_worker() -> bool:
            """The worker's trial has stored a checkpoint, and the driver has logged two of its
            results (in its staging folder, synced to the output only every few seconds):
            the driver surely knows the checkpoint."""
            working = lost[0] if lost else trial_on(worker, names)
            if working is None:
                return False
            lost[:] = [working]
            staged = working.parents[1] / "driver_artifacts" / working.name / "progress.csv"
            return any(file.startswith("checkpoint_") for file in stored.files(working.name)) \
                and staged.exists() and len(staged.read_text().splitlines()) >= 3

        def remove_worker() -> None:
            cluster.remove_node(worker)

        console = act_when(process, checkpointed_on_worker, remove_worker, wait_s=400,
                           what="checkpointed a trial on the worker node", finish_s=600)
        assert process.returncode == 0, console
        assert "attached to the Ray cluster" in console and "2/2 trial(s) finished" in console, \
            console
        for name in names:
            rows = read_progress(study / name)
            since_restore = [int(row["iterations_since_restore"]) for row in rows]
            restarts = [i for i, n in enumerate(since_restore) if n == 1 and i > 0]
            if name == lost[0].name:        # resumed after a checkpoint, not started over
                assert restarts, (name, since_restore)
                assert all(int(rows[i]["training_iteration"]) > 1 for i in restarts), \
                    (name, since_restore)
                assert rows[restarts[0]]["pid"] != rows[0]["pid"]
                assert "its node has died" in (study / name / "error.txt").read_text()
            else:
                assert not restarts, (name, since_restore)
            assert float(rows[-1][ENV_STEPS]) >= env_steps, (name, rows[-1][ENV_STEPS])
            assert_progress_is_results(study / name)
        report = run_memrl("report", str(study), "--reps", "100", cwd=ROOT)
        assert report.returncode == 0, report.stdout + report.stderr
        assert "| gru |" in (study / "report" / "mmer.md").read_text()
        if output == "s3":                  # checkpoints only in the bucket, the rest copied
            for name in names:
                assert any(file.startswith("checkpoint_") for file in stored.files(name)), name
                assert not list((study / name).glob("checkpoint_*")), name
                for file in ("progress.csv", "result.json"):
                    assert (study / name / file).read_bytes().decode() == \
                        stored.text(f"{name}/{file}")
            assert (study / "study.json").read_bytes().decode() == stored.text("study.json")
            assert list((study / "logs").glob("worker-*.log"))
            resumed = run_memrl(*train, "--resume", cwd=tmp_path)     # Tune's state: the URI's
            assert resumed.returncode == 0, resumed.stdout + resumed.stderr
            assert "resuming; finished trials are kept" in resumed.stdout, resumed.stdout
            assert "2/2 trial(s) finished" in resumed.stdout, resumed.stdout


# --------------------------------------------------------------- an output no node shares
def test_uri_output_is_kept_at_the_uri_with_a_local_copy(tmp_path, monkeypatch):
    """`output: s3://...` (any URI pyarrow opens): the study at <output>/<name> (pyarrow's
    options kept), the driver's copy in results/<name>; a study there is not overwritten
    without --resume nor resumed with other settings; the copy leaves the checkpoints out."""
    import yaml
    from experiments.study import config, tuning
    from experiments.study.results import manifest

    smoke = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    s3 = config.validate({**smoke, "output": "s3://bucket/runs/?endpoint_override=h:9&scheme=http"},
                         where="test")
    assert s3.storage == "s3://bucket/runs/smoke?endpoint_override=h:9&scheme=http"
    assert s3.directory == tmp_path / "results" / "smoke"
    assert config.validate({**smoke, "output": "out"}, where="test").storage is None

    study = config.validate({**smoke, "output": f"file://{tmp_path}/bucket"}, where="test")
    trials = config.expand(study)
    storage = tuning._storage(study)
    filesystem, path = storage
    assert path == f"{tmp_path}/bucket/smoke" and isinstance(filesystem, fs.LocalFileSystem)
    assert tuning._check_folder(study, trials, False, storage)       # nothing there yet
    filesystem.create_dir(f"{path}/T-s0/checkpoint_000001")
    for file, text in {"study.json": json.dumps(manifest(study, trials)),
                       "T-s0/progress.csv": "training_iteration\n1\n",
                       "T-s0/checkpoint_000001/state.pkl": "weights"}.items():
        with filesystem.open_output_stream(f"{path}/{file}") as stream:
            stream.write(text.encode())
    with pytest.raises(tuning.StudyError, match=f"file://{tmp_path}/bucket/smoke already holds"):
        tuning._check_folder(study, trials, False, storage)
    assert tuning._check_folder(study, trials, True, storage)        # resumed as it was
    other = config.validate({**smoke, "output": f"file://{tmp_path}/bucket", "seeds": [1]},
                            where="test")
    with pytest.raises(tuning.StudyError, match="written for a different study"):
        tuning._check_folder(other, config.expand(other), True, storage)

    (study.directory / "study.json").write_text("the driver's")
    tuning._copy_from_storage(storage, study.directory)
    assert (study.directory / "T-s0" / "progress.csv").read_text() == "training_iteration\n1\n"
    assert not (study.directory / "T-s0" / "checkpoint_000001").exists()
    assert (study.directory / "study.json").read_text() == "the driver's"
    with pytest.raises(tuning.StudyError, match="output nowhere://x: pyarrow cannot open it"):
        tuning._storage(config.validate({**smoke, "output": "nowhere://x"}, where="test"))
