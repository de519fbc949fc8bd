"""Speed of every registered memory cell beside its peers, measured side by side in one run.

    .venv/bin/python benchmarks/cells.py [--quick] [--models lmu,lmu_fft] [--repeats 3]
                                         [--kinds learner,value] [--threads 1] [--clock cpu]
                                         [--device cuda]

For each cell of memory_models.available() (or --models) and each peer of PEERS, at the
shapes of Sizes:
  train    forward + backward over a (B, T, input) sequence (B=16, T=1024) from a non-zero
           initial state, loss = y.mean()
  learner  the same at the PPO learner's minibatch: 157 rows x 53 steps (RepeatPreviousEasy
           at POPGym's protocol: 52-step episodes plus the bootstrap step)
  value    forward without gradients at the GAE value pass over the whole train batch
           (1260 rows x 53 steps)
  step     one rollout step at batch B (16 envs per env runner) without gradients
train, learner and value: median of --repeats runs after one warm-up; step: median over --steps.
Ratios are against torch's nn.GRU (the "torch.nn.GRU" peer); TARGETS lists the pass/fail checks.
Prints a table and writes it as markdown to benchmarks/results/cells.md (--out to change).
Peers are a dict so other cells' published versions can be added beside them.
--device cuda builds every subject and its inputs on the GPU (torch's default device) and
waits for the GPU around each timed call (wall clock only); without a CUDA device it refuses.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import memory_models  # noqa: E402
from memory_models.deep import DeepMemory  # noqa: E402
from memory_models.ops.scan import linear_scan, linear_scan_sequential  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "cells.md"
REFERENCE = "torch.nn.GRU"


@dataclass(frozen=True)
class Sizes:
    batch: int = 16
    steps: int = 1024
    input: int = 128
    hidden: int = 256
    memory: int = 256      # memory_size of the LMUs
    state: int = 64        # state_size of state-space cells
    learner: tuple[int, int] = (157, 53)    # PPO minibatch (rows, steps), RepeatPreviousEasy
    value: tuple[int, int] = (1260, 53)     # GAE value pass over the train batch

    def shapes(self) -> dict[str, tuple[int, int]]:
        """(rows, steps) of each sequence kind."""
        return {"train": (self.batch, self.steps), "learner": self.learner,
                "value": self.value}


KINDS = ("train", "learner", "value", "step")


# A benchmark subject is built into one closure per kind of KINDS over fixed random inputs
# (each runs its forward, and backward where the kind trains); a kind it lacks is left out.
Subject = dict[str, Callable[[], None]]


def sequence_closure(forward: Callable[[Tensor, object], Tensor],
                     make_state: Callable[[int], object], kind: str, rows: int, steps: int,
                     input_size: int) -> Callable[[], None]:
    """forward(x, state) -> y on fixed random x (rows, steps, input) and make_state(rows):
    mean(y).backward() for the training kinds, no gradients for "value"."""
    x, state = torch.randn(rows, steps, input_size), make_state(rows)

    def run():
        if kind == "value":
            with torch.no_grad():
                forward(x, state)
        else:
            forward(x, state).mean().backward()
    return run


def sequence_closures(forward: Callable[[Tensor, object], Tensor],
                      make_state: Callable[[int], object], sizes: Sizes,
                      step: Callable[[], None] | None = None) -> Subject:
    """The closures of one subject: `sequence_closure` at every shape of `sizes`, and step."""
    closures = {kind: sequence_closure(forward, make_state, kind, rows, steps, sizes.input)
                for kind, (rows, steps) in sizes.shapes().items()}
    return closures | ({"step": step} if step is not None else {})


def popgym_s4d_state_size(sizes: Sizes) -> int:
    """d_state of popgym's S4D RLlib model: round(sqrt(hidden) / 2) * 2 (16 for hidden 256)."""
    return round(sizes.hidden ** 0.5 / 2) * 2


# The keywords each cell runs with at the benchmark sizes (besides input and hidden); a cell
# not listed runs at its defaults: ffm (memory 32 x context 4, the FFM paper's RLlib model),
# lru (256 modes), fwp / linear_attention (key size from hidden, as POPGym's models),
# frame_stack / frame_conv (stack_size 4, as POPGym's), pos_mlp, indrnn (max_len 1024 >= T).
CELL_KEYWORDS: dict[str, Callable[[Sizes], dict]] = {
    "lmu": lambda sizes: {"memory_size": sizes.memory},
    "lmu_fft": lambda sizes: {"memory_size": sizes.memory, "seq_len": sizes.steps},
    "event_ssm": lambda sizes: {"state_size": sizes.state},
    # compared with popgym's S4D, s4d runs at its size (same state, same work)
    "s4d": lambda sizes: {"state_size": popgym_s4d_state_size(sizes)},
}
SIZE_OF_PEER = ("s4d",)       # cells whose CELL_KEYWORDS are their popgym peer's size


def cell_subject(name: str, sizes: Sizes, layers: int = 1, **extra) -> Subject:
    """A registered memory under the interface: scan at the sequence shapes, step for rollout.
    `extra` overrides CELL_KEYWORDS and may hold implementation options; layers > 1 stacks
    the cell in residual blocks (as `make(name, layers=...)`)."""
    keywords = CELL_KEYWORDS.get(name, lambda sizes: {})(sizes) | extra
    # the class itself: `extra` may hold implementation options, which `make` refuses
    cls = memory_models.get(name)
    cell = (cls(input_size=sizes.input, hidden_size=sizes.hidden, **keywords) if layers == 1
            else DeepMemory.stack(cls, layers, sizes.input, sizes.hidden, **keywords))

    def make_state(rows: int):     # a non-zero state; step counters "t" at 0, as in training
        return {k: torch.zeros_like(v) if k == "t" else torch.randn_like(v) * 0.5
                for k, v in cell.initial_state(rows).items()}

    x_t = torch.randn(sizes.batch, sizes.input)
    rollout = {"state": make_state(sizes.batch)}

    def step():
        with torch.no_grad():
            _, rollout["state"] = cell.step(x_t, rollout["state"])

    return sequence_closures(lambda x, state: cell.scan(x, state)[0], make_state, sizes, step)


