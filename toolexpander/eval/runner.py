"""Evaluate a model on BFCL, the ToolRL test set or ACEBench: greedy completions from a RolloutWorker
(in-process; during training its Ray actor handle or the RolloutGroup), scored, printed as a BFCL-style table and
written as JSON `{"summary": {...}, "entries": [...]}`.

    toolexpander eval --model models/smollm2-135m --suite bfcl --categories non_live --limit 50 --out /tmp/eval.json

Scores: BFCL with BFCL's own AST checker (eval/bfcl.py); ToolRL and ACEBench with our reward's
`correct` (format + the exact call multiset, or a reply for a no-call task), plus the other
reward dimensions as means. `limit` keeps the first N questions of every category.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pyarrow as pa

from toolexpander.eval import EvalError, bfcl
from toolexpander.types import SUBTASKS, PromptRequest, Task

SUITES = ("bfcl", "toolrl", "acebench")
DATA_FILES = {"toolrl": "tool_calls_eval.jsonl", "acebench": "acebench_eval.jsonl"}
REWARD_MEANS = ("format", "tool_name", "param_name", "param_value")  # reported as means per category
BATCH = 128               # prompts per generate call: big enough for vLLM's batching, small for progress
MAX_CONTEXT = 8192        # cap on the in-process engine's context (prompts here are < 7k tokens)

GenerateFn = Callable[[list[PromptRequest]], "pa.RecordBatch | pa.Table | None"]


@dataclass(frozen=True)
class EvalItem:
    """A ToolRL / ACEBench question: its task and the category it is reported under."""

    category: str
    task: Task

    @property
    def id(self) -> str:
        return self.task.id


Item = EvalItem | bfcl.BfclEntry


def _data_path(suite: str) -> Path:
    """data/<file> under the working directory, else next to the package (editable install)."""
    name = DATA_FILES[suite]
    for base in (Path("data"), Path(__file__).resolve().parents[2] / "data"):
        if (base / name).is_file():
            return base / name
    raise EvalError(f"{suite}: data/{name} not found (run from the repository root)")


def load_items(suite: str, categories: list[str] | None = None, limit: int | None = None,
               data: str | Path | None = None) -> list[Item]:
    """The questions of a suite, grouped by category in a fixed order, the first `limit` of each.
    data: a task file (the training schema, JSONL or Parquet) in place of the ToolRL or ACEBench file,
    e.g. the prompts a run trained on, scored the same way."""
    if suite not in SUITES:
        raise EvalError(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}")
    if limit is not None and limit < 1:
        raise EvalError(f"--limit must be at least 1, got {limit}")
    if suite == "bfcl":
        if data is not None:
            raise EvalError(f"--data {data}: BFCL reads its own questions; --data is for toolrl and acebench")
        return bfcl.load_entries(bfcl.expand_categories(categories), limit)
    from toolexpander.data import load_tasks

    if data is not None and not Path(data).is_file():
        raise EvalError(f"--data {data}: no such file")
    tasks = load_tasks(data if data is not None else _data_path(suite))
    if suite == "toolrl":
        items = [EvalItem(t.subtask, t) for t in tasks]
        order = [c for c in SUBTASKS if any(i.category == c for i in items)]
    else:
        items = [EvalItem(str(t.meta.get("acebench_category", t.subtask)), t) for t in tasks]
        order = list(dict.fromkeys(i.category for i in items))
    unknown = sorted(set(categories or ()) - set(order))
    if unknown:
        raise EvalError(f"{suite}: unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                        f"{', '.join(unknown)}; choose from {', '.join(order)}")
    selected = []
    for category in order:
        if not categories or category in categories:
            selected += [i for i in items if i.category == category][:limit]
    return selected


# ---------------------------------------------------------------------------------------------
# Scoring one completion


def _reward_error(rewards: dict[str, float]) -> str | None:
    """The first reward dimension that fell short, as the entry's error type."""
    if rewards["correct"] >= 1.0:
        return None
    for dim in ("format", "tool_name", "param_name", "param_value"):
        if rewards[dim] < 1.0:
            return f"reward:{dim}"
    return "reward:calls_mismatch"


