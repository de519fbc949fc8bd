"""Independent trial seeds (experiments.rllib.seeding): no two trial seeds share an environment
stream, on either API stack and for any layout; the same seed gives the same streams."""

import itertools

import numpy as np
import pytest
import torch
from ray.rllib.algorithms.ppo.ppo_torch_policy import PPOTorchPolicy
from ray.rllib.evaluation.rollout_worker import RolloutWorker
from ray.tune.registry import ENV_CREATOR, _global_registry

from experiments.rllib import seeding
from experiments.rllib.batching import CompleteEpisodesEnvRunner
from experiments.rllib.old_stack import old_stack_ppo_config, register_old_stack_models
from experiments.rllib.ppo import ppo_config

ENV = "popgym-PositionOnlyCartPoleEasy-v0"         # random initial conditions
ENVS = 8
TINY = dict(train_batch_size_per_learner=64, minibatch_size=32, num_epochs=1, max_seq_len=8)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_env_seeds_of_different_trial_seeds_never_overlap():
    layouts = [(0, 1), (0, 8), (2, 8), (4, 16), (seeding.MAX_ENV_RUNNERS,
                                                seeding.MAX_ENVS_PER_ENV_RUNNER)]
    for runners, envs in layouts:
        streams = {}
        for seed in (0, 1, 2, seeding.MAX_SEED):
            base = seeding.rllib_seed(seed)
            seeds = [s for w in range(runners + 1) for s in seeding.env_seeds(base, w, envs)]
            assert len(set(seeds)) == len(seeds)                  # none twice within a trial
            assert all(0 <= s < 2**32 for s in seeds)              # numpy's range
            streams[seed] = set(seeds)
        for a, b in itertools.combinations(streams, 2):
            assert not streams[a] & streams[b], (runners, envs, a, b)


def test_evaluation_seeds_lie_outside_every_trial():
    highest = max(seeding.env_seeds(seeding.rllib_seed(seeding.MAX_SEED),
                                    seeding.MAX_ENV_RUNNERS, seeding.MAX_ENVS_PER_ENV_RUNNER))
    assert highest < seeding.EVAL_SEED < 2**32 - 10_000


@pytest.mark.parametrize("seed", [-1, seeding.MAX_SEED + 1, 1.0, True])
def test_seed_out_of_range_is_refused(seed):
    with pytest.raises(ValueError, match=rf"seed must be an int in \[0, {seeding.MAX_SEED}\]"):
        seeding.rllib_seed(seed)


def test_a_layout_beyond_the_stride_is_refused():
    with pytest.raises(ValueError, match="env runners"):
        ppo_config(env=ENV, memory="mlp", num_envs_per_env_runner=1001)


def new_stack_envs(seed: int, worker_index: int, runners: int):
    """(seeds, first observations) of env runner `worker_index`'s sub-envs (new stack)."""
    config = ppo_config(env=ENV, memory="mlp", seed=seed, num_env_runners=runners,
                        num_envs_per_env_runner=ENVS, **TINY)
    runner = CompleteEpisodesEnvRunner(config=config, worker_index=worker_index)
    try:
        episodes = runner.sample(num_timesteps=ENVS, random_actions=True)
        first = {e.id_: e.get_observations(0) for e in episodes if e.t_started == 0}
        seeds = [env.unwrapped.np_random_seed for env in runner.env.unwrapped.envs]
        return seeds, [tuple(np.round(o, 12)) for o in first.values()]
    finally:
        runner.stop()


def old_stack_envs(seed: int, worker_index: int, runners: int):
    """(seeds, first observations) of rollout worker `worker_index`'s sub-envs (old stack)."""
    config = old_stack_ppo_config(env=ENV, custom_model=register_old_stack_models()["mlp"],
                                  custom_model_config={}, seed=seed, num_env_runners=runners,
                                  num_envs_per_env_runner=ENVS, **TINY)
    worker = RolloutWorker(env_creator=_global_registry.get(ENV_CREATOR, ENV), config=config,
                           worker_index=worker_index, num_workers=runners,
                           default_policy_class=PPOTorchPolicy)
    try:
        envs = worker.async_env.vector_env.envs
        seeds = [env.unwrapped.np_random_seed for env in envs]
        first = [tuple(np.round(env.reset(seed=s)[0], 12)) for env, s in zip(envs, seeds)]
        return seeds, first
    finally:
        worker.stop()


@pytest.mark.parametrize("stack", [new_stack_envs, old_stack_envs], ids=["new", "old"])
@pytest.mark.parametrize("runners", [0, 2])
def test_two_trial_seeds_share_no_env_stream(stack, runners):
    """Trial seeds 0 and 1 (8 envs, 0 or 2 env runners): the seeds their sub-envs were reset
    with are disjoint (RLlib's own rule shared 7 of 8), are the rule's, and the first
    observations differ env by env."""
    workers = [0] if runners == 0 else list(range(1, runners + 1))
    seeds, first = {}, {}
    for trial_seed in (0, 1):
        got = [stack(trial_seed, w, runners) for w in workers]
        seeds[trial_seed] = [s for g in got for s in g[0]]
        first[trial_seed] = [o for g in got for o in g[1]]
        expected = [s for w in workers
                    for s in seeding.env_seeds(seeding.rllib_seed(trial_seed), w, ENVS)]
        assert seeds[trial_seed] == expected
    assert len(seeds[0]) == ENVS * len(workers)
    assert not set(seeds[0]) & set(seeds[1])
    assert len(set(first[0]) | set(first[1])) == len(first[0]) + len(first[1])


def test_same_trial_seed_same_streams_on_both_stacks():
    assert new_stack_envs(3, 1, 2) == new_stack_envs(3, 1, 2)
    assert new_stack_envs(3, 1, 2)[0] == old_stack_envs(3, 1, 2)[0]


def test_same_seed_same_first_iteration_returns(ray_session):
    def first_iteration(seed):
        algo = ppo_config(env=ENV, memory="mlp", seed=seed, num_envs_per_env_runner=4,
                          model_config=dict(pre_size=8, hidden_size=8, head_size=8),
                          **{**TINY, "train_batch_size_per_learner": 256}).build_algo()
        try:
            metrics = algo.train()["env_runners"]
            return metrics["episode_return_mean"], metrics["num_episodes"]
        finally:
            algo.stop()

    assert first_iteration(0) == first_iteration(0)
    assert first_iteration(0) != first_iteration(1)
