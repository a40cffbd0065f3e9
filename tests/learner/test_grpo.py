"""Exact numbers for the pure GRPO pieces: advantages, clipped surrogate (loss, gradient, metrics), LR schedule."""

import math
import pickle

import pytest
import torch

from toolexpander.learner.grpo import (all_finite, behaviour_weights, clipped_surrogate, entropy, group_advantages,
                                      lr_lambda, reference_kl)

torch.set_num_threads(1)
EPS = 1e-6


def test_group_advantages_standardised_with_population_std():
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]]))
    # group 0: mean 0.5, population std 0.5; group 1: no signal
    expected = torch.tensor([[1.0, -1.0, -1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]) * 0.5 / (0.5 + EPS)
    torch.testing.assert_close(adv, expected, rtol=0, atol=0)


def test_group_advantages_two_completions_are_plus_minus_one():
    # the unbiased std (0.707) would give +-0.707 here; the population std gives +-1
    adv = group_advantages(torch.tensor([[0.0, 1.0]]))
    assert adv.tolist()[0] == pytest.approx([-1.0, 1.0], abs=1e-5)


def test_group_advantages_centred_only():
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]]), std_norm=False)
    assert adv.tolist() == [[0.5, -0.5, -0.5, 0.5], [0.0, 0.0, 0.0, 0.0]]


def _toy(ratios, old=-1.0):
    """(B, T) ratios -> new logprobs (leaf, float64) and old logprobs with exp(new - old) = ratio."""
    old_BT = torch.full((len(ratios), len(ratios[0])), old, dtype=torch.float64)
    new_BT = (old_BT + torch.tensor(ratios, dtype=torch.float64).log()).requires_grad_(True)
    return new_BT, old_BT


# Row 0: A = +2, r = 1.25 (inside 1 + 0.28: loss -rA = -2.5, grad -rA = -2.5) and r = 1.3 (clipped: loss -1.28 * 2
# = -2.56, grad 0). Row 1: A = -1, r = 0.75 (clipped at 0.8: loss 0.8, grad 0) and r = 0.9 (inside: loss 0.9,
# grad -rA = 0.9). Four tokens.
RATIOS = [[1.25, 1.3], [0.75, 0.9]]
ADV = torch.tensor([2.0, -1.0], dtype=torch.float64)
MASK = torch.ones(2, 2, dtype=torch.bool)


def test_clipped_surrogate_loss_and_gradient_by_hand():
    new, old = _toy(RATIOS)
    out = clipped_surrogate(new, old, ADV, MASK)
    assert out.loss.item() == pytest.approx((-2.5 - 2.56 + 0.8 + 0.9) / 4, abs=1e-12)
    out.loss.backward()
    expected_grad = torch.tensor([[-2.5, 0.0], [0.0, 0.9]], dtype=torch.float64) / 4
    torch.testing.assert_close(new.grad, expected_grad, rtol=0, atol=1e-12)


def test_clipped_surrogate_metrics_by_hand():
    new, old = _toy(RATIOS)
    m = clipped_surrogate(new, old, ADV, MASK).metrics
    assert m["learner/clip_frac_high"] == pytest.approx(0.25)   # r = 1.3 with A > 0
    assert m["learner/clip_frac_low"] == pytest.approx(0.25)    # r = 0.75 with A < 0
    assert m["learner/clip_frac"] == pytest.approx(0.5)
    k3 = sum((r - 1) - math.log(r) for r in (1.25, 1.3, 0.75, 0.9)) / 4
    assert m["learner/approx_kl"] == pytest.approx(k3, rel=1e-5)
    assert m["learner/ratio_mean"] == pytest.approx(1.05, rel=1e-6)
    assert m["learner/adv_mean"] == pytest.approx(0.5)
    assert m["learner/adv_std"] == pytest.approx(1.5)           # population std of (2, -1)
    assert m["learner/adv_max"] == 2.0 and m["learner/adv_min"] == -1.0
    assert "learner/clip_frac_dual" not in m


