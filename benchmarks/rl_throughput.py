"""PPO env steps per second on CPU for every registered memory beside its peers, in one run.

    .venv/bin/python benchmarks/rl_throughput.py [--quick] [--models gru,lmu] [--iterations N]
                                                 [--rounds R]

Every subject trains PPO on the same POPGym task with the same env runners (2 runners x 8 envs,
complete episodes), batch, epochs, minibatch and sizes (obs -> 128 -> memory 256 -> heads 128,
max_seq_len 64; memory kwargs of MEMORY_KWARGS). Throughput = env steps sampled / wall time of
`algo.train()`, summed over the measured iterations after one warm-up iteration (sampling and
learning both count).

Subjects:
  <memory>         ours, new API stack: MemoryRLModule via experiments.rllib.ppo.ppo_config
  old:<memory>     ours, old API stack: the "memrl_<memory>" custom model
                   (experiments.rllib.old_stack)
  rllib-lstm       RLlib's built-in LSTM, new stack (DefaultPPOTorchRLModule, use_lstm=True,
                   encoder shared by actor and critic as ours is)
  popgym-GRU / popgym-LMU / popgym-S4D
                   POPGym's own old-stack models (popgym.baselines.ray_models) with the
                   custom_model_config of popgym/baselines/ppo.py

Targets: each memory >= 0.7x rllib-lstm; each memory with a POPGym peer (PEERS) >= that peer.
Writes the table to benchmarks/results/rl_throughput.md (--out to change). A subject that fails
to build or train is listed with its error instead of a number.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results" / "rl_throughput.md"
REFERENCE = "rllib-lstm"
LSTM_TARGET = 0.7
# our memory -> the POPGym old-stack model of the same cell
PEERS = {"gru": "popgym-GRU", "lmu": "popgym-LMU", "s4d": "popgym-S4D"}
# every subject with a POPGym peer (ours on the new stack, and "old:<name>" on the old) -> it
PEER_OF = {f"old:{m}": p for m, p in PEERS.items()} | PEERS
POPGYM_MODELS = tuple(PEERS.values())
# memory kwargs matching the POPGym peer's sizes (the others' defaults match already: lmu
# memory_size 256 = hidden, theta 64). POPGym's S4D: d_state = round(sqrt(256) / 2) * 2 = 16,
# i.e. 8 complex modes per channel, as our state_size 16.
MEMORY_KWARGS = {"s4d": {"state_size": 16}}


@dataclass(frozen=True)
class Setup:
    env: str = "popgym-RepeatPreviousEasy-v0"
    env_runners: int = 2
    envs_per_runner: int = 8
    train_batch: int = 2048
    minibatch: int = 1024
    epochs: int = 2
    max_seq_len: int = 64
    iterations: int = 3              # measured, after one warm-up iteration
    pre_size: int = 128
    hidden_size: int = 256
    head_size: int = 128

    def sizes(self) -> dict:
        """The widths, as model configs name them."""
        return {"pre_size": self.pre_size, "hidden_size": self.hidden_size,
                "head_size": self.head_size}


QUICK = Setup(train_batch=1024, minibatch=512, epochs=1, iterations=2)   # use with --rounds 1


# --------------------------------------------------------------------------- configs
def ours(memory: str, setup: Setup, stack: str = "new"):
    """Our memory (or a POPGym model, "popgym:<Class>") by experiments.rllib.ppo's one
    dispatch, POPGym's PPO values (RLlib's defaults where POPGym set none) at this setup."""
    from experiments.rllib.ppo import algorithm_config
    model = {"name": memory, "kwargs": MEMORY_KWARGS.get(memory, {}), "stack": stack}
    return algorithm_config(model, setup.env, seed=0, sizes=setup.sizes(),
                            ppo={**_new_stack_training(setup), "max_seq_len": setup.max_seq_len},
                            num_env_runners=setup.env_runners,
                            num_envs_per_env_runner=setup.envs_per_runner)


def rllib_lstm(setup: Setup):
    from experiments.rllib.defaults import POPGYM_PPO
    runners = {"num_env_runners": setup.env_runners,
               "num_envs_per_env_runner": setup.envs_per_runner,
               "batch_mode": "complete_episodes"}
    training = {**_new_stack_training(setup), "lambda_": POPGYM_PPO["lambda_"],
                "gamma": POPGYM_PPO["gamma"], "vf_loss_coeff": POPGYM_PPO["vf_loss_coeff"]}
    return rllib_lstm_config(setup.env, setup.sizes(), setup.max_seq_len, runners, training)


def rllib_lstm_config(env: str, sizes: dict, max_seq_len: int, env_runners: dict,
                      training: dict):
    """RLlib's built-in LSTM on the new stack in our layout: obs -> pre_size -> LSTM
    (hidden_size) -> actor and critic heads (head_size x 2), the encoder shared by both as
    ours is; `env_runners` and `training` as PPOConfig's methods take them."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    from experiments.rllib.settings import register_rllib_envs
    register_rllib_envs()
    model = DefaultModelConfig(fcnet_hiddens=[sizes["pre_size"]], fcnet_activation="relu",
                               use_lstm=True, lstm_cell_size=sizes["hidden_size"],
                               max_seq_len=max_seq_len,
                               head_fcnet_hiddens=[sizes["head_size"]] * 2,
                               vf_share_layers=True)
    return (PPOConfig().framework("torch").environment(env).env_runners(**env_runners)
            .rl_module(model_config=model).training(**training))


