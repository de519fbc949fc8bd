"""Per-episode recurrent rollout of a trained policy: `memrl rollout CHECKPOINT --env ID`.

    from experiments.rllib.rollout import rollout
    result = rollout("results/study/trial/checkpoint_000010", "popgym-RepeatPreviousEasy-v0",
                     episodes=10, greedy=True, seed=0)
    result["mean_return"], result["returns"], result["lengths"]

The episodes run together, one env each (`play_episodes`), and the policy sees one observation
per env at a time, as RLlib's env runners run it: at an episode's first step the memory state
is the module's initial state, and within the episode

    dist_inputs_t, state_t = module.forward_inference({obs: o_t (1, 1, D), state_in: state_{t-1}})
    a_t = argmax / mode of the action distribution     (greedy; forward_exploration + a sample
                                                        from the distribution otherwise)

Box actions are mapped from the policy's [-1, 1] range to the action space's bounds, as RLlib
does with its default `normalize_actions=True`. Episode i's env is reset with seed `seed + i`
and sampled actions draw from a torch generator state forked from the caller's and seeded with
`seed`, so a rollout is reproducible and leaves the global RNG as it was.

Studies evaluate their trials with the same code (`study eval:`, experiments.study.trials), for
new-stack modules (`ModuleActor`) and old-stack policies (`PolicyActor`) alike.

A checkpoint is an RLlib algorithm checkpoint folder (`algo.save(path)`, a Tune
`checkpoint_*` folder) or the folder of one saved RLModule; only the module is restored (no env
runners, no Ray). An old-stack checkpoint (our `memrl_<name>` models, POPGym's) restores its
Policy, also without Ray. Custom env-to-module connectors (e.g. observation filters) are not
applied.
"""

from __future__ import annotations

import argparse
import json
import pickle
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
from memory_models.checks import check_int

__all__ = ["rollout", "play_episodes", "play_episode", "ModuleActor", "PolicyActor",
           "load_policy", "load_module", "checkpoint_env", "checkpoint_folder", "add_parser"]

_MODULE_FILES = ("class_and_ctor_args.pkl", "module_state.pkl")
_POLICY_STATE = "policy_state.pkl"          # an old-stack Policy's checkpoint


def _old_stack_folder(checkpoint: str | Path, policy_id: str = DEFAULT_MODULE_ID) -> Path | None:
    """The folder of the old-stack Policy `policy_id` in `checkpoint` (an algorithm checkpoint
    or one Policy's folder), None if it holds none."""
    path = Path(checkpoint).resolve()
    for folder in (path / "policies" / policy_id, path):
        if (folder / _POLICY_STATE).is_file():
            return folder
    return None


def load_policy(checkpoint: str | Path, policy_id: str = DEFAULT_MODULE_ID):
    """What acts in `checkpoint`: the old-stack Policy where it holds one (our `memrl_<name>`
    models, POPGym's), else its RLModule (`load_module`)."""
    folder = _old_stack_folder(checkpoint, policy_id)
    if folder is None:
        return load_module(checkpoint, policy_id)
    from ray.rllib.policy.policy import Policy

    from experiments.rllib.old_stack import register_old_stack_models
    register_old_stack_models()                 # "memrl_<name>" names in the saved config
    return Policy.from_checkpoint(str(folder))


def load_module(checkpoint: str | Path, module_id: str = DEFAULT_MODULE_ID) -> RLModule:
    """The RLModule saved in `checkpoint` (algorithm checkpoint or RLModule folder)."""
    path = checkpoint_folder(checkpoint)     # RLlib reads it through pyarrow: absolute only
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


def checkpoint_folder(checkpoint: str | Path) -> Path:
    """The checkpoint's absolute path; FileNotFoundError if it does not exist or is a file."""
    path = Path(checkpoint).resolve()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {str(path)!r} is not a folder (expected an RLlib "
                                f"algorithm checkpoint, e.g. the folder given to algo.save())")
    return path


