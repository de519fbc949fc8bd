"""PPO's data on RLlib's new API stack, sampled and cut into minibatches as its old stack did.

POPGym's protocol (and its published numbers) come from RLlib's old API stack. These parts of
the new stack (Ray 2.60) feed PPO differently, and on tasks whose episodes vary in length our
GRU learned markedly worse there (NoisyPositionOnlyCartPoleEasy: 0.60 vs 0.78 over 5 seeds):

1. Sampling with `batch_mode="complete_episodes"`. The new `SingleAgentEnvRunner` resets
   every env at each `sample()` call, steps until `num_envs` episodes have finished, and
   drops the episodes still running. The short episodes finish first, so the learner (and the
   episode-return metrics) see the short ones and lose the long ones: on CartPole early in
   training 40% of the sampled steps were thrown away, and the longest (best) episodes are the
   ones cut. The old stack kept running episodes going into the next call and returned every
   episode once it finished.
   `CompleteEpisodesEnvRunner` does the same: running episodes carry over between calls
   (their chunks are joined when they finish), and a call returns finished episodes, in the
   order they finished, up to the first that brings their steps to
   `rollout_fragment_length x num_envs` (the old stack's RolloutWorker.sample); episodes that
   finished with it wait for the next call, as the old stack's sampler queued them. A call
   also takes at least that many steps itself: RLlib's PPO counts the steps a call took
   (its env runner metrics) and samples again below the batch size. Before
   this, a call also waited for the steps it took itself to reach that count, and returned
   every episode finished by then: on RepeatPreviousEasy (51-step episodes, 8 envs in step,
   batch 4096) 88 episodes (4,488 steps) an iteration where the old stack's had 81 (4,131),
   so 34 iterations of PPO updates in 150k steps against the old stack's 37
   (benchmarks/results/ceiling).

2. Minibatches of a recurrent batch. The old stack kept the train batch's rows (episode
   chunks of at most max_seq_len steps) in sample order and cut it into
   `count // minibatch_size` minibatches, minibatch k holding the rows that cover the valid
   steps [k * minibatch_size, (k + 1) * minibatch_size) (a row belongs to the minibatch where
   it starts); each epoch visits the same minibatches in a new random order. RLlib 2.60's
   `MiniBatchCyclicIterator` instead re-shuffles rows, sizes minibatches by an average and
   wraps them across epochs (its own TODO notes the recurrent case).
   `OldStackMinibatches` cuts the batch the old stack's way, counting valid steps by the loss
   mask (the new stack's extra bootstrap step per episode is masked out, as the old stack
   never had it). `PPOLearner` is RLlib's torch PPO learner using it.

3. The padding of a minibatch. The new stack pads every row to max_seq_len (1024 at POPGym's
   protocol) and its PPO loss runs over all of it; the old stack padded to the batch's
   longest row. `without_padding` cuts a minibatch's time axis to its longest row before the
   loss (on RepeatPreviousEasy: 53 of 1024 steps); the masked loss is the same.

4. The KL coefficient. RLlib 2.60's PPO learner logs each minibatch's KL with window=1 and
   updates the KL coefficient (x 1.5 above 2 kl_target, x 0.5 below kl_target / 2) with the
   last one: the KL of the last minibatch of the last epoch, where the policy has moved
   furthest from the sampling one. The old stack updated it with the mean KL over all the
   iteration's minibatches. On PositionOnlyCartPoleEasy (reproduction settings) the new
   stack's coefficient so rose to 0.34 where the old stack's stayed at 0.05
   (benchmarks/results/ceiling). `PPOLearner` updates it with the mean, as the old stack.

5. The episode-return metric. RLlib 2.60's metrics clear at each reduce: the new stack's
   `episode_return_mean` is the mean over one iteration's episodes (at most
   metrics_num_episodes_for_smoothing = 100 of them), the old stack's over the last 100
   episodes whatever iteration they finished in (measured: the new stack's equals the
   iteration's mean, e.g. 0.146 over 9 episodes where the last 100 averaged 0.105). MMER, the
   maximum over iterations, so took its max over noisier means on the new stack (on
   PositionOnlyCartPoleEasy at its ceiling ~21 episodes an iteration against 100).
   `CompleteEpisodesEnvRunner.get_metrics` reports the mean over the last 100 finished
   episodes (complete_episodes sampling), as the old stack.

6. The advantages' standardization. PPO standardizes the batch's advantages (mean 0, std 1).
   The new stack's GAE connector does it over every step it computed them for, the extra
   bootstrap step of each episode included, which the loss masks out; that step's advantage
   is minus the critic's value of the episode's last observation, an input the critic never
   trains on (masked), so it is arbitrary (measured on a fresh GRU: -0.07 to -2.0 standard
   deviations). At a task's ceiling the real steps' advantages shrink and these set the
   standard deviation, so the real ones are scaled down and the policy stops sharpening:
   frame_conv on RepeatPreviousEasy held its sampled policy's entropy at 0.075 where the old
   stack's fell to 0.028, and its MMER below the old stack's 1.000
   (benchmarks/results/ceiling). The old stack had no such step: `PPOLearner` standardizes
   again over the loss mask's steps (affine, so the same as standardizing the raw
   advantages of those steps) and zeroes the masked ones.

`old_stack_minibatch_rows` is the rule itself; tests hold it equal to the old stack's own
code (`pad_batch_to_sequences_of_same_size` + `SampleBatch` slicing).
"""

