"""Study files: every kind of bad input fails naming its path; overrides; grid expansion."""

from pathlib import Path

import pytest
import yaml

import memory_models
from experiments.study import config
from experiments.study.config import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def base():
    return {"name": "t", "tasks": ["RepeatPreviousEasy"], "models": ["gru", "mlp"],
            "seeds": [0, 1], "stop": {"env_steps": 100}}


def with_(**changes):
    raw = base()
    raw.update(changes)
    return raw


def fails(raw, *fragments):
    with pytest.raises(ConfigError) as error:
        config.validate(raw, where="f.yaml")
    for fragment in fragments:
        assert fragment in str(error.value), str(error.value)
    return str(error.value)


def test_minimal_study_gets_popgym_defaults():
    study = config.validate(base())
    assert study.tasks == ["popgym-RepeatPreviousEasy-v0"]
    assert [m.label for m in study.models] == ["gru", "mlp"]
    assert study.ppo == {} and study.sizes == {}    # overrides only: ppo_config adds POPGYM_PPO
    assert (study.resources.num_env_runners, study.resources.num_envs_per_env_runner) == (4, 16)
    assert study.directory == (Path("results") / "t").resolve()


def test_popgym_models_are_spelled_as_popgym_does_and_run_on_the_old_stack():
    study = config.validate(with_(models=["popgym:gru", {"name": "popgym:lmu", "stack": "new"},
                                          {"name": "gru", "stack": "old"}]))
    assert [(m.name, m.label, m.stack) for m in study.models] == [
        ("popgym:GRU", "popgym-GRU", "old"), ("popgym:LMU", "popgym-LMU", "old"),
        ("gru", "gru", "old")]
    assert study.to_dict()["models"][0] == {"name": "popgym:GRU", "label": "popgym-GRU",
                                            "kwargs": {}, "stack": "old", "ppo": {}}


