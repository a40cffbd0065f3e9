"""BFCL's single-turn categories, offline, scored by BFCL's own AST checker (bfcl-eval package).

In: category names. Out: BfclEntry records (a Task to prompt with, plus BFCL's raw function docs
and possible answers); `score_entry` decodes a completion in our format into BFCL's
`[{name: {arg: value}}]` and checks it; `aggregate` combines category accuracies as BFCL v4 does.
Nothing is written into the repository: BFCL's project root is pointed at a temp directory.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import types
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from toolexpander.eval import EvalError
from toolexpander.rewards import parse_completion
from toolexpander.types import Answer, Message, Task, ToolCall, Tool

NON_LIVE = ("simple_python", "simple_java", "simple_javascript", "multiple", "parallel",
            "parallel_multiple", "irrelevance")
LIVE = ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple",
        "live_irrelevance", "live_relevance")
CATEGORIES = NON_LIVE + LIVE
ALIASES = {"all": CATEGORIES, "non_live": NON_LIVE, "live": LIVE}
# Our row in the checker's model table. It only decides whether '.' in a function name was
# rewritten to '_' by the model's API; our JSON format keeps names exactly as given.
MODEL_NAME = "toolexpander"

# BFCL v4 leaderboard aggregation (eval_runner_helper.generate_leaderboard_csv), single-turn part.
# "overall" is BFCL's weighted total restricted to its single-turn parts: non-live, live and
# irrelevance weigh 10/10/10 there (multi-turn 30 and agentic 40 are not run), i.e. equally.
GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "non_live_simple": ("unweighted", ("simple_python", "simple_java", "simple_javascript")),
    "non_live": ("unweighted", ("non_live_simple", "multiple", "parallel", "parallel_multiple")),
    "live": ("weighted", ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple")),
    "irrelevance_total": ("unweighted", ("irrelevance", "live_irrelevance")),
    "overall": ("unweighted", ("non_live", "live", "irrelevance_total")),
}


def is_relevance(category: str) -> bool:
    """(Ir)relevance categories have no possible answer: only whether a call was made counts."""
    return "relevance" in category


@cache
def _bfcl() -> tuple[Any, Any, Any]:
    """(bfcl_eval.utils, the ast_checker module, the Language enum), imported once."""
    # Importing bfcl_eval.utils creates result/, score/ and lock directories under its project root.
    os.environ.setdefault("BFCL_PROJECT_ROOT", str(Path(tempfile.gettempdir()) / "toolexpander-bfcl"))
    import bfcl_eval.utils as utils
    from bfcl_eval.constants.enums import Language

    return utils, _import_checker(), Language


def _import_checker():
    """ast_checker reads one thing from bfcl_eval.constants.model_config: MODEL_CONFIG_MAPPING, in
    convert_func_name. That module imports the client SDK of every model BFCL supports (openai,
    anthropic, cohere, mistralai, boto3, tree_sitter, qwen_agent, ...). While ast_checker is
    imported, a stand-in holding only our row takes its place; it is removed right after."""
    name, config = "bfcl_eval.eval_checker.ast_eval.ast_checker", "bfcl_eval.constants.model_config"
    if name not in sys.modules:
        stand_in = None
        if config not in sys.modules:
            stand_in = types.ModuleType(config)
            stand_in.MODEL_CONFIG_MAPPING = {}
            sys.modules[config] = stand_in
        try:
            importlib.import_module(name)
        finally:
            if stand_in is not None and sys.modules.get(config) is stand_in:
                del sys.modules[config]
    checker = sys.modules[name]
    checker.MODEL_CONFIG_MAPPING.setdefault(MODEL_NAME, types.SimpleNamespace(underscore_to_dot=False))
    return checker


def expand_categories(names: list[str] | None) -> list[str]:
    """Category names (or the aliases all / non_live / live) -> BFCL categories, in BFCL's order."""
    if not names:
        return list(CATEGORIES)
    wanted: set[str] = set()
    for name in names:
        if name in ALIASES:
            wanted.update(ALIASES[name])
        elif name in CATEGORIES:
            wanted.add(name)
        else:
            raise EvalError(f"unknown BFCL category {name!r}; choose from {', '.join(CATEGORIES)} "
                            f"or {', '.join(ALIASES)} (multi-turn and agentic need BFCL's live "
                            "environments and are not run here)")
    return [c for c in CATEGORIES if c in wanted]


# ---------------------------------------------------------------------------------------------
# BFCL function docs -> our Tool schema


def json_schema(prop: dict) -> dict:
    """A BFCL parameter description with JSON-schema types (BFCL's GORILLA_TO_OPENAPI mapping,
    unknown -> string as BFCL does); the original spelling is kept in `x-original-type`."""
    from bfcl_eval.constants.type_mappings import GORILLA_TO_OPENAPI

    out = dict(prop)
    original = prop.get("type")
    if isinstance(original, str):
        out["type"] = GORILLA_TO_OPENAPI.get(original, "string")
        if out["type"] != original:
            out["x-original-type"] = original
    if isinstance(prop.get("properties"), dict):
        out["properties"] = {k: json_schema(v) for k, v in prop["properties"].items()}
    if isinstance(prop.get("items"), dict):
        out["items"] = json_schema(prop["items"])
    return out


def to_tool(function: dict) -> Tool:
    params = function.get("parameters") or {}
    schema = {**json_schema(params), "type": "object"}   # BFCL writes "dict" here
    schema.pop("x-original-type", None)
    schema.setdefault("properties", {})
    return Tool(name=function["name"], description=function.get("description", ""), parameters=schema)


