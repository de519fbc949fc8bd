"""`memrl train CONFIG`: run a study's grid (tasks x models x seeds) with Ray Tune + RLlib PPO.

    memrl train configs/quickstart.yaml                       # -> results/quickstart/
    memrl train configs/quickstart.yaml --set ppo.lr=1e-4 --set stop.env_steps=20000
    memrl train configs/quickstart.yaml --dry-run             # print the trials, run nothing
    memrl train configs/quickstart.yaml --resume              # continue an interrupted study
    memrl train configs/lineup.yaml --skip-done benchmarks/results/lineup   # the next piece
    memrl train configs/popgym_paper.yaml --address auto      # on a running Ray cluster

Layout of `<output>/<name>/`: `study.json` (the validated study and its trial list), Tune's
experiment state, and one folder per trial named `Trial.name` (`RepeatPreviousEasy-gru-s0`)
holding `progress.csv`, `result.json`, `params.pkl` and checkpoints. `memrl report` reads it.

Ray Tune runs the trials (experiments.study.tuning), each with its own complete config
(experiments.study.trials). This module imports neither Ray nor PyTorch; `memrl train --dry-run`
imports PyTorch only to check the memory names and keywords, as a run does, and starts no Ray.
"""

from __future__ import annotations

import sys

from experiments.study.config import ConfigError, Study, Trial, expand, load
from experiments.study.results import settings_differences, trial_settings

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
    parser.add_argument("--skip-done", action="append", default=[], metavar="FOLDER",
                        help="leave out the trials that FOLDER (a report folder `memrl report` "
                             "wrote, or a study folder) holds as finished (stop.env_steps "
                             "reached): the next piece of a study whose earlier pieces ran on "
                             "another machine; `memrl report` joins the pieces; repeatable")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the file as a run does (schema, memory names and "
                             "keywords, POPGym models), print the expanded trial list and exit "
                             "without starting Ray")
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's own logs and warnings on the console (by default they "
                             "go to <output>/<name>/logs/)")
    parser.set_defaults(func=run)


def run(args) -> int:
    try:
        study = load(args.config, args.overrides)
        trials = expand(study)
    except ConfigError as error:
        print(f"memrl train: {error}", file=sys.stderr)
        return 2
    grid = len(trials)
    if args.skip_done:
        from experiments.report.sources import ReportError, finished_trials
        try:
            skip = finished_trials(args.skip_done, study.stop.env_steps)
        except ReportError as error:
            print(f"memrl train: --skip-done: {error}", file=sys.stderr)
            return 2
        for trial in trials:
            recorded = skip.get(trial.name)
            if recorded is not None and recorded != trial_settings(trial):
                changes = settings_differences(recorded, trial_settings(trial))
                print(f"memrl train: {trial.name} finished in {', '.join(args.skip_done)} with "
                      f"other settings ({changes}): it runs again", flush=True)
                del skip[trial.name]
        trials = [trial for trial in trials if trial.name not in skip]
        print(f"memrl train: {grid - len(trials)} trial(s) finished in "
              f"{', '.join(args.skip_done)} left out; {len(trials)} to run", flush=True)
        if not trials:
            return 0
    if args.dry_run:
        print(describe(study, trials, grid))
        return 0
    from experiments.study.tuning import StudyError, train
    try:
        return train(study, trials, address=args.address, resume=args.resume,
                     verbose=args.verbose)
    except StudyError as error:
        print(f"memrl train: {error}", file=sys.stderr)
        return 2


def describe(study: Study, trials: list[Trial], grid: int) -> str:
    """The trial list (`trials`, of `expand(study)`'s `grid` trials) as `--dry-run` prints it."""
    res = study.resources
    sweep = f" x {grid // (len(study.tasks) * len(study.models) * len(study.seeds))}" \
        f" sweep point(s)" if study.sweep else ""
    lines = [f"study {study.name!r}: {len(study.tasks)} task(s) x {len(study.models)} model(s) "
             f"x {len(study.seeds)} seed(s){sweep} = {grid} trial(s), "
             f"{study.stop.env_steps} env steps each",
             f"output: {study.directory}" if study.storage is None else
             f"output: {study.storage} (a local copy in {study.directory})",
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
