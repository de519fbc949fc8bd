"""The learner's rows at POPGym's protocol: RLlib's AddTimeDimToBatchAndZeroPad beside
experiments.rllib.learner_rows.EpisodeRows, in one process.

    .venv/bin/python benchmarks/learner_rows.py [--subjects min_gru,s4d] [--rounds 5] [--out FILE]

For each subject: one sample() of a protocol batch (RepeatPreviousEasy, POPGYM_PPO, a local env
runner of 16 envs: 65,536 steps in complete episodes); then the learner's connector pieces
called in order on a copy of those episodes, once with RLlib's piece and once with ours in the
rows' place, taking turns, --rounds times each. Kept: the least CPU time of the rows piece and
of the whole pipeline (the GAE value pass included) with each. 1 torch thread. Writes markdown
to benchmarks/results/learner_rows.md.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocol  # noqa: E402  (beside this script; puts the repository on sys.path)

RESULTS = Path(__file__).resolve().parent / "results" / "learner_rows.md"
clock = protocol.clock


def measure(subject: str, rounds: int) -> dict:
    from ray.rllib.connectors.common import AddTimeDimToBatchAndZeroPad

    from experiments.rllib.learner_rows import EpisodeRows
    from experiments.rllib.rllib_private import learner_connector, local_learner
    algo = protocol.build_config(subject, "RepeatPreviousEasy", 30).build_algo()
    try:
        sampled = algo.env_runner_group.local_env_runner.sample()
        learner = local_learner(algo)
        pieces = learner_connector(learner).connectors
        at = next(i for i, piece in enumerate(pieces) if type(piece) is EpisodeRows)
        rows_pieces = {"rllib": AddTimeDimToBatchAndZeroPad(as_learner_connector=True),
                       "ours": pieces[at]}
        best = {name: {"rows": float("inf"), "pipeline": float("inf")} for name in rows_pieces}
        for _ in range(rounds):
            for name, rows_piece in rows_pieces.items():
                episodes, batch, shared_data = copy.deepcopy(sampled), {}, {}
                times = {"rows": 0.0, "pipeline": 0.0}
                for i, piece in enumerate(pieces):
                    piece = rows_piece if i == at else piece
                    start = clock()
                    batch = piece(rl_module=learner.module, batch=batch, episodes=episodes,
                                  shared_data=shared_data, metrics=learner.metrics)
                    elapsed = clock() - start
                    times["pipeline"] += elapsed
                    times["rows"] += elapsed if i == at else 0.0
                for key, seconds in times.items():
                    best[name][key] = min(best[name][key], seconds)
        return {"episodes": len(sampled), "steps": sum(len(e) for e in sampled), **best}
    finally:
        algo.stop()


def render(command: str, started: str, load, results: dict) -> str:
    lines = ["# The learner's rows at POPGym's protocol: RLlib's piece and ours", "",
             f"- command: `{command}` ({started}, load average at the start "
             f"{', '.join(f'{v:.2f}' for v in load)})",
             "- one sample() of a protocol batch (RepeatPreviousEasy, 16 envs, complete "
             "episodes), the learner's connector pieces in order on a copy of its episodes; "
             "**CPU seconds**, the least of the rounds, 1 torch thread",
             "- rows: AddTimeDimToBatchAndZeroPad (RLlib) or learner_rows.EpisodeRows (ours) "
             "alone; pipeline: every piece of the learner connector, the GAE value pass "
             "included", "",
             "| subject | episodes | steps | rows: RLlib s | rows: ours s | RLlib / ours | "
             "pipeline with RLlib's s | pipeline with ours s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for subject, r in results.items():
        if "error" in r:
            lines.append(f"| {subject} | failed: {r['error']} |")
            continue
        rllib, ours = r["rllib"], r["ours"]
        lines.append(f"| {subject} | {r['episodes']} | {r['steps']} | {rllib['rows']:.3f} | "
                     f"{ours['rows']:.3f} | {rllib['rows'] / ours['rows']:.1f}x | "
                     f"{rllib['pipeline']:.2f} | {ours['pipeline']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", default="min_gru,s4d")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    import ray
    import torch
    torch.set_num_threads(1)
    command = " ".join([".venv/bin/python", "benchmarks/learner_rows.py", *sys.argv[1:]])
    started, load = datetime.datetime.now().isoformat(timespec="seconds"), os.getloadavg()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    results = {}
    for subject in protocol.split_subjects(args.subjects):
        try:
            results[subject] = measure(subject, args.rounds)
        except Exception as error:          # listed with its error, the others still run
            results[subject] = {"error": f"{type(error).__name__}: {error}".splitlines()[0]}
        print(subject, results[subject], flush=True)
        Path(args.out).write_text(render(command, started, load, results))
    ray.shutdown()


if __name__ == "__main__":
    main()
