"""The schema of a study file (configs/*.yaml), as pydantic models.

A study is the grid  tasks x models x seeds (x sweep values); every trial gets its own complete
settings:

    name: quickstart                  # results go to <output>/<name>/
    output: results                   # relative to the working directory; or a URI that
                                      # pyarrow opens (s3://bucket/prefix): see Study.storage
    imports: [my_cells]               # your modules registering memories (beside this file
                                      # or on the Python path), imported by every process
    tasks: [RepeatPreviousEasy, popgym-CountRecallEasy-v0, diagnostic]   # ids, short ids, groups
    models:
      - gru                           # a registry name ...
      - {name: lmu, label: LMU-64, kwargs: {memory_size: 64, theta: 64.0}}   # ... or a mapping
      - {name: gru, label: GRU-old, stack: old}    # our GRU on RLlib's old API stack
      - {name: "popgym:GRU"}          # POPGym's own model (old API stack)
      - {name: "rllib:GTrXL"}         # RLlib's own GTrXL (old API stack), gtrxl's keywords
      - {name: s4d, ppo: {lr: 1.0e-4}}             # PPO overrides for this model only
    seeds: [0, 1, 2]
    sweep: {ppo.lr: [1.0e-4, 5.0e-4]}            # multiplies the grid (ppo.*, model_config.*,
                                                 # models[i].kwargs.*, models[i].ppo.*)
    ppo: {lr: 5.0e-4, num_epochs: 10, max_seq_len: 256}   # over POPGym's protocol
    model_config: {hidden_size: 256}             # network widths: pre_, hidden_, head_size
    resources: {num_env_runners: 0, num_envs_per_env_runner: 8, num_gpus: 0}   # default 4 x 16
    stop: {env_steps: 100000}
    checkpoint: {frequency: 10, keep: 2}         # every 10 training iterations, and at the end
    max_failures: 3                              # restarts of a crashed trial (from checkpoint)
    eval: {episodes: 10, every: 0, greedy: true} # recurrent rollouts (every K iters; 0: at end)
    logging: {wandb: {project: my-project}}      # TensorBoard is always written

Every section is a frozen pydantic model that refuses unknown keys. `PPOSettings` lists every
`ppo` key with its default, POPGym's protocol (`experiments.rllib.defaults.POPGYM_PPO`, the one
place those values are written) or RLlib's; `ModelSizes` the `model_config` keys with
POPGYM_SIZES. A study keeps of these two sections only the keys its file sets (`Study.ppo`,
`Study.sizes`, `ModelEntry.ppo` are such dicts): the trial's PPO builder
(`experiments.rllib.ppo`) starts from POPGYM_PPO, so trial names, `study.json` and
`memrl train --dry-run` show what a study changes.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field,
                      PlainSerializer, StrictBool, StrictFloat, StrictInt, StrictStr,
                      StringConstraints, ValidationError, WrapValidator, model_validator)
from pydantic_core import PydanticCustomError

from experiments.rllib.defaults import POPGYM_PPO, POPGYM_SIZES
from experiments.rllib.popgym_models import canonical_name, is_popgym
from experiments.rllib import rllib_models
from experiments.rllib.seeding import MAX_ENV_RUNNERS, MAX_ENVS_PER_ENV_RUNNER, MAX_SEED

__all__ = ["PPOSettings", "ModelSizes", "ModelEntry", "Resources", "Stop", "Checkpoint", "Eval",
           "Wandb", "Logging", "Study", "sweep_model"]

# letters, digits, '_', '.', '-', not starting with '.', '_' or '-'
FolderName = Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]


class Section(BaseModel):
    """A part of a study file: unknown keys are errors, values are frozen once validated."""
    model_config = ConfigDict(extra="forbid", frozen=True)


def _one_error(message: str) -> WrapValidator:
    """A union's failure as one error `message` (pydantic reports one per member)."""
    def validate(value: Any, handler) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError("union_type", message) from None
    return WrapValidator(validate)


FragmentLength = Annotated[Literal["auto"] | Annotated[StrictInt, Field(ge=1)],
                           _one_error("Input should be 'auto' or an integer >= 1")]


