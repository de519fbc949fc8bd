"""Per-iteration counts of one trial on either API stack: what the new stack does differently.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/results/ceiling/measure.py \
        --task RepeatPreviousEasy --models gru,gru:old,popgym:GRU --env-steps 20000 \
        --out benchmarks/results/ceiling/iterations_RepeatPreviousEasy.csv

Each model (a registry name, `name:old` for our network on the old stack, or `popgym:<Class>`)
trains at the reproduction's settings (configs/reproduce.yaml: lr 5e-4, batch 4096, minibatch
1024, 5 epochs, max_seq_len 128, h = 64, 8 envs on the local env runner) in this process, one
after the other, and every iteration writes one row:

    env_steps         env steps sampled this iteration (RLlib's counter)
    trained_steps     env steps of the batch the learner got (episodes returned)
    episodes          episodes finished this iteration
    updates           SGD minibatch updates this iteration
    kl_used           the KL the KL coefficient was updated with this iteration
    kl_first          the KL of the iteration's first minibatch update (0 when the sampling
                      policy is the learner's)
    kl_mean           the mean KL over the iteration's minibatches
    kl_coeff          the KL coefficient after the update
    entropy           the policy's entropy (mean over the iteration's minibatches)
    return_mean       env_runners/episode_return_mean (what MMER takes its max of)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

REPRODUCTION = {"lr": 5e-4, "train_batch_size_per_learner": 4096, "minibatch_size": 1024,
                "num_epochs": 5, "max_seq_len": 128}
SIZES = {"pre_size": 64, "hidden_size": 64, "head_size": 64}
COLUMNS = ("model", "task", "seed", "iteration", "env_steps_lifetime", "env_steps",
           "trained_steps", "episodes", "updates", "kl_used", "kl_first", "kl_mean", "kl_coeff", "entropy",
           "return_mean", "seconds")


def model_entry(spec: str, kwargs: dict) -> dict:
    if spec.startswith("popgym:"):
        return {"name": spec, "kwargs": {}, "stack": "old"}
    name, _, stack = spec.partition(":")
    return {"name": name, "kwargs": dict(kwargs), "stack": stack or "new"}


def _new_stack_recorder(algo) -> dict:
    """Records every minibatch's KL and entropy of the local learner (new stack) and the steps
    of the episodes the env runner hands the learner."""
    from experiments.rllib.rllib_private import local_learner

    learner = local_learner(algo)
    seen = {"kl": [], "entropy": [], "trained": 0}
    compute = learner.compute_loss_for_module
    sample = algo.env_runner.sample

    def sample_(**kwargs):
        episodes = sample(**kwargs)
        seen["trained"] += sum(len(e) for e in episodes)
        return episodes

    def compute_loss_for_module(*, module_id, config, batch, fwd_out):
        loss = compute(module_id=module_id, config=config, batch=batch, fwd_out=fwd_out)
        seen["kl"].append(float(learner.metrics.peek((module_id, "mean_kl_loss")).detach()))
        seen["entropy"].append(float(learner.metrics.peek((module_id, "entropy")).detach()))
        return loss

    algo.env_runner.sample = sample_
    learner.compute_loss_for_module = compute_loss_for_module
    return seen


def _old_stack_recorder(algo) -> dict:
    """Records every minibatch's KL and entropy of the local policy (old stack)."""
    policy = algo.get_policy()
    seen = {"kl": [], "entropy": [], "kl_used": None}
    learn = policy.learn_on_loaded_batch

    def learn_on_loaded_batch(*args, **kwargs):
        out = learn(*args, **kwargs)
        stats = out.get("learner_stats", out)
        seen["kl"].append(float(stats["kl"]))
        seen["entropy"].append(float(stats["entropy"]))
        return out

    policy.learn_on_loaded_batch = learn_on_loaded_batch
    return seen


def run(spec: str, task: str, seed: int, env_steps: int, writer, kwargs: dict) -> None:
    import numpy as np

    from experiments.rllib.ppo import algorithm_config

    model = model_entry(spec, kwargs)
    config = algorithm_config(model, task, seed=seed, ppo=REPRODUCTION, sizes=SIZES,
                              num_env_runners=0, num_envs_per_env_runner=8)
    algo = config.build_algo()
    new = config.enable_rl_module_and_learner
    seen = _new_stack_recorder(algo) if new else _old_stack_recorder(algo)
    lifetime = iteration = 0
    while lifetime < env_steps:
        seen["kl"].clear(), seen["entropy"].clear()
        seen["trained"] = 0
        start = time.perf_counter()
        result = algo.train()
        iteration += 1
        runners = result["env_runners"]
        now = int(result["num_env_steps_sampled_lifetime"])
        if new:
            learner = result["learners"]["default_policy"]
            trained = seen["trained"]
            kl_used = float(learner["mean_kl_loss"])      # what the KL coefficient was updated with
            kl_coeff = float(learner["curr_kl_coeff"])
        else:
            stats = result["info"]["learner"]["default_policy"]["learner_stats"]
            trained = int(result["info"]["num_env_steps_trained"]) - \
                sum(r["trained_steps"] for r in run.rows if r["model"] == spec)
            kl_used = float(stats["kl"])                  # PPO's update_kl(kl)
            kl_coeff = float(algo.get_policy().kl_coeff)
        row = {"model": spec, "task": task, "seed": seed, "iteration": iteration,
               "env_steps_lifetime": now, "env_steps": now - lifetime,
               "trained_steps": trained, "episodes": int(runners.get("num_episodes", 0)),
               "updates": len(seen["kl"]), "kl_used": kl_used, "kl_first": seen["kl"][0],
               "kl_mean": float(np.mean(seen["kl"])), "kl_coeff": kl_coeff,
               "entropy": float(np.mean(seen["entropy"])),
               "return_mean": float(runners.get("episode_return_mean", float("nan"))),
               "seconds": round(time.perf_counter() - start, 1)}
        run.rows.append(row)
        writer.writerow(row)
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in row.items()), flush=True)
        lifetime = now
    algo.stop()


run.rows = []


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="RepeatPreviousEasy")
    parser.add_argument("--models", default="gru,gru:old,popgym:GRU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--env-steps", type=int, default=20000)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--kwargs", type=json.loads, default={},
                        help='our cells\' keywords (JSON), e.g. \'{"max_len": 128}\'')
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import ray
    import torch
    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a", newline="") as file:
        writer = csv.DictWriter(file, COLUMNS)
        if file.tell() == 0:
            writer.writeheader()
        for spec in args.models.split(","):
            run(spec, args.task, args.seed, args.env_steps, writer, args.kwargs)
            file.flush()


if __name__ == "__main__":
    main()
