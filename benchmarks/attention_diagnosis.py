"""Why `transformer` stays at chance on RepeatPreviousEasy (issue 26): a supervised probe.

RepeatPreviousEasy (popgym: one deck, k = 4) deals 52 cards; the agent sees one suit per
step and from its 4th observation on must name the suit it saw 3 observations earlier:

    target_t = suit(o_{t−3}),  t = 3 .. 50          (48 rewarded steps, ±1/48 each)
    episode return = 2 · accuracy − 1               (chance, a uniform guess: −0.5)

The probe trains the RL module's own network (experiments.rllib.rl_module.build_layers:
pre-layers, memory, actor head; pre = hidden = head = 64 as configs/attention.yaml) on
whole episodes of the wrapped task (envs.make_env: suit one-hot, previous action, first-step
flag; the actions uniformly random, as an untrained policy's) with a cross-entropy loss on
the target suit, Adam, 32 episodes a step. No RL: if a cell cannot learn the recall from
labels, PPO's advantages will not teach it either.

Variants of the transformer cell (window W, learning rate, layers) and of its `position`
keyword (memory_models.attention):

    alibi       s_{t,j} = q_t·k_j/√d − m_h (t − j)              the default, as the study ran
    none        s_{t,j} = q_t·k_j/√d
    learned     s_{t,j} = q_t·k_j/√d + b_h[t − j]               b (n, W) learned, from −m_h δ
    rotary      s_{t,j} = (R_t q_t)·(R_j k_j)/√d                R_t: rotary, angle t θ_i

beside `gru` and `gtrxl` (Transformer-XL relative positions). Windows above 64 are left out:
an episode has 51 steps, so every W >= 51 is the same computation as W = 64 here. For the
one-layer transformers the table gives the attention mass at the target offset δ = 3 (the largest over heads,
averaged over held-out steps t >= 6), so the learned pattern can be read.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/attention_diagnosis.py --seeds 0 1 2 \
        --out benchmarks/results/attention/diagnosis.md

One torch thread (torch.set_num_threads(1)): about 30 s a transformer run (600 steps) on a
free core, the variants one after another; the report is rewritten after each variant.
`--only LABEL ...` runs some of them.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import envs
from experiments.rllib.rl_module import build_layers, check_model_config

TASK = "popgym-RepeatPreviousEasy-v0"
OFFSET = 3                  # target_t = suit(o_{t−OFFSET}): popgym's k = 4 counts o_t itself
SUITS = 4                   # the observation's first SUITS features: the suit one-hot
SIZES = {"pre_size": 64, "hidden_size": 64, "head_size": 64}     # configs/attention.yaml
CHANCE_LOSS = math.log(SUITS)


@dataclass
class Variant:
    """One probe run: a registered memory, its keywords and the learning rate."""
    label: str
    memory: str
    kwargs: dict = field(default_factory=dict)
    lr: float = 5e-4


VARIANTS = [
    Variant("transformer W=64 (study)", "transformer", {"window": 64}),
    Variant("transformer position=rotary", "transformer", {"window": 64, "position": "rotary"}),
    Variant("transformer position=learned", "transformer", {"window": 64, "position": "learned"}),
    Variant("transformer position=none", "transformer", {"window": 64, "position": "none"}),
    Variant("transformer W=4", "transformer", {"window": 4}),
    Variant("gru (study)", "gru"),
    Variant("gtrxl W=64 (study)", "gtrxl", {"window": 64}),
    Variant("transformer lr 2e-3", "transformer", {"window": 64}, lr=2e-3),
    Variant("transformer lr 1e-4", "transformer", {"window": 64}, lr=1e-4),
    Variant("transformer layers=2", "transformer", {"window": 64, "layers": 2}),
]


def episodes(count: int, seed: int) -> tuple[Tensor, Tensor]:
    """`count` episodes of the wrapped task under uniformly random actions.

    Returns obs (count, L, D) float32 and targets (count, L) long: the suit of o_{t−3}, −1
    where no reward is given (t < 3). Checks the targets against the task's rewards: a
    reward > 0 exactly where the action taken at t equals target_t."""
    env = envs.make_env(TASK)
    env.action_space.seed(seed)
    all_obs, all_targets = [], []
    for i in range(count):
        obs, _ = env.reset(seed=seed * 1_000_003 + i)
        seen, targets = [obs], []
        while True:
            action = int(env.action_space.sample())
            t = len(seen) - 1
            target = int(np.argmax(seen[t - OFFSET][:SUITS])) if t >= OFFSET else -1
            obs, reward, terminated, truncated, _ = env.step(action)
            if (reward > 0) != (target >= 0 and action == target) or (reward == 0) != (target < 0):
                raise AssertionError(f"target {target} disagrees with reward {reward} at t={t}")
            targets.append(target)
            if terminated or truncated:
                break
            seen.append(obs)
        all_obs.append(np.stack(seen))
        all_targets.append(targets)
    return torch.tensor(np.stack(all_obs)), torch.tensor(all_targets)


def build(variant: Variant, obs_size: int) -> nn.Module:
    config = check_model_config({"memory": variant.memory, "memory_kwargs": variant.kwargs,
                                 **SIZES})
    pre, memory, actor, _ = build_layers(obs_size, SUITS, config)
    return nn.ModuleDict({"pre": pre, "memory": memory, "actor": actor})


def logits(model: nn.Module, obs: Tensor) -> Tensor:
    """(B, L, SUITS) from whole episodes (B, L, D), each from the memory's initial state."""
    memory = model["memory"]
    state = memory.initial_state(obs.shape[0], dtype=obs.dtype)
    features, _ = memory.scan(model["pre"](obs), state)
    return model["actor"](features)


