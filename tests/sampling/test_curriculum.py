"""Sub-task shares, the per-step allocation and the weighted draw without replacement."""

import numpy as np
import pytest

from toolexpander.sampling.curriculum import allocate, draw_weighted, pick_subset, proportional_shares, shares

ALL = np.ones(4, dtype=bool)


def test_equal_mastery_gives_equal_shares():
    np.testing.assert_allclose(shares(np.full(4, 0.3), 0.5, 0.05, ALL), 0.25, atol=1e-15)


def test_shares_move_toward_the_least_mastered_subtask():
    q = shares(np.array([0.9, 0.2, 0.6, 0.6]), 0.5, 0.05, ALL)
    assert q.sum() == pytest.approx(1.0, abs=1e-12)
    assert q[1] > q[2] == q[3] > q[0]
    e = np.exp(np.array([0.1, 0.8, 0.4, 0.4]) / 0.5)   # no floor binds here: plain softmax
    np.testing.assert_allclose(q, e / e.sum(), atol=1e-12)


def test_shares_floor_is_iterated_and_respected():
    q = shares(np.array([1.0, 0.0, 1.0, 0.9]), 0.01, 0.05, ALL)
    np.testing.assert_allclose(q, [0.05, 0.85, 0.05, 0.05], atol=1e-12)
    q = shares(np.array([1.0, 0.0, 1.0, 0.9]), 0.01, 0.25, ALL)  # floor 1/4 -> uniform
    np.testing.assert_allclose(q, 0.25, atol=1e-12)
    q = shares(np.array([0.0, 0.5, 0.7, 0.99]), 0.3, 0.2, ALL)
    assert (q >= 0.2 - 1e-12).all() and q.sum() == pytest.approx(1.0, abs=1e-12)


def test_inactive_subtasks_get_zero_share():
    q = shares(np.array([0.0, 0.5, 0.5, 0.5]), 0.5, 0.05, np.array([False, True, True, False]))
    np.testing.assert_allclose(q, [0.0, 0.5, 0.5, 0.0], atol=1e-15)
    assert shares(np.zeros(4), 0.5, 0.05, np.zeros(4, bool)).sum() == 0.0


def test_prompt_base_with_equal_mastery_is_the_curriculum_off_batch():
    base = np.array([4, 19, 19, 22])                           # the learning benchmark's 64 prompts
    np.testing.assert_allclose(shares(np.full(4, 0.4), 0.5, 0.05, ALL, base), base / 64, atol=1e-15)
    np.testing.assert_allclose(shares(np.full(4, 0.4), 0.5, 0.05, ALL, base), proportional_shares(base),
                               atol=1e-15)


def test_prompt_base_tilts_by_mastery_and_keeps_the_floor():
    base = np.array([4, 19, 19, 22])
    # no_call mastered (0.9), the rest at 0.4: raw 4 e^0.2, 19 e^1.2, 19 e^1.2, 22 e^1.2 -> no_call
    # 4 e^0.2 / (4 e^0.2 + 60 e^1.2) = 0.0239, below q_min 0.05: pinned, the rest share 0.95 by base
    q = shares(np.array([0.9, 0.4, 0.4, 0.4]), 0.5, 0.05, ALL, base)
    np.testing.assert_allclose(q, [0.05, 0.95 * 19 / 60, 0.95 * 19 / 60, 0.95 * 22 / 60], atol=1e-12)
    q = shares(np.array([0.9, 0.4, 0.4, 0.4]), 0.5, 0.0, ALL, base)
    r = np.array([4 * np.exp(0.2), 19 * np.exp(1.2), 19 * np.exp(1.2), 22 * np.exp(1.2)])
    np.testing.assert_allclose(q, r / r.sum(), atol=1e-12)
    # DESIGN's base (1 each) gives the same mastered no_call 0.0831, 3.5x its 4/64 of the prompts
    q1 = shares(np.array([0.9, 0.4, 0.4, 0.4]), 0.5, 0.0, ALL)
    assert q1[0] == pytest.approx(np.exp(0.2) / (np.exp(0.2) + 3 * np.exp(1.2)), abs=1e-12)
    # a sub-task without eligible prompts gets 0 either way
    q = shares(np.full(4, 0.4), 0.5, 0.05, ALL, np.array([0, 10, 10, 20]))
    np.testing.assert_allclose(q, [0.0, 0.25, 0.25, 0.5], atol=1e-15)


