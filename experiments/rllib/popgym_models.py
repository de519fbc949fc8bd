"""POPGym's own baseline models (popgym.baselines.ray_models) as peers in a study.

A study names one as `popgym:<Class>` (`popgym:GRU`, `popgym:LMU`, `popgym:S4D`, ...; any case).
It trains POPGym's class itself on RLlib's old API stack (the stack POPGym was published on),
given as `model["custom_model"]` with the custom_model_config of popgym/baselines/ppo.py, its
widths from the study's `model_config`:

    obs -> Linear(obs, pre) -> LayerNorm -> preprocessor Linear(pre, pre) + LeakyReLU
        -> memory (pre -> hidden) -> actor / critic: Linear(hidden, head) LeakyReLU
                                                      Linear(head, head) LeakyReLU -> final

(ppo.py has one width h = pre = head = 128 and hidden 256; these are our defaults too.)
A model entry's `kwargs` set the class's own MODEL_CONFIG keys (e.g. `theta` of LMU,
`stack_size` of Framestack). Importing this module imports neither torch nor popgym.
"""

from __future__ import annotations

import importlib
import logging

from experiments.rllib.defaults import POPGYM_SIZES

__all__ = ["PREFIX", "POPGYM_MODELS", "POPGYM_ORIGINAL", "is_popgym", "canonical_name",
           "check_popgym_model", "position_table_problem", "popgym_class",
           "custom_model_config"]

PREFIX = "popgym:"

# POPGym's modules log notes at import (S4D: optional CUDA kernels) without configuring
# logging; with no handler Python prints them on stderr. They reach the application's own
# handlers, if any, as before.
logging.getLogger("popgym").addHandler(logging.NullHandler())

# class name -> module of popgym.baselines.ray_models (popgym 1.0.7); every one builds and
# trains on Ray 2.60's old API stack (checked when this table was written; DiffNC with the
# `dnc` package of the `baselines` extra).
POPGYM_MODELS: dict[str, str] = {
    "GRU": "ray_gru", "LSTM": "ray_lstm", "Elman": "ray_elman", "IndRNN": "ray_indrnn",
    "LMU": "ray_lmu", "S4D": "ray_s4d", "DiffNC": "ray_diffnc",
    "LinearAttention": "ray_linear_attention", "DeepLinearAttention": "ray_linear_attention",
    "FastWeightProgrammer": "ray_fwp", "DeepFastWeightProgrammer": "ray_fwp",
    "MLP": "ray_mlp", "BasicMLP": "ray_mlp", "Framestack": "ray_framestack",
    "Frameconv": "ray_frameconv",
}
# our cell -> its POPGym original (the pairs `memrl report` compares); gtrxl's original is
# RLlib's GTrXL (experiments.rllib.rllib_models)
POPGYM_ORIGINAL = {"gru": "popgym:GRU", "lstm": "popgym:LSTM", "lmu": "popgym:LMU",
                   "s4d": "popgym:S4D", "mlp": "popgym:BasicMLP", "elman": "popgym:Elman",
                   "indrnn": "popgym:IndRNN", "pos_mlp": "popgym:MLP",
                   "fwp": "popgym:FastWeightProgrammer",
                   "linear_attention": "popgym:LinearAttention",
                   "frame_stack": "popgym:Framestack", "frame_conv": "popgym:Frameconv",
                   "gtrxl": "rllib:GTrXL"}


def is_popgym(name: str) -> bool:
    """Whether a model entry's name names one of POPGym's own models (`popgym:<Class>`)."""
    return name.startswith(PREFIX)


def canonical_name(name: str) -> str:
    """`popgym:gru` -> `popgym:GRU`; an unknown class raises ValueError listing the valid."""
    return spelled_as(name, PREFIX, POPGYM_MODELS, "POPGym")


def spelled_as(name: str, prefix: str, classes, owner: str) -> str:
    """`<prefix><class>` with the class spelled as in `classes` (case-insensitive match; the
    prefix optional in `name`); an unknown class raises ValueError listing the valid."""
    wanted = name[len(prefix):] if name.startswith(prefix) else name
    for cls in classes:
        if cls.lower() == wanted.lower():
            return prefix + cls
    raise ValueError(f"unknown {owner} model {name!r}; available: "
                     f"{[prefix + cls for cls in classes]}")


