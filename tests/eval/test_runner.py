"""The eval runner: selection, scoring and summaries on hand-made outputs, then small real runs of
the tiny model on vLLM (the CLI path and the worker-passing path used during training)."""

import json
import os
import subprocess
import sys

import pyarrow as pa
import pytest

from toolexpander.eval import EvalError, runner
from toolexpander.rewards import render_answer, score
from toolexpander.types import ROLLOUT_SCHEMA


def oracle(texts_for, samples: bool = False):
    """A generate_fn answering each request with texts_for(task), scored by our reward; samples: texts_for
    gives a list, one row per text (the completions sampled for the request)."""
    def generate(requests):
        rows = []
        for r in reversed(requests):   # out of order on purpose: rows are matched by group_id
            for text in (texts_for(r.task) if samples else [texts_for(r.task)]):
                row = {f.name: [] if pa.types.is_list(f.type) else "" if pa.types.is_string(f.type) else 0
                       for f in ROLLOUT_SCHEMA}
                row.update(group_id=r.group_id, task_id=r.task.id, subtask=r.task.subtask,
                           finish_reason="stop", text=text)
                row.update({f"reward_{d}": v for d, v in score(text, r.task).as_dict().items()})
                rows.append(row)
        return pa.RecordBatch.from_pylist(rows, schema=ROLLOUT_SCHEMA)
    return generate


def test_load_items_limit_and_categories():
    items = runner.load_items("toolrl", None, 3)   # the ToolRL test set has only 2 no-call rows
    assert [i.category for i in items] == (["no_call"] * 2 + ["single"] * 3 + ["parallel"] * 3
                                           + ["multi_turn"] * 3)
    assert [i.id for i in items[2:5]] == [i.id for i in runner.load_items("toolrl", ["single"], None)][:3]
    ace = runner.load_items("acebench", ["special_irrelevant", "normal_atom_bool"], 2)
    assert [i.category for i in ace] == ["normal_atom_bool"] * 2 + ["special_irrelevant"] * 2
    assert len(runner.load_items("acebench", None, None)) == 972
    with pytest.raises(EvalError, match="unknown category nope; choose from no_call"):
        runner.load_items("toolrl", ["nope"], None)
    with pytest.raises(EvalError, match="unknown suite"):
        runner.load_items("mmlu", None, None)


def test_load_items_from_a_task_file_of_the_training_schema(tmp_path, train_tasks):
    path = tmp_path / "prompts.jsonl"
    picked = [train_tasks[0], train_tasks[5], train_tasks[1]]
    path.write_text("".join(json.dumps(t.model_dump(mode="json")) + "\n" for t in picked))
    items = runner.load_items("toolrl", None, None, data=path)
    by_category = sorted(picked, key=lambda t: ["no_call", "single", "parallel", "multi_turn"].index(t.subtask))
    assert [(i.category, i.task) for i in items] == [(t.subtask, t) for t in by_category]
    with pytest.raises(EvalError, match="--data .*missing.jsonl: no such file"):
        runner.load_items("toolrl", None, None, data=tmp_path / "missing.jsonl")
    with pytest.raises(EvalError, match="BFCL reads its own questions"):
        runner.load_items("bfcl", None, None, data=path)


def test_ground_truth_scores_full_marks_and_too_long_prompts_fail():
    items = runner.load_items("toolrl", None, 2)
    fits = lambda task: task.id != items[0].id   # noqa: E731
    report = runner.evaluate_with(oracle(lambda t: render_answer(t.answer)), items, "toolrl",
                                  fits=fits, batch=3, log=lambda _: None)
    entries, summary = report["entries"], report["summary"]
    assert [e["id"] for e in entries] == [i.id for i in items]
    assert entries[0]["error_type"] == "prompt_too_long" and not entries[0]["valid"]
    assert all(e["valid"] and e["error_type"] is None for e in entries[1:])
    assert summary["categories"]["no_call"] == pytest.approx(
        {"n": 2, "correct": 1, "accuracy": 0.5, "format": 0.5, "tool_name": 0.5, "param_name": 0.5,
         "param_value": 0.5, "exemplar_rate": 0.0})
    assert summary["overall"] == pytest.approx(7 / 8) and summary["prompt_too_long"] == 1
    single = next(e for e in entries if e["category"] == "single")
    assert single["decoded"] == [{c.name: c.arguments} for c in items[2].task.answer.tool_calls]


