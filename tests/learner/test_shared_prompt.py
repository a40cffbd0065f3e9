"""The shared-prompt path scores completions exactly like the plain path, on a tiny random Llama.

Tolerances (float32, CPU): logprobs 1e-5 absolute; gradients 1e-4 relative (per-parameter norm of the
difference over the norm of the plain path's gradient); entropy 1e-5.
"""

import pytest
import torch
import transformers

from toolexpander.learner.shared_prompt import completion_logprobs_plain, completion_logprobs_shared

torch.set_num_threads(1)
V = 128
LOGPROB_ATOL = 1e-5
GRAD_RTOL = 1e-4


def tiny_llama(tied: bool = False) -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, max_position_embeddings=256, tie_word_embeddings=tied)
    return transformers.LlamaForCausalLM(cfg).float().eval()


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def group(lengths=(5, 1, 3, 7), prompt_len=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, V, (prompt_len,), generator=g).tolist()
    completions = [torch.randint(0, V, (k,), generator=g).tolist() for k in lengths]
    return prompt, completions


def reference(model, prompt, completions, temperature=1.0):
    """One unpadded forward per completion: (n, Tc_max) logprobs with zeros at padding."""
    tc = max(len(c) for c in completions)
    rows = []
    with torch.no_grad():
        for c in completions:
            logits = model(input_ids=torch.tensor([prompt + c])).logits[0] / temperature   # (P + len, V)
            logp = torch.log_softmax(logits, dim=-1)[len(prompt) - 1: len(prompt) - 1 + len(c)]
            picked = logp.gather(-1, torch.tensor(c)[:, None])[:, 0] if c else torch.zeros(0)
            rows.append(torch.cat([picked, torch.zeros(tc - len(c))]))
    return torch.stack(rows)


def grads(model, logprobs, mask):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad((logprobs * mask).sum(), params)


def assert_grads_close(model, a, b):
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for name, ga, gb in zip(names, a, b):
        rel = ((ga - gb).norm() / ga.norm().clamp(min=1e-12)).item()
        assert rel < GRAD_RTOL, f"{name}: relative gradient difference {rel:.2e}"


@pytest.mark.parametrize("path", [completion_logprobs_plain, completion_logprobs_shared])
def test_both_paths_match_one_forward_per_completion(model, path):
    prompt, completions = group()
    logprobs, mask = path(model, prompt, completions)
    assert logprobs.shape == mask.shape == (4, 7) and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == [5, 1, 3, 7]
    torch.testing.assert_close(logprobs, reference(model, prompt, completions), rtol=0, atol=LOGPROB_ATOL)
    assert (logprobs[~mask] == 0).all()


def test_shared_matches_plain_values_and_gradients(model):
    prompt, completions = group()
    plain, mask_p = completion_logprobs_plain(model, prompt, completions)
    shared, mask_s = completion_logprobs_shared(model, prompt, completions)
    assert torch.equal(mask_p, mask_s)
    torch.testing.assert_close(shared, plain, rtol=0, atol=LOGPROB_ATOL)
    assert_grads_close(model, grads(model, plain, mask_p), grads(model, shared, mask_s))


