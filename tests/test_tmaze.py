"""envs.tmaze: passive and active T-Maze (Ni et al. 2023) at small L, its ids, its wrappers."""

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.tmaze import TMaze

RIGHT, UP, LEFT, DOWN = 0, 1, 2, 3


def optimal_actions(variant, length, goal):
    """The paper's optimal walk: (left to the oracle, active) right to the junction, then
    turn to the goal row."""
    first = [LEFT, RIGHT] if variant == "Active" else []
    return first + [RIGHT] * length + [UP if goal == 1 else DOWN]


def play(env, actions, seed):
    obs, _ = env.reset(seed=seed)
    observations, rewards, ends = [obs], [], []
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        observations.append(obs)
        rewards.append(reward)
        ends.append((terminated, truncated))
    return np.array(observations), np.array(rewards), ends


@pytest.mark.parametrize("variant", ["Passive", "Active"])
@pytest.mark.parametrize("length", [1, 2, 5, 10])
def test_optimal_policy_returns_one_in_exactly_the_papers_episode_length(variant, length):
    """T = L + 1 (passive), L + 3 (active); the optimal walk is never penalised and succeeds."""
    env = TMaze(variant, length)
    expected_steps = length + 1 if variant == "Passive" else length + 3
    assert env.episode_length == expected_steps == env.max_episode_length
    assert envs.max_episode_length(f"tmaze-{variant}-L{length}-v0") == expected_steps
    for seed in range(6):
        env.reset(seed=seed)
        actions = optimal_actions(variant, length, env.goal)
        assert len(actions) == expected_steps
        _, rewards, ends = play(env, actions, seed)
        assert rewards.sum() == 1.0 and rewards[-1] == 1.0 and not rewards[:-1].any()
        assert ends == [(False, False)] * (expected_steps - 1) + [(True, False)]


@pytest.mark.parametrize("variant", ["Passive", "Active"])
def test_chance_level_is_one_half(variant):
    """A memoryless policy walks right and always turns up: return 1 when the goal is up, 0
    when down, each half the time: mean 0.5, the best without the cue."""
    env = TMaze(variant, 3)
    returns = []
    for seed in range(400):
        _, rewards, _ = play(env, optimal_actions(variant, 3, 1), seed)
        returns.append(rewards.sum())
        assert rewards.sum() == (1.0 if env.goal == 1 else 0.0)
    assert set(returns) == {0.0, 1.0}
    assert abs(np.mean(returns) - envs.tmaze.CHANCE_LEVEL) < 0.08


def goals_by_seed(variant, length, seeds=range(20)):
    env, found = TMaze(variant, length), {}
    for seed in seeds:
        env.reset(seed=seed)
        found.setdefault(env.goal, seed)
    assert set(found) == {-1, 1}
    return found


@pytest.mark.parametrize("variant, cue_step", [("Passive", 0), ("Active", 1)])
def test_the_cue_is_seen_once_at_the_oracle_and_nowhere_else(variant, cue_step):
    """Same actions, goal up vs down: the observations differ only where the cue is shown
    (reset for passive, after the first step left for active) and in the final row; going
    back to the oracle shows nothing the second time."""
    length = 4
    seeds = goals_by_seed(variant, length)
    actions = optimal_actions(variant, length, 1)
    up, _, _ = play(TMaze(variant, length), actions, seeds[1])
    down, _, _ = play(TMaze(variant, length), actions, seeds[-1])
    differ = np.flatnonzero((up != down).any(axis=1))
    assert differ.tolist() == [cue_step]
    assert up[cue_step].tolist() == [0.0, 1.0] and down[cue_step].tolist() == [0.0, -1.0]
    assert up[-1].tolist() == [1.0, 1.0]                        # at the goal above the junction
    # back to the oracle after leaving it: no cue the second time
    back = [LEFT] if variant == "Active" else []
    again, _, _ = play(TMaze(variant, length), back + [RIGHT, LEFT], seeds[1])
    assert again[-1].tolist() == [0.0, 0.0]


