"""envs.minigrid_memory: MiniGrid's Memory tasks, the 7x7 view one-hot, the usual wrappers."""

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs import minigrid_memory as mm

pytest.importorskip("minigrid")

LEFT, RIGHT, FORWARD = 0, 1, 2
IDS = [f"minigrid-MemoryS{s}-v0" for s in (7, 9, 11, 13, 17)]


def test_ids_group_and_names():
    assert envs.list_envs("minigrid") == IDS and "minigrid" in envs.GROUPS
    assert envs.resolve(["MiniGridMemoryS7", "minigrid-MemoryS13", "MiniGrid-MemoryS9-v0",
                         "minigrid"]) == [IDS[0], IDS[3], IDS[1], IDS[2], IDS[4]]
    assert [envs.max_episode_length(i) for i in IDS] == [5 * s * s for s in (7, 9, 11, 13, 17)]
    assert not envs.is_event_time(IDS[0])
    assert set(IDS) <= set(envs.task_ids())


@pytest.mark.parametrize("bad", ["minigrid-MemoryS8-v0", "MiniGridMemoryS15",
                                 "MiniGrid-MemoryS5-v0"])
def test_unknown_size_lists_the_sizes(bad):
    with pytest.raises(ValueError,
                       match=r"unknown MiniGrid Memory size \d+; sizes: 7, 9, 11, 13, 17"):
        envs.resolve(bad)
    with pytest.raises(ValueError, match="sizes: 7, 9, 11, 13, 17"):
        envs.make_env(bad)
    with pytest.raises(ValueError, match="sizes: 7, 9, 11, 13, 17"):
        mm.MiniGridMemory(8)
    with pytest.raises(ValueError, match=r"unknown config key.*\['size'\]"):
        envs.make_env(IDS[0], {"size": 9})


@pytest.mark.filterwarnings("ignore:.*different from the unwrapped version")
@pytest.mark.parametrize("env_id", IDS)
def test_gymnasium_env_checker_passes(env_id):
    env = envs.make_env(env_id)
    assert env.observation_space.dtype == np.float32
    assert env.observation_space.shape == (mm.OBS_SIZE + 7 + 2,)       # + previous action, t0
    check_env(env, skip_render_check=True)
    assert env.unwrapped.width == int(env_id.split("S")[-1].split("-")[0])


def test_observation_is_the_view_one_hot_then_direction_then_previous_action_and_flag():
    env = envs.make_env("minigrid-MemoryS9-v0")
    obs, _ = env.reset(seed=3)
    task = env.unwrapped
    for action in (None, LEFT, FORWARD):
        if action is not None:
            obs, *_ = env.step(action)
        image, direction = task.gen_obs()["image"], task.agent_dir
        cells = obs[:mm.VIEW * mm.VIEW * mm.CELL_SIZE].reshape(mm.VIEW * mm.VIEW, mm.CELL_SIZE)
        assert (cells.sum(1) == 3).all()                              # one of each part
        np.testing.assert_array_equal(cells[:, :11].argmax(1), image[:, :, 0].reshape(-1))
        np.testing.assert_array_equal(cells[:, 11:17].argmax(1), image[:, :, 1].reshape(-1))
        np.testing.assert_array_equal(cells[:, 17:20].argmax(1), image[:, :, 2].reshape(-1))
        heading = obs[mm.OBS_SIZE - 4:mm.OBS_SIZE]
        assert heading.tolist() == np.eye(4)[direction].tolist()
    previous, first = obs[mm.OBS_SIZE:mm.OBS_SIZE + 7], obs[-2:]
    assert previous.tolist() == np.eye(7)[FORWARD].tolist() and first.tolist() == [1, 0]
    obs, _ = env.reset(seed=3)
    assert obs[mm.OBS_SIZE:mm.OBS_SIZE + 7].tolist() == np.eye(7)[0].tolist()
    assert obs[-2:].tolist() == [0, 1]


def test_start_room_object_is_in_view_at_the_start():
    """The cue: the start room's object (key 5 or ball 6, green) is in the first view."""
    for seed in range(5):
        env = envs.make_env("minigrid-MemoryS7-v0")
        obs, _ = env.reset(seed=seed)
        objects = obs[:mm.VIEW * mm.VIEW * mm.CELL_SIZE].reshape(-1, mm.CELL_SIZE)[:, :11]
        seen = set(objects.argmax(1).tolist())
        assert {5, 6} & seen


def walk_to(env, target_row: int):
    """Right along the hallway to the split, then turn towards `target_row` and step there."""
    task, total, steps = env.unwrapped, 0.0, 0
    while True:
        x, y = task.agent_pos
        if task.grid.get(x + 1, y) is not None and task.grid.get(x + 1, y).type == "wall":
            break
        _, reward, terminated, truncated, _ = env.step(FORWARD)
        total, steps = total + reward, steps + 1
        assert not (terminated or truncated)
    _, reward, *_ = env.step(LEFT if target_row < task.agent_pos[1] else RIGHT)
    _, reward, terminated, truncated, _ = env.step(FORWARD)
    return total + reward, steps + 2, terminated


@pytest.mark.parametrize("size", [7, 13])
def test_matching_object_succeeds_and_the_other_fails(size):
    """Walking to the matching object returns MiniGrid's 1 - 0.9 steps / max_steps; to the
    other, 0; both end the episode."""
    for seed in range(3):
        env = envs.make_env(f"minigrid-MemoryS{size}-v0")
        env.reset(seed=seed)
        success = env.unwrapped.success_pos[1]
        total, steps, terminated = walk_to(env, success)
        assert terminated and total == pytest.approx(1 - 0.9 * steps / (5 * size ** 2))
        env.reset(seed=seed)
        total, steps, terminated = walk_to(env, env.unwrapped.failure_pos[1])
        assert terminated and total == 0.0


def test_episode_is_cut_at_max_steps():
    env = envs.make_env("minigrid-MemoryS7-v0")
    env.reset(seed=0)
    steps, done = 0, False
    while not done:
        _, _, terminated, truncated, _ = env.step(LEFT)             # turning in place forever
        steps, done = steps + 1, terminated or truncated
    assert truncated and not terminated and steps == envs.max_episode_length("MiniGridMemoryS7")
