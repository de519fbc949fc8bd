"""rllib:GTrXL, RLlib's own GTrXL (the old stack's use_attention model) as a study peer: its
model dict at sizes matched to our gtrxl, the refusals, a study entry, and one tiny PPO
iteration on the old stack."""

import pytest
import torch

from experiments.rllib.rllib_models import (canonical_name, check_rllib_model, is_rllib,
                                            rllib_model_config)

ENV = "popgym-RepeatPreviousEasy-v0"
SIZES = {"pre_size": 16, "hidden_size": 12, "head_size": 8}


def test_names():
    assert is_rllib("rllib:GTrXL") and not is_rllib("gtrxl") and not is_rllib("popgym:GRU")
    assert canonical_name("rllib:gtrxl") == "rllib:GTrXL"
    with pytest.raises(ValueError, match=r"unknown RLlib model 'rllib:LSTM'.*rllib:GTrXL"):
        canonical_name("rllib:LSTM")


def test_model_dict_matches_our_gtrxl_at_its_defaults():
    """The unit's sizes are our gtrxl's defaults at the study's hidden_size (heads 4 at 12,
    head_dim 3, mlp 12, window 64 -> memory 63), RLlib's keys."""
    model = rllib_model_config("rllib:GTrXL", {}, SIZES, max_seq_len=16)
    assert model == {"use_attention": True, "fcnet_hiddens": [16, 16], "vf_share_layers": True,
                     "attention_num_transformer_units": 1, "attention_dim": 12,
                     "attention_num_heads": 4, "attention_head_dim": 3,
                     "attention_position_wise_mlp_dim": 12, "attention_memory_inference": 63,
                     "attention_memory_training": 63, "attention_init_gru_gate_bias": 2.0,
                     "max_seq_len": 16}
    custom = rllib_model_config("rllib:GTrXL", {"window": 9, "heads": 2, "head_dim": 5,
                                                "mlp_size": 7, "gate_bias": 1.0, "layers": 2},
                                SIZES, max_seq_len=16)
    assert (custom["attention_memory_training"], custom["attention_num_heads"],
            custom["attention_head_dim"], custom["attention_position_wise_mlp_dim"],
            custom["attention_init_gru_gate_bias"], custom["attention_num_transformer_units"]) \
        == (8, 2, 5, 7, 1.0, 2)


@pytest.mark.parametrize("kwargs, message", [
    ({"memory_size": 4}, r"kwargs \['memory_size'\] are not keys of rllib:GTrXL; allowed: "
                         r"\['gate_bias', 'head_dim', 'heads', 'layers', 'mlp_size', 'window'\]"),
    ({"window": 1}, r"needs window >= 2"),
    ({"window": 0}, r"window must be a positive int"),
    ({"heads": 5}, r"heads must divide hidden_size"),
    ({"layers": 0}, r"layers must be a positive int"),
])
def test_refused_with_the_reason(kwargs, message):
    problem = check_rllib_model("rllib:GTrXL", kwargs, hidden_size=12)
    assert problem is not None
    assert __import__("re").search(message, problem), problem
    with pytest.raises(ValueError, match=message):
        rllib_model_config("rllib:GTrXL", kwargs, SIZES, max_seq_len=16)


def test_study_entry_is_an_old_stack_peer():
    from experiments.study.schema import ModelEntry
    entry = ModelEntry.model_validate({"name": "rllib:gtrxl", "kwargs": {"window": 8}})
    assert (entry.name, entry.label, entry.stack) == ("rllib:GTrXL", "rllib-GTrXL", "old")


def test_study_validation_checks_its_keywords():
    """A study with rllib:GTrXL validates (`memrl train --dry-run`); a bad keyword or value
    is the study's error, naming the entry."""
    from experiments.study import config
    from experiments.study.config import ConfigError
    raw = {"name": "t", "tasks": ["RepeatPreviousEasy"], "seeds": [0],
           "stop": {"env_steps": 100}, "model_config": {"hidden_size": 12},
           "models": ["gtrxl", {"name": "rllib:GTrXL", "kwargs": {"window": 8}}]}
    study = config.validate(raw, where="f.yaml")
    assert study.models[1].name == "rllib:GTrXL" and study.models[1].stack == "old"
    for kwargs, fragment in (({"memory": 8}, "kwargs ['memory'] are not keys of rllib:GTrXL"),
                             ({"heads": 5}, "heads must divide hidden_size")):
        raw["models"][1]["kwargs"] = kwargs
        with pytest.raises(ConfigError, match="f.yaml") as error:
            config.validate(raw, where="f.yaml")
        assert "models[1]" in str(error.value) and fragment in str(error.value), error.value


def test_attention_study_config_validates():
    from pathlib import Path

    from experiments.study import config
    study = config.load(Path(__file__).resolve().parents[1] / "configs" / "attention.yaml")
    assert [m.name for m in study.models] == ["transformer", "transformer", "transformer",
                                              "gtrxl", "rllib:GTrXL", "gru", "popgym:GRU"]
    assert [m.kwargs.get("position", "alibi") for m in study.models[:3]] == \
        ["alibi", "rotary", "learned"]


def test_one_old_stack_ppo_iteration(ray_session):
    """algorithm_config's rllib:GTrXL trains one tiny iteration (window 8, hidden 12) on the
    old stack, every parameter updated; the study's rollouts run it with its memory."""
    from experiments.rllib.ppo import algorithm_config
    config = algorithm_config({"name": "rllib:GTrXL", "kwargs": {"window": 8}, "stack": "old"},
                              ENV, seed=0, num_envs_per_env_runner=2, sizes=SIZES,
                              ppo=dict(train_batch_size_per_learner=128, minibatch_size=64,
                                       num_epochs=1, max_seq_len=16))
    assert config.model["use_attention"] and config.model["attention_memory_training"] == 7
    algo = config.build_algo()
    try:
        model = algo.get_policy().model
        assert type(model).__name__.endswith("AttentionWrapper")     # RLlib wraps its fcnet
        before = [p.detach().clone() for p in model.parameters()]
        result = algo.train()
        stats = result["info"]["learner"]["default_policy"]["learner_stats"]
        assert result["num_env_steps_sampled"] >= 128
        assert torch.isfinite(torch.tensor(stats["total_loss"]))
        unchanged = [name for (name, p), b in zip(model.named_parameters(), before)
                     if torch.equal(p, b)]
        assert not unchanged, unchanged
        # the study's evaluation: recurrent rollouts carrying RLlib's memory of W - 1 steps
        from experiments.rllib.rollout import PolicyActor, rollout
        assert PolicyActor(algo.get_policy(), True).initial_state(3)[0].shape == (3, 7, 12)
        played = rollout(algo.get_policy(), ENV, episodes=2)
        assert played["episodes"] == 2 and min(played["lengths"]) > 7      # past the memory
    finally:
        algo.stop()


def test_report_compares_gtrxl_with_rllibs():
    """`memrl report`'s probability of improvement pairs gtrxl with rllib:GTrXL, as each of
    our cells with its POPGym original (the issue's verdict: ours against RLlib's GTrXL)."""
    import pandas as pd

    from experiments.report import aggregate
    rows = [("gtrxl-W64", "gtrxl", "new", {"window": 64}, {}),
            ("rllib-GTrXL-W64", "rllib:GTrXL", "old", {"window": 64}, {}),
            ("transformer-W64", "transformer", "new", {"window": 64}, {})]
    trials = pd.DataFrame(rows, columns=["variant", "model", "stack", "kwargs", "sweep"])
    assert aggregate.comparisons(trials) == [("gtrxl-W64", "rllib-GTrXL-W64")]