@pytest.mark.parametrize("raw, fragments", [
    (with_(colour=1), ["f.yaml: colour: unknown key", "'models'", "'model_config'"]),
    ({k: v for k, v in base().items() if k != "stop"}, ["f.yaml: stop: Field required"]),
    (with_(name=3), ["name: expected a valid string, got int 3"]),
    (with_(name="a/b"), ["name: must be a folder name (letters, digits, '_', '.', '-'; "
                           "starting with a letter or digit), got str 'a/b'"]),
    (with_(models=[{"name": "gru", "label": ".g"}]), ["models[0].label: must be a folder name"]),
    (with_(tasks=["RepeatPrevEasy"]), ["tasks[0]:", "popgym-RepeatPreviousEasy-v0", "diagnostic"]),
    (with_(tasks=[]), ["tasks: List should have at least 1 item"]),
    (with_(models=["gru", "lmuu"]), ["models[1].name: unknown memory model 'lmuu'", "'lmu'"]),
    (with_(models=["gru", {"name": "lmu", "kwargs": {"memory_sise": 4}}]),
     ["models[1].kwargs.memory_sise: unknown key", "'memory_size'", "theta"]),
    (with_(models=[{"name": "lmu", "kwargs": {"memory_size": "big"}}]),
     ["models[0].kwargs.memory_size: expected a valid integer, got str 'big'"]),
    (with_(models=[{"name": "lmu", "kwargs": {"memory_size": -3}}]),
     ["models[0].kwargs: lmu rejects these arguments"]),
    (with_(models=[{"name": "gru", "labl": "G"}]), ["models[0].labl: unknown key", "'label'"]),
    (with_(models=[{"name": "gru", "ppo": {"lrr": 1.0}}]),
     ["models[0].ppo.lrr: unknown key (did you mean 'lr'?); allowed: ['batch_mode'"]),
    (with_(models=[3]), ["models[0]: expected a valid dictionary", "got int 3"]),
    (with_(models=[{"name": "gru", "stack": "mid"}]),
     ["models[0].stack: expected 'new' or 'old', got str 'mid'"]),
    (with_(models=["gru", {"name": "mlp", "label": "gru"}]),
     ["models[1].label: label 'gru' is already used by models[0]"]),
    (with_(models=["gru", {"name": "gru", "label": "g2"}]), ["models[1]: same model and kwargs"]),
    (with_(seeds=[0, "1"]), ["seeds[1]: expected a valid integer, got str '1'"]),
    (with_(seeds=[0, 0]), ["seeds: repeated seed"]),
    (with_(ppo={"lr": "fast"}), ["ppo.lr: expected a valid number, got str 'fast'"]),
    (with_(ppo={"learning_rate": 1e-3}), ["ppo.learning_rate: unknown key", "'lr'", "num_epochs"]),
    (with_(ppo={"num_epochs": 2.5}), ["ppo.num_epochs: expected a valid integer, got float 2.5"]),
    (with_(ppo={"batch_mode": "episodes"}),
     ["ppo.batch_mode: expected 'complete_episodes' or 'truncate_episodes', got str 'episodes'"]),
    (with_(ppo={"rollout_fragment_length": 0}),
     ["ppo.rollout_fragment_length: expected 'auto' or an integer >= 1, got int 0"]),
    (with_(ppo={"rollout_fragment_length": "x"}),
     ["ppo.rollout_fragment_length: expected 'auto' or an integer >= 1, got str 'x'"]),
    (with_(ppo={"gamma": 2.0}), ["ppo.gamma: expected less than or equal to 1, got float 2.0"]),
    (with_(ppo={"num_env_runners": 2}), ["ppo.num_env_runners: unknown key"]),
    (with_(model_config={"hidden": 8}), ["model_config.hidden: unknown key", "'hidden_size'"]),
    (with_(model_config={"hidden_size": 0}),
     ["model_config.hidden_size: expected greater than or equal to 1, got int 0"]),
    (with_(resources={"num_gpus": "one"}), ["resources.num_gpus: expected a valid number"]),
    (with_(resources=3), ["resources: expected a valid dictionary", "got int 3"]),
    (with_(resources={"cpus": 1}), ["resources.cpus: unknown key", "num_env_runners"]),
    (with_(stop={"env_steps": 0}), ["stop.env_steps: expected greater than or equal to 1"]),
    (with_(stop={"steps": 10}), ["stop.steps: unknown key", "env_steps"]),
    (with_(checkpoint={"frequency": -1}),
     ["checkpoint.frequency: expected greater than or equal to 0, got int -1"]),
    (with_(logging={"wandb": {"project": "p", "team": "t"}}),
     ["logging.wandb.team: unknown key; allowed: ['entity', 'group', 'project']"]),
    ([1, 2], ["f.yaml: expected a valid dictionary", "got list [1, 2]"]),
])
def test_bad_input_names_its_path(raw, fragments):
    fails(raw, *fragments)


def test_load_reads_1e_minus_4_as_a_float_and_applies_overrides(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(with_(ppo={"num_epochs": 3})) + "\n")
    study = config.load(path, ["ppo.lr=1e-4", "stop.env_steps=1000", "models[1].label=MLP",
                               "seeds=[3]", "model_config.hidden_size=32"])
    assert study.ppo == {"num_epochs": 3, "lr": 1e-4}
    assert study.stop.env_steps == 1000 and study.seeds == [3]
    assert study.models[1].label == "MLP" and study.sizes == {"hidden_size": 32}