def test_clip_is_one_sided():
    # A > 0 with r below 1 - eps_low and A < 0 with r above 1 + eps_high: the unclipped term is the
    # pessimistic one, so neither is clipped and both keep gradient -rA.
    new, old = _toy([[0.5], [1.5]])
    out = clipped_surrogate(new, old, torch.tensor([1.0, -1.0], dtype=torch.float64), torch.ones(2, 1, dtype=torch.bool))
    assert out.loss.item() == pytest.approx((-0.5 + 1.5) / 2, abs=1e-12)
    out.loss.backward()
    torch.testing.assert_close(new.grad, torch.tensor([[-0.5], [1.5]], dtype=torch.float64) / 2, rtol=0, atol=1e-12)
    assert out.metrics["learner/clip_frac"] == 0.0


def test_symmetric_bounds_follow_eps_arguments():
    new, old = _toy([[1.25]])
    out = clipped_surrogate(new, old, torch.tensor([1.0], dtype=torch.float64), torch.ones(1, 1, dtype=torch.bool),
                            eps_low=0.2, eps_high=0.2)
    assert out.loss.item() == pytest.approx(-1.2, abs=1e-12)   # r = 1.25 is clipped at 1.2 here
    assert out.metrics["learner/clip_frac_high"] == 1.0


def test_token_count_normalisation_and_micro_batch_accumulation():
    new, old = _toy(RATIOS)
    total = (-2.5 - 2.56 + 0.8 + 0.9)
    assert clipped_surrogate(new, old, ADV, MASK, token_count=10).loss.item() == pytest.approx(total / 10, abs=1e-12)
    # two micro-batches of one row each, normalised by the mini-batch's 4 tokens, sum to the full loss
    parts = [clipped_surrogate(new[i:i + 1], old[i:i + 1], ADV[i:i + 1], MASK[i:i + 1], token_count=4).loss
             for i in range(2)]
    assert sum(p.item() for p in parts) == pytest.approx(total / 4, abs=1e-12)


def test_masked_tokens_are_ignored_even_when_garbage():
    new, old = _toy(RATIOS)
    pad_new = torch.tensor([[float("nan")], [50.0]], dtype=torch.float64)
    pad_old = torch.tensor([[0.0], [-float("inf")]], dtype=torch.float64)
    new3 = torch.cat([new.detach(), pad_new], dim=1).requires_grad_(True)
    old3 = torch.cat([old, pad_old], dim=1)
    mask3 = torch.tensor([[True, True, False], [True, True, False]])
    out = clipped_surrogate(new3, old3, ADV, mask3)
    assert out.loss.item() == pytest.approx((-2.5 - 2.56 + 0.8 + 0.9) / 4, abs=1e-12)
    out.loss.backward()
    expected = torch.tensor([[-2.5, 0.0, 0.0], [0.0, 0.9, 0.0]], dtype=torch.float64) / 4
    torch.testing.assert_close(new3.grad, expected, rtol=0, atol=1e-12)
    assert all(math.isfinite(v) for v in out.metrics.values())
    assert out.metrics["learner/ratio_mean"] == pytest.approx(1.05, rel=1e-6)


def test_reference_kl_k3_loss_gradient_and_mask_by_hand():
    # Per token k3 = e^d - d - 1 with d = ref - logp. Token (0,0): d = 0 -> 0. Token (0,1): logp = log 2,
    # ref = 0, d = -log 2 -> 1/2 + log 2 - 1. Token (1,0): logp = 0, ref = log 2 -> 2 - log 2 - 1.
    # Token (1,1) is outside the mask and holds garbage. d(k3)/d(logp) = 1 - e^d: 0, 1/2, -1.
    ln2 = math.log(2.0)
    logp = torch.tensor([[0.0, ln2], [0.0, float("nan")]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[0.0, 0.0], [ln2, -float("inf")]], dtype=torch.float64)
    mask = torch.tensor([[True, True], [True, False]])
    k3 = [0.0, 0.5 + ln2 - 1.0, 1.0 - ln2]
    loss, mean = reference_kl(logp, ref, mask, token_count=4)
    assert loss.item() == pytest.approx(sum(k3) / 4, abs=1e-12) and mean == pytest.approx(sum(k3) / 3, abs=1e-12)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 0.5], [-1.0, 0.0]], dtype=torch.float64) / 4,
                               rtol=0, atol=1e-12)
    same, zero = reference_kl(ref[:1].clone().requires_grad_(True), ref[:1], mask[:1])   # policy == reference
    assert same.item() == 0.0 and zero == 0.0
    far, _ = reference_kl(torch.tensor([[-1e4]]), torch.tensor([[0.0]]), torch.tensor([[True]]))
    assert math.isfinite(far.item())   # the log ratio is clamped before exp
    with pytest.raises(ValueError, match="reference"):
        reference_kl(logp, ref[:, :1], mask)


