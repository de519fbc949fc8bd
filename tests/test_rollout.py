"""Per-episode recurrent rollout: the step-by-step policy equals the module's training-time
forward over the same episode, the state resets per episode, runs are seeded, and the CLI
restores a saved checkpoint."""

import json

import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns

import envs
import memory_models
from small_sizes import small_memory_kwargs
from experiments import cli
from experiments.rllib.rl_module import memory_module_spec
from experiments.rllib.rollout import load_module, play_episode, rollout

ENV = "popgym-RepeatPreviousEasy-v0"
SIZES = {"pre_size": 16, "hidden_size": 12, "head_size": 8}


def build_module(memory, env_id=ENV, seed=0):
    env = envs.make_env(env_id)
    spec = memory_module_spec(memory, small_memory_kwargs(memory), max_seq_len=64, **SIZES)
    spec.observation_space, spec.action_space = env.observation_space, env.action_space
    torch.manual_seed(seed)
    module = spec.build()
    with torch.no_grad():   # larger head weights than the init's: actions that vary
        for layer in module.actor:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.normal_(0, 3 / layer.in_features ** 0.5)
    return module.eval(), env


@pytest.mark.parametrize("memory", memory_models.available())
def test_step_by_step_equals_forward_train_over_the_episode(memory):
    module, env = build_module(memory)
    episode = play_episode(module, env, greedy=True, seed=3)
    steps = episode["length"]
    assert steps > 1 and episode["observations"].shape == (steps, env.observation_space.shape[0])

    batch = {Columns.OBS: torch.as_tensor(episode["observations"])[None]}      # (1, T, D)
    if module.is_stateful():
        batch[Columns.STATE_IN] = {k: torch.as_tensor(v)[None]
                                   for k, v in module.get_initial_state().items()}
        batch[Columns.SEQ_LENS] = torch.tensor([steps])
    else:
        batch[Columns.OBS] = batch[Columns.OBS][0]                              # (T, D)
    with torch.no_grad():
        logits = module.forward_train(batch)[Columns.ACTION_DIST_INPUTS].reshape(steps, -1)
    torch.testing.assert_close(torch.as_tensor(episode["action_dist_inputs"]), logits,
                               atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(episode["actions"], logits.argmax(-1).numpy())
    assert float(logits.std(0).max()) > 1e-2, "logits constant over the episode: test is void"


def test_state_resets_per_episode_and_runs_are_seeded():
    module, _ = build_module("gru")
    rng_before = torch.random.get_rng_state()
    two = rollout(module, ENV, episodes=2, greedy=True, seed=5)
    one = rollout(module, ENV, episodes=1, greedy=True, seed=6)
    assert two["returns"][1] == one["returns"][0] and two["lengths"][1] == one["lengths"][0]
    assert two["mean_return"] == pytest.approx(np.mean(two["returns"]))

    sampled = [rollout(module, ENV, episodes=3, greedy=False, seed=s)["returns"]
               for s in (0, 0, 1)]
    assert sampled[0] == sampled[1] and sampled[0] != sampled[2]
    assert torch.equal(torch.random.get_rng_state(), rng_before)   # global RNG untouched


def test_box_actions_are_mapped_into_the_action_space():
    env_id = "popgym-PositionOnlyPendulumEasy-v0"
    module, env = build_module("gru", env_id)
    episode = play_episode(module, env, greedy=True, seed=0)
    assert episode["length"] > 1 and np.isfinite(episode["return"])


def test_bad_arguments_raise_clear_errors(tmp_path):
    module, _ = build_module("mlp")
    with pytest.raises(ValueError, match="episodes must be a positive int"):
        rollout(module, ENV, episodes=0)
    with pytest.raises(ValueError, match="unknown env .popgym-RepeatPrevious-v0."):
        rollout(module, "popgym-RepeatPrevious-v0")
    with pytest.raises(ValueError, match="observations of shape"):
        rollout(module, "popgym-PositionOnlyCartPoleEasy-v0")
    with pytest.raises(FileNotFoundError, match="no RLModule"):
        load_module(tmp_path)


def test_cli_rolls_out_a_saved_checkpoint(ray_session, tmp_path, capsys, monkeypatch):
    from experiments.rllib.ppo import ppo_config

    config = ppo_config(env=ENV, memory="gru", model_config=SIZES, max_seq_len=16,
                        train_batch_size_per_learner=128, minibatch_size=64, num_epochs=1)
    algo = config.build_algo()
    try:
        algo.train()
        algo.save(str(tmp_path / "ckpt"))
        trained = rollout(algo.get_module(), ENV, episodes=2, seed=4)
    finally:
        algo.stop()

    out = tmp_path / "rollout.json"
    assert cli.main(["rollout", str(tmp_path / "ckpt"), "--env", ENV, "--episodes", "2",
                     "--seed", "4", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mean" in printed and ENV in printed
    result = json.loads(out.read_text())
    assert result["returns"] == trained["returns"] and result["lengths"] == trained["lengths"]
    assert len(result["returns"]) == 2 and result["greedy"] is True

    monkeypatch.chdir(tmp_path)            # a relative path, as typed after `memrl train`
    assert cli.main(["rollout", "ckpt", "--env", ENV, "--episodes", "2",
                     "--sample", "--seed", "4"]) == 0
    capsys.readouterr()
    assert cli.main(["rollout", "ckpt", "--episodes", "2", "--seed", "4"]) == 0   # env inferred
    assert ENV in capsys.readouterr().out
    assert cli.main(["rollout", str(tmp_path), "--env", ENV]) == 2
    assert "no RLModule" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["gru", "popgym:GRU"])
def test_cli_rolls_out_an_old_stack_checkpoint(ray_session, tmp_path, capsys, name):
    """Our `memrl_<name>` models and POPGym's, trained on the old stack: the checkpoint's
    Policy plays as the trained one did, its env read from the checkpoint."""
    from experiments.rllib.ppo import algorithm_config

    algo = algorithm_config({"name": name, "kwargs": {}, "stack": "old"}, ENV, seed=0,
                            sizes=SIZES, ppo=dict(train_batch_size_per_learner=128,
                                                  minibatch_size=64, num_epochs=1,
                                                  max_seq_len=16)).build_algo()
    try:
        algo.train()
        algo.save(str(tmp_path / "ckpt"))
        trained = rollout(algo.get_policy(), ENV, episodes=3, greedy=False, seed=4)
    finally:
        algo.stop()
    out = tmp_path / "rollout.json"
    assert cli.main(["rollout", str(tmp_path / "ckpt"), "--episodes", "3", "--sample",
                     "--seed", "4", "--json", str(out)]) == 0
    assert ENV in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["returns"] == trained["returns"] and result["lengths"] == trained["lengths"]
