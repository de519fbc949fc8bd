"""One env runner's sampling beside its floor, RLlib's connector pieces against the batched ones.

    .venv/bin/python benchmarks/sampling.py [--subjects gru,lmu_fft,...] [--steps 8192]
                                            [--rounds 2] [--envs 16] [--sweep 8,16,32,64]
                                            [--out FILE]

For every subject, at POPGym's protocol (`POPGYM_PPO`) with a local env runner of --envs
envs on RepeatPreviousEasy, `sample()` calls of --steps env steps (complete episodes) by

    rllib     the env runner with RLlib's default connector pieces (BatchedEnvRunner with
              batched_connectors = False: what experiments.rllib.ppo built before them)
    batched   the env runner experiments.rllib.ppo builds (experiments.rllib.sampling)

both from the same weights in this process, each warmed up by a sample() of 64 vector steps,
then taking turns for --rounds calls each; the least CPU time per step of each is kept, with
where its time went: the vector env's `step` (env), the module's `forward_exploration`
(forward), each pipeline's pieces, and the rest (the sampling loop: episode bookkeeping,
callbacks, RLlib's metrics). Beside them the floors of benchmarks/protocol.py (the least of
--rounds measurements): env = the steps at the rate of the bare vector env stepped with random
actions, forward = the rollout forward (batch of --envs, T = 1, no grad) for those steps. A
POPGym model (popgym:GRU) samples on RLlib's old API stack (no pieces to swap, no warm-up): its
time is in the rllib row. Every time is per 65536 steps (a protocol batch).

--sweep 8,16,32,64 times the batched runner of the first subject with that many envs per
runner, beside the floors at each.

Times are CPU seconds of this process (time.process_time, 1 torch thread): the machine is
shared, so wall time would measure the other work too. Writes markdown to
benchmarks/results/sampling.md (--out to change).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocol  # noqa: E402  (beside this script; puts the repository on sys.path)

RESULTS = Path(__file__).resolve().parent / "results" / "sampling.md"
TASK = "RepeatPreviousEasy"
SUBJECTS = "gru,lmu_fft,s4d,event_ssm,ffm,min_gru,lru,popgym:GRU"
WARMUP_VECTOR_STEPS = 64
BATCH = 65536                  # times are per this many env steps (a protocol batch)
clock = protocol.clock


class Timers:
    """CPU seconds spent inside wrapped callables, by name."""

    def __init__(self):
        self.seconds: collections.Counter = collections.Counter()

    def timed(self, call, name: str):
        """`call`, its CPU seconds added to `name` at every call."""
        def timed_call(*args, **kwargs):
            start = clock()
            try:
                return call(*args, **kwargs)
            finally:
                self.seconds[name] += clock() - start
        return timed_call


class TimedPiece:
    """A connector piece in a pipeline, timed (the pipeline calls its pieces by name only)."""

    def __init__(self, piece, call):
        self.piece, self.call = piece, call

    def __call__(self, **kwargs):
        return self.call(**kwargs)


def instrument(runner, timers: Timers) -> None:
    """Time `runner`'s env step, module forward and each connector piece (new API stack)."""
    from experiments.rllib.rllib_private import env_runner_pipelines
    runner.env.step = timers.timed(runner.env.step, "env")
    runner.module.forward_exploration = timers.timed(runner.module.forward_exploration,
                                                     "forward")
    for side, pipeline in zip(("env-to-module", "module-to-env"), env_runner_pipelines(runner)):
        pipeline.connectors = [
            TimedPiece(piece, timers.timed(piece, f"{side}: {type(piece).__name__}"))
            for piece in pipeline.connectors]


def warm_up(runner) -> None:
    """A short sample() first (new API stack: the old stack's samples a whole batch)."""
    if hasattr(runner, "num_envs"):
        runner.sample(num_timesteps=WARMUP_VECTOR_STEPS * runner.num_envs)


def timed_sample(runner, timers: Timers | None) -> dict:
    """{"s": CPU seconds, "steps": env steps, "timers": {name: seconds}} of one
    `runner.sample()`."""
    if timers is not None:
        timers.seconds.clear()
    start = clock()
    episodes = runner.sample()
    seconds = clock() - start
    steps = sum(len(e) for e in episodes) if isinstance(episodes, list) else episodes.env_steps()
    return {"s": seconds, "steps": steps,
            "timers": dict(timers.seconds) if timers is not None else {}}


def rllib_pieces_runner(config):
    """The env runner of `config` with RLlib's default connector pieces."""
    from experiments.rllib.sampling import BatchedEnvRunner

    class RLlibPieces(BatchedEnvRunner):
        batched_connectors = False

    return RLlibPieces(config=config)


