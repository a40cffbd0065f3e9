"""A learning-benchmark run's directory, read back: its learning.json, eval JSONs, metrics and rollout
dumps, turned into the rows and sections of LEARNING.md (write_report). bench/learning.py makes the runs;
bench/learning_report.py, learning_goals.py and learning_plots.py turn rows into text and PNGs."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections import Counter
from pathlib import Path

from bench import learning_goals, learning_plots
from bench import learning_report as report
from bench.common import REPO, machine


# Shown in LEARNING.md's protocol line; the whole resolved config is in every run directory.
SETTINGS = ("model.dtype", "data.subset", "data.subset_mix", "data.max_answer_tokens", "sft.rows", "sft.epochs",
            "sft.lr", "sft.max_prompt_tokens", "rollout.n", "rollout.temperature", "rollout.max_tokens",
            "sampler.batch_prompts", "sampler.max_draw_rounds", "sampler.curriculum_base", "sampler.tau",
            "sampler.demo_pool", "sampler.demo_format",
            "learner.lr", "learner.warmup_steps", "learner.lr_gamma", "learner.mini_batches", "learner.kl_coef")
# The settings whose default is not what a run made before the field existed did: that behaviour.
BEFORE_FIELD = {"sampler.demo_pool": "prompts"}


def settings(cfg) -> dict:
    out = {}
    for key in SETTINGS:
        section, field = key.split(".")
        out[key] = getattr(getattr(cfg, section), field)
    return out


def arm_dir(arm: str) -> str:
    return f"arm_{arm}"


def load_eval(run_dir: Path, stage: str, suite: str) -> dict | None:
    """RUN_DIR/eval/<stage>_<suite>.json (its summary and every entry), or None before it is written."""
    path = run_dir / "eval" / f"{stage}_{suite}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def load_summary(run_dir: Path, stage: str, suite: str) -> dict | None:
    result = load_eval(run_dir, stage, suite)
    return result["summary"] if result is not None else None


def answered_right(result: dict | None) -> dict[str, bool] | None:
    """{question id: answered right} from an eval JSON (load_eval's result) of greedy answers; None for none."""
    return None if result is None else {e["id"]: e.get("error_type") is None for e in result["entries"]}


def rates_of(result: dict | None) -> dict[str, float] | None:
    """{question id: share of its sampled completions right} from a sampled eval JSON; None for none."""
    return {e["id"]: float(e["valid"]) for e in result["entries"]} if result else None


def same_warm_start(run_dir: Path, other: Path) -> bool:
    """Whether two runs trained their arms from the same SFT model, as far as their evaluations can tell:
    the SFT model's greedy ToolRL answers are the same text, question by question."""
    mine, theirs = load_eval(run_dir, "sft", "toolrl"), load_eval(other, "sft", "toolrl")
    return bool(mine and theirs) and ([(e["id"], e["raw"]) for e in mine["entries"]]
                                      == [(e["id"], e["raw"]) for e in theirs["entries"]])


def greedy_right(run_dir: Path, stage: str) -> dict[str, bool] | None:
    """answered_right of a stage's greedy answers to the training prompts (eval/<stage>_train.json); None
    where the stage was not asked them."""
    return answered_right(load_eval(run_dir, stage, "train"))


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _relative(path: Path | str) -> str:
    path = Path(os.path.abspath(path))  # not resolve(): .venv/bin/python is a symlink out of the repo
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"`{sha}`" + (" with uncommitted changes" if dirty else "")


def run_settings(run_dir: Path, state: dict) -> dict:
    """learning.json's settings, plus the ones it did not record yet, read from a stage's resolved config;
    a field that config predates gets the behaviour before it: its default (data.subset_mix fitting,
    data.max_answer_tokens None) or BEFORE_FIELD's value. In SETTINGS order."""
    from toolexpander.config import Config

    found = dict(state.get("settings") or {})
    # an arm's config first: the SFT one may come from a cache trained by an older run (and its config)
    for stage in (*(arm_dir(a) for a in state["arms"]), "sft"):
        path = run_dir / stage / "config.json"
        if path.is_file():
            resolved, defaults = json.loads(path.read_text()), Config.model_validate({})
            for key in SETTINGS:
                section, field = key.split(".")
                before = BEFORE_FIELD.get(key, getattr(getattr(defaults, section), field))
                if key not in found:
                    found[key] = resolved.get(section, {}).get(field, before)
            break
    return {key: found[key] for key in SETTINGS if key in found}


def no_call_answers(entries: list[dict]) -> float | None:
    """The share of the ToolRL test's single and parallel questions whose greedy answer opens with the
    no-call thought ("<think>No tool call is needed ..."), from an eval JSON's entries (raw outputs): the
    drift toward no-call answers that the (d) arm showed, which `format` and `correct` do not isolate."""
    calls = [e for e in entries if e.get("category") in report.CALL_SUBTASKS]   # 71 of the 80 ToolRL questions
    return sum(str(e.get("raw", "")).lstrip().startswith(report.NO_CALL_OPENING) for e in calls) / len(calls) if calls else None


def stage_rows(run_dir: Path, state: dict) -> tuple[list[dict], dict]:
    stages = {}
    for stage in ("base", "sft", *state["arms"]):
        metrics = run_dir / arm_dir(stage) / "metrics.jsonl"
        # one read of each file: the summaries, and the entries for the columns and the per-question answers
        result, bfcl = load_eval(run_dir, stage, "toolrl"), load_eval(run_dir, stage, "bfcl")
        entries = result.get("entries", []) if result else []
        toolrl = result and {**result["summary"], "no_call_answers": no_call_answers(entries),
                             "failures": report.failure_counts(entries)}
        stages[stage] = {"toolrl": toolrl, "bfcl": bfcl and bfcl["summary"],
                         "train": load_summary(run_dir, stage, "train"),
                         "answers": {"toolrl": answered_right(result), "bfcl": answered_right(bfcl)},
                         "metrics": read_metrics(metrics) if report.split_stage(stage)[0] in report.ARMS else None}
    seeds = state.get("seeds") or [state.get("seed")]
    return report.table_rows(stages, seeds[0] if len(seeds) > 1 else None), stages


def group_outcomes(run_dir: Path, stage: str, dumps: str = "step") -> dict | None:
    """The groups an arm trained on, from its dumped learner batches (every step, dumps "step"), or every
    group it generated (dumps "generated": also those without reward spread, which the learner batches
    leave out): {"bare" | "demos": {subtask: [solved, groups]}}, "demos" for the groups whose prompt
    carried demonstrations, solved = at least one correct completion. None for an arm without such dumps."""
    import pyarrow.parquet as pq

    from toolexpander.metrics import group_results

    files = sorted((run_dir / arm_dir(stage) / "rollouts").glob(f"{dumps}_*.parquet"))
    if not files:
        return None
    out: dict = {"bare": {}, "demos": {}}
    for path in files:
        groups = group_results(pq.read_table(path, columns=["group_id", "subtask", "num_demos", "reward_correct"]))
        for g in groups.to_pylist():
            cell = out["demos" if g["demos"] else "bare"].setdefault(g["subtask"], [0, 0])
            cell[0] += g["solved"]
            cell[1] += 1
    return out


def trained_completions(run_dir: Path, stage: str) -> list[tuple[str, list[tuple[str, float]]]] | None:
    """Every group in an arm's dumped learner batches, step by step: (subtask, [(text, total reward)]);
    None for an arm without them."""
    import pyarrow.parquet as pq

    files = sorted((run_dir / arm_dir(stage) / "rollouts").glob("step_*.parquet"))
    if not files:
        return None
    out = []
    for path in files:
        groups: dict[int, tuple[str, list]] = {}
        for r in pq.read_table(path, columns=["group_id", "subtask", "text", "reward_total"]).to_pylist():
            groups.setdefault(r["group_id"], (r["subtask"], []))[1].append((r["text"], r["reward_total"]))
        out += [groups[g] for g in sorted(groups)]
    return out


def prompt_visits(run_dir: Path, stage: str) -> dict[str, list[float]] | None:
    """Each prompt's correct rate at every draw without demonstrations, in step order, from the scalar
    rows the arm generated (rollouts/generated_N.parquet: every group, also those without reward spread,
    which the learner batches leave out): {task_id: [share of the group's completions correct, ...]}.
    None for an arm that did not keep them (runs before 2026-12-05)."""
    import pyarrow.parquet as pq

    files = sorted((run_dir / arm_dir(stage) / "rollouts").glob("generated_*.parquet"))
    if not files:
        return None
    out: dict[str, list[float]] = {}
    for path in files:
        groups: dict[int, list] = {}
        for r in pq.read_table(path, columns=["group_id", "task_id", "num_demos", "reward_correct"]).to_pylist():
            if not r["num_demos"]:
                groups.setdefault(r["group_id"], [r["task_id"], []])[1].append(r["reward_correct"] > 0)
        for group_id in sorted(groups):
            task_id, correct = groups[group_id]
            out.setdefault(task_id, []).append(sum(correct) / len(correct))
    return out


def start_fields(run_dir: Path, arm: str) -> dict[str, str]:
    """The KEY=VALUE fields of an arm's start event ("mode=local tasks=64 too_long=1097 mix=..."); {}
    before it ran."""
    events = read_metrics(run_dir / arm_dir(arm) / "events.jsonl")
    start = next((e["message"] for e in events if e.get("event") == "start"), "")
    return dict(part.split("=", 1) for part in start.split() if "=" in part)


def arm_prompts(run_dir: Path, arms: list[str]) -> str:
    """What each arm's start event says it trained on ("tasks=25 too_long=39"), arms with the same
    numbers together: e.g. "(a) (b) 25 prompts, 39 rows left out as too long; (c) 30 prompts, ..."."""
    said: dict[str, list[str]] = {}
    for arm in arms:
        fields = start_fields(run_dir, arm)
        if "tasks" in fields:
            text = f"{fields['tasks']} prompts, {fields.get('too_long', '?')} rows left out as too long"
            if fields.get("long_answer", "0") != "0":
                text += f" and {fields['long_answer']} for an answer longer than data.max_answer_tokens"
            said.setdefault(text, []).append(f"({arm})")
    return "; ".join(f"{' '.join(names)} {text}" for text, names in said.items())


def training_mix(run_dir: Path, stages: list[str]) -> dict[int, str]:
    """{train.seed: "no_call 10, single 30, ..."}: the prompts per sub-task the arms of each seed drew
    from, as the arm's start event logged it (`mix=`); for a run older than that field, recomputed from
    the arm's resolved config (the same tokenizer and seeded draw the run used)."""
    from toolexpander.config import Config
    from toolexpander.trainset import subtask_mix, training_tasks

    out: dict[int, str] = {}
    for stage in stages:
        path = run_dir / arm_dir(stage) / "config.json"
        cfg = Config.model_validate(json.loads(path.read_text())) if path.is_file() else None
        if cfg is None or cfg.train.seed in out:
            continue
        mix = start_fields(run_dir, stage).get("mix")
        if mix is None:
            tasks = training_tasks(cfg, Path(cfg.model.path))[0]
            mix = subtask_mix(tasks)
        out[cfg.train.seed] = mix.replace(":", " ").replace(",", ", ")
    return out


def eval_mix(run_dir: Path) -> str:
    """The ToolRL test set's questions per category, from the SFT (or base) evaluation's summary."""
    summary = load_summary(run_dir, "sft", "toolrl") or load_summary(run_dir, "base", "toolrl") or {}
    return ", ".join(f"{name} {c['n']}" for name, c in (summary.get("categories") or {}).items())


def answer_ceiling(model_path: Path, max_tokens: int, limit: int | None = None) -> str:
    """"11 of the 80 (parallel 6, multi_turn 5)": the ToolRL test questions (the first `limit`) whose reference
    answer, as the completion SFT teaches (toolexpander.trainset.answer_tokens), is longer than the
    evaluation's max_tokens: no model reaches them at that budget."""
    from toolexpander.data import load_tasks
    from toolexpander.eval.runner import DATA_FILES
    from toolexpander.trainset import answer_tokens, load_tokenizer
    from toolexpander.types import SUBTASKS

    tokenizer = load_tokenizer(model_path)
    tasks = load_tasks(REPO / "data" / DATA_FILES["toolrl"])[:limit]
    over = Counter(t.subtask for t in tasks if answer_tokens(tokenizer, t) > max_tokens)
    detail = ", ".join(f"{name} {over[name]}" for name in SUBTASKS if over[name])
    return f"{sum(over.values())} of the {len(tasks)}" + (f" ({detail})" if detail else "")


def run_machine() -> dict:
    """When and where a run starts, kept in its learning.json: a report written later (--report-only,
    --resume) names the run's date and machine, not only its own."""
    m = machine()
    return {"started": m["date"], "machine": {"cpu": m["cpu"], "cores": m["nproc"], "isa": m["isa"]}}


def started_from_name(run_dir: Path) -> str | None:
    """A run from before learning.json kept its start: the time bench.learning stamped into its directory's
    name (runs/learn-YYYYMMDD-HHMMSS, the machine's local time); None for another name."""
    m = re.fullmatch(r"learn-(\d{4})(\d{2})(\d{2})-(\d{2})(\d{2})(\d{2})", run_dir.name)
    return None if m is None else "{}-{}-{}T{}:{}:{} (local time, from the run directory's name)".format(*m.groups())


def write_report(run_dir: Path, out: Path, compare: Path | None = None) -> Path:
    """LEARNING.md and the PNGs under out/, from RUN_DIR's learning.json, eval JSONs and metrics;
    with `compare`, an earlier run's directory, a table of both runs' evaluations stage by stage."""
    state = json.loads((run_dir / "learning.json").read_text())
    rows, stages = stage_rows(run_dir, state)
    state["settings"] = mine = run_settings(run_dir, state)
    state["run_dir"] = _relative(run_dir)   # where it is now, seen from this checkout
    state["started"] = state.get("started") or started_from_name(run_dir)
    arms = [r for r in rows if r["arm"] in report.ARMS]
    sampled = {r["stage"]: load_eval(run_dir, r["stage"], "sampled") for r in rows}   # one read: rates and summaries
    rates = {stage: rates_of(result) for stage, result in sampled.items()}
    borrowed = None
    if compare is not None:
        other = json.loads((compare / "learning.json").read_text())
        theirs = run_settings(compare, other)
        differences = {k: (mine.get(k, "-"), theirs.get(k, "-")) for k in SETTINGS if mine.get(k) != theirs.get(k)}
        other_rows = stage_rows(compare, other)[0]
        state["compare"] = report.markdown_compare(rows, other_rows, other, differences)
        if same_warm_start(run_dir, compare):   # its (a) arms are plain GRPO from this run's SFT model
            borrowed = {r["seed"]: group_outcomes(compare, r["stage"], "generated")
                        for r in other_rows if r["arm"] == "a"}
            paired = report.markdown_paired_rates(report.cross_run_comparisons(
                rows, other_rows, rates, {r["stage"]: rates_of(load_eval(compare, r["stage"], "sampled"))
                                          for r in other_rows}))
            if paired:
                state["compare"] += ("\n\nBoth runs trained from the same SFT model (its greedy ToolRL answers are "
                                     "the same text), so their sampled answers pair question by question "
                                     "(mean@K, as \"Sampled answers\" explains):\n\n" + paired)
    metrics = {arm: s["metrics"] for arm, s in stages.items() if s["metrics"]}
    plots = learning_plots.write_plots(rows, metrics, out / "learning")
    m = machine()
    state["prompts"] = arm_prompts(run_dir, state["arms"])
    state["groups"] = report.markdown_groups({r["label"]: group_outcomes(run_dir, r["stage"]) for r in arms})
    generated = {r["stage"]: group_outcomes(run_dir, r["stage"], "generated") for r in arms}
    mix = report.all_fail_mix(arms, generated, borrowed)
    state["all_fail_mix"] = report.markdown_all_fail_mix(rows, mix, generated)
    sft_right = greedy_right(run_dir, "sft")
    visits = {r["stage"]: prompt_visits(run_dir, r["stage"]) for r in arms}
    right = {r["stage"]: greedy_right(run_dir, r["stage"]) for r in arms}
    summaries = {stage: None if v is None else report.revisit_summary(v, sft_right, right[stage])
                 for stage, v in visits.items()}
    state["revisits"] = report.markdown_revisits({r["label"]: summaries[r["stage"]] for r in arms})
    revisits = {stage: s for stage, s in summaries.items()
                if s is not None and report.split_stage(stage)[1] is None}   # the first seed's arms
    answers = {stage: s["answers"] for stage, s in stages.items()}
    state["paired"] = report.markdown_paired(report.paired_comparisons(rows, answers, ("toolrl", "bfcl")))
    by_suite = {stage: {"sampled": r} for stage, r in rates.items()}
    first = next((x["summary"] for x in sampled.values() if x), None)
    if first is not None:   # as the evaluations ran (a run that was resumed with --eval-samples)
        state["eval_samples"], state["eval_temperature"] = first["samples"], first.get("temperature")
    state["sampled"] = report.markdown_sampled(
        {r["label"]: {**sampled[r["stage"]]["summary"],
                      "no_call_opening": no_call_answers([{"category": e["category"], "raw": c["raw"]}
                                                          for e in sampled[r["stage"]]["entries"]
                                                          for c in e.get("completions", [])])}
         for r in rows if sampled[r["stage"]]},
        report.paired_comparisons(rows, by_suite, ("sampled",), report.paired_rates)
        + report.seed_mean_comparisons(rows, by_suite, "sampled"))
    completions = {r["stage"]: trained_completions(run_dir, r["stage"]) for r in arms}
    state["no_call_push"] = report.markdown_no_call_push(
        arms, {stage: None if c is None else report.no_call_push(c) for stage, c in completions.items()})
    state["mix"], state["test_mix"] = training_mix(run_dir, state["arms"]), eval_mix(run_dir)
    from toolexpander.config import load_config, parse_overrides

    model = REPO / load_config(REPO / state["config"], parse_overrides(state["overrides"])).model.path  # its tokenizer
    state["ceiling"] = answer_ceiling(model, state["max_tokens"], state.get("toolrl_limit")) if model.is_dir() else None
    info = {**state, "date": m["date"], "cpu": m["cpu"], "cores": m["nproc"], "loadavg": m["loadavg_1m"],
            "isa": m["isa"]}
    info["goals"] = learning_goals.markdown_goals(
        learning_goals.goals(rows, state["ceiling"], revisits, mix)
        + [learning_goals.wall_time_goal(state["stages"], state.get("resumed"), state.get("forked_from"))])
    text = report.document(info, rows, [str(p.relative_to(out)) for p in plots])
    (out / "LEARNING.md").write_text(text)
    return out / "LEARNING.md"