def test_overrides_are_revalidated_and_bad_keys_explained(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(base()))
    with pytest.raises(ConfigError, match=r"ppo.lr: expected a valid number, got str 'x'"):
        config.load(path, ["ppo.lr=x"])
    with pytest.raises(ConfigError, match=r"models\[5\] does not exist \(the list has 2\)"):
        config.load(path, ["models[5].label=x"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        config.load(path, ["ppo.lr"])
    with pytest.raises(ConfigError, match="name is not a mapping"):
        config.load(path, ["name.x=1"])


def test_unreadable_files_fail_clearly(tmp_path):
    with pytest.raises(ConfigError, match="no such study file"):
        config.load(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(tmp_path / "bad.yaml")


def test_grid_is_tasks_by_models_by_seeds_in_order():
    study = config.validate(with_(tasks=["RepeatPreviousEasy", "CountRecallEasy"],
                                  models=["gru", {"name": "mlp", "label": "MLP"}],
                                  seeds=[0, 1, 2]))
    trials = config.expand(study)
    assert len(trials) == 2 * 2 * 3
    assert [t.index for t in trials] == list(range(12))
    assert [(t.task, t.model.label, t.seed) for t in trials[:4]] == [
        ("popgym-RepeatPreviousEasy-v0", "gru", 0), ("popgym-RepeatPreviousEasy-v0", "gru", 1),
        ("popgym-RepeatPreviousEasy-v0", "gru", 2), ("popgym-RepeatPreviousEasy-v0", "MLP", 0)]
    assert trials[-1].name == "CountRecallEasy-MLP-s2"
    assert len({t.name for t in trials}) == len(trials)


def test_groups_expand_to_unique_ids():
    study = config.validate(with_(tasks=["diagnostic", "RepeatPreviousEasy"]))
    import envs
    assert study.tasks == envs.list_envs("diagnostic")


@pytest.mark.parametrize("name", ["quickstart", "popgym_paper", "smoke"])
def test_shipped_configs_validate(name):
    """Models not registered (yet) are dropped first: the validator rightly rejects them."""
    raw = yaml.load((CONFIGS / f"{name}.yaml").read_text(), Loader=config.YamlLoader)
    registered = [m for m in raw["models"]
                  if (m if isinstance(m, str) else m["name"]) in memory_models.available()]
    assert registered, "no model of this config is registered"
    study = config.validate({**raw, "models": registered}, where=name)
    assert study.name == name and config.expand(study)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_loads_fully(path):
    """Every study file of configs/ validates with its models built (imports included)."""
    study = config.load(path)
    assert config.expand(study) and study.name == path.stem


# The POPGym paper's PPO protocol, as experiments/rllib/defaults.py reads popgym/baselines/ppo.py
# (set there, or RLlib ~2.0's PPOConfig defaults where it sets nothing), written out here.
PAPER_PPO = {"lr": 5e-5, "gamma": 0.99, "lambda_": 1.0, "clip_param": 0.3, "num_epochs": 30,
             "train_batch_size_per_learner": 65536, "minibatch_size": 8192, "max_seq_len": 1024,
             "batch_mode": "complete_episodes", "vf_clip_param": 10.0, "kl_coeff": 0.2,
             "kl_target": 0.01, "entropy_coeff": 0.0, "vf_loss_coeff": 1.0, "grad_clip": None}


def test_ppo_defaults_are_the_papers_protocol():
    """What a study trains with when its file sets nothing: the schema's defaults and the
    values the trial's PPO builder starts from (POPGYM_PPO), 4 env runners x 16 envs."""
    from experiments.rllib.defaults import POPGYM_PPO
    fields = config.PPOSettings.model_fields
    assert {key: fields[key].default for key in PAPER_PPO} == PAPER_PPO
    assert {key: POPGYM_PPO[key] for key in PAPER_PPO} == PAPER_PPO
    resources = config.Resources()
    assert (resources.num_env_runners, resources.num_envs_per_env_runner) == (4, 16)
    assert (POPGYM_PPO["num_env_runners"], POPGYM_PPO["num_envs_per_env_runner"]) == (4, 16)


def test_ppo_schema_is_rllibs_ppo_with_rllibs_defaults_elsewhere():
    """PPOSettings lists PPOConfig.training() arguments (and three env-runner/model keys); the
    keys the paper leaves alone default to RLlib's PPOConfig values."""
    from ray.rllib.algorithms.ppo import PPOConfig

    from experiments.rllib.settings import _training_keys
    fields = config.PPOSettings.model_fields
    extra = {"max_seq_len", "batch_mode", "rollout_fragment_length"}
    assert set(fields) - extra <= _training_keys()
    assert set(PAPER_PPO) <= set(fields)
    rllib = PPOConfig()
    for key in set(fields) - set(PAPER_PPO):
        assert fields[key].default == getattr(rllib, key), key
