"""Prompt rendering (pure): where a hard prompt's demos go."""

import pytest

from toolexpander.prompt import DEMO_HEADER, chat_messages, make_demo, system_prompt
from toolexpander.types import Answer, Message, Task, Tool, ToolCall


def _task(tid, tools, calls, messages):
    return Task(id=tid, subtask="single" if len(calls) == 1 else "parallel", tools=[Tool(name=n) for n in tools],
                messages=messages, answer=Answer(tool_calls=[ToolCall(name=n, arguments=a) for n, a in calls]))


TASK = _task("t", ["weather"], [("weather", {"city": "Oslo"})], [Message(role="user", content="Rain in Oslo?")])
EMPTY = '"description": "", "parameters": {"type": "object", "properties": {}}'
DEMO = make_demo(_task("d", ["maps", "stocks"], [("maps", {"q": "Rome"})],
                       [Message(role="user", content="Where is Rome?")]))


def test_demo_keeps_only_the_tools_its_answer_calls():
    assert DEMO.question == "Where is Rome?" and [t.name for t in DEMO.tools] == ["maps"]
    assert DEMO.completion == ('<think>The request needs maps; I take every argument value from the conversation.'
                               '</think>\n<tool_call>\n{"name": "maps", "arguments": {"q": "Rome"}}\n</tool_call>')


def test_system_format_appends_the_demos_to_the_system_prompt():
    msgs = chat_messages(TASK, [DEMO])
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert msgs[0]["content"] == system_prompt(TASK.tools) + DEMO_HEADER + (
        '\n\nExample 1\nTools: {"name": "maps", ' + EMPTY + '}\nRequest: Where is Rome?'
        "\nAnswer:\n" + DEMO.completion)
    assert msgs[1] == {"role": "user", "content": "Rain in Oslo?"}


def test_turns_format_puts_each_demo_before_the_conversation_as_an_exchange():
    other = make_demo(_task("e", ["news"], [("news", {"topic": "tea"})], [Message(role="user", content="Tea?")]))
    msgs = chat_messages(TASK, [DEMO, other], demo_format="turns")
    assert msgs == [
        {"role": "system", "content": system_prompt(TASK.tools)},   # the task's tools only, no examples
        {"role": "user", "content": "(Solved example 1. Tools for this request only: "
                                    '{"name": "maps", ' + EMPTY + '})\nWhere is Rome?'},
        {"role": "assistant", "content": DEMO.completion},
        {"role": "user", "content": "(Solved example 2. Tools for this request only: "
                                    '{"name": "news", ' + EMPTY + '})\nTea?'},
        {"role": "assistant", "content": other.completion},
        {"role": "user", "content": "Rain in Oslo?"}]
    assert chat_messages(TASK, [], demo_format="turns") == chat_messages(TASK)


def test_turns_format_keeps_a_multi_turn_tasks_own_history_after_the_demos():
    task = _task("m", ["weather"], [("weather", {"city": "Oslo"})], [
        Message(role="system", content="Today is Monday."), Message(role="user", content="Rain?"),
        Message(role="assistant", content="Which city?"), Message(role="user", content="Oslo")])
    msgs = chat_messages(task, [DEMO], demo_format="turns")
    assert msgs[0]["content"].endswith("\n\nToday is Monday.")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in msgs[3:]] == ["Rain?", "<response>Which city?</response>", "Oslo"]


def test_an_unknown_demo_format_is_refused():
    with pytest.raises(ValueError, match="demo_format 'chat'"):
        chat_messages(TASK, [DEMO], demo_format="chat")
