"""Sampler (the actor's class, used here without Ray): Tasks in, PromptRequests with demos out."""

import numpy as np
import pyarrow as pa

from toolexpander.config import SamplerConfig
from toolexpander.sampling.sampler import Sampler
from toolexpander.types import REWARD_DIMS, Answer, Message, Task, Tool, ToolCall


def _task(tid: str, subtask: str, tools: list[str], call: str | None, invalid: bool = False) -> Task:
    return Task(id=tid, subtask=subtask, tools=[Tool(name=n) for n in tools],
                messages=[Message(role="user", content=f"question {tid}")],
                answer=Answer(tool_calls=[ToolCall(name=call, arguments={"q": tid})] if call else [],
                              response=None if call else "no"),
                meta={"gt_invalid": True} if invalid else {})


def _all_fail(requests, n=10) -> pa.Table:
    cols = {"group_id": [], "task_id": [], "demo_round": [], **{f"reward_{d}": [] for d in REWARD_DIMS}}
    for r in requests:
        for _ in range(n):
            cols["group_id"].append(r.group_id)
            cols["task_id"].append(r.task.id)
            cols["demo_round"].append(r.demo_round)
            for d in REWARD_DIMS:
                cols[f"reward_{d}"].append(0.0)
    return pa.table(cols)


def _demo_request(demo_tasks, **cfg):
    prompts = [_task("p", "single", ["weather", "maps"], "weather")]
    cfg = SamplerConfig(batch_prompts=1, demo_schedule=[2], all_fail_min_n=10, **cfg).model_dump()
    sampler = Sampler(cfg, prompts, demo_tasks=demo_tasks)
    first = sampler.next_batch(1)
    assert first[0].demo_round == 0 and first[0].demos == []
    sampler.record(_all_fail(first))
    sampler.end_step()
    again = sampler.next_batch(1)
    assert again[0].task.id == "p" and again[0].demo_round == 1
    return again[0]


def _demo_ids(demo_tasks):
    return [d.task_id for d in _demo_request(demo_tasks).demos]


def test_demos_come_from_the_file_rows_sharing_the_prompts_tools():
    rows = [_task("p", "single", ["weather", "maps"], "weather"),          # the prompt's own row
            _task("w", "single", ["weather"], "weather"),                  # Jaccard 1/2
            _task("wm", "single", ["maps", "weather", "x"], "maps"),       # Jaccard 2/3
            _task("bad", "single", ["weather", "maps"], "maps", invalid=True),
            _task("par", "parallel", ["weather", "maps"], "weather"),      # another sub-task
            _task("z", "single", ["stocks"], "stocks")]
    assert _demo_ids(rows) == ["wm", "w"]
    # from the prompts alone (sampler.demo_pool prompts) a lone prompt has no other row to show
    assert _demo_ids(None) == []


def test_the_demo_format_travels_with_the_request_to_the_worker():
    rows = [_task("p", "single", ["weather", "maps"], "weather"), _task("w", "single", ["weather"], "weather")]
    assert _demo_request(rows).demo_format == "system"
    turns = _demo_request(rows, demo_format="turns")
    assert turns.demo_format == "turns" and [d.task_id for d in turns.demos] == ["w"]


def test_demo_pool_rows_are_never_drawn_as_prompts():
    rows = [_task(f"r{i}", "single", ["weather"], "weather") for i in range(6)]
    sampler = Sampler(SamplerConfig(batch_prompts=2).model_dump(), rows[:2], demo_tasks=rows)
    drawn = set()
    for _ in range(10):
        drawn |= {r.task.id for r in sampler.next_batch(2)}
        sampler.end_step()
    assert drawn == {"r0", "r1"}


def test_demo_probe_picks_each_settings_demos_as_the_sampler_does_and_spots_copies():
    from bench.demo_probe import copied, demo_sets

    prompts = [_task("p", "single", ["weather", "maps"], "weather"), _task("q", "single", ["stocks"], "stocks")]
    rows = [*prompts, _task("w", "single", ["weather"], "weather"), _task("s", "single", ["stocks", "fx"], "fx")]
    sets = demo_sets(prompts, rows, 1, 0)
    assert sets["bare"] == [[], []]
    assert sets["prompts"] == [[1], [0]]          # no overlap among the prompts: the other one
    assert sets["file"] == [[2], [3]]             # from the file: the rows sharing a tool, never the own row
    call = '<think>t</think>\n<tool_call>\n{"name": "fx", "arguments": {}}\n</tool_call>'
    assert copied(call, {"stocks"}, {"fx"}) and not copied(call, {"fx"}, {"fx"}) and not copied("no tags", set(), {"fx"})


def test_demo_probe_compares_prompts_whose_demos_share_a_tool_with_their_bare_answers():
    from bench.demo_probe import summarize

    prompts = [_task("p", "single", ["weather", "maps"], "weather"), _task("q", "single", ["stocks"], "stocks"),
               _task("r", "single", ["news"], "news")]
    bare = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    tbl = pa.table({"reward_correct": [1.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                    "text": ["x"] * 6})
    # p's demo calls weather (shared), q's calls fx (not shared), r has no demo
    r = summarize(tbl, prompts, {0: {"weather"}, 1: {"fx"}, 2: set()}, 2, {0, 2}, [1, 1, 0], bare)
    assert (r["related"], r["related_correct"], r["related_bare"]) == (1, 1.0, 0.0)
    assert (r["hard"], r["hard_solved"], r["solved"]) == (2, 2, 2)