from __future__ import annotations

import collections
import copy
import math
from typing import Iterator

import numpy as np
import torch
from ray.rllib.algorithms.ppo.ppo import LEARNER_RESULTS_KL_KEY
from ray.rllib.core.columns import Columns
from ray.rllib.evaluation.postprocessing import Postprocessing
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils.metrics import EPISODE_LEN_MEAN, EPISODE_RETURN_MEAN
from ray.rllib.utils.numpy import convert_to_numpy

from . import learner_rows, rllib_private, state_storage
from .seeding import env_seeds
from .workers import use_assigned_cpus

__all__ = ["CompleteEpisodesEnvRunner", "OldStackMinibatches", "PPOLearner",
           "old_stack_minibatch_rows", "standardize_over_loss_mask", "without_padding"]


class CompleteEpisodesEnvRunner(rllib_private.EnvRunner):
    """SingleAgentEnvRunner whose "complete_episodes" sampling loses no episode and returns
    the old stack's batch (see 1. above).

    Any other request (truncate_episodes, or an explicit num_timesteps / num_episodes) is
    RLlib's own. Its sub-envs are seeded by `seeding.env_seeds` (RLlib's new stack would give
    runner w's sub-env i the seed + w + i, which the next runner's sub-env i - 1 shares).
    With `sparse_states` (the default) the memory state stays a batched tensor between steps
    and an episode stores it only where a learner row starts (`state_storage`); `PPOLearner`
    reads it there.
    """

    sparse_states = True

    def __init__(self, *args, **kwargs):
        use_assigned_cpus()
        super().__init__(*args, **kwargs)
        self._running: dict[str, SingleAgentEpisode] = {}   # episode id -> its steps so far
        self._finished: list[SingleAgentEpisode] = []       # finished, not returned yet
        # (length, return) of the last episodes finished before this call's, oldest first
        self._recent: collections.deque = collections.deque(maxlen=self._smoothing_window())
        self._finished_now: list[tuple[int, float]] = []     # ... and of this call's
        if self.sparse_states:
            state_storage.use_sparse_states_in_env_runner(
                *rllib_private.env_runner_pipelines(self))

    def sample(self, *, num_timesteps=None, num_episodes=None, explore=None,
               random_actions=False, force_reset=False, **kwargs) -> list[SingleAgentEpisode]:
        if self.config.batch_mode != "complete_episodes" or num_timesteps is not None \
                or num_episodes is not None:
            chunks = super().sample(num_timesteps=num_timesteps, num_episodes=num_episodes,
                                    explore=explore, random_actions=random_actions,
                                    force_reset=force_reset, **kwargs)
            state_in = rllib_private.next_state_in(self)
            if self.sparse_states and state_in is not None:
                # the learner sees these chunks apart: rows start at each chunk's start
                state_storage.restart_records(rllib_private.ongoing_episodes(self), state_in)
            return chunks
        if force_reset:
            self._running.clear()
            self._finished.clear()
        target = self.config.get_rollout_fragment_length(self.worker_index) * self.num_envs
        episodes: list[SingleAgentEpisode] = []
        steps = stepped = 0          # steps of the episodes returned, steps taken in this call
        while steps < target or stepped < target:
            if steps < target and self._finished:
                episode = self._finished.pop(0)
                episodes.append(episode)
                steps += len(episode)
                continue
            chunks = super().sample(
                num_timesteps=max(target - stepped, target - steps, self.num_envs),
                explore=explore, random_actions=random_actions, force_reset=force_reset,
                **kwargs)
            force_reset = False
            for chunk in chunks:
                stepped += len(chunk)
                episode = self._join(chunk)
                if episode.is_done:
                    self._finished.append(episode)
                    self._finished_now.append((len(episode), episode.get_return()))
        return episodes

    def get_metrics(self):
        """RLlib's metrics, episode_return_mean and episode_len_mean over the last
        `metrics_num_episodes_for_smoothing` episodes (see 5. above): the earlier ones are
        logged again before RLlib logs this call's and reduces."""
        window = self._smoothing_window()
        for length, episode_return in self._recent:
            self.metrics.log_value(EPISODE_LEN_MEAN, length, window=window)
            self.metrics.log_value(EPISODE_RETURN_MEAN, episode_return, window=window)
        self._recent.extend(self._finished_now)
        self._finished_now = []
        return super().get_metrics()

    def _smoothing_window(self) -> int:
        """RLlib's episode window of one env runner (the algorithm averages the runners')."""
        return max(1, math.ceil(self.config.metrics_num_episodes_for_smoothing
                                / (self.config.num_env_runners or 1)))

    def reset_seeds(self, seed: int) -> list[int]:
        """The vector env's first reset (the one RLlib seeds) with `seeding.env_seeds`."""
        return env_seeds(self.config.seed, self.worker_index or 0, self.num_envs)

    def _join(self, chunk: SingleAgentEpisode) -> SingleAgentEpisode:
        """The episode `chunk` continues (a copy of chunk if it starts one), extended by it;
        kept in `_running` until it is done. RLlib keeps the chunks for its episode metrics
        (length and return summed over chunks), so none of them is changed in place; an episode
        whole in one chunk is that chunk (RLlib's own sampling returns it so too)."""
        episode = self._running.pop(chunk.id_, None)
        if episode is None and chunk.is_done:
            return chunk
        if episode is None:
            episode = copy.deepcopy(chunk)
        else:
            episode.concat_episode(chunk)
        if not episode.is_done:
            self._running[episode.id_] = episode
        return episode


