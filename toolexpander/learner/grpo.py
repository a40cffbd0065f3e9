"""The GRPO update in pure torch: group advantages, the clipped token-level surrogate, the LR schedule.

Tensors in, a scalar loss and float metrics out; no model, no optimizer, no distributed state.

Deviations from textbook GRPO (DeepSeekMath), all on purpose (DESIGN.md, "GRPO update"):
- no KL term and no reference model;
- asymmetric clip range [1 - eps_low, 1 + eps_high] (DAPO's clip-higher, defaults 0.2 / 0.28);
- token-level normalisation: the loss is a sum over every response token of the mini-batch divided by the
  mini-batch's token count (over all data-parallel ranks), not a per-sequence mean averaged over sequences;
- logprobs are those of the distribution sampled from, log softmax(logits / T) at the rollout temperature
  T, on both sides (vLLM's processed logprobs, the learner's division by T);
- the LR schedule counts training steps, not optimizer updates;
- optional dual clip (Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep RL") for
  negative advantages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


def group_advantages(rewards_G_n: torch.Tensor, std_norm: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """(G, n) rewards of G groups of n completions -> (G, n) advantages.

    A = (R - mean_G R) / (std_G R + eps), where std is the population standard deviation
    (unbiased=False: the n completions are the whole group, not a sample of it; with n = 2 the
    unbiased estimate would inflate every advantage by sqrt(2)). std_norm=False only centres.
    A group whose rewards are all equal gets all-zero advantages either way.
    """
    if rewards_G_n.dim() != 2:
        raise ValueError(f"rewards must be (G, n), got shape {tuple(rewards_G_n.shape)}")
    rewards_G_n = rewards_G_n.float()
    centred_G_n = rewards_G_n - rewards_G_n.mean(dim=1, keepdim=True)
    if not std_norm:
        return centred_G_n
    std_G1 = rewards_G_n.std(dim=1, unbiased=False, keepdim=True)
    return centred_G_n / (std_G1 + eps)


@dataclass
class LossOut:
    loss: torch.Tensor                       # scalar, differentiable w.r.t. the new logprobs
    metrics: dict[str, float] = field(default_factory=dict)


def clipped_surrogate(
    logprobs_BT: torch.Tensor,
    old_logprobs_BT: torch.Tensor,
    advantages_B: torch.Tensor,
    mask_BT: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    dual_clip: float | None = None,
    token_count: int | float | None = None,
) -> LossOut:
    """Token-level clipped policy-gradient loss (no KL).

    logprobs_BT      (B, T) logprobs of the sampled tokens under the policy being trained (with grad)
    old_logprobs_BT  (B, T) the same under the policy that generated them (no grad needed)
    advantages_B     (B,)   one advantage per completion, broadcast over its tokens
    mask_BT          (B, T) bool/0-1: which positions are response tokens; the others never touch the
                            loss or its gradient, whatever values (even inf/nan) they hold
    token_count      the denominator: defaults to mask.sum(); a caller that accumulates gradients over
                     micro-batches passes the response-token count of the whole mini-batch, so that the
                     summed micro-batch losses equal the mini-batch loss.

    Per token, with r = exp(logp - old) and A the advantage:
        pg   = -min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A)
        loss = min(pg, -c * A)   if dual_clip = c and A < 0       (dual clip)
        loss = pg                otherwise
    The dual clip is the paper's max(min(rA, clip(r)A), cA) for A < 0, negated: it caps the loss of a
    negative-advantage token at -cA, i.e. zero gradient once r > c. It needs c > 1.

    Metrics (means over the masked tokens of this call, not over token_count):
        learner/clip_frac_high  A > 0 and r > 1 + eps_high (gradient cut by the upper clip)
        learner/clip_frac_low   A < 0 and r < 1 - eps_low  (gradient cut by the lower clip)
        learner/clip_frac_dual  A < 0 and r > c            (only with dual_clip)
        learner/clip_frac       any of the above: the share of tokens whose gradient is zero by clipping
        learner/approx_kl       (r - 1) - log r, the k3 estimator of KL(old || new)
        learner/ratio_mean      r
        learner/adv_mean|std|min|max  over the B completions (population std)
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    if logprobs_BT.shape != old_logprobs_BT.shape or logprobs_BT.shape != mask_BT.shape:
        raise ValueError(f"shape mismatch: logprobs {tuple(logprobs_BT.shape)}, "
                         f"old {tuple(old_logprobs_BT.shape)}, mask {tuple(mask_BT.shape)}")
    if advantages_B.shape != logprobs_BT.shape[:1]:
        raise ValueError(f"advantages must be (B,) = {tuple(logprobs_BT.shape[:1])}, got {tuple(advantages_B.shape)}")

    mask_BT = mask_BT.bool()
    adv_BT = advantages_B.to(logprobs_BT.dtype)[:, None].expand_as(logprobs_BT)
    # Mask before exp: exp of a padding position's garbage could be inf, and inf * 0 is nan in the
    # backward pass even through torch.where.
    log_ratio_BT = torch.where(mask_BT, logprobs_BT - old_logprobs_BT.detach(), 0.0)
    ratio_BT = torch.exp(log_ratio_BT)
    clipped_ratio_BT = ratio_BT.clamp(1.0 - eps_low, 1.0 + eps_high)
    pg_BT = -torch.min(ratio_BT * adv_BT, clipped_ratio_BT * adv_BT)
    if dual_clip is not None:
        pg_BT = torch.where(adv_BT < 0, torch.min(pg_BT, -dual_clip * adv_BT), pg_BT)

    n_tokens = mask_BT.sum()
    denom = n_tokens.clamp(min=1) if token_count is None else token_count
    loss = torch.where(mask_BT, pg_BT, 0.0).sum() / denom

    with torch.no_grad():
        r_BT, a_BT = ratio_BT.detach(), adv_BT.detach()
        high_BT = (a_BT > 0) & (r_BT > 1.0 + eps_high) & mask_BT
        low_BT = (a_BT < 0) & (r_BT < 1.0 - eps_low) & mask_BT
        dual_BT = (a_BT < 0) & (r_BT > dual_clip) & mask_BT if dual_clip is not None else torch.zeros_like(mask_BT)
        tokens = n_tokens.clamp(min=1).float()

        def token_mean(x_BT: torch.Tensor) -> torch.Tensor:
            return torch.where(mask_BT, x_BT.float(), 0.0).sum() / tokens

        adv_B = advantages_B.detach().float()
        names = ["learner/clip_frac", "learner/clip_frac_low", "learner/clip_frac_high", "learner/approx_kl",
                 "learner/ratio_mean", "learner/adv_mean", "learner/adv_std", "learner/adv_max", "learner/adv_min"]
        values = [token_mean(high_BT | low_BT | dual_BT), token_mean(low_BT), token_mean(high_BT),
                  token_mean((r_BT - 1.0) - log_ratio_BT.detach()), token_mean(r_BT),
                  adv_B.mean(), adv_B.std(unbiased=False), adv_B.max(), adv_B.min()]
        if dual_clip is not None:
            names.append("learner/clip_frac_dual")
            values.append(token_mean(dual_BT))
        metrics = dict(zip(names, torch.stack(values).tolist()))   # one device sync for all of them
    return LossOut(loss=loss, metrics=metrics)


