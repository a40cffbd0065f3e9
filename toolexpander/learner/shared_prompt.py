"""Per-token logprobs of a GRPO group's n completions under a causal LM, with or without sharing the prompt.

In: a model, one prompt's token ids and its n completions' token ids. Out: (n, Tc) logprobs and mask.
The shared path forwards the prompt once and reuses its key/value cache for all n completions, so the
cost is prompt + n x completion tokens instead of n x (prompt + completion); gradients flow through
the shared cache into the prompt's forward. Both paths return the same numbers (tests/learner).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from toolexpander.learner.grpo import token_entropy

Result = tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, float]


def _device(model) -> torch.device:
    device = getattr(model, "device", None)
    return torch.device(device) if device is not None else next(model.parameters()).device


def _pad(completions: list[list[int]], length: int, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to `length` -> ids (n, length) long, mask (n, length) bool."""
    ids_nT = torch.full((len(completions), length), pad_id, dtype=torch.long)
    mask_nT = torch.zeros((len(completions), length), dtype=torch.bool)
    for i, c in enumerate(completions):
        ids_nT[i, : len(c)] = torch.tensor(c, dtype=torch.long)
        mask_nT[i, : len(c)] = True
    return ids_nT.to(device), mask_nT.to(device)


def _check(prompt_ids: list[int], completions: list[list[int]], temperature: float) -> int:
    if not prompt_ids:
        raise ValueError("prompt_ids is empty: the first completion token needs a prompt position to be scored from")
    if not completions:
        raise ValueError("no completions")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return max(len(c) for c in completions)


def _gather(logits_nTV: torch.Tensor, targets_nT: torch.Tensor, mask_nT: torch.Tensor,
            temperature: float, return_entropy: bool) -> Result:
    """logits (n, Tc, V) whose position t predicts targets[:, t] -> logprobs (n, Tc) (0 at padding), mask."""
    logits_nTV = logits_nTV.float() / temperature
    # gather - logsumexp: log_softmax without a second (n, Tc, V) tensor
    logprobs_nT = logits_nTV.gather(-1, targets_nT.unsqueeze(-1)).squeeze(-1) - logits_nTV.logsumexp(dim=-1)
    logprobs_nT = torch.where(mask_nT, logprobs_nT, 0.0)
    if return_entropy:
        return logprobs_nT, mask_nT, token_entropy(logits_nTV, mask_nT)
    return logprobs_nT, mask_nT


def completion_logprobs_plain(model, prompt_ids: list[int], completions: list[list[int]], temperature: float = 1.0,
                              pad_id: int = 0, return_entropy: bool = False) -> Result:
    """One forward over n rows of prompt + completion (right-padded).

    Returns logprobs (n, Tc_max) float32 of log softmax(logits / temperature) at each completion token
    (0 at padding), mask (n, Tc_max) bool, and with return_entropy the mean entropy over the mask.
    """
    tc = _check(prompt_ids, completions, temperature)
    device = _device(model)
    n, p = len(completions), len(prompt_ids)
    targets_nT, mask_nT = _pad(completions, tc, pad_id, device)
    if tc == 0:
        return _gather(torch.zeros(n, 0, 1, device=device), targets_nT, mask_nT, temperature, return_entropy)
    prompt_nP = torch.tensor(prompt_ids, dtype=torch.long, device=device).expand(n, p)
    # The last completion token is never an input: position p - 1 + t predicts completion token t.
    input_ids = torch.cat([prompt_nP, targets_nT[:, : tc - 1]], dim=1)                    # (n, p + tc - 1)
    attention_mask = torch.cat([torch.ones_like(prompt_nP), mask_nT[:, : tc - 1].long()], dim=1)
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=tc)
    return _gather(out.logits, targets_nT, mask_nT, temperature, return_entropy)


def _expand_cache(cache, n: int, prompt_len: int):
    """Broadcast a batch-1 prompt cache to batch n, in place: each layer's keys/values become
    .expand(n, ...) views (no copy; the completion forward's torch.cat materialises them once, and its
    backward sums the n gradients back into the prompt's keys/values).

    The layers are edited in place rather than rebuilt, so each keeps its own type and bookkeeping
    (a sliding-window layer's cumulative_length). Only key/value layers (DynamicLayer and subclasses)
    are supported; linear-attention states would need expanding too.
    """
    if not isinstance(cache, DynamicCache) or cache.get_seq_length() != prompt_len:
        raise RuntimeError(
            f"the prompt forward returned no usable KV cache ({type(cache).__name__}); the shared-prompt path "
            "needs use_cache=True to take effect (gradient checkpointing in train mode turns it off)")
    for layer in cache.layers:
        if not isinstance(layer, DynamicLayer):
            raise NotImplementedError(f"shared prompt: cache layer {type(layer).__name__} is not supported")
        layer.keys = layer.keys.expand(n, -1, -1, -1)
        layer.values = layer.values.expand(n, -1, -1, -1)
    return cache


def completion_logprobs_shared(model, prompt_ids: list[int], completions: list[list[int]], temperature: float = 1.0,
                               pad_id: int = 0, return_entropy: bool = False) -> Result:
    """Like completion_logprobs_plain, but the prompt is forwarded once (batch 1) and its KV cache is
    shared by the n completions. Not usable with gradient checkpointing in train mode (transformers
    drops the cache there): that raises rather than silently scoring completions without their prompt.
    """
    tc = _check(prompt_ids, completions, temperature)
    module = getattr(model, "module", model)                         # a DeepSpeed engine wraps the model
    if module.training and getattr(module, "is_gradient_checkpointing", False):
        raise RuntimeError("completion_logprobs_shared needs gradient checkpointing off (it drops the KV cache); "
                           "use completion_logprobs_plain or set learner.share_prompt false")
    device = _device(model)
    n, p = len(completions), len(prompt_ids)
    targets_nT, mask_nT = _pad(completions, tc, pad_id, device)
    if tc == 0:
        return _gather(torch.zeros(n, 0, 1, device=device), targets_nT, mask_nT, temperature, return_entropy)

    # 1. The prompt, once. Only its last position's logits are needed: they score completion token 0.
    prompt_1P = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    out = model(input_ids=prompt_1P, use_cache=True, logits_to_keep=1)
    first_n1V = out.logits.expand(n, -1, -1)                                                # (n, 1, V)
    if tc == 1:
        return _gather(first_n1V, targets_nT, mask_nT, temperature, return_entropy)

    # 2. The n completions (all but their last token) on top of the shared cache.
    cache = _expand_cache(out.past_key_values, n, p)
    inputs_nT = targets_nT[:, : tc - 1]                                                     # (n, tc - 1)
    attention_mask = torch.cat([torch.ones(n, p, dtype=torch.long, device=device), mask_nT[:, : tc - 1].long()], dim=1)
    position_ids = (p + torch.arange(tc - 1, device=device)).expand(n, -1)
    out = model(input_ids=inputs_nT, attention_mask=attention_mask, position_ids=position_ids,
                past_key_values=cache, use_cache=True)
    if cache.get_seq_length() != p + tc - 1:
        raise RuntimeError(f"the completion forward did not extend the shared cache "
                           f"(length {cache.get_seq_length()}, expected {p + tc - 1})")
    logits_nTV = torch.cat([first_n1V, out.logits], dim=1)                                 # (n, tc, V)
    return _gather(logits_nTV, targets_nT, mask_nT, temperature, return_entropy)
