"""PPO (RLlib new API stack) with a MemoryRLModule on POPGym: every registered memory trains."""

import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns

import memory_models
import small_sizes
from experiments.rllib import seeding
from experiments import POPGYM_PPO, ppo_config, register_rllib_envs

ENV = "popgym-RepeatPreviousEasy-v0"                # 51 steps per episode
SIZES = dict(pre_size=16, hidden_size=16, head_size=16)
MAX_SEQ_LEN = 16                                        # learner rows cut the 51-step episodes
TINY_PPO = dict(train_batch_size_per_learner=128, minibatch_size=64, num_epochs=1)


def small_memory_kwargs(name):
    return small_sizes.small_memory_kwargs(name, memory_size=8, state_size=8, theta=8.0,
                                           seq_len=MAX_SEQ_LEN)


def tiny_config(memory, env=ENV, **ppo):
    return ppo_config(env=env, memory=memory, memory_kwargs=small_memory_kwargs(memory),
                      model_config=SIZES, **{**TINY_PPO, "max_seq_len": MAX_SEQ_LEN, **ppo})


def weights(algo):
    return {k: v.detach().clone() for k, v in algo.get_module().state_dict().items()}


@pytest.mark.parametrize("name", memory_models.available())
def test_ppo_trains_two_iterations_with_every_memory(ray_session, name):
    algo = tiny_config(name).build_algo()
    try:
        before = weights(algo)
        for _ in range(2):
            result = algo.train()
        learner = result["learners"]["default_policy"]
        assert np.isfinite(learner["total_loss"]) and np.isfinite(learner["vf_loss"])
        assert result["env_runners"]["num_episodes_lifetime"] >= 2
        after = weights(algo)
        changed = [k for k in before if not torch.equal(before[k], after[k])]
        assert any(k.startswith("memory.") for k in changed) or name == "mlp"
        assert any(k.startswith("actor.") for k in changed)
        assert any(k.startswith("critic.") for k in changed)
    finally:
        algo.stop()


@pytest.mark.parametrize("env", ["popgym-BattleshipEasy-v0", "popgym-PositionOnlyPendulumEasy-v0"])
def test_multidiscrete_and_box_action_tasks_train(ray_session, env):
    algo = tiny_config("gru", env=env).build_algo()
    try:
        result = algo.train()
        assert np.isfinite(result["learners"]["default_policy"]["total_loss"])
    finally:
        algo.stop()


def test_state_is_reset_at_episode_starts_and_carried_within_episodes(ray_session):
    """Env-runner outputs equal one scan of each whole episode from the initial state: the
    state is carried step to step, and an episode that follows another on the same vector
    env slot starts from the initial state again."""
    algo = tiny_config("gru", num_envs_per_env_runner=2).build_algo()
    try:
        runner = algo.env_runner
        episodes = runner.sample(num_episodes=5, explore=True)
        module = runner.module
        assert len(episodes) >= 5 and all(e.t_started == 0 for e in episodes)
        for episode in episodes:
            obs = torch.as_tensor(np.asarray(episode.get_observations())[:-1])[None]
            state = {k: torch.as_tensor(v)[None] for k, v in module.get_initial_state().items()}
            with torch.no_grad():
                out = module.forward_exploration({Columns.OBS: obs, Columns.STATE_IN: state})
            stored = np.asarray(episode.get_extra_model_outputs(Columns.ACTION_DIST_INPUTS))
            np.testing.assert_allclose(out[Columns.ACTION_DIST_INPUTS][0].numpy(), stored,
                                       atol=1e-4, rtol=1e-4)
            # episodes keep states only at learner row starts: tests/test_state_storage.py
    finally:
        algo.stop()


def test_same_seed_same_weights_before_and_after_an_iteration(ray_session):
    def run(seed):
        algo = tiny_config("gru", seed=seed).build_algo()
        try:
            initial = weights(algo)
            algo.train()
            return initial, weights(algo)
        finally:
            algo.stop()

    (init_a, trained_a), (init_b, trained_b) = run(0), run(0)
    assert all(torch.equal(init_a[k], init_b[k]) for k in init_a)
    assert all(torch.equal(trained_a[k], trained_b[k]) for k in trained_a)
    init_c, _ = run(1)
    assert not all(torch.equal(init_a[k], init_c[k]) for k in init_a)


ELAPSED_TIME = [n for n in memory_models.available() if memory_models.get(n).elapsed_time]