# --------------------------------------------------------------------------- ppo, model_config
class PPOSettings(Section):
    """Every YAML `ppo` key (RLlib PPOConfig.training() arguments, plus max_seq_len, batch_mode
    and rollout_fragment_length), its default POPGym's protocol (POPGYM_PPO) or RLlib's."""
    lr: StrictFloat = Field(POPGYM_PPO["lr"], ge=0)
    gamma: StrictFloat = Field(POPGYM_PPO["gamma"], ge=0, le=1)
    lambda_: StrictFloat = Field(POPGYM_PPO["lambda_"], ge=0, le=1)
    clip_param: StrictFloat = Field(POPGYM_PPO["clip_param"], ge=0)
    vf_clip_param: StrictFloat = Field(POPGYM_PPO["vf_clip_param"], ge=0)
    vf_loss_coeff: StrictFloat = Field(POPGYM_PPO["vf_loss_coeff"], ge=0)
    entropy_coeff: StrictFloat = Field(POPGYM_PPO["entropy_coeff"], ge=0)
    kl_coeff: StrictFloat = Field(POPGYM_PPO["kl_coeff"], ge=0)
    kl_target: StrictFloat = Field(POPGYM_PPO["kl_target"], ge=0)
    use_kl_loss: StrictBool = True
    use_critic: StrictBool = True
    use_gae: StrictBool = True
    grad_clip: StrictFloat | None = Field(POPGYM_PPO["grad_clip"], ge=0)
    grad_clip_by: Literal["value", "norm", "global_norm"] = "global_norm"
    num_epochs: StrictInt = Field(POPGYM_PPO["num_epochs"], ge=1)
    train_batch_size_per_learner: StrictInt = Field(POPGYM_PPO["train_batch_size_per_learner"],
                                                    ge=1)
    minibatch_size: StrictInt = Field(POPGYM_PPO["minibatch_size"], ge=1)
    shuffle_batch_per_epoch: StrictBool = True      # permute the minibatch order each epoch
    max_seq_len: StrictInt = Field(POPGYM_PPO["max_seq_len"], ge=1)    # BPTT length
    batch_mode: Literal["complete_episodes", "truncate_episodes"] = POPGYM_PPO["batch_mode"]
    rollout_fragment_length: FragmentLength = "auto"


class ModelSizes(Section):
    """YAML `model_config`: the network's widths (the memory comes from `models`, the BPTT
    length from `ppo.max_seq_len`)."""
    pre_size: StrictInt = Field(POPGYM_SIZES["pre_size"], ge=1)
    hidden_size: StrictInt = Field(POPGYM_SIZES["hidden_size"], ge=1)
    head_size: StrictInt = Field(POPGYM_SIZES["head_size"], ge=1)


def _set_keys(section: Section) -> dict[str, Any]:
    return section.model_dump(exclude_unset=True)


# validated as the whole section, kept as the dict of the keys the file sets
PPOOverrides = Annotated[PPOSettings, AfterValidator(_set_keys), PlainSerializer(dict)]
SizeOverrides = Annotated[ModelSizes, AfterValidator(_set_keys), PlainSerializer(dict)]


# --------------------------------------------------------------------------- models
def _known_popgym(name: str) -> str:
    """popgym:<Class> as POPGym spells it; an unknown class is an error listing the valid."""
    if rllib_models.is_rllib(name):
        return rllib_models.canonical_name(name)
    return canonical_name(name) if is_popgym(name) else name


class ModelEntry(Section):
    """One entry of `models`; `- gru` is short for `{name: gru}`."""
    name: Annotated[StrictStr, AfterValidator(_known_popgym)]   # registry name or popgym:<Class>
    label: FolderName                           # tables, plots, folders; default: the name
    kwargs: dict[StrictStr, Any] = {}
    stack: Literal["new", "old"] = "new"        # RLlib API stack; popgym:* is always "old"
    ppo: PPOOverrides = {}                      # this model's own overrides

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data: Any) -> Any:
        """The shorthand, and what the name decides: the label (`popgym:gru` -> `popgym-GRU`)
        and, for POPGym's models, the old stack (their only one)."""
        if isinstance(data, str):
            data = {"name": data}
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return data
        data = dict(data)
        if is_popgym(data["name"]) or rllib_models.is_rllib(data["name"]):
            with contextlib.suppress(ValueError):      # unknown: the name's own error says so
                data["name"] = (rllib_models.canonical_name if rllib_models.is_rllib(
                    data["name"]) else canonical_name)(data["name"])
            if data.get("stack", "new") == "new":
                data["stack"] = "old"
        if data.get("label", "") == "":
            data["label"] = data["name"].replace(":", "-")
        return data

    @property
    def is_popgym(self) -> bool:
        return is_popgym(self.name)


# --------------------------------------------------------------------------- other sections
class Resources(Section):
    num_env_runners: StrictInt = Field(POPGYM_PPO["num_env_runners"], ge=0, le=MAX_ENV_RUNNERS)
    num_envs_per_env_runner: StrictInt = Field(POPGYM_PPO["num_envs_per_env_runner"], ge=1,
                                               le=MAX_ENVS_PER_ENV_RUNNER)
    num_gpus: StrictFloat = Field(0.0, ge=0)    # GPUs for each trial's learner
    max_concurrent_trials: StrictInt = Field(0, ge=0)   # 0: as many as the cluster fits


class Stop(Section):
    env_steps: StrictInt = Field(ge=1)          # env steps sampled per trial


class Checkpoint(Section):
    frequency: StrictInt = Field(10, ge=0)      # every N training iterations (0: only at end)
    keep: StrictInt = Field(2, ge=0)            # most recent N kept (0: all)


class Eval(Section):
    episodes: StrictInt = Field(10, ge=1)       # complete episodes per evaluation
    every: StrictInt = Field(0, ge=0)           # every K training iterations (0: at the end)
    greedy: StrictBool = True                   # the distribution's mode, else sample


