"""Welford/EMA reward statistics, the priority w_p and sub-task mastery on hand-made numbers."""

import numpy as np
import pytest

from toolexpander.sampling import stats
from toolexpander.types import REWARD_DIMS

D = len(REWARD_DIMS)
EX = REWARD_DIMS.index("exemplar")


def _welford_record(seen, mean, m2, slots_G, x_GnD):
    stats.welford_update(seen, mean, m2, *stats.pool_groups(slots_G, x_GnD))


def test_welford_batched_chan_updates_match_numpy():
    rng = np.random.default_rng(1)
    P = 3
    seen, mean, m2 = np.zeros(P, np.int64), np.zeros((P, D)), np.zeros((P, D))
    samples = {p: [] for p in range(P)}
    # several records, group sizes differ between records, prompt 0 twice inside one record
    for slots, n in [([0, 1], 10), ([0, 0, 2], 4), ([1], 7), ([2, 0], 1), ([0, 1, 2], 12)]:
        x_GnD = rng.random((len(slots), n, D))
        _welford_record(seen, mean, m2, np.array(slots), x_GnD)
        for g, p in enumerate(slots):
            samples[p].append(x_GnD[g])
    for p in range(P):
        all_xD = np.concatenate(samples[p])
        assert seen[p] == len(all_xD)
        np.testing.assert_allclose(mean[p], all_xD.mean(axis=0), rtol=0, atol=1e-12)
        var_D = stats.variance(seen, m2, "welford")[p]
        np.testing.assert_allclose(var_D, all_xD.var(axis=0), rtol=0, atol=1e-12)


def test_normalise_divides_exemplar_by_bonus_and_copies():
    raw = np.zeros((1, 2, D))
    raw[0, 1, EX] = 0.01
    raw[0, :, 0] = [1.0, 0.5]
    x = stats.normalise_rewards(raw, 0.01)
    assert x[0, 1, EX] == 1.0 and x[0, 0, EX] == 0.0
    assert list(x[0, :, 0]) == [1.0, 0.5]
    assert raw[0, 1, EX] == 0.01                       # the caller's array is untouched
    raw[0, 0, 1], raw[0, 1, 1] = 3.0, -1.0                # mis-scaled rewards are clipped into [0, 1]
    assert list(stats.normalise_rewards(raw, 0.01)[0, :, 1]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="REWARD_DIMS"):
        stats.normalise_rewards(np.zeros((1, 2, D - 1)), 0.01)


def test_ema_update_hand_numbers():
    seen, mean, var = np.zeros(1, np.int64), np.zeros((1, D)), np.zeros((1, D))
    x1 = np.zeros((1, 2, D))
    x1[0, :, 0] = [0.0, 1.0]                            # group mean 0.5, population var 0.25
    stats.ema_update(seen, mean, var, *stats.pool_groups(np.array([0]), x1), decay=0.8)
    assert mean[0, 0] == 0.5 and var[0, 0] == 0.25 and seen[0] == 2   # first record: m = x, v = s2
    x2 = np.ones((1, 2, D))                             # group mean 1, var 0
    stats.ema_update(seen, mean, var, *stats.pool_groups(np.array([0]), x2), decay=0.8)
    # delta = 0.5; m = 0.5 + 0.2 * 0.5; v = 0.8 * (0.25 + 0.2 * 0.25) + 0.2 * 0
    assert mean[0, 0] == pytest.approx(0.6, abs=1e-15)
    assert var[0, 0] == pytest.approx(0.24, abs=1e-15)
    assert seen[0] == 4


def test_priority_hand_case():
    seen = np.array([4, 0, 10])
    mean = np.zeros((3, D))
    var = np.zeros((3, D))
    mean[0] = [1.0, 1.0, 0.5, 0.5, 0.0, 0.0]            # mean_d m = 0.5
    var[0] = [0.0, 0.0, 0.25, 0.25, 0.0, 0.0]           # mean_d sqrt(v) = (0.5 + 0.5) / 6
    mean[2] = 1.0                                       # solved: mean 1, var 0
    w = stats.priority(seen, mean, var, eps=0.05, alpha_D=np.full(D, 2.0 / D), beta=1.0, prior_mean=0.0,
                       prior_std=0.5)
    assert w[0] == pytest.approx(0.05 + 2.0 * (1.0 / 6) + 1.0 * 0.5, abs=1e-15)
    assert w[1] == pytest.approx(0.05 + 2.0 * 0.5 + 1.0, abs=1e-15)   # unseen: the prior
    assert w[2] == pytest.approx(0.05, abs=1e-15)                      # solved fades to eps, not 0


