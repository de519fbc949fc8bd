"""POPGym tasks as the POPGym baselines see them, flattened to one float32 Box.

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

from .event_time import EventTime

__all__ = ["GROUPS", "list_envs", "resolve", "resolve_one", "make_env", "register_envs",
           "EventTime", "is_event_time", "max_episode_length"]

# group name -> popgym's {env class: {"id": ...}} over all three difficulties
_GROUP_TABLES = {
    "diagnostic": popgym.envs.ALL_DIAGNOSTIC,
    "control": popgym.envs.ALL_CONTROL,
    "noisy": popgym.envs.ALL_NOISY,
    "game": popgym.envs.ALL_GAME,
}
if popgym.envs.has_mazelib():           # popgym defines the labyrinths only with mazelib
    _GROUP_TABLES["navigation"] = popgym.envs.ALL_NAVIGATION

GROUPS: tuple[str, ...] = (*_GROUP_TABLES, "event_time", "all")

# id -> env class, grouped then easy/medium/hard as popgym lists them
_CLASSES: dict[str, type] = {info["id"]: cls for table in _GROUP_TABLES.values()
                             for cls, info in table.items()}
# event-time id "popgym-<Name>-EventTime-v0" -> the task's id "popgym-<Name>-v0"
_EVENT_TIME: dict[str, str] = {f"{i[:-len('-v0')]}-EventTime-v0": i for i in _CLASSES}
_ALL_IDS: tuple[str, ...] = (*_CLASSES, *_EVENT_TIME)


def list_envs(group: str = "all") -> list[str]:
    """The POPGym ids of `group` (one of GROUPS), every difficulty. "all" is every task;
    "event_time" their event-time variants."""
    if group == "all":
        return list(_CLASSES)
    if group == "event_time":
        return list(_EVENT_TIME)
    if group not in _GROUP_TABLES:
        hint = "" if popgym.envs.has_mazelib() or group != "navigation" else \
            " (the navigation group needs mazelib: pip install 'memrl[navigation]')"
        raise ValueError(f"unknown env group {group!r}{hint}; groups: {', '.join(GROUPS)}")
    return [info["id"] for info in _GROUP_TABLES[group].values()]


def resolve(names: str | list[str]) -> list[str]:
    """Env ids and/or group names -> ordered unique ids.

    A name is a POPGym id ("popgym-RepeatPreviousEasy-v0" or its event-time variant
    "popgym-RepeatPreviousEasy-EventTime-v0"), its short form ("RepeatPreviousEasy",
    "RepeatPreviousEasy-EventTime") or a group name.
    Unknown names raise ValueError with the closest ids.
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
        else:
            raise ValueError(_unknown_env_message(name))
        ids.extend(i for i in found if i not in ids)
    return ids


def resolve_one(name: str, what: str = "env") -> str:
    """The one POPGym id `name` names (see resolve); a group or a non-string raises ValueError
    / TypeError saying `what` needs one id."""
    if not isinstance(name, str):
        raise TypeError(f"{what} must be one POPGym id, got {name!r}")
    ids = resolve(name)
    if len(ids) != 1:
        raise ValueError(f"{what} must be one POPGym id, got group {name!r} ({len(ids)} envs)")
    return ids[0]


def is_event_time(env_id: str) -> bool:
    """Whether `env_id` (an id or short form, see resolve) names an event-time variant."""
    ids = resolve(env_id)
    return len(ids) == 1 and ids[0] in _EVENT_TIME


def max_episode_length(env_id: str) -> int | None:
    """The most steps an episode of `env_id` (an id or short form) takes, as its POPGym class
    states it (`max_episode_length`; Concentration's `episode_length`), or None where the
    class does not say (HigherLower: the deck's size). An event-time variant takes at most its
    task's steps (each of its steps holds one or more of the task's)."""
    task = resolve_one(env_id)
    env = _CLASSES[_EVENT_TIME.get(task, task)]()
    length = getattr(env, "max_episode_length", getattr(env, "episode_length", None))
    return int(length) if length is not None else None


def _unknown_env_message(name: str) -> str:
    close = difflib.get_close_matches(name, _ALL_IDS, n=3, cutoff=0.5)
    if not close:   # compare short forms too: "RepeatPrevEasy" -> popgym-RepeatPreviousEasy-v0
        short = {i[len("popgym-"):-len("-v0")]: i for i in _ALL_IDS}
        close = [short[s] for s in difflib.get_close_matches(name, short, n=3, cutoff=0.5)]
    hint = f" Closest: {', '.join(close)}." if close else ""
    nav = "" if popgym.envs.has_mazelib() else " (navigation tasks need mazelib)"
    return (f"unknown POPGym env {name!r}.{hint} Groups: {', '.join(GROUPS)}{nav}; "
            f"see envs.list_envs() for every id")


def _flatten_to_float32(env: gymnasium.Env) -> gymnasium.Env:
    """`env` with its (nested) observation flattened by gymnasium (Discrete and MultiDiscrete
    parts one-hot, Box entries as they are, Tuple/Dict parts concatenated) into a float32 Box."""
    with warnings.catch_warnings():     # float64 bounds cast to float32 on purpose
        warnings.filterwarnings("ignore", message=".*precision lowered by casting to float32")
        return DtypeObservation(FlattenObservation(env), np.float32)


def make_env(env_id: str, config: dict | None = None) -> gymnasium.Env:
    """The POPGym task `env_id` with previous action + first-step flag, obs a float32 Box;
    for an event-time id that env inside EventTime (Δt appended last).

    `config` holds keyword arguments of the POPGym env class (an RLlib EnvContext works), and
    for an event-time id also `max_gap` (default 4).
    """
    if env_id not in _ALL_IDS:
        raise ValueError(_unknown_env_message(env_id))
    kwargs = dict(config or {})
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


def _gym_entry_point(env_id: str, **kwargs) -> gymnasium.Env:
    return make_env(env_id, kwargs)


def register_envs() -> None:
    """Registers every id (event-time ones too) with gymnasium as the wrapped task
    (overrides popgym's raw one)."""
    registry = gymnasium.envs.registration.registry
    for env_id in _ALL_IDS:
        spec = registry.get(env_id)
        if spec is not None and getattr(spec.entry_point, "func", None) is _gym_entry_point:
            continue
        registry.pop(env_id, None)      # popgym's raw registration: replace without a warning
        gymnasium.register(id=env_id, entry_point=functools.partial(_gym_entry_point, env_id))