def _first_answer(possible: list[dict]) -> Answer:
    """The first acceptable value of every argument ("" marks an optional one left out). Only our
    reward columns use it; BFCL's checker, not this, decides validity."""
    calls = []
    for call in possible:
        (name, options), = call.items()
        args = {}
        for arg, values in options.items():
            chosen = [v for v in values if v != ""]
            if chosen:
                args[arg] = chosen[0]
        calls.append(ToolCall(name=name, arguments=args))
    return Answer(tool_calls=calls)


@dataclass(frozen=True)
class BfclEntry:
    category: str
    task: Task                           # what the model sees: BFCL's generation-time docs, as JSON schema
    functions: list[dict]                # BFCL's raw docs (no language hint): what the checker reads
    possible_answer: list[dict] | None   # [{name: {arg: [acceptable values]}}]; None for (ir)relevance

    @property
    def id(self) -> str:
        return self.task.id


def _entry(category: str, prompt: dict, raw: dict, possible: list[dict] | None) -> BfclEntry:
    turns = prompt["question"][0]   # single-turn categories: one turn (a list of messages)
    messages = [Message(role=m["role"], content=m["content"]) for m in turns]
    tools = [to_tool(f) for f in prompt["function"]]
    if possible is None:
        answer = Answer()
        subtask = "no_call" if "irrelevance" in category else "single"
    else:
        answer = _first_answer(possible)
        subtask = "single" if len(answer.tool_calls) == 1 else "parallel"
    task = Task(id=prompt["id"], source="bfcl", subtask=subtask, tools=tools, messages=messages,
                answer=answer, meta={"bfcl_category": category})
    return BfclEntry(category, task, raw["function"], possible)


def load_entries(categories: list[str], limit: int | None = None) -> list[BfclEntry]:
    """The first `limit` entries of each category, from the installed bfcl-eval package data."""
    utils, _, _ = _bfcl()
    entries = []
    for category in categories:
        prompts = utils.load_dataset_entry(category, include_prereq=False)
        raws = utils.load_dataset_entry(category, include_prereq=False,
                                        include_language_specific_hint=False)
        answers = {} if is_relevance(category) else {
            a["id"]: a["ground_truth"] for a in utils.load_ground_truth_entry(category)}
        for prompt, raw in list(zip(prompts, raws))[:limit]:
            if not is_relevance(category) and prompt["id"] not in answers:
                raise EvalError(f"BFCL {category}: no possible answer for {prompt['id']}")
            entries.append(_entry(category, prompt, raw, answers.get(prompt["id"])))
    return entries


# ---------------------------------------------------------------------------------------------
# Decoding and scoring


def decode(text: str) -> list[dict] | None:
    """Our completion -> BFCL's `[{name: {arg: value}}]`: [] when it holds no <tool_call> block,
    None when the block does not parse (BFCL's "decoder failed")."""
    parsed = parse_completion(text)
    if not parsed.has_tool_call_block:
        return []
    if not parsed.calls_ok:
        return None
    return [{name: args} for name, args in parsed.calls]


def score_entry(entry: BfclEntry, text: str) -> dict:
    """{"decoded", "valid", "error_type", "error"} for one completion, as BFCL's eval runner judges it."""
    utils, checker, Language = _bfcl()
    decoded = decode(text)
    if is_relevance(entry.category):
        # BFCL: a decode failure or an empty decode means "no call".
        called = decoded is not None and not utils.is_empty_output(decoded)
        valid = not called if "irrelevance" in entry.category else called
        error_type = None if valid else (
            "irrelevance_error:decoder_success" if "irrelevance" in entry.category
            else "relevance_error:decoder_failed")
        return {"decoded": decoded, "valid": valid, "error_type": error_type, "error": None}
    if decoded is None:
        return {"decoded": None, "valid": False, "error_type": "ast_decoder:decoder_failed",
                "error": "the <tool_call> block does not parse"}
    language = (Language.JAVA if utils.is_java(entry.category)
                else Language.JAVASCRIPT if utils.is_js(entry.category) else Language.PYTHON)
    try:
        result = checker.ast_checker(entry.functions, decoded, entry.possible_answer, language,
                                     entry.category, MODEL_NAME)
    except Exception as e:  # untrusted output can trip the checker (e.g. a str where a list goes)
        return {"decoded": decoded, "valid": False, "error_type": f"checker_error:{type(e).__name__}",
                "error": str(e)[:500]}
    error = result.get("error") or []
    return {"decoded": decoded, "valid": bool(result["valid"]),
            "error_type": None if result["valid"] else result.get("error_type"),
            "error": "; ".join(map(str, error))[:500] or None}


def aggregate(counts: dict[str, tuple[int, int]]) -> dict[str, float]:
    """BFCL v4's group scores from per-category (correct, total).

    BFCL counts a category that was not run as 0 (and shows the group as N/A); here a group is
    averaged over the members that were run and left out when none was (the runner lists the
    missing categories). With every category run in full the numbers equal BFCL's."""
    scores: dict[str, tuple[float, int]] = {
        c: (correct / total, total) for c, (correct, total) in counts.items() if total > 0}
    groups: dict[str, float] = {}
    for name, (kind, members) in GROUPS.items():
        parts = [scores[m] for m in members if m in scores]
        if not parts:
            continue
        n = sum(count for _, count in parts)
        if kind == "weighted":
            accuracy = sum(acc * count for acc, count in parts) / n
        else:
            accuracy = sum(acc for acc, _ in parts) / len(parts)
        scores[name] = (accuracy, n)
        groups[name] = accuracy
    return groups