def evaluate(model: nn.Module, obs: Tensor, targets: Tensor) -> tuple[float, float]:
    """(cross-entropy, accuracy) over the rewarded steps."""
    with torch.no_grad():
        out = logits(model, obs)
    rewarded = targets >= 0
    loss = F.cross_entropy(out[rewarded], targets[rewarded]).item()
    accuracy = (out[rewarded].argmax(-1) == targets[rewarded]).float().mean().item()
    return loss, accuracy


def attention_by_offset(cell: nn.Module, x: Tensor, offsets: int = 8) -> Tensor:
    """The one-layer transformer's mean attention weight (n, offsets) at δ = 0 .. offsets − 1
    over the steps t >= offsets − 2 of x (B, L, input), recomputed from its parameters:
    softmax_j(q_t·k_j/√d + position term(t − j)) over t − W < j <= t."""
    with torch.no_grad():
        u = cell.input(x)
        q, k, _ = cell.qkv(cell.attention_norm(u)).chunk(3, dim=-1)
        batch, steps = x.shape[:2]
        q, k = cell.rotated(*(t.view(batch, steps, cell.heads, cell.head_size) for t in (q, k)))
        q, k = q.transpose(1, 2), k.transpose(1, 2)                             # (B, n, L, d)
        position = torch.arange(steps)
        delta = position[:, None] - position[None, :]                           # (L, L)
        seen = (delta >= 0) & (delta < cell.window)
        scores = q @ k.transpose(-1, -2) / math.sqrt(cell.head_size) \
            + cell.position_bias(q, delta.clamp(0, cell.window - 1))            # (B, n, L, L)
        weights = scores.masked_fill(~seen, -torch.inf).softmax(-1)
        t = torch.arange(offsets - 2, steps)
        by_offset = torch.stack([weights[:, :, t, t - d].mean((0, 2))
                                 for d in range(min(offsets, len(t)))], -1)
    return by_offset                                                            # (n, offsets)


def train(variant: Variant, data, seed: int, steps: int, batch: int, every: int) -> dict:
    (train_obs, train_targets), (test_obs, test_targets) = data
    torch.manual_seed(seed)
    model = build(variant, train_obs.shape[-1])
    optimiser = torch.optim.Adam(model.parameters(), lr=variant.lr)
    generator = torch.Generator().manual_seed(seed)
    curve, solved_at, start = [], None, time.perf_counter()
    for step in range(1, steps + 1):
        rows = torch.randint(len(train_obs), (batch,), generator=generator)
        targets = train_targets[rows]
        out = logits(model, train_obs[rows])
        loss = F.cross_entropy(out[targets >= 0], targets[targets >= 0])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % every == 0:
            test_loss, accuracy = evaluate(model, test_obs, test_targets)
            curve.append((step, test_loss, accuracy))
            if solved_at is None and accuracy >= 0.9:
                solved_at = step
    result = {"curve": curve, "solved_at": solved_at, "seconds": time.perf_counter() - start}
    memory = model["memory"]
    if variant.memory == "transformer" and "layers" not in variant.kwargs:
        result["attention"] = attention_by_offset(memory, model["pre"](test_obs))
    return result


def fmt_steps(value) -> str:
    return "—" if value is None else str(value)