def test_sampled_answers_give_mean_and_pass_at_k_per_category():
    items = runner.load_items("toolrl", ["no_call", "single"], 2)
    right = lambda t: render_answer(t.answer)   # noqa: E731
    texts = {items[0].id: lambda t: [right(t), "garbage", right(t)],   # no_call: 2 of 3, then 0 of 3
             items[1].id: lambda t: ["garbage"] * 3,
             items[2].id: lambda t: [right(t)] * 3,                      # single: 3 of 3, then 1 of 3
             items[3].id: lambda t: ["x", "y", right(t)]}
    report = runner.evaluate_with(oracle(lambda t: texts[t.id](t), samples=True), items, "toolrl",
                                  log=lambda _: None, samples=3)
    entries, s = report["entries"], report["summary"]
    assert [(e["correct"], e["samples"]) for e in entries] == [(2, 3), (0, 3), (3, 3), (1, 3)]
    assert entries[0]["valid"] == pytest.approx(2 / 3) and entries[2]["error_type"] is None
    assert entries[0]["error_type"] == "sampled:some_wrong" and len(entries[0]["completions"]) == 3
    assert entries[0]["completions"][1]["valid"] is False and "id" not in entries[0]["completions"][0]
    assert entries[0]["rewards"]["format"] == pytest.approx(2 / 3)
    assert s["categories"]["no_call"]["accuracy"] == pytest.approx(1 / 3)       # mean@3
    assert s["categories"]["single"]["accuracy"] == pytest.approx(2 / 3)
    assert s["overall"] == pytest.approx(0.5) and s["samples"] == 3
    assert s["pass_at_k"] == pytest.approx({"no_call": 0.5, "single": 1.0, "overall": 0.75})
    assert "pass@3 (a question with a right completion among its 3): no_call 50.00%, single 100.00%, " \
           "overall 75.00%" in runner.format_table(s)
    short = oracle(lambda t: texts[t.id](t)[:2], samples=True)
    with pytest.raises(EvalError, match="3 completion.s. per question expected, another number came back for 4"):
        runner.evaluate_with(short, items, "toolrl", log=lambda _: None, samples=3)


def test_bfcl_summary_and_metrics_from_ground_truth():
    items = runner.load_items("bfcl", ["simple_python", "irrelevance"], 4)
    report = runner.evaluate_with(oracle(lambda t: render_answer(t.answer)), items, "bfcl",
                                  log=lambda _: None)
    s = report["summary"]
    assert s["categories"]["simple_python"] == {"n": 4, "correct": 4, "accuracy": 1.0}
    assert s["categories"]["irrelevance"]["accuracy"] == 1.0   # the rendered answer is a reply
    assert s["groups"] == {"non_live_simple": 1.0, "non_live": 1.0, "irrelevance_total": 1.0, "overall": 1.0}
    assert "live_simple" in s["missing"] and "simple_python" not in s["missing"]
    metrics = runner.eval_metrics(s, "bfcl")
    assert metrics["eval/bfcl/simple_python"] == 1.0 and metrics["eval/bfcl/overall"] == 1.0
    assert metrics["eval/bfcl/non_live"] == 1.0 and all(isinstance(v, float) for v in metrics.values())
    table = runner.format_table(s)
    assert "simple_python" in table and "100.00%" in table


def test_reward_error_names_the_first_failing_dimension():
    full = dict.fromkeys(("format", "tool_name", "param_name", "param_value", "exemplar", "correct"), 1.0)
    assert runner._reward_error(full) is None
    assert runner._reward_error({**full, "correct": 0.0, "param_name": 0.5, "param_value": 0.0}) \
        == "reward:param_name"
    assert runner._reward_error({**full, "correct": 0.0, "format": 0.0}) == "reward:format"


def test_cli_reports_bad_input_in_one_line(tiny_model, tmp_path, capsys):
    from toolexpander.cli import main

    out = str(tmp_path / "x.json")
    assert main(["eval", "--model", str(tiny_model), "--suite", "toolrl", "--categories", "nope",
                 "--out", out]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown category nope" in err
    assert main(["eval", "--model", str(tmp_path), "--suite", "bfcl", "--out", out]) == 1
    assert "not a model directory" in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_model), "--suite", "toolrl", "--data", str(tmp_path / "no.jsonl"),
                 "--out", out]) == 1
    assert f"--data {tmp_path / 'no.jsonl'}: no such file" in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_model), "--suite", "toolrl", "--temperature", "0.7", "--out", out]) == 1
    assert "--temperature 0.7: greedy decoding has no temperature; add --samples K" in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_model), "--suite", "toolrl", "--samples", "0", "--out", out]) == 1
    assert "--samples must be at least 1, got 0" in capsys.readouterr().err
    assert not os.path.exists(out)


def _check_report(path, n, categories):
    report = json.loads(path.read_text())
    summary, entries = report["summary"], report["entries"]
    assert summary["n"] == len(entries) == n
    assert list(summary["categories"]) == categories
    for row in summary["categories"].values():
        assert 0.0 <= row["accuracy"] <= 1.0 and row["n"] == 2
    assert 0.0 <= summary["overall"] <= 1.0
    for e in entries:
        assert {"id", "category", "raw", "decoded", "valid", "error_type"} <= set(e)
        assert isinstance(e["raw"], str) and isinstance(e["valid"], bool)
        assert e["valid"] or e["error_type"]
    return summary


