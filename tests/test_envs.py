"""envs: every POPGym task registered, wrapped (previous action + first-step flag), flat float32."""

import gymnasium
import numpy as np
import popgym.envs
import pytest
from gymnasium.utils.env_checker import check_env

import envs

ALL = envs.list_envs()


def test_every_popgym_task_of_every_difficulty_is_listed():
    expected = {info["id"] for info in popgym.envs.ALL.values()}
    assert set(ALL) == expected and len(ALL) == len(expected)
    assert set(envs.GROUPS) >= {"diagnostic", "control", "noisy", "game", "all"}
    assert ("navigation" in envs.GROUPS) == popgym.envs.has_mazelib()
    grouped = [i for g in envs.GROUPS if g != "all" for i in envs.list_envs(g)]
    assert sorted(grouped) == sorted(ALL)
    assert "popgym-RepeatPreviousEasy-v0" in envs.list_envs("diagnostic")
    assert "popgym-BattleshipHard-v0" in envs.list_envs("game")


def test_resolve_groups_ids_and_short_names_in_order_without_duplicates():
    ids = envs.resolve(["popgym-RepeatFirstEasy-v0", "diagnostic", "HigherLowerEasy"])
    assert ids[0] == "popgym-RepeatFirstEasy-v0"
    assert ids[1:1 + len(envs.list_envs("diagnostic")) - 1] == \
        [i for i in envs.list_envs("diagnostic") if i != ids[0]]
    assert ids[-1] == "popgym-HigherLowerEasy-v0" and len(ids) == len(set(ids))
    assert envs.resolve("popgym-MineSweeperEasy-v0") == ["popgym-MineSweeperEasy-v0"]


@pytest.mark.parametrize("bad", ["popgym-RepeatPrevEasy-v0", "RepeatPrevEasy"])
def test_unknown_env_names_the_closest_ids_and_the_groups(bad):
    with pytest.raises(ValueError, match=r"RepeatPrev.*Closest: popgym-RepeatPreviousEasy-v0"
                                         r".*Groups: diagnostic"):
        envs.resolve(bad)
    with pytest.raises(ValueError, match="popgym-RepeatPreviousEasy-v0"):
        envs.make_env(bad)


def test_unknown_group_and_bad_config_are_clear_errors():
    with pytest.raises(ValueError, match="groups: diagnostic"):
        envs.list_envs("diagnostics")
    with pytest.raises(ValueError, match=r"unknown config key.*\['nope'\]"):
        envs.make_env("popgym-RepeatPreviousEasy-v0", {"nope": 1})


@pytest.mark.filterwarnings("ignore:.*different from the unwrapped version")  # wrapped on purpose
@pytest.mark.parametrize("env_id", ALL)
def test_every_env_passes_gymnasium_env_checker_with_a_float32_box(env_id):
    env = envs.make_env(env_id)
    assert isinstance(env.observation_space, gymnasium.spaces.Box)
    assert env.observation_space.dtype == np.float32 and len(env.observation_space.shape) == 1
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs in env.observation_space


@pytest.mark.parametrize("env_id", ["popgym-RepeatPreviousEasy-v0", "popgym-BattleshipEasy-v0",
                                    "popgym-PositionOnlyPendulumEasy-v0"])
def test_observation_ends_with_previous_action_and_first_step_flag(env_id):
    """Layout: [popgym obs, previous action (one-hot for discrete parts), one-hot(is_t0)]."""
    env = envs.make_env(env_id)
    action_size = gymnasium.spaces.flatdim(env.action_space)
    obs, _ = env.reset(seed=1)
    assert obs[-2:].tolist() == [0.0, 1.0]                      # first step
    null = gymnasium.spaces.flatten(env.action_space,
                                    popgym.wrappers.PreviousAction.get_null_action(env.action_space))
    np.testing.assert_allclose(obs[-2 - action_size:-2], null)
    action = env.action_space.sample()
    obs, *_ = env.step(action)
    assert obs[-2:].tolist() == [1.0, 0.0]                      # not the first step
    np.testing.assert_allclose(obs[-2 - action_size:-2],
                               gymnasium.spaces.flatten(env.action_space, action), rtol=1e-6)


def test_register_envs_overrides_popgym_raw_registration_idempotently():
    envs.register_envs()
    envs.register_envs()
    env = gymnasium.make("popgym-RepeatPreviousEasy-v0")
    assert env.observation_space == envs.make_env("popgym-RepeatPreviousEasy-v0").observation_space
    assert env.observation_space.dtype == np.float32
    env.close()


def test_envs_imports_neither_torch_nor_ray():
    import subprocess
    import sys
    code = ("import sys, envs; envs.register_envs(); "
            "bad = [m for m in ('torch', 'ray') if m in sys.modules]; "
            "sys.exit(f'envs imported {bad}' if bad else 0)")
    subprocess.run([sys.executable, "-c", code], check=True)