def test_allocate_rounds_each_share_down_or_up_and_sums_to_total():
    q = np.array([0.05, 0.1, 0.15, 0.7])
    for seed in range(50):
        c = allocate(8, q, np.full(4, 100), np.random.default_rng(seed))
        assert c.sum() == 8
        assert (c >= np.floor(8 * q)).all() and (c <= np.ceil(8 * q)).all()


def test_allocate_is_unbiased_so_small_shares_are_not_starved():
    q = np.array([0.05, 0.1, 0.15, 0.7])
    rng = np.random.default_rng(0)
    mean = np.mean([allocate(8, q, np.full(4, 100), rng) for _ in range(4000)], axis=0)
    np.testing.assert_allclose(mean, 8 * q, atol=0.05)


def test_allocate_gives_what_a_subtask_cannot_take_to_the_others():
    q = np.array([0.7, 0.1, 0.1, 0.1])
    c = allocate(10, q, np.array([2, 100, 100, 0]), np.random.default_rng(0))
    assert c[0] == 2 and c[3] == 0 and c.sum() == 10
    c = allocate(10, q, np.array([2, 3, 1, 0]), np.random.default_rng(0))   # fewer eligible than asked
    assert list(c) == [2, 3, 1, 0]


def test_draw_weighted_distinct_and_never_zero_weight():
    rng = np.random.default_rng(0)
    w = np.array([0.0, 1.0, 0.0, 5.0, 2.0, 0.0, 0.1])
    for _ in range(200):
        idx = draw_weighted(w, 3, rng)
        assert len(idx) == 3 == len(set(idx.tolist())) and (w[idx] > 0).all()
    assert sorted(draw_weighted(w, 10, rng).tolist()) == [1, 3, 4, 6]   # k capped at the positives
    assert len(draw_weighted(np.zeros(5), 2, rng)) == 0


def test_draw_weighted_single_draw_is_proportional_to_weight():
    rng = np.random.default_rng(0)
    w = np.array([1.0, 2.0, 0.0, 7.0])
    counts = np.bincount(np.concatenate([draw_weighted(w, 1, rng) for _ in range(20000)]), minlength=4)
    np.testing.assert_allclose(counts / counts.sum(), w / w.sum(), atol=0.01)


def test_pick_subset_uniform_is_the_seeded_choice_it_always_was():
    for seed in range(3):
        expected = np.sort(np.random.default_rng(seed).choice(50, 8, replace=False))
        np.testing.assert_array_equal(pick_subset(["single"] * 50, 8, np.random.default_rng(seed)), expected)


def test_pick_subset_with_a_mix_takes_each_subtasks_share_of_the_other_population():
    # The file: 60% parallel, 20% single, 20% no_call; the fitting prompts: 2 parallel, 10 single, 10 no_call.
    fitting = ["parallel"] * 2 + ["single"] * 10 + ["no_call"] * 10
    file = ["parallel"] * 6 + ["single"] * 2 + ["no_call"] * 2
    for seed in range(20):
        picked = pick_subset(fitting, 5, np.random.default_rng(seed), file)
        kinds = [fitting[i] for i in picked]
        assert len(set(picked.tolist())) == 5 and list(picked) == sorted(picked)
        # parallel wants 3 of 5 but has 2: both taken, its third place split by share between the others
        assert kinds.count("parallel") == 2 and {kinds.count("single"), kinds.count("no_call")} <= {1, 2}
    # Room for every share: exactly 64 * share when it is whole (file shares 1/2, 1/4, 1/4).
    fitting = ["parallel"] * 40 + ["single"] * 40 + ["no_call"] * 40
    picked = pick_subset(fitting, 64, np.random.default_rng(0), ["parallel"] * 2 + ["single", "no_call"])
    assert [sum(fitting[i] == k for i in picked) for k in ("parallel", "single", "no_call")] == [32, 16, 16]
