"""The DeepSpeed learner on the CPU accelerator over gloo, in real Ray actors, on the tiny model."""

import numpy as np
import pyarrow as pa
import pytest
import ray
import torch
from safetensors.torch import load_file

from toolexpander.actors.group import LearnerGroup
from toolexpander.config import Config
from toolexpander.types import REWARD_DIMS, ROLLOUT_SCHEMA


def make_cfg(model, **learner):
    # The fake batches' behaviour logprobs (-1) are not the model's: no behaviour correction (it would
    # weight every token by about e^-7) unless a test asks for it.
    base = {"lr": 1e-3, "ppo_epochs": 1, "mini_batches": 1, "zero_stage": 0, "cpus_per_rank": 1, "is_cap": None}
    return Config.model_validate({"model": {"path": str(model), "prepare": None},
                                  "learner": {**base, **learner}})


def batch(seed=0, groups=2, n=4, prompt_len=12, completion_len=6, nan=False):
    """A fixed batch of scored groups with random tokens and mixed rewards."""
    rng = np.random.default_rng(seed)
    rows = {f.name: [] for f in ROLLOUT_SCHEMA}
    for g in range(groups):
        prompt = rng.integers(10, 2000, prompt_len).tolist()
        for i in range(n):
            length = int(rng.integers(2, completion_len + 1))
            reward = float("nan") if nan else float(i % 2)
            values = dict(group_id=g, task_id=f"t{g}", subtask="single", demo_round=0, num_demos=0, policy_version=0,
                          prompt_ids=prompt, completion_ids=rng.integers(10, 2000, length).tolist(),
                          logprobs=[-1.0] * length, finish_reason="stop", text="",
                          reward_total=reward, **{f"reward_{d}": 0.0 for d in REWARD_DIMS})
            for k, v in values.items():
                rows[k].append(v)
    return pa.Table.from_pydict(rows, schema=ROLLOUT_SCHEMA)


@pytest.mark.parametrize("stage", [0, 2])
def test_surrogate_falls_within_a_batch(ray_local, tiny_model, stage):
    group = LearnerGroup(make_cfg(tiny_model, zero_stage=stage, ppo_epochs=4), str(tiny_model), pad_id=2)
    try:
        m = group.step(batch(), 0)
        assert m["learner/skipped"] == 0 and m["learner/updates"] == 4
        assert m["learner/loss_last_update"] < m["learner/loss_first_update"] - 1e-3
        assert np.isfinite(m["learner/grad_norm"]) and m["learner/grad_norm"] > 0
        assert m["rollout/logprob_gap"] > 0  # the fake rollout logprobs (-1) are not the model's
    finally:
        group.shutdown()


def test_one_update_uses_its_own_logprobs_as_the_old_ones(ray_local, tiny_model):
    # ppo_epochs=1 skips the no-grad pass: its update must equal the first update of a learner that
    # recomputes pi_old first (ppo_epochs=2), and it must report the same vLLM-vs-learner gap.
    one = LearnerGroup(make_cfg(tiny_model), str(tiny_model), pad_id=2)
    two = LearnerGroup(make_cfg(tiny_model, ppo_epochs=2), str(tiny_model), pad_id=2)
    try:
        a = one.step(batch(3, groups=1), 0)
        b = two.step(batch(3, groups=1), 0)
    finally:
        one.shutdown()
        two.shutdown()
    assert a["learner/updates"] == 1 and b["learner/updates"] == 2
    assert a["learner/loss"] == pytest.approx(b["learner/loss_first_update"], abs=1e-7)
    assert a["rollout/logprob_gap"] == pytest.approx(b["rollout/logprob_gap"], rel=1e-6)
    assert a["learner/clip_frac"] == 0.0


