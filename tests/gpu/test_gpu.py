"""GPU paths (`make gpu-check`): a DeepSpeed ZeRO-2 and ZeRO-3 bf16 learner step, a learner checkpoint
round trip, a bf16 vLLM engine on the GPU taking pushed weights, the NCCL broadcast push (two GPUs), and
a 3-step run. Skipped without CUDA; on a CPU
machine they are collected and skipped, never faked. The engine tests also skip where the CUDA build of
vLLM is not installed (a GPU machine without a package index can still run the learner's GPU step)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def gpu_cfg(model, **learner):
    from toolexpander.config import Config

    return Config.model_validate({
        "model": {"path": str(model), "prepare": None, "dtype": "bfloat16"},
        "rollout": {"num_workers": 1, "n": 4, "max_tokens": 8, "max_model_len": 1024, "gpus_per_worker": 0.5,
                    "gpu_memory_utilization": 0.2},
        "learner": {"gpus_per_rank": 0.5, "zero_stage": 2, "lr": 1e-3, **learner}})


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_bf16_learner_step_on_the_gpu(ray_local, tiny_model, stage):
    from tests.learner.test_learner import batch
    from toolexpander.actors.group import LearnerGroup

    group = LearnerGroup(gpu_cfg(tiny_model, zero_stage=stage), str(tiny_model), pad_id=2)
    try:
        before = group.call("param_digest")[0]
        m = group.step(batch(), 0)
        assert m["learner/skipped"] == 0 and m["learner/applied"] == 1, m
        assert np.isfinite(m["learner/loss"]) and np.isfinite(m["learner/grad_norm"]) and m["learner/grad_norm"] > 0
        assert group.call("param_digest")[0] != before
    finally:
        group.shutdown()


def test_checkpoint_round_trip_on_the_gpu(ray_local, tiny_model, tmp_path):
    """Save after one step, load into a new learner, take the same next step: the same loss, LR and
    gradient norm (to float rounding: CUDA's embedding backward adds with atomics, in any order)."""
    from tests.learner.test_learner import checkpoint_round_trip

    expected, got = checkpoint_round_trip(gpu_cfg(tiny_model, lr_gamma=0.5, warmup_steps=1), tiny_model,
                                          tmp_path / "ckpt")
    assert got["learner/lr"] == expected["learner/lr"]
    assert got["learner/loss"] == pytest.approx(expected["learner/loss"], rel=1e-4)
    assert got["learner/grad_norm"] == pytest.approx(expected["learner/grad_norm"], rel=1e-3)


def test_a_gpu_engine_generates_and_takes_pushed_weights(ray_local, tiny_model, train_tasks):
    pytest.importorskip("vllm", reason="the CUDA build of vLLM (the gpu extra) is not installed")
    from tests.learner.test_learner import batch
    from toolexpander.actors.group import LearnerGroup, RolloutGroup, WeightSync
    from toolexpander.types import PromptRequest

    cfg = gpu_cfg(tiny_model, weight_sync="object_store")
    learner = LearnerGroup(cfg, str(tiny_model), pad_id=2)
    rollout = RolloutGroup(cfg, str(tiny_model))
    try:
        task = next(t for t in train_tasks if t.subtask == "single" and len(str(t.tools)) < 800)
        requests = [PromptRequest(task=task, demo_round=0, group_id=0)]
        table, _, lost = rollout.generate(requests, 0)
        assert not lost and table.num_rows == 4
        assert all(np.isfinite(lp).all() for lp in table.column("logprobs").to_pylist())
        learner.step(batch(), 0)
        sync = WeightSync(learner, rollout, cfg)
        assert sync.push(1) > 0
        assert [info["policy_version"] for info in rollout.ready()] == [1]
    finally:
        rollout.shutdown()
        learner.shutdown()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL between the learner and an engine needs 2 GPUs")
def test_nccl_push_reaches_the_engine(ray_local, tiny_model):
    pytest.importorskip("vllm", reason="the CUDA build of vLLM (the gpu extra) is not installed")
    from tests.learner.test_learner import batch
    from toolexpander.actors.group import LearnerGroup, RolloutGroup, WeightSync

    cfg = gpu_cfg(tiny_model, weight_sync="nccl")
    cfg.rollout.gpus_per_worker = cfg.learner.gpus_per_rank = 1.0
    learner = LearnerGroup(cfg, str(tiny_model), pad_id=2)
    rollout = RolloutGroup(cfg, str(tiny_model))
    try:
        sync = WeightSync(learner, rollout, cfg)
        assert sync.mode == "nccl"
        learner.step(batch(), 0)
        assert sync.push(1) > 0
        assert [info["policy_version"] for info in rollout.ready()] == [1]
    finally:
        rollout.shutdown()
        learner.shutdown()


def test_three_step_run_on_the_gpu(repo, tiny_model, tmp_path):
    pytest.importorskip("vllm", reason="the CUDA build of vLLM (the gpu extra) is not installed")
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "toolexpander", "train", "--config", "configs/smoke.yaml", "--model.path",
         str(tiny_model), "--model.dtype", "bfloat16", "--train.steps", "3", "--rollout.gpus_per_worker", "0.5",
         "--rollout.gpu_memory_utilization", "0.2", "--learner.gpus_per_rank", "0.5", "--output-dir",
         str(run_dir)], capture_output=True, text=True, cwd=repo, timeout=480, env=os.environ.copy())
    assert out.returncode == 0, out.stderr[-4000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert all(r["learner/skipped"] == 0 for r in rows)
