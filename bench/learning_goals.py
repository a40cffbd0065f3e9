"""The learning benchmark's goals (issue #14): each measured from the report's rows, met or missed by how
much, and for a missed one the run's own measurements that say why. Pure functions, like learning_report."""

from __future__ import annotations

import math

from bench.learning_report import ARMS, _mean, _num, _pct, seed_means, split_stage

# Goal targets (fractions); goals() says how each is measured from the table rows.
GOAL_TOOLRL = 0.20        # (d) ToolRL-test correct
GOAL_GAIN = 0.05          # (d) minus SFT, ToolRL-test correct
GOAL_BFCL_SIMPLE = 0.10   # (d) BFCL non-live simple AST
GOAL_ALL_FAIL_RATIO = 0.5  # (d) mean all-fail share / (a)'s, over the run (equal steps)
GOAL_WALL_MINUTES = 90    # the whole `make learn`, on a 2-core machine


def _status(value: float | None, target: float, unit: str, higher_is_better: bool = True) -> str:
    if value is None:
        return "not run"
    if (value >= target) if higher_is_better else (value <= target):
        return "met"
    gap = abs(value - target)
    return f"missed by {100 * gap:.1f} points" if unit == "points" else f"missed by {gap:.2f}x"


def goals(rows: list[dict], ceiling: str | None = None, revisits: dict[str, dict] | None = None,
          mix: dict[str, dict] | None = None) -> list[dict]:
    """Each goal with its measured value, "met" / "missed by X" / "not run", and for a missed one `why`:
    the measurements that explain it (goal_reasons). An arm run with several seeds is measured by its
    mean over them (seed_means). ceiling: the ToolRL questions no answer reaches at the evaluation's
    token budget, as the protocol states it ("11 of the 80 (...)"); revisits: {arm: revisit_summary()}
    of the arms' first seed, where the run kept every generated group; mix: learning_report.all_fail_mix()
    of every arm and seed."""
    by = {r["stage"]: r for r in seed_means(rows)}
    get = lambda stage, key: by.get(stage, {}).get(key)  # noqa: E731
    d_correct, sft_correct = get("d", "toolrl_correct"), get("sft", "toolrl_correct")
    gain = None if d_correct is None or sft_correct is None else d_correct - sft_correct
    d_fail, a_fail = get("d", "all_fail_mean"), get("a", "all_fail_mean")
    ratio = None
    if d_fail is not None and a_fail is not None:
        ratio = d_fail / a_fail if a_fail > 0 else (0.0 if d_fail == 0 else math.inf)
    base = get("base", "toolrl_correct")
    items = [
        {"name": "(d) full pipeline: ToolRL-test correct" + (f" (base {_pct(base)}%)" if base is not None else ""),
         "target": f">= {_pct(GOAL_TOOLRL)}%", "measured": "-" if d_correct is None else f"{_pct(d_correct)}%",
         "status": _status(d_correct, GOAL_TOOLRL, "points")},
        {"name": "(d) minus the SFT model alone, ToolRL-test correct", "target": f">= +{_pct(GOAL_GAIN)} points",
         "measured": "-" if gain is None else f"{100 * gain:+.1f} points",
         "status": _status(gain, GOAL_GAIN, "points")},
        {"name": "(d) BFCL non-live simple AST", "target": f">= {_pct(GOAL_BFCL_SIMPLE)}%",
         "measured": "-" if get("d", "bfcl_simple") is None else f"{_pct(get('d', 'bfcl_simple'))}%",
         "status": _status(get("d", "bfcl_simple"), GOAL_BFCL_SIMPLE, "points")},
        {"name": "(d) mean all-fail share / (a)'s, same steps",
         "target": f"<= {GOAL_ALL_FAIL_RATIO:.2f}x",
         "measured": "-" if ratio is None else f"{ratio:.2f}x ({_num(d_fail)} / {_num(a_fail)})",
         "status": ("missed ((a) never all-failed)" if ratio == math.inf
                    else _status(ratio, GOAL_ALL_FAIL_RATIO, "x", higher_is_better=False))},
        *([overlap_goal(by["a"], by["e"])] if "e" in by else []),
    ]
    d_seeds = len(by.get("d", {}).get("seeds", []))
    if d_seeds > 1:
        for g in items[:4]:
            if g["measured"] != "-":
                g["measured"] += f", mean of {d_seeds} seeds"
    reasons = goal_reasons(by, ceiling, revisits or {}, mix or {})
    for i, g in enumerate(items):
        g["why"] = reasons[i] if i < len(reasons) and g["status"].startswith("missed") else "-"
    return items