def checkpoint_round_trip(cfg, model, directory) -> tuple[dict, dict]:
    """One step, save, the next step; then a new learner loads the checkpoint and takes that next step.
    Returns (the first learner's metrics of that step, the loaded learner's)."""
    a = LearnerGroup(cfg, str(model), pad_id=2)
    try:
        a.step(batch(1), 1)
        a.call("save", str(directory), {"step": 1})
        expected = a.step(batch(2), 2)
    finally:
        a.shutdown()
    b = LearnerGroup(cfg, str(model), pad_id=2)
    try:
        client = b.call("load", str(directory))[0]
        assert client["step"] == 1 and client["updates"] == 1
        got = b.step(batch(2), 2)
    finally:
        b.shutdown()
    return expected, got


def test_checkpoint_round_trip_continues_identically(ray_local, tiny_model, tmp_path):
    expected, got = checkpoint_round_trip(make_cfg(tiny_model, lr_gamma=0.5, warmup_steps=1), tiny_model,
                                          tmp_path / "ckpt")
    assert got["learner/loss"] == expected["learner/loss"]
    assert got["learner/lr"] == expected["learner/lr"]
    assert got["learner/grad_norm"] == expected["learner/grad_norm"]


def test_two_ranks_stay_identical(ray_local, tiny_model):
    group = LearnerGroup(make_cfg(tiny_model, world_size=2, zero_stage=2), str(tiny_model), pad_id=2)
    try:
        before = group.call("param_digest")
        group.step(batch(3, groups=3), 3)
        after = group.call("param_digest")
        assert after[0] == after[1] and after[0] != before[0]
    finally:
        group.shutdown()


def test_nonfinite_update_is_skipped_and_counted(ray_local, tiny_model):
    group = LearnerGroup(make_cfg(tiny_model), str(tiny_model), pad_id=2)
    try:
        before = group.call("param_digest")[0]
        m = group.step(batch(4, nan=True), 4)
        assert m["learner/skipped"] == 1 and m["learner/nonfinite"] == 1.0
        assert group.call("nonfinite_streak")[0] == 1
        assert group.call("param_digest")[0] == before
        group.step(batch(5), 5)
        assert group.call("nonfinite_streak")[0] == 0
    finally:
        group.shutdown()


@pytest.mark.parametrize("stage,max_tokens", [(0, None), (2, 20)])
def test_two_ranks_take_the_update_of_one(ray_local, tiny_model, stage, max_tokens):
    # 3 groups of unequal lengths, dealt by tokens: one rank gets two, the other one and a padding copy.
    # The loss is the mean over every completion token of the batch, whichever rank holds it, so
    # the gradient (its norm before clipping), the loss and the update equal one rank's. The ZeRO-2
    # case adds a 20-token micro-batch budget (12-token prompts, completions of 2-9 tokens): the groups
    # split into different numbers of parts on the two ranks, which filler parts pair up; the update
    # is still one unsplit rank's.
    table = batch(6, groups=3, completion_len=9)
    one = LearnerGroup(make_cfg(tiny_model), str(tiny_model), pad_id=2)
    try:
        a = one.step(table, 0, 0)
        weights_a = dict(ray.get(one.weights_ref()))
    finally:
        one.shutdown()
    two = LearnerGroup(make_cfg(tiny_model, world_size=2, zero_stage=stage, max_tokens_per_micro_batch=max_tokens),
                       str(tiny_model), pad_id=2)
    try:
        b = two.step(table, 0, 0)
        weights_b = dict(ray.get(two.weights_ref()))
    finally:
        two.shutdown()
    assert a["learner/applied"] == b["learner/applied"] == 1
    assert b["learner/grad_norm"] == pytest.approx(a["learner/grad_norm"], rel=1e-4)
    assert b["learner/loss"] == pytest.approx(a["learner/loss"], rel=1e-4, abs=1e-7)
    assert b["learner/entropy"] == pytest.approx(a["learner/entropy"], rel=1e-5)
    assert b["rollout/logprob_gap"] == pytest.approx(a["rollout/logprob_gap"], rel=1e-5)
    # Adam's first step is lr * g / (|g| + eps): lr * sign(g) wherever |g| >> eps, so the same gradient
    # gives the same update there. Where |g| is within eps of 0 (a step below lr / 2: mostly embedding rows
    # of tokens the batch lacks, g = 0) the ranks' fp32 summation order can decide it (2026-12-06, a Xeon
    # with AMX: one v_proj element moved 0.29 lr on one rank, 0.38 lr on two), so those are held to lr only.
    lr = a["learner/lr"]
    start = {k: v.float().numpy() for k, v in load_file(str(tiny_model / "model.safetensors")).items()}
    assert weights_a.keys() == start.keys()
    worst, near_zero, total = 0.0, 0, 0
    for k in weights_a:
        diff = np.abs(weights_a[k] - weights_b[k])
        full_step = np.abs(weights_a[k] - start[k]) >= 0.5 * lr
        worst = max(worst, float(diff[full_step].max(initial=0.0)))
        assert float(diff.max()) < lr, k
        near_zero, total = near_zero + int((~full_step).sum()), total + diff.size
    assert worst < 0.05 * lr, (worst, near_zero, total)


