"""Which episodes `env_runners/episode_return_mean` averages on each API stack.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/results/ceiling/metric_window.py

A tiny GRU (h = 8) on PositionOnlyCartPoleEasy, batch 256 (10-17 episodes an iteration), 12
iterations on each stack. Per iteration it prints the reported mean beside the mean of that
iteration's episodes and of the last 100 (new stack: the episodes the env runner returned;
old stack: its hist_stats). RLlib 2.60's new stack as shipped reported the iteration's mean
(its metrics clear at each reduce); the old stack the last 100 episodes' mean; ours
(experiments.rllib.batching) reports the last 100's as the old stack does.
"""

import sys
from pathlib import Path

import numpy as np
import ray
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from experiments.rllib.ppo import algorithm_config  # noqa: E402

torch.set_num_threads(1)
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
PPO = dict(train_batch_size_per_learner=256, minibatch_size=128, num_epochs=1, max_seq_len=16)
TINY = dict(pre_size=8, hidden_size=8, head_size=8)
for stack in ("new", "old"):
    config = algorithm_config({"name": "gru", "kwargs": {}, "stack": stack},
                              "PositionOnlyCartPoleEasy", seed=0, ppo=PPO, sizes=TINY,
                              num_envs_per_env_runner=4)
    algo = config.build_algo()
    returns = []
    if stack == "new":
        sample = algo.env_runner.sample

        def recorded(**kwargs):
            episodes = sample(**kwargs)
            returns.extend(e.get_return() for e in episodes)
            return episodes

        algo.env_runner.sample = recorded
    for iteration in range(12):
        runners = algo.train()["env_runners"]
        reported, count = runners["episode_return_mean"], runners.get("num_episodes", 0)
        if stack == "old":
            returns = runners["hist_stats"]["episode_reward"]
            this = np.mean(returns[-count:]) if count else float("nan")
        else:
            this = np.mean(returns[-count:]) if count else float("nan")
        print(f"{stack} iteration {iteration + 1:2d}: reported {reported:.4f}  this iteration "
              f"({count} episodes) {this:.4f}  last 100 {np.mean(returns[-100:]):.4f}")
    algo.stop()
