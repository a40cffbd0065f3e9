import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from toolexpander.data import DataError, load_tasks, summarize
from toolexpander.types import Task

GOOD = {"id": "a-1", "source": "t", "tools": [{"name": "f", "parameters": {"type": "object", "properties": {}}}],
        "messages": [{"role": "user", "content": "hi"}],
        "answer": {"tool_calls": [{"name": "f", "arguments": {"x": 1}}], "response": None}}


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_shipped_files_load_with_subtasks(repo):
    tasks = load_tasks(repo / "data" / "tool_calls_train.jsonl")
    assert len(tasks) == 2064
    counts = summarize(tasks)["subtask"]
    assert set(counts) == {"no_call", "single", "parallel", "multi_turn"}
    assert sum(counts.values()) == 2064
    assert len(load_tasks(repo / "data" / "tool_calls_eval.jsonl")) == 80
    assert len(load_tasks(repo / "data" / "acebench_eval.jsonl")) == 972


def test_subtask_derivation():
    def task(messages, calls):
        return Task.model_validate({**GOOD, "messages": messages,
                                    "answer": {"tool_calls": calls, "response": "ok"}})
    user = [{"role": "user", "content": "q"}]
    call = {"name": "f", "arguments": {}}
    assert task(user, []).subtask == "no_call"
    assert task(user, [call]).subtask == "single"
    assert task(user, [call, call]).subtask == "parallel"
    history = user + [{"role": "assistant", "content": "", "tool_calls": [call]},
                      {"role": "tool", "content": "{}"}]
    assert task(history, []).subtask == "multi_turn"
    assert Task.model_validate({**GOOD, "subtask": "parallel"}).subtask == "parallel"


def test_bad_rows_name_file_row_and_field(tmp_path):
    bad_role = {**GOOD, "id": "b", "messages": [{"role": "robot", "content": "x"}]}
    no_tools = {k: v for k, v in GOOD.items() if k != "tools"} | {"id": "c"}
    unknown_call = {**GOOD, "id": "d", "answer": {"tool_calls": [{"name": "g", "arguments": {}}]}}
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, "{not json", bad_role, no_tools, unknown_call, GOOD])
    with pytest.raises(DataError) as err:
        load_tasks(path)
    problems = err.value.problems
    assert problems[0] == f"{path}:2: (row): not valid JSON (Expecting property name enclosed in double quotes)"
    assert any(p.startswith(f"{path}:3: messages.0.role:") for p in problems)
    assert any(p.startswith(f"{path}:4: tools: Field required") for p in problems)
    assert any(p.startswith(f"{path}:5: ") and "'g', which is not in tools" in p for p in problems)
    assert problems[-1] == f"{path}:6: id: duplicate of row 1 ('a-1')"


def test_missing_and_wrong_kind_of_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_tasks(tmp_path / "none.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type"):
        load_tasks(tmp_path / "x.csv")


def test_parquet_rows_load(tmp_path):
    row = {**GOOD, "tools": json.dumps(GOOD["tools"]), "meta": json.dumps({"k": 1})}
    row["answer"] = {"tool_calls": [{"name": "f", "arguments": {"x": 1}}], "response": None}
    pq.write_table(pa.Table.from_pylist([row]), tmp_path / "d.parquet")
    (task,) = load_tasks(tmp_path / "d.parquet")
    assert task.tools[0].name == "f" and task.meta == {"k": 1} and task.subtask == "single"


def test_cli_data_check(repo, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "toolexpander", "data", "check",
                         str(repo / "data" / "tool_calls_eval.jsonl")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "80 rows OK" in ok.stdout and "by subtask:" in ok.stdout and "by source: toolrl-test=80" in ok.stdout
    bad = write_jsonl(tmp_path / "bad.jsonl", [GOOD, {**GOOD, "id": "z", "answer": "nope"}])
    out = subprocess.run([sys.executable, "-m", "toolexpander", "data", "check", str(bad)],
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert f"{bad}:2: answer:" in out.stderr and "Traceback" not in out.stderr