def _score(item: Item, row: dict) -> dict:
    entry = {"id": item.id, "category": item.category, "raw": row["text"],
             "finish_reason": row["finish_reason"]}
    if isinstance(item, bfcl.BfclEntry):
        return {**entry, **bfcl.score_entry(item, row["text"])}
    rewards = {d: float(row[f"reward_{d}"]) for d in (*REWARD_MEANS, "exemplar", "correct")}
    return {**entry, "decoded": bfcl.decode(row["text"]), "valid": rewards["correct"] >= 1.0,
            "error_type": _reward_error(rewards), "rewards": rewards}


def _too_long(item: Item) -> dict:
    return {"id": item.id, "category": item.category, "raw": "", "finish_reason": "",
            "decoded": None, "valid": False, "error_type": "prompt_too_long"}


# ---------------------------------------------------------------------------------------------
# Generation + scoring, shared by the CLI (in-process worker) and training (Ray)


def _sampled(item: Item, rows: list[dict]) -> dict:
    """A question answered by several sampled completions: each scored as a greedy answer is (under
    "completions"), `correct` of `samples` right, and `valid` the fraction right, so that summarize's
    accuracy is mean@k; ToolRL/ACEBench `rewards` are the completions' means."""
    scored = [_score(item, row) for row in rows]
    right = sum(bool(s["valid"]) for s in scored)
    entry = {"id": item.id, "category": item.category, "samples": len(scored), "correct": right,
             "valid": right / len(scored), "error_type": None if right == len(scored) else "sampled:some_wrong",
             "completions": [{k: v for k, v in s.items() if k not in ("id", "category")} for s in scored]}
    if scored and "rewards" in scored[0]:
        entry["rewards"] = {d: sum(s["rewards"][d] for s in scored) / len(scored) for d in scored[0]["rewards"]}
    return entry


def evaluate_with(generate_fn: GenerateFn, items: Sequence[Item], suite: str,
                  fits: Callable[[Task], bool] | None = None, batch: int = BATCH,
                  log: Callable[[str], None] = print, samples: int | None = None) -> dict:
    """Greedy completions for `items` via generate_fn(requests) -> RecordBatch or Table
    (ROLLOUT_SCHEMA, one row per request), scored. A prompt for which `fits` is False is not
    generated and counts as a failure ("prompt_too_long").
    samples: generate_fn samples that many completions per request instead (rows sharing its
    group_id); each question's entry is _sampled()'s, and the summary adds mean@k and pass@k.
    Returns {"summary": ..., "entries": [...]} in item order."""
    start = time.perf_counter()
    entries: list[dict | None] = [None] * len(items)
    todo = []
    for i, item in enumerate(items):
        if fits is None or fits(item.task):
            todo.append(i)
        else:
            entries[i] = _too_long(item)
    for lo in range(0, len(todo), batch):
        chunk = todo[lo:lo + batch]
        requests = [PromptRequest(task=items[i].task, demo_round=0, group_id=i) for i in chunk]
        generated = generate_fn(requests)
        rows: dict[int, list[dict]] = {}
        for r in (generated.to_pylist() if generated is not None else []):
            rows.setdefault(r["group_id"], []).append(r)
        want = samples or 1
        lost = [items[i].id for i in chunk if len(rows.get(i, ())) != want]
        if lost:  # e.g. a rollout worker died: no number rather than a wrong one
            raise EvalError(f"{suite}: {want} completion(s) per question expected, another number came back "
                            f"for {len(lost)} question(s), first {lost[0]}")
        for i in chunk:
            entries[i] = _score(items[i], rows[i][0]) if samples is None else _sampled(items[i], rows[i])
        log(f"{suite}: {lo + len(chunk)}/{len(todo)} generated ({time.perf_counter() - start:.0f} s)")
    summary = summarize(suite, entries)
    if samples is not None:
        summary["samples"] = samples
        summary["pass_at_k"] = {c: sum(e.get("correct", 0) > 0 for e in entries if e["category"] == c)
                                / row["n"] for c, row in summary["categories"].items()}
        summary["pass_at_k"]["overall"] = sum(e.get("correct", 0) > 0 for e in entries) / len(entries) if entries else None
    summary["seconds"] = round(time.perf_counter() - start, 1)
    return {"summary": summary, "entries": entries}