@pytest.mark.parametrize("name", ELAPSED_TIME)
def test_ppo_trains_elapsed_time_cells_on_an_event_time_task_with_timesteps_from_obs(
        ray_session, name):
    """On an EventTime task the module reads Δt (timesteps_from_obs on by itself); the env
    runner's observations carry gaps other than 1 and one PPO iteration trains each cell that
    integrates over elapsed time (event_ssm, ffm, lru)."""
    algo = tiny_config(name, env="RepeatPreviousEasy-EventTime").build_algo()
    try:
        module = algo.get_module()
        assert module.model_config["timesteps_from_obs"]
        result = algo.train()
        assert np.isfinite(result["learners"]["default_policy"]["total_loss"])
        episodes = algo.env_runner.sample(num_episodes=1, explore=True)
        gaps = np.asarray(episodes[0].get_observations())[:, -1]
        assert gaps[0] == 1 and set(gaps[1:]) <= {1, 2, 3, 4} and set(gaps) - {1}
    finally:
        algo.stop()


def test_event_time_tasks_default_timesteps_from_obs_and_explicit_values_win():
    def reads_timesteps(env, **model_config):
        config = ppo_config(env=env, memory="event_ssm", model_config=model_config)
        return config.rl_module_spec.model_config["timesteps_from_obs"]
    assert reads_timesteps("popgym-RepeatPreviousEasy-EventTime-v0")
    assert not reads_timesteps("popgym-RepeatPreviousEasy-EventTime-v0", timesteps_from_obs=False)
    assert not reads_timesteps(ENV)
    assert reads_timesteps(ENV, timesteps_from_obs=True)
    with pytest.raises(ValueError, match="one env id, got group 'event_time'"):
        ppo_config(env="event_time", memory="gru")


def test_ppo_config_follows_the_popgym_protocol_unless_overridden():
    config = ppo_config(env="RepeatPreviousEasy", memory="gru")
    assert config.enable_rl_module_and_learner and config.enable_env_runner_and_connector_v2
    assert config.env == ENV and config.batch_mode == "complete_episodes"
    assert (config.gamma, config.lr, config.lambda_, config.clip_param) == (0.99, 5e-5, 1.0, 0.3)
    assert (config.vf_loss_coeff, config.entropy_coeff, config.num_epochs) == (1.0, 0.0, 30)
    assert (config.train_batch_size_per_learner, config.minibatch_size) == (65536, 8192)
    assert config.rl_module_spec.model_config["max_seq_len"] == 1024
    assert config.num_env_runners == 0 and config.num_envs_per_env_runner == 1

    paper = ppo_config(env=ENV, memory="lstm", **POPGYM_PPO)
    assert (paper.num_env_runners, paper.num_envs_per_env_runner) == (4, 16)
    assert POPGYM_PPO["train_batch_size_per_learner"] == 1024 * 4 * 16

    custom = ppo_config(env=ENV, memory="gru", seed=3, lr=1e-3, max_seq_len=64, gamma=0.9)
    assert (custom.lr, custom.gamma, custom.seed) == (1e-3, 0.9, 3 * seeding.SEED_STRIDE)
    assert custom.rl_module_spec.model_config["max_seq_len"] == 64


def test_ppo_config_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"unknown PPO setting\(s\) \['learning_rate'\]"):
        ppo_config(env=ENV, memory="gru", learning_rate=1e-3)
    with pytest.raises(ValueError, match="one env id, got group 'game'"):
        ppo_config(env="game", memory="gru")
    with pytest.raises(ValueError, match="Closest: popgym-RepeatPreviousEasy-v0"):
        ppo_config(env="popgym-RepeatPrevEasy-v0", memory="gru")
    with pytest.raises(ValueError, match="unknown memory model 'gur'"):
        ppo_config(env=ENV, memory="gur")
    with pytest.raises(ValueError, match="pass 'memory' as ppo_config's own argument"):
        ppo_config(env=ENV, memory="gru", model_config={"memory": "lstm"})
    with pytest.raises(ValueError, match="pass 'max_seq_len' as ppo_config's own argument"):
        ppo_config(env=ENV, memory="gru", model_config={"max_seq_len": 16})   # was ignored
    with pytest.raises(ValueError, match="unknown model_config key 'hidden'"):
        ppo_config(env=ENV, memory="gru", model_config={"hidden": 8})


def test_register_rllib_envs_is_idempotent_and_builds_wrapped_envs():
    from ray.tune.registry import ENV_CREATOR, _global_registry

    register_rllib_envs()
    register_rllib_envs()
    env = _global_registry.get(ENV_CREATOR, "popgym-MineSweeperEasy-v0")({})
    assert env.observation_space.dtype == np.float32
    event = _global_registry.get(ENV_CREATOR, "popgym-MineSweeperEasy-EventTime-v0")({})
    assert event.observation_space.shape[0] == env.observation_space.shape[0] + 1