def measure(subject: str, envs: int, steps: int, rounds: int, both: bool = True) -> dict:
    """Sampling of `subject` (see the module docstring), every time per BATCH steps, the
    least of `rounds` (runs and floors; the runners take turns):
    {"rllib" / "batched": {"s", "steps", "parts": {timer: s}}, "env_floor_s",
    "forward_floor_s"}. New-stack runners are built from the config alone (no Ray)."""
    config = protocol.build_config(subject, TASK, epochs=1, envs=envs)
    new_stack = config.enable_rl_module_and_learner
    config.training(**{"train_batch_size_per_learner" if new_stack else "train_batch_size":
                       steps}, minibatch_size=min(steps, config.minibatch_size))
    if not new_stack:
        return measure_old_stack(config, envs, rounds)
    runners = {}
    try:
        if both:
            runners["rllib"] = rllib_pieces_runner(config)
        runners["batched"] = config.env_runner_cls(config=config)
        if both:
            runners["rllib"].module.set_state(runners["batched"].module.get_state())
        timers = {name: Timers() for name in runners}
        for name, runner in runners.items():
            instrument(runner, timers[name])
            warm_up(runner)
        runs = {name: [] for name in runners}
        for _ in range(rounds):
            for name, runner in runners.items():
                runs[name].append(timed_sample(runner, timers[name]))
        module = runners["batched"].module
        module.train()                  # as the learner's module that protocol.Network times
        forward_s = min(ModuleNetwork(module).rollout_step_s(envs) for _ in range(rounds))
        return {**{name: least(runs[name]) for name in runners},
                **floors(forward_s, envs, rounds)}
    finally:
        for runner in runners.values():
            runner.stop()


def measure_old_stack(config, envs: int, rounds: int) -> dict:
    """measure() of an old-API-stack subject: its algorithm's local env runner (Ray)."""
    import ray
    if not ray.is_initialized():
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    algo = config.build_algo()
    try:
        runner = algo.env_runner_group.local_env_runner
        runs = [timed_sample(runner, None) for _ in range(rounds)]
        network = protocol.Network(algo)
        forward_s = min(network.rollout_step_s(envs) for _ in range(rounds))
        return {"rllib": least(runs), **floors(forward_s, envs, rounds)}
    finally:
        algo.stop()


class ModuleNetwork(protocol.Network):
    """protocol.Network's rollout forward of a new-stack module, without an algorithm."""

    def __init__(self, module):
        import numpy as np
        import torch
        import tree
        self.torch, self.np, self.tree = torch, np, tree
        self.new_stack, self.module = True, module
        self.state = module.get_initial_state() if module.is_stateful() else None
        self.obs_size = module.observation_space.shape[0]


def floors(forward_step_s: float, envs: int, rounds: int) -> dict:
    """The env and forward floors of BATCH steps (the env's rate the best of `rounds`)."""
    return {"forward_floor_s": forward_step_s * BATCH / envs,
            "env_floor_s": BATCH / protocol.env_rate(TASK, envs, rounds)}


def least(runs: list[dict]) -> dict:
    """The run of least CPU time per step, scaled to BATCH steps."""
    return per_batch(min(runs, key=lambda run: run["s"] / run["steps"]))


def per_batch(run: dict) -> dict:
    """A timed run scaled to BATCH steps, its timers with the rest (sampling loop, episode
    bookkeeping, RLlib's metrics) added."""
    scale = BATCH / run["steps"]
    parts = {name: seconds * scale for name, seconds in run["timers"].items()}
    if parts:
        parts["rest"] = run["s"] * scale - sum(parts.values())
    return {"s": run["s"] * scale, "steps": run["steps"], "parts": parts}


def floor(result: dict) -> float:
    return result["env_floor_s"] + result["forward_floor_s"]


def grouped(parts: dict[str, float]) -> dict[str, float]:
    """Timers summed by group: env, forward, env-to-module, module-to-env, rest."""
    groups = collections.Counter()
    for name, seconds in parts.items():
        groups[name.split(":")[0]] += seconds
    return groups


GROUPS = ("env", "forward", "env-to-module", "module-to-env", "rest")


def sampling_table(results: dict) -> list[str]:
    lines = ["| subject | pieces | sampling s | " + " | ".join(f"{g} s" for g in GROUPS)
             + " | env floor s | forward floor s | sampling / floor |",
             "|---|---|" + "---:|" * (len(GROUPS) + 4)]
    for subject, result in results.items():
        if "error" in result:
            lines.append(f"| {subject} | failed: {result['error']} |" + " |" * (len(GROUPS) + 3))
            continue
        for pipeline in ("rllib", "batched"):
            run = result.get(pipeline)
            if run is None:
                continue
            groups = grouped(run["parts"])
            cells = [f"{groups[g]:.1f}" if run["parts"] else "-" for g in GROUPS]
            lines.append(f"| {subject} | {pipeline} | {run['s']:.1f} | {' | '.join(cells)} | "
                         f"{result['env_floor_s']:.1f} | {result['forward_floor_s']:.1f} | "
                         f"{run['s'] / floor(result):.2f}x |")
    return lines


