"""Every private Ray name memrl relies on, in one file: a Ray upgrade is this file's work.

RLlib's public API does not reach what experiments.rllib changes in its new API stack
(old-stack sampling, minibatches and env seeds, sparse memory states): those parts override
or read RLlib's private methods and attributes. They are used here and nowhere else; the rest
of the project calls the public names below. Each was checked against the Ray versions in
CHECKED_RAY_VERSIONS, and importing this module on another version fails with what to do
(MEMRL_UNCHECKED_RAY=1 lets it import anyway, with a warning, so that the checks can run on the
new version). tests/test_rllib_private.py holds each name to RLlib's own behaviour.

| private name (Ray 2.60) | of | what we use it for | public name here |
|---|---|---|---|
| `_try_env_reset(*, seed, options)` | SingleAgentEnvRunner | override: the sub-envs' seeds of the first reset | `EnvRunner.reset_seeds` |
| `_make_on_episode_callback(which, idx, episodes)`, `_callbacks` | SingleAgentEnvRunner | override: an episode hook called only where one would run something | `episode_hook_runs` |
| `_env_to_module`, `_module_to_env` | SingleAgentEnvRunner | its connector pipelines (sparse states swap pieces) | `env_runner_pipelines` |
| `_cached_to_module` | SingleAgentEnvRunner | the module input of the next step (its STATE_IN) | `next_state_in` |
| `_ongoing_episodes` | SingleAgentEnvRunner | the episodes the next `sample()` continues | `ongoing_episodes` |
| shared_data `"_added_single_ts_time_rank"` | AddTimeDimToBatchAndZeroPad, RemoveSingleTsTimeRankFromBatch | an env runner's batch has a time rank of 1 (set by the one, read by the other) | `TIME_RANK_ADDED` |
| shared_data `"memorized_map_structure"` | BatchIndividualItems, UnBatchToIndividualItems | the episode id of each row of an env runner's batch | `EPISODE_OF_ROW` |
| shared_data `"_added_loss_mask_for_valid_episode_ts"` | AddOneTsToEpisodesAndTruncate, AddTimeDimToBatchAndZeroPad | a learner batch has its LOSS_MASK column (set by the one, read by the other) | `LOSS_MASK_ADDED` |
| shared_data `"_zero_padded_for_mid={module_id}"` | AddTimeDimToBatchAndZeroPad, Learner | a learner batch's rows of a module are zero-padded to max_seq_len (set by the one, read by the other) | `ZERO_PADDED_FOR_MODULE` |
| `_create_iterator_if_necessary(*, training_data, num_total_minibatches, num_epochs, minibatch_size, shuffle_batch_per_epoch, **kwargs)` | Learner | override: our own minibatches | `PPOLearner.minibatches` |
| `_make_batch_if_necessary(training_data=)` | Learner | the learner batch (its connector run on the episodes) | (inside `PPOLearner`) |
| `_set_slicing_by_batch_id(batch, value=)` | Learner | rows of a recurrent batch sliced by row | (inside `PPOLearner`) |
| `_learner_connector` | Learner | its connector pipeline | `learner_connector` |
| `learner_group._learner` | Algorithm | the local learner (num_learners = 0) | `local_learner` |
| `_counters` | Algorithm (old stack) | env steps sampled so far | `env_steps_sampled` |
| `Catalog._get_dist_cls_from_action_space(space, *, framework)` | Catalog | the action distribution of a space | `action_dist_cls` |
| `ray.tune.registry._global_registry` | Tune | is an env id registered | `env_registered` |
| `_setup_trial`, `_restore_from_remote`, `_trial_files`, `_trial_csv`, `_trial_continue` | Tune's CSV / JSON logger callbacks | a restarted trial's logs (experiments/study/trial_logs.py) | `TrialLogHooks` |

Behaviours of public names that experiments.rllib.batching (and learner_rows) corrects or
relies on (a change there fails the tests named):

| behaviour (Ray 2.60) | batching's answer | test |
|---|---|---|
| PPO's learner updates the KL coefficient with the KL logged last (window 1) | logs the update's mean KL there | test_rllib_private, test_batching |
| the GAE connector standardizes advantages with the masked bootstrap steps | standardizes again over the loss mask | test_batching |
| PPO samples again while a call's own env steps (its metrics) are below the batch | a call steps at least the batch | test_batching |
| an env runner's metrics clear at each reduce (one iteration's episodes) | logs the last 100 again | test_batching |
| AddTimeDimToBatchAndZeroPad's learner rows (`split_and_zero_pad`, one item at a time) | learner_rows.EpisodeRows makes the same rows per episode at once | test_learner_rows |

Upgrading Ray: run `MEMRL_UNCHECKED_RAY=1 pytest tests/test_rllib_private.py tests/test_batching.py
tests/test_state_storage.py tests/test_learner_rows.py` on the new version; where a name moved
or changed, change it here (and its test); then add the version to CHECKED_RAY_VERSIONS and to
pyproject.toml's range.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Iterable

import ray

CHECKED_RAY_VERSIONS = ("2.60.0",)
UNCHECKED_VAR = "MEMRL_UNCHECKED_RAY"


def check_ray_version(version: str | None = None) -> None:
    """Refuse a Ray version these private names were not checked against (RuntimeError saying
    what to check), or warn where MEMRL_UNCHECKED_RAY=1."""
    version = ray.__version__ if version is None else version
    if version in CHECKED_RAY_VERSIONS:
        return
    message = (f"memrl's RLlib glue (experiments/rllib) overrides and reads private Ray names "
               f"checked against Ray {', '.join(CHECKED_RAY_VERSIONS)} only; Ray {version} is "
               f"installed. Install a checked version (pip install -c constraints.txt -e .), or "
               f"check the names listed in experiments/rllib/rllib_private.py against Ray "
               f"{version}: run `{UNCHECKED_VAR}=1 pytest tests/test_rllib_private.py "
               f"tests/test_batching.py tests/test_state_storage.py tests/test_learner_rows.py`, "
               f"fix what fails in that one file, then add {version!r} to its "
               f"CHECKED_RAY_VERSIONS.")
    if os.environ.get(UNCHECKED_VAR) == "1":
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        return
    raise RuntimeError(message)


check_ray_version()

# imported after the check: on another version these may not even exist
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner  # noqa: E402
from ray.rllib.callbacks.callbacks import RLlibCallback  # noqa: E402
from ray.rllib.core.columns import Columns  # noqa: E402
from ray.rllib.core.models.catalog import Catalog  # noqa: E402
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner  # noqa: E402
from ray.rllib.policy.sample_batch import MultiAgentBatch  # noqa: E402
from ray.tune.registry import ENV_CREATOR, _global_registry  # noqa: E402

__all__ = ["CHECKED_RAY_VERSIONS", "UNCHECKED_VAR", "check_ray_version", "EnvRunner",
           "episode_hook_runs", "env_runner_pipelines", "next_state_in", "ongoing_episodes",
           "TIME_RANK_ADDED", "EPISODE_OF_ROW", "ZERO_PADDED_FOR_MODULE",
           "LOSS_MASK_ADDED", "PPOLearner",
           "learner_connector", "local_learner", "env_steps_sampled", "action_dist_cls",
           "env_registered", "TrialLogHooks"]


# --- SingleAgentEnvRunner ------------------------------------------------------------------

class EnvRunner(SingleAgentEnvRunner):
    """RLlib's SingleAgentEnvRunner with the first reset's seeds as a public hook, calling an
    episode hook (`on_episode_step`, ...) only where it would run something
    (`episode_hook_runs`): RLlib builds a hook's arguments and calls every callbacks object
    for every sub-env at every step, most of them RLlibCallback's no-op methods."""

    def __init__(self, *args, **kwargs):
        self._episode_hooks_that_run: dict[str, bool] = {}      # hook name -> runs anything
        super().__init__(*args, **kwargs)

    def reset_seeds(self, seed: int) -> int | list[int]:
        """The seed(s) of the vector env's first reset, given the one RLlib passes (the
        config's seed): an int seeds sub-env i with seed + i (gymnasium's vector envs), a
        list one seed per sub-env. RLlib's own: `seed`."""
        return seed

    def _try_env_reset(self, *, seed=None, options=None):
        # RLlib passes a seed on the first reset only (None after it)
        return super()._try_env_reset(seed=None if seed is None else self.reset_seeds(seed),
                                      options=options)

    def _make_on_episode_callback(self, which, idx, episodes=None):
        runs = self._episode_hooks_that_run.get(which)
        if runs is None:
            runs = self._episode_hooks_that_run[which] = episode_hook_runs(
                which, self._callbacks, getattr(self.config, f"callbacks_{which}"))
        if runs:
            super()._make_on_episode_callback(which, idx, episodes)