@torch.no_grad()
def token_entropy(logits_BTV: torch.Tensor, mask_BT: torch.Tensor) -> float:
    """Mean entropy (nats) of the next-token distributions at the masked positions; no grad.

    The caller divides the logits by the sampling temperature first if it wants the sampled distribution.
    """
    logp_BTV = torch.log_softmax(logits_BTV.float(), dim=-1)
    entropy_BT = -(logp_BTV.exp() * logp_BTV).sum(dim=-1)
    mask_BT = mask_BT.bool()
    return (torch.where(mask_BT, entropy_BT, 0.0).sum() / mask_BT.sum().clamp(min=1)).item()


class WarmupExpDecay:
    """LR multiplier for torch.optim.lr_scheduler.LambdaLR: linear warm-up, exponential decay, floor.

    step < warmup:  (step + 1) / warmup
    otherwise:      max(gamma ** (step - warmup), lr_min / lr0)
    A top-level class, not a closure, so that the scheduler state pickles into DeepSpeed checkpoints.
    """

    def __init__(self, warmup_steps: int, gamma: float, lr0: float, lr_min: float):
        if warmup_steps < 0 or not 0.0 < gamma <= 1.0 or lr0 <= 0.0 or lr_min < 0.0:
            raise ValueError(f"bad LR schedule: warmup_steps={warmup_steps}, gamma={gamma}, lr0={lr0}, lr_min={lr_min}")
        self.warmup_steps = warmup_steps
        self.gamma = gamma
        self.floor = min(lr_min / lr0, 1.0)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return max(self.gamma ** (step - self.warmup_steps), self.floor)

    def __repr__(self) -> str:
        return f"WarmupExpDecay(warmup_steps={self.warmup_steps}, gamma={self.gamma}, floor={self.floor})"


def lr_lambda(warmup_steps: int, gamma: float, lr0: float, lr_min: float) -> Callable[[int], float]:
    """The LambdaLR multiplier for LearnerConfig's warmup_steps, lr_gamma, lr, lr_min (see WarmupExpDecay)."""
    return WarmupExpDecay(warmup_steps, gamma, lr0, lr_min)


def all_finite(*tensors: torch.Tensor | float | None) -> bool:
    """True when every element of every argument is finite; None arguments (params without grad) are skipped."""
    checks = [torch.isfinite(torch.as_tensor(t)).all() for t in tensors if t is not None]
    if not checks:
        return True
    return bool(torch.stack([c.to(checks[0].device) for c in checks]).all().item())