def test_float_mask_and_empty_mask():
    new, old = _toy(RATIOS)
    out = clipped_surrogate(new, old, ADV, MASK.float())
    assert out.loss.item() == pytest.approx((-2.5 - 2.56 + 0.8 + 0.9) / 4, abs=1e-12)
    empty = clipped_surrogate(new, old, ADV, torch.zeros(2, 2))
    assert empty.loss.item() == 0.0 and empty.metrics["learner/clip_frac"] == 0.0


def test_dual_clip_caps_negative_advantage_loss():
    # A = -1: r = 4 gives pg loss 4 > c = 3, so the loss is capped at -cA = 3 with zero gradient;
    # r = 1.5 stays at 1.5 (gradient 1.5). A = +1 with r = 4: the ordinary upper clip, dual clip irrelevant.
    new, old = _toy([[4.0, 1.5], [4.0, 1.0]])
    adv = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    mask = torch.ones(2, 2, dtype=torch.bool)
    out = clipped_surrogate(new, old, adv, mask, dual_clip=3.0)
    assert out.loss.item() == pytest.approx((3.0 + 1.5 - 1.28 - 1.0) / 4, abs=1e-12)
    out.loss.backward()
    torch.testing.assert_close(new.grad, torch.tensor([[0.0, 1.5], [0.0, -1.0]], dtype=torch.float64) / 4,
                               rtol=0, atol=1e-12)
    assert out.metrics["learner/clip_frac_dual"] == pytest.approx(0.25)
    assert out.metrics["learner/clip_frac_high"] == pytest.approx(0.25)
    assert out.metrics["learner/clip_frac"] == pytest.approx(0.5)
    without = clipped_surrogate(new, old, adv, mask)
    assert without.loss.item() == pytest.approx((4.0 + 1.5 - 1.28 - 1.0) / 4, abs=1e-12)
    with pytest.raises(ValueError, match="dual_clip"):
        clipped_surrogate(new, old, adv, mask, dual_clip=1.0)


def test_importance_weights_scale_each_token_loss_and_gradient():
    # RATIOS with weights 0.5 (the unclipped A > 0 token), 1, 2 (the clipped A < 0 token: loss doubles,
    # gradient stays 0) and 1: each token's loss and gradient are multiplied by its weight.
    new, old = _toy(RATIOS)
    weights = torch.tensor([[0.5, 1.0], [2.0, 1.0]], dtype=torch.float64).requires_grad_(True)
    out = clipped_surrogate(new, old, ADV, MASK, is_weights_BT=weights)
    assert out.loss.item() == pytest.approx((-2.5 * 0.5 - 2.56 + 0.8 * 2 + 0.9) / 4, abs=1e-12)
    out.loss.backward()
    torch.testing.assert_close(new.grad, torch.tensor([[-1.25, 0.0], [0.0, 0.9]], dtype=torch.float64) / 4,
                               rtol=0, atol=1e-12)
    assert weights.grad is None  # constants: no gradient flows into the behaviour correction
    with pytest.raises(ValueError, match="is_weights"):
        clipped_surrogate(new, old, ADV, MASK, is_weights_BT=torch.ones(2, 3))