def test_cli_eval_toolrl_on_tiny_model(tiny_model, tmp_path, repo):
    out = tmp_path / "toolrl.json"
    proc = subprocess.run([sys.executable, "-m", "toolexpander", "eval", "--model", str(tiny_model),
                           "--suite", "toolrl", "--limit", "2", "--max-tokens", "16", "--out", str(out)],
                          cwd=repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "toolrl overall" in proc.stdout
    summary = _check_report(out, 8, ["no_call", "single", "parallel", "multi_turn"])
    assert set(summary["means"]) == {"format", "tool_name", "param_name", "param_value", "exemplar_rate"}


def test_run_eval_bfcl_with_a_given_worker(tiny_model, tmp_path):
    from toolexpander.actors.rollout import RolloutWorker
    from toolexpander.config import RewardConfig, RolloutConfig

    rollout = RolloutConfig(max_tokens=16, max_model_len=2048).model_dump()
    worker = RolloutWorker(0, str(tiny_model), rollout, RewardConfig().model_dump())
    out = tmp_path / "bfcl.json"
    summary = runner.run_eval(model=str(tiny_model), suite="bfcl", categories=["simple_python"],
                              limit=2, out=str(out), max_tokens=16, worker=worker)
    assert summary == json.loads(out.read_text())["summary"]
    _check_report(out, 2, ["simple_python"])
    assert set(runner.eval_metrics(summary, "bfcl")) == {
        "eval/bfcl/simple_python", "eval/bfcl/non_live_simple", "eval/bfcl/non_live", "eval/bfcl/overall"}
    sampled = runner.run_eval(model=str(tiny_model), suite="toolrl", categories=["single"], limit=2,
                              out=str(tmp_path / "sampled.json"), max_tokens=8, worker=worker, samples=3, seed=5)
    entries = json.loads((tmp_path / "sampled.json").read_text())["entries"]
    assert [len(e["completions"]) for e in entries] == [3, 3] and sampled["samples"] == 3
    assert sampled["temperature"] == 1.0 and sampled["seed"] == 5          # the worker's own temperature
    assert len({c["raw"] for e in entries for c in e["completions"]}) > 2   # sampled, not one answer repeated
    with pytest.raises(EvalError, match="a given worker samples at its own rollout.temperature"):
        runner.run_eval(model=str(tiny_model), suite="toolrl", categories=["single"], limit=1,
                        out=str(tmp_path / "t.json"), worker=worker, samples=2, temperature=0.5)


def test_run_eval_through_ray_the_training_path(ray_local, tiny_model, tmp_path):
    """During training the driver hands over its RolloutGroup (or one worker's actor handle)."""
    from toolexpander.actors.group import RolloutGroup
    from toolexpander.config import Config

    cfg = Config.model_validate({"model": {"path": str(tiny_model), "prepare": None},
                                 "rollout": {"num_workers": 1, "max_model_len": 512, "cpus_per_worker": 1}})
    group = RolloutGroup(cfg, str(tiny_model))
    try:
        kwargs = dict(model=str(tiny_model), suite="bfcl", categories=["simple_python", "live_multiple"],
                      limit=2, max_tokens=8)
        by_group = runner.run_eval(**kwargs, out=str(tmp_path / "g.json"), worker=group)
        by_handle = runner.run_eval(**kwargs, out=str(tmp_path / "h.json"), worker=group.workers[0],
                                    max_model_len=512)
    finally:
        group.shutdown()
    entries = [json.loads((tmp_path / f).read_text())["entries"] for f in ("g.json", "h.json")]
    assert [e["raw"] for e in entries[0]] == [e["raw"] for e in entries[1]]   # greedy: same text
    # live_multiple_0 and _1 carry over 512 - 8 prompt tokens (simple_python < 350): not sent,
    # counted as failures
    assert [e["error_type"] for e in entries[0][2:]] == ["prompt_too_long"] * 2
    assert by_group["prompt_too_long"] == by_handle["prompt_too_long"] == 2


def test_missing_completions_raise_instead_of_scoring_zero():
    items = runner.load_items("toolrl", ["single"], 3)
    full = oracle(lambda t: render_answer(t.answer))

    def drop_one(requests):
        batch = full(requests)
        return batch.filter(pa.array([g != requests[1].group_id
                                      for g in batch.column("group_id").to_pylist()]))
    with pytest.raises(EvalError, match="another number came back for 1 question"):
        runner.evaluate_with(drop_one, items, "toolrl", log=lambda _: None)