def test_lr_decays_once_per_training_step(ray_local, tiny_model):
    # Two mini-batches make two optimizer updates per step; the decay counts steps, not updates.
    cfg = make_cfg(tiny_model, mini_batches=2, lr_gamma=0.5, warmup_steps=0, lr_min=0.0)
    group = LearnerGroup(cfg, str(tiny_model), pad_id=2)
    try:
        first = group.step(batch(7), 0, 0)
        second = group.step(batch(8), 1, 1)
        assert first["learner/applied"] == second["learner/applied"] == 2
        assert first["learner/lr"] == pytest.approx(1e-3)
        assert second["learner/lr"] == pytest.approx(0.5e-3)
        again = group.step(batch(8), 1, 5)  # the driver's step decides, not a counter
        assert again["learner/lr"] == pytest.approx(1e-3 * 0.5 ** 5)
        assert "learner/ref_kl" not in again   # kl_coef 0 (the default): no reference model, no term
    finally:
        group.shutdown()


def test_kl_to_the_starting_model_is_zero_until_the_policy_moves(ray_local, tiny_model):
    # learner.kl_coef: a frozen copy of the starting model; k3 and its gradient vanish where the policy
    # equals it (the first update), and grow once the weights have moved (lr 1e-3: far, on purpose).
    group = LearnerGroup(make_cfg(tiny_model, kl_coef=0.5), str(tiny_model), pad_id=2)
    try:
        first = group.step(batch(9), 0, 0)
        second = group.step(batch(9), 1, 1)
        assert first["learner/applied"] == second["learner/applied"] == 1
        assert first["learner/ref_kl"] == pytest.approx(0.0, abs=1e-9)
        assert second["learner/ref_kl"] > 1e-4
    finally:
        group.shutdown()


def with_own_logprobs(table: pa.Table, model_dir) -> pa.Table:
    """The batch with its behaviour logprobs replaced by the model's own (fp32 transformers)."""
    from transformers import AutoModelForCausalLM

    from toolexpander.learner.shared_prompt import completion_logprobs_plain

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    rows = table.to_pylist()
    with torch.no_grad():
        for row in rows:
            lp, _ = completion_logprobs_plain(model, row["prompt_ids"], [row["completion_ids"]], pad_id=2)
            row["logprobs"] = lp[0].tolist()
    return pa.Table.from_pylist(rows, schema=ROLLOUT_SCHEMA)


