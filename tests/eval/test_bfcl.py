"""BFCL decoding and scoring with BFCL's own ast_checker, on hand-written completions; the
leaderboard aggregation on a hand-computed case."""

import json
import sys

import pytest

from toolexpander.eval import EvalError, bfcl


def call(name, **args):
    """A completion in our format making one call."""
    return answer([(name, args)])


def answer(calls):
    """A completion in our format making the given (name, args) calls."""
    lines = "\n".join(json.dumps({"name": n, "arguments": a}) for n, a in calls)
    return f"<think>ok</think>\n<tool_call>\n{lines}\n</tool_call>"


REPLY = "<think>no tool fits</think>\n<response>I cannot do that with these tools.</response>"


@pytest.fixture(scope="module")
def entry():
    """The first two entries of each category used below, keyed by category."""
    cats = ["simple_python", "simple_java", "parallel", "multiple", "irrelevance", "live_relevance"]
    return {c: bfcl.load_entries([c], limit=2) for c in cats}


def test_decode_into_bfcl_form():
    assert bfcl.decode(call("f", a=1, b=[1, 2])) == [{"f": {"a": 1, "b": [1, 2]}}]
    assert bfcl.decode(answer([("f", {"x": "y"}), ("g", {})])) == [{"f": {"x": "y"}}, {"g": {}}]
    # "parameters" is accepted like "arguments"
    assert bfcl.decode('<think>.</think><tool_call>\n{"name": "f", "parameters": {"a": 2}}\n</tool_call>') \
        == [{"f": {"a": 2}}]
    assert bfcl.decode(REPLY) == []                       # no block: no call
    assert bfcl.decode("just text") == []
    assert bfcl.decode("<think>.</think><tool_call>\nf(a=1)\n</tool_call>") is None  # decoder failed
    assert bfcl.decode(answer([("f", {})]).replace("}}", "}} trailing")) is None


def test_correct_call_is_valid_and_wrong_value_is_not(entry):
    e = entry["simple_python"][0]   # calculate_triangle_area(base=10, height=5, unit optional)
    assert e.id == "simple_python_0"
    assert bfcl.score_entry(e, call("calculate_triangle_area", base=10, height=5))["valid"]
    assert bfcl.score_entry(e, call("calculate_triangle_area", base=10, height=5, unit="units"))["valid"]
    wrong = bfcl.score_entry(e, call("calculate_triangle_area", base=11, height=5))
    assert not wrong["valid"] and wrong["error_type"] == "value_error:others"
    assert wrong["decoded"] == [{"calculate_triangle_area": {"base": 11, "height": 5}}]
    typed = bfcl.score_entry(e, call("calculate_triangle_area", base="10", height=5))
    assert not typed["valid"] and typed["error_type"].startswith("type_error")
    missing = bfcl.score_entry(e, call("calculate_triangle_area", base=10))
    assert missing["error_type"] == "simple_function_checker:missing_required"
    assert bfcl.score_entry(e, REPLY)["error_type"] == "simple_function_checker:wrong_count"
    bad = bfcl.score_entry(e, "<think>.</think><tool_call>\nnope\n</tool_call>")
    assert not bad["valid"] and bad["error_type"] == "ast_decoder:decoder_failed"


def test_dotted_names_are_kept_as_written(entry):
    e = entry["simple_python"][1]   # math.factorial(number=5)
    assert bfcl.score_entry(e, call("math.factorial", number=5))["valid"]
    assert not bfcl.score_entry(e, call("math_factorial", number=5))["valid"]


def test_parallel_is_order_free_and_counts_calls(entry):
    e = entry["parallel"][0]        # spotify.play twice: Taylor Swift 20, Maroon 5 15
    ts, m5 = ("spotify.play", {"artist": "Taylor Swift", "duration": 20}), \
        ("spotify.play", {"artist": "Maroon 5", "duration": 15})
    assert bfcl.score_entry(e, answer([ts, m5]))["valid"]
    assert bfcl.score_entry(e, answer([m5, ts]))["valid"]
    assert bfcl.score_entry(e, answer([ts]))["error_type"] == "parallel_function_checker_no_order:wrong_count"
    # BFCL's string check ignores case, spaces and ",./-_*^"
    lower = ("spotify.play", {"artist": "taylor swift", "duration": 20})
    assert bfcl.score_entry(e, answer([lower, m5]))["valid"]


def test_java_values_are_strings(entry):
    e = entry["simple_java"][0]     # GeometryPresentation.createPresentation(controller, parent)
    name = "GeometryPresentation.createPresentation"
    assert bfcl.score_entry(e, call(name, controller="mapController", parent="mapArea"))["valid"]
    assert bfcl.score_entry(e, call(name, controller=1, parent="mapArea"))["error_type"] == "type_error:java"
    # the model sees BFCL's generation-time doc: every Java parameter as a string, with a hint
    props = e.task.tools[0].parameters["properties"]
    assert {p["type"] for p in props.values()} == {"string"} and "Java" in e.task.tools[0].description
    assert e.functions[0]["parameters"]["properties"]["controller"]["type"] == "any"   # checker's doc