def test_active_hides_the_cue_unless_the_agent_walks_back_first():
    """Active starts one step right of the oracle: walking straight on never shows the cue
    (every observation before the junction is [0, 0]); passive shows it at reset."""
    length = 5
    seed = goals_by_seed("Active", length)[1]
    observations, rewards, _ = play(TMaze("Active", length), [RIGHT] * (length + 3), seed)
    assert not observations[:length].any()
    assert observations[length].tolist() == [1.0, 0.0]         # at the junction after L steps
    assert rewards.sum() == 0.0                                 # never turned: no success
    assert play(TMaze("Passive", length), [], seed)[0][0][1] != 0.0


@pytest.mark.parametrize("variant", ["Passive", "Active"])
@pytest.mark.parametrize("length", [1, 4])
def test_penalty_is_minus_one_over_l_per_lagging_step(variant, length):
    """An agent that stays where it starts lags from the first (passive) / third (active)
    step on (x < t - o): -1/L on each of the L lagging steps before the last, 0 at the end:
    return -1. Active's worst (to the oracle and staying there) lags from the second step:
    -(L + 1)/L, the lowest return."""
    env = TMaze(variant, length)
    _, rewards, _ = play(env, [UP] * env.episode_length, 0)
    lagging = np.full(length, -1.0 / length)
    expected = lagging if variant == "Passive" else np.concatenate([[0.0, 0.0], lagging])
    np.testing.assert_allclose(rewards, np.append(expected, 0.0))
    assert rewards.sum() == pytest.approx(-1.0)
    _, rewards, _ = play(env, [LEFT] * env.episode_length, 0)
    offset = 0 if variant == "Passive" else 1
    assert rewards.sum() == pytest.approx(-(length + offset) / length)


def test_one_wasted_step_penalises_every_later_step_and_misses_the_goal():
    length = 3
    env = TMaze("Passive", length)
    seed = goals_by_seed("Passive", length)[1]
    _, rewards, _ = play(env, [UP] + [RIGHT] * length, seed)       # up in the corridor: no move
    np.testing.assert_allclose(rewards, [-1 / 3, -1 / 3, -1 / 3, 0.0])
    assert (env.x, env.y) == (length, 0)                           # at the junction, too late


def test_moves_off_the_maze_leave_the_agent_in_place():
    env = TMaze("Passive", 2)
    env.reset(seed=0)
    for action, where in [(LEFT, (0, 0)), (UP, (0, 0)), (DOWN, (0, 0)), (RIGHT, (1, 0)),
                          (UP, (1, 0)), (RIGHT, (2, 0)), (RIGHT, (2, 0)), (UP, (2, 1))]:
        env.step(action)
        assert (env.x, env.y) == where
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action must be 0..3"):
        env.step(4)


# ---------------------------------------------------------------- ids, wrappers, checker
def test_ladder_ids_group_and_parsed_lengths():
    ladder = [f"tmaze-{v}-L{n}-v0" for v in ("Passive", "Active") for n in (10, 30, 100, 300, 1000)]
    assert envs.list_envs("tmaze") == ladder and "tmaze" in envs.GROUPS
    assert not set(ladder) & set(envs.list_envs())               # "all" stays POPGym's
    assert envs.resolve(["TMazePassiveL55", "tmaze-Active-L7-EventTime-v0", "tmaze-Passive-L30",
                         "TMazeActiveL30-EventTime", "tmaze-Passive-L55-v0"]) == \
        ["tmaze-Passive-L55-v0", "tmaze-Active-L7-EventTime-v0", "tmaze-Passive-L30-v0",
         "tmaze-Active-L30-EventTime-v0"]
    assert envs.is_event_time("TMazeActiveL30-EventTime")
    assert not envs.is_event_time("tmaze-Active-L30-v0")
    assert envs.max_episode_length("tmaze-Active-L30-EventTime-v0") == 33
    assert "tmaze-Passive-L55-v0" in envs.task_ids("TMazePassiveL55")
    assert set(ladder) <= set(envs.task_ids())


def test_registered_with_gymnasium_for_the_ladder_and_a_parsed_length():
    envs.register_envs()
    env = gymnasium.make("tmaze-Passive-L10-v0")
    assert env.observation_space == envs.make_env("tmaze-Passive-L10-v0").observation_space
    env.close()
    envs.register_envs("tmaze-Active-L55-v0")
    env = gymnasium.make("tmaze-Active-L55-v0")
    assert env.unwrapped.corridor_length == 55 and env.unwrapped.variant == "Active"
    env.close()


