"""The GPU path: device faults caught without a GPU, and the same checks on CUDA where present.

Without a GPU, every registered cell, MemoryRLModule's learner update and the learner's
minibatches run on tests/virtual_device.py's stand-in device: exact CPU arithmetic on tensors
that say they live elsewhere, so a tensor created without `device=` and mixed with them raises
(as on CUDA) and every host sync is counted. The tests hold their results equal to the CPU's
and a scan's host syncs independent of its length (none per step).

With CUDA (`torch.cuda.is_available()`), the same comparisons run on the GPU, and one PPO
iteration trains with its learner there (`num_gpus_per_learner=1`); without, these are
skipped, saying so.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns

import memory_models
from memory_models.laws import TOLERANCES
from small_sizes import small_memory_kwargs
from test_batching import learner_batch as minibatch_source
from test_rl_module_loss import ENV, SIZES, STATEFUL, learner_batch, ppo_learner
from virtual_device import VIRTUAL, DeviceFault, OnVirtualDevice, VirtualDevice

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = memory_models.available()
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device: the GPU path is checked on the virtual device only "
           "(tests/virtual_device.py)")
DTYPE = torch.float64                        # every cell takes it: CPU and device results agree
                                             # to rounding, whatever kernel each one runs


# ---------------------------------------------------------------------- the stand-in itself
def test_the_virtual_device_catches_cpu_tensors_and_counts_host_syncs():
    with VirtualDevice() as device:
        x = device.put(torch.arange(6.0).reshape(2, 3))
        with pytest.raises(DeviceFault, match="created without device"):
            x + torch.zeros(2, 3)                             # a CPU tensor meets the device
        y = x + torch.ones(2, 3, device=x.device) + x.new_zeros(3) + torch.tensor(1.0)
        assert isinstance(y, OnVirtualDevice) and y.device == x.device
        assert device.syncs == {}
        assert bool(y.any()) and y.sum().item() == 27.0 and y.tolist()[0] == [2.0, 3.0, 4.0]
        assert device.syncs == {"scalar": 3}
        assert torch.equal(y.cpu(), torch.arange(6.0).reshape(2, 3) + 2)
        assert device.syncs["download"] == 1
        with pytest.raises(TypeError, match="numpy"):
            y.numpy()
        y.transpose_(0, 1)                                    # in-place view ops keep up
        assert y.shape == (3, 2) and torch.equal(device.take(y)[:, 0], torch.tensor([2., 3, 4]))


# ---------------------------------------------------------------------- cells
def build_cell(name: str) -> memory_models.RecurrentMemory:
    torch.manual_seed(0)
    return memory_models.make(name, input_size=4, hidden_size=6,
                              **small_memory_kwargs(name)).to(DTYPE)


def cell_inputs(cell, steps: int, seed: int = 1) -> dict:
    """A batch of 3 rows: resets every 5 steps in row 0, lengths (T, T // 2, 0), Δt in [0, 2),
    a non-zero state (the same branches taken at any T >= 2)."""
    g = torch.Generator().manual_seed(seed)
    resets = torch.zeros(3, steps, dtype=torch.bool)
    resets[0, ::5] = True
    return dict(x=torch.randn(3, steps, cell.input_size, generator=g, dtype=DTYPE),
                state={k: torch.randn(v.shape, generator=g, dtype=DTYPE) * 0.5
                       for k, v in cell.initial_state(3).items()},
                resets=resets, lengths=torch.tensor([steps, steps // 2, 0]),
                integration_timesteps=torch.rand(3, steps, generator=g, dtype=DTYPE) * 2)


def cell_outputs(cell, data: dict, syncs=None) -> dict:
    """Everything a cell computes on `data` (on whatever device it and data are): the scan's
    outputs and state, the gradients of a loss on them for the input, the state and every
    parameter, and one step's output and state. With `syncs` (a VirtualDevice's counter),
    the host syncs of the scan and of its backward pass too."""
    x = data["x"].requires_grad_()
    state = {k: v.requires_grad_() for k, v in data["state"].items()}
    y, final = cell.scan(x, state, resets=data["resets"], lengths=data["lengths"],
                         integration_timesteps=data["integration_timesteps"])
    counts = {"scan": sum(syncs.values())} if syncs is not None else {}
    loss = y.square().mean() + sum(v.square().mean() for v in final.values())
    params = [p for p in cell.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [x, *state.values(), *params], allow_unused=True)
    if syncs is not None:
        counts["backward"] = sum(syncs.values()) - counts["scan"]
    with torch.no_grad():
        y_t, state_t = cell.step(x[:, 0], state, reset=data["resets"][:, 0],
                                 integration_timestep=data["integration_timesteps"][:, 0])
    return {"y": y, **{f"state {k}": v for k, v in final.items()},
            **{f"grad {i}": g for i, g in enumerate(grads) if g is not None},
            "step y": y_t, **{f"step state {k}": v for k, v in state_t.items()},
            "syncs": counts}


def on_virtual_device(cell, data: dict) -> dict:
    with VirtualDevice() as device:
        cell = device.move(cell)
        out = cell_outputs(cell, device.put(data), device.syncs)
        return device.take(out)


def assert_same(actual: dict, expected: dict, where: str) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        if key != "syncs":
            torch.testing.assert_close(actual[key].cpu(), expected[key].detach(),
                                       **TOLERANCES[DTYPE], msg=lambda m: f"{where} {key}: {m}")


@pytest.mark.parametrize("name", MODELS)
def test_cell_on_a_device_computes_what_it_computes_on_the_cpu(name):
    cell = build_cell(name)
    data = cell_inputs(cell, steps=13)
    expected = cell_outputs(copy.deepcopy(cell), copy.deepcopy(data))
    assert_same(on_virtual_device(cell, data), expected, "virtual device")


@pytest.mark.parametrize("name", MODELS)
def test_host_syncs_of_a_scan_do_not_grow_with_its_length(name):
    """On a GPU a host sync stalls the host until the device catches up: a scan may take a
    few (its branches on resets and lengths), never one per step."""
    cell = build_cell(name)
    short, long = (on_virtual_device(copy.deepcopy(cell), cell_inputs(cell, steps))["syncs"]
                   for steps in (13, 52))
    assert short == long, f"host syncs at T = 13: {short}, at T = 52: {long}"


@needs_cuda
@pytest.mark.parametrize("name", MODELS)
def test_cell_on_cuda_computes_what_it_computes_on_the_cpu(name):
    cell = build_cell(name)
    data = cell_inputs(cell, steps=13)
    expected = cell_outputs(copy.deepcopy(cell), copy.deepcopy(data))
    to_cuda = {k: ({s: t.cuda() for s, t in v.items()} if isinstance(v, dict) else v.cuda())
               for k, v in data.items()}
    actual = cell_outputs(cell.cuda(), to_cuda)
    assert all(v.device.type == "cuda" for k, v in actual.items() if k != "syncs")
    assert_same(actual, expected, "cuda")


# ---------------------------------------------------------------------- the learner
def learner_update(learner, config, module, batch) -> dict:
    """One PPO minibatch update of `module` as RLlib's learner makes it (forward_train, the
    loss, its gradients, an Adam step) on whatever device module and batch are: the loss, the
    gradients and the updated parameters; the env runners' forward (STATE_OUT) after it."""
    module_config = config.get_config_for_module(DEFAULT_MODULE_ID)
    loss = learner.compute_loss_for_module(module_id=DEFAULT_MODULE_ID, config=module_config,
                                           batch=batch, fwd_out=module.forward_train(batch))
    params = list(module.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-2, foreach=False)
    optimizer.zero_grad()
    loss.backward()
    grads = {f"grad {i}": p.grad.detach().clone() for i, p in enumerate(params)
             if p.grad is not None}
    optimizer.step()
    step_batch = {Columns.OBS: batch[Columns.OBS][:, :1], Columns.STATE_IN: batch[Columns.STATE_IN]}
    with torch.no_grad():
        after = module.forward_exploration(step_batch)
    return {"loss": loss.detach(), **grads,
            **{f"param {i}": p.detach().clone() for i, p in enumerate(params)},
            "logits after": after[Columns.ACTION_DIST_INPUTS],
            **{f"state out {k}": v for k, v in after[Columns.STATE_OUT].items()}}


