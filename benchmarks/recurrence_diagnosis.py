"""Why `shm` is at chance and `mlstm`, `slstm` below GRU on RepeatPreviousEasy (issue 27):
the cells trained supervised on the recall the task asks for, in the policy's own network.

    .venv/bin/python benchmarks/recurrence_diagnosis.py [--parts cells controls fast shm]
        [--tasks repeat_previous delay3 delay12] [--labels 'shm no shortcut' ...] [--seeds 0 1]
        [--updates 732]
        [--out benchmarks/results/recurrences/diagnosis.md]

The task. popgym's RepeatPreviousEasy (RepeatPrevious(num_decks=1, k=4)) deals the 52 cards
of a shuffled deck one per step; the agent acts after each of the first 51 observations and,
from the 4th on, is rewarded ±1/48 for naming the suit of the card seen 3 observations
before (the env's k = 4 counts the current card): target_t = suit_{t-3}, t = 3 .. 50. The
observation is envs.make_env's flat vector [suit one-hot (4), previous action one-hot (4; 0
at t = 0), first-step flag one-hot (2)]. `check_task` holds the generator below to the real
env (observations and reward signs, one episode with random actions), so the probe's
sequences are the env's. A greedy policy with per-step accuracy a scores 2a − 1 (the study's
MMER scale; chance a = 1/4, −0.5).

Tasks (51 steps per sequence, loss and accuracy on t >= delay):
  repeat_previous  the env's sequences, previous actions uniform at random (as a policy that
                   has not learned yet), target suit_{t-3}
  delay3           a plain delay: i.i.d. uniform symbols of 4, [one-hot, first-step flag],
                   target x_{t-3}: the same recall without the deck's draws without replacement
  delay12          the same, target x_{t-12}: a longer span than the 3 steps asked

The model is the PPO module's actor (experiments.rllib.rl_module.build_layers at the study's
model_config, pre 64, hidden 64, head 64: pre-layers, the memory, the actor MLP), trained by
cross-entropy with Adam on minibatches of 20 sequences (1020 steps, the study's 1024-step
minibatch) for 732 updates: the study's PPO update count (150k env steps / 4096 per batch ×
4 minibatches × 5 epochs), at the study's lr 5e-4 and at 3e-3. Supervision gives the target
at every step; PPO gets ±1/48 after a sampled action: the probe bounds what the cell can
learn at the study's budget and step size. Accuracy on 512 held-out sequences.

SHM's variants (keywords of the cell; `Θ×c`: Θ scaled by c after its init, c = 0 gives
C_t ≡ 1 at the start, a memory that only sums its writes until Θ has learned) separate its
causes: the memory's size d, the calibration's table and draw, the embedding, the shortcut,
the calibration's scale. For SHM the table also gives the read's share of the memory's output
before the output projection, |M_t q_t| / (|M_t q_t| + |W_s x̂_t + b_s|), and the mean
|C_t − 1| (both means over steps and rows, after training): how much the memory is used and
how far it is from keeping every entry.

Parts: `cells` (gru, mlstm, slstm, shm) and `controls` (CONTROLS: fwp, mamba and delta_net with and
without their convolution) at the study's lr, `fast` the
cells at lr 3e-3, `shm` SHM's variants at the study's lr; each on every chosen task. Runs on
the CPU with one thread (torch.set_num_threads(1)); prints the table row by row, --out
appends it to a file as it goes.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import envs  # noqa: E402
from experiments.rllib.rl_module import build_layers, check_model_config  # noqa: E402
from memory_models.ops.scan import SCAN_IMPLS  # noqa: E402
from parameter_counts import parse_model  # noqa: E402

MODEL_CONFIG = {"pre_size": 64, "hidden_size": 64, "head_size": 64}   # configs/recurrences.yaml
STEPS = 51                 # actions per RepeatPreviousEasy episode (52 cards, the last unplayed)
SUITS = 4
LAG = 3                    # target_t = suit_{t-3}
UPDATES = 732              # the study's PPO updates: 150k / 4096 batches x 4 minibatches x 5
ROWS = 20                  # sequences per minibatch: 20 x 51 = 1020 steps (the study's 1024)
TEST_ROWS = 512
STUDY_LR = 5e-4
ENV = "popgym-RepeatPreviousEasy-v0"


# ---------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class Task:
    name: str
    lag: int
    deck: bool             # draws without replacement from a 52-card deck, the env's layout

    def sample(self, rows: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Observations (rows, STEPS, features) and targets (rows, STEPS) (-1 before lag)."""
        if self.deck:
            order = torch.rand(rows, SUITS * 13, generator=generator).argsort(-1)
            suits = (order // 13)[:, :STEPS]
            actions = torch.randint(SUITS, (rows, STEPS), generator=generator)
            obs = env_observations(suits, actions)
        else:
            suits = torch.randint(SUITS, (rows, STEPS), generator=generator)
            first = torch.zeros(rows, STEPS, 1)
            first[:, 0] = 1
            obs = torch.cat([F.one_hot(suits, SUITS).float(), first], -1)
        targets = torch.full_like(suits, -1)
        targets[:, self.lag:] = suits[:, :-self.lag]
        return obs, targets


TASKS = {"repeat_previous": Task("repeat_previous", LAG, deck=True),
         "delay3": Task("delay3", 3, deck=False),
         "delay12": Task("delay12", 12, deck=False)}


def env_observations(suits: Tensor, actions: Tensor) -> Tensor:
    """envs.make_env(ENV)'s observations (rows, T, 10) for suits (rows, T) seen and actions
    (rows, T) taken after each: [suit, previous action (0 at t = 0), first-step flag]."""
    previous = torch.cat([torch.zeros_like(actions[:, :1]), actions[:, :-1]], 1)
    first = torch.zeros_like(suits)
    first[:, 0] = 1
    return torch.cat([F.one_hot(suits, SUITS), F.one_hot(previous, SUITS),
                      F.one_hot(1 - first, 2).flip(-1)], -1).float()


def check_task(seed: int = 0) -> None:
    """One env episode with random actions: its observations are env_observations' and its
    rewards are +1/48 exactly where the action names suit_{t-3} (t >= 3), else -1/48 (0
    before t = 3). Raises AssertionError otherwise."""
    env = envs.make_env(ENV)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    seen, actions, rewards = [obs], [], []
    for _ in range(STEPS):
        action = int(rng.integers(SUITS))
        obs, reward, terminated, truncated, _ = env.step(action)
        actions.append(action)
        rewards.append(reward)
        if terminated or truncated:
            break
        seen.append(obs)
    assert terminated and len(actions) == STEPS, (len(actions), STEPS)
    observed = torch.tensor(np.array(seen))                               # (STEPS, 10)
    suits = observed[:, :SUITS].argmax(-1)
    expected = env_observations(suits[None], torch.tensor(actions)[None])[0]
    assert torch.equal(observed, expected), "the env's observation layout changed"
    signs = [0.0] * LAG + [1.0 if actions[t] == suits[t - LAG] else -1.0
                           for t in range(LAG, STEPS)]
    assert np.allclose(np.array(rewards) * (STEPS - LAG), signs), "the env's lag changed"


# ---------------------------------------------------------------------------- the probe
class Actor(nn.Module):
    """The PPO module's pre-layers, memory and actor (its critic left out): logits (B, T, 4)."""

    def __init__(self, spec: str, features: int):
        super().__init__()
        name, kwargs = parse_model(spec)
        config = check_model_config({"memory": name, "memory_kwargs": kwargs, **MODEL_CONFIG})
        self.pre, self.memory, self.actor, _ = build_layers(features, SUITS, config)

    def forward(self, obs: Tensor) -> Tensor:
        state = self.memory.initial_state(obs.shape[0])
        features, _ = self.memory.scan(self.pre(obs), state)
        return self.actor(features)


@dataclass(frozen=True)
class Variant:
    label: str
    spec: str                   # registry name[:key=value,...]
    lr: float = STUDY_LR
    theta_scale: float = 1.0    # shm only: Θ multiplied by this after its init


def accuracy(model: Actor, obs: Tensor, targets: Tensor) -> float:
    with torch.no_grad():
        predicted = model(obs).argmax(-1)
    valid = targets >= 0
    return float((predicted[valid] == targets[valid]).float().mean())


def shm_usage(model: Actor, obs: Tensor) -> tuple[float, float]:
    """(mean |M q| / (|M q| + |s|), mean |C − 1|) over steps, rows (and C's entries) of an
    SHM actor on obs: the read's share of the memory's output, how far C is from keeping."""
    memory = model.memory
    with torch.no_grad():
        x = model.pre(obs)
        rows, steps = obs.shape[:2]
        positions = torch.arange(steps, dtype=x.dtype).expand(rows, steps)
        calibration, write, q, shortcut = memory.elements(x, positions)
        memories = SCAN_IMPLS[memory.scan_impl](                          # M_t (B, T, d, d)
            calibration, write, memory.initial_state(rows)["memory"],
            torch.zeros(rows, steps, dtype=torch.bool), torch.full((rows,), steps))
        read = torch.matmul(memories, q[..., None])[..., 0].norm(dim=-1)
        skip = (shortcut.expand_as(q) if shortcut.ndim else torch.zeros_like(q)).norm(dim=-1)
        share = float((read / (read + skip + 1e-12)).mean())
        return share, float((calibration - 1).abs().mean())


def train(variant: Variant, task: Task, seed: int, updates: int) -> dict:
    """Train one actor; -> accuracy at the end, updates to reach 0.9 (None if never), time,
    and for SHM shm_usage's two numbers."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(10_000 + seed)
    test_obs, test_targets = task.sample(TEST_ROWS, torch.Generator().manual_seed(seed))
    model = Actor(variant.spec, test_obs.shape[-1])
    if variant.theta_scale != 1.0:
        with torch.no_grad():
            model.memory.thetas.mul_(variant.theta_scale)
    optimiser = torch.optim.Adam(model.parameters(), lr=variant.lr)
    reached, start = None, time.process_time()
    for update in range(1, updates + 1):
        obs, targets = task.sample(ROWS, generator)
        logits = model(obs)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if reached is None and update % 25 == 0 and \
                accuracy(model, test_obs[:128], test_targets[:128]) >= 0.9:
            reached = update
    result = {"accuracy": accuracy(model, test_obs, test_targets), "reached": reached,
              "seconds": time.process_time() - start}
    if parse_model(variant.spec)[0] == "shm":
        result["share"], result["calibration"] = shm_usage(model, test_obs[:64])
    return result


# ---------------------------------------------------------------------------- the study
CELLS = [Variant("gru", "gru"), Variant("mlstm", "mlstm"), Variant("slstm", "slstm"),
         Variant("shm", "shm")]
# the same probe on cells of the study's other outcome: fwp (SHM's family, content-addressed
# fast weights, at chance in RL as shm), and mamba, delta_net (which solve the task in RL)
# with and without their causal convolution over the last 4 inputs (a window that holds
# suit_{t-3})
CONTROLS = [Variant("fwp", "fwp"), Variant("mamba", "mamba"),
            Variant("mamba, no conv (conv_kernel=1)", "mamba:conv_kernel=1"),
            Variant("delta_net", "delta_net"),
            Variant("delta_net, no conv", "delta_net:use_short_conv=False")]
SHM_VARIANTS = [
    Variant("shm d=48 (GRU's parameter count)", "shm:memory_size=48"),
    Variant("shm one θ (L=1, the authors' released code)", "shm:num_thetas=1"),
    Variant("shm θ drawn at random (the paper)", "shm:theta_draw='random'"),
    Variant("shm no position embedding", "shm:position_embedding=False"),
    Variant("shm no shortcut", "shm:shortcut=False"),
    Variant("shm Θ×0 at init (C ≡ 1 at the start)", "shm", theta_scale=0.0),
    Variant("shm Θ×10", "shm", theta_scale=10.0),
]


PARTS = {"cells": CELLS, "controls": CONTROLS,
         "fast": [Variant(v.label, v.spec, 3e-3, v.theta_scale) for v in CELLS],
         "shm": SHM_VARIANTS}


def plan(parts: list[str], tasks: list[str],
         labels: list[str] | None = None) -> list[tuple[Variant, Task]]:
    """(variant, task) pairs of the chosen PARTS on the chosen TASKS, task by task; only the
    variants labelled as in `labels` if given (an unknown label raises ValueError)."""
    chosen = [v for part in parts for v in PARTS[part]]
    if labels is not None:
        known = [v.label for v in chosen]
        unknown = [label for label in labels if label not in known]
        if unknown:
            raise ValueError(f"unknown labels {unknown} in parts {parts}; valid: {known}")
        chosen = [v for v in chosen if v.label in labels]
    return [(v, TASKS[t]) for t in tasks for v in chosen]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--labels", nargs="+", default=None,
                        help="only the variants with these labels (of the chosen parts)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--updates", type=int, default=UPDATES)
    parser.add_argument("--out", type=Path, default=None, help="appends the command and the "
                        "table, row by row")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    check_task()
    command = " ".join(["benchmarks/recurrence_diagnosis.py",
                        *(repr(a) if " " in a else a for a in (argv or sys.argv[1:]))])
    header = (f"{datetime.date.today()}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} thread, {args.updates} updates of {ROWS} sequences, "
              f"seeds {args.seeds}; accuracy on {TEST_ROWS} held-out sequences "
              f"(2a - 1: the study's MMER scale, chance -0.5)")
    lines = [f"    .venv/bin/python {command}", "", header, "",
             "| task | cell | lr | accuracy per seed | 2a - 1 (mean) | updates to 0.9 | "
             "shm: read share, mean abs(C - 1) | CPU s |", "|---|---|---|---|---|---|---|---|"]
    emit(lines, args.out)
    for variant, task in plan(args.parts, args.tasks, args.labels):
        results = [train(variant, task, seed, args.updates) for seed in args.seeds]
        accuracies = [r["accuracy"] for r in results]
        reached = ", ".join(str(r["reached"] or "-") for r in results)
        shm = ("; ".join(f"{r['share']:.2f}, {r['calibration']:.2f}" for r in results)
               if "share" in results[0] else "")
        emit([f"| {task.name} | {variant.label} | {variant.lr:g} | "
              f"{', '.join(f'{a:.3f}' for a in accuracies)} | "
              f"{2 * np.mean(accuracies) - 1:+.2f} | {reached} | {shm} | "
              f"{sum(r['seconds'] for r in results):.0f} |"], args.out)
    emit([""], args.out)


def emit(lines: list[str], out: Path | None) -> None:
    """Print lines, and append them to `out` if given."""
    print("\n".join(lines), flush=True)
    if out:
        with out.open("a") as file:
            file.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
