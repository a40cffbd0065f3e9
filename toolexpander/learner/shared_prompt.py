"""Per-token logprobs of a GRPO group's n completions under a causal LM, with or without sharing the prompt.

In: a model, one prompt's token ids and its n completions' token ids. Out: (n, Tc) logprobs and mask.
The shared path forwards the prompt once and reuses its key/value cache for all n completions, so the
cost is prompt + n x completion tokens instead of n x (prompt + completion); gradients flow through
the shared cache into the prompt's forward. Both paths return the same numbers (tests/learner).

The LM head runs only on the completion tokens (not on padding), in chunks of at most `chunk_tokens`
positions: no (n, Tc, vocab) logits tensor exists, only a (chunk, vocab) one at a time. With more than
one chunk each is recomputed in the backward pass (activation checkpointing), so the peak holds one
chunk's logits, whatever the group's size (a 152k-vocabulary model at n=16 x 1024 tokens would
otherwise hold 9 GiB of float32 logits, twice).
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint
from transformers.cache_utils import DynamicCache, DynamicLayer

from toolexpander.learner.grpo import entropy

Result = tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, float]
CHUNK_TOKENS = 2048


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


def _parts(model):
    """(decoder, LM head) of a causal LM, or of the model a DeepSpeed engine wraps."""
    module = getattr(model, "module", model)
    return module.get_decoder(), module.get_output_embeddings()


def _head_chunk(head, hidden_CH: torch.Tensor, targets_C: torch.Tensor, temperature: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """C positions' hidden states -> (log pi of each target token (C,), entropy of each distribution (C,),
    no grad), at log softmax(logits / temperature) in float32."""
    logits_CV = head(hidden_CH).float() / temperature
    # gather - logsumexp: log_softmax without a second (C, V) tensor
    logprobs_C = logits_CV.gather(-1, targets_C.unsqueeze(-1)).squeeze(-1) - logits_CV.logsumexp(dim=-1)
    return logprobs_C, entropy(logits_CV.detach())


def _gather(head, hidden_nTH: torch.Tensor, targets_nT: torch.Tensor, mask_nT: torch.Tensor,
            temperature: float, return_entropy: bool, chunk_tokens: int | None = None) -> Result:
    """hidden (n, Tc, H) whose position t predicts targets[:, t] -> logprobs (n, Tc) (0 at padding),
    mask, and with return_entropy the mean entropy (nats) over the mask. The head sees only the masked
    positions, `chunk_tokens` at a time (see the module docstring)."""
    chunk = chunk_tokens or CHUNK_TOKENS
    n, tc = mask_nT.shape
    rows = mask_nT.reshape(-1).nonzero().squeeze(-1)                       # (K,) completion positions
    hidden_KH = hidden_nTH.reshape(n * tc, -1).index_select(0, rows)
    targets_K = targets_nT.reshape(-1).index_select(0, rows)
    recompute = torch.is_grad_enabled() and len(rows) > chunk
    logprobs, entropies = [], []
    for start in range(0, len(rows), chunk):
        args = (head, hidden_KH[start:start + chunk], targets_K[start:start + chunk], temperature)
        lp, ent = checkpoint(_head_chunk, *args, use_reentrant=False) if recompute else _head_chunk(*args)
        logprobs.append(lp)
        entropies.append(ent)
    flat = hidden_nTH.new_zeros(n * tc, dtype=torch.float32)
    if logprobs:
        flat = flat.index_put((rows,), torch.cat(logprobs))
    logprobs_nT = flat.reshape(n, tc)
    if return_entropy:
        entropy = float(torch.cat(entropies).mean()) if entropies else 0.0
        return logprobs_nT, mask_nT, entropy
    return logprobs_nT, mask_nT


def completion_logprobs_plain(model, prompt_ids: list[int], completions: list[list[int]], temperature: float = 1.0,
                              pad_id: int = 0, return_entropy: bool = False, chunk_tokens: int | None = None) -> Result:
    """One forward over n rows of prompt + completion (right-padded).

    Returns logprobs (n, Tc_max) float32 of log softmax(logits / temperature) at each completion token
    (0 at padding), mask (n, Tc_max) bool, and with return_entropy the mean entropy over the mask.
    chunk_tokens: the most positions the LM head scores at once (default CHUNK_TOKENS).
    """
    tc = _check(prompt_ids, completions, temperature)
    decoder, head = _parts(model)
    device = _device(model)
    n, p = len(completions), len(prompt_ids)
    targets_nT, mask_nT = _pad(completions, tc, pad_id, device)
    if tc == 0:
        return _gather(head, torch.zeros(n, 0, 1, device=device), targets_nT, mask_nT, temperature, return_entropy)
    prompt_nP = torch.tensor(prompt_ids, dtype=torch.long, device=device).expand(n, p)
    # The last completion token is never an input: position p - 1 + t predicts completion token t.
    input_ids = torch.cat([prompt_nP, targets_nT[:, : tc - 1]], dim=1)                    # (n, p + tc - 1)
    attention_mask = torch.cat([torch.ones_like(prompt_nP), mask_nT[:, : tc - 1].long()], dim=1)
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return _gather(head, hidden[:, -tc:], targets_nT, mask_nT, temperature, return_entropy, chunk_tokens)


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
                               pad_id: int = 0, return_entropy: bool = False, chunk_tokens: int | None = None) -> Result:
    """Like completion_logprobs_plain, but the prompt is forwarded once (batch 1) and its KV cache is
    shared by the n completions. Not usable with gradient checkpointing in train mode (transformers
    drops the cache there): that raises rather than silently scoring completions without their prompt.
    """
    tc = _check(prompt_ids, completions, temperature)
    module = getattr(model, "module", model)                         # a DeepSpeed engine wraps the model
    if module.training and getattr(module, "is_gradient_checkpointing", False):
        raise RuntimeError("completion_logprobs_shared needs gradient checkpointing off (it drops the KV cache); "
                           "use completion_logprobs_plain or set learner.share_prompt false")
    decoder, head = _parts(model)
    device = _device(model)
    n, p = len(completions), len(prompt_ids)
    targets_nT, mask_nT = _pad(completions, tc, pad_id, device)
    if tc == 0:
        return _gather(head, torch.zeros(n, 0, 1, device=device), targets_nT, mask_nT, temperature, return_entropy)

    # 1. The prompt, once. Only its last position's hidden state is scored: it predicts completion token 0.
    prompt_1P = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    out = decoder(input_ids=prompt_1P, use_cache=True)
    first_n1H = out.last_hidden_state[:, -1:].expand(n, -1, -1)                            # (n, 1, H)
    if tc == 1:
        return _gather(head, first_n1H, targets_nT, mask_nT, temperature, return_entropy, chunk_tokens)

    # 2. The n completions (all but their last token) on top of the shared cache.
    cache = _expand_cache(out.past_key_values, n, p)
    inputs_nT = targets_nT[:, : tc - 1]                                                     # (n, tc - 1)
    attention_mask = torch.cat([torch.ones(n, p, dtype=torch.long, device=device), mask_nT[:, : tc - 1].long()], dim=1)
    position_ids = (p + torch.arange(tc - 1, device=device)).expand(n, -1)
    out = decoder(input_ids=inputs_nT, attention_mask=attention_mask, position_ids=position_ids,
                  past_key_values=cache, use_cache=True)
    if cache.get_seq_length() != p + tc - 1:
        raise RuntimeError(f"the completion forward did not extend the shared cache "
                           f"(length {cache.get_seq_length()}, expected {p + tc - 1})")
    hidden_nTH = torch.cat([first_n1H, out.last_hidden_state], dim=1)                      # (n, tc, H)
    return _gather(head, hidden_nTH, targets_nT, mask_nT, temperature, return_entropy, chunk_tokens)