def torch_gru(sizes: Sizes) -> Subject:
    """torch.nn.GRU: fused sequence call for training; step = nn.GRU on a length-1 sequence."""
    gru = nn.GRU(sizes.input, sizes.hidden, batch_first=True)
    x_t = torch.randn(sizes.batch, 1, sizes.input)
    rollout = {"h": torch.randn(1, sizes.batch, sizes.hidden) * 0.5}

    def step():
        with torch.no_grad():
            _, rollout["h"] = gru(x_t, rollout["h"])

    return sequence_closures(lambda x, h0: gru(x, h0)[0],
                             lambda rows: torch.randn(1, rows, sizes.hidden) * 0.5, sizes, step)


def _building_device() -> torch.device:
    """The device subjects are built on (`measure`'s): popgym's LMUs and S4 make buffers
    from numpy, on the CPU whatever torch's default device, and are moved there."""
    return torch.get_default_device()


def popgym_lmu(sizes: Sizes) -> Subject:
    """popgym's LMU layer (its Python loop of LMUCell); step = one LMUCell call."""
    from popgym.baselines.models.lmu import LMU
    lmu = LMU(sizes.input, sizes.hidden, sizes.memory, theta=64.0).to(_building_device())

    def make_state(rows: int):
        return (torch.randn(rows, sizes.hidden) * 0.5, torch.randn(rows, sizes.memory) * 0.5)

    x_t = torch.randn(sizes.batch, sizes.input)
    rollout = {"state": make_state(sizes.batch)}

    def step():
        with torch.no_grad():
            rollout["state"] = lmu.cell(x_t, rollout["state"])

    return sequence_closures(lambda x, state: lmu(x, state)[0], make_state, sizes, step)


def popgym_lmu_fft(sizes: Sizes) -> Subject:
    """popgym's LMUFFT (seq_len = T of each shape); it has no initial state and no step."""
    from popgym.baselines.models.lmu import LMUFFT
    closures: Subject = {}
    for kind, (rows, steps) in sizes.shapes().items():
        with torch.device("cpu"):        # its constructor mixes numpy-made buffers in
            lmu_fft = LMUFFT(sizes.input, sizes.hidden, sizes.memory, seq_len=steps, theta=64.0)
        lmu_fft = lmu_fft.to(_building_device())
        closures[kind] = sequence_closure(lambda x, _, f=lmu_fft: f(x)[0], lambda rows: None,
                                          kind, rows, steps, sizes.input)
    return closures


def popgym_s4d(sizes: Sizes) -> Subject:
    """popgym's S4D as its RLlib model builds it: Linear map + S4 (diag-lin, zoh, d_state =
    round(sqrt(hidden)/2)*2). Its training call ignores the state (none is passed or made);
    step = map + S4.step after setup_step."""
    from popgym.baselines.models.s4d import S4
    project = nn.Linear(sizes.input, sizes.hidden)
    with torch.device("cpu"):            # its constructor computes in numpy
        core = S4(d_model=sizes.hidden, d_state=popgym_s4d_state_size(sizes), mode="diag",
                  measure="diag-lin", bidirectional=False, disc="zoh", real_type="exp",
                  transposed=False)
    core = core.to(_building_device())
    core.eval()                                  # S4.step asserts eval mode; no dropout anyway
    core.setup_step()
    x_t = torch.randn(sizes.batch, sizes.input)
    rollout = {"state": core.default_state(sizes.batch)}

    def step():
        with torch.no_grad():
            _, rollout["state"] = core.step(project(x_t), rollout["state"])

    return sequence_closures(lambda x, _: core(project(x))[0], lambda rows: None, sizes, step)


