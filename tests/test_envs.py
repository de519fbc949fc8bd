"""envs: every POPGym task registered, wrapped (previous action + first-step flag), flat float32."""

import gymnasium
import numpy as np
import popgym.envs
import pytest
from gymnasium.utils.env_checker import check_env

import envs

ALL = envs.list_envs()
EVENT_TIME = envs.list_envs("event_time")


def test_every_popgym_task_of_every_difficulty_is_listed():
    expected = {info["id"] for info in popgym.envs.ALL.values()}
    assert set(ALL) == expected and len(ALL) == len(expected)
    assert set(envs.GROUPS) >= {"diagnostic", "control", "noisy", "game", "all"}
    assert ("navigation" in envs.GROUPS) == popgym.envs.has_mazelib()
    grouped = [i for g in envs.GROUPS if g not in ("all", "event_time", "tmaze", "minigrid")
               for i in envs.list_envs(g)]
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
@pytest.mark.parametrize("env_id", ALL + EVENT_TIME)
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


# ---------------------------------------------------------------- event-time variants
EVENT_ID = "popgym-RepeatPreviousEasy-EventTime-v0"


def test_event_time_group_ids_short_names_and_is_event_time():
    assert EVENT_TIME == [f"{i[:-3]}-EventTime-v0" for i in ALL]
    assert not set(EVENT_TIME) & set(ALL)                       # not part of "all"
    assert envs.resolve(["RepeatPreviousEasy-EventTime", EVENT_ID, "RepeatPreviousEasy"]) == \
        [EVENT_ID, "popgym-RepeatPreviousEasy-v0"]
    assert envs.resolve("event_time") == EVENT_TIME
    assert envs.is_event_time(EVENT_ID) and envs.is_event_time("RepeatPreviousEasy-EventTime")
    assert not envs.is_event_time("popgym-RepeatPreviousEasy-v0")
    with pytest.raises(ValueError, match="Closest: popgym-RepeatPreviousEasy-EventTime-v0"):
        envs.resolve("RepeatPrevEasy-EventTime")
    with pytest.raises(ValueError, match="max_gap must be a positive int"):
        envs.make_env(EVENT_ID, {"max_gap": 0})


def test_event_time_obs_is_the_task_layout_plus_delta_t_last():
    plain, event = envs.make_env("popgym-RepeatPreviousEasy-v0"), envs.make_env(EVENT_ID)
    low, high = event.observation_space.low, event.observation_space.high
    np.testing.assert_array_equal(low[:-1], plain.observation_space.low)
    np.testing.assert_array_equal(high[:-1], plain.observation_space.high)
    assert (low[-1], high[-1]) == (0.0, 4.0)
    obs, _ = event.reset(seed=3)
    assert obs[-1] == 1.0 and obs[-3:-1].tolist() == [0.0, 1.0]     # Δt = 1, then is_t0
    obs, *_ = event.step(1)
    assert obs[-3:-1].tolist() == [1.0, 0.0] and obs in event.observation_space


@pytest.mark.parametrize("max_gap", [1, 3])
def test_event_time_holds_the_action_for_the_gap_and_sums_the_rewards(max_gap):
    """Replaying each action Δt times on the plain task (same seed) gives the same last
    observation and the summed rewards; gaps are 1..max_gap and all of them occur."""
    event = envs.make_env(EVENT_ID, {"max_gap": max_gap})
    plain = envs.make_env("popgym-RepeatPreviousEasy-v0")
    obs, _ = event.reset(seed=5)
    plain_obs, _ = plain.reset(seed=5)
    np.testing.assert_array_equal(obs[:-1], plain_obs)
    rng = np.random.default_rng(0)
    gaps, event_return, plain_return, done = [], 0.0, 0.0, False
    while not done:
        action = int(rng.integers(event.action_space.n))
        obs, reward, terminated, truncated, _ = event.step(action)
        gap = int(obs[-1])
        gaps.append(gap)
        rewards = []
        for _ in range(gap):
            plain_obs, plain_reward, *plain_done, _ = plain.step(action)
            rewards.append(plain_reward)
        assert reward == pytest.approx(sum(rewards))
        np.testing.assert_array_equal(obs[:-1], plain_obs)
        assert [terminated, truncated] == plain_done
        event_return, plain_return = event_return + reward, plain_return + sum(rewards)
        done = terminated or truncated
    assert set(gaps[:-1]) == set(range(1, max_gap + 1))       # the last gap may be cut short
    assert 1 <= gaps[-1] <= max_gap and -1.0 <= event_return <= 1.0
    assert event_return == pytest.approx(plain_return)
    assert sum(gaps) == 51 and len(gaps) < 51 or max_gap == 1   # the whole task, fewer steps


def test_event_time_gaps_are_reproducible_from_the_reset_seed():
    def gaps(seed):
        env = envs.make_env(EVENT_ID)
        env.reset(seed=seed)
        return [int(env.step(0)[0][-1]) for _ in range(10)]
    assert gaps(7) == gaps(7) and gaps(7) != gaps(8)
    env = envs.make_env(EVENT_ID)                   # reseeding the same env repeats them too
    env.reset(seed=7)
    env.step(0)
    env.reset(seed=7)
    assert [int(env.step(0)[0][-1]) for _ in range(10)] == gaps(7)


class FixedGaps:
    """Stands in for EventTime.gap_rng: draws the given gaps in order."""

    def __init__(self, gaps):
        self.gaps = list(gaps)

    def integers(self, low, high):
        gap = self.gaps.pop(0)
        assert low <= gap < high
        return gap


def test_event_time_stops_the_gap_when_the_episode_ends():
    """RepeatPreviousEasy lasts 51 task steps: gaps 40 then 30 end it 11 steps into the
    second gap, with Δt = 11, the rewards of those 11 steps, and the task never overstepped."""
    event = envs.make_env(EVENT_ID, {"max_gap": 50})
    plain = envs.make_env("popgym-RepeatPreviousEasy-v0")
    event.reset(seed=2)
    plain.reset(seed=2)
    event.gap_rng = FixedGaps([40, 30])
    plain_rewards = [plain.step(1)[1] for _ in range(51)]
    obs, reward, terminated, truncated, _ = event.step(1)
    assert obs[-1] == 40 and not (terminated or truncated)
    assert reward == pytest.approx(sum(plain_rewards[:40]))
    obs, reward, terminated, truncated, _ = event.step(1)
    assert obs[-1] == 11 and terminated and not truncated
    assert reward == pytest.approx(sum(plain_rewards[40:]))


@pytest.mark.parametrize("env_id", ALL)
def test_max_episode_length_bounds_an_episode(env_id):
    """A random-action episode takes at most the stated steps; the tasks of fixed length
    (every step is one card, one arm, one shot) take exactly that many."""
    length = envs.max_episode_length(env_id)
    if length is None:
        assert "HigherLower" in env_id
        return
    env = envs.make_env(env_id)
    env.action_space.seed(0)
    env.reset(seed=0)
    steps, done = 0, False
    while not done and steps <= length:
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        steps, done = steps + 1, terminated or truncated
    assert done and steps <= length
    if any(fixed in env_id for fixed in ("RepeatPrevious", "CountRecall", "Autoencode",
                                         "Concentration", "Bandit", "Battleship")):
        assert steps == length
    assert envs.max_episode_length(f"{env_id[:-len('-v0')]}-EventTime-v0") == length