@pytest.mark.parametrize("bad", ["tmaze-Passive-L0-v0", "TMazeActiveL0", "tmaze-Active-L-3-v0",
                                 "TMazePassiveL-1-EventTime"])
def test_l_below_one_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="corridor length L must be an integer >= 1"):
        envs.resolve(bad)
    with pytest.raises(ValueError, match="corridor length L must be an integer >= 1"):
        envs.make_env(bad)


def test_bad_construction_and_config_are_clear_errors():
    with pytest.raises(ValueError, match="L must be an integer >= 1, got 0"):
        TMaze("Passive", 0)
    with pytest.raises(ValueError, match="L must be an integer >= 1"):
        TMaze("Passive", 2.5)
    with pytest.raises(ValueError, match="variant must be one of"):
        TMaze("Both", 10)
    with pytest.raises(ValueError, match=r"unknown config key.*\['corridor_length'\].*none"):
        envs.make_env("tmaze-Passive-L10-v0", {"corridor_length": 5})
    with pytest.raises(ValueError, match="Closest: tmaze-Passive-L10-v0"):
        envs.resolve("tmaze-Pasive-L10-v0")


@pytest.mark.filterwarnings("ignore:.*different from the unwrapped version")
@pytest.mark.parametrize("env_id", ["tmaze-Passive-L10-v0", "tmaze-Active-L10-v0",
                                    "tmaze-Passive-L3-EventTime-v0", "tmaze-Active-L1000-v0"])
def test_gymnasium_env_checker_passes(env_id):
    env = envs.make_env(env_id)
    assert env.observation_space.dtype == np.float32 and len(env.observation_space.shape) == 1
    check_env(env, skip_render_check=True)


def test_observation_is_the_maze_then_previous_action_then_first_step_flag():
    """[at_end, signal | one-hot previous action (4; null action 0 at reset) | one-hot is_t0]
    as the POPGym tasks; the event-time variant appends Δt."""
    env = envs.make_env("tmaze-Passive-L4-v0")
    assert env.observation_space.shape == (8,)
    seed = goals_by_seed("Passive", 4)[-1]
    obs, _ = env.reset(seed=seed)
    assert obs.tolist() == [0, -1, 1, 0, 0, 0, 0, 1]               # cue down, null action, t0
    obs, *_ = env.step(RIGHT)
    assert obs.tolist() == [0, 0, 1, 0, 0, 0, 1, 0]
    obs, *_ = env.step(UP)
    assert obs.tolist() == [0, 0, 0, 1, 0, 0, 1, 0]
    event = envs.make_env("tmaze-Passive-L4-EventTime-v0", {"max_gap": 2})
    obs, _ = event.reset(seed=seed)
    assert obs.shape == (9,) and obs[-1] == 1.0 and obs[:-1].tolist() == [0, -1, 1, 0, 0, 0, 0, 1]


def test_event_time_variant_holds_the_action_and_sums_the_rewards():
    """Holding LEFT in passive T-Maze: every task step but the last lags (-1/L each); the
    event-time episode returns the task's -1 over fewer agent steps."""
    event = envs.make_env("tmaze-Passive-L6-EventTime-v0", {"max_gap": 3})
    event.reset(seed=1)
    total, steps, done = 0.0, 0, False
    while not done:
        obs, reward, terminated, truncated, _ = event.step(LEFT)
        total, steps, done = total + reward, steps + int(obs[-1]), terminated or truncated
    assert steps == 7 and total == pytest.approx(-1.0)


def test_a_study_names_t_maze_tasks_by_id_short_name_and_group():
    from experiments.study import config
    study = config.validate({"name": "t", "tasks": ["TMazePassiveL55", "tmaze"],
                             "models": ["gru"], "seeds": [0], "stop": {"env_steps": 100}},
                            models=False)
    assert study.tasks == ["tmaze-Passive-L55-v0", *envs.list_envs("tmaze")]