def _train_count(row: dict | None) -> tuple[int, int] | None:
    """(correct, asked) on the training prompts: the row's own, or its first seed's for an arm's mean."""
    for r in ([] if row is None else [row, *row.get("per_seed", [])]):
        cells = r.get("train_prompts_by_subtask")
        if cells:
            return sum(c[0] for c in cells.values()), sum(c[1] for c in cells.values())
    return None


def goal_reasons(by: dict[str, dict], ceiling: str | None, revisits: dict[str, dict] | None = None,
                 mix: dict[str, dict] | None = None) -> list[str]:
    """Why each of the four goals could be missed, from the run's own measurements, in goals()' order:
    the warm start's rate and the questions out of the token budget's reach; every arm's gain over the
    SFT model against the noise of the test, and whether the arms raised even the prompts they trained
    on (more than two binomial standard errors); how many of (d)'s groups were hard-sample rounds and
    how many of those the demos solved, and how much of (d)'s all-fail share its sub-task mix alone explains
    (mix: learning_report.all_fail_mix()). "-" where the run lacks the measurement."""
    sft = by.get("sft", {})
    p, n = sft.get("toolrl_correct"), sft.get("toolrl_n")
    arms = [k for k in ARMS if k in by and by[k].get("toolrl_correct") is not None]
    reach = f"; {ceiling} questions need a longer answer than the evaluation's token budget" if ceiling else ""
    first = "-" if p is None else f"the SFT model alone answers {_pct(p)}%{reach}; what GRPO adds: the next row"
    second = "-"
    if p is not None and n and arms:
        se = math.sqrt(p * (1 - p) / n)
        second = (", ".join(f"({k}) {100 * (by[k]['toolrl_correct'] - p):+.1f}" for k in arms)
                  + f" points over SFT; one standard error of a rate near {_pct(p)}% over {n} questions is "
                  f"{100 * se:.1f} points")
        base = _train_count(sft)
        trained = {k: c for k in arms if (c := _train_count(by[k])) is not None}
        if base is not None and trained:
            asked = base[1]
            noise = 2 * math.sqrt(asked * (base[0] / asked) * (1 - base[0] / asked))
            second += ("; on the prompts the arms trained on, SFT " + f"{base[0]}/{asked}, "
                       + ", ".join(f"({k}) {c[0]}/{c[1]}" for k, c in trained.items()))
            second += (": no arm answered even its own training prompts right (greedily) more often by more "
                       f"than two standard errors ({noise:.1f} prompts): what the updates changed did not reach the "
                       "greedy answers (the sampled ones: \"Prompts drawn again\")"
                       if all(c[0] - base[0] <= noise for c in trained.values()) else
                       ": an arm raised its training prompts by more than two standard errors "
                       f"({noise:.1f} prompts) and not the test: it did not generalise")
        sampled = [_sharpened(k, r) for k, r in (revisits or {}).items() if r.get("prompts")]
        if sampled:
            second += "; sampled at the training temperature, on the prompts drawn again: " + "; ".join(sampled)
    d = by.get("d", {})
    rate, solved = d.get("demo_rate_mean"), d.get("demo_solved_mean")
    fourth = "-"
    if rate is not None:
        fourth = (f"{_pct(rate)}% of the groups (d) generated carried demos (hard-sample rounds of prompts whose "
                  "completions all failed; plain GRPO has none)"
                  + ("" if solved is None else
                     f" and {_pct(solved)}% of those groups had a correct completion (`sampler/demo_solved_share`, "
                     "mean over the steps with any)")
                  + ": each round that fails again is one more all-fail group")
    mixed = mix_reason(mix or {})
    if mixed:
        fourth = mixed if fourth == "-" else f"{fourth}; {mixed}"
    return [first, second, "-", fourth]


def mix_reason(mix: dict[str, dict]) -> str | None:
    """(d)'s all-fail share against (a)'s, pooled over every group each generated (mean over the seeds both
    ran), and (d)'s own per-sub-task all-fail rates weighted by (a)'s sub-task mix (same seed): how much of
    the gap the mix alone makes, and the sub-task whose share of the groups grew most. None without a seed
    both arms ran."""
    # (d)'s seeds that have plain GRPO's same-seed arm beside them, and those (a) arms
    pairs = [(m, m["reference"]) for stage, m in mix.items()
             if split_stage(stage)[0] == "d" and m["at_a_mix"] is not None]
    if not pairs:
        return None
    d, a = [m for m, _ in pairs], [m for _, m in pairs]
    d_pooled, a_pooled, d_at = (_mean([m["pooled"] for m in d]), _mean([m["pooled"] for m in a]),
                                _mean([m["at_a_mix"] for m in d]))

    def share(ms: list[dict], subtask: str) -> float:
        return _mean([m["fails"].get(subtask, (0, 0))[1] / m["groups"] for m in ms])

    subtasks = {s for m in d + a for s in m["fails"]}
    grown = max(sorted(subtasks), key=lambda s: share(d, s) - share(a, s))
    fail = _mean([m["fails"][grown][0] / m["fails"][grown][1] for m in d if m["fails"].get(grown, (0, 0))[1]]
                 or [0.0])
    ratio = f"{d_at / a_pooled:.2f}x" if a_pooled > 0 else "-"
    return (f"pooled over every group generated, (d) all-failed {_pct(d_pooled)}% of its groups and (a) "
            f"{_pct(a_pooled)}% (mean of the same {len(d)} seed{'s' if len(d) > 1 else ''}); with (a)'s sub-task "
            f"mix, (d)'s own per-sub-task rates give {_pct(d_at)}% ({ratio} (a)), so "
            f"{100 * (d_pooled - d_at):+.1f} of the {100 * (d_pooled - a_pooled):+.1f} points come from the mix "
            f"alone: {grown} made up {_pct(share(d, grown))}% of (d)'s groups ((a): {_pct(share(a, grown))}%), "
            f"and {_pct(fail)}% of those all-failed (\"All-fail groups by sub-task\""
            + ("; (a) from the compared run" if any(m["borrowed"] for m in a) else "") + ")")


