"""The whole loop on the tiny model in local mode: rollout -> sampler -> learner -> weight push."""

import json
import math
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

CONTRACT = (
    ["step", "policy_version"]
    + [f"reward/{d}_mean" for d in ("format", "tool_name", "param_name", "param_value", "exemplar",
                                     "correct", "total")]
    + ["reward/scorer_errors"]
    + ["sampler/demo_rate", "sampler/all_fail_share", "sampler/zero_signal_share", "sampler/parked",
       "learner/loss", "learner/lr", "learner/grad_norm", "learner/clip_frac", "learner/skipped",
       "time/step_s", "time/rollout_s", "time/learner_s", "time/weight_push_s", "rollout/tokens_per_s"]
    + [f"sampler/{kind}/{t}" for kind in ("mastery", "share") for t in ("no_call", "single", "parallel", "multi_turn")]
)


def run_train(repo, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "toolexpander", "train", "--config",
                           str(repo / "configs" / "smoke.yaml"), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=repo)


@pytest.fixture(scope="module")
def three_steps(repo, tiny_model, tmp_path_factory):
    """One 3-step run with its rollouts dumped: the end-to-end test reads it, the replay test
    replays its dumps (a run costs tens of seconds, most of it starting Ray, vLLM and DeepSpeed)."""
    root = tmp_path_factory.mktemp("three_steps")
    run_dir, dumps = root / "run", root / "rollouts"
    # A pessimistic prior for unseen prompts makes failed prompts come back at once, so the
    # hard-sample rounds show within 3 steps.
    out = run_train(repo, "--output-dir", str(run_dir), "--save-rollouts", str(dumps),
                    "--train.steps", "3", "--rollout.n", "4", "--rollout.max_tokens", "8",
                    "--data.limit", "24", "--sampler.prior_mean", "1", "--sampler.prior_std", "0",
                    "--sampler.cooldown", "5", "--eval.every", "3", "--eval.limit", "1",
                    "--eval.max_tokens", "8", "--eval.before", "true")
    return out, run_dir, dumps


def test_three_steps_end_to_end(three_steps):
    out, run_dir, dumps = three_steps
    assert out.returncode == 0, out.stderr[-3000:]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["steps"] == 3 and config["rollout"]["n"] == 4 and config["rollout"]["max_tokens"] == 8
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    for r in rows:
        missing = [k for k in CONTRACT if k not in r]
        assert not missing, missing
        assert all(r[k] is not None and math.isfinite(r[k]) for k in CONTRACT)
    assert [r["policy_version"] for r in rows] == [1, 2, 3]
    assert all(r["reward/scorer_errors"] == 0 for r in rows)   # random text never breaks the scorer
    # The eval on the last step (eval.every=3): the ToolRL subset, first question per category.
    assert 0.0 <= rows[2]["eval/toolrl/overall"] <= 1.0 and "eval/toolrl/overall" not in rows[1]
    assert json.loads((run_dir / "eval" / "step_000002_toolrl.json").read_text())["entries"]
    # eval.before: the starting policy on the same questions, in the first row only
    assert 0.0 <= rows[0]["eval_before/toolrl/overall"] <= 1.0 and "eval_before/toolrl/overall" not in rows[1]
    assert json.loads((run_dir / "eval" / "before_toolrl.json").read_text())["entries"]
    # The console has the driver's lines; the actors' output (vLLM, DeepSpeed) is in logs/
    assert "pid=" not in out.stdout + out.stderr, (out.stdout + out.stderr)[-3000:]
    assert "vLLM" in (run_dir / "logs" / "rollout-0.log").read_text()
    assert (run_dir / "logs" / "learner-0.log").stat().st_size > 0
    assert all(r["learner/skipped"] == 0 for r in rows)
    assert (run_dir / "checkpoints" / "step_00000003" / "COMPLETE").is_file()
    assert (run_dir / "hf" / "model.safetensors").is_file()
    assert list((run_dir / "tensorboard").iterdir())
    # The random model fails every group of 4 (all_fail_min_n=4): a prompt seen bare comes back
    # with one demonstration on its next appearance.
    seen = {}
    rounds_on_return = []
    for step in range(3):
        table = pq.read_table(dumps / f"step_{step:06d}.parquet").to_pylist()
        for task_id in dict.fromkeys(r["task_id"] for r in table):
            demo_round = next(r["demo_round"] for r in table if r["task_id"] == task_id)
            if task_id in seen:
                rounds_on_return.append((seen[task_id], demo_round))
            seen[task_id] = demo_round
    assert rounds_on_return and all(after == before + 1 for before, after in rounds_on_return)
    carried = [r["num_demos"] for step in (1, 2)
               for r in pq.read_table(dumps / f"step_{step:06d}.parquet").to_pylist() if r["demo_round"] > 0]
    assert carried and all(k == 1 for k in carried)  # round 1 carries demo_schedule[0] = 1 demo
    assert max(r["sampler/demo_rate"] for r in rows) > 0


def test_existing_run_is_not_overwritten(repo, tiny_model, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("{}\n")
    out = run_train(repo, "--output-dir", str(run_dir), "--train.steps", "1")
    assert out.returncode == 1 and "already holds a run" in out.stderr and "Traceback" not in out.stderr


def test_replay_runs_the_learner_alone_on_dumped_rollouts(repo, three_steps, tmp_path):
    trained, _, dumps = three_steps
    assert trained.returncode == 0, trained.stderr[-3000:]
    out = run_train(repo, "--output-dir", str(tmp_path / "replay"), "--replay-rollouts", str(dumps))
    assert out.returncode == 0, out.stderr[-3000:]
    lines = (tmp_path / "replay" / "replay_metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["file"] for line in lines] == [f"step_{i:06d}.parquet" for i in range(3)]
    assert all(math.isfinite(json.loads(line)["learner/loss"]) for line in lines)


def test_a_subset_is_drawn_from_the_prompts_that_fit(repo, tiny_model):
    from toolexpander.config import Config
    from toolexpander.train import training_tasks

    def cfg(**data):
        return Config.model_validate({"model": {"path": str(tiny_model), "prepare": None},
                                      "data": {"train_path": str(repo / "data" / "tool_calls_train.jsonl"),
                                               "limit": 200, "max_prompt_tokens": 700, **data}})

    everything, left_out = training_tasks(cfg(), tiny_model)
    assert left_out > 20 and len(everything) == 200 - left_out          # some of the 200 rows are too long
    subset, left_out_too = training_tasks(cfg(subset=64), tiny_model)
    assert len(subset) == 64 and left_out_too == left_out               # 64 prompts, all of them fitting
    assert {t.id for t in subset} <= {t.id for t in everything}
    assert [t.id for t in training_tasks(cfg(subset=64), tiny_model)[0]] == [t.id for t in subset]  # seeded