def test_behaviour_weights_truncate_in_log_space_and_count_nonfinite():
    # log pi_old - log mu per token: 0 (w 1), log 3 (w 3, truncated at cap 2), -log 2 (w 0.5), a masked
    # garbage position, and a nan behaviour logprob (weight 0, counted, left out of the means).
    old = torch.tensor([[-1.0, -1.0, -1.0, 0.0, -1.0]], dtype=torch.float64)
    mu = torch.tensor([[-1.0, -1.0 - math.log(3), -1.0 + math.log(2), 99.0, float("nan")]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False, True]])
    w, m = behaviour_weights(old, mu, mask, cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[1.0, 2.0, 0.5, 0.0, 0.0]], dtype=torch.float64), rtol=0, atol=1e-12)
    assert m["rollout/mismatch_k3_kl"] == pytest.approx((0 + (3 - 1 - math.log(3)) + (0.5 - 1 + math.log(2))) / 3, rel=1e-12)
    assert m["learner/is_weight_mean"] == pytest.approx(3.5 / 3, rel=1e-12)
    assert m["learner/is_clip_frac"] == pytest.approx(1 / 3, rel=1e-12)
    assert m["learner/is_nonfinite"] == 1.0
    # cap None: no correction (weight 1 on every finite token), the mismatch is still measured.
    w, m = behaviour_weights(old, mu, mask, cap=None)
    assert w.tolist() == [[1.0, 1.0, 1.0, 0.0, 0.0]]
    assert m["learner/is_clip_frac"] == 0.0 and m["learner/is_nonfinite"] == 1.0
    assert m["rollout/mismatch_k3_kl"] == pytest.approx((2 - math.log(3) - 0.5 + math.log(2)) / 3, rel=1e-12)


def test_behaviour_weights_never_overflow():
    # A ratio of e^100 (float32 overflows at e^88) is clamped in log space at 20 before exp.
    old = torch.tensor([[0.0, -100.0]])
    mu = torch.tensor([[-100.0, 0.0]])
    w, m = behaviour_weights(old, mu, torch.ones(1, 2, dtype=torch.bool), cap=2.0)
    assert w.dtype == torch.float32 and w.tolist()[0] == pytest.approx([2.0, math.exp(-20)], rel=1e-6)
    k3 = (math.exp(20) - 1 - 20 + math.exp(-20) - 1 + 20) / 2
    assert m["rollout/mismatch_k3_kl"] == pytest.approx(k3, rel=1e-9) and math.isfinite(m["rollout/mismatch_k3_kl"])
    assert m["learner/is_clip_frac"] == 0.5 and m["learner/is_nonfinite"] == 0.0
    with pytest.raises(ValueError, match="cap"):
        behaviour_weights(old, mu, torch.ones(1, 2), cap=0.0)


def test_shape_errors_name_the_shapes():
    new, old = _toy(RATIOS)
    with pytest.raises(ValueError, match="advantages"):
        clipped_surrogate(new, old, torch.zeros(3), MASK)
    with pytest.raises(ValueError, match="mask"):
        clipped_surrogate(new, old, ADV, torch.ones(2, 3))


def test_entropy_by_hand():
    # uniform over 4, uniform over 2 (the others at -1e9); the mean over completion tokens only is
    # shared_prompt's (tests/learner/test_shared_prompt.py)
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1e9, -1e9]])
    assert entropy(logits).tolist() == pytest.approx([math.log(4), math.log(2)], rel=1e-6)
    assert entropy(logits.to(torch.bfloat16)).dtype == torch.float32


def test_lr_lambda_warmup_decay_floor():
    lam = lr_lambda(warmup_steps=2, gamma=0.5, lr0=1e-3, lr_min=1e-4)
    assert [lam(s) for s in range(8)] == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.25, 0.125, 0.1, 0.1])
    no_warmup = lr_lambda(warmup_steps=0, gamma=0.9, lr0=1.0, lr_min=0.0)
    assert [no_warmup(s) for s in range(3)] == pytest.approx([1.0, 0.9, 0.81])


def test_lr_lambda_pickles_and_drives_lambdalr():
    lam = pickle.loads(pickle.dumps(lr_lambda(2, 0.5, 1e-3, 1e-4)))
    assert [lam(s) for s in range(8)] == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.25, 0.125, 0.1, 0.1])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3, 5e-4, 2.5e-4])
    state = pickle.loads(pickle.dumps(sched.state_dict()))        # what a checkpoint stores
    assert state["last_epoch"] == 5


def test_all_finite():
    assert all_finite(torch.ones(3), torch.zeros(2, 2), None, 1.5)
    assert not all_finite(torch.ones(3), torch.tensor([1.0, float("nan")]))
    assert not all_finite(torch.tensor(float("inf")))
    assert all_finite()
