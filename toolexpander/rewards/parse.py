"""Parse a completion in the target (ToolRL) format, and render ground truth in that format.

Completion text in, ParsedCompletion out; never raises. Scans with str.find (no regex backtracking).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from toolexpander.types import Answer, ToolCall

THINK, THINK_END = "<think>", "</think>"
CALL, CALL_END = "<tool_call>", "</tool_call>"
RESPONSE, RESPONSE_END = "<response>", "</response>"
EXAMPLE, EXAMPLE_END = "<example>", "</example>"
BLOCK_TAGS = (THINK, THINK_END, CALL, CALL_END, RESPONSE, RESPONSE_END)
RESERVED_TAGS = (*BLOCK_TAGS, EXAMPLE, EXAMPLE_END)


@dataclass(frozen=True)
class ParsedCompletion:
    format_ok: bool            # tags exactly as specified, whatever the task needs
    think: str | None          # content of the first <think> block
    calls: list[tuple[str, dict]] | None  # the lines that parsed; None when no <tool_call> block
    calls_ok: bool             # the block is non-empty and every non-empty line is a call object
    response: str | None       # content of the <response> block
    has_tool_call_block: bool
    has_response_block: bool


def _reject_constant(name: str):
    raise ValueError(f"non-finite JSON constant {name}")


def parse_call(text: str) -> tuple[str, dict] | None:
    """One JSON call object {"name": str, "arguments" | "parameters": dict} -> (name, args), else None.

    Keys other than name and one of arguments/parameters make it no call object. Deep nesting,
    huge integers and NaN/Infinity come back as None rather than an exception.
    """
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError, TypeError):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    arg_keys = [k for k in ("arguments", "parameters") if k in obj]
    if len(arg_keys) > 1 or set(obj) - {"name", "arguments", "parameters"}:
        return None
    args = obj[arg_keys[0]] if arg_keys else {}
    if not isinstance(args, dict):
        return None
    return obj["name"], args


def _parse_call_lines(block: str) -> tuple[list[tuple[str, dict]], bool]:
    """Every non-empty line of a <tool_call> block as a call; ok when there is one and all parsed."""
    calls, ok = [], True
    # Split on "\n" only: str.splitlines would also split on U+2028, U+0085, ... which JSON
    # written with ensure_ascii=False leaves raw inside strings.
    for line in block.split("\n"):
        line = line.strip()
        if not line:
            continue
        call = parse_call(line)
        if call is None:
            ok = False
        else:
            calls.append(call)
    return calls, ok and bool(calls)


def _block(text: str, open_tag: str, close_tag: str, start: int = 0) -> tuple[int, int, int] | None:
    """(content_start, content_end, end_after_close) of the first open_tag...close_tag at/after start."""
    i = text.find(open_tag, start)
    if i < 0:
        return None
    j = text.find(close_tag, i + len(open_tag))
    if j < 0:
        return None
    return i + len(open_tag), j, j + len(close_tag)


def example_spans(think: str) -> list[tuple[int, int, int]]:
    """Every <example>...</example> in a think body, in order, as (content_start, content_end, end)."""
    spans, start = [], 0
    while (span := _block(think, EXAMPLE, EXAMPLE_END, start)) is not None:
        spans.append(span)
        start = span[2]
    return spans


def _has_tag(text: str, tags=BLOCK_TAGS) -> bool:
    return any(t in text for t in tags)


def _think_ok(think: str) -> bool:
    """No block tag in the think body, except inside <example> (where <tool_call> may wrap the call)."""
    pos = 0
    for cstart, _, end in example_spans(think):
        if _has_tag(think[pos:cstart]):
            return False
        pos = end
    return not _has_tag(think[pos:])


def _format_ok(s: str) -> bool:
    """s (stripped): <think>..</think> [<tool_call>..</tool_call>] [<response>..</response>], at least
    one of the last two, whitespace between, nothing after, no stray or repeated tag anywhere."""
    if not s.startswith(THINK) or s.count(THINK) != 1 or s.count(THINK_END) != 1:
        return False
    think_end = s.find(THINK_END)
    if not _think_ok(s[len(THINK):think_end]):
        return False
    rest = s[think_end + len(THINK_END):].lstrip()
    blocks = 0
    for open_tag, close_tag in ((CALL, CALL_END), (RESPONSE, RESPONSE_END)):
        if not rest.startswith(open_tag):
            continue
        j = rest.find(close_tag)
        if j < 0 or _has_tag(rest[len(open_tag):j]):
            return False
        rest = rest[j + len(close_tag):].lstrip()
        blocks += 1
    return blocks > 0 and not rest


def parse_completion(text: str) -> ParsedCompletion:
    """Locate the blocks leniently (for partial credit) and judge the format strictly."""
    s = text.strip()
    think_span = _block(s, THINK, THINK_END)
    think = s[think_span[0]:think_span[1]] if think_span else None
    after = think_span[2] if think_span else 0  # blocks are looked for after the think block
    call_span = _block(s, CALL, CALL_END, after)
    response_span = _block(s, RESPONSE, RESPONSE_END, after)
    calls, calls_ok = None, False
    if call_span is not None:
        calls, calls_ok = _parse_call_lines(s[call_span[0]:call_span[1]])
    return ParsedCompletion(
        format_ok=_format_ok(s) and (call_span is None or calls_ok),
        think=think,
        calls=calls,
        calls_ok=calls_ok,
        response=s[response_span[0]:response_span[1]] if response_span else None,
        has_tool_call_block=call_span is not None,
        has_response_block=response_span is not None,
    )


def render_call(call: ToolCall) -> str:
    """One JSON line {"name": ..., "arguments": ...}; a '<' is escaped when a value holds a tag."""
    line = json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)
    # '<' only occurs inside JSON strings, so \u003c keeps the value and hides the tag.
    return line.replace("<", "\\u003c") if _has_tag(line, RESERVED_TAGS) else line


def _strip_tags(text: str) -> str:
    for tag in RESERVED_TAGS:
        text = text.replace(tag, "")
    return text


def render_answer(answer: Answer, think: str = "...") -> str:
    """The ground truth in the target format. Tags leaked into the response text (2 training rows
    carry a stray </think>) are dropped so the rendering stays well-formed."""
    parts = [f"{THINK}{think}{THINK_END}"]
    if answer.tool_calls:
        lines = "\n".join(render_call(c) for c in answer.tool_calls)
        parts.append(f"{CALL}\n{lines}\n{CALL_END}")
    if answer.response is not None or not answer.tool_calls:
        parts.append(f"{RESPONSE}{_strip_tags(answer.response or '')}{RESPONSE_END}")
    return "\n".join(parts)
