"""One PPO iteration at POPGym's protocol, sampling and learning timed apart, for every memory.

    .venv/bin/python benchmarks/protocol.py [--epochs 30] [--tasks RepeatPreviousEasy,...]
                                            [--subjects gru,popgym:GRU,...] [--warmup 1]
                                            [--iterations 1] [--envs 16,64] [--out FILE]
                                            [--layout 4x16 [--layout-subjects gru,...]]

Every subject trains PPO with `experiments.rllib.ppo.POPGYM_PPO` (batch 65536, minibatch 8192,
30 epochs, BPTT 1024, complete episodes, POPGym's widths) except that the env runner is local:
num_env_runners = 0 with 16 envs (a 2-core machine has no cores for 4 runners), and the epochs
can be lowered (--epochs) for a quick run. After --warmup iterations (none by default; the
first iteration's first calls and allocations cost min_gru's learning ~1.7-2 s of ~33 s
(iterations 0, 1, 2: 34.7, 33.0, 32.7 s): --warmup 1 gives a long trial's steady state, at
twice the run time), --iterations are timed; sampling = the local env runner's
`sample()` calls, learning = the rest of `algo.train()` (GAE value pass, connectors, the
minibatch updates, weight sync).

Subjects:
  <memory>      ours: MemoryRLModule on the new API stack, built by experiments.rllib.ppo.ppo_config
                (its env runner and old-stack minibatches) as users run it; with keywords
                `<memory>[key=value;key=value]` (values as YAML), e.g. event_ssm[layers=4]
  popgym:GRU / popgym:LMU / popgym:S4D
                POPGym's own models on RLlib's old API stack, the class itself as
                model["custom_model"] with popgym/baselines/ppo.py's custom_model_config
  rllib:GTrXL   RLlib's own GTrXL (old stack, use_attention; experiments.rllib.rllib_models)
                at our gtrxl's defaults, its memory of window - 1 steps as its state
  rllib-lstm    RLlib's built-in LSTM (new stack, DefaultPPOTorchRLModule, use_lstm=True,
                cell 256, encoder 128, heads 128 x 128, shared encoder)

Beside each, its floors, measured in this process with the same network:
  env        the env alone: the sampled steps at the rate of 16 envs stepped with random
             actions (gymnasium SyncVectorEnv, autoreset; the best of ENV_RATE_ROUNDS rates,
             measured once per task and run: kept from the .json with --resume, measured
             again with --again)
  forward    the network's rollout forward for the sampled steps (batch 16, T = 1, no grad;
             the old stack also computes the value there)
  learn      forward + backward of memory and heads on every minibatch the learner trained
             on (shapes recorded during the timed iteration, each distinct one replayed once and
             counted as often as it ran), plus the GAE value pass (forward, no grad)
and the hours a 15M-step trial would take at the measured iteration time (15M / batch
iterations), on this machine with local sampling.

--envs 16,64 adds a sampling-only comparison (one `sample()` after a warm-up) of 16 and 64
envs per env runner for a few subjects (ENV_SUBJECTS).

--layout 4x16 adds the memory of POPGym's own layout, 4 remote env runners x 16 envs, for
LAYOUT_SUBJECTS (--layout-subjects to change): one iteration (1 epoch) on the first task, then
each env runner process's peak resident memory and the learner's. Memory only: on 2 cores
the 4 runners share them, so their speed says nothing.

Every measurement runs in a fresh process (its own Ray) capped at MEMORY_LIMIT of address
space, so a subject that runs out of memory fails alone and is listed with its error. Writes
markdown to benchmarks/results/protocol.md (--out to change) and the raw numbers beside it
(.json) after every subject; --resume keeps those and runs only the missing or failed ones.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results" / "protocol.md"
TASKS = ("RepeatPreviousEasy", "RepeatFirstMedium")       # fixed 52-step and 415-step episodes
POPGYM_PEERS = ("popgym:GRU", "popgym:LMU", "popgym:S4D")
RLLIB_LSTM = "rllib-lstm"
REFERENCE = "popgym:GRU"
ENV_SUBJECTS = ("gru", "s4d", "lmu_fft")                   # for the --envs comparison
LAYOUT_SUBJECTS = ("gru", "s4d", "event_ssm", "lmu_fft", "ffm", "lru", "popgym:GRU")
TRIAL_STEPS = 15_000_000
clock = time.process_time          # CPU time of this process, all its threads (see the docstring)
ENVS = 16
MEMORY_LIMIT = 20 << 30            # address space of one subject's process (the machine: 24 GiB)

# targets on RepeatPreviousEasy: (subject, iteration speed-up over POPGym's GRU) of issue 8,
# then issue 29's (lmu_fft holds one of each), and our memory -> its POPGym peer (faster than it)
SPEEDUP_TARGETS = (("gru", 1.1), ("lmu_fft", 2.0), ("event_ssm", 2.0), ("s4d", 2.0),
                   ("ffm", 2.0), ("min_gru", 2.0), ("event_ssm[selective=true]", 2.0),
                   ("lmu_fft", 3.0))
PEER_TARGETS = {"lmu": "popgym:LMU", "elman": "popgym:Elman", "indrnn": "popgym:IndRNN",
                "pos_mlp": "popgym:MLP", "frame_stack": "popgym:Framestack",
                "frame_conv": "popgym:Frameconv", "fwp": "popgym:FastWeightProgrammer",
                "linear_attention": "popgym:LinearAttention"}
FLOOR_TARGET = 1.5                      # learning time <= 1.5 x the learn floor
MEMORY_TARGET_GIB = 2.0                 # peak memory of each of our cells (issue 16)
ENV_RATE_ROUNDS = 5                     # the env floor: the best of this many rates
SAMPLING_TARGETS = {"s4d": ("gru", 1.3)}   # sampling <= factor x the other's (issue 16)


# What a reader of the tables needs to weigh them (from the code of RLlib 2.60 and popgym).
NOTES = [
    "protocol.md: every RepeatPreviousEasy row but rllib-lstm's was measured in one run, one "
    "subject after the other (2026-12-07, 03:51-04:43, commit daf826e: the learner's rows cut by "
    "experiments.rllib.learner_rows), with its env floor (91,596 steps/s with 16 envs, the "
    "best of 5): these rows compare with each other. Short single-thread checks ran beside it "
    "on the other core at times (the wall column's load: ~2 for rtu, shm and slstm, 1.2-1.4 "
    "for gru, ffm, min_gru, selective event_ssm and lstm); times are the subject process's "
    "CPU seconds. Against the quiet run of 01:29-02:25 (commit 08b6f3d, before learner_rows): "
    "popgym:GRU 79.4 s against 83.7 s, ours 0-10% faster (lmu_fft 31.9 against 35.4 s, ffm "
    "49.8 / 54.4, min_gru 37.2 / 38.3, selective event_ssm 38.3 / 40.3); ratios move by up "
    "to ~10% between runs.",
    "protocol_targets.md: issue 29's subjects after one warm-up iteration (--warmup 1: a "
    "long trial's steady state), one after the other (2026-12-07, 04:43-04:57, commit daf826e, "
    "nothing else running). The machine ran slower than in protocol.md's run just before "
    "(popgym:GRU 86.1 s against 79.4, the learn floors 3-11% higher): ffm 1.74x popgym:GRU, "
    "min_gru 2.26x, selective event_ssm 2.23x, lmu_fft 2.68x, gru 1.22x; learning / learn "
    "floor ffm 1.06, min_gru 1.07, selective event_ssm 1.11, lmu_fft 1.11, gru 1.11: within "
    "1.15 for each. The first iteration's first calls, counted in protocol.md's rows, are "
    "what put them at 1.15-1.17 there.",
    "Memory state (issue 16): our memories' env runner keeps the state as one batched tensor "
    "between steps and each episode stores it only where a learner row of 1024 steps starts "
    "(experiments.rllib.state_storage): on 52-step episodes one state per episode, e.g. s4d's "
    "64 KiB (256 x 32 complex modes) per episode, ~1.3 KiB per env-step, counted per episode "
    "(the t = 0 state is one array shared by the episodes that start together). RLlib's new "
    "stack as shipped stored every step's STATE_OUT (s4d: 64 KiB per env-step, 9.1 GiB peak "
    "memory, 29 s of sampling before the change). The old stack (popgym:*) keeps state_in / "
    "state_out columns for every step of its sample batch. Rows without a stored-state value "
    "were measured before the column existed (and before the change).",
    "Sampling: ours sample a batch in 3.2-6.3 s (the 4-layer event_ssm 7.9 s; gtrxl 30 s: "
    "each step runs its unit over the W - 1 remembered inputs), POPGym's models on RLlib's "
    "old stack in 14-22 s; "
    "benchmarks/results/sampling.md splits ours into env, forward, connector pieces and "
    "RLlib's loop beside the floors.",
    "Issue 29's targets in protocol.md's run: min_gru 2.13x and selective event_ssm 2.08x "
    "popgym:GRU (2x met); ffm 1.60x (2x not met: its floors alone, env 0.7 + forward 1.2 + "
    "learn 39.3 s, would be 1.93x); lmu_fft 2.49x (3x not met: its floors alone, 0.7 + 1.0 + "
    "24.2 s, would be 3.07x). Learning / learn floor <= 1.15: selective event_ssm 1.15 (met), "
    "min_gru 1.16, ffm 1.17 (lmu_fft 1.17, gru 1.07); each row is a first iteration (--warmup "
    "0), whose first calls cost ~1.7-2 s of min_gru's learning: protocol_targets.md has these "
    "subjects after one warm-up iteration.",
    "The POPGym lineup beside its originals: an original's iteration takes 1.25x (popgym:LMU "
    "beside lmu) to 1.83x (popgym:FastWeightProgrammer beside fwp, LinearAttention beside "
    "linear_attention, S4D beside s4d) ours (MLP 1.42x pos_mlp, Elman 1.50x, IndRNN 1.71x, "
    "Framestack 1.44x, Frameconv 1.43x), most of it in sampling (theirs 14-22 s, ours "
    "3.3-5.0 s); their learning takes 1.02-1.52x ours. Peak memory in parentheses: the "
    "iteration's alone, before the floors replay its shapes.",
    "rllib-lstm pads every learner row to max_seq_len (1024) and runs its LSTM over the "
    "padding; on 52-step episodes its value pass over the whole batch asks for one tensor "
    "larger than MEMORY_LIMIT (failed: out of memory; the 2026-11-27 run's row).",
    "The new stack pads the learner's rows to max_seq_len; our memories' minibatches are cut "
    "to their longest row before the PPO loss (experiments.rllib.batching.without_padding: "
    "(157, 53), not (157, 1024), on RepeatPreviousEasy) and the module cuts the padding of the "
    "value pass before the memory and the heads. The old-stack subjects pad to the batch's "
    "longest row.",
    "popgym:S4D runs every training row from a zero state (its forward ignores the stored "
    "state), so its learn floor is that of a cell that carries none.",
    "mamba's and mamba2's learning is at their learn floors (1.07x, 1.06x): the cells' forward "
    "and backward at the learner's shapes, not the pipeline. gated_delta_net's and slstm's "
    "floors came out above their learning (0.92x, 0.95x): a floor replays each minibatch "
    "shape after the iteration, in the same process, and is a measurement too (these two "
    "were 1.22x and 1.08x in the 01:29 run). Peak memory above 2 GiB (mamba 5.2, "
    "gated_delta_net 4.1, popgym:S4D 3.7, gtrxl 3.6, mamba2 3.3, delta_net 3.2, the 4-layer "
    "event_ssm 3.0, transformer 2.3, mlstm 2.2 GiB) is the iteration's own (the floors add "
    "nothing); lstm and slstm peak at 2.0 GiB.",
    "RepeatFirstMedium's rows and the 4 x 16 layout are older runs': s4d, gru, event_ssm, "
    "lmu_fft, lstm and popgym:GRU (2026-12-02, 14:50-15:30) were measured beside two running "
    "studies (5 processes on 2 cores, load 4-6): CPU times inflated (gru's iteration 192 s "
    "against 118 s in the quiet 11-27 run), ratios compare within this group only; the lmu, "
    "mlp, popgym:LMU and popgym:S4D rows are the quiet 11-27 run's, so their 'vs popgym:GRU' "
    "column (computed against the 12-02 popgym:GRU row) overstates them: against that run's "
    "popgym:GRU (143 s) they were lmu 1.50x, mlp 2.68x, popgym:LMU 0.86x, popgym:S4D 0.91x. "
    "Their sampling ran with RLlib's per-item connector pieces (before "
    "experiments.rllib.sampling), so their sampling column is not comparable with "
    "RepeatPreviousEasy's.",
    "transformer and its positions (transformer[position=rotary], [position=learned]) on "
    "RepeatPreviousEasy (2026-12-06, 22:39, one after the other beside two learning trials, "
    "load 2.6-3.8): rotary samples in 15.0 s against ALiBi's 11.3 s (each rollout step turns "
    "the W - 1 cached keys by their new offsets), learned in 12.0 s; their learning is "
    "within 10% of one another. Their 'vs popgym:GRU' is computed against popgym:GRU's row "
    "in protocol_attention.md, measured at load ~9: it overstates them.",
]


# --------------------------------------------------------------------------- configs
def task_id(task: str) -> str:
    """A task as given (RepeatPreviousEasy or popgym-RepeatPreviousEasy-v0) -> its POPGym id."""
    import envs
    return envs.resolve(task)[0]


def protocol(epochs: int, envs: int) -> dict:
    """POPGYM_PPO with a local env runner of `envs` envs and `epochs` epochs."""
    from experiments.rllib.defaults import POPGYM_PPO
    return {**POPGYM_PPO, "num_env_runners": 0, "num_envs_per_env_runner": envs,
            "num_epochs": epochs}


def parse_subject(subject: str) -> tuple[str, dict]:
    """`gru` -> ("gru", {}); `event_ssm[layers=4;selective=true]` -> ("event_ssm",
    {"layers": 4, "selective": True}) (values as YAML)."""
    import yaml
    name, _, rest = subject.partition("[")
    if not rest:
        return subject, {}
    if not rest.endswith("]") or "=" not in rest:
        raise ValueError(f"subject {subject!r}: expected NAME or NAME[key=value;key=value]")
    pairs = (item.split("=", 1) for item in rest[:-1].split(";"))
    return name, {key.strip(): yaml.safe_load(value) for key, value in pairs}


def split_subjects(text: str) -> list[str]:
    """--subjects: comma-separated, commas inside [...] kept (`a,b[x=1],c`)."""
    return [s for s in re.findall(r"[^,\[]+(?:\[[^\]]*\])?", text) if s.strip()]


def build_config(subject: str, task: str, epochs: int, envs: int = ENVS):
    settings = protocol(epochs, envs)
    if subject == RLLIB_LSTM:
        return rllib_lstm_config(task, settings)
    from experiments.rllib.ppo import algorithm_config
    runners = {k: settings.pop(k) for k in ("num_env_runners", "num_envs_per_env_runner")}
    name, kwargs = parse_subject(subject)
    stack = "old" if name.startswith(("popgym:", "rllib:")) else "new"
    return algorithm_config({"name": name, "kwargs": kwargs, "stack": stack}, task, seed=0,
                            ppo=settings, sizes={}, **runners)


def rllib_lstm_config(task: str, settings: dict):
    """RLlib's LSTM (benchmarks/rl_throughput.py) at POPGym's sizes and `settings`."""
    from rl_throughput import rllib_lstm_config as config   # beside this script

    from experiments.rllib.defaults import POPGYM_SIZES
    settings = dict(settings)
    runners = {k: settings.pop(k) for k in ("num_env_runners", "num_envs_per_env_runner",
                                            "batch_mode")}
    return config(task_id(task), POPGYM_SIZES, settings.pop("max_seq_len"), runners, settings)


# --------------------------------------------------------------------------- recording
@dataclass
class Recorder:
    """Shapes of the learner's network calls during the timed iterations."""
    train: collections.Counter = field(default_factory=collections.Counter)
    value: collections.Counter = field(default_factory=collections.Counter)
    sampling_s: float = 0.0
    sample_calls: int = 0
    stored_state_bytes: int = 0         # memory state the returned samples hold
    sampled_steps: int = 0              # env steps in them