def _sharpened(arm: str, r: dict) -> str:
    """One arm's revisit_summary() in words: the sampled correct rate at the first and last draw, overall and
    on the prompts the SFT model answered wrong greedily (the ones the test needs moved)."""
    text = f"({arm}) {_num(r['first'])} -> {_num(r['last'])} over {r['prompts']} prompts"
    if r.get("sft_wrong"):
        text += (f", {_num(r['sft_wrong_first'])} -> {_num(r['sft_wrong_last'])} over the {r['sft_wrong']} the SFT "
                 "model answered wrong"
                 + ("" if r.get("sft_wrong_now_right") is None else f", {r['sft_wrong_now_right']} of them right "
                    "greedily after"))
    return text


def overlap_goal(a: dict, e: dict) -> dict:
    """(e) (rollouts one step ahead) against (a) (synchronous): the ToolRL correct rates differ by no
    more than two standard errors of a difference of two binomial rates over the test set,
    2 sqrt(p_a (1 - p_a) / n + p_e (1 - p_e) / n)."""
    name = "(e) one step ahead minus (a) synchronous, ToolRL-test correct"
    pa, pe, n = a.get("toolrl_correct"), e.get("toolrl_correct"), e.get("toolrl_n")
    if pa is None or pe is None or not n:
        return {"name": name, "target": "within 2 standard errors", "measured": "-", "status": "not run"}
    bound = 2.0 * math.sqrt((pa * (1 - pa) + pe * (1 - pe)) / n)
    diff = pe - pa
    lag, k3 = e.get("lag_mean"), e.get("mismatch_k3_mean")
    measured = (f"{100 * diff:+.1f} points (2 SE {100 * bound:.1f}); policy lag {_num(lag)}, "
                f"mismatch k3 {'-' if k3 is None else f'{k3:.1e}'}")
    status = "met" if abs(diff) <= bound else f"missed by {100 * (abs(diff) - bound):.1f} points"
    return {"name": name, "target": "within 2 standard errors", "measured": measured, "status": status}


def wall_time_goal(stages: list[dict], resumed: list | None = None, forked: dict | None = None) -> dict:
    """The run's wall time (its stages' seconds summed) against GOAL_WALL_MINUTES. The sum is a fresh
    `make learn`'s time only for one uninterrupted run that reused nothing: a resumed or forked run, or a
    stage that took its result from a cache (the SFT model, an evaluation), is named in `measured`."""
    minutes = sum(s["seconds"] for s in stages) / 60
    cached = [s["stage"] for s in stages if s.get("note", "").startswith("cache hit")]
    caveats = ([f"cache hits: {', '.join(cached)}"] if cached else []) + (["resumed"] if resumed else []) \
        + (["forked"] if forked else [])
    measured = f"{minutes:.1f} minutes" + (f" (not one fresh run: {'; '.join(caveats)})" if caveats else "")
    status = "met" if minutes <= GOAL_WALL_MINUTES else f"missed by {minutes - GOAL_WALL_MINUTES:.1f} minutes"
    return {"name": "the whole run's wall time (base to the last arm's evaluation)",
            "target": f"<= {GOAL_WALL_MINUTES} minutes", "measured": measured, "status": status,
            "why": "-" if status == "met" else "the stage times under \"Wall time\""}


def markdown_goals(items: list[dict]) -> str:
    lines = ["| goal | target | measured | status | why, as measured in this run |", "|---|---|---|---|---|"]
    lines += [f"| {g['name']} | {g['target']} | {g['measured']} | {g['status']} | {g.get('why', '-')} |"
              for g in items]
    return "\n".join(lines)
