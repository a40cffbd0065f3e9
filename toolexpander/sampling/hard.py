"""Dynamic multi-round hard sampling: all-fail detection, demo-round transitions, parking, the
zero-signal test for dynamic batch filling, and demo selection by tool-name overlap. Pure numpy.
"""

from __future__ import annotations

import numpy as np


def informative(totals_Gn: np.ndarray, tol: float) -> np.ndarray:
    """(G,) bool: the group's total reward has a population std above tol (it carries GRPO signal)."""
    return np.asarray(totals_Gn, dtype=np.float64).std(axis=1) > tol


def all_fail(correct_Gn: np.ndarray, min_n: int) -> np.ndarray:
    """(G,) bool: at least min_n completions and not one of them correct."""
    correct_Gn = np.asarray(correct_Gn)
    return (correct_Gn.shape[1] >= min_n) & ~(correct_Gn > 0).any(axis=1)


def next_rounds(rounds_G, correct_Gn, min_n: int, n_rounds: int):
    """Demo-round transitions from the round each group was generated with.

    all-fail at round k < n_rounds -> k + 1;  all-fail at the last round -> park, back to 0;
    round k >= 1 with a correct completion -> k - 1. Groups smaller than min_n change nothing.
    Returns (new_rounds_G int8, park_G bool).
    """
    rounds_G = np.asarray(rounds_G, dtype=np.int64)
    correct_Gn = np.asarray(correct_Gn)
    big = correct_Gn.shape[1] >= min_n
    fail_G = all_fail(correct_Gn, min_n)
    solved_G = big & (correct_Gn > 0).any(axis=1)
    park_G = fail_G & (rounds_G >= n_rounds)
    new_G = rounds_G.copy()
    new_G[fail_G & ~park_G] += 1
    new_G[park_G] = 0
    new_G[solved_G & (rounds_G >= 1)] -= 1
    return new_G.astype(np.int8), park_G


def next_streaks(streak_G, correct_Gn, min_n: int) -> np.ndarray:
    """Consecutive all-fail groups: +1 on all-fail, 0 on any correct, unchanged otherwise (a small
    group with no correct completion is not evidence either way)."""
    correct_Gn = np.asarray(correct_Gn)
    streak_G = np.asarray(streak_G, dtype=np.int32).copy()
    streak_G[all_fail(correct_Gn, min_n)] += 1
    streak_G[(correct_Gn > 0).any(axis=1)] = 0
    return streak_G


def dedupe_csr(indptr: np.ndarray, ids: np.ndarray):
    """CSR rows as sorted sets: (indptr, ids) with duplicates inside a row removed."""
    indptr = np.asarray(indptr, dtype=np.int64)
    ids = np.asarray(ids, dtype=np.int64)
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    order = np.lexsort((ids, rows))
    rows, ids = rows[order], ids[order]
    keep = np.ones(len(ids), dtype=bool)
    keep[1:] = (rows[1:] != rows[:-1]) | (ids[1:] != ids[:-1])
    rows, ids = rows[keep], ids[keep]
    out = np.zeros(len(indptr), dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=len(indptr) - 1), out=out[1:])
    return out, ids


