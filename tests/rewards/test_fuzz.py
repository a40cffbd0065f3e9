"""Property and adversarial tests: scoring never raises, stays in range, and stays fast.

Every call here is strict: an exception inside the scorer fails the test instead of scoring 0.
"""

import json
import time

from hypothesis import HealthCheck, given, settings, strategies as st

from toolexpander.rewards import ZERO, RewardVector, parse_completion
from toolexpander.rewards import score as lenient_score
from toolexpander.types import Task


def score(text, task, **kwargs) -> RewardVector:
    """The scorer with strict=True: a scorer exception fails the test (the worker would score 0)."""
    return lenient_score(text, task, strict=True, **kwargs)

BONUS = 0.01
CALLS = [("get_weather", {"city": "Paris", "days": 3}), ("get_weather", {"city": "Rome"}),
         ("get_time", {"tz": "CET"})]


def _task(calls, response=None) -> Task:
    return Task.model_validate({
        "id": "t",
        "tools": [{"name": n} for n in ("get_weather", "get_time", "search")],
        "messages": [{"role": "user", "content": "hi"}],
        "answer": {"tool_calls": [{"name": n, "arguments": a} for n, a in calls], "response": response},
    })


TASKS = [_task(CALLS), _task(CALLS[:1]), _task([], response="Which city?")]
CORRECT = [
    '<think><example>{"name": "search", "arguments": {"q": "x"}}</example> wrong tool, use weather.</think>\n'
    "<tool_call>\n" + "\n".join(json.dumps({"name": n, "arguments": a}) for n, a in CALLS) + "\n</tool_call>",
    '<think>ok</think><tool_call>\n{"name": "get_weather", "parameters": {"city": "paris", "days": "3"}}\n'
    "</tool_call>\n<response>done</response>",
    "<think>no tool fits</think>\n<response>Which city do you mean?</response>",
]
CHUNKS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<response>", "</response>", "<example>",
          "</example>", "{", "}", "[", "]", '"', ",", ":", "\n", " ", '"name"', '"arguments"', "NaN",
          "1e999", "9" * 5000, "\\ud800", "\ud800", "\u2028", "\x00", '{"name": "get_time"}']
chunk = st.one_of(st.sampled_from(CHUNKS), st.text(max_size=20))


@st.composite
def mutated(draw) -> tuple[int, str]:
    """A correct completion of one of TASKS after a few random edits."""
    k = draw(st.integers(0, len(TASKS) - 1))
    text = CORRECT[k]
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 40)))
        op = draw(st.sampled_from(["insert", "delete", "duplicate", "swap_tags"]))
        if op == "insert":
            text = text[:i] + draw(chunk) + text[i:]
        elif op == "delete":
            text = text[:i] + text[j:]
        elif op == "duplicate":
            text = text[:j] + text[i:j] + text[i:]
        else:
            a, b = draw(st.sampled_from(CHUNKS[:8])), draw(st.sampled_from(CHUNKS[:8]))
            text = text.replace(a, "\0tmp").replace(b, a).replace("\0tmp", b)
    return k, text


def check(r: RewardVector) -> None:
    assert isinstance(r, RewardVector)
    assert r.format in (0.0, 1.0) and r.correct in (0.0, 1.0)
    assert r.exemplar in (0.0, BONUS)
    for v in (r.tool_name, r.param_name, r.param_value):
        assert 0.0 <= v <= 1.0
    if r.correct == 1.0:
        assert r.format == 1.0
        assert (r.tool_name, r.param_name, r.param_value) == (1.0, 1.0, 1.0)
    if r.exemplar:
        assert r.format == 1.0
    assert abs(r.total - sum(r.as_dict()[d] for d in r.as_dict() if d != "total")) < 1e-9


def test_unmutated_completions_are_correct():
    for text, t in zip(CORRECT, TASKS):
        r = score(text, t)
        check(r)
        assert r.correct == 1.0 and r.format == 1.0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutations_never_raise_and_stay_in_range(case):
    k, text = case
    parse_completion(text)
    for t in TASKS:
        check(score(text, t))


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300))
def test_random_text_never_raises(text):
    for t in TASKS:
        check(score(text, t))


def test_huge_completion_scores_zero_quickly():
    text = CORRECT[0] + "x" * 10_000_000
    t0 = time.perf_counter()
    assert score(text, TASKS[0]) == ZERO
    assert score("<think>" * 2_000_000, TASKS[0]) == ZERO
    assert time.perf_counter() - t0 < 0.5


def test_deep_nesting_scores_zero():
    t0 = time.perf_counter()
    assert score("[" * 100_000, TASKS[0]) == ZERO
    assert score("[" * 100_000, TASKS[0], max_chars=10**6) == ZERO
    deep = '<think>a</think><tool_call>\n{"name": "get_time", "arguments": {"tz": ' + "[" * 100_000 + \
        "}}\n</tool_call>"
    assert score(deep, TASKS[0], max_chars=10**6) == ZERO
    assert time.perf_counter() - t0 < 1.0


def test_moderate_nesting_parses_but_never_matches():
    nested = "[" * 500 + "]" * 500
    text = f'<think>a</think><tool_call>\n{{"name": "get_time", "arguments": {{"tz": {nested}}}}}\n</tool_call>'
    r = score(text, _task([("get_time", {"tz": "CET"})]))
    check(r)
    assert (r.format, r.param_name, r.param_value, r.correct) == (1.0, 1.0, 0.0, 0.0)


def test_adversarial_inputs_below_the_limit_are_fast():
    many_calls = "<think>a</think><tool_call>\n" + '{"name": "get_weather"}\n' * 2500 + "</tool_call>"
    long_digits = '<think>a</think><tool_call>\n{"name": "get_time", "arguments": {"tz": ' + "7" * 5000 + "}}\n</tool_call>"
    surrogates = '<think>\ud800</think><tool_call>\n{"name": "get_time", "arguments": {"tz": "\\udfff"}}\n</tool_call>'
    tags = "<think>" + '<example>{"name": "get_time"}</example>' * 1500 + "</think><response>x</response>"
    t8 = _task([("get_weather", {"city": str(i)}) for i in range(8)])
    t0 = time.perf_counter()
    for text in (many_calls, long_digits, surrogates, tags):
        assert len(text) <= 65536
        for t in (*TASKS, t8):
            check(score(text, t))
    assert time.perf_counter() - t0 < 2.0
    assert score(long_digits, TASKS[1]) == ZERO   # the 5000-digit integer makes the line invalid
    assert score(tags, TASKS[2]).exemplar == 0.0      # valid examples, but no analysis anywhere
    r = score(many_calls, t8)
    assert (r.format, r.tool_name, r.param_name, r.param_value) == (1.0, 8 / 2500, 0.0, 0.0)