def report(results: dict, args) -> str:
    """The markdown report of the variants run so far (`results`: label -> runs by seed)."""
    seeds = args.seeds
    lines = [
        "# Why `transformer` is at chance on RepeatPreviousEasy: the supervised probe",
        "",
        "    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/attention_diagnosis.py "
        f"--seeds {' '.join(map(str, seeds))} --out benchmarks/results/attention/diagnosis.md",
        "",
        f"One torch thread, {platform.machine()} CPU, torch {torch.__version__}. The RL "
        "module's network (pre 64, hidden 64, head 64) trained with cross-entropy on the "
        f"target suit of whole episodes ({args.train_episodes} training episodes under random "
        f"actions, {args.batch} a step, Adam), tested on {args.test_episodes} held-out "
        f"episodes every {args.every} steps, {args.steps} steps (the study's PPO run: 740 Adam "
        "steps, 37 iterations x 5 epochs x 4 minibatches). Chance: accuracy 0.25, loss ln 4 = "
        f"{CHANCE_LOSS:.3f}, return −0.5; return = 2 · accuracy − 1 (the study's MMER scale: "
        "transformer −0.33, GRU −0.06). Seeds " + ", ".join(map(str, seeds)) + ".",
        "",
        "| variant | lr | test accuracy (per seed) | test loss | return | steps to 90% | "
        "attention at δ = 3 (best head) | s / run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    done = [variant for variant in VARIANTS if variant.label in results]
    for variant in done:
        runs = results[variant.label]
        accuracy = [r["curve"][-1][2] for r in runs]
        loss = np.mean([r["curve"][-1][1] for r in runs])
        attention = [r["attention"][:, OFFSET].max().item() for r in runs if "attention" in r]
        lines.append(
            f"| {variant.label} | {variant.lr:g} | "
            + " / ".join(f"{a:.3f}" for a in accuracy)
            + f" | {loss:.3f} | {2 * np.mean(accuracy) - 1:+.2f} | "
            + " / ".join(fmt_steps(r["solved_at"]) for r in runs) + " | "
            + (" / ".join(f"{a:.2f}" for a in attention) if attention else "n/a")
            + f" | {np.mean([r['seconds'] for r in runs]):.0f} |")
    lines += ["", "Mean attention weight by offset δ (rows: heads; seed "
              f"{seeds[0]}, held-out steps t >= 6; δ = 3 is the target):", ""]
    for variant in done:
        run = results[variant.label][0]
        if "attention" not in run:
            continue
        table = run["attention"]
        lines += [f"{variant.label}:", "", "| head | " + " | ".join(
            f"δ={d}" for d in range(table.shape[1])) + " |",
            "|---" * (table.shape[1] + 1) + "|"]
        lines += [f"| {h} | " + " | ".join(f"{w:.2f}" for w in row) + " |"
                  for h, row in enumerate(table.tolist())]
        lines.append("")
    lines += ["Test accuracy by step (seed " + str(seeds[0]) + "):", "",
              "| variant | " + " | ".join(str(s) for s, _, _ in
                                         results[done[0].label][0]["curve"]) + " |",
              "|---" * (len(results[done[0].label][0]["curve"]) + 1) + "|"]
    for variant in done:
        lines.append(f"| {variant.label} | " + " | ".join(
            f"{a:.2f}" for _, _, a in results[variant.label][0]["curve"]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600,
                        help="Adam steps per run (the study's PPO run makes 740: 37 iterations "
                             "x 5 epochs x 4 minibatches)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--batch", type=int, default=32, help="episodes per step")
    parser.add_argument("--every", type=int, default=200, help="steps between test passes")
    parser.add_argument("--train-episodes", type=int, default=1024)
    parser.add_argument("--test-episodes", type=int, default=128)
    parser.add_argument("--only", nargs="*", help="labels of the variants to run (default all)")
    parser.add_argument("--out", help="write the markdown report here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    global VARIANTS
    if args.only:
        VARIANTS = [v for v in VARIANTS if v.label in args.only]
    data = (episodes(args.train_episodes, seed=1), episodes(args.test_episodes, seed=2))
    results = {}
    for variant in VARIANTS:
        results[variant.label] = []
        for seed in args.seeds:
            run = train(variant, data, seed, args.steps, args.batch, args.every)
            results[variant.label].append(run)
            step, loss, accuracy = run["curve"][-1]
            print(f"{variant.label:30s} seed {seed}: accuracy {accuracy:.3f} loss {loss:.3f} "
                  f"(90% at {fmt_steps(run['solved_at'])}) {run['seconds']:.0f}s", flush=True)
        text = report(results, args)            # rewritten after each variant: the runs so far
        if args.out:
            with open(args.out, "w") as file:
                file.write(text)
    print(text)


if __name__ == "__main__":
    main()
