"""The reward vector of a completion against a Task (DESIGN.md "Rewards").

Completion text + Task in, RewardVector out. Model output is untrusted: scoring it never raises; a
completion whose scoring fails anyway scores ZERO and is counted (score_group's `errors`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from toolexpander.rewards.parse import CALL, CALL_END, EXAMPLE, example_spans, parse_call, parse_completion
from toolexpander.types import REWARD_DIMS, Task


@dataclass(frozen=True)
class RewardVector:
    format: float        # {0, 1} tags in order, once each, matching what the answer needs
    tool_name: float     # [0, 1] multiset overlap of called vs expected names
    param_name: float    # [0, 1] per matched call, Jaccard overlap of argument names
    param_value: float   # [0, 1] per matched call, share of argument values equal to expected
    exemplar: float      # {0, exemplar_bonus} a self-made example + analysis in the think block
    correct: float       # {0, 1} format and the exact call multiset (or a reply to a no-call task)
    total: float         # sum over the dimensions of weight * value

    def as_dict(self) -> dict[str, float]:
        return {d: getattr(self, d) for d in (*REWARD_DIMS, "total")}


ZERO = RewardVector(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?", re.ASCII)
_MAX_NUMBER_CHARS = 64   # longer digit strings stay strings (no int() on huge inputs)
_MAX_DEPTH = 32          # deeper values never compare equal (no recursion limit to hit)
_MIN_ANALYSIS_WORDS = 3


def normalise(value: Any, depth: int = 0) -> Any:
    """A hashable canonical form: numbers by value across int/float/numeric strings, bools and
    "true"/"false", strings stripped and case-folded, lists and dicts recursively."""
    if depth > _MAX_DEPTH:
        return ("deep", object())  # unique: equal to nothing, not even itself
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int):
        return ("n", value)
    if isinstance(value, float):
        # int and float compare and hash alike by value (1 == 1.0), so no conversion is needed.
        return ("n", value) if math.isfinite(value) else ("s", str(value))
    if isinstance(value, str):
        s = value.strip().casefold()
        if s in ("true", "false"):
            return ("b", s == "true")
        if len(s) <= _MAX_NUMBER_CHARS and _NUMBER.fullmatch(s):
            number = float(s) if ("." in s or "e" in s) else int(s)
            if math.isfinite(number):
                return ("n", number)
        return ("s", s)
    if value is None:
        return ("null",)
    if isinstance(value, (list, tuple)):
        return ("l", tuple(normalise(v, depth + 1) for v in value))
    if isinstance(value, dict):
        items = ((str(k), normalise(v, depth + 1)) for k, v in value.items())
        return ("d", tuple(sorted(items, key=lambda kv: kv[0])))
    return ("o", repr(value))


@dataclass(frozen=True)
class _Call:
    name: str
    args: dict[str, Any]   # argument name -> normalised value

    @property
    def key(self) -> tuple:
        return self.name, tuple(sorted(self.args.items(), key=lambda kv: kv[0]))


def _normalise_call(name: str, arguments: Mapping[str, Any]) -> _Call:
    return _Call(name, {str(k): normalise(v) for k, v in arguments.items()})


@dataclass(frozen=True)
class _Expected:
    """A task's ground truth, normalised once per task (score_batch reuses it)."""

    calls: list[_Call]
    tool_names: frozenset[str]


def _expected(task: Task) -> _Expected:
    calls = [_normalise_call(c.name, c.arguments) for c in task.answer.tool_calls]
    return _Expected(calls, frozenset(t.name for t in task.tools))


def _pair_scores(pred: _Call, exp: _Call) -> tuple[float, float]:
    """(argument-name Jaccard, share of the name union whose expected value is matched)."""
    union = pred.args.keys() | exp.args.keys()
    if not union:
        return 1.0, 1.0
    names = len(pred.args.keys() & exp.args.keys()) / len(union)
    values = sum(1 for k, v in exp.args.items() if k in pred.args and pred.args[k] == v) / len(union)
    return names, values


def _match(pred: list[_Call], exp: list[_Call]) -> list[tuple[float, float]]:
    """Pair predicted with expected calls of the same name, greedily: exact matches first (so an
    exact multiset pairs perfectly), then the best name + value score. Returns each pair's scores."""
    by_name: dict[str, list[int]] = {}
    for j, e in enumerate(exp):
        by_name.setdefault(e.name, []).append(j)
    exp_keys = [e.key for e in exp]
    candidates = []
    for i, p in enumerate(pred):
        js = by_name.get(p.name)
        if not js:
            continue
        p_key = p.key
        for j in js:
            names, values = _pair_scores(p, exp[j])
            candidates.append((p_key == exp_keys[j], names + values, i, j, names, values))
    candidates.sort(key=lambda c: (not c[0], -c[1], c[2], c[3]))
    used_p, used_e, pairs = set(), set(), []
    for _, _, i, j, names, values in candidates:
        if i not in used_p and j not in used_e:
            used_p.add(i)
            used_e.add(j)
            pairs.append((names, values))
    return pairs


