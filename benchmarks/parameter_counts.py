"""Trainable parameters of registered memories, and of the whole PPO module around each.

    .venv/bin/python benchmarks/parameter_counts.py [--models gru shm shm:memory_size=48 ...]
        [--pre 64] [--hidden 64] [--head 64] [--env popgym-RepeatPreviousEasy-v0]
        [--reference gru] [--out benchmarks/results/recurrences/parameters.md]

A model is a registry name, optionally with keywords: `name:key=value,key=value` (values read
as Python literals, `layers` included), e.g. `shm:memory_size=48` or `rtu:layers=2`.

For each model it counts
    memory  the parameters of memory_models.make(name, input_size=pre, hidden_size=hidden, **kw)
    module  those of the whole network of experiments.rllib.rl_module.build_layers on `env`
            (pre-layers + memory + actor + critic), the network PPO trains
and the ratio memory / reference memory (--reference, default gru). Rows whose ratio is above
2 or below 1/2 are marked: the study compares them at a different size from the reference.
Prints a markdown table; --out also writes it with the command that produced it.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import envs  # noqa: E402
import memory_models  # noqa: E402
from experiments.rllib.rl_module import build_layers, check_model_config  # noqa: E402
from experiments.rllib.rllib_private import action_dist_cls  # noqa: E402

# issue 27's cells and the reference, the lineup of configs/recurrences.yaml
DEFAULT_MODELS = ("gru", "mamba", "mamba2", "mlstm", "slstm", "delta_net", "gated_delta_net",
                  "shm", "rtu")
FAR = 2.0              # a ratio to the reference beyond FAR (or below 1 / FAR) is marked


def parse_model(spec: str) -> tuple[str, dict]:
    """`name` or `name:key=value,key=value` -> (name, keywords); values as Python literals."""
    name, _, rest = spec.partition(":")
    kwargs = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"model keyword {item!r} in {spec!r} must be key=value")
        try:
            kwargs[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            kwargs[key.strip()] = value.strip()
    memory_models.get(name.strip())                    # unknown name -> lists the valid ones
    return name.strip(), kwargs


def count(module: nn.Module) -> int:
    """Trainable parameters of `module`."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def counts(spec: str, sizes: dict, obs_size: int, num_outputs: int) -> tuple[int, int]:
    """(memory parameters, whole-module parameters) of the model `spec` at `sizes`."""
    name, kwargs = parse_model(spec)
    config = check_model_config({"memory": name, "memory_kwargs": kwargs, **sizes})
    layers = build_layers(obs_size, num_outputs, config)
    return count(layers[1]), sum(count(layer) for layer in layers)


def table(models: list[str], sizes: dict, env: str, reference: str) -> str:
    """Markdown table of memory and module parameters, ratio to the reference memory."""
    task = envs.make_env(env)
    obs_size = task.observation_space.shape[0]
    num_outputs = int(action_dist_cls(task.action_space, framework="torch")
                      .required_input_dim(task.action_space))
    reference_memory, _ = counts(reference, sizes, obs_size, num_outputs)
    lines = [f"memory: input {sizes['pre_size']} -> hidden {sizes['hidden_size']}; module: "
             f"{env} (obs {obs_size}, {num_outputs} action logits), head {sizes['head_size']}",
             "", f"| model | memory | module | memory / {reference} |", "|---|---|---|---|"]
    for spec in models:
        memory, module = counts(spec, sizes, obs_size, num_outputs)
        ratio = memory / reference_memory
        far = " **(> 2x off)**" if ratio > FAR or ratio < 1 / FAR else ""
        lines.append(f"| `{spec}` | {memory:,} | {module:,} | {ratio:.2f}{far} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--pre", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--head", type=int, default=64)
    parser.add_argument("--env", default="popgym-RepeatPreviousEasy-v0")
    parser.add_argument("--reference", default="gru")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    sizes = {"pre_size": args.pre, "hidden_size": args.hidden, "head_size": args.head}
    text = table(args.models, sizes, args.env, args.reference)
    print(text)
    if args.out:
        command = " ".join(["benchmarks/parameter_counts.py", *(argv or sys.argv[1:])])
        args.out.write_text(f"    .venv/bin/python {command}\n\n{text}\n")


if __name__ == "__main__":
    main()