def checkpoint_env(checkpoint: str | Path) -> str:
    """The env id an RLlib algorithm checkpoint was trained on (its saved config's `env`; an
    old-stack one: its Policy's config)."""
    path = checkpoint_folder(checkpoint) / "class_and_ctor_args.pkl"
    folder = _old_stack_folder(checkpoint)
    config = None
    if folder is not None:
        with open(folder / _POLICY_STATE, "rb") as file:
            config = pickle.load(file)["policy_spec"]["config"]
    elif path.is_file():
        with open(path, "rb") as file:
            args, _ = pickle.load(file)["ctor_args_and_kwargs"]
        config = args[0] if args else None
    env = config.get("env") if isinstance(config, dict) else getattr(config, "env", None)
    if not isinstance(env, str):
        raise ValueError(f"cannot tell which env {str(checkpoint)!r} was trained on (not an "
                         f"algorithm checkpoint); pass --env ID")
    return env


def _env_action(action: np.ndarray, space: gym.Space):
    """A policy action (numpy) -> the env's action (Box: unsquashed into bounds)."""
    if isinstance(space, gym.spaces.Discrete):
        return int(action)
    return unsquash_action(action, space)


class ModuleActor:
    """A new-stack RLModule acting on a batch of envs, one step at a time.

    state: the memory's state, {key: (n, ...)} (None for a memoryless module)."""

    def __init__(self, module: RLModule, greedy: bool):
        self.module, self.greedy = module, greedy
        self.forward = module.forward_inference if greedy else module.forward_exploration
        self.dist_cls = (module.get_inference_action_dist_cls() if greedy
                         else module.get_exploration_action_dist_cls())
        self.dtype = next(module.parameters()).dtype

    def initial_state(self, n: int):
        if not self.module.is_stateful():
            return None
        return {k: torch.as_tensor(v, dtype=self.dtype)[None].repeat(n, *[1] * np.ndim(v))
                for k, v in self.module.get_initial_state().items()}

    @torch.no_grad()
    def act(self, obs: np.ndarray, state) -> tuple[np.ndarray, object, np.ndarray]:
        """obs (n, D) -> actions (n, ...), next state, action distribution inputs (n, A)."""
        obs_t = torch.as_tensor(obs, dtype=self.dtype)
        if state is not None:
            out = self.forward({Columns.OBS: obs_t[:, None], Columns.STATE_IN: state})
            state, inputs = out[Columns.STATE_OUT], out[Columns.ACTION_DIST_INPUTS][:, 0]
        else:
            inputs = self.forward({Columns.OBS: obs_t})[Columns.ACTION_DIST_INPUTS]
        dist = self.dist_cls.from_logits(inputs)
        actions = (dist.to_deterministic() if self.greedy else dist).sample()
        return actions.numpy(), state, inputs.numpy()

    @staticmethod
    def rows(state, keep: np.ndarray):
        return None if state is None else {k: v[keep] for k, v in state.items()}


class PolicyActor:
    """An old-stack Policy (our "memrl_<name>" models, POPGym's, RLlib's GTrXL) acting on a
    batch of envs.

    state: the policy's state list, [(n, ...)] numpy arrays ([] for a memoryless model)."""

    def __init__(self, policy, greedy: bool):
        self.policy, self.greedy = policy, greedy
        self.memory = _attention_memory(policy)

    def initial_state(self, n: int):
        if self.memory:              # RLlib's attention net: each unit's memory, zeros
            return [np.zeros((n, *shape), dtype=np.float32) for shape in self.memory]
        return [np.repeat(np.asarray(s)[None], n, axis=0) for s in self.policy.get_initial_state()]

    def act(self, obs: np.ndarray, state) -> tuple[np.ndarray, object, np.ndarray]:
        actions, state_out, info = self.policy.compute_actions(
            obs, state_batches=state or None, explore=not self.greedy)
        state = ([np.concatenate([m[:, 1:], np.asarray(o)[:, None]], 1)    # drop the oldest
                  for m, o in zip(state, state_out)] if self.memory else list(state_out))
        return np.asarray(actions), state, np.asarray(info.get("action_dist_inputs", []))

    @staticmethod
    def rows(state, keep: np.ndarray):
        return [s[keep] for s in state]


def _attention_memory(policy) -> list[tuple[int, int]]:
    """(τ, dim) of each unit's memory where `policy` runs RLlib's attention net (rllib:GTrXL;
    its state_in_i is the last τ state_out_i, its view requirement shift "-τ:-1", and its
    get_initial_state is empty), else []."""
    requirements = getattr(getattr(policy, "model", None), "view_requirements", {})
    memory = []
    for i in range(len(requirements)):
        requirement = requirements.get(f"state_in_{i}")
        if requirement is None or not isinstance(requirement.shift, str):
            break
        memory.append((-int(requirement.shift.split(":")[0]), requirement.space.shape[0]))
    return memory


