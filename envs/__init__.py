"""POPGym tasks as the POPGym baselines see them, flattened to one float32 Box; T-Maze and
MiniGrid Memory the same way.

Every task is wrapped as popgym/baselines/ppo.py does,

    obs_t = (popgym obs_t, previous action a_{t-1}, first-step flag [t == 0])

(`PreviousAction` then `Antialias`; the previous action at t = 0 is the null action), and then
flattened with gymnasium's `FlattenObservation` (Discrete and MultiDiscrete parts one-hot) and
`DtypeObservation` into a float32 Box of size `flatdim`, so every model reads the same vector.
Action spaces are left as they are: Discrete, MultiDiscrete (Battleship, MineSweeper) or Box
(the pendulums).

    envs.list_envs("diagnostic")          -> ["popgym-AutoencodeEasy-v0", ...]
    envs.resolve(["game", "popgym-RepeatFirstEasy-v0"])  -> ordered unique ids
    env = envs.make_env("popgym-RepeatPreviousEasy-v0")
    envs.register_envs()                  # gymnasium.make(id) now builds the wrapped task

Every task also has an event-time variant, `popgym-<Name>-EventTime-v0` (group "event_time",
not part of "all"; envs.event_time.EventTime): each action is held for a random 1..max_gap
task steps (config key `max_gap`, default 4), rewards summed, and the elapsed time Δt is
appended as the last feature, [task obs, previous action, is_t0, Δt].

Besides POPGym's, with the same wrappers (not part of "all", which stays POPGym's suite):
- group "tmaze" (envs.tmaze): passive and active T-Maze (Ni et al. 2023) at corridor lengths
  10, 30, 100, 300, 1000: `tmaze-Passive-L30-v0`, `tmaze-Active-L30-v0`; any other L >= 1 is
  parsed (`tmaze-Passive-L55-v0`, short `TMazePassiveL55`), each with its event-time variant
  `tmaze-Passive-L55-EventTime-v0`. Chance level 0.5 (the cue forgotten, the walk right).
- group "minigrid" (envs.minigrid_memory, needs the `minigrid` extra): MiniGrid's Memory tasks
  `minigrid-MemoryS7-v0` ... S17 (short `MiniGridMemoryS7`), the 7x7 view one-hot.

This package never imports torch or ray; RLlib registration is experiments.training.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import warnings

import gymnasium
import numpy as np
import popgym.envs
from gymnasium.wrappers import DtypeObservation, FlattenObservation
from popgym.wrappers import Antialias, PreviousAction

from . import minigrid_memory, tmaze
from .event_time import EventTime

__all__ = ["GROUPS", "list_envs", "resolve", "resolve_one", "make_env", "register_envs",
           "task_ids", "EventTime", "is_event_time", "max_episode_length", "tmaze",
           "minigrid_memory"]

# group name -> popgym's {env class: {"id": ...}} over all three difficulties
_GROUP_TABLES = {
    "diagnostic": popgym.envs.ALL_DIAGNOSTIC,
    "control": popgym.envs.ALL_CONTROL,
    "noisy": popgym.envs.ALL_NOISY,
    "game": popgym.envs.ALL_GAME,
}
if popgym.envs.has_mazelib():           # popgym defines the labyrinths only with mazelib
    _GROUP_TABLES["navigation"] = popgym.envs.ALL_NAVIGATION

GROUPS: tuple[str, ...] = (*_GROUP_TABLES, "event_time", "tmaze", "minigrid", "all")

# id -> env class, grouped then easy/medium/hard as popgym lists them
_CLASSES: dict[str, type] = {info["id"]: cls for table in _GROUP_TABLES.values()
                             for cls, info in table.items()}
# event-time id "popgym-<Name>-EventTime-v0" -> the task's id "popgym-<Name>-v0"
_EVENT_TIME: dict[str, str] = {f"{i[:-len('-v0')]}-EventTime-v0": i for i in _CLASSES}
_ALL_IDS: tuple[str, ...] = (*_CLASSES, *_EVENT_TIME)
# the ids of the other families that are registered (T-Maze parses any other L)
_OTHER_IDS: tuple[str, ...] = (*tmaze.ladder_ids(), *tmaze.ladder_ids(event_time=True),
                               *minigrid_memory.ids())


def list_envs(group: str = "all") -> list[str]:
    """The ids of `group` (one of GROUPS). "all" is every POPGym task, every difficulty;
    "event_time" their event-time variants; "tmaze" both T-Mazes at every L of
    tmaze.LADDER; "minigrid" MiniGrid's Memory tasks."""
    if group == "all":
        return list(_CLASSES)
    if group == "event_time":
        return list(_EVENT_TIME)
    if group == "tmaze":
        return tmaze.ladder_ids()
    if group == "minigrid":
        return minigrid_memory.ids()
    if group not in _GROUP_TABLES:
        hint = "" if popgym.envs.has_mazelib() or group != "navigation" else \
            " (the navigation group needs mazelib: pip install 'memrl[navigation]')"
        raise ValueError(f"unknown env group {group!r}{hint}; groups: {', '.join(GROUPS)}")
    return [info["id"] for info in _GROUP_TABLES[group].values()]


