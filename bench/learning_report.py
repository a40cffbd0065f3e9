"""bench/LEARNING.md's text from one learning-benchmark run: pure functions over eval summaries
(the `summary` of a `toolexpander eval` JSON) and training metrics rows (metrics.jsonl records). The goals
table comes from learning_goals, the plots from learning_plots.

Nothing here runs a model: bench/learning.py gathers the inputs; tests feed hand-made ones.
Values are reported as measured: no smoothing, no best-of, a missing value is shown as "-".
"""

from __future__ import annotations

import math
from pathlib import Path

# The GRPO arms (a-d by default, e on request), all from the SFT model with the same seed and steps; only
# these switches differ.
ARMS: dict[str, tuple[str, list[str]]] = {
    "a": ("plain GRPO", ["--sampler.hard_rounds", "false", "--sampler.priority", "uniform",
                         "--sampler.curriculum", "false", "--reward.exemplar_bonus", "0"]),
    "b": ("+ hard sampling (ToolExpander)", ["--sampler.hard_rounds", "true", "--sampler.priority", "uniform",
                                             "--sampler.curriculum", "false", "--reward.exemplar_bonus", "0"]),
    "c": ("+ DSCL", ["--sampler.hard_rounds", "false", "--sampler.priority", "reward_stats",
                     "--sampler.curriculum", "true", "--reward.exemplar_bonus", "0"]),
    "d": ("full method (both papers)", ["--sampler.hard_rounds", "true", "--sampler.priority", "reward_stats",
                                        "--sampler.curriculum", "true", "--reward.exemplar_bonus", "0.01"]),
    # (a) with rollouts generated one step ahead while the learner trains (issue #16): the same
    # learning within noise is its goal, with the behaviour-policy correction doing its work.
    "e": ("plain GRPO, rollouts one step ahead", ["--sampler.hard_rounds", "false", "--sampler.priority", "uniform",
                                                 "--sampler.curriculum", "false", "--reward.exemplar_bonus", "0",
                                                 "--train.max_staleness", "1"]),
}
STAGE_LABELS = {"base": "base", "sft": "SFT", **{k: f"({k}) {label}" for k, (label, _) in ARMS.items()}}
SEED_MARK = "-s"  # an arm trained with another than the run's first seed: stage "a-s1" is (a) with seed 1
REWARD_DIMS = ("format", "tool_name", "param_name", "param_value", "exemplar", "correct")
EDGE = 3  # "first / last 3 steps"


# ---- stages and seeds ----------------------------------------------------------------------------
def stage_id(arm: str, seed: int, first_seed: int) -> str:
    """The stage of one arm trained with one seed: the arm's letter for the run's first seed (the seed
    the SFT warm start was trained with), "<arm>-s<seed>" for every other."""
    return arm if seed == first_seed else f"{arm}{SEED_MARK}{seed}"


def split_stage(stage: str) -> tuple[str, int | None]:
    """(arm or stage name, seed); seed None for the run's first seed and for base/SFT."""
    arm, mark, seed = stage.partition(SEED_MARK)
    return (arm, int(seed)) if mark and arm in ARMS and seed.isdigit() else (stage, None)


def label(stage: str, seed: int | None = None) -> str:
    """A stage's label; with several seeds in a run, each arm row names its seed."""
    arm, own = split_stage(stage)
    text = STAGE_LABELS.get(arm, arm)
    seed = own if own is not None else seed
    return f"{text}, seed {seed}" if arm in ARMS and seed is not None else text