def instrument(algo, recorder: Recorder) -> None:
    """Time the local env runner's sample() and record the shapes the learner trains on."""
    runner = algo.env_runner_group.local_env_runner
    sample = runner.sample

    def timed_sample(*args, **kwargs):
        start = clock()
        try:
            samples = sample(*args, **kwargs)
        finally:
            recorder.sampling_s += clock() - start
            recorder.sample_calls += 1
        state_bytes, steps = stored_state(samples)
        recorder.stored_state_bytes += state_bytes
        recorder.sampled_steps += steps
        return samples

    runner.sample = timed_sample
    if algo.config.enable_rl_module_and_learner:
        _record_new_stack(algo, recorder)
    else:
        _record_old_stack(algo, recorder)


def stored_state(samples) -> tuple[int, int]:
    """(bytes of memory state, env steps) in what an env runner's sample() returned: new-stack
    episodes (the states `experiments.rllib.state_storage` keeps at learner row starts, and any
    per-step STATE_OUT) or an old-stack SampleBatch (its state_in_* / state_out_* columns)."""
    import numpy as np
    import tree
    from ray.rllib.core.columns import Columns
    from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch

    from experiments.rllib.state_storage import stored_states

    def size(structure) -> int:
        return sum(np.asarray(leaf).nbytes for leaf in tree.flatten(structure))

    if isinstance(samples, (SampleBatch, MultiAgentBatch)):
        batches = samples.policy_batches.values() if isinstance(samples, MultiAgentBatch) \
            else [samples]
        return (sum(size(v) for b in batches for k, v in b.items()
                    if k.startswith(("state_in", "state_out"))),
                sum(b.env_steps() for b in batches))
    total = 0
    for episode in samples:
        total += sum(size(state) for state in stored_states(episode).values())
        if Columns.STATE_OUT in episode.extra_model_outputs:
            total += size(episode.get_extra_model_outputs(Columns.STATE_OUT))
    return total, sum(len(episode) for episode in samples)


