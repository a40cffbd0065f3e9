"""Every shipped ground-truth answer, rendered in the target format, scores as fully correct."""

from pathlib import Path

import pytest

from toolexpander.data import load_tasks
from toolexpander.rewards import parse_completion, render_answer, score

DATA = Path(__file__).resolve().parents[2] / "data"


@pytest.mark.parametrize("name", ["tool_calls_train.jsonl", "tool_calls_eval.jsonl", "acebench_eval.jsonl"])
def test_rendered_ground_truth_scores_correct(name):
    tasks = [t for t in load_tasks(DATA / name) if not t.meta.get("gt_invalid")]
    assert tasks
    failures = []
    for t in tasks:
        text = render_answer(t.answer, think="Let me decide which tool fits.")
        r = score(text, t)
        if (r.format, r.tool_name, r.param_name, r.param_value, r.correct) != (1.0, 1.0, 1.0, 1.0, 1.0):
            failures.append(f"{t.id}: {r}")
        elif parse_completion(text).has_response_block != (t.answer.response is not None or not t.answer.tool_calls):
            failures.append(f"{t.id}: response block mismatch")
    assert not failures, "\n".join(failures[:10])


def test_train_file_is_fully_valid():
    tasks = load_tasks(DATA / "tool_calls_train.jsonl")
    assert not any(t.meta.get("gt_invalid") for t in tasks)