def summarize(suite: str, entries: Sequence[dict]) -> dict:
    """Per-category N / correct / accuracy; BFCL's groups, or our reward means; `overall`."""
    by_category: dict[str, list[dict]] = {}
    for e in entries:
        by_category.setdefault(e["category"], []).append(e)
    categories = {}
    for name, group in by_category.items():
        correct = sum(e["valid"] for e in group)
        row = {"n": len(group), "correct": correct, "accuracy": correct / len(group)}
        if suite != "bfcl":
            row.update(_reward_means(group))
        categories[name] = row
    summary: dict = {"suite": suite, "n": len(entries), "categories": categories,
                     "prompt_too_long": sum(e["error_type"] == "prompt_too_long" for e in entries)}
    if suite == "bfcl":
        summary["groups"] = bfcl.aggregate({c: (r["correct"], r["n"]) for c, r in categories.items()})
        summary["overall"] = summary["groups"].get("overall")
        summary["missing"] = [c for c in bfcl.CATEGORIES if c not in categories]
    else:  # every question counts once (micro average), as ToolRL reports its test accuracy
        summary["overall"] = sum(e["valid"] for e in entries) / len(entries) if entries else None
        summary["means"] = _reward_means(entries)
    return summary


def _reward_means(entries: Sequence[dict]) -> dict[str, float]:
    """Mean of each reward dimension; exemplar as the share of completions that earned it.
    A prompt that was too long to generate counts as 0 everywhere."""
    rewards = [e.get("rewards") or {} for e in entries]
    n = max(len(rewards), 1)
    means = {d: sum(r.get(d, 0.0) for r in rewards) / n for d in REWARD_MEANS}
    means["exemplar_rate"] = sum(r.get("exemplar", 0.0) > 0 for r in rewards) / n
    return means


def eval_metrics(summary: dict, suite: str) -> dict[str, float]:
    """`eval/<suite>/<category>` accuracies, BFCL's groups, and `eval/<suite>/overall`."""
    out = {f"eval/{suite}/{c}": float(r["accuracy"]) for c, r in summary["categories"].items()}
    out.update({f"eval/{suite}/{g}": float(v) for g, v in (summary.get("groups") or {}).items()})
    if summary.get("overall") is not None:
        out[f"eval/{suite}/overall"] = float(summary["overall"])
    return out


