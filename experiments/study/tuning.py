"""Running a study with Ray Tune: the trials, their resources, the console and the logs.

`train(study, trials)` starts (or attaches to) Ray, checks that each trial fits the cluster,
and runs the given trials of `expand(study)` (`memrl train` leaves out those `--skip-done`
names) through `experiments.study.trials.StudyTrial`, each from its own spec.
By default the console shows only memrl's lines: Ray's driver logs and warnings go to
`<study>/logs/driver.log`, and what Ray's worker processes print (trial actors, env runners,
their warnings and teardown messages) to `<study>/logs/worker-<pid>.log`; `verbose=True`
leaves them on the console. Each trial's folder holds its progress.csv and result.json (one
record per iteration, also after a restart: `experiments.study.trial_logs`) and TensorBoard events.

Where the study lives: `output` is a local folder (on a cluster, one every node sees at the
same path, e.g. NFS: trials write their checkpoints where they run), or a filesystem URI that
pyarrow opens (`s3://bucket/prefix`, `gs://...`; `Study.storage`), which no node needs to
share: Tune keeps the experiment there (the driver uploads the trials' logs, each trial its
checkpoints; a restarted trial downloads its checkpoint), study.json is written there too, and
the driver keeps a local copy in `Study.directory` (results/<name>: study.json, logs/, and at
the end the trials' logs without checkpoints) for `memrl report`. `--resume` reads the URI.
"""

from __future__ import annotations

import contextlib
import json
import logging
import posixpath
import shutil
import sys
import time
from pathlib import Path

import ray
from ray import tune

from experiments.rllib import workers
from experiments.study.config import Study, Trial
from experiments.study.results import ENV_STEPS, STUDY_FILE, manifest
from experiments.rllib.settings import register_rllib_envs
from experiments.study.trial_logs import ProgressCSV, ResultJSON
from experiments.study.trials import TRIAL_KEY, StudyTrial, trial_spec

__all__ = ["train", "StudyError", "check_resources"]


class StudyError(RuntimeError):
    """The study cannot run as asked (folder exists without --resume, differs, does not fit
    the cluster, ...)."""


def param_space(specs: list[dict]) -> dict:
    """One complete spec per trial (experiments.study.trials.trial_spec), grid-searched."""
    return {TRIAL_KEY: tune.grid_search(specs)}


def trial_name(tune_trial) -> str:
    """Tune's trial -> our trial's name (its folder and its progress lines)."""
    return tune_trial.config[TRIAL_KEY]["name"]


