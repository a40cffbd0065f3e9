"""Per-prompt reward statistics (Welford or EMA mean/variance per dimension), the sampling priority
w_p, and per-sub-task mastery. Pure numpy on arrays indexed by prompt; callers own the arrays.
"""

from __future__ import annotations

import numpy as np

from toolexpander.types import REWARD_DIMS

D = len(REWARD_DIMS)
EXEMPLAR = REWARD_DIMS.index("exemplar")
CORRECT = REWARD_DIMS.index("correct")


def normalise_rewards(rewards_GnD: np.ndarray, exemplar_bonus: float) -> np.ndarray:
    """Raw rewards -> float64 in [0, 1] per dimension: the exemplar dim (values {0, bonus}) is / bonus;
    then clipped to [0, 1], so a mis-scaled reward can never push a priority below eps."""
    x_GnD = np.array(rewards_GnD, dtype=np.float64)  # a copy: the caller's array stays raw
    if x_GnD.ndim != 3 or x_GnD.shape[2] != D:
        raise ValueError(f"rewards must be (G, n, {D}) in REWARD_DIMS order, got shape {x_GnD.shape}")
    if exemplar_bonus > 0:
        x_GnD[:, :, EXEMPLAR] /= exemplar_bonus
    else:
        x_GnD[:, :, EXEMPLAR] = 0.0  # a zero bonus carries no information
    return np.clip(x_GnD, 0.0, 1.0, out=x_GnD)


def pool_groups(slots_G: np.ndarray, x_GnD: np.ndarray):
    """Pool the groups of one record by prompt (a prompt may appear twice): one sample set per prompt.

    Returns (slots_U, count_U, mean_UD, m2_UD) with m2 = sum of squared deviations from mean_UD.
    """
    G, n, _ = x_GnD.shape
    slots_U, inv_G = np.unique(slots_G, return_inverse=True)
    count_U = np.bincount(inv_G, minlength=len(slots_U)).astype(np.int64) * n
    sum_UD = np.zeros((len(slots_U), D))
    np.add.at(sum_UD, inv_G, x_GnD.sum(axis=1))
    mean_UD = sum_UD / count_U[:, None]
    dev_GD = ((x_GnD - mean_UD[inv_G][:, None, :]) ** 2).sum(axis=1)
    m2_UD = np.zeros((len(slots_U), D))
    np.add.at(m2_UD, inv_G, dev_GD)
    return slots_U, count_U, mean_UD, m2_UD


def welford_update(seen_P, mean_PD, m2_PD, slots_U, count_U, mean_UD, m2_UD) -> None:
    """In place: merge each prompt's new samples (count, mean, M2) into its running stats.

    Chan et al.'s parallel Welford: delta = mean_b - mean_a, n = n_a + n_b,
    mean = mean_a + delta * n_b / n,  M2 = M2_a + M2_b + delta^2 * n_a * n_b / n.
    Variance is the population variance M2 / n (== np.var).
    """
    na_U = seen_P[slots_U].astype(np.float64)[:, None]
    nb_U = count_U.astype(np.float64)[:, None]
    n_U = na_U + nb_U
    delta_UD = mean_UD - mean_PD[slots_U]
    mean_PD[slots_U] = mean_PD[slots_U] + delta_UD * (nb_U / n_U)
    m2_PD[slots_U] = m2_PD[slots_U] + m2_UD + delta_UD ** 2 * (na_U * nb_U / n_U)
    seen_P[slots_U] += count_U


def ema_update(seen_P, mean_PD, var_PD, slots_U, count_U, mean_UD, m2_UD, decay: float) -> None:
    """In place: one EMA step per prompt per record, whatever the group size.

    With a = 1 - decay, x = the group's mean and s2 its population variance:
    delta = x - m;  m <- m + a * delta;  v <- decay * (v + a * delta^2) + a * s2
    (Finch's incremental EMA variance, plus the spread inside the group). The first record of a
    prompt sets m = x, v = s2.
    """
    a = 1.0 - decay
    s2_UD = m2_UD / count_U[:, None]
    first_U = seen_P[slots_U] == 0
    delta_UD = mean_UD - mean_PD[slots_U]
    new_mean_UD = mean_PD[slots_U] + a * delta_UD
    new_var_UD = decay * (var_PD[slots_U] + a * delta_UD ** 2) + a * s2_UD
    new_mean_UD[first_U] = mean_UD[first_U]
    new_var_UD[first_U] = s2_UD[first_U]
    mean_PD[slots_U] = new_mean_UD
    var_PD[slots_U] = new_var_UD
    seen_P[slots_U] += count_U


def variance(seen_P: np.ndarray, spread_PD: np.ndarray, mode: str) -> np.ndarray:
    """The per-dimension variance: M2 / seen for Welford (0 when unseen), the array itself for EMA."""
    if mode == "ema":
        return spread_PD
    return spread_PD / np.maximum(seen_P, 1)[:, None]


def priority(seen_P, mean_PD, var_PD, *, eps: float, alpha_D: np.ndarray, beta: float,
             prior_mean: float, prior_std: float) -> np.ndarray:
    """w_p = eps + sum_d alpha_d * sqrt(v_d) + beta * (1 - mean_d m_d); unseen prompts use the prior
    (sqrt(v_d) = prior_std in every dim, mean m = prior_mean).

    alpha_D (D,) weighs each dimension's std; alpha_d = 1/D each makes the std term the mean std
    over dims (in [0, 0.5] with rewards in [0, 1]; the mean term lies in [0, 1]). Never 0: w >= eps.
    """
    alpha_D = np.asarray(alpha_D, dtype=np.float64)
    std_P = np.sqrt(np.maximum(var_PD, 0.0)) @ alpha_D
    mean_P = mean_PD.mean(axis=1)
    unseen = seen_P == 0
    std_P = np.where(unseen, prior_std * alpha_D.sum(), std_P)
    mean_P = np.where(unseen, prior_mean, mean_P)
    return eps + std_P + beta * (1.0 - mean_P)


def accumulate_correct(sum_T, groups_T, subtask_G, correct_Gn) -> None:
    """In place: add each group's mean `correct` to its sub-task's running sum for this step."""
    np.add.at(sum_T, subtask_G, np.asarray(correct_Gn, dtype=np.float64).mean(axis=1))
    np.add.at(groups_T, subtask_G, 1)


def update_mastery(mastery_T, sum_T, groups_T, decay: float, seen_T=None) -> np.ndarray:
    """M_t <- decay * M_t + (1 - decay) * (mean over the step's groups of t of their mean `correct`).

    Sub-tasks with no group this step keep their mastery (no decay without evidence). seen_T (bool,
    optional): sub-tasks that had evidence before; a sub-task's first evidence sets M_t to that step's
    mean, as a prompt's first record sets its EMA mean (ema_update). Without it the EMA would start
    from 0 and read (1 - decay^k) x the true rate after k steps of evidence: a sub-task drawn rarely
    (few prompts) would look unmastered for tens of steps and keep the curriculum's largest share.
    """
    out_T = np.array(mastery_T, dtype=np.float64)
    has = groups_T > 0
    mean_T = np.divide(sum_T, groups_T, out=np.zeros(len(out_T)), where=has)
    out_T[has] = decay * out_T[has] + (1.0 - decay) * mean_T[has]
    if seen_T is not None:
        first = has & ~np.asarray(seen_T, dtype=bool)
        out_T[first] = mean_T[first]
    return out_T