def learner_and_cpu_update(name: str):
    """(learner, config, its module as built, a learner batch, the CPU update's results).
    The loss reads the learner's own module (its critic): the CPU update runs on it, and its
    weights are put back after."""
    learner, config = ppo_learner(name)
    module = learner.module[DEFAULT_MODULE_ID]
    batch = learner_batch(module)
    weights = copy.deepcopy(module.state_dict())
    expected = learner_update(learner, config, module, batch)
    module.load_state_dict(weights)
    return learner, config, module, batch, expected


def assert_update_equal(actual: dict, expected: dict, where: str) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(actual[key].cpu(), expected[key], atol=1e-5, rtol=1e-5,
                                   msg=lambda m: f"{where} {key}: {m}")


@pytest.mark.parametrize("name", STATEFUL)
def test_learner_update_on_a_device_is_the_cpu_update(name):
    learner, config, module, batch, expected = learner_and_cpu_update(name)
    with VirtualDevice() as device:
        actual = device.take(learner_update(learner, config, device.move(module),
                                            device.put(batch)))
    assert_update_equal(actual, expected, "virtual device")


def module_passes(module, obs, lengths) -> dict:
    """Every forward pass of MemoryRLModule on `obs` (B, T, D) (on whatever device module
    and obs are): the learner's (forward_train, compute_values) on rows of `lengths`, the
    inference pass's STATE_OUT, one env-runner step from the initial state; for a stateless
    module, the (N, D) layout RLlib sends it."""
    batch_size, steps = obs.shape[:2]
    with torch.no_grad():
        if not module.is_stateful():
            flat = {Columns.OBS: obs.reshape(batch_size * steps, -1)}
            return {"logits": module.forward_train(flat)[Columns.ACTION_DIST_INPUTS],
                    "values": module.compute_values(flat)}
        state = {k: torch.as_tensor(v, device=obs.device)[None].repeat(
                     batch_size, *([1] * v.ndim)) for k, v in module.get_initial_state().items()}
        rows = {Columns.OBS: obs, Columns.SEQ_LENS: lengths, Columns.STATE_IN: state}
        step = module.forward_exploration({Columns.OBS: obs[:, :1], Columns.STATE_IN: state})
        return {"logits": module.forward_train(rows)[Columns.ACTION_DIST_INPUTS],
                "values": module.compute_values(rows),
                **{f"state out {k}": v for k, v in
                   module.forward_inference(rows)[Columns.STATE_OUT].items()},
                "step logits": step[Columns.ACTION_DIST_INPUTS],
                **{f"step state {k}": v for k, v in step[Columns.STATE_OUT].items()}}