class Wandb(Section):
    project: StrictStr
    entity: StrictStr | None = None
    group: StrictStr | None = None


class Logging(Section):
    wandb: Wandb | None = None                  # Weights & Biases (pip install memrl[wandb])


# --------------------------------------------------------------------------- sweep keys
_SWEEP_KEY = re.compile(r"^(ppo|model_config)\.\w+$|^models\[(\d+)\]\.(kwargs|ppo)\.\w+$")


def _sweep_key(key: str) -> str:
    if not _SWEEP_KEY.match(key):
        raise ValueError("sweep keys are ppo.KEY, model_config.KEY, models[i].kwargs.KEY or "
                         "models[i].ppo.KEY")
    return key


def sweep_model(key: str) -> int | None:
    """The index of the model a sweep key belongs to (None: every model)."""
    index = _SWEEP_KEY.match(key).group(2)
    return None if index is None else int(index)


# --------------------------------------------------------------------------- the study
def _one_or_more(value: Any) -> Any:
    """A single task / seed / model may be written without a list."""
    return [value] if isinstance(value, (str, int)) and not isinstance(value, bool) else value


def _resolve_task(name: str) -> list[str]:
    import envs
    return envs.resolve([name])


def _flatten_unique(groups: list[list[str]]) -> list[str]:
    return list(dict.fromkeys(t for group in groups for t in group))


def _unique_seeds(seeds: list[int]) -> list[int]:
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"repeated seed in {seeds}")
    return seeds


class Study(Section):
    name: FolderName
    tasks: Annotated[list[Annotated[StrictStr, AfterValidator(_resolve_task)]],
                     Field(min_length=1), BeforeValidator(_one_or_more),
                     AfterValidator(_flatten_unique)]             # resolved POPGym ids
    models: Annotated[list[ModelEntry], Field(min_length=1), BeforeValidator(_one_or_more)]
    seeds: Annotated[list[Annotated[StrictInt, Field(ge=0, le=MAX_SEED)]], Field(min_length=1),
                     BeforeValidator(_one_or_more), AfterValidator(_unique_seeds)]
    stop: Stop
    output: StrictStr = "results"
    imports: list[StrictStr] = []
    sweep: dict[Annotated[StrictStr, AfterValidator(_sweep_key)],
                Annotated[list[Any], Field(min_length=1)]] = {}
    ppo: PPOOverrides = {}                                        # overrides only
    sizes: SizeOverrides = Field({}, alias="model_config")        # overrides only
    resources: Resources = Resources()
    checkpoint: Checkpoint = Checkpoint()
    max_failures: StrictInt = Field(3, ge=0)    # restarts of a failed trial, from checkpoint
    eval: Eval | None = None
    logging: Logging = Logging()
    base_dir: StrictStr = "."                   # the study file's folder (set by `load`)
    internal_keys: ClassVar[frozenset[str]] = frozenset({"base_dir"})   # not the file's to set

    @model_validator(mode="after")
    def _models_distinct_and_swept_models_exist(self) -> Study:
        labels = [m.label for m in self.models]
        for i, model in enumerate(self.models):
            first = labels.index(model.label)
            if first != i:
                raise ValueError(f"models[{i}].label: label {model.label!r} is already used "
                                 f"by models[{first}]; give each model a distinct label")
            for j, other in enumerate(self.models[:i]):
                if (model.name, model.kwargs, model.stack, model.ppo) == \
                        (other.name, other.kwargs, other.stack, other.ppo):
                    raise ValueError(f"models[{i}]: same model and kwargs as models[{j}] "
                                     f"({other.label!r})")
        for key in self.sweep:
            index = sweep_model(key)
            if index is not None and index >= len(self.models):
                raise ValueError(f"sweep.{key}: models[{index}] does not exist (the study "
                                 f"has {len(self.models)} models)")
            own = key.split(".", 1)[1]
            if index is not None and key.split(".")[1] == "ppo" and own in self.sweep:
                raise ValueError(f"sweep.{key} and sweep.{own} both sweep {own}: a trial "
                                 f"could train with only one of them; sweep one")
        return self

    @property
    def storage(self) -> str | None:
        """Where Ray Tune keeps the study when `output` is a filesystem URI that pyarrow opens
        (s3://bucket/prefix, gs://..., with pyarrow's ?options): <output>/<name> as a URI, the
        query kept. None for a local `output`."""
        if "://" not in self.output:
            return None
        parts = urlsplit(self.output)
        return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{self.name}"))

    @property
    def directory(self) -> Path:
        """Absolute local folder of the study: <output>/<name>; with a URI `output` (storage),
        the driver's copy results/<name>: study.json, logs/, and the trials' logs copied from
        the storage (no checkpoints), which `memrl report` reads."""
        return (Path("results" if self.storage else self.output) / self.name).resolve()

    def to_dict(self) -> dict:
        """The study as its file's mapping would hold it (tasks resolved, labels filled)."""
        return self.model_dump(by_alias=True)
