"""Render a task (plus any few-shot demonstrations) into chat messages in the ToolRL format.

The system prompt lists the tools as JSON and the answer format the rewards parse; demonstrations
for hard prompts go in the system prompt (`system`) or before the conversation as earlier exchanges, a
user turn with the demo's tools and question and an assistant turn with its answer (`turns`); the
model's own chat template wraps the roles. Pure.
"""

from __future__ import annotations

import json
from typing import get_args

from toolexpander.rewards import render_answer, render_call
from toolexpander.types import Demo, DemoFormat, Message, Task, Tool

# The fixed instructions come first and the tools last, so every prompt shares one cached prefix.
SYSTEM_TEMPLATE = """You are a helpful assistant that can call tools to answer the user.

Answer in exactly this format. First think: <think>your reasoning</think>
Then, to call tools, write one JSON object per line, one line per call:
<tool_call>
{{"name": "<tool name>", "arguments": {{"<argument>": <value>}}}}
</tool_call>
When no tool fits, or the tool results already answer the request, reply instead:
<response>your reply to the user</response>
When unsure which call is right, write inside <think> one example call of your own,
<example>{{"name": "<tool name>", "arguments": {{...}}}}</example>, then a line analysing it, then answer.

Available tools (one JSON schema per line):
{tools}"""

DEMO_HEADER = "\n\nSolved examples of similar requests:"
DEMO_TEMPLATE = "\n\nExample {k}\nTools: {tools}\nRequest: {question}\nAnswer:\n{completion}"
# `turns`: the demo's own tools travel with its question, so its answer never calls a tool the
# conversation has not shown; the system prompt keeps only the task's tools.
DEMO_TURN_TEMPLATE = "(Solved example {k}. Tools for this request only: {tools})\n{question}"
DEMO_FORMATS = get_args(DemoFormat)


def tool_json(tool: Tool) -> str:
    return json.dumps(tool.model_dump(mode="json"), ensure_ascii=False)


def demo_tools(demo: Demo) -> str:
    return "; ".join(tool_json(t) for t in demo.tools) or "(none needed)"


def system_prompt(tools: list[Tool], demos: list[Demo] = (), extra: list[str] = ()) -> str:
    text = SYSTEM_TEMPLATE.format(tools="\n".join(tool_json(t) for t in tools))
    for line in extra:  # the task's own system messages (e.g. ACEBench's current time, user profile)
        text += "\n\n" + line
    if demos:
        text += DEMO_HEADER
        for k, demo in enumerate(demos, start=1):
            text += DEMO_TEMPLATE.format(k=k, tools=demo_tools(demo), question=demo.question,
                                         completion=demo.completion)
    return text


def demo_turns(demos: list[Demo]) -> list[dict[str, str]]:
    """Demos as earlier exchanges (`turns`): per demo a user turn (its tools, its question) and an
    assistant turn (its answer in the target format)."""
    turns = []
    for k, demo in enumerate(demos, start=1):
        turns.append({"role": "user", "content": DEMO_TURN_TEMPLATE.format(k=k, tools=demo_tools(demo),
                                                                           question=demo.question)})
        turns.append({"role": "assistant", "content": demo.completion})
    return turns


def _history_turn(message: Message) -> dict[str, str]:
    """An earlier turn in the target format; tool results become user turns wrapped in <obs>."""
    if message.role == "tool":
        return {"role": "user", "content": f"<obs>{message.content}</obs>"}
    if message.role == "assistant":
        parts = []
        if message.tool_calls:
            parts.append("<tool_call>\n" + "\n".join(render_call(c) for c in message.tool_calls)
                         + "\n</tool_call>")
        if message.content or not message.tool_calls:
            parts.append(f"<response>{message.content}</response>")
        return {"role": "assistant", "content": "\n".join(parts)}
    return {"role": message.role, "content": message.content}


def chat_messages(task: Task, demos: list[Demo] = (), demo_format: DemoFormat = "system") -> list[dict[str, str]]:
    """The conversation handed to `tokenizer.apply_chat_template`; `demo_format` places the demos
    (DEMO_FORMATS)."""
    if demo_format not in DEMO_FORMATS:
        raise ValueError(f"demo_format {demo_format!r}: expected one of {DEMO_FORMATS}")
    extra = [m.content for m in task.messages if m.role == "system"]
    turns = [_history_turn(m) for m in task.messages if m.role != "system"]
    merged: list[dict[str, str]] = []
    for turn in turns:  # consecutive tool results (parallel calls) become one user turn
        if merged and merged[-1]["role"] == turn["role"] == "user":
            merged[-1] = {"role": "user", "content": merged[-1]["content"] + "\n" + turn["content"]}
        else:
            merged.append(turn)
    if demo_format == "turns":
        return [{"role": "system", "content": system_prompt(task.tools, (), extra)}, *demo_turns(demos), *merged]
    return [{"role": "system", "content": system_prompt(task.tools, demos, extra)}, *merged]


def prompt_ids(tokenizer, task: Task, demos: list[Demo] = (), demo_format: DemoFormat = "system") -> list[int]:
    encoded = tokenizer.apply_chat_template(chat_messages(task, demos, demo_format), tokenize=True,
                                            add_generation_prompt=True)
    ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
    return list(ids)


def demo_think(task: Task) -> str:
    if not task.answer.tool_calls:
        return "No tool call is needed here; I answer the user directly."
    names = ", ".join(dict.fromkeys(c.name for c in task.answer.tool_calls))
    return f"The request needs {names}; I take every argument value from the conversation."


def make_demo(task: Task) -> Demo:
    """A solved example from a task's ground truth: its question, the tools it calls, its answer."""
    called = {c.name for c in task.answer.tool_calls}
    question = next((m.content for m in reversed(task.messages) if m.role in ("user", "tool")), "")
    return Demo(task_id=task.id, tools=[t for t in task.tools if t.name in called],
                question=question, completion=render_answer(task.answer, think=demo_think(task)))