@pytest.mark.parametrize("name, timesteps_from_obs", [("mlp", False), ("gru", True),
                                                      ("event_ssm", True), ("ffm", True)])
def test_module_passes_on_a_device_are_the_cpu_ones(name, timesteps_from_obs):
    """The layouts the learner test leaves out: a stateless module's (N, D) rows, Δt read from
    the observations, and the env runners' step, whose initial state comes as numpy."""
    from test_rl_module import build

    module, env = build(name, "popgym-RepeatPreviousEasy-EventTime-v0",
                        timesteps_from_obs=timesteps_from_obs)
    g = torch.Generator().manual_seed(2)
    obs = torch.randn(3, SIZES["max_seq_len"], env.observation_space.shape[0], generator=g)
    obs[..., -1] = torch.randint(0, 4, obs.shape[:2], generator=g).float()      # Δt
    lengths = torch.tensor([SIZES["max_seq_len"], 5, 1])
    expected = module_passes(module, obs, lengths)
    with VirtualDevice() as device:
        actual = device.take(module_passes(device.move(module), device.put(obs),
                                           device.put(lengths)))
    assert_update_equal(actual, expected, "virtual device")


def test_learner_minibatches_of_a_batch_on_a_device_are_the_cpu_ones():
    """PPOLearner cuts the learner batch after RLlib moved it to the learner's device."""
    from experiments.rllib.batching import OldStackMinibatches

    valid = [3, 5, 2, 4, 6, 1, 7]
    np.random.seed(0)
    expected = [mb.policy_batches["default_policy"][Columns.OBS] for mb in
                OldStackMinibatches(minibatch_source(valid, 8), num_epochs=2, minibatch_size=5)]
    batch = minibatch_source(valid, 8)
    rows = batch.policy_batches["default_policy"]
    with VirtualDevice() as device:
        for column in list(rows.keys()):
            rows[column] = device.put(torch.utils._pytree.tree_map(torch.as_tensor,
                                                                   rows[column]))
        np.random.seed(0)
        actual = [device.take(mb.policy_batches["default_policy"][Columns.OBS]) for mb in
                  OldStackMinibatches(batch, num_epochs=2, minibatch_size=5)]
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        np.testing.assert_array_equal(got.numpy(), want)


