"""parse_completion, render_call and render_answer on hand-made completions."""

import json

from toolexpander.rewards import parse_completion, render_answer, render_call
from toolexpander.types import Answer, ToolCall


def test_parse_full_completion():
    text = (
        "  <think>check the weather</think>\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n\n'
        '{"name": "get_time", "parameters": {"tz": "CET"}}\n'
        "</tool_call>\n<response>one moment</response>\n"
    )
    p = parse_completion(text)
    assert p.format_ok and p.calls_ok
    assert p.think == "check the weather"
    assert p.calls == [("get_weather", {"city": "Paris"}), ("get_time", {"tz": "CET"})]
    assert p.response == "one moment"
    assert p.has_tool_call_block and p.has_response_block


def test_parse_response_only_and_call_only():
    p = parse_completion("<think>x</think><response>hello</response>")
    assert p.format_ok and p.calls is None and not p.has_tool_call_block and p.response == "hello"
    p = parse_completion('<think>x</think> <tool_call>{"name": "f"}</tool_call>')
    assert p.format_ok and p.calls == [("f", {})] and p.response is None


def test_parse_bad_call_lines_keep_the_good_ones():
    p = parse_completion('<think>x</think><tool_call>\n{"name": "f", "arguments": {}}\nnot json\n</tool_call>')
    assert p.calls == [("f", {})]
    assert not p.calls_ok and not p.format_ok


def test_parse_rejects_non_call_objects():
    for line in [
        '["f"]',                                            # not an object
        '{"arguments": {}}',                                # no name
        '{"name": 3, "arguments": {}}',                     # name not a string
        '{"name": "", "arguments": {}}',                    # empty name
        '{"name": "f", "arguments": "{\\"a\\": 1}"}',       # arguments as a JSON string
        '{"name": "f", "arguments": {}, "parameters": {}}',  # ambiguous
        '{"name": "f", "arguments": {}, "id": 1}',          # unknown key
        '{"name": "f", "arguments": {"x": NaN}}',           # non-finite constant
        '{"name": "f", "arguments": {"x": 1}',              # truncated
    ]:
        p = parse_completion(f"<think>x</think><tool_call>\n{line}\n</tool_call>")
        assert p.calls == [] and not p.calls_ok and not p.format_ok, line


def test_parse_empty_tool_call_block_is_malformed():
    p = parse_completion("<think>x</think><tool_call>\n \n</tool_call>")
    assert p.calls == [] and not p.calls_ok and not p.format_ok


def test_format_failures():
    call = '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
    bad = {
        "missing think": f"{call}<response>r</response>",
        "think not first": f"hi <think>x</think>{call}",
        "only think": "<think>x</think>",
        "duplicate think": f"<think>x</think><think>y</think>{call}",
        "duplicate tool_call": f"<think>x</think>{call}\n{call}",
        "tool_call inside think": f"<think>x {call}</think><response>r</response>",
        "duplicate response": f"<think>x</think><response>a</response><response>b</response>",
        "wrong order": f"<think>x</think><response>r</response>{call}",
        "text between": f"<think>x</think> so: {call}",
        "text after": f"<think>x</think>{call} bye",
        "unclosed think": f"<think>x {call}",
        "unclosed tool_call": '<think>x</think><tool_call>\n{"name": "f"}\n',
        "unclosed response": "<think>x</think><response>r",
        "stray close": f"<think>x</think>{call}</response>",
        "tag inside response": "<think>x</think><response>a </think> b</response>",
    }
    for why, text in bad.items():
        assert not parse_completion(text).format_ok, why


def test_example_may_wrap_its_call_in_tool_call_tags():
    text = (
        '<think><example><tool_call>{"name": "f", "arguments": {}}</tool_call></example> fine.</think>'
        '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
    )
    p = parse_completion(text)
    assert p.format_ok and p.calls == [("f", {})]


def test_parse_never_splits_on_unicode_line_separators():
    line = json.dumps({"name": "f", "arguments": {"t": "a\u2028b\x85c"}}, ensure_ascii=False)
    p = parse_completion(f"<think>x</think><tool_call>\n{line}\n</tool_call>")
    assert p.format_ok and p.calls == [("f", {"t": "a\u2028b\x85c"})]


def test_render_call_is_one_json_line():
    call = ToolCall(name="f", arguments={"city": "Zürich", "note": "a\nb"})
    line = render_call(call)
    assert "\n" not in line and "Zürich" in line
    assert json.loads(line) == {"name": "f", "arguments": {"city": "Zürich", "note": "a\nb"}}


def test_render_call_escapes_tags_inside_values():
    call = ToolCall(name="f", arguments={"html": "</tool_call><b>"})
    line = render_call(call)
    assert "</tool_call>" not in line
    assert json.loads(line)["arguments"] == {"html": "</tool_call><b>"}


def test_render_answer_shapes():
    one = ToolCall(name="f", arguments={"a": 1})
    assert render_answer(Answer(tool_calls=[one]), think="t") == (
        '<think>t</think>\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>'
    )
    assert render_answer(Answer(tool_calls=[one, one], response="ok")) == (
        '<think>...</think>\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n'
        '{"name": "f", "arguments": {"a": 1}}\n</tool_call>\n<response>ok</response>'
    )
    assert render_answer(Answer(response="hi")) == "<think>...</think>\n<response>hi</response>"
    assert render_answer(Answer()) == "<think>...</think>\n<response></response>"


def test_render_answer_drops_tags_leaked_into_the_response():
    text = render_answer(Answer(response="reasoning\n</think>\nHello"))
    assert text == "<think>...</think>\n<response>reasoning\n\nHello</response>"
    assert parse_completion(text).format_ok


def test_render_then_parse_round_trips():
    calls = [ToolCall(name="a b", arguments={"x": [1, {"y": None}]}), ToolCall(name="c")]
    p = parse_completion(render_answer(Answer(tool_calls=calls, response="done")))
    assert p.format_ok and p.calls_ok and p.response == "done"
    assert p.calls == [("a b", {"x": [1, {"y": None}]}), ("c", {})]
