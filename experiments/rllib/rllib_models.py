"""RLlib's own memory models as peers in a study: `rllib:GTrXL`.

RLlib's new API stack has no attention model (DefaultModelConfig knows `use_lstm` only); its
GTrXL lives on in the old stack, as the `use_attention` model (ray.rllib.models.torch.
attention_net: an `AttentionWrapper` around `GTrXLNet`). A study names it `rllib:GTrXL` (any
case); it trains on the old API stack, with the model dict

    obs -> RLlib's fcnet: fcnet_hiddens [pre_size, pre_size], tanh (RLlib's default)
        -> GTrXLNet: Linear(pre, hidden) -> `layers` GTrXL units (attention_dim = hidden)
        -> logits: Linear(hidden, actions); value: Linear(hidden, 1)

(actor and critic share the trunk: vf_share_layers, RLlib's way for its attention model)

and the keys of our `gtrxl` cell's keywords, mapped to RLlib's (the same defaults, which
follow the study's hidden_size, so `rllib:GTrXL` and `gtrxl` with the same kwargs are the
same unit sizes):

    window      W (64)           attention_memory_inference = attention_memory_training = W − 1
    heads       n (4, 2 or 1)    attention_num_heads
    head_dim    d (hidden / n)   attention_head_dim
    mlp_size    (hidden)         attention_position_wise_mlp_dim
    gate_bias   (2.0)            attention_init_gru_gate_bias
    layers      (1)              attention_num_transformer_units

Where the networks differ: RLlib's wrapper has no actor/critic MLPs (model_config's head_size
is unused: linear heads on the units' output) and its own pre-network (fcnet, tanh, no
LayerNorm); in a training chunk its query i sees its memory plus the chunk up to i
(memory_training + i + 1 steps) where ours sees W (memory_models/gtrxl.py lists the unit's
differences). Importing this module imports neither torch nor ray.
"""

from __future__ import annotations

from experiments.rllib.popgym_models import spelled_as

__all__ = ["PREFIX", "RLLIB_MODELS", "is_rllib", "canonical_name", "check_rllib_model",
           "rllib_model_config"]

PREFIX = "rllib:"
# class name -> the gtrxl keywords its entry takes (with the registry's `layers`)
RLLIB_MODELS: dict[str, tuple[str, ...]] = {
    "GTrXL": ("window", "heads", "head_dim", "mlp_size", "gate_bias", "layers"),
}


def is_rllib(name: str) -> bool:
    """Whether a model entry's name names one of RLlib's own models (`rllib:<Class>`)."""
    return name.startswith(PREFIX)


def canonical_name(name: str) -> str:
    """`rllib:gtrxl` -> `rllib:GTrXL`; an unknown class raises ValueError listing the valid."""
    return spelled_as(name, PREFIX, RLLIB_MODELS, "RLlib")


def _unit_sizes(kwargs: dict, hidden_size: int) -> dict:
    """Our gtrxl cell's sizes for `kwargs` at `hidden_size` (its own checks and defaults)."""
    from memory_models.gtrxl import GTrXL

    unit = GTrXL(input_size=1, hidden_size=hidden_size,
                 **{k: v for k, v in kwargs.items() if k != "layers"})
    return {"window": unit.window, "heads": unit.heads, "head_dim": unit.head_size,
            "mlp_size": unit.mlp_size,
            "gate_bias": float(unit.attention_gate.gate_bias[0].detach())}


def check_rllib_model(name: str, kwargs: dict, hidden_size: int = 256) -> str | None:
    """Why `name` with `kwargs` cannot train here (None if it can)."""
    cls = canonical_name(name)[len(PREFIX):]
    unknown = sorted(set(kwargs) - set(RLLIB_MODELS[cls]))
    if unknown:
        return (f"kwargs {unknown} are not keys of {PREFIX}{cls}; allowed: "
                f"{sorted(RLLIB_MODELS[cls])} (our gtrxl's keywords, mapped to RLlib's "
                f"attention_* keys)")
    layers = kwargs.get("layers", 1)
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        return f"layers must be a positive int (attention_num_transformer_units), got {layers!r}"
    try:
        sizes = _unit_sizes(kwargs, hidden_size)
    except ValueError as error:
        return str(error)
    if sizes["window"] < 2:
        return (f"{PREFIX}{cls} needs window >= 2: RLlib's GTrXL keeps a memory of window - 1 "
                f"steps (attention_memory_inference), and a memory of 0 steps it cannot build")
    return None


def rllib_model_config(name: str, kwargs: dict, sizes: dict, max_seq_len: int) -> dict:
    """The old stack's `model` dict of `name` (RLlib's use_attention model) at the study's
    widths `sizes` (pre_size, hidden_size; POPGym's defaults for missing ones)."""
    from experiments.rllib.defaults import POPGYM_SIZES

    problem = check_rllib_model(name, kwargs, {**POPGYM_SIZES, **sizes}["hidden_size"])
    if problem:
        raise ValueError(problem)
    widths = {**POPGYM_SIZES, **sizes}
    unit = _unit_sizes(kwargs, widths["hidden_size"])
    return {"use_attention": True,
            "fcnet_hiddens": [widths["pre_size"], widths["pre_size"]],
            # the wrapper's value head reads the units' output; without sharing, PPO's
            # default (False) builds a second fcnet value branch that nothing uses
            "vf_share_layers": True,
            "attention_num_transformer_units": kwargs.get("layers", 1),
            "attention_dim": widths["hidden_size"],
            "attention_num_heads": unit["heads"],
            "attention_head_dim": unit["head_dim"],
            "attention_position_wise_mlp_dim": unit["mlp_size"],
            "attention_memory_inference": unit["window"] - 1,
            "attention_memory_training": unit["window"] - 1,
            "attention_init_gru_gate_bias": unit["gate_bias"],
            "max_seq_len": max_seq_len}
