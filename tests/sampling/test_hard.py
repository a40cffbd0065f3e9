"""Zero-signal test, all-fail rounds and parking transitions, demo selection by tool-name overlap."""

import numpy as np

from toolexpander.sampling.hard import DemoIndex, all_fail, dedupe_csr, informative, next_rounds, next_streaks


def test_informative_uses_population_std_with_tolerance():
    totals = np.array([[1.0, 1.0, 1.0, 1.0],          # std 0
                       [1.0, 1.0, 1.0, 1.0008],       # std ~3.5e-4: below 1e-3
                       [1.0, 1.0, 1.0, 1.01],         # std ~4.3e-3: the exemplar bonus is signal
                       [0.0, 6.0, 0.0, 6.0]])
    assert informative(totals, 1e-3).tolist() == [False, False, True, True]
    assert informative(totals, 0.0).tolist() == [False, True, True, True]
    assert informative(np.array([[0.0, 2.0]]), 1.0).tolist() == [False]   # std exactly tol: not above


def test_all_fail_needs_min_n_completions():
    zeros10, zeros5 = np.zeros((1, 10)), np.zeros((1, 5))
    one = np.zeros((1, 10))
    one[0, 3] = 1.0
    assert all_fail(zeros10, 10).tolist() == [True]
    assert all_fail(zeros5, 10).tolist() == [False]
    assert all_fail(one, 10).tolist() == [False]


def test_round_transitions():
    fail, solved = np.zeros(10), np.r_[1.0, np.zeros(9)]
    rounds = np.array([0, 1, 2, 3, 0, 1, 3])
    correct = np.stack([fail, fail, fail, fail, solved, solved, solved])
    new, park = next_rounds(rounds, correct, 10, 3)
    assert new.tolist() == [1, 2, 3, 0, 0, 0, 2]
    assert park.tolist() == [False, False, False, True, False, False, False]
    assert new.dtype == np.int8
    new, park = next_rounds(np.array([0, 2]), np.zeros((2, 5)), 10, 3)    # n < min_n: nothing moves
    assert new.tolist() == [0, 2] and not park.any()
    new, _ = next_rounds(np.array([2]), np.ones((1, 5)), 10, 3)
    assert new.tolist() == [2]


def test_streaks_count_consecutive_all_fail_groups():
    s = next_streaks(np.array([0, 3, 3, 3]), np.array([[0] * 10, [0] * 10, [1] + [0] * 9, [0] * 10]), 10)
    assert s.tolist() == [1, 4, 0, 4]
    assert next_streaks(np.array([2, 2]), np.array([[0] * 4, [1, 0, 0, 0]]), 10).tolist() == [2, 0]


def test_dedupe_csr_makes_sorted_sets():
    indptr, ids = dedupe_csr(np.array([0, 3, 3, 5]), np.array([4, 1, 4, 2, 2]))
    assert indptr.tolist() == [0, 2, 2, 3] and ids.tolist() == [1, 4, 2]


def _index(sub, tools, hashes, pool=None):
    indptr = np.concatenate([[0], np.cumsum([len(t) for t in tools])])
    ids = np.concatenate([np.array(t, dtype=np.int64) for t in tools])
    pool = np.ones(len(sub), bool) if pool is None else np.asarray(pool)
    return DemoIndex(np.array(sub), indptr, ids, np.array(hashes), pool, 4)


def test_demos_ranked_by_jaccard_same_subtask_never_self_nor_identical_answer():
    #         0       1        2       3          4       5       6        7
    sub = [1, 1, 1, 1, 1, 2, 1, 1]
    tools = [[0, 1, 2], [0, 1, 2], [0, 1], [0, 1, 2, 3], [0], [0, 1, 2], [5], [9, 0, 1, 2]]
    hashes = [10, 10, 11, 12, 13, 14, 15, 16]  # 1 has the same answer as 0
    idx = _index(sub, tools, hashes)
    rng = np.random.default_rng(0)
    # Jaccard with 0: 2 -> 2/3, 3 -> 3/4, 4 -> 1/3, 7 -> 3/4 (tie with 3), 6 -> 0;
    # 1 is excluded (same answer), 5 is another sub-task
    for _ in range(20):
        top2 = idx.select(0, 2, rng)
        assert sorted(top2) == [3, 7]
        assert idx.select(0, 3, rng)[2] == 2
        assert idx.select(0, 4, rng)[3] == 4
        assert sorted(idx.select(0, 10, rng)) == [2, 3, 4, 6, 7]    # zero-overlap 6 fills; no 0, 1, 5
    ties = {idx.select(0, 1, np.random.default_rng(s))[0] for s in range(20)}
    assert ties == {3, 7}                                             # ties broken by the rng


def test_demos_respect_the_pool_and_an_empty_tool_set():
    sub = [0, 0, 0, 0]
    idx = _index(sub, [[], [1], [1], []], [1, 2, 3, 4], pool=[True, False, True, True])
    rng = np.random.default_rng(0)
    assert idx.select(1, 1, rng) == (2,)
    assert sorted(idx.select(1, 5, rng)) == [0, 2, 3]
    assert sorted(idx.select(0, 5, rng)) == [2, 3]


def test_demo_random_fill_on_a_large_pool_is_valid_and_deterministic():
    P = 3000
    sub = np.ones(P, np.int64)
    tools = [[i % 50 + 100] for i in range(P)]
    tools[0] = [7]                                  # no overlap with anyone: all candidates tie at 0
    hashes = np.arange(P)
    hashes[5] = hashes[0]
    idx = _index(sub, tools, hashes)
    a = idx.select(0, 3, np.random.default_rng(4))
    assert a == idx.select(0, 3, np.random.default_rng(4))
    assert len(set(a)) == 3 and 0 not in a and 5 not in a


def test_demos_for_a_query_outside_the_pool_rows():
    # pool rows: 0 single {1,2}, 1 single {2}, 2 parallel {1,2}, 3 single {7}, 4 single {1,2} with the
    # query's own answer (its row in the file), 5 single {} (flagged broken: out of the pool)
    idx = _index([1, 1, 2, 1, 1, 1], [[1, 2], [2], [1, 2], [7], [1, 2], []], [1, 2, 3, 4, 99, 5],
                 pool=[True, True, True, True, True, False])
    rng = np.random.default_rng(0)
    # query: single, tools {1, 2, 40} (40: a name no pool row has), answer hash 99
    assert idx.select_for(1, np.array([2, 1, 40, 1]), 99, 1, rng) == (0,)        # Jaccard 2/3 > 1/3
    assert idx.select_for(1, np.array([2, 1, 40]), 99, 2, rng) == (0, 1)
    assert sorted(idx.select_for(1, np.array([1, 2, 40]), 99, 9, rng)) == [0, 1, 3]  # never 2, 4, 5
    assert idx.select_for(1, np.array([2]), 99, 1, rng, exclude=1) == (0,)
    assert idx.select_for(1, np.array([], np.int64), 7, 0, rng) == ()