def _new_stack_training(setup: Setup) -> dict:
    return {"train_batch_size_per_learner": setup.train_batch, "minibatch_size": setup.minibatch,
            "num_epochs": setup.epochs}


def build_config(subject: str, setup: Setup):
    if subject == REFERENCE:
        return rllib_lstm(setup)
    if subject in POPGYM_MODELS:
        return ours(subject.replace("popgym-", "popgym:"), setup, stack="old")
    if subject.startswith("old:"):
        return ours(subject[4:], setup, stack="old")
    return ours(subject, setup)


def subjects_for(memories: list[str], all_peers: bool) -> list[str]:
    """The run order: the reference, then each memory (new stack) followed by its POPGym peer
    and our old-stack model of the same cell, so that compared subjects run close in time;
    then the POPGym models without a memory here (when `all_peers`)."""
    subjects = [REFERENCE]
    for memory in memories:
        subjects.append(memory)
        if memory in PEERS:
            subjects += [PEERS[memory], f"old:{memory}"]
    if all_peers:
        subjects += [peer for peer in POPGYM_MODELS if peer not in subjects]
    return subjects


# --------------------------------------------------------------------------- measuring
def steps_sampled(result: dict) -> int:
    """Lifetime env steps sampled, new or old stack result dict."""
    runners = result.get("env_runners", {})
    if "num_env_steps_sampled_lifetime" in runners:
        return int(runners["num_env_steps_sampled_lifetime"])
    return int(result["num_env_steps_sampled_lifetime"])


def measure(subject: str, setup: Setup) -> dict:
    started = time.perf_counter()
    algo = build_config(subject, setup).build_algo()
    try:
        build_s = time.perf_counter() - started
        before = steps_sampled(algo.train())                  # warm-up iteration
        steps, seconds = [], []
        for _ in range(setup.iterations):
            clock = time.perf_counter()
            after = steps_sampled(algo.train())
            seconds.append(time.perf_counter() - clock)
            steps.append(after - before)
            before = after
    finally:
        algo.stop()
    return {"steps": sum(steps), "seconds": sum(seconds),
            "steps_per_s": max(n / t for n, t in zip(steps, seconds)),      # best iteration
            "mean_steps_per_s": sum(steps) / sum(seconds), "build_s": build_s}


def measure_or_error(subject: str, setup: Setup, attempts: int = 2) -> dict:
    """`measure`, retried once: on a loaded machine an env runner can fail to start in time
    (RLlib then raises from EnvRunnerGroup.get_spaces); a second failure is reported."""
    for attempt in range(attempts):
        try:
            return measure(subject, setup)
        except Exception as error:  # noqa: BLE001 - a peer that fails is a finding
            failure = {"error": f"{type(error).__name__}: {error}".splitlines()[0][:300],
                       "traceback": traceback.format_exc(), "attempts": attempt + 1}
    return failure