class Progress(tune.Callback):
    """One compact line per trial result (at most every `every_s` per trial) and one per
    finished or failed trial."""

    def __init__(self, total: int, env_steps: int, every_s: float = 10.0, out=None):
        self.total, self.env_steps, self.every_s = total, env_steps, every_s
        self.out = out or sys.stdout              # the console, also while Tune's is a file
        self.start = time.monotonic()
        self.last: dict[str, float] = {}
        self.done = 0

    def __getstate__(self):             # Tune pickles its callbacks; a stream cannot be
        return {**self.__dict__, "out": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.out = self.out or sys.__stdout__

    def setup(self, **info):            # also runs on resume, after unpickling
        self.start, self.last, self.done = time.monotonic(), {}, 0

    def _line(self, text: str) -> None:
        print(f"[{(time.monotonic() - self.start) / 60:6.1f} min] {text}", file=self.out,
              flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        now = time.monotonic()
        if now - self.last.get(trial.trial_id, -1e9) >= self.every_s:
            self.last[trial.trial_id] = now
            self._line(_result_line(str(trial), result, self.env_steps))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        self._line(f"{_result_line(str(trial), trial.last_result or {}, self.env_steps)}  "
                   f"finished ({self.done} this run, {self.total} in the study)")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(f"{trial} FAILED: see {trial.local_path}/error.txt")


def _result_line(name: str, result: dict, env_steps: int) -> str:
    steps = int(result.get(ENV_STEPS, 0) or 0)
    ret = result.get("env_runners", {}).get("episode_return_mean")
    ret_text = "  n/a " if ret is None or ret != ret else f"{ret:+.3f}"
    return (f"{name:<40} iter {result.get('training_iteration', 0):4d}  "
            f"steps {steps:>9,}/{env_steps:,}  return {ret_text}")


def train(study: Study, trials: list[Trial], *, address: str | None = None,
          resume: bool = False, verbose: bool = False) -> int:
    """Run (or resume) `trials` of the study (`expand(study)`, less those finished elsewhere)
    with Ray Tune; 0 when every one finished."""
    specs = [trial_spec(study, trial) for trial in trials]
    directory = study.directory
    storage = _storage(study)
    new_folder = _check_folder(study, trials, resume, storage)
    logs = directory / "logs"
    try:
        _start_ray(study, address, logs, verbose)
        check_resources(specs)
    except StudyError:
        if new_folder:                  # nothing half-written is left behind
            shutil.rmtree(directory, ignore_errors=True)
        raise
    study_json = json.dumps(manifest(study, trials), indent=1)
    (directory / STUDY_FILE).write_text(study_json)
    if storage is not None:
        filesystem, path = storage
        with filesystem.open_output_stream(f"{path}/{STUDY_FILE}") as file:
            file.write(study_json.encode())
    register_rllib_envs()
    where = directory if storage is None else f"{study.storage} (a copy in {directory})"
    print(f"memrl train: {study.name}: {len(trials)} trial(s) -> {where}", flush=True)
    if not verbose:
        print(f"memrl train: Ray's own logs go to {logs}/ (--verbose shows them here)",
              flush=True)

    filesystem, experiment = storage or (None, str(directory))
    restoring = resume and tune.Tuner.can_restore(experiment, storage_filesystem=filesystem)
    if restoring:
        print("memrl train: resuming; finished trials are kept", flush=True)
        tuner = tune.Tuner.restore(experiment, trainable=StudyTrial, resume_unfinished=True,
                                   resume_errored=True, storage_filesystem=filesystem)
    else:
        if resume:
            print(f"memrl train: nothing to resume in {directory}; starting", flush=True)
        tuner = tune.Tuner(
            StudyTrial,
            param_space=param_space(specs),
            tune_config=tune.TuneConfig(
                max_concurrent_trials=study.resources.max_concurrent_trials or None,
                trial_name_creator=trial_name, trial_dirname_creator=trial_name),
            run_config=tune.RunConfig(
                name=study.name,
                storage_path=posixpath.dirname(experiment) if storage else str(directory.parent),
                storage_filesystem=filesystem,
                stop={ENV_STEPS: study.stop.env_steps},
                checkpoint_config=tune.CheckpointConfig(
                    checkpoint_frequency=study.checkpoint.frequency,
                    checkpoint_at_end=True,
                    num_to_keep=study.checkpoint.keep or None),
                failure_config=tune.FailureConfig(max_failures=study.max_failures),
                callbacks=[Progress(len(trials), study.stop.env_steps), ProgressCSV(),
                           ResultJSON(), *_loggers(study)],
                verbose=0))
    try:
        with _tune_output(logs / "driver.log", verbose):
            grid = tuner.fit()
    except Exception as error:  # noqa: BLE001 - Tune itself stopped: say so, keep the study
        logging.getLogger("ray").exception("Tune stopped")
        _copy_from_storage(storage, directory)
        print(f"memrl train: Ray Tune stopped: {type(error).__name__}: "
              f"{str(error).splitlines()[0]}\n(details in {logs / 'driver.log'}; finished "
              f"trials and checkpoints are kept: add --resume to continue)", file=sys.stderr)
        return 1
    _copy_from_storage(storage, directory)
    failed = [r for r in grid if r.error is not None]
    finished = sum(r.error is None and (r.metrics or {}).get(ENV_STEPS, 0) >= study.stop.env_steps
                   for r in grid)
    print(f"memrl train: {finished}/{len(trials)} trial(s) finished, {len(failed)} failed; "
          f"results in {where}", flush=True)
    for result in failed:
        print(f"  failed: {result.path}: {type(result.error).__name__}: {result.error}",
              file=sys.stderr)
    if finished + len(failed) < len(trials):
        print(f"memrl train: {len(trials) - finished - len(failed)} trial(s) not finished "
              f"(interrupted): add --resume to continue them", flush=True)
    print(f"next: memrl report {directory}\n"
          f"      tensorboard --logdir {directory}", flush=True)
    return 1 if failed or finished < len(trials) else 0


def _storage(study: Study):
    """(pyarrow filesystem, path) of the study's URI `output` (Study.storage); None for a
    local folder."""
    if study.storage is None:
        return None
    import pyarrow.fs
    try:
        return pyarrow.fs.FileSystem.from_uri(study.storage)
    except Exception as error:  # noqa: BLE001 - pyarrow's own (ArrowInvalid, OSError, ...)
        raise StudyError(f"output {study.output}: pyarrow cannot open it: "
                         f"{type(error).__name__}: {error}") from None


def _check_folder(study: Study, trials: list, resume: bool, storage=None) -> bool:
    """Refuse to overwrite a study, or to resume a different one, in the local folder or at
    the storage URI; True if the local study folder is new (then created, empty)."""
    directory = study.directory
    held = []                                       # (where, its study.json or None)
    if directory.exists() and any(directory.iterdir()):
        study_file = directory / STUDY_FILE
        held.append((directory, study_file.read_text() if study_file.exists() else None))
    if storage is not None:
        import pyarrow.fs
        filesystem, path = storage
        study_json = None
        try:
            found = filesystem.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
            if found and filesystem.get_file_info(f"{path}/{STUDY_FILE}").is_file:
                with filesystem.open_input_stream(f"{path}/{STUDY_FILE}") as file:
                    study_json = file.read().decode()
        except OSError as error:
            raise StudyError(f"output {study.output}: cannot read it: {error}") from None
        if found:
            held.append((study.storage, study_json))
    for where, study_json in held:
        if not resume:
            raise StudyError(f"{where} already holds a study: add --resume to continue it, "
                             f"or remove the folder (or change `name`) to start again")
        if study_json is not None and json.loads(study_json) != json.loads(
                json.dumps(manifest(study, trials))):
            raise StudyError(f"{where}/{STUDY_FILE} was written for a different study (config "
                             f"or --set values changed); resume with the original settings")
    if directory.exists() and any(directory.iterdir()):
        return False
    directory.mkdir(parents=True, exist_ok=True)
    return True


def _copy_from_storage(storage, directory: Path) -> None:
    """A URI study's files but its checkpoints (the trials' logs, Tune's experiment state)
    -> the local study folder, for `memrl report`; a failure is said, not raised."""
    if storage is None:
        return
    import pyarrow.fs
    filesystem, path = storage
    local = pyarrow.fs.LocalFileSystem()
    try:
        for info in filesystem.get_file_info(pyarrow.fs.FileSelector(path, recursive=True)):
            relative = info.path[len(path):].lstrip("/")
            if info.type != pyarrow.fs.FileType.File or relative == STUDY_FILE or any(
                    part.startswith("checkpoint_") for part in relative.split("/")):
                continue
            (directory / relative).parent.mkdir(parents=True, exist_ok=True)
            pyarrow.fs.copy_files(info.path, str(directory / relative),
                                  source_filesystem=filesystem, destination_filesystem=local)
    except OSError as error:
        print(f"memrl train: copying the results from {path} to {directory} failed: {error}",
              file=sys.stderr, flush=True)


def _quiet_driver(log_file: Path) -> None:
    """Ray's, Tune's and RLlib's driver-side logs and Python warnings -> log_file."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    names = [n for n in logging.root.manager.loggerDict if n == "ray" or n.startswith("ray.")]
    for name in ("ray", *names, "py.warnings"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        if name in ("ray", "py.warnings"):
            logger.addHandler(handler)
            logger.propagate = False
        else:                            # up to "ray" and its file
            logger.propagate = True
    logging.captureWarnings(True)


@contextlib.contextmanager
def _tune_output(log_file: Path, verbose: bool):
    """What Tune prints itself (its experiment banner, a TensorBoard path inside Ray's temp
    folder) -> log_file; memrl's lines (Progress) write to the console they were given."""
    if verbose:
        yield
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as log, contextlib.redirect_stdout(log):
        yield


def _start_ray(study: Study, address: str | None, logs: Path, verbose: bool) -> None:
    """ray.init (local, or attached at `address`) with every worker set up by
    workers.worker_setup: the study's `imports`, and its output to logs/ unless verbose (the
    driver's own logs too). A session the caller started is used as it is."""
    if ray.is_initialized():            # e.g. the caller's own session: used as it is
        return
    if not verbose:
        _quiet_driver(logs / "driver.log")
    runtime_env = workers.runtime_env(study.imports, study.base_dir, None if verbose else logs)
    try:
        if address:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=verbose)
        else:
            ray.init(include_dashboard=False, runtime_env=runtime_env, log_to_driver=verbose)
    except (ConnectionError, RuntimeError) as error:
        raise StudyError(f"cannot attach to the Ray cluster at {address}: {error}\n"
                         f"(`ray start --head` turns on token authentication: run with "
                         f"RAY_AUTH_MODE=token and the cluster's ~/.ray/auth_token)") from None
    if address:
        have = ray.cluster_resources()
        print(f"memrl train: attached to the Ray cluster at {address} ({have.get('CPU', 0):g} "
              f"CPUs, {have.get('GPU', 0):g} GPUs)", flush=True)


def check_resources(specs: list[dict]) -> None:
    """Every trial (its spec) must fit the cluster as it is (CPUs, GPUs); else StudyError
    saying what a trial needs, what the cluster has, and the --set overrides that would fit."""
    have = ray.cluster_resources()
    cpus, gpus = have.get("CPU", 0.0), have.get("GPU", 0.0)
    for spec in specs:
        request = StudyTrial.default_resource_request({TRIAL_KEY: spec}).required_resources
        need_cpus, need_gpus = request.get("CPU", 0.0), request.get("GPU", 0.0)
        if need_cpus <= cpus and need_gpus <= gpus:
            continue
        fixes = []
        if need_cpus > cpus:
            fixes.append(f"--set resources.num_env_runners={max(int(cpus) - 1, 0)}")
        if need_gpus > gpus:
            fixes.append(f"--set resources.num_gpus={gpus:g}")
        raise StudyError(f"trial {spec['name']} needs {need_cpus:g} CPU(s) and {need_gpus:g} "
                         f"GPU(s) but the Ray cluster has {cpus:g} CPU(s) and {gpus:g} GPU(s); "
                         f"it would wait forever. To fit: {' '.join(fixes)}")


def _loggers(study: Study) -> list:
    """Tune's own logger callbacks the study asks for (TensorBoard is Tune's default)."""
    if study.logging.wandb is None:
        return []
    from ray.air.integrations.wandb import WandbLoggerCallback
    wandb = study.logging.wandb
    return [WandbLoggerCallback(project=wandb.project, entity=wandb.entity,
                                group=wandb.group or study.name)]