def pieces_table(result: dict) -> list[str]:
    """Every timer of one subject's runs."""
    names = sorted({n for p in ("rllib", "batched") for n in result.get(p, {}).get("parts", {})},
                   key=lambda n: (GROUPS.index(n.split(":")[0]), n))
    lines = ["| timer | rllib s | batched s |", "|---|---:|---:|"]
    for name in names:
        cells = [f"{result[p]['parts'][name]:.2f}" if name in result.get(p, {}).get("parts", {})
                 else "-" for p in ("rllib", "batched")]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return lines


def sweep_table(sweep: dict) -> list[str]:
    lines = ["| envs per runner | sampling s | env floor s | forward floor s | "
             "sampling / floor | sampling vs 16 envs |", "|---:|---:|---:|---:|---:|---:|"]
    for envs, result in sweep.items():
        seconds = result["batched"]["s"]
        versus = f"{seconds / sweep[16]['batched']['s']:.2f}x" if 16 in sweep else "-"
        lines.append(f"| {envs} | {seconds:.1f} | {result['env_floor_s']:.1f} | "
                     f"{result['forward_floor_s']:.1f} | {seconds / floor(result):.2f}x | "
                     f"{versus} |")
    return lines


def render(command: str, started: str, load: tuple, args, results: dict,
           sweep: dict) -> str:
    import ray
    import torch
    subjects = list(results)
    lines = [
        "# Sampling beside its floor: RLlib's connector pieces and the batched ones", "",
        f"- command: `{command}` ({started}, load average (1, 5, 15 min) at the start "
        f"{', '.join(f'{x:.2f}' for x in load)}, at the end "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())})",
        f"- {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs shared with "
        f"other work; torch {torch.__version__} (1 thread), ray {ray.__version__}",
        f"- {TASK}, POPGym's protocol (pre 128 / memory 256 / heads 128, complete episodes), "
        f"a local env runner of {args.envs} envs; `sample()` calls of {args.steps} steps, "
        f"the least of {args.rounds} per runner (taking turns); **CPU seconds** per 65536 "
        "steps (a protocol batch)",
        "- rllib: RLlib's default connector pieces; batched: experiments.rllib.sampling's "
        "(what ppo_config builds). env = the vector env's step, forward = the module's "
        "forward_exploration, env-to-module / module-to-env = the pipelines' pieces, rest = "
        "the sampling loop (episode bookkeeping, callbacks, RLlib's metrics). Floors as in "
        "benchmarks/results/protocol.md (the least of the rounds): env = the steps at the bare "
        "vector env's rate (random actions), forward = the rollout forward (no grad) for them; "
        "popgym:GRU samples on the old API stack (no pieces to swap)", "",
        *sampling_table(results), ""]
    if subjects and "error" not in results[subjects[0]]:
        lines += [f"Where {subjects[0]}'s time goes, each piece:", "",
                  *pieces_table(results[subjects[0]]), ""]
    if sweep:
        lines += [f"{subjects[0]}, batched, by envs per env runner:", "",
                  *sweep_table(sweep), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", default=SUBJECTS)
    parser.add_argument("--steps", type=int, default=8192, help="env steps of a sample()")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--envs", type=int, default=protocol.ENVS)
    parser.add_argument("--sweep", default="", help="e.g. 8,16,32,64 (the first subject)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    import torch
    torch.set_num_threads(1)
    command = " ".join([".venv/bin/python", "benchmarks/sampling.py", *sys.argv[1:]])
    started, load = datetime.datetime.now().isoformat(timespec="seconds"), os.getloadavg()
    subjects = protocol.split_subjects(args.subjects)
    results, sweep = {}, {}

    def write() -> None:               # after every measurement: a cut-short run keeps them
        Path(args.out).write_text(render(command, started, load, args, results, sweep))

    for subject in subjects:
        try:
            results[subject] = measure(subject, args.envs, args.steps, args.rounds)
        except Exception as error:          # listed with its error, the others still run
            results[subject] = {"error": f"{type(error).__name__}: {error}".splitlines()[0]}
        print(subject, results[subject], flush=True)
        write()
    for envs in [int(n) for n in args.sweep.split(",") if n]:
        sweep[envs] = measure(subjects[0], envs, args.steps, args.rounds, both=False)
        print(envs, "envs", sweep[envs], flush=True)
        write()
    import ray
    ray.shutdown()
    print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
