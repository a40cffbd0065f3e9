"""Every reward dimension on hand-made tasks and completions, with exact numbers."""

import importlib
import json

import pytest

from toolexpander.rewards import ZERO, RewardVector, score, score_batch, score_group
from toolexpander.types import REWARD_DIMS, Task

score_module = importlib.import_module("toolexpander.rewards.score")  # `rewards.score` is the function

TOOLS = ["get_weather", "get_time", "search"]


def task(calls=(), response=None, messages=None) -> Task:
    return Task.model_validate({
        "id": "t",
        "tools": [{"name": n} for n in TOOLS],
        "messages": messages or [{"role": "user", "content": "hi"}],
        "answer": {"tool_calls": [{"name": n, "arguments": a} for n, a in calls], "response": response},
    })


def completion(*calls, response=None, think="ok", key="arguments") -> str:
    text = f"<think>{think}</think>\n"
    if calls:
        lines = "\n".join(json.dumps({"name": n, key: a}) for n, a in calls)
        text += f"<tool_call>\n{lines}\n</tool_call>\n"
    if response is not None:
        text += f"<response>{response}</response>"
    return text


def dims(r: RewardVector) -> tuple:
    return r.format, r.tool_name, r.param_name, r.param_value, r.exemplar, r.correct


PARIS = ("get_weather", {"city": "Paris", "days": 3})
ROME = ("get_weather", {"city": "Rome", "days": 3})
CET = ("get_time", {"tz": "CET"})


def test_full_match():
    r = score(completion(PARIS), task([PARIS]))
    assert dims(r) == (1.0, 1.0, 1.0, 1.0, 0.0, 1.0)
    assert r.total == 5.0