def model_costs(subject: str, setup: Setup, repeats: int = 3) -> dict:
    """In-process cost of the subject's network, free of Ray: the median of `repeats` runs of
      step   one sampling step of one env runner (batch envs_per_runner, T = 1, no grad), ms
      train  forward + backward of actor and critic on 16 rows x max_seq_len (52 valid steps,
             one RepeatPreviousEasy episode), ms
    """
    import statistics

    import envs
    import numpy as np
    import torch
    import tree
    from ray.rllib.core.columns import Columns
    from ray.rllib.models import MODEL_DEFAULTS, ModelCatalog

    config = build_config(subject, setup)
    env = envs.make_env(setup.env)
    obs_size = env.observation_space.shape[0]
    rows, valid = 16, 52
    batch_envs = setup.envs_per_runner

    def expand(state, batch):
        return tree.map_structure(
            lambda v: torch.as_tensor(v)[None].expand(batch, *np.shape(v)).clone(), state)

    if config.enable_rl_module_and_learner:
        module = config.get_rl_module_spec(env=env).build()
        state = module.get_initial_state() if module.is_stateful() else None

        def batch_of(n, steps, lengths):
            obs = torch.rand(n, steps, obs_size)
            if state is None:
                return {Columns.OBS: obs.reshape(n * steps, obs_size)}
            batch = {Columns.OBS: obs, Columns.STATE_IN: expand(state, n)}
            if steps > 1:       # env runners send no SEQ_LENS, the learner does
                batch[Columns.SEQ_LENS] = torch.full((n,), lengths)
            return batch

        def step(batch):
            with torch.no_grad():
                module.forward_inference(batch)

        def train(batch):
            out = module.forward_train(batch)
            values = module.compute_values(batch, out.get(Columns.EMBEDDINGS))
            (out[Columns.ACTION_DIST_INPUTS].sum() + values.sum()).backward()
    else:
        model_config = {**MODEL_DEFAULTS, **config.model}
        model = ModelCatalog.get_model_v2(env.observation_space, env.action_space,
                                          env.action_space.n, model_config, framework="torch")
        state = [s.float() for s in model.get_initial_state()]

        def batch_of(n, steps, lengths):
            return ({"obs": torch.rand(n * steps, obs_size)}, [expand(s, n) for s in state],
                    torch.full((n,), lengths, dtype=torch.int32))

        def step(batch):
            with torch.no_grad():
                model(*batch)
                model.value_function()

        def train(batch):
            logits, _ = model(*batch)
            (logits.sum() + model.value_function().sum()).backward()

    step_batch = batch_of(batch_envs, 1, 1)
    train_batch = batch_of(rows, setup.max_seq_len, valid)
    step(step_batch), train(train_batch)                                   # warm-up
    step_ms, train_ms = [], []
    for _ in range(repeats):
        clock = time.perf_counter()
        for _ in range(50):
            step(step_batch)
        step_ms.append((time.perf_counter() - clock) / 50 * 1e3)
        clock = time.perf_counter()
        train(train_batch)
        train_ms.append((time.perf_counter() - clock) * 1e3)
    return {"step_ms": statistics.median(step_ms), "train_ms": statistics.median(train_ms)}


# --------------------------------------------------------------------------- report
def describe(subject: str) -> str:
    if subject == REFERENCE:
        return "RLlib built-in LSTM (new stack)"
    if subject in POPGYM_MODELS:
        return f"POPGym {subject[7:]} (old stack)"
    if subject.startswith("old:"):
        return f"ours {subject[4:]} (old stack, memrl_{subject[4:]})"
    return f"ours {subject} (new stack)"


def verdicts(results: dict, memories: list[str]) -> list[str]:
    lines = []
    reference = results.get(REFERENCE, {}).get("steps_per_s")
    for memory in memories:
        ours = results.get(memory, {}).get("steps_per_s")
        if ours is None:
            lines.append(f"- {memory}: no measurement ({results.get(memory, {}).get('error')})")
            continue
        if reference:
            ratio = ours / reference
            lines.append(f"- {memory} vs {REFERENCE}: {ratio:.2f}x (target >= {LSTM_TARGET}) "
                         f"{'PASS' if ratio >= LSTM_TARGET else 'FAIL'}")
        peer = PEERS.get(memory)
        peer_speed = results.get(peer, {}).get("steps_per_s") if peer else None
        if peer_speed:
            ratio = ours / peer_speed
            lines.append(f"- {memory} vs {peer}: {ratio:.2f}x (target >= 1.0) "
                         f"{'PASS' if ratio >= 1.0 else 'FAIL'}")
    return lines