def test_behaviour_correction_weights_the_update(ray_local, tiny_model):
    # Behaviour logprobs equal to the learner's: weight 1, no mismatch, the update of no correction.
    # The fake ones (-1, far above the tiny model's ~ -7.6): weights ~ e^-6.6, a large mismatch, a
    # gradient hundreds of times smaller; without correction the mismatch is still measured.
    fake = batch(9)
    own = with_own_logprobs(fake, tiny_model)
    out = {}
    for name, cap, table in [("own", 2.0, own), ("own_off", None, own), ("fake", 2.0, fake), ("fake_off", None, fake)]:
        group = LearnerGroup(make_cfg(tiny_model, is_cap=cap), str(tiny_model), pad_id=2)
        try:
            out[name] = group.step(table, 0, 0)
        finally:
            group.shutdown()
    assert out["own"]["rollout/mismatch_k3_kl"] < 1e-8 and out["own"]["rollout/logprob_gap"] < 1e-4
    assert out["own"]["learner/is_weight_mean"] == pytest.approx(1.0, abs=1e-4)
    assert out["own"]["learner/grad_norm"] == pytest.approx(out["own_off"]["learner/grad_norm"], rel=1e-4)
    assert out["fake"]["rollout/mismatch_k3_kl"] > 1.0
    assert out["fake"]["rollout/mismatch_k3_kl"] == pytest.approx(out["fake_off"]["rollout/mismatch_k3_kl"], rel=1e-6)
    assert out["fake"]["learner/is_weight_mean"] < 0.01 and out["fake_off"]["learner/is_weight_mean"] == 1.0
    assert out["fake"]["learner/grad_norm"] < 0.01 * out["fake_off"]["learner/grad_norm"]
    assert all(m["learner/is_nonfinite"] == 0.0 and m["learner/is_clip_frac"] == 0.0 for m in out.values())


def test_bf16_computes_in_bf16_and_keeps_float32_master_weights(ray_local, tiny_model):
    # model.dtype bfloat16: autocast forward/backward (logprobs differ from float32's by bf16 rounding),
    # float32 master weights and optimizer (the update is applied in float32), bf16 on the wire.
    table = with_own_logprobs(batch(10), tiny_model)
    out, weights = {}, {}
    for dtype in ("float32", "bfloat16"):
        cfg = make_cfg(tiny_model, is_cap=2.0)
        cfg.model.dtype = dtype
        group = LearnerGroup(cfg, str(tiny_model), pad_id=2)
        try:
            out[dtype] = group.step(table, 0, 0)
            first = group.weights_ref()
            master = {k: np.array(v) for k, v in ray.get(group.ranks[0].named_weights.remote("float32"))}
            if dtype == "bfloat16":  # a second step and push reuse the conversion buffers...
                group.step(table, 1, 1)
                second = dict(ray.get(group.weights_ref()))
            weights[dtype] = dict(ray.get(first))
        finally:
            group.shutdown()
    # ...without touching what the first push put in the object store
    assert any(np.any(second[k] != weights["bfloat16"][k]) for k in second)
    fp32, bf16 = out["float32"], out["bfloat16"]
    assert bf16["learner/applied"] == 1 and np.isfinite(bf16["learner/grad_norm"])
    assert fp32["rollout/logprob_gap"] < 1e-4 < bf16["rollout/logprob_gap"] < 0.2
    assert 0 < bf16["rollout/mismatch_k3_kl"] < 0.05
    assert bf16["learner/grad_norm"] == pytest.approx(fp32["learner/grad_norm"], rel=0.1)
    name = next(iter(weights["bfloat16"]))
    assert weights["float32"][name].dtype == np.float32 and weights["bfloat16"][name].dtype == np.int16
    assert master[name].dtype == np.float32
    for k, wire in weights["bfloat16"].items():  # the wire holds the master weights rounded to bf16
        torch.testing.assert_close(torch.from_numpy(np.array(wire)).view(torch.bfloat16),
                                   torch.from_numpy(master[k]).to(torch.bfloat16), rtol=0, atol=0)
    # and the master weights are not bf16 values in float32 clothing
    rounded = torch.from_numpy(master[name]).to(torch.bfloat16).float().numpy()
    assert np.abs(master[name] - rounded).max() > 0