def episode_hook_runs(which: str, callbacks: list, functions) -> bool:
    """Whether RLlib's `make_callback(which, callbacks, functions)` would run anything: a
    function given for the hook, or a callbacks object whose class overrides RLlibCallback's
    no-op method `which`."""
    return bool(functions) or any(
        getattr(type(callback), which, None) is not getattr(RLlibCallback, which)
        for callback in callbacks)


def env_runner_pipelines(runner: SingleAgentEnvRunner) -> tuple[Any, Any]:
    """(env-to-module, module-to-env) ConnectorPipelineV2 of `runner`."""
    return runner._env_to_module, runner._module_to_env


def next_state_in(runner: SingleAgentEnvRunner) -> Any | None:
    """The STATE_IN `runner` will feed its module at its next step (after a `sample()` that
    left episodes running), None where it has none (stateless module, nothing cached)."""
    cached = runner._cached_to_module
    if cached is None or Columns.STATE_IN not in cached:
        return None
    return cached[Columns.STATE_IN]


def ongoing_episodes(runner: SingleAgentEnvRunner) -> list:
    """The episodes `runner`'s next `sample()` continues, one per sub-env (index = sub-env)."""
    return runner._ongoing_episodes


# shared_data keys that RLlib's default env runner pieces pass between them (sampling's
# batched pieces stand in for them, and leave the same keys for RLlib's pieces that remain)
TIME_RANK_ADDED = "_added_single_ts_time_rank"     # True: the module's input has T = 1
EPISODE_OF_ROW = "memorized_map_structure"         # [episode id of batch row i]
ZERO_PADDED_FOR_MODULE = "_zero_padded_for_mid={}"  # .format(module id): True, rows padded
LOSS_MASK_ADDED = "_added_loss_mask_for_valid_episode_ts"  # True: LOSS_MASK is in the batch