def test_wrong_name():
    r = score(completion(("get_time", {"city": "Paris", "days": 3})), task([PARIS]))
    assert dims(r) == (1.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    assert r.total == 1.0


def test_missing_argument():
    r = score(completion(("get_weather", {"city": "Paris"})), task([PARIS]))
    assert dims(r) == (1.0, 1.0, 0.5, 0.5, 0.0, 0.0)
    assert r.total == 3.0


def test_extra_argument():
    r = score(completion(("get_weather", {"city": "Paris", "days": 3, "unit": "C"})), task([PARIS]))
    assert dims(r) == (1.0, 1.0, 2 / 3, 2 / 3, 0.0, 0.0)


def test_wrong_value():
    r = score(completion(("get_weather", {"city": "London", "days": 3})), task([PARIS]))
    assert dims(r) == (1.0, 1.0, 1.0, 0.5, 0.0, 0.0)


def test_parallel_calls_in_another_order_are_correct():
    r = score(completion(CET, ROME, PARIS), task([PARIS, ROME, CET]))
    assert dims(r) == (1.0, 1.0, 1.0, 1.0, 0.0, 1.0)


def test_pairing_prefers_the_exact_match():
    # Rome(days=3) must pair with expected Rome, not with Paris, so one pair scores 1 and one 0.5.
    r = score(completion(ROME, ("get_weather", {"city": "Oslo", "days": 3})), task([PARIS, ROME]))
    assert dims(r) == (1.0, 1.0, 1.0, 0.75, 0.0, 0.0)


def test_two_expected_one_produced():
    r = score(completion(PARIS), task([PARIS, CET]))
    assert dims(r) == (1.0, 0.5, 0.5, 0.5, 0.0, 0.0)
    assert r.total == 2.5
    r = score(completion(("get_weather", {"city": "Paris"})), task([PARIS, CET]))
    assert dims(r) == (1.0, 0.5, 0.25, 0.25, 0.0, 0.0)


def test_one_expected_two_produced():
    r = score(completion(PARIS, PARIS), task([PARIS]))
    assert dims(r) == (1.0, 0.5, 0.5, 0.5, 0.0, 0.0)


def test_no_call_task():
    t = task(response="Which city?")
    assert dims(score(completion(response="Where?"), t)) == (1.0, 1.0, 1.0, 1.0, 0.0, 1.0)
    # answered with a call: the <tool_call> block breaks the format, and a call was not expected
    r = score(completion(PARIS, response="Where?"), t)
    assert dims(r) == (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    # a bare think block is no answer at all: silence earns nothing on a no-call task
    assert dims(score("<think>hm</think>", t)) == (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    assert dims(score("garbage", t)) == (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def test_call_task_answered_with_text():
    r = score(completion(response="It is sunny."), task([PARIS]))
    assert dims(r) == (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def test_call_task_may_also_respond():
    r = score(completion(PARIS, response="Checking."), task([PARIS]))
    assert dims(r) == (1.0, 1.0, 1.0, 1.0, 0.0, 1.0)


def test_multi_turn_task():
    history = [
        {"role": "user", "content": "Weather in Paris, then the time?"},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]},
        {"role": "tool", "content": '{"temp": 20}'},
    ]
    t = task([CET], messages=history)
    assert t.subtask == "multi_turn"
    assert dims(score(completion(CET), t)) == (1.0, 1.0, 1.0, 1.0, 0.0, 1.0)
    # repeating the call already made in the history is wrong
    assert dims(score(completion(("get_weather", {"city": "Paris"})), t)) == (1.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    reply = task(response="It is 20 degrees.", messages=history)
    assert dims(score(completion(response="20 degrees"), reply)) == (1.0, 1.0, 1.0, 1.0, 0.0, 1.0)


def test_parameters_key_equals_arguments_key():
    t = task([PARIS, CET])
    assert score(completion(PARIS, CET, key="parameters"), t).correct == 1.0
    mixed = ('<think>a</think><tool_call>\n{"name": "get_time", "parameters": {"tz": "CET"}}\n'
             '{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n</tool_call>')
    assert score(mixed, t).correct == 1.0
    assert score('<think>a</think><tool_call>{"name": "get_time"}</tool_call>', task([("get_time", {})])).correct == 1.0


def test_value_normalisation():
    expected = ("search", {"page": "1", "limit": 10, "price": 1.5, "flag": True, "q": "Paris",
                           "tags": ["A", 2], "filter": {"min": "0.5"}})
    same = ("search", {"page": 1, "limit": "10.0", "price": "1.50", "flag": "TRUE ", "q": " paris ",
                       "tags": ["a", "2"], "filter": {"min": 0.5}})
    assert dims(score(completion(same), task([expected]))) == (1.0, 1.0, 1.0, 1.0, 0.0, 1.0)
    off = dict(same[1], price="1.51", flag=1)   # 1 is a number, not a bool
    assert dims(score(completion(("search", off)), task([expected]))) == (1.0, 1.0, 1.0, 5 / 7, 0.0, 0.0)


def test_value_normalisation_guards():
    huge = "9" * 5000
    t = task([("search", {"q": huge, "n": 10**30})])
    r = score(completion(("search", {"q": huge, "n": "1" + "0" * 30})), t)
    assert r.correct == 1.0                              # long strings compare as strings
    r = score(completion(("search", {"q": "1e999", "n": 1e30})), t)   # 1e30 != 10**30 exactly
    assert (r.param_name, r.param_value, r.correct) == (1.0, 0.0, 0.0)
    nan = '<think>a</think><tool_call>\n{"name": "search", "arguments": {"q": NaN}}\n</tool_call>'
    assert score(nan, t).format == 0.0


EXAMPLE = '<example>{"name": "get_time", "arguments": {"tz": "UTC"}}</example>'


def test_exemplar():
    t = task([PARIS])
    with_example = score(completion(PARIS, think=f"{EXAMPLE} This call has the wrong tool."), t)
    assert dims(with_example) == (1.0, 1.0, 1.0, 1.0, 0.01, 1.0)
    assert with_example.total == 5.01
    wrapped = EXAMPLE.replace("<example>", "<example><tool_call>").replace("</example>", "</tool_call></example>")
    assert score(completion(PARIS, think=f"{wrapped} so weather it is"), t).exemplar == 0.01
    params = '<example>{"name": "search", "parameters": {}}</example>'
    assert score(completion(PARIS, think=f"first {params} then analysis of it"), t).exemplar == 0.01


def test_exemplar_absent_or_invalid():
    t = task([PARIS])
    for think in [
        "no example here at all",
        f"{EXAMPLE}",                                                   # no analysis
        f"{EXAMPLE} too short",                                         # 2 words
        f"{EXAMPLE} -- ... !!",                                         # no words
        '<example>{"name": "unknown_tool", "arguments": {}}</example> this is analysis',
        "<example>get_time(tz='UTC')</example> this is analysis",        # not JSON
        '<example>{"name": "get_time", "arguments": {}} this is analysis',  # unclosed
    ]:
        assert score(completion(PARIS, think=think), t).exemplar == 0.0, think
    # format 0 (text after the blocks): no bonus even with a valid example
    broken = completion(PARIS, think=f"{EXAMPLE} a fine analysis") + " trailing"
    assert dims(score(broken, t)) == (0.0, 1.0, 1.0, 1.0, 0.0, 0.0)


def test_format_failures_keep_partial_credit_but_not_correct():
    t = task([PARIS])
    good = completion(PARIS)
    for text in [
        good.replace("<think>ok</think>", ""),                     # missing think
        good.replace("<think>ok</think>", "<think>a</think><think>b</think>"),  # duplicate tag
        "<think>ok</think><response>x</response>" + good[len("<think>ok</think>"):],  # wrong order
        "Sure! " + good,                                           # text outside tags
        good.replace("</think>", ""),                              # unbalanced
    ]:
        r = score(text, t)
        assert (r.format, r.correct, r.exemplar) == (0.0, 0.0, 0.0), text
    r = score("Sure! " + good, t)
    assert (r.tool_name, r.param_name, r.param_value) == (1.0, 1.0, 1.0)


def test_weights_change_total():
    t = task([PARIS])
    text = completion(("get_weather", {"city": "Paris"}))
    assert score(text, t).total == 3.0
    r = score(text, t, weights={"format": 0.5, "param_value": 2.0, "correct": 10.0})
    assert dims(r) == (1.0, 1.0, 0.5, 0.5, 0.0, 0.0)
    assert r.total == 1.5
    r = score(completion(PARIS, think=f"{EXAMPLE} wrong tool there"), t, weights={"exemplar": 1.0}, exemplar_bonus=0.5)
    assert (r.exemplar, r.total) == (0.5, 0.5)
    with pytest.raises(ValueError, match="unknown reward weight"):
        score(text, t, weights={"formatt": 1.0})


def test_zero_and_as_dict():
    assert ZERO.as_dict() == {d: 0.0 for d in (*REWARD_DIMS, "total")}
    assert list(score(completion(PARIS), task([PARIS])).as_dict()) == [*REWARD_DIMS, "total"]


def test_long_or_non_string_completion_scores_zero():
    t = task([PARIS])
    good = completion(PARIS)
    assert score(good, t, max_chars=len(good)).correct == 1.0
    assert score(good, t, max_chars=len(good) - 1) == ZERO
    assert score(None, t) == ZERO
    assert score(b"<think>", t) == ZERO


def test_score_batch_matches_score():
    t = task([PARIS, CET])
    texts = [completion(PARIS, CET), completion(PARIS), "garbage", completion(response="x")]
    assert score_batch(texts, t) == [score(c, t) for c in texts]
    assert score_batch([], t) == []


def test_a_scorer_exception_scores_zero_is_counted_and_strict_reraises(monkeypatch):
    t = task([PARIS])
    texts = [completion(PARIS), "boom", completion(ROME)]
    expected = [score(texts[0], t), ZERO, score(texts[2], t)]
    real = score_module._dims

    def dims_or_raise(text, exp, bonus):
        if text == "boom":
            raise KeyError("scorer bug")
        return real(text, exp, bonus)

    monkeypatch.setattr(score_module, "_dims", dims_or_raise)
    scored = score_group(texts, t)                        # does not raise
    assert scored.rewards == expected and expected[0].total == 5.0
    assert [(i, type(e), str(e)) for i, e in scored.errors] == [(1, KeyError, "'scorer bug'")]
    assert score_batch(texts, t) == expected and score("boom", t) == ZERO
    assert score_group(texts[:1], t).errors == []
    with pytest.raises(KeyError, match="scorer bug"):
        score_batch(texts, t, strict=True)