def test_tied_embeddings():
    model = tiny_llama(tied=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    prompt, completions = group(lengths=(4, 6, 2), seed=2)
    plain, mask = completion_logprobs_plain(model, prompt, completions)
    shared, _ = completion_logprobs_shared(model, prompt, completions)
    torch.testing.assert_close(shared, plain, rtol=0, atol=LOGPROB_ATOL)
    assert_grads_close(model, grads(model, plain, mask), grads(model, shared, mask))


def test_temperature_and_entropy(model):
    prompt, completions = group(lengths=(3, 6), seed=3)
    t = 0.7
    plain, mask, h_plain = completion_logprobs_plain(model, prompt, completions, temperature=t, return_entropy=True)
    shared, _, h_shared = completion_logprobs_shared(model, prompt, completions, temperature=t, return_entropy=True)
    ref = reference(model, prompt, completions, temperature=t)
    torch.testing.assert_close(plain, ref, rtol=0, atol=LOGPROB_ATOL)
    torch.testing.assert_close(shared, ref, rtol=0, atol=LOGPROB_ATOL)
    raw, _ = completion_logprobs_plain(model, prompt, completions)
    assert (plain - raw)[mask].abs().max() > 1e-2          # the temperature really changes the numbers
    # entropy by hand over the 9 scored positions of the two completions
    with torch.no_grad():
        hs = []
        for c in completions:
            logits = model(input_ids=torch.tensor([prompt + c])).logits[0, len(prompt) - 1: len(prompt) - 1 + len(c)]
            logp = torch.log_softmax(logits / t, dim=-1)
            hs.append(-(logp.exp() * logp).sum(-1))
        expected = torch.cat(hs).mean().item()
    assert h_plain == pytest.approx(expected, abs=1e-5)
    assert h_shared == pytest.approx(expected, abs=1e-5)


def test_single_token_and_empty_completions(model):
    prompt, _ = group()
    completions = [[5], [], [7, 9, 11]]
    plain, mask = completion_logprobs_plain(model, prompt, completions)
    shared, _ = completion_logprobs_shared(model, prompt, completions)
    assert mask.tolist() == [[True, False, False], [False, False, False], [True, True, True]]
    torch.testing.assert_close(shared, plain, rtol=0, atol=LOGPROB_ATOL)
    torch.testing.assert_close(plain, reference(model, prompt, completions), rtol=0, atol=LOGPROB_ATOL)
    # only one-token completions: the shared path needs the prompt forward alone
    ones = [[3], [4]]
    torch.testing.assert_close(completion_logprobs_shared(model, prompt, ones)[0],
                               completion_logprobs_plain(model, prompt, ones)[0], rtol=0, atol=LOGPROB_ATOL)


def test_pad_id_does_not_matter(model):
    prompt, completions = group()
    for path in (completion_logprobs_plain, completion_logprobs_shared):
        a, _ = path(model, prompt, completions, pad_id=0)
        b, _ = path(model, prompt, completions, pad_id=77)
        torch.testing.assert_close(a, b, rtol=0, atol=LOGPROB_ATOL)


def test_shared_refuses_gradient_checkpointing_in_train_mode():
    # transformers silently drops the KV cache under gradient checkpointing; scoring completions
    # without their prompt must fail loudly instead
    model = tiny_llama()
    model.gradient_checkpointing_enable()
    model.train()
    prompt, completions = group()
    with pytest.raises(RuntimeError, match="gradient checkpointing"):
        completion_logprobs_shared(model, prompt, completions)
    completion_logprobs_plain(model, prompt, completions)     # the plain path is fine with it


def test_bad_input():
    model = tiny_llama()
    with pytest.raises(ValueError, match="prompt_ids"):
        completion_logprobs_shared(model, [], [[1]])
    with pytest.raises(ValueError, match="temperature"):
        completion_logprobs_plain(model, [1], [[1]], temperature=0.0)


@pytest.mark.parametrize("path", [completion_logprobs_plain, completion_logprobs_shared])
def test_chunked_head_matches_one_chunk_values_gradients_and_entropy(model, path):
    # 16 completion tokens in chunks of 3: six head calls, each recomputed in the backward pass;
    # the same logprobs, gradients and entropy as one chunk, and as the unpadded reference.
    prompt, completions = group()
    whole, mask, ent_whole = path(model, prompt, completions, temperature=0.7, return_entropy=True, chunk_tokens=64)
    parts, mask_c, ent_parts = path(model, prompt, completions, temperature=0.7, return_entropy=True, chunk_tokens=3)
    torch.testing.assert_close(parts, whole, rtol=0, atol=LOGPROB_ATOL)
    torch.testing.assert_close(parts.detach(), reference(model, prompt, completions, temperature=0.7),
                               rtol=0, atol=LOGPROB_ATOL)
    assert ent_parts == pytest.approx(ent_whole, abs=1e-5)
    assert_grads_close(model, grads(model, whole, mask), grads(model, parts, mask_c))


def test_entropy_is_the_mean_over_completion_tokens_only(model):
    prompt, completions = group(lengths=(2, 1))
    _, mask, ent = completion_logprobs_plain(model, prompt, completions, return_entropy=True)
    with torch.no_grad():  # by hand: the distributions that score each completion token, no padding
        expected = []
        for c in completions:
            logits = model(input_ids=torch.tensor([prompt + c])).logits[0]
            logp = torch.log_softmax(logits, dim=-1)[len(prompt) - 1: len(prompt) - 1 + len(c)]
            expected += (-(logp.exp() * logp).sum(-1)).tolist()
    assert ent == pytest.approx(sum(expected) / len(expected), abs=1e-5)