def test_priority_weighs_each_dimension_std_by_its_own_alpha():
    seen = np.array([4, 4, 0])
    mean = np.full((3, D), 0.5)                         # beta term: 1 - 0.5
    var = np.zeros((3, D))
    var[0] = [0.0, 0.25, 0.04, 0.01, 0.0, 0.09]         # sqrt: 0, 0.5, 0.2, 0.1, 0, 0.3
    var[1] = [0.25, 0.0, 0.0, 0.0, 0.0, 0.0]            # sqrt: 0.5 on `format` only
    alpha_D = np.array([0.0, 2.0, 0.0, 1.0, 0.0, 0.5])  # format, tool_name, ..., correct
    w = stats.priority(seen, mean, var, eps=0.05, alpha_D=alpha_D, beta=1.0, prior_mean=0.0, prior_std=0.5)
    # 0.05 + (2 * 0.5 + 1 * 0.1 + 0.5 * 0.3) + 0.5 = 0.05 + 1.25 + 0.5
    assert w[0] == pytest.approx(1.8, abs=1e-15)
    assert w[1] == pytest.approx(0.55, abs=1e-15)       # alpha_format = 0: its spread earns nothing
    assert w[2] == pytest.approx(0.05 + 3.5 * 0.5 + 1.0, abs=1e-15)  # unseen: prior_std in every dim
    equal = stats.priority(seen, mean, var, eps=0.05, alpha_D=np.full(D, 1.0 / D), beta=1.0,
                           prior_mean=0.0, prior_std=0.5)
    assert equal[0] == pytest.approx(0.05 + 1.1 / 6 + 0.5, abs=1e-15)   # the mean std over dims


def test_default_alpha_reproduces_one_alpha_over_the_mean_std():
    from toolexpander.config import SamplerConfig

    alpha_D = np.array([SamplerConfig().alpha[d] for d in REWARD_DIMS])
    assert list(alpha_D) == [1.0 / D] * D
    rng = np.random.default_rng(3)
    seen, mean, var = rng.integers(0, 3, 50), rng.random((50, D)), rng.random((50, D)) * 0.25
    w = stats.priority(seen, mean, var, eps=0.05, alpha_D=alpha_D, beta=1.0, prior_mean=0.0, prior_std=0.5)
    old = 0.05 + np.where(seen == 0, 0.5, np.sqrt(var).mean(axis=1)) + np.where(seen == 0, 1.0,
                                                                                1.0 - mean.mean(axis=1))
    np.testing.assert_allclose(w, old, rtol=0, atol=1e-15)


def test_unseen_beats_every_seen_prompt_with_default_prior():
    rng = np.random.default_rng(0)
    P = 200
    seen, mean, m2 = np.zeros(P, np.int64), np.zeros((P, D)), np.zeros((P, D))
    slots = np.arange(1, P)
    _welford_record(seen, mean, m2, slots, (rng.random((P - 1, 10, D)) < rng.random((P - 1, 1, 1))) * 1.0)
    w = stats.priority(seen, mean, stats.variance(seen, m2, "welford"), eps=0.05,
                       alpha_D=np.full(D, 1.0 / D), beta=1.0, prior_mean=0.0, prior_std=0.5)
    assert w[0] == w.max() and (w[1:] < w[0]).all() and (w > 0).all()


def test_mastery_ema_per_subtask():
    sum_T, groups_T = np.zeros(4), np.zeros(4, np.int64)
    stats.accumulate_correct(sum_T, groups_T, np.array([1, 1, 2]),
                             np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]))
    assert list(groups_T) == [0, 2, 1, 0] and list(sum_T) == [0.0, 1.5, 0.0, 0.0]
    m = stats.update_mastery(np.array([0.5, 0.0, 0.5, 0.2]), sum_T, groups_T, decay=0.9)
    # single: 0.9 * 0 + 0.1 * mean(0.5, 1.0); parallel: 0.9 * 0.5 + 0.1 * 0; others untouched
    np.testing.assert_allclose(m, [0.5, 0.075, 0.45, 0.2], rtol=0, atol=1e-15)


def test_mastery_first_evidence_sets_the_mean_instead_of_decaying_from_zero():
    sum_T, groups_T = np.array([0.9, 1.5, 0.0, 0.0]), np.array([1, 2, 0, 1])
    seen_T = np.array([False, True, False, True])
    m = stats.update_mastery(np.array([0.0, 0.5, 0.3, 0.2]), sum_T, groups_T, decay=0.9, seen_T=seen_T)
    # no_call: first evidence -> 0.9 (not 0.09); single: EMA 0.9 * 0.5 + 0.1 * 0.75; parallel: no
    # evidence, unchanged; multi_turn: seen before, 0.9 * 0.2 + 0.1 * 0
    np.testing.assert_allclose(m, [0.9, 0.525, 0.3, 0.18], rtol=0, atol=1e-15)