def format_table(summary: dict) -> str:
    """category / N / accuracy rows (plus reward means for ToolRL and ACEBench), then the groups."""
    suite, reward = summary["suite"], summary["suite"] != "bfcl"
    extra = "".join(f"{d:>14}" for d in (*REWARD_MEANS, "exemplar_rate")) if reward else ""
    width = max([len(c) for c in summary["categories"]] + [24])
    lines = [f"{'category':<{width}} {'N':>6} {'accuracy':>9}{extra}"]
    for name, row in summary["categories"].items():
        means = "".join(f"{row[d]:>14.3f}" for d in (*REWARD_MEANS, "exemplar_rate")) if reward else ""
        lines.append(f"{name:<{width}} {row['n']:>6} {row['accuracy']:>9.2%}{means}")
    for name, value in (summary.get("groups") or {}).items():
        if name != "overall":
            lines.append(f"{name:<{width}} {'':>6} {value:>9.2%}")
    if summary.get("overall") is not None:
        lines.append(f"{suite + ' overall':<{width}} {summary['n']:>6} {summary['overall']:>9.2%}")
    if summary.get("pass_at_k"):
        k = summary["samples"]
        lines.append(f"pass@{k} (a question with a right completion among its {k}): "
                     + ", ".join(f"{c} {v:.2%}" for c, v in summary["pass_at_k"].items()))
    if summary.get("missing"):
        lines.append(f"(not run, left out of the groups: {', '.join(summary['missing'])})")
    if summary.get("prompt_too_long"):
        lines.append(f"({summary['prompt_too_long']} prompt(s) longer than the context counted as failures)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The entry point


def _context_length(model: Path) -> int:
    config = json.loads((model / "config.json").read_text())
    return min(int(config.get("max_position_embeddings") or 4096), MAX_CONTEXT)


@lru_cache(maxsize=2)
def _tokenizer(path: str):
    """For a Ray worker (whose tokenizer stays in its process): loaded once per model directory."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _generate_fn(worker, max_tokens: int, samples: int | None = None, seed: int = 0) -> GenerateFn:
    """worker: a RolloutWorker, its Ray actor handle, or a RolloutGroup (all its workers in
    parallel); each answers generate(requests, step_seed, ...) with (rows, stats, ...).
    Greedy, or `samples` completions per request at the worker's temperature (seeded by `seed`)."""
    kwargs = ({"step_seed": 0, "greedy": True, "max_tokens": max_tokens} if samples is None else
              {"step_seed": seed, "greedy": False, "n": samples, "max_tokens": max_tokens})
    if hasattr(getattr(worker, "generate", None), "remote"):  # a Ray actor handle
        import ray

        return lambda requests: ray.get(worker.generate.remote(requests, **kwargs))[0]
    return lambda requests: worker.generate(requests, **kwargs)[0]


def run_eval(model: str, suite: str, categories: list[str] | None, limit: int | None, out: str,
             max_tokens: int = 256, worker=None, max_model_len: int | None = None, label: str | None = None,
             data: str | None = None, samples: int | None = None, temperature: float | None = None,
             seed: int = 0) -> dict:
    """Evaluate `model` (a local model directory) on `suite`; write `out` (JSON); return the summary.

    worker: a RolloutWorker, its Ray actor handle or a RolloutGroup to generate with; by default
    one is built in-process with a context of min(model max, 8192). max_model_len: the worker's
    context, to leave out prompts that do not fit; read from a worker or group, else pass the
    training config's rollout.max_model_len for an actor handle (default 4096). label: what the
    printed table and the summary call the model (default: `model`), e.g. a training run's policy.
    data: a task file to ask instead of the suite's own (toolrl, acebench; see load_items).
    samples: instead of one greedy answer, that many sampled completions per question, at `temperature`
    (the in-process worker's; default the rollout default, 1.0) with seed `seed`; accuracy is then
    mean@k (the mean over questions of the share of its completions that are right), with pass@k beside it."""
    path = Path(model)
    if not (path / "config.json").is_file():
        raise EvalError(f"--model {model}: not a model directory (no config.json)")
    if max_tokens < 1:
        raise EvalError(f"--max-tokens must be at least 1, got {max_tokens}")
    if samples is not None and samples < 1:
        raise EvalError(f"--samples must be at least 1, got {samples}")
    if temperature is not None and samples is None:
        raise EvalError(f"--temperature {temperature}: greedy decoding has no temperature; add --samples K")
    if temperature is not None and worker is not None:
        raise EvalError("temperature: a given worker samples at its own rollout.temperature")
    if temperature is not None and not 0.0 < temperature <= 2.0:
        raise EvalError(f"--temperature must be in (0, 2], got {temperature}")
    items = load_items(suite, categories, limit, data)
    if not items:
        raise EvalError(f"{suite}: no questions selected")
    if worker is None:
        from toolexpander.actors.rollout import RolloutWorker
        from toolexpander.config import RewardConfig, RolloutConfig

        max_model_len = _context_length(path)
        rollout = RolloutConfig(max_tokens=max_tokens, max_model_len=max_model_len,
                                **({} if temperature is None else {"temperature": temperature})).model_dump()
        worker = RolloutWorker(0, str(path), rollout, RewardConfig().model_dump())
    tokenizer = getattr(worker, "tokenizer", None)
    if tokenizer is None:
        tokenizer = _tokenizer(str(path.resolve()))
    cfg = getattr(worker, "cfg", None)   # a RolloutWorker holds its RolloutConfig, a RolloutGroup the whole Config
    rollout_cfg = getattr(cfg, "rollout", cfg)   # None for an actor handle
    if max_model_len is None:
        max_model_len = getattr(rollout_cfg, "max_model_len", 4096)
    from toolexpander.prompt import prompt_ids

    def fits(task: Task) -> bool:
        return len(prompt_ids(tokenizer, task)) + max_tokens <= max_model_len

    report = evaluate_with(_generate_fn(worker, max_tokens, samples, seed), items, suite, fits=fits,
                           samples=samples)
    sampling = {} if samples is None else {"temperature": getattr(rollout_cfg, "temperature", temperature),
                                           "seed": seed}
    summary = {"model": label or str(model), "limit": limit, "max_tokens": max_tokens,
               **({"data": str(data)} if data is not None else {}), **sampling, **report["summary"]}
    print(f"\n{suite}{f' ({data})' if data is not None else ''} on {label or model}"
          + (f" (first {limit} per category)" if limit else "")
          + (f", {samples} samples per question at temperature {sampling['temperature']}: accuracy is mean@"
             f"{samples}" if samples is not None else ""))
    print(format_table(summary))
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({"summary": summary, "entries": report["entries"]},
                                   ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {out_path}")
    return summary