class DemoIndex:
    """Inverted index (sub-task, tool-name id) -> demo-pool prompts, built once.

    select(p, m, rng): the m pool prompts of p's sub-task with the highest Jaccard overlap of
    tool-name-id sets with p (ties, including the many zero-overlap ones, broken by rng); never p
    itself, never a prompt whose answer hash equals p's. Fewer than m when the pool runs out.
    select_for(t, tools, h, m, rng): the same for a query that is not one of the index's rows (a
    prompt when the pool is another set of rows, e.g. the whole training file, asked as another
    index's query(p)); its own row in the pool, if any, has its answer hash and is never chosen.
    """

    def __init__(self, subtask_P, tool_indptr, tool_ids, answer_hash_P, pool_P, n_subtasks: int):
        pool_P = np.asarray(pool_P, dtype=bool)
        self.subtask_P = np.asarray(subtask_P, dtype=np.int64)
        self.hash_P = np.asarray(answer_hash_P, dtype=np.int64)
        self.indptr, self.ids = dedupe_csr(tool_indptr, tool_ids)
        self.size_P = np.diff(self.indptr)
        self.n_ids = int(self.ids.max()) + 1 if len(self.ids) else 1
        rows = np.repeat(np.arange(len(self.subtask_P)), self.size_P)
        in_pool = pool_P[rows]
        key = self.subtask_P[rows[in_pool]] * self.n_ids + self.ids[in_pool]
        order = np.argsort(key, kind="stable")
        self.keys = key[order]                    # sorted (sub-task, id) keys of pool memberships
        self.post = rows[in_pool][order]          # the pool prompt of each key
        self.pool_T = [np.flatnonzero(pool_P & (self.subtask_P == t)) for t in range(n_subtasks)]

    def query(self, p: int) -> tuple[int, np.ndarray, int]:
        """Row p as a select_for query: its sub-task, distinct tool-name ids and answer hash."""
        return int(self.subtask_P[p]), self.ids[self.indptr[p]:self.indptr[p + 1]], int(self.hash_P[p])

    def select(self, p: int, m: int, rng: np.random.Generator) -> tuple[int, ...]:
        return self.select_for(*self.query(p), m, rng, exclude=p)

    def select_for(self, t: int, tools: np.ndarray, h: int, m: int, rng: np.random.Generator,
                   exclude: int = -1) -> tuple[int, ...]:
        """tools: the query's distinct tool-name ids (the index's id space); exclude: a row never chosen."""
        if m <= 0:
            return ()
        tools = np.unique(np.asarray(tools, dtype=np.int64))
        tools = tools[tools < self.n_ids]          # a name no pool row has matches nothing
        qk = t * self.n_ids + tools
        lo, hi = np.searchsorted(self.keys, qk, "left"), np.searchsorted(self.keys, qk, "right")
        hits = np.concatenate([self.post[a:b] for a, b in zip(lo, hi)] + [np.empty(0, np.int64)])
        cand, inter = np.unique(hits, return_counts=True)     # pool prompts sharing >= 1 tool name
        ok = (cand != exclude) & (self.hash_P[cand] != h)
        jac = inter[ok] / (len(tools) + self.size_P[cand[ok]] - inter[ok])
        rank = np.lexsort((rng.random(int(ok.sum())), -jac))
        chosen = cand[ok][rank[:m]]
        if len(chosen) < m:                        # zero-overlap candidates all tie at Jaccard 0
            banned = cand if exclude < 0 else np.union1d(cand, [exclude])
            chosen = np.concatenate([chosen, self._random_fill(t, h, banned, m - len(chosen), rng)])
        return tuple(int(q) for q in chosen)

    def _random_fill(self, t: int, h: int, banned: np.ndarray, need: int, rng) -> np.ndarray:
        """`need` uniform pool prompts of sub-task t outside `banned`, hash != h. Rejection sampling on
        large pools (O(need)); an exact O(pool) pass on small ones or when rejection keeps failing."""
        pool = self.pool_T[t]
        got = np.empty(0, dtype=np.int64)
        if len(pool) > 1024:
            for _ in range(8):
                c = pool[rng.integers(0, len(pool), size=2 * need + 8)]
                _, first = np.unique(c, return_index=True)
                c = c[np.sort(first)]
                c = c[~np.isin(c, banned) & ~np.isin(c, got) & (self.hash_P[c] != h)]
                got = np.concatenate([got, c[: need - len(got)]])
                if len(got) == need:
                    return got
        ok = pool[~np.isin(pool, banned) & ~np.isin(pool, got) & (self.hash_P[pool] != h)]
        extra = rng.choice(ok, size=min(need - len(got), len(ok)), replace=False)
        return np.concatenate([got, extra.astype(np.int64)])
