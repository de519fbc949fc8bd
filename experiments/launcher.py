"""`memrl train CONFIG`: run a study's grid (tasks x models x seeds) with Ray Tune + RLlib PPO.

    memrl train configs/quickstart.yaml                       # -> results/quickstart/
    memrl train configs/quickstart.yaml --set ppo.lr=1e-4 --set stop.env_steps=20000
    memrl train configs/quickstart.yaml --dry-run             # print the trials, run nothing
    memrl train configs/quickstart.yaml --resume              # continue an interrupted study
    memrl train configs/popgym_paper.yaml --address auto      # on a running Ray cluster

Layout of `<output>/<name>/`: `study.json` (the validated study and its trial list), Tune's
experiment state, and one folder per trial named `Trial.name` (`RepeatPreviousEasy-gru-s0`)
holding `progress.csv`, `result.json`, `params.pkl` and checkpoints. `memrl report` reads it.

Tune expands one PPO config dict (`ppo_config(...).to_dict()`) with grid searches over `env`,
`seed` and `_model_config` (the memory): exactly the product tasks x models x seeds.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

from ray import tune

from experiments.config import ConfigError, Study, Trial, expand, load

STUDY_FILE = "study.json"
# RLlib 2.60 new-stack result keys
ENV_STEPS = "num_env_steps_sampled_lifetime"
RETURN_MEAN = "env_runners/episode_return_mean"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="run the study in a YAML file with Ray Tune",
        description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="study file, e.g. configs/quickstart.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override a dotted key with a YAML value (ppo.lr=1e-4, "
                             "stop.env_steps=1000, models[0].kwargs.theta=8); repeatable")
    parser.add_argument("--address", default=None,
                        help="attach to a running Ray cluster (host:port or 'auto') instead "
                             "of starting a local one")
    parser.add_argument("--resume", action="store_true",
                        help="continue the study in <output>/<name>: finished trials are kept, "
                             "unfinished and errored ones resume from their last checkpoint")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the expanded trial list and exit")
    parser.set_defaults(func=run)


def run(args) -> int:
    try:
        study = load(args.config, args.overrides)
    except ConfigError as error:
        print(f"memrl train: {error}", file=sys.stderr)
        return 2
    trials = expand(study)
    if args.dry_run:
        print(describe(study, trials))
        return 0
    try:
        return train(study, address=args.address, resume=args.resume)
    except StudyError as error:
        print(f"memrl train: {error}", file=sys.stderr)
        return 2


class StudyError(RuntimeError):
    """The study folder does not fit the request (exists without --resume, differs...)."""


def describe(study: Study, trials: list[Trial]) -> str:
    """The trial list as `--dry-run` prints it."""
    res = study.resources
    sweep = f" x {len(trials) // (len(study.tasks) * len(study.models) * len(study.seeds))}" \
        f" sweep point(s)" if study.sweep else ""
    lines = [f"study {study.name!r}: {len(study.tasks)} task(s) x {len(study.models)} model(s) "
             f"x {len(study.seeds)} seed(s){sweep} = {len(trials)} trial(s), "
             f"{study.stop.env_steps} env steps each",
             f"output: {study.directory}",
             f"per trial: {res.num_env_runners} env runner(s) x {res.num_envs_per_env_runner} "
             f"env(s), {res.num_gpus:g} GPU(s); ppo overrides: {study.ppo or 'none'}"]
    width = max(len(t.name) for t in trials)
    for t in trials:
        kwargs = f" {t.model.kwargs}" if t.model.kwargs else ""
        stack = " (old API stack)" if t.model.stack == "old" else ""
        own = {k: v for k, v in t.ppo.items() if study.ppo.get(k) != v}
        ppo = f" ppo {own}" if own else ""
        lines.append(f"  {t.index:4d}  {t.name:<{width}}  {t.task}  {t.model.name}{kwargs}"
                     f"{stack}{ppo}  seed {t.seed}")
    return "\n".join(lines)


def manifest(study: Study, trials: list[Trial]) -> dict:
    """What `study.json` holds: the validated study and every trial's folder and settings."""
    return {"study": study.to_dict(),
            "trials": [{"index": t.index, "name": t.name, "task": t.task, "model": t.model.name,
                        "label": t.model.label, "variant": t.variant, "stack": t.model.stack,
                        "kwargs": t.model.kwargs, "sweep": t.sweep, "seed": t.seed}
                       for t in trials]}