def play_episodes(actor, envs_: list[gym.Env], seeds: list[int]) -> list[dict]:
    """One complete episode in each env, all stepped together; env i is reset with seeds[i],
    its memory state starts at the initial state and is carried step by step.

    Returns per env: observations (T, D), actions (T, ...) as the policy emitted them, the
    action distribution inputs (T, A), rewards (T,), the return and the length T. Sampled
    actions use torch's global RNG (`rollout` forks and seeds it).
    """
    n = len(envs_)
    obs = [env.reset(seed=seed)[0] for env, seed in zip(envs_, seeds)]
    record = [{"observations": [], "actions": [], "action_dist_inputs": [], "rewards": []}
              for _ in range(n)]
    running = np.arange(n)                                    # envs whose episode goes on
    state = actor.initial_state(n)
    while len(running):
        observations = np.stack([np.asarray(obs[i], dtype=np.float32) for i in running])
        actions, state, inputs = actor.act(observations, state)
        finished = np.zeros(len(running), dtype=bool)
        for row, i in enumerate(running):
            env = envs_[i]
            obs[i], reward, terminated, truncated, _ = env.step(
                _env_action(actions[row], env.action_space))
            for key, value in (("observations", observations[row]), ("actions", actions[row]),
                               ("action_dist_inputs", inputs[row] if len(inputs) else []),
                               ("rewards", float(reward))):
                record[i][key].append(value)
            finished[row] = terminated or truncated
        running, state = running[~finished], actor.rows(state, ~finished)
    return [{"observations": np.stack(r["observations"]), "actions": np.stack(r["actions"]),
             "action_dist_inputs": np.stack(r["action_dist_inputs"]),
             "rewards": np.asarray(r["rewards"]), "return": float(np.sum(r["rewards"])),
             "length": len(r["rewards"])} for r in record]


def play_episode(module: RLModule, env: gym.Env, *, greedy: bool = True,
                 seed: int | None = None) -> dict:
    """One complete episode of `module` in `env` (see play_episodes)."""
    return play_episodes(ModuleActor(module, greedy), [env], [seed])[0]


def rollout(module_or_checkpoint, env_id: str, *, episodes: int = 10, greedy: bool = True,
            seed: int = 0) -> dict:
    """Run `episodes` complete episodes of POPGym task `env_id` with a trained policy, all at
    once (episode i in its own env, reset with seed + i, with its own memory state).

    module_or_checkpoint: an RLModule (e.g. algo.get_module()), an old-stack Policy
    (algo.get_policy()) or a checkpoint path.
    Returns {"env", "episodes", "greedy", "seed", "returns", "lengths", "mean_return",
    "std_return", "mean_length"}.
    """
    check_int("episodes", episodes)
    check_int("seed", seed, minimum=0)
    env_id = envs.resolve_one(env_id, "rollout's env")
    policy = module_or_checkpoint
    if not isinstance(policy, RLModule) and not hasattr(policy, "compute_actions"):
        policy = load_policy(policy)
    envs_ = [envs.make_env(env_id) for _ in range(episodes)]
    expected = getattr(policy, "observation_space", None)
    if expected is not None and expected.shape != envs_[0].observation_space.shape:
        raise ValueError(f"the policy was trained on observations of shape {expected.shape} but "
                         f"{env_id} gives {envs_[0].observation_space.shape}: wrong --env?")
    if isinstance(policy, RLModule):
        was_training = policy.training
        policy.eval()
        actor = ModuleActor(policy, greedy)
    else:
        actor = PolicyActor(policy, greedy)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            played = play_episodes(actor, envs_, [seed + i for i in range(episodes)])
    finally:
        if isinstance(policy, RLModule):
            policy.train(was_training)
        for env in envs_:
            env.close()
    returns = [p["return"] for p in played]
    lengths = [p["length"] for p in played]
    return {"env": env_id, "episodes": episodes, "greedy": greedy, "seed": seed,
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
                        help="RLlib algorithm checkpoint folder, new or old API stack (or "
                             "one saved RLModule)")
    parser.add_argument("--env", metavar="ID",
                        help="POPGym env id, e.g. popgym-RepeatPreviousEasy-v0 (default: the "
                             "env the checkpoint was trained on)")
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
        env = args.env or checkpoint_env(args.checkpoint)
        result = rollout(args.checkpoint, env, episodes=args.episodes,
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