def cost_rows(costs: dict) -> list[str]:
    """Markdown rows of the in-process network costs; speed ratios = their ms / our ms."""
    rows = ["| subject | step ms (batch 8) | step speed vs rllib-lstm | vs POPGym peer | "
            "train ms (16 x 64) | train speed vs rllib-lstm | vs POPGym peer |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for subject, c in costs.items():
        if "error" in c:
            rows.append(f"| {subject} | failed: {c['error']} | | | | | |")
            continue
        cells = []
        for key in ("step_ms", "train_ms"):
            ref = costs.get(REFERENCE, {}).get(key)
            peer = costs.get(PEER_OF.get(subject, ""), {}).get(key)
            cells += [f"{c[key]:.2f}", f"{ref / c[key]:.2f}x" if ref else "-",
                      f"{peer / c[key]:.2f}x" if peer else "-"]
        rows.append(f"| {subject} | {' | '.join(cells)} |")
    return rows


def render(results: dict, costs: dict, memories: list[str], setup: Setup, rounds: int,
           argv: list[str]) -> str:
    import ray
    import torch
    reference = results.get(REFERENCE, {}).get("steps_per_s")
    rows = ["| subject | what | env steps/s, best iteration | vs rllib-lstm | vs POPGym peer | "
            "env steps/s, all timed | steps timed | build s |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for subject, r in results.items():
        if "error" in r:
            rows.append(f"| {subject} | {describe(subject)} | failed: {r['error']} | | | | | |")
            continue
        vs_ref = f"{r['steps_per_s'] / reference:.2f}x" if reference else "-"
        peer = results.get(PEER_OF.get(subject, ""), {}).get("steps_per_s")
        vs_peer = f"{r['steps_per_s'] / peer:.2f}x" if peer else "-"
        rows.append(f"| {subject} | {describe(subject)} | {r['steps_per_s']:.0f} | {vs_ref} | "
                    f"{vs_peer} | {r['mean_steps_per_s']:.0f} | {r['steps']} in "
                    f"{r['seconds']:.1f}s | {r['build_s']:.1f} |")
    settings = (f"env {setup.env}; {setup.env_runners} env runners x {setup.envs_per_runner} "
                f"envs, complete episodes; train batch {setup.train_batch}, minibatch "
                f"{setup.minibatch}, {setup.epochs} epochs, max_seq_len {setup.max_seq_len}; "
                f"sizes pre {setup.pre_size} / memory {setup.hidden_size} / heads "
                f"{setup.head_size}; 1 warm-up + {setup.iterations} timed iterations; "
                f"{rounds} round(s), subjects interleaved, best round kept")
    errors = [f"### {s}\n\n```\n{r['traceback']}```"
              for s, r in (*costs.items(), *results.items()) if "error" in r]
    return "\n".join([
        "# PPO throughput on CPU: our memories vs RLlib's LSTM and POPGym's models",
        "",
        f"Command: `.venv/bin/python benchmarks/rl_throughput.py {' '.join(argv)}`".rstrip() + "  ",
        f"Date: {datetime.date.today()}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; torch {torch.__version__}, ray {ray.__version__}, "
        f"torch threads {torch.get_num_threads()}  ",
        f"Settings: {settings}.",
        "",
        "Env steps/s = env steps sampled in one `algo.train()` call / its wall time (sampling "
        "and learning). The ratios use the best timed iteration of each subject (the machine's "
        "2 cores are shared, so the best iteration is the least disturbed one); the mean over "
        "all timed iterations is listed beside it. Measured side by side in this one run.",
        "",
        *(rows if results else ["(end-to-end part not run: --costs-only)"]),
        "",
        "## Targets (end to end)",
        "",
        *verdicts(results, memories),
        "",
        "## Network cost in one process (no Ray)",
        "",
        "The same networks outside RLlib's sampling and learning loops, one torch thread, "
        "median of 5: `step` is one env runner's forward pass for its 8 envs (T = 1, no grad); "
        "`train` is forward + backward of actor and critic on 16 rows of max_seq_len steps "
        "(52 valid, one episode each). Speed ratio = the other's ms / this subject's ms.",
        "",
        *cost_rows(costs),
        "",
        "## Notes",
        "",
        "- POPGym's GRU, LMU and S4D (popgym 1.0.7) build and train on Ray 2.60's old API stack "
        "unchanged, given as classes in `model[\"custom_model\"]` (a failure would be listed "
        "under Errors).",
        "- POPGym's S4D carries its state only while sampling (`seq_lens == 1`); its training "
        "forward runs every chunk from a zero state and returns the incoming state unchanged, "
        "so its learner pass does less work than a cell that starts each chunk from the stored "
        "state, as ours do.",
        "- `rllib-lstm` pads every learner row to max_seq_len and runs the LSTM over the "
        "padding; our modules and POPGym's stop at the batch's longest row. With 52-step "
        "episodes and max_seq_len 64 the difference is small; at POPGym's 1024 it is not.",
        "- The end-to-end numbers move with the load of the shared 2-core machine (env runner "
        "processes run at low priority, so any other process slows sampling first); the "
        "in-process table is the steadier comparison of the networks themselves.",
        "",
        *(["## Errors", "", *errors, ""] if errors else []),
    ])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller batch, fewer iterations")
    parser.add_argument("--models", help="comma-separated memories (default: all registered, "
                                         "and every POPGym model); their POPGym peers and the "
                                         "reference are added automatically")
    parser.add_argument("--iterations", type=int, help="timed iterations per subject")
    parser.add_argument("--rounds", type=int, default=2,
                        help="run every subject this many times, interleaved, and keep its best")
    parser.add_argument("--costs-only", action="store_true",
                        help="only the in-process network costs (no Ray, no PPO)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"markdown ({RESULTS.name})")
    args = parser.parse_args(argv)

    import ray
    import ray.tune.trainable.trainable as trainable
    import torch

    import memory_models
    from experiments.rllib.settings import register_rllib_envs

    memories = memory_models.available() if not args.models else args.models.split(",")
    unknown = [m for m in memories if m not in memory_models.available()]
    if unknown:
        parser.error(f"unknown memory {unknown}; available: {memory_models.available()}")
    if args.rounds < 1 or (args.iterations is not None and args.iterations < 1):
        parser.error("--rounds and --iterations must be >= 1")
    setup = QUICK if args.quick else Setup()
    if args.iterations:
        setup = Setup(**{**setup.__dict__, "iterations": args.iterations})

    subjects = subjects_for(memories, all_peers=not args.models)
    register_rllib_envs()
    costs: dict[str, dict] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for subject in subjects:
        try:
            costs[subject] = model_costs(subject, setup, repeats=5)
        except Exception as error:  # noqa: BLE001 - a peer that fails is a finding
            costs[subject] = {"error": f"{type(error).__name__}: {error}".splitlines()[0][:300],
                              "traceback": traceback.format_exc()}
        print(f"{subject:>14}: {costs[subject]}", flush=True)
    torch.set_num_threads(threads)

    results: dict[str, dict] = {}
    if not args.costs_only:
        # Algorithms built outside Tune log under DEFAULT_STORAGE_PATH (~/ray_results).
        trainable.DEFAULT_STORAGE_PATH = tempfile.mkdtemp(prefix="rl_throughput_")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    try:
        for round_index in range(0 if args.costs_only else args.rounds):
            for subject in subjects:
                if "error" in results.get(subject, {}):
                    continue
                r = measure_or_error(subject, setup)
                if "error" in r:
                    print(f"round {round_index} {subject:>14}: FAILED {r['error']}", flush=True)
                    if subject not in results:      # a failure never replaces a measurement
                        results[subject] = r
                    continue
                print(f"round {round_index} {subject:>14}: {r['steps_per_s']:6.0f} env steps/s "
                      f"best iteration, {r['mean_steps_per_s']:6.0f} mean ({r['steps']} steps in "
                      f"{r['seconds']:.1f}s)", flush=True)
                if r["steps_per_s"] > results.get(subject, {}).get("steps_per_s", 0):
                    results[subject] = r
    finally:
        if ray.is_initialized():
            ray.shutdown()
    text = render(results, costs, memories, setup, args.rounds, argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
