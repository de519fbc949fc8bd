"""Per-episode recurrent rollout of a trained policy: `memrl rollout CHECKPOINT --env ID`.

    from experiments.rollout import rollout
    result = rollout("results/study/trial/checkpoint_000010", "popgym-RepeatPreviousEasy-v0",
                     episodes=10, greedy=True, seed=0)
    result["mean_return"], result["returns"], result["lengths"]

The policy runs one observation at a time, as RLlib's env runners run it: at an episode's first
step the memory state is the module's initial state, and within the episode

    dist_inputs_t, state_t = module.forward_inference({obs: o_t (1, 1, D), state_in: state_{t-1}})
    a_t = argmax / mode of the action distribution     (greedy; forward_exploration + a sample
                                                        from the distribution otherwise)

Box actions are mapped from the policy's [-1, 1] range to the action space's bounds, as RLlib
does with its default `normalize_actions=True`. Episode i's env is reset with seed `seed + i`
and sampled actions draw from a torch generator state forked from the caller's and seeded with
`seed`, so a rollout is reproducible and leaves the global RNG as it was.

A checkpoint is an RLlib algorithm checkpoint folder (`algo.save(path)`, a Tune
`checkpoint_*` folder) or the folder of one saved RLModule; only the module is restored (no env
runners, no Ray). Custom env-to-module connectors (e.g. observation filters) are not applied.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.utils.spaces.space_utils import unsquash_action

import envs

__all__ = ["rollout", "play_episode", "load_module", "add_parser"]

_MODULE_FILES = ("class_and_ctor_args.pkl", "module_state.pkl")


def load_module(checkpoint: str | Path, module_id: str = DEFAULT_MODULE_ID) -> RLModule:
    """The RLModule saved in `checkpoint` (algorithm checkpoint or RLModule folder)."""
    path = Path(checkpoint).resolve()        # RLlib reads it through pyarrow: absolute only
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {str(path)!r} is not a folder (expected an RLlib "
                                f"algorithm checkpoint, e.g. the folder given to algo.save())")
    candidates = [path / "learner_group" / "learner" / "rl_module" / module_id,   # algorithm
                  path / "rl_module" / module_id,                              # learner
                  path / module_id,                                            # MultiRLModule
                  path]                                                        # one RLModule
    for folder in candidates:
        if all((folder / name).is_file() for name in _MODULE_FILES):
            module = RLModule.from_checkpoint(str(folder))
            module.eval()
            return module
    raise FileNotFoundError(f"no RLModule {module_id!r} in {str(path)!r}: looked for "
                            f"{' and '.join(_MODULE_FILES)} in "
                            f"{', '.join(str(c.relative_to(path)) for c in candidates)}")


def _env_action(action: np.ndarray, space: gym.Space):
    """A policy action (numpy) -> the env's action (Box: unsquashed into bounds)."""
    if isinstance(space, gym.spaces.Discrete):
        return int(action)
    return unsquash_action(action, space)


@torch.no_grad()
def play_episode(module: RLModule, env: gym.Env, *, greedy: bool = True,
                 seed: int | None = None) -> dict:
    """One complete episode, state reset at its start and carried step by step.

    Returns observations (T, D), actions (T, ...) as the policy emitted them, the action
    distribution inputs (T, A), rewards (T,), the return and the length T.
    Sampled actions (greedy=False) use torch's global RNG; `rollout` forks and seeds it.
    """
    forward = module.forward_inference if greedy else module.forward_exploration
    dist_cls = (module.get_inference_action_dist_cls() if greedy
                else module.get_exploration_action_dist_cls())
    stateful = module.is_stateful()
    dtype = next(module.parameters()).dtype
    state = ({k: torch.as_tensor(v, dtype=dtype)[None] for k, v in
              module.get_initial_state().items()} if stateful else None)         # (1, ...) each

    obs, _ = env.reset(seed=seed)
    observations, actions, dist_inputs, rewards = [], [], [], []
    done = False
    while not done:
        obs_t = torch.as_tensor(np.asarray(obs), dtype=dtype)[None]             # (1, D)
        if stateful:
            out = forward({Columns.OBS: obs_t[:, None], Columns.STATE_IN: state})  # T axis
            state = out[Columns.STATE_OUT]
            inputs = out[Columns.ACTION_DIST_INPUTS][:, 0]                      # (1, A)
        else:
            inputs = forward({Columns.OBS: obs_t})[Columns.ACTION_DIST_INPUTS]  # (1, A)
        dist = dist_cls.from_logits(inputs)
        action = (dist.to_deterministic() if greedy else dist).sample()[0].numpy()
        observations.append(obs_t[0].numpy())
        obs, reward, terminated, truncated, _ = env.step(_env_action(action, env.action_space))
        actions.append(action)
        dist_inputs.append(inputs[0].numpy())
        rewards.append(float(reward))
        done = terminated or truncated
    return {"observations": np.stack(observations), "actions": np.stack(actions),
            "action_dist_inputs": np.stack(dist_inputs), "rewards": np.asarray(rewards),
            "return": float(np.sum(rewards)), "length": len(rewards)}


