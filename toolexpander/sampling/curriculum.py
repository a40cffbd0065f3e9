"""Sub-task curriculum: shares q_t from mastery (or by eligible prompts, curriculum off), the per-step
count per sub-task, and the weighted draw without replacement inside one sub-task. Pure numpy;
randomness only from the Generator passed in.
"""

from __future__ import annotations

import numpy as np


def shares(mastery_T: np.ndarray, tau: float, q_min: float, active_T: np.ndarray,
           base_T: np.ndarray | None = None) -> np.ndarray:
    """q_t proportional to base_t * exp((1 - M_t) / tau) over active sub-tasks, floored at q_min,
    summing to 1. base_T None: 1 each (DESIGN's formula); the eligible prompts per sub-task make equal
    mastery give proportional_shares, so the curriculum only tilts the uniform-over-prompts batch.

    Inactive sub-tasks (no eligible prompt) get 0. The floor is iterated: sub-tasks below q_min are
    pinned to it and the rest renormalised to the remaining mass until none falls below.
    """
    active_T = np.asarray(active_T, dtype=bool)
    if base_T is not None:
        active_T = active_T & (np.asarray(base_T, dtype=np.float64) > 0)
    q_T = np.zeros(len(mastery_T))
    if not active_T.any():
        return q_T
    logit_T = (1.0 - np.asarray(mastery_T, dtype=np.float64)) / tau
    logit_T = logit_T - logit_T[active_T].max()          # no overflow at small tau
    raw_T = np.where(active_T, np.exp(logit_T), 0.0)
    if base_T is not None:
        raw_T = raw_T * np.asarray(base_T, dtype=np.float64)   # already 0 where inactive
    floor = min(q_min, 1.0 / active_T.sum())
    pinned_T = np.zeros_like(active_T)
    while True:
        free_T = active_T & ~pinned_T
        mass = 1.0 - floor * pinned_T.sum()
        q_T = np.where(pinned_T, floor, 0.0)
        if free_T.any():
            q_T[free_T] = mass * raw_T[free_T] / raw_T[free_T].sum()
        low_T = free_T & (q_T < floor)
        if not low_T.any():
            return q_T
        pinned_T |= low_T


def proportional_shares(capacity_T: np.ndarray) -> np.ndarray:
    """Shares with the curriculum off: q_t = eligible prompts of t / all eligible prompts, so the
    batch is uniform over prompts rather than mastery-driven. All 0 when nothing is eligible."""
    capacity_T = np.asarray(capacity_T, dtype=np.float64)
    total = capacity_T.sum()
    return capacity_T / total if total > 0 else np.zeros_like(capacity_T)


def _systematic(total: int, q_T: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Systematic rounding of total * q: counts are floor or ceil of total * q_t, E[count] = total * q_t,
    sum == total; one uniform from rng. (Largest remainder would starve small shares at small B.)"""
    edges = np.concatenate([[0.0], np.cumsum(q_T) / q_T.sum() * total])
    edges[-1] = total
    u = rng.random()
    return np.diff(np.ceil(edges - u)).astype(np.int64)


def allocate(total: int, q_T: np.ndarray, capacity_T: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Split `total` draws over sub-tasks by q; a sub-task gets at most capacity_t (its eligible
    prompts) and what it cannot take goes to the others by q. Sums to min(total, capacity.sum())."""
    capacity_T = np.asarray(capacity_T, dtype=np.int64)
    counts_T = np.zeros(len(q_T), dtype=np.int64)
    active_T = capacity_T > 0
    remaining = min(int(total), int(capacity_T.sum()))
    while remaining > 0:
        weight_T = np.where(active_T, q_T, 0.0)
        if weight_T.sum() <= 0:                  # shares underflowed: spread evenly over the rest
            weight_T = active_T.astype(np.float64)
        add_T = np.minimum(_systematic(remaining, weight_T, rng), capacity_T - counts_T)
        counts_T += add_T
        remaining -= int(add_T.sum())
        active_T &= counts_T < capacity_T
    return counts_T


def draw_weighted(w: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k distinct indices of w, drawn one after another with probability proportional to w
    (successive sampling without replacement); zero weights are never drawn. O(len(w)) per round:
    draw with replacement by inverse CDF, keep the new distinct ones, zero them, repeat."""
    k = min(int(k), int(np.count_nonzero(w > 0)))
    taken = np.empty(0, dtype=np.int64)
    if k == 0:
        return taken
    cdf = np.cumsum(w, dtype=np.float64)
    while len(taken) < k:
        u = rng.random(k - len(taken)) * cdf[-1]
        u = np.minimum(u, np.nextafter(cdf[-1], 0.0))   # u < total: never lands past the last weight
        idx = np.searchsorted(cdf, u, side="right")
        _, first = np.unique(idx, return_index=True)
        idx = idx[np.sort(first)]                       # distinct, in order of first appearance
        idx = idx[~np.isin(idx, taken)]
        taken = np.concatenate([taken, idx[: k - len(taken)]])
        if len(taken) < k:
            w = np.array(w, dtype=np.float64)
            w[taken] = 0.0
            cdf = np.cumsum(w)
    return taken


def pick_subset(subtasks: list[str], k: int, rng: np.random.Generator, mix_of: list[str] | None = None) -> np.ndarray:
    """Indices (sorted) of k of the prompts whose sub-tasks are `subtasks`: uniform over them
    (mix_of None), or with each sub-task's share of `mix_of` (another population's sub-tasks, e.g.
    the whole training file before the prompt-length filter): counts by allocate(), capped at the
    prompts a sub-task has (what it lacks goes to the others by share), then uniform inside each."""
    if mix_of is None:
        return np.sort(rng.choice(len(subtasks), k, replace=False))
    names = sorted(set(subtasks) | set(mix_of))
    code = {name: i for i, name in enumerate(names)}
    want_T = np.bincount([code[s] for s in mix_of], minlength=len(names)) / max(1, len(mix_of))
    codes = np.array([code[s] for s in subtasks], dtype=np.int64)
    members_T = [np.flatnonzero(codes == t) for t in range(len(names))]
    counts_T = allocate(k, want_T, np.array([len(m) for m in members_T]), rng)
    picked = [rng.choice(m, c, replace=False) for m, c in zip(members_T, counts_T) if c > 0]
    return np.sort(np.concatenate(picked + [np.empty(0, np.int64)]))