def old_stack_minibatch_rows(valid_steps: np.ndarray, minibatch_size: int) -> list[range]:
    """Rows of each minibatch of one epoch, as RLlib's old stack cut a recurrent batch.

    valid_steps (R,): the valid (loss) steps of each row, rows in batch order. There are
    max(1, N // minibatch_size) minibatches, N = valid_steps.sum(); minibatch k holds the rows
    from the one containing valid step k * minibatch_size up to (without) the one containing
    step (k + 1) * minibatch_size (or every remaining row at N). Rows past the last boundary
    are not trained on, as on the old stack.
    """
    ends = np.cumsum(valid_steps)                                  # (R,) exclusive ends
    count = int(ends[-1]) if len(ends) else 0
    num_minibatches = max(1, count // minibatch_size)

    def row_of(step: int) -> int:
        return len(ends) if step >= count else int(np.searchsorted(ends, step, side="right"))

    bounds = [row_of(min(k * minibatch_size, count)) for k in range(num_minibatches + 1)]
    return [range(start, stop) for start, stop in zip(bounds, bounds[1:])]


class OldStackMinibatches:
    """Minibatches of a learner batch (MultiAgentBatch of one module) cut as the old stack did
    (`old_stack_minibatch_rows`), for `num_epochs` epochs, the minibatch order permuted each
    epoch (`shuffle`, PPO's `shuffle_batch_per_epoch`; else in batch order). Rows are episode
    chunks (B, T) with a LOSS_MASK, or single steps for a stateless module."""

    def __init__(self, batch: MultiAgentBatch, *, num_epochs: int, minibatch_size: int,
                 shuffle: bool = True):
        if len(batch.policy_batches) != 1:
            raise ValueError(f"OldStackMinibatches cuts the batch of one module, got "
                             f"{sorted(batch.policy_batches)}")
        (self.module_id, self.module_batch), = batch.policy_batches.items()
        mask = self.module_batch.get(Columns.LOSS_MASK)
        rows = len(self.module_batch[Columns.SEQ_LENS]) \
            if self.module_batch.get(Columns.SEQ_LENS) is not None else len(self.module_batch)
        valid = np.ones(rows, dtype=np.int64) if mask is None else \
            convert_to_numpy(mask).reshape(rows, -1).sum(axis=1)     # mask on any device
        self.minibatches = old_stack_minibatch_rows(valid, minibatch_size)
        self.num_epochs, self.shuffle = num_epochs, shuffle
        self.env_steps = batch.env_steps()

    def __iter__(self) -> Iterator[MultiAgentBatch]:
        for _ in range(self.num_epochs):
            order = np.arange(len(self.minibatches))
            for k in np.random.permutation(order) if self.shuffle else order:
                rows = self.minibatches[k]
                minibatch = without_padding(self.module_batch[rows.start:rows.stop])
                yield MultiAgentBatch({self.module_id: minibatch}, self.env_steps)


def standardize_over_loss_mask(rows: SampleBatch) -> None:
    """The advantages of the steps the loss reads (LOSS_MASK) standardized over those steps
    alone (mean 0, std 1, the std at least 1e-4 as RLlib's and the old stack's), the others
    0 (see 6. above). In place; nothing to do without advantages or a loss mask."""
    advantages, mask = rows.get(Postprocessing.ADVANTAGES), rows.get(Columns.LOSS_MASK)
    if advantages is None or mask is None:
        return
    advantages, mask = torch.as_tensor(advantages), torch.as_tensor(mask).bool()
    real = advantages[mask]
    if real.numel() == 0:
        return
    std = torch.clamp(real.std(correction=0), min=1e-4)
    rows[Postprocessing.ADVANTAGES] = torch.where(mask, (advantages - real.mean()) / std,
                                                  torch.zeros_like(advantages))


def without_padding(rows: SampleBatch) -> SampleBatch:
    """Rows padded to (B, T, ...) (T = the LOSS_MASK's width) cut to (B, L, ...), L = their
    longest SEQ_LENS; STATE_IN (B, ...) and batches of single steps (no SEQ_LENS) as they
    are. Views, no copies."""
    seq_lens, mask = rows.get(Columns.SEQ_LENS), rows.get(Columns.LOSS_MASK)
    if seq_lens is None or mask is None or len(seq_lens) == 0:
        return rows
    steps, longest = mask.shape[1], int(seq_lens.max())      # one host sync on a GPU
    for column, values in list(rows.items()):
        if column != Columns.STATE_IN and getattr(values, "ndim", 0) >= 2 \
                and values.shape[1] == steps:
            rows[column] = values[:, :longest]
    return rows


class PPOLearner(rllib_private.PPOLearner):
    """RLlib's torch PPO learner, with minibatches cut as the old stack did (see 2. above), the
    KL coefficient updated with the iteration's mean KL (see 4. above), the advantages
    standardized over the loss's steps (see 6. above), reading each row's memory state where
    `CompleteEpisodesEnvRunner` stored it (`state_storage`, with `sparse_states`), its rows
    cut by `learner_rows.EpisodeRows` (with `episode_rows`)."""

    sparse_states = True
    episode_rows = True

    def build(self) -> None:
        super().build()
        self.minibatch_kls: dict[str, list[torch.Tensor]] = {}  # module -> this update's KLs
        connector = rllib_private.learner_connector(self)
        if connector is None or not self.config.add_default_connectors_to_learner_pipeline:
            return
        if self.sparse_states:
            state_storage.use_sparse_states_in_learner(connector)
        if self.episode_rows:
            learner_rows.use_episode_rows(connector)

    def minibatches(self, batch: MultiAgentBatch, *, num_epochs: int, minibatch_size: int,
                    shuffle: bool) -> OldStackMinibatches:
        for module_batch in batch.policy_batches.values():
            standardize_over_loss_mask(module_batch)
        return OldStackMinibatches(batch, num_epochs=num_epochs, minibatch_size=minibatch_size,
                                   shuffle=shuffle)

    def before_gradient_based_update(self, *, timesteps) -> None:
        super().before_gradient_based_update(timesteps=timesteps)
        self.minibatch_kls = {}

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        loss = super().compute_loss_for_module(module_id=module_id, config=config, batch=batch,
                                               fwd_out=fwd_out)
        if config.use_kl_loss:
            kl = self.metrics.peek((module_id, LEARNER_RESULTS_KL_KEY))     # this minibatch's
            self.minibatch_kls.setdefault(module_id, []).append(torch.as_tensor(kl).detach())
        return loss

    def after_gradient_based_update(self, *, timesteps) -> None:
        # RLlib's PPOLearner updates each KL coefficient with the KL it logged last (window
        # 1): log the mean of the update's minibatches in its place (the old stack's KL)
        for module_id, kls in self.minibatch_kls.items():
            if kls:
                self.metrics.log_value((module_id, LEARNER_RESULTS_KL_KEY),
                                       torch.stack(kls).float().mean(), window=1)
        super().after_gradient_based_update(timesteps=timesteps)