def _class_name(name: str) -> str:
    return canonical_name(name)[len(PREFIX):]


def popgym_class(name: str) -> type:
    """POPGym's RLlib model class for `popgym:<Class>`."""
    cls = _class_name(name)
    module = importlib.import_module(f"popgym.baselines.ray_models.{POPGYM_MODELS[cls]}")
    return getattr(module, cls)


def check_popgym_model(name: str, kwargs: dict) -> str | None:
    """Why `name` with `kwargs` cannot train here (None if it can)."""
    cls = _class_name(name)
    try:
        model_class = popgym_class(name)
    except ImportError as error:
        return f"{PREFIX}{cls} cannot run here: {error}"
    unknown = sorted(set(kwargs) - set(model_class.MODEL_CONFIG))
    if unknown:
        return (f"kwargs {unknown} are not keys of POPGym's {cls}; allowed: "
                f"{sorted(model_class.MODEL_CONFIG)}")
    return None


def position_table_problem(name: str, task: str, episode_length: int | None,
                           max_seq_len: int, batch_mode: str) -> str | None:
    """Why `name` would index past its position table on `task`, whose episodes run to
    `episode_length` steps L (None if it would not, or if the class has no table or L is
    unknown).

    POPGym's position embedding (MLP, FastWeightProgrammer, LinearAttention, Framestack,
    Frameconv: `embedding` "sine") is a table of max_seq_len rows, indexed by the step within
    the episode, t_start + i at the i-th step of a padded chunk (BaseModel.apply_embedding);
    past the table torch raises IndexError, mid-training. Sampling reaches step L - 1. With
    `complete_episodes` an episode of L <= max_seq_len steps is one chunk from step 0: rows
    needed L. With `truncate_episodes` a fragment can start at step L - 1 and be padded to
    another's L steps: rows needed 2L - 1.
    """
    from popgym.baselines.ray_models.base_model import BaseModel

    cls = popgym_class(name)
    if {**BaseModel.BASE_CONFIG, **cls.MODEL_CONFIG}["embedding"] is None or \
            episode_length is None:
        return None
    needed = episode_length if batch_mode == "complete_episodes" else 2 * episode_length - 1
    if max_seq_len >= needed:
        return None
    why = ("" if batch_mode == "complete_episodes" else
           f"; with batch_mode {batch_mode} a fragment starting at step {episode_length - 1} is "
           f"padded to {episode_length} steps")
    return (f"{canonical_name(name)} indexes its position table ({max_seq_len} rows: "
            f"ppo.max_seq_len) by the step within the episode, and {task}'s episodes run to "
            f"{episode_length} steps{why}: it would fail with IndexError mid-training. Set "
            f"ppo.max_seq_len >= {needed} (for this model alone: its entry's ppo) "
            f"or leave this task out")


def custom_model_config(sizes: dict, kwargs: dict) -> dict:
    """popgym/baselines/ppo.py's custom_model_config at the widths `sizes` (pre_size,
    hidden_size, head_size; POPGym's defaults for missing ones), plus the class's `kwargs`."""
    from torch import nn

    sizes = {**POPGYM_SIZES, **sizes}
    pre, hidden, head = sizes["pre_size"], sizes["hidden_size"], sizes["head_size"]

    def head_mlp():
        return nn.Sequential(nn.Linear(hidden, head), nn.LeakyReLU(inplace=True),
                             nn.Linear(head, head), nn.LeakyReLU(inplace=True))

    return {"preprocessor_input_size": pre,
            "preprocessor": nn.Sequential(nn.Linear(pre, pre), nn.LeakyReLU(inplace=True)),
            "preprocessor_output_size": pre,
            "hidden_size": hidden,
            "postprocessor": nn.Identity(),
            "actor": head_mlp(), "critic": head_mlp(),
            "postprocessor_output_size": head,
            **kwargs}