# ---- numbers -------------------------------------------------------------------------------------
def _finite(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric, by step; a re-logged step keeps its last record; null skipped."""
    by_step = {r["step"]: r for r in rows if isinstance(r.get("step"), int)}
    points = [(s, _finite(by_step[s].get(key))) for s in sorted(by_step)]
    return [s for s, v in points if v is not None], [v for _, v in points if v is not None]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def train_summary(rows: list[dict]) -> dict:
    """The training columns: `correct` over the first and last EDGE steps, the all-fail share over
    the whole run and its last EDGE steps (plain means of the logged values), and the share of seen
    prompts left unsolved at the last step (None for runs that did not log it)."""
    _, correct = series(rows, "reward/correct_mean")
    _, all_fail = series(rows, "sampler/all_fail_share")
    _, unsolved = series(rows, "sampler/unsolved_share")
    return {"steps": len({r["step"] for r in rows if isinstance(r.get("step"), int)}),
            "correct_first": _mean(correct[:EDGE]), "correct_last": _mean(correct[-EDGE:]),
            "all_fail_mean": _mean(all_fail), "all_fail_last": _mean(all_fail[-EDGE:]),
            "unsolved_end": unsolved[-1] if unsolved else None,
            "lag_mean": _mean(series(rows, "rollout/policy_lag_mean")[1]),
            "mismatch_k3_mean": _mean(series(rows, "rollout/mismatch_k3_kl")[1]),
            "no_call_share_mean": _mean(series(rows, "sampler/share/no_call")[1]),
            "demo_rate_mean": _mean(series(rows, "sampler/demo_rate")[1]),
            "demo_solved_mean": _mean(series(rows, "sampler/demo_solved_share")[1]),
            **budget_summary(rows)}


BUDGET_KEYS = ("updates", "groups_trained", "zero_signal_mean", "entropy_mean")


def budget_summary(rows: list[dict]) -> dict:
    """How much an arm trained: optimizer updates applied and groups in its learner batches (sums
    over the steps), the mean share of generated groups without reward spread (dropped before the
    learner) and the mean token entropy of the trained completions."""
    updates = series(rows, "learner/applied")[1] or series(rows, "learner/updates")[1][-1:]
    groups = series(rows, "learner/groups")[1]
    return {"updates": sum(updates) if updates else None, "groups_trained": sum(groups) if groups else None,
            "zero_signal_mean": _mean(series(rows, "sampler/zero_signal_share")[1]),
            "entropy_mean": _mean(series(rows, "learner/entropy")[1])}


def eval_columns(toolrl: dict | None, bfcl: dict | None, train: dict | None = None) -> dict:
    """The eval columns from the eval summaries: ToolRL correct and format (fractions), BFCL accuracy
    per category, BFCL's non-live group (the overall of a non-live-only run) and its simple group, and
    correct on the training prompts (`train`: the same scoring as ToolRL's, on the prompts GRPO drew from)."""
    out: dict = {"toolrl_correct": None, "toolrl_format": None, "toolrl_no_call": None, "toolrl_n": None,
                 "toolrl_failures": None, "bfcl": {},
                 "bfcl_non_live": None, "bfcl_simple": None, "bfcl_n": None,
                 "train_prompts_correct": None if train is None else train.get("overall"),
                 "train_prompts_n": None if train is None else train.get("n"),
                 "train_prompts_by_subtask": None if train is None else {
                     c: (r["correct"], r["n"]) for c, r in (train.get("categories") or {}).items()}}
    if toolrl is not None:
        out.update(toolrl_correct=toolrl.get("overall"), toolrl_n=toolrl.get("n"),
                   toolrl_format=(toolrl.get("means") or {}).get("format"),
                   toolrl_no_call=toolrl.get("no_call_answers"), toolrl_failures=toolrl.get("failures"))
    if bfcl is not None:
        groups = bfcl.get("groups") or {}
        out.update(bfcl={c: r["accuracy"] for c, r in bfcl["categories"].items()}, bfcl_n=bfcl.get("n"),
                   bfcl_non_live=groups.get("non_live"), bfcl_simple=groups.get("non_live_simple"))
    return out


def table_rows(stages: dict[str, dict], first_seed: int | None = None) -> list[dict]:
    """stages: name -> {"toolrl": summary | None, "bfcl": summary | None, "metrics": rows | None},
    in table order. One row per stage: its label, eval columns and (for the arms) training columns.
    first_seed: the run's first seed, named in the arm rows' labels when the run has several seeds."""
    rows = []
    for name, s in stages.items():
        arm, seed = split_stage(name)
        row = {"stage": name, "arm": arm, "seed": first_seed if seed is None and arm in ARMS else seed,
               "label": label(name, first_seed), **eval_columns(s.get("toolrl"), s.get("bfcl"), s.get("train"))}
        row.update(train_summary(s["metrics"]) if s.get("metrics") else
                   {"steps": None, "correct_first": None, "correct_last": None,
                    "all_fail_mean": None, "all_fail_last": None, "unsolved_end": None, "lag_mean": None,
                    "mismatch_k3_mean": None, "no_call_share_mean": None, "demo_rate_mean": None,
                    "demo_solved_mean": None, **dict.fromkeys(BUDGET_KEYS)})
        rows.append(row)
    return rows


# Columns averaged over an arm's seeds (seed_means); bfcl's per-category dict is averaged key by key.
MEAN_KEYS = ("toolrl_correct", "toolrl_format", "train_prompts_correct", "bfcl_non_live", "bfcl_simple",
             "correct_first", "correct_last", "all_fail_mean", "all_fail_last", "unsolved_end", "lag_mean",
             "mismatch_k3_mean", "no_call_share_mean", "demo_rate_mean", "demo_solved_mean")


def seed_means(rows: list[dict]) -> list[dict]:
    """One row per stage kind: base and SFT as they are, each arm the plain mean of its seeds' rows
    (a value missing in one seed is left out of that mean; `seeds` lists the seeds averaged, in run
    order, and `per_seed` each seed's row). With one seed per arm the rows come back unchanged in value."""
    out: dict[str, dict] = {}
    for r in rows:
        if r["arm"] not in ARMS:
            out[r["stage"]] = {**r, "seeds": [], "per_seed": [r]}
            continue
        m = out.setdefault(r["arm"], {"stage": r["arm"], "arm": r["arm"], "seed": None,
                                      "label": STAGE_LABELS[r["arm"]], "seeds": [], "per_seed": []})
        m["seeds"].append(r["seed"])
        m["per_seed"].append(r)
    for m in out.values():
        if m["arm"] not in ARMS:
            continue
        each = m["per_seed"]
        for key in MEAN_KEYS:
            m[key] = _mean([r[key] for r in each if r.get(key) is not None])
        m["toolrl_n"] = each[0].get("toolrl_n")
        m["bfcl_n"] = each[0].get("bfcl_n")
        m["steps"] = each[0].get("steps")
        categories = dict.fromkeys(c for r in each for c in r["bfcl"])
        m["bfcl"] = {c: _mean([r["bfcl"][c] for r in each if r["bfcl"].get(c) is not None]) for c in categories}
    return list(out.values())


def several_seeds(rows: list[dict]) -> bool:
    return any(len(m["seeds"]) > 1 for m in seed_means(rows))


# ---- text ----------------------------------------------------------------------------------------
def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _num(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def markdown_table(rows: list[dict]) -> str:
    """The papers'-style table: one row per stage; percentages for evals, means for training."""
    categories = list(dict.fromkeys(c for r in rows for c in r["bfcl"]))
    train = any(r.get("train_prompts_correct") is not None for r in rows)   # runs before it: no column
    head = (["stage", "ToolRL correct %", "ToolRL format %", "ToolRL call questions answered 'No' %"]
            + (["training prompts correct %"] if train else [])
            + [f"BFCL {c} %" for c in categories]
            + ["BFCL non-live %", f"train correct, first {EDGE}", f"train correct, last {EDGE}",
               "all-fail share, run", f"all-fail share, last {EDGE}", "unsolved prompts, end",
               "no_call share of draws, run"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = ([r["label"], _pct(r["toolrl_correct"]), _pct(r["toolrl_format"]), _pct(r["toolrl_no_call"])]
                 + ([_pct(r.get("train_prompts_correct"))] if train else [])
                 + [_pct(r["bfcl"].get(c)) for c in categories]
                 + [_pct(r["bfcl_non_live"]), _num(r["correct_first"]), _num(r["correct_last"]),
                    _num(r["all_fail_mean"]), _num(r["all_fail_last"]), _num(r["unsolved_end"]),
                    _num(r["no_call_share_mean"])])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _table_or_empty(columns: list[str], body: list[list]) -> str:
    """A markdown table with these column names and body rows (cells as strings or numbers); "" when
    there is no body row, so that the section it belongs to is left out."""
    if not body:
        return ""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in cells) + " |" for cells in body])


def markdown_budget(rows: list[dict]) -> str:
    """One row per arm: the training it got (budget_summary); empty without arms."""
    count = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    return _table_or_empty(
        ["stage", "steps", "optimizer updates", "groups trained", "zero-signal share of the groups generated",
         "token entropy of the trained completions, mean"],
        [[r["label"], r["steps"], count(r["updates"]), count(r["groups_trained"]), _num(r["zero_signal_mean"]),
          _num(r["entropy_mean"])] for r in rows if r["arm"] in ARMS and r.get("steps")])


def markdown_train_prompts(rows: list[dict]) -> str:
    """One row per stage asked the training prompts: correct/asked per sub-task and in all; empty when none was."""
    asked = [r for r in rows if r.get("train_prompts_by_subtask")]
    subtasks = list(dict.fromkeys(c for r in asked for c in r["train_prompts_by_subtask"]))
    cell = lambda v: "-" if v is None else f"{v[0]}/{v[1]}"  # noqa: E731
    return _table_or_empty(
        ["stage", *subtasks, "all"],
        [[r["label"], *(cell(r["train_prompts_by_subtask"].get(c)) for c in subtasks),
          cell((sum(v[0] for v in r["train_prompts_by_subtask"].values()),
                sum(v[1] for v in r["train_prompts_by_subtask"].values())))] for r in asked])


# Where a ToolRL answer failed: the eval's error_type, the first reward dimension that fell short.
FAILURE_KINDS = ("correct", "format", "tool_name", "param_name", "param_value", "other")


def failure_counts(entries: list[dict]) -> dict[str, dict[str, int]]:
    """{category: {kind: questions}} from an eval JSON's entries, categories in the file's order: each
    question counted once, as correct or under the first reward dimension its answer fell short on
    (FAILURE_KINDS; "other": every dimension full but the calls still differ, or a prompt too long),
    plus "cut": the wrong answers that stopped at the evaluation's token limit."""
    out: dict[str, dict[str, int]] = {}
    for e in entries:
        cell = out.setdefault(e["category"], {**dict.fromkeys(FAILURE_KINDS, 0), "cut": 0})
        error = e.get("error_type")
        kind = "correct" if error is None else error.removeprefix("reward:")
        cell[kind if kind in FAILURE_KINDS else "other"] += 1
        cell["cut"] += error is not None and e.get("finish_reason") == "length"
    return out


def markdown_failures(rows: list[dict]) -> str:
    """One line per stage and ToolRL category: how its questions failed (failure_counts); empty when no
    row has them."""
    return _table_or_empty(
        ["stage", "category", "questions", "correct", "format wrong", "tool names wrong", "parameter names wrong",
         "values wrong", "other", "wrong and cut at the token limit"],
        [[r["label"], category, sum(cell[k] for k in FAILURE_KINDS), *(cell[k] for k in (*FAILURE_KINDS, "cut"))]
         for r in rows for category, cell in (r.get("toolrl_failures") or {}).items()])


def markdown_groups(outcomes: dict[str, dict | None]) -> str:
    """The groups each arm trained on, without and with demos (hard-sample rounds), and how many had a
    correct completion: whether the demos help. outcomes: stage label -> group_outcomes() (None: no
    rollouts kept; left out). Empty when no arm kept its rollouts."""
    def total(cells: dict) -> tuple[int, int]:
        return sum(c[0] for c in cells.values()), sum(c[1] for c in cells.values())

    def share(solved: int, groups: int) -> str:
        return f"{100 * solved / groups:.1f}" if groups else "-"

    def per_subtask(cells: dict) -> str:
        return ", ".join(f"{sub} {c[0]}/{c[1]}" for sub, c in sorted(cells.items())) or "-"

    body = []
    for name, o in outcomes.items():
        if o is not None:
            bare, demos = total(o["bare"]), total(o["demos"])
            body.append([name, bare[1], share(*bare), per_subtask(o["bare"]), demos[1], share(*demos),
                         per_subtask(o["demos"])])
    return _table_or_empty(["stage", "groups without demos", "solved %", "by sub-task, solved/groups",
                            "groups with demos", "solved %", "by sub-task, solved/groups"], body)


def all_fail_by_subtask(outcome: dict) -> dict[str, list[int]]:
    """{subtask: [all-fail groups, groups]} from a group_outcomes() dict, groups with and without demos
    together (each hard-sample round of a prompt is one more group, as sampler/all_fail_share counts)."""
    out: dict[str, list[int]] = {}
    for cells in (outcome["bare"], outcome["demos"]):
        for subtask, (solved, groups) in cells.items():
            cell = out.setdefault(subtask, [0, 0])
            cell[0] += groups - solved
            cell[1] += groups
    return out


def all_fail_at_mix(fails: dict[str, list[int]], reference: dict[str, list[int]]) -> float | None:
    """The all-fail share an arm would have had with the reference arm's sub-task mix: the sum over
    sub-tasks of the reference's share of groups times the arm's all-fail rate in that sub-task, over the
    sub-tasks both generated groups of (the reference's shares renormalised over them). None when none."""
    common = [s for s, (_, n) in reference.items() if n and fails.get(s, (0, 0))[1]]
    total = sum(reference[s][1] for s in common)
    if not total:
        return None
    return sum(reference[s][1] / total * fails[s][0] / fails[s][1] for s in common)


def all_fail_mix(rows: list[dict], outcomes: dict[str, dict | None],
                 borrowed: dict[int, dict] | None = None) -> dict[str, dict]:
    """Where each arm's all-fail groups come from: stage -> {"fails": all_fail_by_subtask(), "groups",
    "pooled": the all-fail share pooled over its groups, "reference": plain GRPO's (arm (a) with the same
    seed) {"fails", "groups", "pooled", "borrowed"} or None, "at_a_mix": all_fail_at_mix() against it or
    None}. rows: the arms' table rows (with their `seed`); outcomes: stage -> group_outcomes(...,
    "generated") (None: the arm kept no generated groups, left out); borrowed: {seed: group_outcomes()} of
    another run's (a) arms from the same warm start, used where this run has no (a) with that seed."""
    def summary(outcome: dict, is_borrowed: bool = False) -> dict:
        f = all_fail_by_subtask(outcome)
        groups = sum(n for _, n in f.values())
        return {"fails": f, "groups": groups, "pooled": sum(k for k, _ in f.values()) / groups if groups else None,
                "borrowed": is_borrowed}

    own = {r["stage"]: summary(outcomes[r["stage"]]) for r in rows if outcomes.get(r["stage"]) is not None}
    references = {seed: summary(o, True) for seed, o in (borrowed or {}).items() if o is not None}
    references.update({r["seed"]: own[r["stage"]] for r in rows if r["arm"] == "a" and r["stage"] in own})
    out = {}
    for r in rows:
        if r["stage"] not in own:
            continue
        m, reference = own[r["stage"]], references.get(r["seed"])
        out[r["stage"]] = {**m, "reference": reference,
                           "at_a_mix": None if reference is None else all_fail_at_mix(m["fails"], reference["fails"])}
    return out


def markdown_all_fail_mix(rows: list[dict], mix: dict[str, dict], outcomes: dict[str, dict | None]) -> str:
    """One row per arm of all_fail_mix(): per sub-task its share of the arm's groups and their all-fail
    share, the pooled share, the share at (a)'s mix and the difference (the part the mix alone explains),
    and the groups with demos (outcomes' "demos") and how many of them failed. Empty without any."""
    subtasks = sorted({s for m in mix.values() for s in m["fails"]})
    body = []
    for r in rows:
        m = mix.get(r["stage"])
        if m is None:
            continue
        f, groups, pooled, at_mix = m["fails"], m["groups"], m["pooled"], m["at_a_mix"]
        cells = [f"{100 * f[s][1] / groups:.0f} / {100 * f[s][0] / f[s][1]:.0f}" if f.get(s, (0, 0))[1] else "-"
                 for s in subtasks]
        demos = outcomes[r["stage"]]["demos"]
        demo_groups, demo_fail = sum(c[1] for c in demos.values()), sum(c[1] - c[0] for c in demos.values())
        mark = " (compared run's (a))" if at_mix is not None and m["reference"]["borrowed"] else ""
        body.append([r["label"], groups, *cells, _pct(pooled), _pct(at_mix) + mark,
                     "-" if pooled is None or at_mix is None else f"{100 * (pooled - at_mix):+.1f}",
                     f"{demo_groups}: {demo_fail}" if demo_groups else "-"])
    return _table_or_empty(["stage", "groups generated", *(f"{s}: % of groups / all-fail %" for s in subtasks),
                            "all-fail %", "at (a)'s sub-task mix %", "from the mix, points",
                            "groups with demos: all-fail"], body)


def _each(m: dict, key: str, fmt) -> str:
    """An arm's mean over its seeds followed by each seed's value: "8.8 (7.5 / 10.0)"."""
    values = [fmt(r.get(key)) for r in m["per_seed"]]
    return f"{fmt(m.get(key))} ({' / '.join(values)})" if len(values) > 1 else fmt(m.get(key))


def markdown_seeds(rows: list[dict]) -> str:
    """Each arm's mean over its seeds with every seed's value, and each arm minus (a) seed by seed
    (paired: the same seed draws the same first prompts), for a run with several seeds per arm."""
    means = [m for m in seed_means(rows) if m["arm"] in ARMS]
    head = ["arm", "seeds", "ToolRL correct %", "ToolRL format %", "BFCL non-live %",
            f"train correct, last {EDGE}", "all-fail share, run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in means:
        lines.append("| " + " | ".join([
            m["label"], ", ".join(str(s) for s in m["seeds"]), _each(m, "toolrl_correct", _pct),
            _each(m, "toolrl_format", _pct), _each(m, "bfcl_non_live", _pct), _each(m, "correct_last", _num),
            _each(m, "all_fail_mean", _num)]) + " |")
    text = ["Each cell: the mean over the arm's seeds, then each seed's value in the order of the seeds column.",
            "", *lines]
    plain = next((m for m in means if m["arm"] == "a"), None)
    diffs = []
    for m in means:
        if plain is None or m is plain:
            continue
        a_by_seed = {r["seed"]: r["toolrl_correct"] for r in plain["per_seed"] if r["toolrl_correct"] is not None}
        pairs = [(r["seed"], r["toolrl_correct"] - a_by_seed[r["seed"]]) for r in m["per_seed"]
                 if r["toolrl_correct"] is not None and r["seed"] in a_by_seed]
        if pairs:
            each = ", ".join(f"seed {seed} {100 * d:+.1f}" for seed, d in pairs)
            diffs.append(f"- ({m['arm']}) minus (a), ToolRL correct, seed by seed: {each}; mean "
                         f"{100 * _mean([d for _, d in pairs]):+.1f} points.")
    return "\n".join(text + ([""] + diffs if diffs else []))


def sign_test_p(gained: int, lost: int) -> float:
    """Exact two-sided sign test (McNemar's exact test) on the questions two stages answer differently:
    the chance of a split at least as uneven as gained / lost if each such question were equally likely
    to go either way. 1.0 when they answer every question alike."""
    n, k = gained + lost, min(gained, lost)
    return 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def paired(reference: dict[str, bool], other: dict[str, bool]) -> dict:
    """Two stages' greedy answers to the same questions ({question id: right}), over the ids both have:
    right in both, gained (reference wrong, other right), lost (the reverse), and the sign test's p."""
    ids = [q for q in reference if q in other]
    gained = sum(other[q] and not reference[q] for q in ids)
    lost = sum(reference[q] and not other[q] for q in ids)
    return {"questions": len(ids), "both_right": sum(reference[q] and other[q] for q in ids),
            "gained": gained, "lost": lost, "p": sign_test_p(gained, lost)}


def paired_rates(reference: dict[str, float], other: dict[str, float]) -> dict:
    """Two stages' sampled answers to the same questions ({question id: share of its K completions
    right}), over the ids both have: how many questions went up, down or stayed, the mean per-question
    difference (other - reference), its standard error sd / sqrt(n) (sample sd of the differences) and
    the two-sided p of that mean under a normal approximation (a paired t-test at these n)."""
    ids = [q for q in reference if q in other]
    d = [other[q] - reference[q] for q in ids]
    n = len(d)
    mean = sum(d) / n if n else 0.0
    se = (sum((x - mean) ** 2 for x in d) / (n - 1) / n) ** 0.5 if n > 1 else 0.0
    p = math.erfc(abs(mean) / se / 2 ** 0.5) if se > 0 else (1.0 if mean == 0 else 0.0)
    return {"questions": n, "up": sum(x > 0 for x in d), "down": sum(x < 0 for x in d),
            "same": sum(x == 0 for x in d), "mean": mean, "se": se, "p": p}


def paired_comparisons(rows: list[dict], answers: dict[str, dict[str, dict | None]], suites: tuple[str, ...],
                       compare=paired) -> list[tuple[str, str, list[dict | None]]]:
    """Every arm's run against the SFT model, then every other arm's run against (a) with the same seed
    (the same first prompts): (stage label, reference label, [compare(reference's, stage's) per suite]).
    answers: stage -> suite -> the stage's {question id: value} (paired's or paired_rates'), or None where it
    was not evaluated (that suite's cell is None)."""
    by_stage = {r["stage"]: r for r in rows}
    plain = {r["seed"]: r["stage"] for r in rows if r["arm"] == "a"}

    def pair(stage: str, ref: str) -> tuple[str, str, list[dict | None]]:
        mine, theirs = answers.get(stage, {}), answers.get(ref, {})
        return by_stage[stage]["label"], by_stage[ref]["label"], [
            compare(theirs[x], mine[x]) if theirs.get(x) and mine.get(x) else None for x in suites]

    arms = [r for r in rows if r["arm"] in ARMS]
    out = [pair(r["stage"], "sft") for r in arms if "sft" in by_stage]
    return out + [pair(r["stage"], plain[r["seed"]]) for r in arms if r["arm"] != "a" and r["seed"] in plain]


def question_means(maps: list[dict[str, float]]) -> dict[str, float]:
    """Each question's value (right as 0/1, or a rate) averaged over several stages' {question id: value},
    over the questions every map has."""
    return {q: sum(float(m[q]) for m in maps) / len(maps) for q in maps[0] if all(q in m for m in maps)}


def seed_mean_comparisons(rows: list[dict], answers: dict[str, dict[str, dict | None]], suite: str,
                          compare=paired_rates) -> list[tuple[str, str, list[dict | None]]]:
    """For an arm run with several seeds: each question's value averaged over its seeds, against SFT's, and
    (every other arm) against (a)'s averaged over the same seeds; the rows paired_comparisons gives
    seed by seed, pooled. Questions are the paired units, so the standard error is over questions for
    these trained models, not over what another seed would have trained."""
    runs: dict[str, list[dict]] = {}
    for r in rows:
        if r["arm"] in ARMS and (answers.get(r["stage"]) or {}).get(suite):
            runs.setdefault(r["arm"], []).append(r)

    def mean_over(rs: list[dict]) -> dict[str, float]:
        return question_means([answers[r["stage"]][suite] for r in rs])

    def name(arm: str, rs: list[dict]) -> str:
        return f"{STAGE_LABELS[arm]}, mean of seeds {', '.join(str(r['seed']) for r in rs)}"

    sft = (answers.get("sft") or {}).get(suite)
    out = [(name(arm, rs), "SFT", [compare(sft, mean_over(rs))]) for arm, rs in runs.items() if len(rs) > 1 and sft]
    for arm, rs in runs.items():
        seeds = {r["seed"] for r in rs} & {r["seed"] for r in runs.get("a", [])}
        if arm != "a" and len(seeds) > 1:
            mine, plain = [r for r in rs if r["seed"] in seeds], [r for r in runs["a"] if r["seed"] in seeds]
            out.append((name(arm, mine), name("a", plain), [compare(mean_over(plain), mean_over(mine))]))
    return out


def markdown_paired(comparisons: list[tuple[str, str, list[dict | None]]]) -> str:
    """paired_comparisons over ("toolrl", "bfcl") with paired(): a suite that one of the two stages lacks
    is shown as "-"; a row with neither is left out. Empty when there is nothing to compare."""
    def cells(p: dict | None) -> list:
        if p is None:
            return ["-"] * 5
        net = 100 * (p["gained"] - p["lost"]) / p["questions"] if p["questions"] else 0.0
        return [p["both_right"], p["gained"], p["lost"], f"{net:+.1f}", f"{p['p']:.2f}"]
    return _table_or_empty(
        ["stage", "against", "ToolRL right in both", "gained", "lost", "net, points", "sign test p",
         "BFCL right in both", "gained", "lost", "net, points", "sign test p"],
        [[name, against, *cells(t), *cells(b)] for name, against, (t, b) in comparisons if t or b])


def markdown_sampled(summaries: dict[str, dict], comparisons: list[tuple[str, str, list[dict | None]]]) -> str:
    """summaries: stage label -> its sampled ToolRL summary (mean@K in `overall`, `pass_at_k`, `samples`;
    `no_call_opening`: the share of the call questions' completions that open with NO_CALL_OPENING);
    comparisons: paired_comparisons over ("sampled",) with paired_rates(). Two tables; empty without summaries."""
    if not summaries:
        return ""
    rates = _table_or_empty(
        ["stage", "samples per question", "mean@K %", "pass@K %", "format, mean of the completions %",
         "call questions' completions opening 'No' %"],
        [[name, s["samples"], _pct(s["overall"]), _pct((s.get("pass_at_k") or {}).get("overall")),
          _pct((s.get("means") or {}).get("format")), _pct(s.get("no_call_opening"))] for name, s in summaries.items()])
    diffs = markdown_paired_rates(comparisons)
    return rates + ("\n\n" + diffs if diffs else "")


def markdown_paired_rates(comparisons: list[tuple[str, str, list[dict | None]]]) -> str:
    """Comparisons over one suite with paired_rates(): questions up / down / same, the mean difference, its
    standard error and p; a comparison without a value is left out; empty when none has one."""
    body = [[name, against, f"{p['up']} / {p['down']} / {p['same']}", f"{100 * p['mean']:+.1f}",
             f"{100 * p['se']:.1f}", f"{p['p']:.2f}"] for name, against, (p,) in comparisons if p]
    return _table_or_empty(["stage", "against", "questions up / down / same", "difference, points",
                            "standard error, points", "p (paired, two-sided)"], body)


def cross_run_comparisons(rows: list[dict], other: list[dict], mine: dict[str, dict[str, float] | None],
                          theirs: dict[str, dict[str, float] | None]) -> list[tuple[str, str, list[dict | None]]]:
    """This run's arms against an earlier run's from the same SFT model, on per-question rates (stage ->
    {question id: rate} or None, `mine` for this run's stages, `theirs` for the earlier run's): each arm
    against the earlier run's same stage and the earlier run's (a) with the same seed, then, for an arm
    with several seeds, its per-question mean over them against the same two over the same seeds."""
    earlier = {r["stage"]: r for r in other if theirs.get(r["stage"])}
    plain = {r["seed"]: r["stage"] for r in other if r["arm"] == "a" and r["stage"] in earlier}
    arms = [r for r in rows if r["arm"] in ARMS and mine.get(r["stage"])]
    out = []
    for r in arms:
        for ref in dict.fromkeys(x for x in (r["stage"], plain.get(r["seed"])) if x in earlier):
            out.append((r["label"], f"earlier run's {earlier[ref]['label']}",
                        [paired_rates(theirs[ref], mine[r["stage"]])]))

    for arm in dict.fromkeys(r["arm"] for r in arms):
        rs = [r for r in arms if r["arm"] == arm]
        seeds = [r["seed"] for r in rs]
        this = question_means([mine[r["stage"]] for r in rs])
        names = f"{STAGE_LABELS[arm]}, mean of seeds {', '.join(map(str, seeds))}"
        for ref_arm in dict.fromkeys((arm, "a")):
            refs = [x for x in other if x["arm"] == ref_arm and x["seed"] in seeds and x["stage"] in earlier]
            if len(rs) > 1 and len(refs) == len(rs):
                out.append((names, f"earlier run's {STAGE_LABELS[ref_arm]}, same seeds",
                            [paired_rates(question_means([theirs[x["stage"]] for x in refs]), this)]))
    return out


CALL_SUBTASKS = ("single", "parallel")   # sub-tasks whose every prompt wants a call (no_call, multi_turn: mostly a reply)
NO_CALL_OPENING = "<think>No"            # how the SFT format opens an answer that calls nothing


def no_call_push(groups: list[tuple[str, list[tuple[str, float]]]]) -> dict[str, list]:
    """The first-token signal the learner got for the no-call thought: over an arm's trained groups
    ((subtask, [(completion text, total reward)]), its learner batches), the completions that open with
    NO_CALL_OPENING and the sum of their GRPO advantages, (R - group mean) / (population std + 1e-6) as
    learner.grpo.group_advantages computes them; {"reply": [completions, advantage sum], "call": [...]},
    "call" for the single and parallel sub-tasks. Every completion's first token carries its advantage
    once, so the sums are what pushed that token up (reply groups, where "No" is mostly right) and down
    (call groups, where it is wrong)."""
    out: dict[str, list] = {"reply": [0, 0.0], "call": [0, 0.0]}
    for subtask, completions in groups:
        rewards = [r for _, r in completions]
        mean = sum(rewards) / len(rewards)
        std = (sum((r - mean) ** 2 for r in rewards) / len(rewards)) ** 0.5
        cell = out["call" if subtask in CALL_SUBTASKS else "reply"]
        for text, r in completions:
            if text.lstrip().startswith(NO_CALL_OPENING):
                cell[0] += 1
                cell[1] += (r - mean) / (std + 1e-6)
    return out


def markdown_no_call_push(rows: list[dict], pushes: dict[str, dict | None]) -> str:
    """One row per arm with trained groups (stage -> no_call_push(), None: no dumped batches): the pushes,
    their net and the arm's share of the test's call questions answered 'No' at its end."""
    body = []
    for r in rows:
        p = pushes.get(r["stage"])
        if p is None:
            continue
        body.append([r["label"], p["reply"][0], f"{p['reply'][1]:+.1f}", p["call"][0], f"{p['call'][1]:+.1f}",
                     f"{p['reply'][1] + p['call'][1]:+.1f}", _pct(r.get("toolrl_no_call"))])
    return _table_or_empty(["stage", "opened 'No' in no_call / multi_turn groups", "their advantage sum",
                            "opened 'No' in single / parallel groups", "their advantage sum", "net push",
                            "ToolRL call questions answered 'No' at the end %"], body)


def revisit_summary(visits: dict[str, list[float]], sft_right: dict[str, bool] | None = None,
                    arm_right: dict[str, bool] | None = None) -> dict:
    """Whether an arm taught the prompts it drew: over the prompts drawn at least twice without demos,
    the mean correct rate of their completions at the first and at the last draw, how many rose, fell or
    stayed, and how many of those with no correct completion at the first draw had one at the last.
    With uniform draws (arm (a)) a policy that learns nothing changes the mean by noise only.
    sft_right / arm_right ({task id: greedy answer right}, the SFT model's and the arm's own on the
    training prompts): the same means over the prompts the SFT model answered wrong greedily, and how many
    of those the arm answers right greedily at its end (None where not asked)."""
    again = {t: v for t, v in visits.items() if len(v) > 1}
    zero = [v for v in again.values() if v[0] == 0]
    wrong = [t for t in again if sft_right is not None and sft_right.get(t) is False]
    return {"prompts": len(again), "first": _mean([v[0] for v in again.values()]),
            "last": _mean([v[-1] for v in again.values()]),
            "rose": sum(v[-1] > v[0] for v in again.values()), "fell": sum(v[-1] < v[0] for v in again.values()),
            "same": sum(v[-1] == v[0] for v in again.values()), "from_zero": len(zero),
            "from_zero_solved": sum(v[-1] > 0 for v in zero),
            "sft_wrong": None if sft_right is None else len(wrong),
            "sft_wrong_first": _mean([again[t][0] for t in wrong]),
            "sft_wrong_last": _mean([again[t][-1] for t in wrong]),
            "sft_wrong_now_right": None if arm_right is None or sft_right is None else
            sum(bool(arm_right.get(t)) for t in wrong)}


def markdown_revisits(summaries: dict[str, dict | None]) -> str:
    """One row per arm (stage label -> revisit_summary(); None: the arm kept no generated groups, left
    out); empty when none kept them."""
    body = []
    for name, s in summaries.items():
        if s is None:
            continue
        change = None if s["first"] is None else s["last"] - s["first"]
        wrong = ("-" if s["sft_wrong"] is None else
                 f"{s['sft_wrong']}: {_num(s['sft_wrong_first'])} -> {_num(s['sft_wrong_last'])}, right greedily "
                 f"after: {'-' if s['sft_wrong_now_right'] is None else s['sft_wrong_now_right']}")
        body.append([name, s["prompts"], _num(s["first"]), _num(s["last"]),
                     "-" if change is None else f"{change:+.3f}", f"{s['rose']} / {s['fell']} / {s['same']}",
                     f"{s['from_zero_solved']} of {s['from_zero']}", wrong])
    return _table_or_empty(["stage", "prompts drawn again", "correct at the first draw", "at the last draw",
                            "change", "rose / fell / same", "none correct at the first draw: some at the last",
                            "drawn again and answered wrong greedily by SFT: prompts, first -> last draw"],
                           body)


def noise_note(rows: list[dict], reference: str = "sft") -> str:
    """One seed and a finite test set: the binomial standard error of the reference stage's ToolRL
    correct rate, sqrt(p (1 - p) / n), so that a reader can tell a difference from noise."""
    ref = next((r for r in rows if r["stage"] == reference), None)
    if ref is None or ref["toolrl_correct"] is None or not ref["toolrl_n"]:
        return ""
    p, n = ref["toolrl_correct"], ref["toolrl_n"]
    se = (p * (1.0 - p) / n) ** 0.5
    spreads = [(m["label"], max(v) - min(v)) for m in seed_means(rows) if m["arm"] in ARMS
               for v in [[r["toolrl_correct"] for r in m["per_seed"] if r["toolrl_correct"] is not None]]
               if len(v) > 1]
    seeds = ("one seed," if not spreads else
             "several seeds per arm: the ToolRL correct rate of one arm moved between its seeds by "
             + ", ".join(f"{100 * d:.1f} points ({name})" for name, d in spreads) + ";")
    return (f"Noise: {seeds} {n} ToolRL questions (one question is {100 / n:.2f} points). At the "
            f"{ref['label']} row's rate ({_pct(p)}%) the standard error of a ToolRL correct rate is "
            f"{100 * se:.1f} points, so differences between rows smaller than about {200 * se:.1f} points "
            "are within noise; training columns average only a few steps of a few groups each.")


def markdown_compare(rows: list[dict], other: list[dict], other_info: dict, differences: dict) -> str:
    """This run's eval columns next to an earlier run's, stage by stage (the stages both ran), with
    the settings that differ ({key: (this, other)}) and where the other run came from."""
    theirs = {r["stage"]: r for r in other}
    head = ["stage", "ToolRL correct %: this / earlier", "ToolRL format %: this / earlier",
            "BFCL non-live %: this / earlier", "train correct, last 3: this / earlier"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        o = theirs.get(r["stage"])
        if o is None:
            continue
        lines.append(f"| {r['label']} | {_pct(r['toolrl_correct'])} / {_pct(o['toolrl_correct'])} | "
                     f"{_pct(r['toolrl_format'])} / {_pct(o['toolrl_format'])} | "
                     f"{_pct(r['bfcl_non_live'])} / {_pct(o['bfcl_non_live'])} | "
                     f"{_num(r['correct_last'])} / {_num(o['correct_last'])} |")
    diff = "; ".join(f"{k}: {a} here, {b} there" for k, (a, b) in differences.items()) or "none recorded"
    return "\n".join([
        f"The earlier run: `{other_info.get('command', '?')}`, run directory `{other_info.get('run_dir', '?')}`, "
        f"commit {other_info.get('commit', '?')}, seed {other_info.get('seed', '?')}, {other_info.get('steps', '?')} "
        f"steps per arm. Settings that differ: {diff}.",
        "",
        *lines,
    ])


def markdown_times(stages: list[dict]) -> str:
    """stages: [{"stage", "seconds", "note", "commands"}] in run order, and the total."""
    lines = ["| stage | wall time | notes |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {_duration(s['seconds'])} | {s.get('note', '')} |" for s in stages]
    lines.append(f"| total | {_duration(sum(s['seconds'] for s in stages))} | |")
    return "\n".join(lines)


def markdown_commands(stages: list[dict]) -> str:
    """Every subprocess each stage ran, as typed in the repository root."""
    lines = ["```"]
    for s in stages:
        lines += [f"# {s['stage']}", *s.get("commands", [])]
    return "\n".join(lines + ["```"])


def _duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes} m {s:02d} s" if minutes else f"{s} s"


def _resumed(entry: dict | str) -> str:
    """A resume as LEARNING.md names it: its command and the commit it ran (learning.json of runs before
    2026-12-03 kept the command only)."""
    if isinstance(entry, str):
        return f"`{entry}`"
    return f"`{entry['command']}` at commit {entry['commit']}"


def _forked_text(forked: dict | None) -> str:
    if not forked:
        return ""
    kept = ", ".join(STAGE_LABELS.get(split_stage(k)[0], k) for k in forked["kept"])
    return (f" This directory is a fork (`--fork`) of `{forked['run_dir']}`: its stages {kept} are that run's "
            f"(made by `{forked['command']}` at commit {forked['commit']}"
            + "".join(f"; {r}" for r in forked.get("resumed", [])) + "), copied; the other arms were trained here.")


def document(info: dict, rows: list[dict], plots: list[str]) -> str:
    """The whole LEARNING.md. info: date, cpu, cores, loadavg, command, seed, commit, run_dir,
    config, settings ({dotted key: value}), steps, max_tokens, bfcl_limit, bfcl_categories, arms,
    stages (see markdown_times); optional: started and machine (the run's), isa, goals (the markdown of
    learning_goals' table), and the sections' texts (groups, compare, mix, ...)."""
    settings = ", ".join(f"{k} {v}" for k, v in (info.get("settings") or {}).items())
    settings = f" ({settings})" if settings else ""
    letters = dict.fromkeys(split_stage(stage)[0] for stage in info["arms"])
    arms = "\n".join(f"| ({k}) {ARMS[k][0]} | `{' '.join(ARMS[k][1])}` |" for k in letters)
    budget, failures, prompts = markdown_budget(rows), markdown_failures(rows), markdown_train_prompts(rows)
    return "\n".join([
        "# Learning benchmark",
        "",
        "Written by the script, never by hand. "
        f"`{info['command']}`" + (f" started {info['started']}" if info.get("started") else "")
        + f", {_seeds_text(info)}, commit {info['commit']}. " + _machine_text(info) + " "
        f"Raw outputs (eval JSONs with every completion, each arm's metrics.jsonl and run directory, "
        f"the SFT metrics, every subprocess's log): `{info['run_dir']}` (git-ignored)."
        + _forked_text(info.get("forked_from"))
        + (" The run was continued (an arm had stopped, or arms or seeds were added) with "
           + "; ".join(_resumed(c) for c in info["resumed"])
           + " (each unfinished arm trained again from its start; the stopped one's directory is kept as "
             "arm_<x>.failed-<n>)." if info.get("resumed") else ""),
        "",
        f"Protocol: config `{info['config']}`"
        + (f" with `{' '.join(info['overrides'])}`" if info.get("overrides") else "")
        + f"{settings}. The base model is evaluated, warm-started with "
        "`toolexpander sft`, evaluated again; then each GRPO arm trains from the SFT model for "
        f"{info['steps']} steps " + (
            f"with each of the seeds {', '.join(str(x) for x in info['seeds'])} (train, sampler and rollout "
            f"seed; the SFT warm start is trained once, with seed {info['seed']}, so every arm and seed starts "
            "from the same model)" if len(info.get("seeds") or []) > 1 else "with the same seed")
        + ", and its HF export is evaluated."
        + (f" Prompts each arm drew from (the run's start event): {info['prompts']}." if info.get("prompts") else "")
        + (" Training prompts per sub-task: " + "; ".join(f"seed {k}: {v}" for k, v in info["mix"].items())
           + (f" (the ToolRL test set: {info['test_mix']})" if info.get("test_mix") else "") + "."
           if info.get("mix") else "")
        + " Evaluation: greedy, "
        f"at most {info['max_tokens']} new tokens; the ToolRL test set ({_count(rows, 'toolrl_n')} questions, "
        "scored by our reward's `correct`"
        + (f"; {info['ceiling']} have a reference answer longer than {info['max_tokens']} tokens as the "
           "completion SFT teaches, so no model reaches them at this budget" if info.get("ceiling") else "")
        + "); BFCL non-live AST, the first "
        f"{info['bfcl_limit']} questions of each of {', '.join(info['bfcl_categories'])} "
        f"({_count(rows, 'bfcl_n')} questions, scored by BFCL's own `ast_checker`; "
        "\"BFCL non-live\" is BFCL's unweighted mean over the categories run).",
        "",
        "## Results",
        "",
        markdown_table(rows),
        "",
        "\"Call questions answered 'No'\": the share of the ToolRL test's single and parallel questions (each "
        "needs a call) whose greedy answer opens with the no-call thought, `<think>No`. "
        + (f"\"Training prompts\": the {_count(rows, 'train_prompts_n')} prompts the first seed's arms drew from"
           ", asked and scored as the ToolRL test is (greedy, the same budget): a method that does not raise "
           "even these did not learn what it was shown; one that raises these and not the test did not generalise. "
           if any(r.get("train_prompts_correct") is not None for r in rows) else "")
        + f"Training columns: `reward/correct_mean` averaged over the first and the last {EDGE} steps, and "
        f"`sampler/all_fail_share` (share of the step's groups with no correct completion) over every step "
        f"and over the last {EDGE}; `sampler/unsolved_share` at the last step (share of the prompts drawn so "
        "far whose latest group had no correct completion: per prompt, where the all-fail share counts each "
        "hard-sample round of a prompt as another group); `sampler/share/no_call` averaged over every step "
        "(the no-call sub-task's share of the next draw: its share of the prompts with the curriculum off, "
        "the curriculum's with it on).",
        "",
        *(["## Across seeds", "", markdown_seeds(rows), ""] if several_seeds(rows) else []),
        noise_note(rows),
        "",
        *(["## Question by question", "",
           "The same test questions asked of two models: right in both, gained (wrong before, right after), lost "
           "(the reverse), the net change in points, and the exact two-sided sign test (McNemar) on the gained "
           "and lost questions: the chance of a split at least that uneven if each changed answer were a coin "
           "flip. Greedy answers, so every change is a changed model, not sampling; a p above 0.05 means the "
           "changes do not show a direction. Each arm against the SFT model it started from, and each other arm "
           "against (a) with the same seed.", "", info["paired"], ""] if info.get("paired") else []),
        *(["## Sampled answers", "",
           f"Each model but the base asked every ToolRL question {info.get('eval_samples')} times, sampled at the "
           f"training temperature ({info.get('eval_temperature')}) with the same seed for every model: mean@K is "
           "the share of a question's completions that are right, averaged over the questions; pass@K the share "
           "of questions with at least one right. One greedy answer per question moves only when the most likely "
           "answer changes; these rates also move when a right answer becomes more or less likely, so a small "
           "change of the policy shows here first. Below, each arm against SFT and each other arm against (a) "
           "with the same seed, question by question: the mean of the per-question differences, its standard "
           "error and the two-sided p (normal approximation); an arm with several seeds also as the mean of its "
           "seeds per question (the standard error is then over questions for these trained models, not over "
           "what other seeds would train).", "", info["sampled"], ""] if info.get("sampled") else []),
        *(["## Training budget", "",
           "What each arm trained on: optimizer updates applied (`learner/applied`, summed), groups in its "
           "learner batches (`learner/groups`, summed: the informative groups), the share of generated groups "
           "dropped for no reward spread (`sampler/zero_signal_share`) and the mean token entropy of the trained "
           "completions (`learner/entropy`), both averaged over the steps.", "", budget, ""] if budget else []),
        *(["## Groups with and without demos", "",
           "The groups each arm trained on (its learner batches as `--save-rollouts` dumps them, every step: "
           "the informative groups, those with a spread in the total reward; a group whose completions all "
           "scored the same is not among them), by whether the prompt carried hard-sample demonstrations; "
           "solved: at least one completion correct. Since 2026-12-04 a run logs `sampler/demo_solved_share` "
           "over every group it generates.", "", info["groups"], ""] if info.get("groups") else []),
        *(["## All-fail groups by sub-task", "",
           "Every group each arm generated (rollouts/generated_N.parquet: also those without reward spread, and "
           "each hard-sample round of a prompt as one more group, as `sampler/all_fail_share` counts them), by "
           "sub-task: its share of the arm's groups and the share of those with no correct completion. \"All-fail "
           "%\" pools the groups (the results table's \"all-fail share, run\" averages each step's share instead); "
           "\"at (a)'s sub-task mix\" weights the arm's own all-fail rate per sub-task by plain GRPO's (arm (a), "
           "same seed; where this run has none and `--compare` names a run from the same SFT model, that run's "
           "(a), marked) share of groups, so \"from the mix\" is the part of the arm's all-fail share that comes "
           "only from drawing the sub-tasks in other proportions (the curriculum's tilt toward the sub-tasks "
           "least mastered, and hard-sample rounds of prompts that failed).", "", info["all_fail_mix"], ""]
          if info.get("all_fail_mix") else []),
        *(["## Prompts drawn again", "",
           "Did an arm teach the prompts it trained on? Each prompt drawn at least twice without demonstrations "
           "(rollouts/generated_N.parquet: every group generated, also those without reward spread): the share "
           "of its n sampled completions (at the training temperature) that were correct at its first and at "
           "its last draw, averaged over those prompts. The greedy evaluations above can miss this: greedy "
           "decoding answers a prompt right or wrong as a whole, these count how often its sampled completions "
           "are right. With uniform draws (arm (a)) a policy that learns nothing moves the means by noise only; "
           "in arms with hard-sample rounds a prompt whose completions all failed comes back with demos (left "
           "out here), so their rows hold mostly prompts solved at their first draw.", "", info["revisits"], ""] if info.get("revisits") else []),
        *(["## The no-call opening", "",
           "What the update did to the first words of the think block, the token that decides between a call and "
           "a reply: in each arm's learner batches (every step), the completions that open with the no-call "
           f"thought (`{NO_CALL_OPENING}`) and the sum of their advantages, in groups of prompts that mostly want a "
           "reply (no_call, multi_turn) and in groups that want a call (single, parallel). A completion's first "
           "token carries its advantage once, so a positive net push raises the no-call opening everywhere "
           "unless the call groups push back, and they can push back only with completions that open wrongly, "
           "which the SFT model seldom samples.", "", info["no_call_push"], ""] if info.get("no_call_push") else []),
        *(["## The training prompts by sub-task", "",
           "Each stage's greedy answers to the prompts the first seed's arms trained on, correct of asked per "
           "sub-task (the \"training prompts\" column above, split).", "", prompts, ""] if prompts else []),
        *(["## Where the ToolRL answers fail", "",
           "Each ToolRL test question once: correct, or counted under the first reward dimension its greedy "
           "answer fell short on, in the order format, tool names (a call missing, extra or misnamed), parameter "
           "names, values; other: every dimension full but the calls still differ, or the prompt too long. The "
           "last column: the wrong answers that stopped at the token limit.", "", failures, ""] if failures else []),
        *(["## Against an earlier run", "", info["compare"], ""] if info.get("compare") else []),
        *(["## Goals", "", info["goals"], ""] if info.get("goals") else []),
        "## Arms",
        "",
        "| arm | overrides on top of the config |",
        "|---|---|",
        arms,
        "",
        "## Wall time",
        "",
        markdown_times(info["stages"]),
        "",
        "## Commands",
        "",
        markdown_commands(info["stages"]),
        "",
        "## Plots",
        "",
        *[f"![{Path(p).stem}]({p})" for p in plots],
        "",
    ])


def _machine_text(info: dict) -> str:
    """The run's machine (kept at its start) and the machine and time this report was written on."""
    def name(cpu: str, cores, isa) -> str:
        return f"{cpu}, {cores} cores" + (f" ({', '.join(isa)})" if isa else "")

    here = name(info["cpu"], info["cores"], info.get("isa"))
    now = (f"report written {info['date']} on {here} (1-min load average {info['loadavg']:.1f}; the machine "
           "may have been shared with other jobs)")
    run = info.get("machine")
    if not run:   # a run from before learning.json kept its machine
        return f"Machine: {now}; the run's own machine was not recorded."
    return f"Machine of the run: {name(run['cpu'], run['cores'], run.get('isa'))}; {now}."


def _seeds_text(info: dict) -> str:
    seeds = info.get("seeds") or [info["seed"]]
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(str(x) for x in seeds)}"


def _count(rows: list[dict], key: str) -> str:
    counts = sorted({r[key] for r in rows if r.get(key) is not None})
    return "/".join(str(c) for c in counts) or "-"