def test_float32_head_ignores_bf16_autocast():
    from toolexpander.learner.learner import _float32_head

    torch.manual_seed(0)
    head, hidden = torch.nn.Linear(16, 32, bias=False), torch.randn(3, 16)
    exact = hidden @ head.weight.T
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head(hidden).dtype == torch.bfloat16       # what autocast does to a plain head
        _float32_head(head, "cpu")
        out = head(hidden.to(torch.bfloat16))              # a bf16 hidden state, as the last norm gives
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, hidden.to(torch.bfloat16).float() @ head.weight.T, rtol=0, atol=1e-6)
    assert (out - exact).abs().max() > 0                   # only the input carries bf16 rounding


def test_logit_chunk_is_a_memory_budget():
    from toolexpander.learner.learner import logit_chunk_tokens

    assert logit_chunk_tokens(256, 49152) == 1365        # SmolLM2: 256 MiB of float32 logits
    assert logit_chunk_tokens(256, 151936) == 441        # Qwen2.5
    assert logit_chunk_tokens(1, 10**7) == 16            # never fewer than 16 positions


def test_auto_attention_on_cpu_switches_to_sdpa_for_long_groups(ray_local, tiny_model):
    # attn_implementation auto, eager_max_tokens 20: the 8-token prompt's group (<= 14 tokens) runs
    # eager, the 40-token one sdpa; the update is the all-eager learner's up to kernel rounding.
    short, long_ = batch(1, groups=1, prompt_len=8), batch(2, groups=1, prompt_len=40)
    long_ = long_.set_column(0, "group_id", pa.array([1] * long_.num_rows, pa.int64()))
    both = pa.concat_tables([short, long_])
    auto = LearnerGroup(make_cfg(tiny_model, eager_max_tokens=20), str(tiny_model), pad_id=2)
    eager = LearnerGroup(make_cfg(tiny_model, attn_implementation="eager"), str(tiny_model), pad_id=2)
    attention = lambda group: ray.get(group.ranks[0].__ray_call__.remote(  # noqa: E731
        lambda learner: learner.engine.module.config._attn_implementation))
    try:
        assert attention(auto) == "eager"
        a = auto.step(both, 0)
        assert attention(auto) == "sdpa"                 # the last group scored was the long one
        auto.step(short, 0)
        assert attention(auto) == "eager"
        b = eager.step(both, 0)
        assert attention(eager) == "eager"
    finally:
        auto.shutdown()
        eager.shutdown()
    assert a["learner/loss"] == pytest.approx(b["learner/loss"], rel=1e-4, abs=1e-6)
    assert a["learner/grad_norm"] == pytest.approx(b["learner/grad_norm"], rel=1e-4)


def test_a_group_splits_into_consecutive_parts_within_the_token_budget():
    from toolexpander.learner.groups import Group

    # prompt 4 tokens, completions of 3, 2, 5, 1 tokens; budget 9: [3, 2] (4 + 5 = 9), [5] (9), [1].
    # A completion longer than the budget still gets a part of its own.
    g = Group([1, 2, 3, 4], [[5] * 3, [6] * 2, [7] * 5, [8]], [[-0.1] * 3, [-0.2] * 2, [-0.3] * 5, [-0.4]],
              np.array([1.0, 0.0, 1.0, 0.0], np.float32), advantages_n=torch.tensor([1.0, -1.0, 1.0, -1.0]),
              old_logprobs_nT=torch.arange(20, dtype=torch.float32).reshape(4, 5))
    parts = g.split(9)
    assert [p.completions for p in parts] == [[[5] * 3, [6] * 2], [[7] * 5], [[8]]]
    assert [p.advantages_n.tolist() for p in parts] == [[1.0, -1.0], [1.0], [-1.0]]
    assert parts[0].old_logprobs_nT.tolist() == [[0, 1, 2], [5, 6, 7]]          # rows 0-1, width 3
    assert parts[2].old_logprobs_nT.tolist() == [[15]]
    assert [p.tokens for p in parts] == [5, 5, 1] and sum(p.tokens for p in parts) == g.tokens
    assert g.split(None) == [g] and len(g.split(1)) == 4
    filler = g.filler()
    assert filler.padding and filler.tokens == 0 and filler.completions == [[5]]