def test_irrelevance_is_valid_when_no_call_is_decoded(entry):
    e = entry["irrelevance"][0]
    assert e.possible_answer is None and e.task.subtask == "no_call"
    assert bfcl.score_entry(e, REPLY)["valid"]
    assert bfcl.score_entry(e, "")["valid"]
    # as in BFCL, an output that fails to decode is "no call"
    assert bfcl.score_entry(e, "<think>.</think><tool_call>\nbroken\n</tool_call>")["valid"]
    made = bfcl.score_entry(e, call("determine_body_mass_index", weight=70.0, height=1.8))
    assert not made["valid"] and made["error_type"] == "irrelevance_error:decoder_success"


def test_relevance_is_valid_when_any_call_is_decoded(entry):
    e = entry["live_relevance"][0]
    assert bfcl.score_entry(e, call("search_engine.query", prompt="anything"))["valid"]
    assert bfcl.score_entry(e, REPLY)["error_type"] == "relevance_error:decoder_failed"


def test_checker_survives_hostile_values(entry):
    e = entry["multiple"][0]
    (name,) = e.possible_answer[0]
    for args in ({"x": {"deep": [1, {"a": None}]}}, {k: [[[]]] for k in "abc"}, {}):
        result = bfcl.score_entry(e, call(name, **args))
        assert result["valid"] is False and result["error_type"]


def test_checker_import_leaves_no_stand_in_behind():
    bfcl.score_entry(bfcl.load_entries(["simple_python"], limit=1)[0], REPLY)
    assert "bfcl_eval.eval_checker.ast_eval.ast_checker" in sys.modules
    assert "bfcl_eval.constants.model_config" not in sys.modules


def test_types_become_json_schema_keeping_the_original():
    tool = bfcl.to_tool({"name": "f", "description": "d", "parameters": {
        "type": "dict", "required": ["a"], "properties": {
            "a": {"type": "float", "description": "x"},
            "b": {"type": "tuple", "items": {"type": "float"}},
            "c": {"type": "dict", "properties": {"k": {"type": "any"}}},
            "d": {"type": "string", "enum": ["u", "v"], "default": "u"},
            "e": {"type": "weird"}}}})
    p = tool.parameters
    assert p["type"] == "object" and p["required"] == ["a"] and "x-original-type" not in p
    props = p["properties"]
    assert props["a"] == {"type": "number", "x-original-type": "float", "description": "x"}
    assert props["b"] == {"type": "array", "x-original-type": "tuple",
                          "items": {"type": "number", "x-original-type": "float"}}
    assert props["c"]["type"] == "object"
    assert props["c"]["properties"]["k"] == {"type": "string", "x-original-type": "any"}
    assert props["d"] == {"type": "string", "enum": ["u", "v"], "default": "u"}
    assert props["e"]["type"] == "string"


def test_all_categories_load_as_valid_tasks():
    entries = bfcl.load_entries(bfcl.expand_categories(None), limit=3)
    assert [e.category for e in entries][::3] == list(bfcl.CATEGORIES)
    assert all(e.task.messages[-1].role == "user" for e in entries)
    assert len({e.id for e in entries}) == len(entries)


def test_expand_categories():
    assert bfcl.expand_categories(["live_simple", "non_live"])[:2] == ["simple_python", "simple_java"]
    assert bfcl.expand_categories(["live"]) == list(bfcl.LIVE)
    with pytest.raises(EvalError, match="multi_turn_base"):
        bfcl.expand_categories(["multi_turn_base"])


def test_aggregation_matches_bfcl_on_a_hand_case():
    counts = {
        "simple_python": (3, 4), "simple_java": (1, 2), "simple_javascript": (0, 1),  # .75 .5 0
        "multiple": (1, 2), "parallel": (2, 2), "parallel_multiple": (0, 2),
        "live_simple": (2, 2), "live_multiple": (1, 4), "live_parallel": (0, 0),   # 0-count: not run
        "irrelevance": (1, 1), "live_irrelevance": (1, 4), "live_relevance": (1, 2),
    }
    g = bfcl.aggregate(counts)
    simple = (0.75 + 0.5 + 0.0) / 3                      # unweighted over languages
    non_live = (simple + 0.5 + 1.0 + 0.0) / 4            # unweighted over the four AST groups
    live = (2 + 1) / (2 + 4)                             # weighted by entries: 0.5 (unweighted: 0.625)
    irrelevance = (1.0 + 0.25) / 2
    assert g["non_live_simple"] == pytest.approx(simple)
    assert g["non_live"] == pytest.approx(non_live)
    assert g["live"] == pytest.approx(live)
    assert g["irrelevance_total"] == pytest.approx(irrelevance)
    assert g["overall"] == pytest.approx((non_live + live + irrelevance) / 3)
    # groups with nothing run are left out; partial groups average what was run
    assert bfcl.aggregate({"simple_python": (1, 4)}) == {
        "non_live_simple": 0.25, "non_live": 0.25, "overall": 0.25}