def _key(obs_shape, seq_lens) -> tuple:
    lengths = () if seq_lens is None else tuple(int(n) for n in seq_lens)
    return tuple(obs_shape), lengths


def _record_new_stack(algo, recorder: Recorder) -> None:
    from ray.rllib.core.columns import Columns

    from experiments.rllib.rllib_private import local_learner
    module = local_learner(algo).module["default_policy"]
    forward_train, compute_values = module.forward_train, module.compute_values

    def recorded_forward_train(batch, **kwargs):
        recorder.train[_key(batch[Columns.OBS].shape, batch.get(Columns.SEQ_LENS))] += 1
        return forward_train(batch, **kwargs)

    def recorded_compute_values(batch, embeddings=None):
        if embeddings is None:                              # the GAE pass over the batch
            recorder.value[_key(batch[Columns.OBS].shape, batch.get(Columns.SEQ_LENS))] += 1
        return compute_values(batch, embeddings)

    module.forward_train, module.compute_values = recorded_forward_train, recorded_compute_values


def _record_old_stack(algo, recorder: Recorder) -> None:
    import torch
    model = algo.get_policy().model
    forward = model.forward

    def recorded_forward(input_dict, state, seq_lens):
        if torch.is_grad_enabled():                         # learning, not sampling
            recorder.train[_key(input_dict["obs"].shape, seq_lens)] += 1
        return forward(input_dict, state, seq_lens)

    model.forward = recorded_forward