def resolve(names: str | list[str]) -> list[str]:
    """Env ids and/or group names -> ordered unique ids.

    A name is a POPGym id ("popgym-RepeatPreviousEasy-v0" or its event-time variant
    "popgym-RepeatPreviousEasy-EventTime-v0"), its short form ("RepeatPreviousEasy",
    "RepeatPreviousEasy-EventTime"), a T-Maze id or short name at any L >= 1
    ("tmaze-Passive-L55-v0", "TMazeActiveL30-EventTime"), a MiniGrid Memory one
    ("minigrid-MemoryS7-v0", "MiniGridMemoryS7") or a group name.
    Unknown names raise ValueError with the closest ids; an L < 1 or a MiniGrid size that
    does not exist too, saying so.
    """
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"env names must be a string or a list of strings, got {names!r}")
    ids: list[str] = []
    for name in names:
        if name in GROUPS:
            found = list_envs(name)
        elif name in _ALL_IDS:
            found = [name]
        elif f"popgym-{name}-v0" in _ALL_IDS:
            found = [f"popgym-{name}-v0"]
        elif (canonical := _other_id(name)) is not None:
            found = [canonical]
        else:
            raise ValueError(_unknown_env_message(name))
        ids.extend(i for i in found if i not in ids)
    return ids


def resolve_one(name: str, what: str = "env") -> str:
    """The one env id `name` names (see resolve); a group or a non-string raises ValueError
    / TypeError saying `what` needs one id."""
    if not isinstance(name, str):
        raise TypeError(f"{what} must be one env id, got {name!r}")
    ids = resolve(name)
    if len(ids) != 1:
        raise ValueError(f"{what} must be one env id, got group {name!r} ({len(ids)} envs)")
    return ids[0]


def _other_id(name: str) -> str | None:
    """The canonical T-Maze or MiniGrid Memory id `name` names, None if it names neither;
    ValueError for an L < 1 or an unknown MiniGrid size."""
    if (maze := tmaze.parse(name)) is not None:
        return tmaze.env_id(*maze)
    if (size := minigrid_memory.parse(name)) is not None:
        return minigrid_memory.env_id(size)
    return None


def task_ids(*names: str) -> list[str]:
    """Every id register_envs registers: POPGym's and their event-time variants, T-Maze's
    ladder (and event-time variants), MiniGrid Memory; then the ids `names` resolve to (a
    T-Maze at another L), each once."""
    return list(dict.fromkeys([*_ALL_IDS, *_OTHER_IDS, *resolve(list(names))]))


def is_event_time(env_id: str) -> bool:
    """Whether `env_id` (an id or short form, see resolve) names an event-time variant."""
    ids = resolve(env_id)
    if len(ids) != 1:
        return False
    maze = tmaze.parse(ids[0])
    return ids[0] in _EVENT_TIME or (maze is not None and maze[2])


def max_episode_length(env_id: str) -> int | None:
    """The most steps an episode of `env_id` (an id or short form) takes, as its POPGym class
    states it (`max_episode_length`; Concentration's `episode_length`), or None where the
    class does not say (HigherLower: the deck's size). An event-time variant takes at most its
    task's steps (each of its steps holds one or more of the task's)."""
    task = resolve_one(env_id)
    if (maze := tmaze.parse(task)) is not None:
        return tmaze.episode_length(*maze[:2])
    if (size := minigrid_memory.parse(task)) is not None:
        return minigrid_memory.max_episode_length(size)
    env = _CLASSES[_EVENT_TIME.get(task, task)]()
    length = getattr(env, "max_episode_length", getattr(env, "episode_length", None))
    return int(length) if length is not None else None