@needs_cuda
@pytest.mark.parametrize("name", ["gru", "ffm", "min_gru", "event_ssm", "lmu_fft", "s4d"])
def test_learner_update_on_cuda_is_the_cpu_update(name):
    learner, config, module, batch, expected = learner_and_cpu_update(name)
    to_cuda = torch.utils._pytree.tree_map(lambda t: t.cuda(), batch)
    actual = learner_update(learner, config, module.cuda(), to_cuda)
    assert actual["loss"].device.type == "cuda"
    assert_update_equal(actual, expected, "cuda")


@needs_cuda
def test_ppo_trains_with_its_learner_on_the_gpu(ray_session):
    from experiments.rllib.ppo import ppo_config
    from experiments.rllib.rllib_private import local_learner

    sizes = {k: v for k, v in SIZES.items() if k != "max_seq_len"}
    config = ppo_config(env=ENV, memory="gru", memory_kwargs={}, model_config=sizes,
                        max_seq_len=SIZES["max_seq_len"], train_batch_size_per_learner=128,
                        minibatch_size=64, num_epochs=2).learners(num_gpus_per_learner=1)
    algo = config.build_algo()
    try:
        result = algo.train()
        module = local_learner(algo).module[DEFAULT_MODULE_ID]
        assert next(module.parameters()).device.type == "cuda"
        loss = result["learners"][DEFAULT_MODULE_ID]["total_loss"]
        assert np.isfinite(float(loss))
    finally:
        algo.stop()


# ---------------------------------------------------------------------- benchmarks/cells.py
def cells_benchmark():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "cells.py"
    spec = importlib.util.spec_from_file_location("cells_benchmark", path)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)   # dataclasses
    spec.loader.exec_module(module)
    return module


def test_cells_benchmark_subjects_build_and_run_on_a_device():
    """What `benchmarks/cells.py --device cuda` does (every peer, its subjects built on the
    device, timed calls run), on the virtual device at tiny sizes."""
    cells = cells_benchmark()
    sizes = cells.Sizes(batch=2, steps=8, input=4, hidden=8, memory=4, state=4,
                        learner=(3, 5), value=(4, 5))
    subjects = {name: lambda build=build: build(sizes) for name, (build, _) in cells.PEERS.items()}
    subjects["gru"] = lambda: cells.cell_subject("gru", sizes)
    with VirtualDevice():
        results = cells.measure(subjects, repeats=1, steps=2, device=str(VIRTUAL))
    assert set(results) == set(subjects)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cells_benchmark_refuses_cuda_without_a_device(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cells_benchmark().main(["--device", "cuda", "--models", "mlp",
                                "--out", str(tmp_path / "cells.md")])
    assert "--device cuda: no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "cells.md").exists()


@needs_cuda
def test_cells_benchmark_runs_on_cuda(tmp_path):
    out = tmp_path / "cells.md"
    assert cells_benchmark().main(["--device", "cuda", "--quick", "--models", "gru",
                                   "--repeats", "1", "--steps", "10", "--out", str(out)]) == 0
    assert "GPU: " in out.read_text()