# --- Learner -------------------------------------------------------------------------------

class PPOLearner(PPOTorchLearner):
    """RLlib's torch PPO learner with its minibatch iterator as a public hook."""

    def minibatches(self, batch: MultiAgentBatch, *, num_epochs: int, minibatch_size: int,
                    shuffle: bool) -> Iterable[MultiAgentBatch] | None:
        """The minibatches of `num_epochs` epochs over the learner batch `batch` (the modules
        that are not to be updated already removed, rows sliced by row), or None for RLlib's
        own (MiniBatchCyclicIterator). Asked only when PPO cuts minibatches of a batch made
        from episodes (not for data iterators or a fixed number of minibatches)."""
        return None

    def _create_iterator_if_necessary(self, *, training_data, num_total_minibatches=0,
                                      num_epochs=1, minibatch_size=None,
                                      shuffle_batch_per_epoch=False, **kwargs):
        rllibs = dict(training_data=training_data, num_total_minibatches=num_total_minibatches,
                      num_epochs=num_epochs, minibatch_size=minibatch_size,
                      shuffle_batch_per_epoch=shuffle_batch_per_epoch, **kwargs)
        if training_data.data_iterators or not minibatch_size or num_total_minibatches \
                or type(self).minibatches is PPOLearner.minibatches:
            return super()._create_iterator_if_necessary(**rllibs)
        # RLlib's own steps up to its choice of iterator (Learner._create_iterator_if_necessary)
        batch = self._make_batch_if_necessary(training_data=training_data)
        for module_id in list(batch.policy_batches):
            if not self.should_module_be_updated(module_id, batch):
                del batch.policy_batches[module_id]
        if not batch.policy_batches:
            return {}
        batch = self._set_slicing_by_batch_id(batch, value=True)
        ours = self.minibatches(batch, num_epochs=num_epochs, minibatch_size=minibatch_size,
                                shuffle=shuffle_batch_per_epoch)
        if ours is None:
            raise ValueError(f"{type(self).__name__}.minibatches returned None after the batch "
                             "was made: decline before (return RLlib's own iterator here)")
        return ours


def learner_connector(learner) -> Any:
    """The learner's connector pipeline (episodes -> train batch), None where it has none."""
    return learner._learner_connector


def local_learner(algo) -> Any:
    """The Learner of an algorithm that trains in its own process (num_learners = 0)."""
    learner = algo.learner_group._learner
    if learner is None:
        raise ValueError("the algorithm's learners are remote (num_learners > 0): no local one")
    return learner


def env_steps_sampled(algo) -> int:
    """Env steps an old-API-stack algorithm has sampled so far (its own counter)."""
    from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED, NUM_ENV_STEPS_SAMPLED_LIFETIME
    counters = algo._counters
    key = NUM_ENV_STEPS_SAMPLED_LIFETIME if NUM_ENV_STEPS_SAMPLED_LIFETIME in counters \
        else NUM_ENV_STEPS_SAMPLED
    return int(counters[key])


# --- Catalog, Tune -------------------------------------------------------------------------

def action_dist_cls(action_space, *, framework: str = "torch") -> type:
    """RLlib's action distribution class for `action_space` (what its default models use)."""
    return Catalog._get_dist_cls_from_action_space(action_space, framework=framework)


def env_registered(env_id: str) -> bool:
    """Whether `env_id` is registered with Tune (`ray.tune.register_env`)."""
    return _global_registry.contains(ENV_CREATOR, env_id)


class TrialLogHooks:
    """The private parts of Tune's CSVLoggerCallback / JsonLoggerCallback that a mixin of
    theirs (experiments/study/trial_logs.py) uses, under public names. Mix it in before the
    callback class."""

    def restore_from_study_folder(self, file_name: str, trial) -> None:
        """Tune's own: copy the study folder's `file_name` of `trial` over its staged log."""
        super()._restore_from_remote(file_name, trial)

    def _restore_from_remote(self, file_name: str, trial) -> None:
        self.restore_from_study_folder(file_name, trial)

    def setup_trial(self, trial) -> None:
        """Open the trial's staged log to append (CSV logger: its header known or not)."""
        self._setup_trial(trial)

    def trial_file(self, trial):
        """The open file this callback writes `trial`'s log to."""
        return self._trial_files[trial]

    def set_trial_file(self, trial, file) -> None:
        self._trial_files[trial] = file

    def trial_continues(self, trial) -> bool:
        """CSV logger: whether the trial's progress.csv already had rows (no header to write)."""
        return bool(self._trial_continue[trial])

    def set_trial_csv_writer(self, trial, writer) -> None:
        """CSV logger: the csv.DictWriter of `trial`'s progress.csv."""
        self._trial_csv[trial] = writer