def rollout(module_or_checkpoint, env_id: str, *, episodes: int = 10, greedy: bool = True,
            seed: int = 0) -> dict:
    """Run `episodes` complete episodes of POPGym task `env_id` with a trained policy.

    module_or_checkpoint: an RLModule (e.g. algo.get_module()) or a checkpoint path.
    Returns {"env", "episodes", "greedy", "seed", "returns", "lengths", "mean_return",
    "std_return", "mean_length"}.
    """
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be a positive int, got {episodes!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    ids = envs.resolve(env_id)
    if len(ids) != 1:
        raise ValueError(f"rollout needs one env id, got {env_id!r} ({len(ids)} envs)")
    module = (module_or_checkpoint if isinstance(module_or_checkpoint, RLModule)
              else load_module(module_or_checkpoint))
    env = envs.make_env(ids[0])
    expected = getattr(module, "observation_space", None)
    if expected is not None and expected.shape != env.observation_space.shape:
        raise ValueError(f"the policy was trained on observations of shape {expected.shape} but "
                         f"{ids[0]} gives {env.observation_space.shape}: wrong --env?")
    was_training = module.training
    module.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            played = [play_episode(module, env, greedy=greedy, seed=seed + i)
                      for i in range(episodes)]
    finally:
        module.train(was_training)
        env.close()
    returns = [p["return"] for p in played]
    lengths = [p["length"] for p in played]
    return {"env": ids[0], "episodes": episodes, "greedy": greedy, "seed": seed,
            "returns": returns, "lengths": lengths,
            "mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)),
            "mean_length": float(np.mean(lengths))}


def format_table(result: dict) -> str:
    """Per-episode return and length, then their mean."""
    lines = [f"{result['env']}  ({'greedy' if result['greedy'] else 'sampled'} actions, "
             f"seed {result['seed']})",
             f"{'episode':>8} {'return':>12} {'length':>8}"]
    for i, (ret, length) in enumerate(zip(result["returns"], result["lengths"])):
        lines.append(f"{i:>8} {ret:>12.4f} {length:>8}")
    lines.append(f"{'mean':>8} {result['mean_return']:>12.4f} {result['mean_length']:>8.1f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI
def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "rollout", help="run a trained policy for N episodes and report returns",
        description="Load an RLlib checkpoint and run complete episodes of a POPGym task with "
                    "the memory state reset at each episode start and carried step by step.")
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="RLlib algorithm checkpoint folder (or one saved RLModule)")
    parser.add_argument("--env", required=True, metavar="ID",
                        help="POPGym env id, e.g. popgym-RepeatPreviousEasy-v0")
    parser.add_argument("--episodes", type=int, default=10, metavar="N",
                        help="number of episodes (default 10)")
    parser.add_argument("--sample", action="store_true",
                        help="sample actions from the policy instead of taking the greedy one")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="seed of the env resets (episode i: S + i) and of sampling")
    parser.add_argument("--json", metavar="OUT", help="also write the result as JSON to OUT")
    parser.set_defaults(func=_run)
    return parser


def _run(args) -> int:
    try:
        result = rollout(args.checkpoint, args.env, episodes=args.episodes,
                         greedy=not args.sample, seed=args.seed)
    except (ValueError, FileNotFoundError) as error:
        print(f"memrl rollout: error: {error}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**result, "checkpoint": str(args.checkpoint)}, indent=2))
    return 0