def _unknown_env_message(name: str) -> str:
    known = (*_ALL_IDS, *_OTHER_IDS)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    if not close:   # compare short forms too: "RepeatPrevEasy" -> popgym-RepeatPreviousEasy-v0
        short = {i[len("popgym-"):-len("-v0")]: i for i in _ALL_IDS}
        close = [short[s] for s in difflib.get_close_matches(name, short, n=3, cutoff=0.5)]
    hint = f" Closest: {', '.join(close)}." if close else ""
    nav = "" if popgym.envs.has_mazelib() else " (navigation tasks need mazelib)"
    return (f"unknown env {name!r}.{hint} Groups: {', '.join(GROUPS)}{nav}; "
            f"see envs.list_envs(group) for their ids; T-Maze takes any L: "
            f"tmaze-Passive-L<L>-v0")


def _flatten_to_float32(env: gymnasium.Env) -> gymnasium.Env:
    """`env` with its (nested) observation flattened by gymnasium (Discrete and MultiDiscrete
    parts one-hot, Box entries as they are, Tuple/Dict parts concatenated) into a float32 Box."""
    with warnings.catch_warnings():     # float64 bounds cast to float32 on purpose
        warnings.filterwarnings("ignore", message=".*precision lowered by casting to float32")
        return DtypeObservation(FlattenObservation(env), np.float32)


def make_env(env_id: str, config: dict | None = None) -> gymnasium.Env:
    """The task `env_id` with previous action + first-step flag, obs a float32 Box;
    for an event-time id that env inside EventTime (Δt appended last).

    `config` holds keyword arguments of the POPGym env class (an RLlib EnvContext works), and
    for an event-time id also `max_gap` (default 4). T-Maze and MiniGrid Memory take no
    keywords besides `max_gap` (their id says L or S).
    """
    other = _other_id(env_id) if env_id not in _ALL_IDS else None
    if env_id not in _ALL_IDS and other is None:
        raise ValueError(_unknown_env_message(env_id))
    kwargs = dict(config or {})
    if other is not None:
        return _make_other(other, kwargs)
    if env_id in _EVENT_TIME:
        max_gap = kwargs.pop("max_gap", 4)
        return EventTime(make_env(_EVENT_TIME[env_id], kwargs), max_gap=max_gap)
    cls = _CLASSES[env_id]
    accepted = [k for k, p in inspect.signature(cls.__init__).parameters.items()
                if k != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    takes_any = any(p.kind == p.VAR_KEYWORD
                    for p in inspect.signature(cls.__init__).parameters.values())
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown and not takes_any:
        raise ValueError(f"{env_id} got unknown config key(s) {unknown}; "
                         f"valid keys: {accepted or 'none'}")
    return _flatten_to_float32(Antialias(PreviousAction(cls(**kwargs))))


def _make_other(env_id: str, kwargs: dict) -> gymnasium.Env:
    """A T-Maze or MiniGrid Memory id (canonical), wrapped as make_env's POPGym tasks."""
    maze = tmaze.parse(env_id)
    max_gap = kwargs.pop("max_gap", 4) if maze is not None and maze[2] else None
    if kwargs:
        valid = "max_gap" if maze is not None and maze[2] else "none"
        raise ValueError(f"{env_id} got unknown config key(s) {sorted(kwargs)}; valid keys: "
                         f"{valid} (the id sets the {'length L' if maze else 'size S'})")
    if maze is None:
        task = minigrid_memory.make(minigrid_memory.parse(env_id))
    else:
        task = tmaze.TMaze(*maze[:2])
    env = _flatten_to_float32(Antialias(PreviousAction(task)))
    return env if max_gap is None else EventTime(env, max_gap=max_gap)


def _gym_entry_point(env_id: str, **kwargs) -> gymnasium.Env:
    return make_env(env_id, kwargs)


def register_envs(*names: str) -> None:
    """Registers every id of task_ids(*names) (event-time ones too; a T-Maze at another L
    when `names` has it) with gymnasium as the wrapped task (overrides popgym's raw one)."""
    registry = gymnasium.envs.registration.registry
    for env_id in task_ids(*names):
        spec = registry.get(env_id)
        if spec is not None and getattr(spec.entry_point, "func", None) is _gym_entry_point:
            continue
        registry.pop(env_id, None)      # popgym's raw registration: replace without a warning
        gymnasium.register(id=env_id, entry_point=functools.partial(_gym_entry_point, env_id))