def param_space(study: Study) -> dict:
    """One complete spec per trial (experiments.trials): Tune grid-searches the list."""
    from experiments.trials import TRIAL_KEY, trial_spec
    return {TRIAL_KEY: tune.grid_search([trial_spec(study, t) for t in expand(study)])}


def trial_name(tune_trial) -> str:
    """Tune's trial -> our trial's name (its folder and its progress lines)."""
    from experiments.trials import TRIAL_KEY
    return tune_trial.config[TRIAL_KEY]["name"]


class Progress(tune.Callback):
    """One compact line per trial result (at most every `every_s` per trial) and one per
    finished or failed trial."""

    def __init__(self, total: int, env_steps: int, every_s: float = 10.0):
        self.total, self.env_steps, self.every_s = total, env_steps, every_s
        self.start = time.monotonic()
        self.last: dict[str, float] = {}
        self.done = 0

    def setup(self, **info):            # also runs on resume, after unpickling
        self.start, self.last, self.done = time.monotonic(), {}, 0

    def _line(self, text: str) -> None:
        print(f"[{(time.monotonic() - self.start) / 60:6.1f} min] {text}", flush=True)

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


def train(study: Study, *, address: str | None = None, resume: bool = False) -> int:
    """Run (or resume) the study with Ray Tune; 0 when every trial finished."""
    import ray

    from experiments.training import register_rllib_envs
    from experiments.trials import StudyTrial

    trials = expand(study)
    directory = study.directory
    study_file = directory / STUDY_FILE
    wanted = manifest(study, trials)
    restoring = resume and tune.Tuner.can_restore(str(directory))
    if directory.exists() and any(directory.iterdir()):
        if not resume:
            raise StudyError(f"{directory} already holds a study: add --resume to continue it, "
                             f"or remove the folder (or change `name`) to start again")
        if study_file.exists() and json.loads(study_file.read_text()) != json.loads(
                json.dumps(wanted)):
            raise StudyError(f"{study_file} was written for a different study (config or "
                             f"--set values changed); resume with the original settings")
    directory.mkdir(parents=True, exist_ok=True)
    study_file.write_text(json.dumps(wanted, indent=1))

    if not ray.is_initialized():
        if address:
            try:
                ray.init(address=address)
            except (ConnectionError, RuntimeError) as error:
                raise StudyError(f"cannot attach to the Ray cluster at {address}: {error}\n"
                                 f"(`ray start --head` turns on token authentication: run with "
                                 f"RAY_AUTH_MODE=token and the cluster's ~/.ray/auth_token)"
                                 ) from None
        else:
            ray.init(include_dashboard=False)
    register_rllib_envs()
    print(f"memrl train: {study.name}: {len(trials)} trial(s) -> {directory}", flush=True)

    if restoring:
        print("memrl train: resuming; finished trials are kept", flush=True)
        tuner = tune.Tuner.restore(str(directory), trainable=StudyTrial,
                                   resume_unfinished=True, resume_errored=True)
    else:
        if resume:
            print(f"memrl train: nothing to resume in {directory}; starting", flush=True)
        tuner = tune.Tuner(
            StudyTrial,
            param_space=param_space(study),
            tune_config=tune.TuneConfig(
                max_concurrent_trials=study.resources.max_concurrent_trials or None,
                trial_name_creator=trial_name, trial_dirname_creator=trial_name),
            run_config=tune.RunConfig(
                name=study.name,
                storage_path=str(directory.parent),
                stop={ENV_STEPS: study.stop.env_steps},
                checkpoint_config=tune.CheckpointConfig(
                    checkpoint_frequency=study.checkpoint.frequency,
                    checkpoint_at_end=True,
                    num_to_keep=study.checkpoint.keep or None),
                failure_config=tune.FailureConfig(max_failures=study.max_failures),
                callbacks=[Progress(len(trials), study.stop.env_steps)],
                verbose=0))
    grid = tuner.fit()
    failed = [r for r in grid if r.error is not None]
    finished = len(grid) - len(failed)
    print(f"memrl train: {finished}/{len(trials)} trial(s) finished, {len(failed)} failed; "
          f"results in {directory}", flush=True)
    for result in failed:
        print(f"  failed: {result.path}: {type(result.error).__name__}: {result.error}",
              file=sys.stderr)
    print(f"next: memrl report {directory}", flush=True)
    return 1 if failed or finished < len(trials) else 0
