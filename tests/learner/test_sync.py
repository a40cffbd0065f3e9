"""Weight push learner -> rollout workers: bucket planning (exact) and real pushes over gloo and the
object store, checked against what the learner's own transformers model generates."""

import pytest
import torch

from toolexpander.learner.sync import plan_buckets


def test_plan_buckets_exact():
    meta = [("a", (2, 2)), ("b", (4,)), ("c", (10,)), ("d", (1,)), ("e", (3,))]  # 16, 16, 40, 4, 12 bytes
    assert plan_buckets(meta, 32) == [[0, 1], [2], [3, 4]]
    assert plan_buckets(meta, 1 << 20) == [[0, 1, 2, 3, 4]]
    assert plan_buckets(meta, 1) == [[0], [1], [2], [3], [4]]


def teacher_forced(model, row) -> torch.Tensor:
    ids = torch.tensor([row["prompt_ids"] + row["completion_ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    return logp.gather(-1, ids[0, 1:, None])[:, 0][-len(row["completion_ids"]):]


# ZeRO-2 keeps parameters as views into flat buffers: the object store push must carry each one alone.
# bfloat16: the engine and the wire in bf16, the learner's master weights in float32 (rounded on send).
@pytest.mark.parametrize("mode,stage,dtype", [("gloo", 0, "float32"), ("object_store", 0, "float32"),
                                              ("object_store", 2, "float32"), ("gloo", 0, "bfloat16")])
def test_push_makes_workers_generate_what_the_learner_predicts(ray_local, tiny_model, train_tasks, tmp_path,
                                                               mode, stage, dtype):
    from transformers import AutoModelForCausalLM

    from toolexpander.actors.group import LearnerGroup, RolloutGroup, WeightSync
    from toolexpander.config import Config
    from toolexpander.types import PromptRequest
    from tests.learner.test_learner import batch

    cfg = Config.model_validate({
        "model": {"path": str(tiny_model), "prepare": None, "dtype": dtype},
        "rollout": {"num_workers": 2, "n": 2, "max_tokens": 8, "max_model_len": 2048},
        # is_cap None: the fake batch's behaviour logprobs are not the model's (test_learner.make_cfg)
        "learner": {"lr": 1e-3, "weight_sync": mode, "weight_sync_bucket_mb": 1, "zero_stage": stage,
                    "is_cap": None},
    })
    learner = LearnerGroup(cfg, str(tiny_model), pad_id=2)
    rollout = RolloutGroup(cfg, str(tiny_model))
    try:
        sync = WeightSync(learner, rollout, cfg)
        task = next(t for t in train_tasks if t.subtask == "single" and len(str(t.tools)) < 800)
        reqs = [PromptRequest(task=task, demo_round=0, group_id=i) for i in range(2)]  # one per worker
        learner.call("step", batch(0), 0)
        assert sync.push(1) > 0
        after, _, _ = rollout.generate(reqs, 0, greedy=True, max_tokens=8)
        learner.call("export_hf", str(tmp_path / "hf"), str(tiny_model))
        trained = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
        original = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
        for row in after.to_pylist():  # both workers
            assert row["policy_version"] == 1
            vllm_lp = torch.tensor(row["logprobs"])
            # What vLLM sampled is scored by the learner's exported weights, not the original ones.
            trained_gap = (vllm_lp - teacher_forced(trained, row)).abs()
            original_gap = (vllm_lp - teacher_forced(original, row)).abs()
            if dtype == "float32":
                assert trained_gap.max() < 1e-3 and original_gap.max() > 1e-2
            else:  # bf16 engine vs the float32 weights it was rounded from: bf16 noise, well below the update
                assert trained_gap.max() < 1e-2 and trained_gap.mean() < 0.25 * original_gap.mean()
    finally:
        rollout.shutdown()
        learner.shutdown()


def test_gloo_push_to_a_dead_worker_times_out_then_replaces_it_and_pushes_again(ray_local, tiny_model, train_tasks,
                                                                                tmp_path):
    # Deterministic: worker 1's process is SIGKILLed before the push, so the broadcast meets a dead
    # member every time. The push fails within learner.weight_sync_timeout_s, the dead worker is
    # replaced, the group rebuilt and the push redone (WeightSync.push_healing, the driver's path);
    # afterwards both workers generate what the learner's weights predict.
    import os
    import signal
    import time

    from transformers import AutoModelForCausalLM

    import ray

    from toolexpander.actors.group import LearnerGroup, RolloutGroup, WeightSync, WorkerDied
    from toolexpander.config import Config
    from toolexpander.types import PromptRequest
    from tests.learner.test_learner import batch

    timeout = 5.0
    cfg = Config.model_validate({
        "model": {"path": str(tiny_model), "prepare": None},
        "rollout": {"num_workers": 2, "n": 2, "max_tokens": 8, "max_model_len": 2048},
        "learner": {"lr": 1e-3, "weight_sync": "gloo", "is_cap": None, "weight_sync_timeout_s": timeout}})
    learner = LearnerGroup(cfg, str(tiny_model), pad_id=2)
    rollout = RolloutGroup(cfg, str(tiny_model))
    try:
        sync = WeightSync(learner, rollout, cfg)
        learner.call("step", batch(0), 0)
        os.kill(rollout.ready()[1]["pid"], signal.SIGKILL)
        start = time.perf_counter()
        with pytest.raises((WorkerDied, ray.exceptions.RayTaskError)):  # the plain push just fails...
            sync.push(1)
        assert time.perf_counter() - start < timeout + 30  # ...within the timeout (it was a fixed 120 s)
        seconds, dead, error = sync.push_healing(1)        # the driver's push replaces the worker
        assert dead == [1] and error and seconds > 0
        assert [info["policy_version"] for info in rollout.ready()] == [1, 1]
        task = next(t for t in train_tasks if t.subtask == "single" and len(str(t.tools)) < 800)
        after, _, _ = rollout.generate([PromptRequest(task=task, demo_round=0, group_id=i) for i in range(2)], 0,
                                       greedy=True, max_tokens=8)
        learner.call("export_hf", str(tmp_path / "hf"), str(tiny_model))
        trained = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
        for row in after.to_pylist():  # the survivor and the replacement both hold the pushed weights
            assert (torch.tensor(row["logprobs"]) - teacher_forced(trained, row)).abs().max() < 1e-3
    finally:
        rollout.shutdown()
        learner.shutdown()


def test_the_synchronous_loop_keeps_only_the_weights_it_landed(ray_local, tiny_model, train_tasks):
    # The object store path of Trainer with max_staleness 0: each step stages the new weights
    # (_publish) and the next rollout phase lands them with land(defer=True) (no version). Every older
    # version must be dropped then, or the object store holds one copy of the model per step (it did:
    # 18 objects, 4.6 GB pinned at step 17 of a SmolLM2 run). An evaluation (land()) drops nothing.
    from toolexpander.actors.group import LearnerGroup, RolloutGroup, WeightSync
    from toolexpander.config import Config
    from toolexpander.types import PromptRequest
    from tests.learner.test_learner import batch

    cfg = Config.model_validate({
        "model": {"path": str(tiny_model), "prepare": None},
        "rollout": {"num_workers": 1, "n": 2, "max_tokens": 4, "max_model_len": 2048},
        "learner": {"lr": 1e-3, "weight_sync": "object_store", "is_cap": None}})
    learner = LearnerGroup(cfg, str(tiny_model), pad_id=2)
    rollout = RolloutGroup(cfg, str(tiny_model))
    try:
        sync = WeightSync(learner, rollout, cfg)
        task = next(t for t in train_tasks if t.subtask == "single" and len(str(t.tools)) < 800)
        request = [PromptRequest(task=task, demo_round=0, group_id=0)]
        assert sync.land(defer=True) == (0.0, None) and sync.staged == {}   # nothing staged yet
        for version in (1, 2, 3):
            learner.call("step", batch(0), 0)
            sync.stage(version)
            assert sync.land(defer=True) == (0.0, version)   # carried with the next generate call
            rows, _, _ = rollout.generate(request, version, greedy=True, max_tokens=4)
            assert {r["policy_version"] for r in rows.to_pylist()} == {version}
            assert sorted(sync.staged) == [version]
        for version in (4, 5):
            learner.call("step", batch(0), 0)
            sync.stage(version)
        seconds, landed = sync.land()                        # an evaluation: pushed now, nothing dropped
        assert landed == 5 and seconds > 0 and sorted(sync.staged) == [3, 4, 5]
        assert sync.land(defer=True) == (0.0, None)          # the engines hold 5: nothing to carry...
        assert sorted(sync.staged) == [5]                    # ...and the older ones go
    finally:
        rollout.shutdown()
        learner.shutdown()
