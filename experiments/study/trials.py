"""One trial of a study: its spec, the RLlib algorithm it trains, and the Tune trainable.

Tune gets one spec per trial (`trial_spec`, a JSON mapping under the config key "trial": what
`params.json` of the trial folder holds), and `StudyTrial` builds the trial's own complete
algorithm config from it (`algorithm_config`, through experiments.rllib.ppo.algorithm_config,
the one dispatch over new stack / old stack / popgym:<Class>), so every trial can differ in
anything: the API stack, the task (event-time or plain), the model and its PPO settings.
"""

from __future__ import annotations

from typing import Any

from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.algorithms.ppo import PPO

from experiments.rllib import ppo, workers
from experiments.rllib.rollout import rollout
from experiments.rllib.seeding import EVAL_SEED
from experiments.study.config import Study, Trial
from experiments.study.results import ENV_STEPS, EVAL_KEYS, EVALUATION

TRIAL_KEY = "trial"

__all__ = ["TRIAL_KEY", "trial_spec", "algorithm_config", "StudyTrial"]


def trial_spec(study: Study, trial: Trial) -> dict[str, Any]:
    """Everything one trial needs, as plain JSON values."""
    return {"name": trial.name, "variant": trial.variant, "task": trial.task,
            "seed": trial.seed, "model": trial.model.model_dump(),
            "ppo": dict(trial.ppo), "model_config": dict(trial.model_config),
            "resources": study.resources.model_dump(),
            "env_steps": study.stop.env_steps,
            "eval": None if study.eval is None else study.eval.model_dump(),
            "imports": list(study.imports), "base_dir": study.base_dir}


def algorithm_config(spec: dict) -> AlgorithmConfig:
    """The trial's complete PPO config (experiments.rllib.ppo.algorithm_config of its spec)."""
    workers.import_modules(spec["imports"], spec["base_dir"])
    res = spec["resources"]
    return ppo.algorithm_config(spec["model"], spec["task"], seed=spec["seed"], ppo=spec["ppo"],
                                sizes=spec["model_config"], num_gpus=res["num_gpus"],
                                num_env_runners=res["num_env_runners"],
                                num_envs_per_env_runner=res["num_envs_per_env_runner"])


class StudyTrial(PPO):
    """Tune trainable of one study trial: PPO built from the trial's spec (config["trial"]).

    With the study's `eval: {episodes: N, every: K, greedy: G}`, the policy plays N complete
    episodes (experiments.rllib.rollout: all N envs together, each with its own memory state
    reset at its start) every K training iterations and in the iteration that reaches the stop
    criterion (K = 0: only then); the same N episode seeds every time. Every result carries
    `evaluation` {return_mean, return_std, length_mean, episodes} (NaN where none ran, so that
    progress.csv keeps one set of columns).
    """

    @classmethod
    def default_resource_request(cls, config):
        if isinstance(config, dict) and TRIAL_KEY in config:
            config = algorithm_config(config[TRIAL_KEY])
        return super().default_resource_request(config)

    def __init__(self, config=None, **kwargs):
        workers.use_assigned_cpus()
        if isinstance(config, dict) and TRIAL_KEY in config:
            self.spec = config[TRIAL_KEY]
            config = algorithm_config(self.spec)
        super().__init__(config=config, **kwargs)

    def step(self) -> dict:
        result = super().step()
        settings = getattr(self, "spec", {}).get("eval")
        if settings:
            iteration = self.iteration + 1               # the one this step completes
            final = result.get(ENV_STEPS, 0) >= self.spec["env_steps"]
            due = final or (settings["every"] and iteration % settings["every"] == 0)
            result[EVALUATION] = self.evaluate_rollout(settings) if due else \
                dict.fromkeys(EVAL_KEYS, float("nan"))
        return result

    def evaluate_rollout(self, settings: dict) -> dict:
        """N complete episodes of the trial's task with the current policy."""
        policy = self.get_module() if self.config.enable_rl_module_and_learner \
            else self.get_policy()
        played = rollout(policy, self.spec["task"], episodes=settings["episodes"],
                         greedy=settings["greedy"], seed=EVAL_SEED)
        return {"return_mean": played["mean_return"], "return_std": played["std_return"],
                "length_mean": played["mean_length"], "episodes": played["episodes"]}