# --------------------------------------------------------------------------- floors
def env_rate(task: str, envs: int, rounds: int = 1, steps: int = 4096) -> float:
    """Env steps per second of `envs` envs stepped together with random actions: the best of
    `rounds` measurements, each on a fresh vector env."""
    import gymnasium as gym

    import envs as memrl_envs
    rates = []
    for _ in range(rounds):
        vector = gym.vector.SyncVectorEnv([lambda: memrl_envs.make_env(task_id(task))] * envs)
        vector.reset(seed=0)
        vector.action_space.seed(0)
        for _ in range(16):
            vector.step(vector.action_space.sample())
        start = clock()
        for _ in range(steps // envs):
            vector.step(vector.action_space.sample())
        rates.append((steps // envs) * envs / (clock() - start))
        vector.close()
    return max(rates)


class Network:
    """The subject's network from a built algorithm, callable outside RLlib's loops."""

    def __init__(self, algo):
        import numpy as np
        import torch
        import tree
        self.torch, self.np, self.tree = torch, np, tree
        self.new_stack = algo.config.enable_rl_module_and_learner
        if self.new_stack:
            from experiments.rllib.rllib_private import local_learner
            self.module = local_learner(algo).module["default_policy"]
            self.state = self.module.get_initial_state() if self.module.is_stateful() else None
            self.obs_size = self.module.observation_space.shape[0]
        else:
            from experiments.rllib.rollout import _attention_memory
            self.model = algo.get_policy().model
            memory = _attention_memory(algo.get_policy())     # rllib:GTrXL: (τ, dim) per unit
            self.state = ([torch.zeros(shape) for shape in memory] if memory else
                          [s.float() for s in self.model.get_initial_state()])
            self.obs_size = self.model.obs_space.shape[0]

    def _expand(self, state, rows):
        torch, np = self.torch, self.np
        return self.tree.map_structure(
            lambda v: torch.as_tensor(v)[None].expand(rows, *np.shape(v)).clone(), state)

    def _new_batch(self, obs_shape, lengths):
        from ray.rllib.core.columns import Columns
        obs = self.torch.rand(*obs_shape)
        if self.state is None:
            return {Columns.OBS: obs}
        batch = {Columns.OBS: obs, Columns.STATE_IN: self._expand(self.state, obs_shape[0])}
        if lengths:
            batch[Columns.SEQ_LENS] = self.torch.tensor(lengths)
        return batch

    def _old_call(self, obs_shape, lengths):
        torch = self.torch
        rows = len(lengths) if lengths else obs_shape[0]
        seq_lens = torch.tensor(lengths or [1] * rows, dtype=torch.int32)
        logits, _ = self.model({"obs": torch.rand(*obs_shape)},
                               [self._expand(s, rows) for s in self.state], seq_lens)
        return logits, self.model.value_function()

    def rollout_step_s(self, envs: int, calls: int = 100) -> float:
        """Seconds of one rollout forward for `envs` envs (T = 1, no grad)."""
        torch = self.torch
        if self.new_stack:
            batch = self._new_batch((envs, 1, self.obs_size) if self.state is not None
                                    else (envs, self.obs_size), [])
            batch.pop("seq_lens", None)

            def call():
                self.module.forward_exploration(batch)
        else:
            def call():
                self._old_call((envs, self.obs_size), [1] * envs)
        with torch.no_grad():
            for _ in range(10):
                call()
            start = clock()
            for _ in range(calls):
                call()
        return (clock() - start) / calls

    def learn_s(self, recorder: Recorder, repeats: int = 2) -> float:
        """Forward + backward (loss = sum of logits and values) of every recorded minibatch,
        each distinct shape timed (best of `repeats`) and counted as often as it ran; plus the
        value passes, forward only."""
        torch = self.torch

        def train(obs_shape, lengths):
            if self.new_stack:
                batch = self._new_batch(obs_shape, lengths)
                out = self.module.forward_train(batch)
                values = self.module.compute_values(batch, out.get("embeddings"))
                logits = out["action_dist_inputs"]
            else:
                logits, values = self._old_call(obs_shape, lengths)
            (logits.sum() + values.sum()).backward()

        def value(obs_shape, lengths):
            with torch.no_grad():
                self.module.compute_values(self._new_batch(obs_shape, lengths))

        total = 0.0
        for calls, run in ((recorder.train, train), (recorder.value, value)):
            for (obs_shape, lengths), count in calls.items():
                times = []
                for _ in range(repeats):
                    start = clock()
                    run(obs_shape, list(lengths))
                    times.append(clock() - start)
                total += min(times) * count
        if self.new_stack:
            self.module.zero_grad(set_to_none=True)
        else:
            self.model.zero_grad(set_to_none=True)
        return total


# --------------------------------------------------------------------------- measuring
def measure(subject: str, task: str, epochs: int, warmup: int, iterations: int) -> dict:
    import resource
    config = build_config(subject, task, epochs)
    batch = config.train_batch_size_per_learner if config.enable_rl_module_and_learner \
        else config.train_batch_size
    algo = config.build_algo()
    try:
        for _ in range(warmup):
            algo.train()
        recorder = Recorder()
        instrument(algo, recorder)
        steps_before = _steps_sampled(algo)
        load_before, wall, start = os.getloadavg()[0], time.perf_counter(), clock()
        for _ in range(iterations):
            algo.train()
        iteration_s = (clock() - start) / iterations
        wall_s = (time.perf_counter() - wall) / iterations
        # the process's peak so far: training only (the floors below replay its shapes)
        iteration_peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        load = (load_before + os.getloadavg()[0]) / 2
        steps = (_steps_sampled(algo) - steps_before) / iterations
        sampling_s = recorder.sampling_s / iterations
        network = Network(algo)
        for counter in (recorder.train, recorder.value):         # per iteration
            for key in counter:
                counter[key] /= iterations
        learn_floor = network.learn_s(recorder)
        forward_s = network.rollout_step_s(ENVS) * steps / ENVS
        minibatches = sum(recorder.train.values()) / max(epochs, 1)
        rows = [shape[0] if not lengths else len(lengths)
                for (shape, lengths) in recorder.train]
    finally:
        algo.stop()
    return {"iteration_s": iteration_s, "wall_s": wall_s, "load": load,
            "iteration_peak_rss_gib": iteration_peak_gib,
            "sampling_s": sampling_s,
            "learning_s": iteration_s - sampling_s, "steps": steps, "batch": batch,
            "forward_floor_s": forward_s, "learn_floor_s": learn_floor,
            "minibatches_per_epoch": minibatches,
            "stored_state_bytes_per_step": recorder.stored_state_bytes
            / max(recorder.sampled_steps, 1),
            "rows_per_minibatch": statistics.mean(rows) if rows else float("nan")}


def _steps_sampled(algo) -> int:
    from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME
    if algo.config.enable_env_runner_and_connector_v2:
        return int(algo.metrics.peek(("env_runners", NUM_ENV_STEPS_SAMPLED_LIFETIME),
                                     default=0))
    from experiments.rllib.rllib_private import env_steps_sampled
    return env_steps_sampled(algo)


def sampling_only(subject: str, task: str, envs: int) -> float:
    """CPU seconds of one sample() of the local env runner (a train batch). Built (envs made)
    first; one call only, since a state as large as s4d's makes two batches of episodes
    outgrow MEMORY_LIMIT."""
    algo = build_config(subject, task, epochs=1, envs=envs).build_algo()
    try:
        start = clock()
        algo.env_runner_group.local_env_runner.sample()
        return clock() - start
    finally:
        algo.stop()


def layout_memory(subject: str, task: str, layout: str) -> dict:
    """Peak resident memory (GiB) of each env runner process (`runner_peak_rss_gib`, a list)
    after one iteration (1 epoch) with `layout` ("4x16": 4 remote env runners x 16 envs);
    the learner's (this process) is added by `child` as for every measurement."""
    import resource
    runners, envs = (int(n) for n in layout.split("x"))
    config = build_config(subject, task, epochs=1, envs=envs)
    # the runners share the 2 cores: a fraction of a CPU each, so that Ray places all of them
    config.env_runners(num_env_runners=runners, num_cpus_per_env_runner=0.25)
    algo = config.build_algo()
    try:
        algo.train()
        peaks = algo.env_runner_group.foreach_env_runner(
            lambda _: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            local_env_runner=False)
    finally:
        algo.stop()
    return {"runner_peak_rss_gib": peaks, "task": task}


def in_child(job: dict, threads: int | None, timeout_s: float) -> dict | float:
    """Run one measurement (`job`: {"fn": "measure", "sampling_only" or "layout_memory",
    "args": [...]}) in a
    fresh Python process with its own Ray, capped at MEMORY_LIMIT bytes of address space, so
    that a subject that runs out of memory fails alone. -> its result or {"error": ...}."""
    with tempfile.TemporaryDirectory(prefix="protocol_job_") as folder:
        out = Path(folder) / "result.json"
        command = [sys.executable, __file__, "--child", json.dumps(job), "--child-out", str(out)]
        if threads is not None:
            command += ["--threads", str(threads)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout_s:.0f} s", "traceback": ""}
        if out.exists():
            return json.loads(out.read_text())
        why = (f"killed by signal {-done.returncode}" if done.returncode < 0
               else f"exit status {done.returncode}")
        return {"error": f"{why}; last output: {done.stderr.strip().splitlines()[-1:]}"[:300],
                "traceback": done.stderr[-3000:]}


def child(job: dict, out: Path) -> None:
    """The child side of `in_child`: the measurement, its result (or error) as JSON."""
    import resource

    import ray
    import ray.tune.trainable.trainable as trainable
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    trainable.DEFAULT_STORAGE_PATH = tempfile.mkdtemp(prefix="protocol_")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        result = {"measure": measure, "sampling_only": sampling_only,
                  "layout_memory": layout_memory}[job["fn"]](*job["args"])
        if isinstance(result, dict):          # peak resident memory of the process, GiB
            result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    except BaseException as error:  # noqa: BLE001 - a subject that fails is a finding
        result = {"error": f"{type(error).__name__}: {error}".splitlines()[0][:300],
                  "traceback": traceback.format_exc()}
    finally:
        ray.shutdown()
    out.write_text(json.dumps(result))


# --------------------------------------------------------------------------- report
def render(results: dict, env_rates: dict, env_compare: dict, args, runs: list,
           layouts: dict | None = None) -> str:
    """The markdown report; `runs`: [{command, date, loads (start, end)}] of every invocation
    that measured part of it (several with --resume); `layouts`: {"4x16": {subject: the
    layout_memory result}}."""
    import ray
    import torch
    from cells import cpu_name            # benchmarks/cells.py, beside this script
    lines = [
        "# One PPO iteration at POPGym's protocol, sampling and learning apart", "",
        *(f"- command: `.venv/bin/python benchmarks/protocol.py {run['command']}`".rstrip()
          + f" ({run['date']}, {run['threads']} torch thread(s); load average (1, 5, 15 min) "
          "at the start "
          f"{', '.join(f'{v:.2f}' for v in run['loads'][0])}, at the end "
          f"{', '.join(f'{v:.2f}' for v in run['loads'][-1])})" for run in runs),
        f"- {cpu_name()}, {os.cpu_count()} CPUs shared with "
        f"other work, no GPU available; torch {torch.__version__}, ray {ray.__version__}",
        f"- settings: `POPGYM_PPO` (batch 65536, minibatch 8192, {args.epochs} epochs, BPTT "
        "1024, complete episodes, pre 128 / memory 256 / heads 128) with **num_env_runners=0**: "
        f"the env runner is local, {ENVS} envs, sampling and learning share the process; "
        f"{args.warmup} warm-up iteration(s), then {args.iterations} timed; each subject in "
        "its own process, one after the other",
        "- times are **CPU seconds** of that process (all its threads): the machine was "
        "shared, so wall time measured the other work too (its iteration wall time and the "
        "mean 1-min load average during it are listed); with 1 thread on an idle machine the "
        "two agree",
        "- sampling: the env runner's `sample()` calls; learning: the rest of `algo.train()` "
        "(GAE value pass, connectors, minibatch updates). Floors: env = the sampled steps at "
        "the rate of 16 envs stepped with random actions; forward = the network's rollout "
        "forward (batch 16, no grad) for those steps; learn = forward + backward of memory and "
        "heads on the recorded minibatch shapes, plus the value pass",
        f"- 15M-step trial: {TRIAL_STEPS:,} / batch iterations at the measured iteration time "
        "(this machine, local sampling; POPGym's 4 env runners would sample in parallel)", ""]
    for task, rows in results.items():
        lines += [f"## {task}", "",
                  f"env alone: {env_rates[task]:.0f} steps/s with {ENVS} envs", "",
                  "| subject | iteration s | sampling s | learning s | env floor s | "
                  "forward floor s | learn floor s | learning / learn floor | "
                  "minibatches x rows | iteration vs popgym:GRU | 15M-step trial h | "
                  "wall s (load) | peak memory GiB (the iteration's) | "
                  "stored state per env-step B |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
        reference = rows.get(REFERENCE, {}).get("iteration_s")
        peers = [*POPGYM_PEERS, RLLIB_LSTM]           # ours first, in name order, then peers
        for subject, r in sorted(rows.items(), key=lambda item: (
                peers.index(item[0]) + 1 if item[0] in peers else 0, item[0])):
            if "error" in r:
                lines.append(f"| {subject} | failed: {r['error']} |" + " |" * 13)
                continue
            env_floor = r["steps"] / env_rates[task]
            speedup = f"{reference / r['iteration_s']:.2f}x" if reference else "-"
            hours = r["iteration_s"] * math.ceil(TRIAL_STEPS / r["batch"]) / 3600
            lines.append(
                f"| {subject} | {r['iteration_s']:.1f} | {r['sampling_s']:.1f} | "
                f"{r['learning_s']:.1f} | {env_floor:.1f} | {r['forward_floor_s']:.1f} | "
                f"{r['learn_floor_s']:.1f} | {r['learning_s'] / r['learn_floor_s']:.2f} | "
                f"{r['minibatches_per_epoch']:.0f} x {r['rows_per_minibatch']:.0f} | "
                f"{speedup} | {hours:.1f} | {r['wall_s']:.0f} ({r['load']:.1f}) | "
                f"{_peak(r)} | {_bytes(r.get('stored_state_bytes_per_step'))} |")
        lines.append("")
        lines += targets(task, rows) + [""]
    if env_compare:
        lines += ["## Sampling with 16 vs 64 envs per env runner", "",
                  "CPU seconds of one `sample()` of a train batch (65536 steps), local env runner, "
                  "first task.", "",
                  "| subject | 16 envs s | 64 envs s | 64 / 16 |", "|---|---:|---:|---:|"]
        for subject, times in env_compare.items():
            a, b = times.get("16"), times.get("64")
            ratio = f"{b / a:.2f}" if isinstance(a, float) and isinstance(b, float) else "-"
            lines.append(f"| {subject} | {_num(a)} | {_num(b)} | {ratio} |")
        lines.append("")
    for layout, rows in (layouts or {}).items():
        runners, envs = layout.split("x")
        lines += [f"## Memory at POPGym's layout: {runners} env runners x {envs} envs", "",
                  "Peak resident memory after one iteration (1 epoch) on "
                  f"{', '.join(sorted({r.get('task', '?') for r in rows.values()}))}: each remote "
                  "env runner's process and the learner's (the driver, which also holds the "
                  "episodes the runners returned). Memory only: the runners shared 2 cores.", "",
                  "| subject | env runner peak GiB (each) | learner peak GiB |",
                  "|---|---|---:|"]
        for subject, r in rows.items():
            if "error" in r:
                lines.append(f"| {subject} | failed: {r['error']} | |")
                continue
            each = ", ".join(f"{g:.2f}" for g in r["runner_peak_rss_gib"])
            lines.append(f"| {subject} | {each} | {r['peak_rss_gib']:.2f} |")
        lines.append("")
    lines += ["## Notes", "", *(f"- {note}" for note in NOTES), ""]
    errors = [f"### {task} {s}\n\n```\n{r['traceback']}```" for task, rows in results.items()
              for s, r in rows.items() if "error" in r]
    return "\n".join(lines + (["## Errors", "", *errors] if errors else []))


def _peak(r: dict) -> str:
    """The process's peak memory, GiB, and the iteration's alone (before the floors replayed
    its shapes) where measured."""
    alone = r.get("iteration_peak_rss_gib")
    return f"{r['peak_rss_gib']:.1f}" + ("" if alone is None else f" ({alone:.1f})")


def iteration_peak(r: dict) -> float:
    """The iteration's peak memory, GiB: measured alone where the row has it, else the
    process's (which includes the floors)."""
    return r.get("iteration_peak_rss_gib", r["peak_rss_gib"])


def _bytes(value) -> str:
    """Bytes per env-step, '-' where the run predates the column."""
    return "-" if value is None else f"{value:,.0f}"


def _num(value) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def targets(task: str, rows: dict) -> list[str]:
    """Issue 8's targets that this run measured, PASS/FAIL."""
    out = ["Targets:"]
    ok = {s: r for s, r in rows.items() if "error" not in r}
    reference = ok.get(REFERENCE, {}).get("iteration_s")
    if task == TASKS[0] and reference:
        for subject, factor in SPEEDUP_TARGETS:
            if subject in ok:
                speedup = reference / ok[subject]["iteration_s"]
                out.append(f"- {subject} iteration >= {factor}x popgym:GRU: {speedup:.2f}x "
                           f"{'PASS' if speedup >= factor else 'FAIL'}")
        for subject, (other, factor) in SAMPLING_TARGETS.items():
            if subject in ok and other in ok:
                ratio = ok[subject]["sampling_s"] / ok[other]["sampling_s"]
                out.append(f"- {subject} sampling <= {factor}x {other}'s: {ratio:.2f}x "
                           f"{'PASS' if ratio <= factor else 'FAIL'}")
        for subject, peer in PEER_TARGETS.items():
            if subject in ok and peer in ok:
                speedup = ok[peer]["iteration_s"] / ok[subject]["iteration_s"]
                out.append(f"- {subject} iteration faster than {peer}: {speedup:.2f}x "
                           f"{'PASS' if speedup > 1 else 'FAIL'}")
    for subject, r in ok.items():
        if subject.startswith("popgym:") or subject == RLLIB_LSTM:
            continue
        ratio = r["learning_s"] / r["learn_floor_s"]
        out.append(f"- {subject} learning within {FLOOR_TARGET}x its learn floor: {ratio:.2f}x "
                   f"{'PASS' if ratio <= FLOOR_TARGET else 'FAIL'}")
        peak = iteration_peak(r)
        out.append(f"- {subject} peak memory <= {MEMORY_TARGET_GIB:g} GiB: {peak:.1f} GiB "
                   f"{'PASS' if peak <= MEMORY_TARGET_GIB else 'FAIL'}")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="num_epochs (POPGym: 30)")
    parser.add_argument("--tasks", default=",".join(TASKS),
                        help="comma-separated POPGym tasks, e.g. RepeatPreviousEasy (or its id)")
    parser.add_argument("--subjects", help="comma-separated, keywords in brackets "
                                           "(event_ssm[layers=4;selective=true]; default: "
                                           "every registered memory, the POPGym peers and "
                                           "rllib-lstm)")
    parser.add_argument("--warmup", type=int, default=0,
                        help="untimed iterations first (use 1 with few --epochs)")
    parser.add_argument("--iterations", type=int, default=1, help="timed iterations")
    parser.add_argument("--envs", default="", help="e.g. 16,64: sampling-only comparison")
    parser.add_argument("--layout", default="", help="e.g. 4x16: memory per env runner at "
                                                     "that layout (env runners x envs)")
    parser.add_argument("--layout-subjects", default=",".join(LAYOUT_SUBJECTS),
                        help="the subjects of --layout (default %(default)s)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--timeout", type=float, default=3600,
                        help="seconds one subject may take")
    parser.add_argument("--resume", action="store_true",
                        help="keep the measurements of --out's .json, run the missing/failed")
    parser.add_argument("--again", action="store_true",
                        help="with --resume: measure --subjects again on --tasks even where "
                             "the .json holds them, and the env floor of --tasks (the other "
                             "rows are kept)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite --out from its .json, measuring nothing")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", help=argparse.SUPPRESS)          # in_child's job (JSON)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = argv

    import torch
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.child:
        child(json.loads(args.child), Path(args.child_out))
        return 0

    import memory_models
    from experiments.rllib.defaults import POPGYM_PPO
    args.epochs = args.epochs or POPGYM_PPO["num_epochs"]
    subjects = (split_subjects(args.subjects) if args.subjects else
                [*memory_models.available(), *POPGYM_PEERS, RLLIB_LSTM])
    from experiments.study.results import short_task
    # results are keyed by the short name, however the task was given
    tasks = [short_task(task_id(t.strip())) for t in args.tasks.split(",") if t.strip()]
    saved = args.out.with_suffix(".json")
    if args.report_only:             # with the settings (epochs, warm-up) of the last run's
        stored = json.loads(saved.read_text())
        measured = parser.parse_args(shlex.split(stored["runs"][-1]["command"]))
        args.out.write_text(render(stored["results"], stored["env_rates"],
                                   stored["env_compare"], measured, stored["runs"],
                                   stored.get("layouts")) + "\n")
        return 0
    earlier = json.loads(saved.read_text()) if args.resume and saved.exists() else {}
    results: dict[str, dict] = earlier.get("results", {})
    env_rates = earlier.get("env_rates", {})
    env_rates.update({task: env_rate(task, ENVS, ENV_RATE_ROUNDS)
                      for task in tasks if args.again or task not in env_rates})
    env_compare: dict[str, dict] = earlier.get("env_compare", {})
    layouts: dict[str, dict] = earlier.get("layouts", {})
    runs = earlier.get("runs", []) + [{
        "command": " ".join(argv), "loads": [os.getloadavg()], "threads": torch.get_num_threads(),
        "date": datetime.datetime.now().isoformat(timespec="seconds")}]

    def write():
        runs[-1]["loads"][1:] = [os.getloadavg()]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(render(results, env_rates, env_compare, args, runs, layouts) + "\n")
        saved.write_text(json.dumps({"results": results, "env_rates": env_rates,
                                     "env_compare": env_compare, "runs": runs,
                                     "layouts": layouts}, indent=1))

    for task in tasks:
        results.setdefault(task, {})
        for subject in subjects:
            if not args.again and "error" not in results[task].get(subject,
                                                                   {"error": "not run"}):
                continue                                    # --resume: measured already
            job = {"fn": "measure",
                   "args": [subject, task, args.epochs, args.warmup, args.iterations]}
            r = results[task][subject] = in_child(job, args.threads, args.timeout)
            print(f"{task} {subject}: " + (r["error"] if "error" in r else
                  f"iteration {r['iteration_s']:.1f}s = sampling {r['sampling_s']:.1f} + "
                  f"learning {r['learning_s']:.1f} (learn floor {r['learn_floor_s']:.1f})"),
                  flush=True)
            write()
    for envs in [int(e) for e in args.envs.split(",") if e]:
        for subject in ENV_SUBJECTS:
            if isinstance(env_compare.get(subject, {}).get(str(envs)), float):
                continue
            r = in_child({"fn": "sampling_only", "args": [subject, tasks[0], envs]},
                         args.threads, args.timeout)
            env_compare.setdefault(subject, {})[str(envs)] = r if isinstance(r, float) \
                else "failed"
            print(f"sampling {subject} {envs} envs: {r}", flush=True)
            write()
    if args.layout:
        rows = layouts.setdefault(args.layout, {})
        for subject in split_subjects(args.layout_subjects):
            if "error" not in rows.get(subject, {"error": "not run"}):
                continue
            r = rows[subject] = in_child(
                {"fn": "layout_memory", "args": [subject, tasks[0], args.layout]},
                args.threads, args.timeout)
            print(f"{args.layout} {subject}: {r.get('error') or r}", flush=True)
            write()
    write()
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
