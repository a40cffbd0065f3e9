"""The learner's view of a scored rollout group: one prompt, its n completions, their rewards and
logprobs, and the per-step state the GRPO update keeps on it (advantages, pi_old, micro-batch parts)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch


@dataclass
class Group:
    """The n completions of one prompt, as the learner trains on them."""

    prompt: list[int]                  # (T_p,) shared prompt tokens
    completions: list[list[int]]       # n x (T_c,) sampled tokens
    rollout_logprobs: list[list[float]]  # n x (T_c,) log pi as vLLM sampled them
    rewards_n: np.ndarray              # (n,) reward_total
    # A rank with fewer groups than the others repeats one with padding=True so that collectives
    # match: zero advantage, and no tokens in any mean (loss, metrics, logprob gap).
    padding: bool = False
    advantages_n: torch.Tensor = field(default=None)   # (n,)
    # (n, T_c max) log pi_old, recomputed by the learner before the first update; None when the batch
    # gets one update only: then pi_old is the policy being trained and the gradient pass's own
    # detached values are exact (ratio 1), so the extra forward is skipped.
    old_logprobs_nT: torch.Tensor = field(default=None)
    # (n, T_c max) log mu: rollout_logprobs as a padded tensor (0 at padding), built once per step.
    behaviour_nT: torch.Tensor = field(default=None)

    # The micro-batches the group is computed in (learner.max_tokens_per_micro_batch); [self] unsplit.
    parts: list = field(default=None)

    @property
    def tokens(self) -> int:
        return 0 if self.padding else sum(len(c) for c in self.completions)

    def split(self, max_tokens: int | None) -> list["Group"]:
        """Consecutive completions whose prompt + completion tokens fit max_tokens (at least one per
        part), each part carrying its rows of the group's advantages and logprobs."""
        if max_tokens is None:
            return [self]
        bounds, used = [0], len(self.prompt)
        for i, c in enumerate(self.completions):
            if i > bounds[-1] and used + len(c) > max_tokens:
                bounds.append(i)
                used = len(self.prompt)
            used += len(c)
        bounds.append(len(self.completions))
        return [self._rows(a, b) for a, b in zip(bounds, bounds[1:])]

    def _rows(self, a: int, b: int) -> "Group":
        completions = self.completions[a:b]
        width = max(len(c) for c in completions)
        old = None if self.old_logprobs_nT is None else self.old_logprobs_nT[a:b, :width]
        return Group(self.prompt, completions, self.rollout_logprobs[a:b], self.rewards_n[a:b],
                     padding=self.padding, advantages_n=self.advantages_n[a:b], old_logprobs_nT=old)

    def filler(self) -> "Group":
        """A one-token padding part: keeps a rank's backward passes paired with the others'."""
        return Group(self.prompt, [self.completions[0][:1]], [self.rollout_logprobs[0][:1]],
                     np.zeros(1, np.float32), padding=True, advantages_n=torch.zeros(1))


def groups_from_table(table: pa.Table) -> list[Group]:
    """Split a rollout table into groups by group_id (rows of a group share their prompt)."""
    cols = table.select(["group_id", "prompt_ids", "completion_ids", "logprobs", "reward_total"]).to_pydict()
    order: dict[int, list[int]] = {}
    for row, gid in enumerate(cols["group_id"]):
        order.setdefault(gid, []).append(row)
    groups = []
    for gid, rows in order.items():
        prompt = cols["prompt_ids"][rows[0]]
        if any(cols["prompt_ids"][r] != prompt for r in rows):
            raise ValueError(f"group {gid}: rows do not share one prompt")
        groups.append(Group(prompt=prompt, completions=[cols["completion_ids"][r] for r in rows],
                            rollout_logprobs=[cols["logprobs"][r] for r in rows],
                            rewards_n=np.asarray([cols["reward_total"][r] for r in rows], dtype=np.float32)))
    return groups