def _has_exemplar(think: str, tool_names: frozenset[str]) -> bool:
    """An <example> holding one call to a given tool (optionally wrapped in <tool_call>), followed
    inside the think block by at least 3 words of analysis."""
    for cstart, cend, end in example_spans(think):
        content = think[cstart:cend].strip()
        if content.startswith(CALL) and content.endswith(CALL_END) and len(content) >= len(CALL + CALL_END):
            content = content[len(CALL):-len(CALL_END)].strip()
        call = parse_call(content)
        if call is None or call[0] not in tool_names:
            continue
        nxt = think.find(EXAMPLE, end)
        analysis = think[end:nxt if nxt >= 0 else len(think)]
        words = sum(1 for w in analysis.split() if any(ch.isalnum() for ch in w))
        if words >= _MIN_ANALYSIS_WORDS:
            return True
    return False


def _dims(completion: str, exp: _Expected, exemplar_bonus: float) -> dict[str, float]:
    parsed = parse_completion(completion)
    if exp.calls:   # the answer needs a call: a <tool_call> block, <response> optional
        fmt = parsed.format_ok and parsed.has_tool_call_block
    else:           # the answer needs no call: a <response> block and no <tool_call>
        fmt = parsed.format_ok and parsed.has_response_block and not parsed.has_tool_call_block
    # Partial credit counts the lines that parsed even when the block is malformed (format is 0 then).
    pred = [_normalise_call(name, args) for name, args in parsed.calls or []]
    n = max(len(pred), len(exp.calls))
    if n == 0:
        # No call expected and none made: full marks only for answering in words; silence or
        # garbage earns nothing, so a no-call task cannot be farmed by emitting nothing.
        answered = parsed.has_response_block and not parsed.has_tool_call_block
        tool_name = param_name = param_value = float(answered)
    else:
        overlap = Counter(p.name for p in pred) & Counter(e.name for e in exp.calls)
        pairs = _match(pred, exp.calls)
        tool_name = sum(overlap.values()) / n
        param_name = sum(names for names, _ in pairs) / n
        param_value = sum(values for _, values in pairs) / n
    # For a no-call task both multisets are empty and format already demands a <response> block.
    correct = fmt and Counter(p.key for p in pred) == Counter(e.key for e in exp.calls)
    exemplar = fmt and parsed.think is not None and _has_exemplar(parsed.think, exp.tool_names)
    return {
        "format": float(fmt),
        "tool_name": tool_name,
        "param_name": param_name,
        "param_value": param_value,
        "exemplar": exemplar_bonus if exemplar else 0.0,
        "correct": float(correct),
    }


def _weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    if weights is None:
        return {d: 1.0 for d in REWARD_DIMS}
    unknown = set(weights) - set(REWARD_DIMS)
    if unknown:
        raise ValueError(f"unknown reward weight(s) {sorted(unknown)}; dimensions are {REWARD_DIMS}")
    return {d: float(weights.get(d, 0.0)) for d in REWARD_DIMS}


def _score(completion: str, exp: _Expected, w: dict[str, float], exemplar_bonus: float,
           max_chars: int) -> RewardVector:
    if not isinstance(completion, str) or len(completion) > max_chars:
        return ZERO
    dims = _dims(completion, exp, exemplar_bonus)
    return RewardVector(**dims, total=sum(w[d] * dims[d] for d in REWARD_DIMS))


@dataclass(frozen=True)
class GroupScore:
    rewards: list[RewardVector]             # one per completion; ZERO where scoring raised
    errors: list[tuple[int, Exception]]     # (completion index, exception) of each that raised


def score_group(completions: Sequence[str], task: Task, weights: Mapping[str, float] | None = None,
                exemplar_bonus: float = 0.01, max_chars: int = 65536, strict: bool = False) -> GroupScore:
    """Score every completion of one task (the ground truth is normalised once). A completion whose
    scoring raises gets ZERO and is listed in `errors` (a scorer bug must show up in the logs, not
    silently zero the reward); strict=True re-raises instead (tests)."""
    exp, w = _expected(task), _weights(weights)
    rewards, errors = [], []
    for i, c in enumerate(completions):
        try:
            rewards.append(_score(c, exp, w, exemplar_bonus, max_chars))
        except Exception as e:  # untrusted model output: scores 0, counted, never crashes a worker
            if strict:
                raise
            rewards.append(ZERO)
            errors.append((i, e))
    return GroupScore(rewards, errors)


def score(completion: str, task: Task, weights: Mapping[str, float] | None = None,
          exemplar_bonus: float = 0.01, max_chars: int = 65536, strict: bool = False) -> RewardVector:
    """Score one completion against task.answer (and task.tools for the exemplar).

    Raises only on bad weights (or, with strict=True, when scoring itself fails); any completion
    string gets a vector (ZERO when unparseable in bounded time or longer than max_chars).
    """
    return score_group([completion], task, weights, exemplar_bonus, max_chars, strict).rewards[0]


def score_batch(completions: Sequence[str], task: Task, weights: Mapping[str, float] | None = None,
                exemplar_bonus: float = 0.01, max_chars: int = 65536,
                strict: bool = False) -> list[RewardVector]:
    """score() for each completion of one task; score_group also says which ones raised."""
    return score_group(completions, task, weights, exemplar_bonus, max_chars, strict).rewards