def popgym_ray_memory(class_name: str, **config) -> Callable[[Sizes], Subject]:
    """POPGym's RLlib model `popgym.baselines.ray_models.<module>.<class_name>` with memory
    input `input` and output `hidden` (preprocessor_output_size = input, as its PPO sets it)
    and its default MODEL_CONFIG (+ `config`), run as its BaseModel.forward runs the memory:
    the position embedding where its config has one (sine for MLP, Framestack, Frameconv,
    FastWeightProgrammer, LinearAttention), then forward_memory, from a non-zero state of its
    initial_state's shapes. Its feature map before and actor/critic after are left out (ours
    have no counterpart in the cell). Step = the same call on one step (T = 1), as its rollout
    runs it."""
    module = {"Elman": "ray_elman", "IndRNN": "ray_indrnn", "MLP": "ray_mlp",
              "FastWeightProgrammer": "ray_fwp", "LinearAttention": "ray_linear_attention",
              "Framestack": "ray_framestack", "Frameconv": "ray_frameconv"}[class_name]

    def build(sizes: Sizes) -> Subject:
        import gymnasium as gym
        cls = getattr(importlib.import_module(f"popgym.baselines.ray_models.{module}"),
                      class_name)
        custom = {"preprocessor_input_size": sizes.input, "preprocessor_output_size": sizes.input,
                  "hidden_size": sizes.hidden, **config}
        model = cls(gym.spaces.Box(-1.0, 1.0, (sizes.input,)), gym.spaces.Discrete(2), 2,
                    {"max_seq_len": sizes.steps, "custom_model_config": custom}, "popgym")

        def memory(x: Tensor, state: list, t_starts: Tensor):
            if model.cfg["embedding"] is not None:
                x = model.apply_embedding(x, t_starts)
            return model.forward_memory(x, state, t_starts,
                                        torch.full((x.shape[0],), x.shape[1], device=x.device))

        def make_state(rows: int) -> list:
            return [torch.randn(rows, *s.shape) * 0.5 for s in model.initial_state()]

        x_t = torch.randn(sizes.batch, 1, sizes.input)
        rollout = {"state": make_state(sizes.batch)}
        step_t = torch.full((sizes.batch,), sizes.steps // 2)      # any position in its table

        def step():
            with torch.no_grad():
                _, rollout["state"] = memory(x_t, rollout["state"], step_t)

        return sequence_closures(
            lambda x, state: memory(x, state, torch.zeros(x.shape[0], dtype=torch.long,
                                                       device=x.device))[0],
            make_state, sizes, step)
    return build


def event_ssm_sequential(sizes: Sizes) -> Subject:
    """event_ssm itself with scan_impl="sequential": its recurrence as a loop over t."""
    return cell_subject("event_ssm", sizes, scan_impl="sequential")


def mambapy_block(sizes: Sizes) -> Subject:
    """mambapy 1.2's MambaBlock (the `references` extra: pure PyTorch, its parallel pscan) at
    mamba's defaults (d_model = hidden, d_state 16, expand 2, d_conv 4) after a Linear map
    input -> hidden (the block keeps its width; ours maps input -> 2E directly). Its sequence
    pass takes no state (from zero); step: its step() from an (h, conv inputs) cache."""
    from mambapy.mamba import MambaBlock, MambaConfig
    project = nn.Linear(sizes.input, sizes.hidden)
    block = MambaBlock(MambaConfig(d_model=sizes.hidden, n_layers=1))
    channels, modes = block.config.d_inner, block.config.d_state
    x_t = torch.randn(sizes.batch, sizes.input)
    rollout = {"cache": (torch.randn(sizes.batch, channels, modes) * 0.5,
                         torch.randn(sizes.batch, channels, block.config.d_conv - 1) * 0.5)}

    def step():
        with torch.no_grad():
            _, rollout["cache"] = block.step(project(x_t), rollout["cache"])

    return sequence_closures(lambda x, _: block(project(x)), lambda rows: None, sizes, step)


def rllib_gtrxl_net(sizes: Sizes) -> Subject:
    """RLlib's old-stack GTrXLNet with num_outputs None (its input linear map and one GTrXL
    unit, as its AttentionWrapper builds it) at gtrxl's default sizes (4 heads of 64, MLP
    256, window 64: memory_training = memory_inference = 63). Sequence kinds: its forward
    over the chunk after a memory of 63 steps (its query i sees 63 + i + 1 steps, ours 64);
    step: T = 1 from the memory, which is then shifted by one (as its view requirements do)."""
    import gymnasium as gym
    from ray.rllib.models.torch.attention_net import GTrXLNet
    unit = memory_models.make("gtrxl", input_size=sizes.input, hidden_size=sizes.hidden)
    tau = unit.window - 1
    net = GTrXLNet(gym.spaces.Box(-1.0, 1.0, (sizes.input,)), gym.spaces.Discrete(2), None,
                   {"max_seq_len": sizes.steps}, "gtrxl", num_transformer_units=1,
                   attention_dim=sizes.hidden, num_heads=unit.heads, head_dim=unit.head_size,
                   memory_inference=tau, memory_training=tau, position_wise_mlp_dim=unit.mlp_size)

    def forward(x: Tensor, memory: Tensor) -> Tensor:
        rows, steps = x.shape[:2]
        out, _ = net({"obs": x.reshape(rows * steps, -1)}, [memory],
                     torch.full((rows,), steps, device=x.device))
        return out

    def make_state(rows: int) -> Tensor:
        return torch.randn(rows, tau, sizes.hidden) * 0.5

    x_t = torch.randn(sizes.batch, sizes.input)
    rollout = {"memory": make_state(sizes.batch)}

    def step():
        with torch.no_grad():
            _, (new,) = net({"obs": x_t}, [rollout["memory"]],
                              torch.ones(sizes.batch, device=x_t.device))
            rollout["memory"] = torch.cat([rollout["memory"][:, 1:], new[:, None]], 1)

    return sequence_closures(forward, make_state, sizes, step)


def scan_op(scan: Callable[..., Tensor]) -> Callable[[Sizes], Subject]:
    """The bare linear-scan op on event_ssm's shapes: a, b (B, T, state/2) complex, s_{-1}."""
    def build(sizes: Sizes) -> Subject:
        modes = sizes.state // 2
        A = torch.complex(-torch.rand(modes) - 0.01, torch.randn(modes) * 3)
        a = torch.exp(A * torch.rand(sizes.batch, sizes.steps, 1)).requires_grad_()
        b = torch.randn(sizes.batch, sizes.steps, modes, dtype=torch.cfloat, requires_grad=True)
        start = torch.randn(sizes.batch, modes, dtype=torch.cfloat)
        return {"train": lambda: torch.view_as_real(scan(a, b, start)).mean().backward()}
    return build


# peer name -> (builder, registered cells it is compared with; () = always run)
PEERS: dict[str, tuple[Callable[[Sizes], Subject], tuple[str, ...]]] = {
    REFERENCE: (torch_gru, ()),
    "popgym.LMU": (popgym_lmu, ("lmu",)),
    "popgym.LMUFFT": (popgym_lmu_fft, ("lmu_fft",)),
    "popgym.S4D": (popgym_s4d, ("s4d",)),
    "popgym.Elman": (popgym_ray_memory("Elman"), ("elman",)),
    "popgym.IndRNN": (popgym_ray_memory("IndRNN"), ("indrnn",)),
    "popgym.MLP": (popgym_ray_memory("MLP"), ("pos_mlp",)),
    "popgym.FastWeightProgrammer": (popgym_ray_memory("FastWeightProgrammer"), ("fwp",)),
    "popgym.LinearAttention": (popgym_ray_memory("LinearAttention"), ("linear_attention",)),
    "popgym.Framestack": (popgym_ray_memory("Framestack"), ("frame_stack",)),
    "popgym.Frameconv": (popgym_ray_memory("Frameconv"), ("frame_conv",)),
    "s4d(state_size=64)": (lambda sizes: cell_subject("s4d", sizes, state_size=64), ("s4d",)),
    "event_ssm(sequential)": (event_ssm_sequential, ("event_ssm",)),
    "event_ssm(selective=True)": (lambda sizes: cell_subject("event_ssm", sizes, selective=True),
                                  ("event_ssm",)),
    "event_ssm(layers=4)": (lambda sizes: cell_subject("event_ssm", sizes, layers=4),
                            ("event_ssm",)),
    "ops.linear_scan": (scan_op(linear_scan), ("event_ssm",)),
    "mambapy.MambaBlock": (mambapy_block, ("mamba",)),
    "mamba(scan_impl=parallel)": (lambda sizes: cell_subject("mamba", sizes, scan_impl="parallel"),
                                  ("mamba",)),
    "transformer(window=256)": (lambda sizes: cell_subject("transformer", sizes, window=256),
                                ("transformer",)),
    "gtrxl(window=256)": (lambda sizes: cell_subject("gtrxl", sizes, window=256), ("gtrxl",)),
    "transformer(position=rotary)": (
        lambda sizes: cell_subject("transformer", sizes, position="rotary"), ("transformer",)),
    "transformer(position=learned)": (
        lambda sizes: cell_subject("transformer", sizes, position="learned"), ("transformer",)),
    "rllib.GTrXLNet": (rllib_gtrxl_net, ("gtrxl",)),
    "ops.linear_scan_sequential": (scan_op(linear_scan_sequential), ("event_ssm",)),
}


@dataclass(frozen=True)
class Target:
    """`subject`'s time at `kind` (of KINDS) * factor must be <= `peer`'s time."""
    subject: str
    kind: str
    peer: str
    factor: float
    text: str


TARGETS = [
    Target("lmu_fft", "train", REFERENCE, 2.0, "lmu_fft fwd+bwd >= 2x faster than GRU"),
    Target("lmu_fft", "train", "popgym.LMUFFT", 1.0, "lmu_fft fwd+bwd faster than popgym LMUFFT"),
    Target("lmu", "train", "popgym.LMU", 1.0, "lmu fwd+bwd no slower than popgym LMU"),
    Target("s4d", "train", REFERENCE, 2.0, "s4d fwd+bwd >= 2x faster than GRU"),
    Target("s4d", "train", "popgym.S4D", 2.0, "s4d fwd+bwd >= 2x faster than popgym S4D"),
    Target("s4d(state_size=64)", "train", REFERENCE, 3.0,
           "s4d at its default state size (64) fwd+bwd >= 3x faster than GRU"),
    Target("s4d(state_size=64)", "learner", "lmu_fft", 0.5,
           "s4d (state 64) at the learner minibatch no slower than lmu_fft x 2"),
    Target("event_ssm", "train", REFERENCE, 1.0, "event_ssm fwd+bwd no slower than GRU"),
    Target("ops.linear_scan", "train", "ops.linear_scan_sequential", 5.0,
           "event_ssm's parallel scan op fwd+bwd >= 5x its sequential loop"),
    Target("event_ssm", "train", "event_ssm(sequential)", 5.0,
           "event_ssm cell fwd+bwd >= 5x the same cell with the sequential loop"),
]
# POPGym's lineup (issue 14): the parallel cells >= 2x POPGym's own layer at B=16/T=1024 and
# at the learner minibatch, the sequential ones no slower than it
POPGYM_LINEUP = {"fwp": ("popgym.FastWeightProgrammer", 2.0),
                 "linear_attention": ("popgym.LinearAttention", 2.0),
                 "frame_stack": ("popgym.Framestack", 2.0), "frame_conv": ("popgym.Frameconv", 2.0),
                 "pos_mlp": ("popgym.MLP", 2.0),
                 "elman": ("popgym.Elman", 1.0), "indrnn": ("popgym.IndRNN", 1.0)}
TARGETS += [Target(cell, kind, peer, factor,
                   f"{cell} {what} >= {factor:g}x {peer}" if factor > 1 else
                   f"{cell} {what} no slower than {peer}")
            for cell, (peer, factor) in POPGYM_LINEUP.items()
            for kind, what in (("train", "fwd+bwd"), ("learner", "at the learner minibatch"))]
# the memories since POPGym (issue 15): >= 3x GRU at B=16/T=1024, >= 2x at the learner
# minibatch, step no slower than GRU's
TARGETS += [target for cell in ("ffm", "lru", "min_gru") for target in (
    Target(cell, "train", REFERENCE, 3.0, f"{cell} fwd+bwd >= 3x faster than GRU"),
    Target(cell, "learner", REFERENCE, 2.0, f"{cell} at the learner minibatch >= 2x GRU"),
    Target(cell, "step", REFERENCE, 1.0, f"{cell} step no slower than GRU's"))]
# the attention memories (issue 26) at their default window W = 64: no slower than GRU at
# B=16/T=1024 and at the learner minibatch; gtrxl no slower than RLlib's GTrXLNet
TARGETS += [Target(cell, kind, REFERENCE, 1.0, f"{cell} (W = 64) {what} no slower than GRU")
            for cell in ("transformer", "gtrxl")
            for kind, what in (("train", "fwd+bwd"), ("learner", "at the learner minibatch"))]
TARGETS += [Target("gtrxl", kind, "rllib.GTrXLNet", 1.0,
                   f"gtrxl {what} no slower than RLlib's GTrXLNet")
            for kind, what in (("train", "fwd+bwd"), ("learner", "at the learner minibatch"),
                               ("step", "step"))]
# Mamba and Mamba-2 (issue 27): >= 2x GRU at B=16/T=1024, no slower at the learner minibatch;
# mamba no slower than mambapy's MambaBlock
TARGETS += [Target(cell, kind, REFERENCE, factor, f"{cell} {what} GRU")
            for cell in ("mamba", "mamba2")
            for kind, factor, what in (("train", 2.0, "fwd+bwd >= 2x faster than"),
                                       ("learner", 1.0, "at the learner minibatch no slower than"))]
TARGETS += [Target("mamba", kind, "mambapy.MambaBlock", 1.0,
                   f"mamba {what} no slower than mambapy's MambaBlock")
            for kind, what in (("train", "fwd+bwd"), ("learner", "at the learner minibatch"))]
# DeltaNet and Gated DeltaNet (issue 27): >= 2x GRU at B=16/T=1024, no slower at the learner
# minibatch
TARGETS += [Target(cell, kind, REFERENCE, factor, f"{cell} {what} GRU")
            for cell in ("delta_net", "gated_delta_net")
            for kind, factor, what in (("train", 2.0, "fwd+bwd >= 2x faster than"),
                                       ("learner", 1.0, "at the learner minibatch no slower than"))]
# mLSTM and sLSTM (issue 27): mlstm >= 2x GRU at B=16/T=1024 and no slower at the learner
# minibatch; slstm (sequential) no slower than torch's LSTM (the `lstm` cell: nn.LSTM)
TARGETS += [Target("mlstm", kind, REFERENCE, factor, f"mlstm {what} GRU")
            for kind, factor, what in (("train", 2.0, "fwd+bwd >= 2x faster than"),
                                       ("learner", 1.0, "at the learner minibatch no slower than"))]
TARGETS += [Target("slstm", kind, "lstm", 1.0, f"slstm {what} no slower than torch's LSTM")
            for kind, what in (("train", "fwd+bwd"), ("learner", "at the learner minibatch"))]
STEP_FACTOR = 2.0      # every registered cell's step latency <= 2x GRU's step

# What a reader of the table needs to weigh a verdict, written under it when the cell is run.
NOTES = {
    "transformer": (
        "transformer (target at W = 64: no slower than GRU at B=16/T=1024 and at the learner "
        "minibatch; not met) is bounded by its matmuls, not by its window: in a profile the "
        "attention is 10-17% of its time. Per token at hidden 256 its input map, qkv, output "
        "map and MLP (width 256) are 360k multiply-adds against GRU's 295k (three gates over "
        "input 128 + hidden 256), and torch's GRU runs its 157-row recurrence as well-shaped "
        "matmuls near this core's matmul rate, so a block of this width cannot be faster at "
        "the learner minibatch; at B=16, T=1024 GRU's 16-row recurrence runs slower and the "
        "gap narrows. Query blocks of W/2 or W/4 instead of W measured the same (0.76-0.85 s "
        "at B=16/T=1024). W = 256 costs 1.5x W = 64 at T = 1024 (each query sees W keys); the "
        "value pass sees the W - 1 cached keys beside each row's 53 steps. Step: each step "
        "copies the window (2 x 63 x 256 floats per row) into the new state and runs one "
        "query's scaled_dot_product_attention (~0.13 ms at B = 16)."),
    "gtrxl": (
        "gtrxl is GTrXL's arithmetic: its two GRU gates are 12 H x H matmuls per token (786k "
        "multiply-adds at H = 256, 2.7x a whole GRU step), and LayerNorm and the key/value "
        "maps run over each row's W - 1 remembered inputs besides its chunk (116 / 53 = 2.2x "
        "the qkv work at the learner minibatch, all W slots at every step), as RLlib's "
        "GTrXLNet defines it (the state is the unit's inputs, not keys): ~1.46M multiply-adds "
        "per token, 5x GRU's. Against RLlib's GTrXLNet, the same unit at the same sizes: "
        "1.07x at the learner minibatch, 1.16x per step, 3.7x at T = 1024, where its query i "
        "attends to its memory and the whole chunk up to i (63 + i + 1 keys: quadratic in T), "
        "ours to W = 64 keys."),
    "s4d": (
        "s4d at B=16, T=1024 and its default state size (FAIL, 3x GRU) is bounded by the "
        "projections (the mlp row: the same two matmuls), the FFT convolution of 4096 "
        "sequences of 1024 steps and the carried state's free response (B·H·T·N real "
        "multiply-adds, forward and backward); the same cell from a zero state skips the "
        "last. At the learner minibatch (157 x 53) the FFT convolution over 256 channels x "
        "157 rows of 53 steps is most of s4d's time beyond the projections; a direct "
        "(Toeplitz) convolution, which ops.causal_conv_many uses for one signal but "
        "ops.causal_fft_conv does not offer per channel, measured 157 -> 138 ms there "
        "(separately, 1 thread, CPU time)."),
    "event_ssm": (
        "The scan targets (parallel scan >= 5x its sequential loop) are bounded by the harness: "
        "the same closure with the scan replaced by one elementwise product "
        "(`view_as_real(b * a).mean().backward()`) takes about 6 ms at 1 thread against "
        "31-34 ms for the sequential loop, so a scan as cheap as one elementwise product with "
        "its gradient would measure only about 5.5x. At 1 thread the parallel forward is ~3 ms "
        "(the loop's ~5 ms without gradients); the loop's cost is mostly its autograd graph of "
        "2T small steps. At the cell level the shared projections and readout dominate both."),
    "pos_mlp": (
        "pos_mlp, frame_stack and frame_conv against POPGym's MLP / Framestack / Frameconv "
        "(target 2x): each is the very layer POPGym runs (the same Linear or Conv1d maps on "
        "the same (B, T, 128) input, the same sine embedding), so both spend their time in the "
        "same matmuls; ours adds only the episode bookkeeping (positions from the counter, "
        "resets and lengths; the windows' state gather). No algorithm makes the same matmuls "
        "2x cheaper: the ratio is ~1x by construction, and the target is not met there."),
    "fwp": (
        "fwp and linear_attention against POPGym's FastWeightProgrammer / LinearAttention "
        "(target 2x): POPGym forms every memory S_t, a cumulative sum over t of the "
        "(B, T, K, K) outer products (K = 16 / 15); ours reads the memories chunk by chunk "
        "(ops.running_sum.chunked_linear_attention: within 64 steps the masked (q kᵀ) v, "
        "across chunks one carried memory), never forming S_t, and looks the sine embedding "
        "up in a table as POPGym does. The rest is the same work on both sides: LayerNorm, "
        "key/query/value, feed-forward, shortcut and the 16 -> 256 unmap, whose narrow "
        "matmuls (and the loss's (B, T, 256) gradient) are most of what remains."),
    "ffm": (
        "ffm and lru against GRU (targets 3x at B=16/T=1024, 2x at the learner minibatch): "
        "with the per-step complex exp gone (Δt ≡ 1: the decay is exp of the parameters, "
        "expanded) what is left is the projections (ffm: 128 -> 576 in, 256 -> 256 mix; lru: "
        "128 -> 2x256 in, 2x256 -> 256 + 128 -> 256 out, fwd+bwd) and the complex scan over "
        "B·T·128 (ffm) / B·T·256 (lru) complex states, saved for backward. GRU at 157 x 53 "
        "runs 53 well-shaped (157 x 256 x 768) matmuls, so at the learner shape the "
        "projections alone are ~half of GRU's time: 2x there is near the floor. Their steps "
        "cache the parameter-derived tensors (ffm: the clamped α and the (m, c) decay; lru: "
        "λ, γ and the stacked (Re, Im) weights) between no-grad steps of an unchanged module, "
        "so a step is its two matmuls."),
    "delta_net": (
        "delta_net and gated_delta_net against GRU (targets 2x at B=16/T=1024, 1x at the "
        "learner minibatch; not met) are bounded before their recurrence: their projections "
        "(128 -> 3·256 + 8 [+ 8 + 256 gated], 256 -> 256) are 164,864 / 198,656 multiply-adds "
        "per row and step, 56% / 67% of GRU's 294,912, and the short convolution, SiLU and the "
        "L2 and RMS norms are elementwise passes over the 768 q, k, v channels. With the "
        "delta-rule op replaced by o = β v (measured separately, 1 thread, CPU time, the same "
        "run: GRU 697 / 213 ms) the cells take 366 / 409 ms at B=16/T=1024 and 183 / 201 ms at "
        "the learner minibatch, 0.5x / 0.9x GRU's time without any memory. The chunkwise op "
        "(ops.delta_rule: ~67k multiply-adds per row and step at 8 heads of 32, chunks of 32; "
        "batched 32 x 32 matmuls, a triangular solve per chunk, the pass over T/32 chunks) adds "
        "~470 / ~230 ms there. The step (2.4-4.2x GRU's over three runs at load 10-12, the "
        "noisiest column) is ~45 small ops and writes the 32 KiB state of each row once."),
    "mamba": (
        "mamba and mamba2 against GRU (targets 2x at B=16/T=1024, 1x at the learner minibatch) "
        "are bounded by their projections: per row and step at input 128, hidden 256, E = 512, "
        "N = 16, mamba's in (128 -> 1024), x (512 -> 48), Δ (16 -> 512) and out (512 -> 256) "
        "maps are 294,912 multiply-adds, exactly GRU's 128 x 768 + 256 x 768, and mamba2's "
        "(128 -> 1064, 512 -> 256) 267,264; torch's fused GRU runs its matmuls at least as "
        "well, so neither can be 2x GRU with expand 2 whatever its scan costs. On top: mamba's "
        "selective scan updates E·N = 8192 states per row and step, each with its own "
        "input-dependent decay exp(Δ_t A) (elementwise, memory-bound: ~30x the GRU's state), "
        "done as a fused loop over t (ops.selective_scan: one step's decays formed and used in "
        "cache, a hand-written backward, only the states stored); the materialised form through "
        "ops.scan (mamba(scan_impl=parallel)) and mambapy's MambaBlock (its pscan over the same "
        "(B, T, E, N) tensors) are 3-7x slower. mamba2's SSD is masked (L, L) matmuls per chunk "
        "of at most 32 steps plus its conv, gated RMSNorm and projections."),
    "mlstm": (
        "mlstm against GRU (target 2x at B=16/T=1024, not met; at the learner minibatch met) is "
        "bounded by its arithmetic: per row and step its projection (128 -> 4·256 + 8) is 132,096"
        " multiply-adds and its chunkwise memory (4 heads of 64, chunks of 64: q·k and the "
        "weighted [v | 1] within a chunk, the carried [C | n] read, the chunk's state update) "
        "~66k more, ~198k against GRU's 294,912: at GRU's matmul rate at most ~1.5x GRU. In a "
        "profile at B=16, T=1024 (measured separately, 1 thread, CPU time) the projections are "
        "~19% of its time, the chunks' batched matmuls ~31%, and the rest elementwise passes over"
        " the (L, L) decay matrices (exp, masks, the normaliser: 4.2M entries each at L = 64). "
        "Chunks of 32 measured 4% faster at T = 1024 and 18% slower at the learner minibatch (53 "
        "steps: one chunk at 64, two at 32); chunks of 16 slower at both."),
    "slstm": (
        "slstm against torch's LSTM (target no slower; not met) does half LSTM's multiply-adds "
        "(the input map 128 -> 1024 and a block-diagonal recurrence, 4 heads of 64 -> 256: "
        "196,608 per row and step against LSTM's 393,216) but runs them less well: torch's LSTM "
        "is a C++ loop whose step is one (B x 256) @ (256 x 1024) matmul, ours a Python loop "
        "(ops.slstm_scan, a hand-written backward) whose step is 4 small (B x 64) @ (64 x 256) "
        "matmuls and ~12 elementwise ops forward, ~25 backward. In a profile at B=16, T=1024 "
        "(measured separately: 528 ms against LSTM's 263 ms, 1 thread, CPU time) the per-step "
        "dispatch alone is 94 ms (the same call at B = 1), the input map's two matmuls 90 ms, the"
        " recurrent matmuls ~80 ms forward and backward (~20G multiply-adds/s at these shapes), "
        "the backward's all-steps factors and elementwise ops over strided slices the rest. At "
        "the learner minibatch the loop is 53 steps long: 0.89x."),
    "elman": (
        "elman is torch's nn.RNN, the module POPGym's Elman runs: the same kernel, so the "
        "ratio is 1x up to the noise of this loaded machine (0.94x / 1.02x here)."),
    "indrnn": (
        "indrnn's sequential loop runs the elementwise recurrence with `unbind`; indexing "
        "drive[:, t] (as POPGym's IndRNN indexes x[:, t]) builds a (B, T, H) zero gradient "
        "per step in backward, O(T²) memory traffic: that is most of POPGym's IndRNN time at "
        "B=16, T=1024 (and was ours: 3.7 s before the fix)."),
}


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_run(run: Callable[[], None], clock: Callable[[], float],
             synchronize: Callable[[], None] = lambda: None) -> float:
    """Seconds of one call on `clock` (of CLOCKS): wall time, or the process's CPU time (all
    threads; with one thread, the time a loaded machine lets the call run). `synchronize`
    waits for a GPU's queued work, before the start and before the end."""
    synchronize()
    start = clock()
    run()
    synchronize()
    return clock() - start


def measure(subjects: dict[str, Callable[[], Subject]], repeats: int, steps: int,
            clock: Callable[[], float] = CLOCKS["wall"],
            synchronize: Callable[[], None] = lambda: None, device: str = "cpu"):
    """Median seconds per subject and kind ({name: {kind: seconds}}). Subjects take turns
    (round robin) so that a change of machine load hits them all alike; each kind is warmed
    up first (steps: a tenth of them). Subjects are built on `device` (torch's default
    device while they are built; their runs make their tensors as their code says)."""
    built = {}
    for name, build in subjects.items():
        torch.manual_seed(0)
        with torch.device(device) if device != "cpu" else contextlib.nullcontext():
            built[name] = build()
        for kind, run in built[name].items():
            for _ in range(max(steps // 10, 1) if kind == "step" else 1):
                run()
    times = {name: {kind: [] for kind in closures} for name, closures in built.items()}
    for _ in range(repeats):
        for name, closures in built.items():
            for kind, run in closures.items():
                times[name][kind] += [time_run(run, clock, synchronize) for _ in
                                      range(steps // repeats if kind == "step" else 1)]
    results = {}
    for name in built:
        results[name] = {kind: statistics.median(t) for kind, t in times[name].items()}
        print(f"  measured {name:22s} " + "  ".join(
            f"{kind} {_format(kind, results[name].get(kind))}" for kind in KINDS), flush=True)
    return results


def _format(kind: str, seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds * 1e6:.1f} us" if kind == "step" else f"{seconds * 1e3:.1f} ms"


def verdicts(results, cells: list[str]) -> list[tuple[str, str, str]]:
    """(check, measured, PASS/FAIL) for every target whose subject and peer were measured."""
    rows = []
    checks = list(TARGETS) + [Target(c, "step", REFERENCE, 1 / STEP_FACTOR,
                                     f"{c} step <= {STEP_FACTOR:g}x GRU step") for c in cells]
    for target in checks:
        mine = results.get(target.subject, {}).get(target.kind)
        theirs = results.get(target.peer, {}).get(target.kind)
        if mine is None or theirs is None:
            continue
        speedup = theirs / mine
        rows.append((target.text, f"{target.peer} / {target.subject} = {speedup:.2f}x",
                     "PASS" if speedup >= target.factor else "FAIL"))
    return rows


def table(results, cells: list[str]) -> list[str]:
    """One row per subject: each kind's time and its ratio to torch's GRU at that kind."""
    gru = results[REFERENCE]
    units = {"train": "ms", "learner": "ms", "value": "ms", "step": "us"}
    lines = ["| model | kind | " + " | ".join(f"{kind} ({units[kind]}) | / GRU" for kind in KINDS)
             + " |", "|---|---|" + "---:|---:|" * len(KINDS)]
    for name, times in results.items():
        cols = []
        for kind in KINDS:
            t = times.get(kind)
            if t is None:
                cols += ["n/a", "n/a"]
                continue
            scale = 1e6 if kind == "step" else 1e3
            cols += [f"{t * scale:.1f}", f"{t / gru[kind]:.2f}" if kind in gru else "n/a"]
        lines.append(f"| {name} | {'cell' if name in cells else 'peer'} | "
                     + " | ".join(cols) + " |")
    return lines


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="T=256, fewer repeats and steps")
    parser.add_argument("--models", help="comma-separated registered names (default: all); "
                                         f"available: {','.join(memory_models.available())}")
    parser.add_argument("--repeats", type=int, default=None, help="timed fwd+bwd runs (5)")
    parser.add_argument("--steps", type=int, default=None, help="timed rollout steps (300)")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"comma-separated subset of {','.join(KINDS)}")
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="wall time, or CPU time (use with --threads 1 on a shared machine)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="markdown results file")
    parser.add_argument("--remark", default="",
                        help="a line about the conditions of this run, written to the results")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: leave as is)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where subjects and inputs live (cuda: the GPU, wall clock)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    synchronize = lambda: None  # noqa: E731
    if args.device == "cuda":
        if not torch.cuda.is_available():
            parser.error(f"--device cuda: no CUDA device (torch.cuda.is_available() is False; "
                         f"torch {torch.__version__}, built with CUDA {torch.version.cuda})")
        if args.clock == "cpu":
            parser.error("--clock cpu times the host, not the GPU: use --clock wall with "
                         "--device cuda")
        synchronize = torch.cuda.synchronize
    device = (f"GPU: {torch.cuda.get_device_name()}" if args.device == "cuda"
              else f"CPU: {cpu_name()}")

    sizes = Sizes(steps=256) if args.quick else Sizes()
    repeats = args.repeats or (3 if args.quick else 5)
    n_steps = args.steps or (100 if args.quick else 300)
    cells = memory_models.available()
    if args.models:
        cells = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = sorted(set(cells) - set(memory_models.available()))
        if unknown:
            parser.error(f"unknown model(s) {unknown}; available: {memory_models.available()}")

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if set(kinds) - set(KINDS):
        parser.error(f"unknown kinds {sorted(set(kinds) - set(KINDS))}; available: {KINDS}")

    def only(build: Callable[[], Subject]) -> Callable[[], Subject]:
        return lambda: {k: run for k, run in build().items() if k in kinds}

    subjects: dict[str, Callable[[], Subject]] = {}
    for peer, (build, related) in PEERS.items():
        if not related or set(related) & set(cells):
            subjects[peer] = only(lambda build=build: build(sizes))
    for cell in cells:
        subjects[cell] = only(lambda cell=cell: cell_subject(cell, sizes))

    print(f"B={sizes.batch} T={sizes.steps} input={sizes.input} hidden={sizes.hidden} "
          f"memory={sizes.memory} state={sizes.state} float32 {device} "
          f"threads={torch.get_num_threads()}")
    load_before = os.getloadavg()
    results = measure(subjects, repeats, n_steps, CLOCKS[args.clock], synchronize, args.device)
    load_after = os.getloadavg()
    lines = table(results, cells)
    checks = verdicts(results, cells)

    command = "python benchmarks/cells.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = [
        "# Cell speed benchmark", "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- command: `{command.strip()}`",
        f"- torch {torch.__version__}, {torch.get_num_threads()} threads, {device}; "
        f"clock: {args.clock} time",
        f"- sizes: B={sizes.batch}, T={sizes.steps}, input={sizes.input}, hidden={sizes.hidden}, "
        f"memory_size={sizes.memory}, state_size={sizes.state}, float32",
        *(f"- {name} runs at its peer's size: "
          + ", ".join(f"{k}={v}" for k, v in CELL_KEYWORDS[name](sizes).items())
          + " (popgym S4D's own rule); s4d(state_size=64) is s4d at its default size"
          for name in SIZE_OF_PEER if name in cells),
        "- the other cells run at their registered defaults (ffm: memory 32 x context 4, "
        "the FFM paper's RLlib model; lru: 80 modes; fwp / linear_attention: key size "
        "round(sqrt(256)) = 16 / round(sqrt(256) - 1) = 15, as POPGym's; frame_stack / "
        "frame_conv: stack_size 4, as POPGym's), except: " + "; ".join(
            f"{name} " + ", ".join(f"{k}={v}" for k, v in CELL_KEYWORDS[name](sizes).items())
            for name in CELL_KEYWORDS if name in cells and name not in SIZE_OF_PEER),
        "- popgym.<Class> (Elman, IndRNN, MLP, FastWeightProgrammer, LinearAttention, "
        "Framestack, Frameconv): POPGym's RLlib model at input 128 / hidden 256 with its "
        "default config, run as its BaseModel.forward runs the memory (the sine position "
        "embedding where its config has one, then forward_memory; its step is the same call "
        "on T = 1), from a non-zero state; its feature map and heads are left out, as ours.",
        *([f"- {args.remark}"] if args.remark else []),
        f"- train: B={sizes.batch} x T={sizes.steps}; learner: the PPO minibatch "
        f"{sizes.learner[0]} rows x {sizes.learner[1]} steps (RepeatPreviousEasy at POPGym's "
        f"protocol); both scan from a non-zero initial state, loss = y.mean(), backward. "
        f"value: the GAE value pass, {sizes.value[0]} rows x {sizes.value[1]} steps, forward "
        f"without gradients. Median of {repeats} after a warm-up. step: no grad, batch "
        f"{sizes.batch}, median of {n_steps}. Subjects take turns (round robin) within each "
        "repeat.",
        f"- load average (1 min) {load_before[0]:.2f} at the start, {load_after[0]:.2f} at the "
        "end; " + ("on the GPU (--device cuda)" if args.device == "cuda"
                   else "CPU only (no GPU was available to this run)"),
        "- GRU step = one `nn.GRU` call on a length-1 sequence; popgym.LMU step = one "
        "`LMUCell` call; popgym.LMUFFT has no initial state and no step.", "",
        *lines, "",
        "| target | measured | result |", "|---|---|---|",
        *(f"| {text} | {measured} | {result} |" for text, measured, result in checks), "",
        *(f"{note}\n" for name, note in NOTES.items() if name in cells),
    ]
    print("\n".join(lines + [""] + [f"{r:4s}  {t}: {m}" for t, m, r in checks]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(report))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
