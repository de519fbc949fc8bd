"""The POPGym paper's protocol as plain values (no Ray or PyTorch import, so the study schema
and `memrl train --dry-run` can read them).

Sources: popgym/baselines/ppo.py, run on RLlib ~2.0's PPO. Set there: gamma, vf_loss_coeff,
bptt_cutoff = 1024 (max_seq_len and rollout fragment), 4 workers x 16 envs, train batch =
1024 * 4 * 16 = 65536, minibatch = 8 * 1024 = 8192, complete_episodes; h = 128 (pre-processing
and heads), h_memory = 256. Not set there, so the old PPOConfig defaults applied (and are RLlib
2.60's PPOConfig defaults still): lr 5e-5, num_sgd_iter (now num_epochs) 30, lambda 1.0,
clip_param 0.3, vf_clip_param 10.0, entropy_coeff 0.0, kl_coeff 0.2, kl_target 0.01, grad_clip
None.
"""

from __future__ import annotations

__all__ = ["POPGYM_PPO", "POPGYM_SIZES"]

POPGYM_PPO: dict = {
    "gamma": 0.99,
    "lr": 5e-5,
    "lambda_": 1.0,
    "vf_loss_coeff": 1.0,
    "entropy_coeff": 0.0,
    "clip_param": 0.3,
    "vf_clip_param": 10.0,
    "kl_coeff": 0.2,
    "kl_target": 0.01,
    "grad_clip": None,
    "num_epochs": 30,
    "train_batch_size_per_learner": 65536,
    "minibatch_size": 8192,
    "max_seq_len": 1024,
    "batch_mode": "complete_episodes",
    "num_env_runners": 4,
    "num_envs_per_env_runner": 16,
}

# The network's widths: observation pre-processing, the memory's output, actor/critic MLPs.
POPGYM_SIZES: dict = {"pre_size": 128, "hidden_size": 256, "head_size": 128}
