"""bench/learning_report.py: the table, the goals and the plots of the learning benchmark, with exact
numbers on hand-made eval summaries and metrics rows (no Ray, no model)."""

import json
import math
import os
from pathlib import Path

import pytest

from bench import learning_goals as goals_
from bench import learning_plots as plots_
from bench import learning_report as report


def toolrl(correct: int, n: int, fmt: float) -> dict:
    """A `toolexpander eval --suite toolrl` summary, reduced to what the report reads."""
    return {"suite": "toolrl", "n": n, "overall": correct / n, "means": {"format": fmt},
            "categories": {"single": {"n": n, "correct": correct, "accuracy": correct / n}}}


def bfcl(accuracies: dict[str, float], per_category: int = 10) -> dict:
    simple = accuracies["simple_python"]
    non_live = sum(accuracies.values()) / len(accuracies)
    return {"suite": "bfcl", "n": per_category * len(accuracies), "overall": non_live,
            "categories": {c: {"n": per_category, "correct": round(a * per_category), "accuracy": a}
                           for c, a in accuracies.items()},
            "groups": {"non_live_simple": simple, "non_live": non_live, "overall": non_live}}


def metrics(correct: list[float], all_fail: list[float | None]) -> list[dict]:
    rows = []
    for step, (c, f) in enumerate(zip(correct, all_fail)):
        row = {"step": step, "reward/correct_mean": c, "sampler/all_fail_share": f, "sampler/unsolved_share": 1 - c,
               "sampler/share/no_call": 0.05 * (step + 1)}
        row.update({f"reward/{d}_mean": 0.1 * (i + 1) + 0.01 * step
                    for i, d in enumerate(("format", "tool_name", "param_name", "param_value"))})
        row["reward/exemplar_mean"] = 0.001 * step
        rows.append(row)
    return rows


ZERO = {"simple_python": 0.0, "multiple": 0.0, "parallel": 0.0, "parallel_multiple": 0.0}
STAGES = {
    "base": {"toolrl": toolrl(0, 80, 0.0), "bfcl": bfcl(ZERO)},
    "sft": {"toolrl": toolrl(8, 80, 0.5), "bfcl": bfcl({**ZERO, "simple_python": 0.1})},
    "a": {"toolrl": toolrl(10, 80, 0.6), "bfcl": bfcl({**ZERO, "simple_python": 0.1, "multiple": 0.1}),
          "metrics": metrics([0.1, 0.2, 0.3, 0.4, 0.5], [0.8, 0.6, 0.4, 0.4, 0.2])},
    "d": {"toolrl": {**toolrl(20, 80, 0.9), "no_call_answers": 0.45},
          "bfcl": bfcl({"simple_python": 0.2, "multiple": 0.3, "parallel": 0.1, "parallel_multiple": 0.0}),
          "metrics": metrics([0.0, 0.3, 0.6, 0.6, 0.9], [0.5, 0.1, None, 0.2, 0.2])},
}


# What bench/learning.py hands report.document besides the rows.
DOC_INFO = {"command": ".venv/bin/python -m bench.learning --seed 3", "date": "2026-12-02T10:00:00+00:00",
            "seed": 3, "commit": "`abc`", "cpu": "AMD EPYC", "cores": 2, "loadavg": 1.5,
            "run_dir": "runs/learn-x", "config": "configs/learn-smollm2.yaml", "steps": 15, "max_tokens": 160,
            "settings": {"rollout.n": 10, "learner.lr": 5e-06},
            "bfcl_limit": 10, "bfcl_categories": ["simple_python", "multiple", "parallel", "parallel_multiple"],
            "arms": ["a", "d"],
            "stages": [{"stage": "eval base", "seconds": 65.4, "note": "n", "commands": ["x y"]},
                       {"stage": "train (a)", "seconds": 3600, "note": "", "commands": []}]}


def test_series_keeps_the_last_record_of_a_step_and_skips_nulls():
    rows = [{"step": 1, "k": 0.5}, {"step": 0, "k": 1.0}, {"step": 1, "k": 0.25}, {"step": 2, "k": None},
            {"step": 3, "k": float("nan")}, {"step": 4}]
    assert report.series(rows, "k") == ([0, 1], [1.0, 0.25])


def test_train_summary_means_first_and_last_three_steps():
    s = report.train_summary(STAGES["d"]["metrics"])
    assert s["steps"] == 5
    assert s["correct_first"] == pytest.approx(0.3)           # (0 + 0.3 + 0.6) / 3
    assert s["correct_last"] == pytest.approx(0.7)            # (0.6 + 0.6 + 0.9) / 3
    assert s["all_fail_mean"] == pytest.approx(0.25)          # null step left out: (0.5 + 0.1 + 0.2 + 0.2) / 4
    assert s["all_fail_last"] == pytest.approx(0.5 / 3)       # the last three logged values: 0.1, 0.2, 0.2
    assert s["unsolved_end"] == pytest.approx(0.1)            # the last step's value: 1 - 0.9
    assert s["no_call_share_mean"] == pytest.approx(0.15)     # (0.05 + 0.10 + ... + 0.25) / 5


def test_train_summary_of_a_short_run_uses_what_there_is():
    s = report.train_summary(metrics([0.5, 1.0], [1.0, 0.0]))
    assert (s["steps"], s["correct_first"], s["correct_last"], s["all_fail_mean"], s["all_fail_last"]) == \
        (2, 0.75, 0.75, 0.5, 0.5)


def test_table_has_one_row_per_stage_with_exact_cells():
    rows = report.table_rows(STAGES)
    assert [r["label"] for r in rows] == ["base", "SFT", "(a) plain GRPO", "(d) full method (both papers)"]
    table = report.markdown_table(rows).splitlines()
    assert table[0] == ("| stage | ToolRL correct % | ToolRL format % | ToolRL call questions answered 'No' % | "
                        "BFCL simple_python % | BFCL multiple % | "
                        "BFCL parallel % | BFCL parallel_multiple % | BFCL non-live % | train correct, first 3 | "
                        "train correct, last 3 | all-fail share, run | all-fail share, last 3 | "
                        "unsolved prompts, end | no_call share of draws, run |")
    assert table[2] == "| base | 0.0 | 0.0 | - | 0.0 | 0.0 | 0.0 | 0.0 | 0.0 | - | - | - | - | - | - |"
    assert table[3] == "| SFT | 10.0 | 50.0 | - | 10.0 | 0.0 | 0.0 | 0.0 | 2.5 | - | - | - | - | - | - |"
    assert table[4] == ("| (a) plain GRPO | 12.5 | 60.0 | - | 10.0 | 10.0 | 0.0 | 0.0 | 5.0 | "
                        "0.200 | 0.400 | 0.480 | 0.333 | 0.500 | 0.150 |")
    assert table[5] == ("| (d) full method (both papers) | 25.0 | 90.0 | 45.0 | 20.0 | 30.0 | 10.0 | 0.0 | 15.0 | "
                        "0.300 | 0.700 | 0.250 | 0.167 | 0.100 | 0.150 |")


def test_training_prompts_column_shows_only_when_a_stage_was_asked_them():
    stages = {k: dict(v) for k, v in STAGES.items()}
    category = lambda correct, n: {"n": n, "correct": correct, "accuracy": correct / n}  # noqa: E731
    stages["sft"]["train"] = {"suite": "toolrl", "n": 64, "overall": 16 / 64,
                              "categories": {"single": category(10, 40), "multi_turn": category(6, 24)}}
    stages["a"]["train"] = {"suite": "toolrl", "n": 64, "overall": 24 / 64,
                            "categories": {"single": category(23, 40), "multi_turn": category(1, 24)}}
    rows = report.table_rows(stages)
    table = report.markdown_table(rows).splitlines()
    assert table[0].startswith("| stage | ToolRL correct % | ToolRL format % | ToolRL call questions answered 'No' % | "
                               "training prompts correct % | BFCL simple_python % |")
    assert [line.split(" | ")[4] for line in table[2:]] == ["-", "25.0", "37.5", "-"]
    assert report.markdown_train_prompts(rows) == ("| stage | single | multi_turn | all |\n|---|---|---|---|\n"
                                                   "| SFT | 10/40 | 6/24 | 16/64 |\n"
                                                   "| (a) plain GRPO | 23/40 | 1/24 | 24/64 |")
    text = report.document(DOC_INFO, rows, [])
    assert "the 64 prompts the first seed's arms drew from" in text
    assert "## The training prompts by sub-task" in text and report.markdown_train_prompts(rows) in text
    plain = report.table_rows(STAGES)   # a run from before the column: the table it always had
    assert "training prompts" not in report.markdown_table(plain) and report.markdown_train_prompts(plain) == ""
    text = report.document(DOC_INFO, plain, [])
    assert "prompts the first seed's arms drew from" not in text and "by sub-task" not in text


def test_goals_report_met_and_missed_with_the_gap():
    goals = goals_.goals(report.table_rows(STAGES))
    assert [(g["measured"], g["status"]) for g in goals] == [
        ("25.0%", "met"),                                   # >= 20%
        ("+15.0 points", "met"),                            # 25.0 - 10.0 >= +5
        ("20.0%", "met"),                                   # simple >= 10%
        ("0.52x (0.250 / 0.480)", "missed by 0.02x"),       # 0.25 / 0.48 = 0.521 > 0.5
    ]
    assert goals[0]["name"].endswith("(base 0.0%)")


def test_wall_time_goal_sums_the_stages_and_names_what_a_fresh_run_would_not_reuse():
    fresh = [{"stage": "eval base", "seconds": 300.0, "note": "generation: ToolRL 290 s"},
             {"stage": "sft", "seconds": 1500.0, "note": "-> models/x; 25 steps"},
             {"stage": "train (a)", "seconds": 3600.0, "note": ""}]
    g = goals_.wall_time_goal(fresh)
    assert (g["measured"], g["status"], g["why"]) == ("90.0 minutes", "met", "-")   # 5400 s = 90 min exactly
    cached = [{**fresh[0], "note": "cache hit: toolrl from runs/eval-cache/x.json"}, fresh[1],
              {**fresh[2], "seconds": 3606.0}]
    g = goals_.wall_time_goal(cached, resumed=[{"command": "--resume", "commit": "x"}])
    assert g["measured"] == "90.1 minutes (not one fresh run: cache hits: eval base; resumed)"
    assert g["status"] == "missed by 0.1 minutes" and "Wall time" in g["why"]
    forked = goals_.wall_time_goal(fresh, forked={"run_dir": "r"})
    assert forked["measured"] == "90.0 minutes (not one fresh run: forked)"


def test_goals_missed_by_points_and_not_run():
    stages = {"base": STAGES["base"], "sft": {"toolrl": toolrl(12, 80, 0.5), "bfcl": bfcl(ZERO)},
              "d": {"toolrl": toolrl(14, 80, 0.5), "bfcl": bfcl(ZERO), "metrics": metrics([0.0], [0.0])}}
    goals = goals_.goals(report.table_rows(stages))
    assert [g["status"] for g in goals] == ["missed by 2.5 points",   # 17.5% vs 20%
                                            "missed by 2.5 points",   # +2.5 vs +5
                                            "missed by 10.0 points",  # 0% vs 10%
                                            "not run"]                # no arm (a)


def test_missed_goals_say_why_from_the_runs_own_measurements():
    category = lambda correct, n: {"n": n, "correct": correct, "accuracy": correct / n}  # noqa: E731
    asked = lambda single, multi: {"suite": "toolrl", "n": 64, "overall": (single + multi) / 64,  # noqa: E731
                                   "categories": {"single": category(single, 40), "multi_turn": category(multi, 24)}}
    d_rows = metrics([0.1, 0.2], [0.6, 0.4])
    d_rows[0].update({"sampler/demo_rate": 0.5, "sampler/demo_solved_share": float("nan")})   # no demo group that step: left out
    d_rows[1].update({"sampler/demo_rate": 0.25, "sampler/demo_solved_share": 0.2})
    stages = {"sft": {"toolrl": toolrl(12, 80, 0.5), "bfcl": bfcl(ZERO), "train": asked(20, 12)},
              "a": {"toolrl": toolrl(13, 80, 0.5), "bfcl": bfcl(ZERO), "metrics": metrics([0.1], [0.2]),
                    "train": asked(22, 12)},
              "d": {"toolrl": toolrl(14, 80, 0.5), "bfcl": bfcl(ZERO), "metrics": d_rows, "train": asked(21, 14)}}
    goals = goals_.goals(report.table_rows(stages), ceiling="11 of the 80 (parallel 6, multi_turn 5)")
    assert goals[0]["why"] == ("the SFT model alone answers 15.0%; 11 of the 80 (parallel 6, multi_turn 5) questions "
                               "need a longer answer than the evaluation's token budget; what GRPO adds: the next row")
    # SE at 12/80: sqrt(0.15 * 0.85 / 80) = 0.03992; two SE on 64 prompts at 32/64: 2 sqrt(64 * 0.25) = 8.0;
    # (a) +2 and (d) +3 prompts are both within it
    assert goals[1]["why"] == ("(a) +1.3, (d) +2.5 points over SFT; one standard error of a rate near 15.0% over 80 "
                               "questions is 4.0 points; on the prompts the arms trained on, SFT 32/64, (a) 34/64, "
                               "(d) 35/64: no arm answered even its own training prompts right (greedily) more often "
                               "by more than two standard errors (8.0 prompts): what the updates changed did not "
                               "reach the greedy answers (the sampled ones: \"Prompts drawn again\")")
    assert goals[2]["why"] == "-"                                   # 0% BFCL simple is missed but nothing measures why
    assert goals[3]["why"] == ("37.5% of the groups (d) generated carried demos (hard-sample rounds of prompts whose "
                               "completions all failed; plain GRPO has none) and 20.0% of those groups had a correct "
                               "completion (`sampler/demo_solved_share`, mean over the steps with any): each round that "
                               "fails again is one more all-fail group")
    # where the run kept every generated group: the sampled correct rate on the prompts drawn again
    revisits = {"a": report.revisit_summary({"p": [0.5, 0.0], "q": [0.0, 1.0], "s": [0.2, 0.6]},
                                            {"p": True, "q": False, "s": False}, {"q": True, "s": False})}
    assert goals_.goals(report.table_rows(stages), revisits=revisits)[1]["why"].endswith(
        "; sampled at the training temperature, on the prompts drawn again: (a) 0.233 -> 0.533 over 3 prompts, "
        "0.100 -> 0.800 over the 2 the SFT model answered wrong, 1 of them right greedily after")
    stages["d"]["train"] = asked(30, 14)                            # +12 prompts: beyond two standard errors
    assert goals_.goals(report.table_rows(stages))[1]["why"].endswith(
        "(d) 44/64: an arm raised its training prompts by more than two standard errors (8.0 prompts) and not the "
        "test: it did not generalise")
    met = goals_.goals(report.table_rows(STAGES))                   # met goals carry no reason
    assert [g["why"] for g in met[:3]] == ["-", "-", "-"]
    text = goals_.markdown_goals(goals)
    assert text.splitlines()[0] == "| goal | target | measured | status | why, as measured in this run |"


def test_overlap_goal_compares_e_with_a_within_two_standard_errors():
    lagged = metrics([0.1, 0.2], [0.5, 0.5])
    for step, row in enumerate(lagged):
        row.update({"rollout/policy_lag_mean": 1.0 - 0.5 * step, "rollout/mismatch_k3_kl": 1e-3 * (step + 1)})
    stages = {**STAGES, "e": {"toolrl": toolrl(18, 80, 0.6), "bfcl": bfcl(ZERO), "metrics": lagged}}
    goal = goals_.goals(report.table_rows(stages))[4]
    # a 10/80 = 0.125, e 18/80 = 0.225: 2 sqrt((0.125 * 0.875 + 0.225 * 0.775) / 80) = 0.11937
    assert goal["measured"] == "+10.0 points (2 SE 11.9); policy lag 0.750, mismatch k3 1.5e-03"
    assert goal["status"] == "met"
    stages["e"]["toolrl"] = toolrl(22, 80, 0.6)   # 0.275: 2 SE = 0.12443, diff 0.15
    assert goals_.goals(report.table_rows(stages))[4]["status"] == "missed by 2.6 points"
    assert len(goals_.goals(report.table_rows(STAGES))) == 4   # no arm (e): no such goal


def test_header_names_the_runs_start_and_machine_apart_from_the_reports():
    now = {**DOC_INFO, "cpu": "Intel Xeon", "isa": ["avx2"], "loadavg": 0.5, "date": "2026-12-06T09:00:00+00:00"}
    text = report.document({**now, "started": "2026-12-05T07:13:06+00:00",
                            "machine": {"cpu": "AMD EPYC", "cores": 2, "isa": ["avx2", "avx512_bf16"]}},
                           report.table_rows(STAGES), [])
    assert ("`.venv/bin/python -m bench.learning --seed 3` started 2026-12-05T07:13:06+00:00, seed 3, commit `abc`. "
            "Machine of the run: AMD EPYC, 2 cores (avx2, avx512_bf16); report written 2026-12-06T09:00:00+00:00 on "
            "Intel Xeon, 2 cores (avx2) (1-min load average 0.5;") in text
    old = report.document(now, report.table_rows(STAGES), [])   # a run from before its machine was kept
    assert "Machine: report written 2026-12-06T09:00:00+00:00 on Intel Xeon" in old
    assert "the run's own machine was not recorded." in old


def test_a_run_without_a_recorded_start_is_dated_by_its_directory_name():
    from bench.learning_run import started_from_name

    assert started_from_name(Path("runs/learn-20261205-071306")) == (
        "2026-12-05T07:13:06 (local time, from the run directory's name)")
    assert started_from_name(Path("/tmp/somewhere")) is None


def test_all_fail_ratio_when_plain_grpo_never_all_fails():
    stages = {"a": {"metrics": metrics([1.0], [0.0])}, "d": {"metrics": metrics([1.0], [0.0])}}
    assert goals_.goals(report.table_rows(stages))[3]["status"] == "met"   # 0 / 0 counts as 0
    stages["d"] = {"metrics": metrics([1.0], [0.1])}
    assert goals_.goals(report.table_rows(stages))[3]["status"] == "missed ((a) never all-failed)"


def test_document_names_everything_a_reader_needs():
    rows = report.table_rows(STAGES)
    info = DOC_INFO
    text = report.document(info, rows, ["learning/correct.png"])
    for needle in ("`.venv/bin/python -m bench.learning --seed 3`", "seed 3", "commit `abc`", "AMD EPYC, 2 cores",
                   "`runs/learn-x`", "for 15 steps", "at most 160 new tokens", "(80 questions", "(40 questions",
                   "(rollout.n 10, learner.lr 5e-06)",
                   "| eval base | 1 m 05 s | n |\n| train (a) | 60 m 00 s |  |\n| total | 61 m 05 s | |",
                   "```\n# eval base\nx y\n# train (a)\n```",
                   "| (d) full method (both papers) | `--sampler.hard_rounds true --sampler.priority reward_stats "
                   "--sampler.curriculum true --reward.exemplar_bonus 0.01` |",
                   "![correct](learning/correct.png)", report.markdown_table(rows)):
        assert needle in text, needle
    assert "## Goals" not in text   # the goals table is learning_goals', handed in as text
    table = goals_.markdown_goals(goals_.goals(rows))
    text = report.document({**info, "goals": table}, rows, [])
    assert f"## Goals\n\n{table}\n" in text and text.count("| met |") == 3 and "| missed by 0.02x |" in text
    assert "continued with" not in text and "Prompts each arm drew from" not in text and "no model reaches" not in text
    ceiling = report.document({**info, "ceiling": "11 of the 80 (parallel 6, multi_turn 5)"}, rows, [])
    assert ("(80 questions, scored by our reward's `correct`; 11 of the 80 (parallel 6, multi_turn 5) have a "
            "reference answer longer than 160 tokens as the completion SFT teaches, so no model reaches them at "
            "this budget); BFCL") in ceiling
    resumed = report.document({**info, "resumed": ["python -m bench.learning --resume runs/learn-x",
                                                   {"command": "python -m bench.learning --resume runs/learn-x "
                                                               "--arms d", "commit": "`abc`"}],
                               "prompts": "(a) (d) 25 prompts, 39 rows left out as too long"}, rows, [])
    assert ("The run was continued (an arm had stopped, or arms or seeds were added) with `python -m bench.learning --resume runs/learn-x`; "
            "`python -m bench.learning --resume runs/learn-x --arms d` at commit `abc` (each unfinished") in resumed
    assert "Prompts each arm drew from (the run's start event): (a) (d) 25 prompts, 39 rows left out" in resumed


def test_figures_plot_exactly_the_logged_values():
    fig = plots_.figure_rewards(STAGES["d"]["metrics"], "d")
    main, exemplar = fig.axes
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in main.lines}
    assert set(lines) == {"format", "tool_name", "param_name", "param_value", "correct"}
    assert lines["correct"] == ([0, 1, 2, 3, 4], [0.0, 0.3, 0.6, 0.6, 0.9])
    assert [line.get_label() for line in exemplar.lines] == ["exemplar"]

    fig = plots_.figure_arms({a: STAGES[a]["metrics"] for a in ("a", "d")}, "sampler/all_fail_share", "t")
    (ax,) = fig.axes
    assert [(line.get_label(), list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines] == [
        ("(a) plain GRPO", [0, 1, 2, 3, 4], [0.8, 0.6, 0.4, 0.4, 0.2]),
        ("(d) full method (both papers)", [0, 1, 3, 4], [0.5, 0.1, 0.2, 0.2])]   # the null step is not drawn

    fig = plots_.figure_eval(report.table_rows(STAGES))
    heights = [round(p.get_height(), 6) for p in fig.axes[0].patches]
    assert heights == [0.0, 10.0, 12.5, 25.0, 0.0, 2.5, 5.0, 15.0]   # ToolRL bars, then BFCL bars


def test_write_plots_replaces_the_old_pngs(tmp_path):
    (tmp_path / "rewards_b.png").write_bytes(b"stale")
    rows = report.table_rows(STAGES)
    paths = plots_.write_plots(rows, {a: STAGES[a]["metrics"] for a in ("a", "d")}, tmp_path)
    assert sorted(p.name for p in paths) == sorted(p.name for p in tmp_path.iterdir()) == [
        "all_fail.png", "correct.png", "eval.png", "rewards_a.png", "rewards_d.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_a_failing_subprocess_stops_its_partner_and_names_stage_and_log(tmp_path, capsys):
    import sys
    import time

    from bench.learning import run_logged

    fail = [sys.executable, "-c", "import sys; print('broken model dir'); sys.exit(3)"]
    slow = [sys.executable, "-c", "import time; time.sleep(60)"]
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exc:
        run_logged("eval sft", [(slow, tmp_path / "slow.log"), (fail, tmp_path / "fail.log")])
    assert time.perf_counter() - start < 30   # the sleeper was terminated, not waited for
    assert str(exc.value) == f"learning: stage 'eval sft' failed (exit 3); log: {tmp_path / 'fail.log'}"
    assert "broken model dir" in (tmp_path / "fail.log").read_text()
    assert "broken model dir" in capsys.readouterr().err   # the log's tail is shown too


def test_noise_note_gives_the_binomial_standard_error_of_the_sft_rate():
    # SFT: 8 of 80 correct, p = 0.1: se = sqrt(0.1 * 0.9 / 80) = 0.03354 -> 3.4 points, 2 se 6.7 points
    note = report.noise_note(report.table_rows(STAGES))
    assert note.startswith("Noise: one seed, 80 ToolRL questions (one question is 1.25 points)")
    assert "rate (10.0%) the standard error of a ToolRL correct rate is 3.4 points" in note
    assert "smaller than about 6.7 points" in note
    assert report.noise_note(report.table_rows({"base": STAGES["base"]})) == ""


def test_compare_sets_two_runs_side_by_side_stage_by_stage():
    rows = report.table_rows(STAGES)
    earlier = report.table_rows({"sft": {"toolrl": toolrl(4, 80, 0.25), "bfcl": bfcl(ZERO)},
                                 "a": {"toolrl": toolrl(6, 80, 0.5), "bfcl": bfcl(ZERO),
                                       "metrics": metrics([0.0, 0.1, 0.1], [1.0, 0.9, 0.9])}})
    text = report.markdown_compare(rows, earlier, {"command": "make learn", "run_dir": "runs/x", "commit": "`abc`",
                                                   "seed": 0, "steps": 3},
                                   {"model.dtype": ("bfloat16", "float32")})
    lines = text.splitlines()
    assert "Settings that differ: model.dtype: bfloat16 here, float32 there." in lines[0]
    assert "runs/x" in lines[0] and "3 steps per arm" in lines[0]
    table = [line for line in lines if line.startswith("| ")][1:]
    assert table == ["| SFT | 10.0 / 5.0 | 50.0 / 25.0 | 2.5 / 0.0 | - / - |",
                     "| (a) plain GRPO | 12.5 / 7.5 | 60.0 / 50.0 | 5.0 / 0.0 | 0.400 / 0.067 |"]  # base: not in both


def test_eval_key_follows_the_model_files_and_the_command_not_the_output(tmp_path):
    from bench.learning import PYTHON, eval_key

    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "config.json").write_text("{}")
    cmd = [*PYTHON, "eval", "--suite", "toolrl", "--model", str(tmp_path), "--out", "a.json"]
    key = eval_key(tmp_path, cmd)
    assert eval_key(tmp_path, cmd[:-1] + ["b.json"]) == key               # where it is written: no
    assert eval_key(tmp_path, cmd[:4] + ["bfcl"] + cmd[5:]) != key          # what is evaluated: yes
    copy = tmp_path / "copy"   # the same files read from another path (a symlinked checkout): the same key
    copy.mkdir()
    for name in ("model.safetensors", "config.json"):
        (copy / name).write_bytes((tmp_path / name).read_bytes())
    assert eval_key(copy, [str(copy) if a == str(tmp_path) else a for a in cmd]) == key
    (tmp_path / "model.safetensors").write_bytes(b"weightz")
    assert eval_key(tmp_path, cmd) != key                                    # the weights: yes


def test_eval_key_reads_a_data_file_by_its_content_not_its_path(tmp_path):
    from bench.learning import PYTHON, eval_key

    (tmp_path / "config.json").write_text("{}")
    for name, text in (("one.jsonl", "x\n"), ("two.jsonl", "x\n"), ("three.jsonl", "y\n")):
        (tmp_path / name).write_text(text)
    cmd = lambda name: [*PYTHON, "eval", "--suite", "toolrl", "--model", str(tmp_path), "--data", str(tmp_path / name),
                        "--out", "a.json"]
    assert eval_key(tmp_path, cmd("one.jsonl")) == eval_key(tmp_path, cmd("two.jsonl"))
    assert eval_key(tmp_path, cmd("one.jsonl")) != eval_key(tmp_path, cmd("three.jsonl"))


def test_a_cached_evaluation_is_reused_and_said_so(tmp_path, monkeypatch, tiny_model):
    import argparse
    import json

    from bench import learning
    from toolexpander.data import load_tasks
    from toolexpander.trainset import training_tasks

    monkeypatch.setattr(learning, "EVAL_CACHE", tmp_path / "cache")
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    args = argparse.Namespace(steps=1, smoke=False, seed=0, seeds=None)
    p = learning.Pipeline(args, learning.SMOKE_CONFIG, [], run_dir)
    seconds = {"toolrl": 7.0, "bfcl": 9.0, "train": 5.0}
    calls = []

    def run_logged(stage, jobs):   # each subprocess stubbed: writes its --out, a summary naming its log
        calls.append((stage, sorted(Path(log).name for _, log in jobs)))
        for cmd, log in jobs:
            suite = Path(log).stem.rsplit("_", 1)[1]
            out = Path(cmd[cmd.index("--out") + 1])
            extra = {"samples": int(cmd[cmd.index("--samples") + 1])} if "--samples" in cmd else {}
            out.write_text(json.dumps({"summary": {"overall": 0.5, "seconds": seconds[suite], **extra}, "entries": []}))

    monkeypatch.setattr(learning, "run_logged", run_logged)
    # A first evaluation misses the cache: the three subprocesses run and their outputs are stored.
    p.evaluate("sft", model, cache=True)
    assert calls == [("eval sft", ["eval_sft_bfcl.log", "eval_sft_toolrl.log", "eval_sft_train.log"])]
    assert len(list((tmp_path / "cache").iterdir())) == 3
    # The training prompts: the tasks `toolexpander train` picks with the first seed, the file `--data` names.
    prompts = load_tasks(run_dir / "train_prompts.jsonl")
    assert prompts == training_tasks(p.cfg, tiny_model)[0] and len(prompts) > 1
    train_cmd = p.state["stages"][-1]["commands"][2]
    assert f"--data {run_dir / 'train_prompts.jsonl'}" in train_cmd and "--suite toolrl" in train_cmd
    # A second run directory: nothing runs (its own copy of the prompts: the same content), the results
    # are the cached ones, the note says where from.
    run2 = tmp_path / "run2"
    run2.mkdir()
    p2 = learning.Pipeline(args, learning.SMOKE_CONFIG, [], run2)
    p2.evaluate("sft", model, cache=True)
    assert len(calls) == 1
    assert learning.load_summary(run2, "sft", "bfcl") == {"overall": 0.5, "seconds": 9.0}
    stage = p2.state["stages"][-1]
    assert stage["note"].startswith("cache hit: toolrl from ") and stage["note"].endswith(
        "generation: ToolRL 7 s, BFCL 9 s, training prompts 5 s")
    # A partial hit (one cached result gone) runs only the missing suite.
    for path in (tmp_path / "cache").iterdir():
        if json.loads(path.read_text())["summary"]["seconds"] == 9.0:
            path.unlink()
    (tmp_path / "run3").mkdir()
    learning.Pipeline(args, learning.SMOKE_CONFIG, [], tmp_path / "run3").evaluate("sft", model, cache=True)
    assert calls[-1] == ("eval sft", ["eval_sft_bfcl.log"])
    # New weights: a miss again. An arm of another seed than the first is not asked the training prompts.
    (model / "model.safetensors").write_bytes(b"weightz")
    p2.evaluate("sft", model, cache=True)
    assert calls[-1] == ("eval sft", ["eval_sft_bfcl.log", "eval_sft_toolrl.log", "eval_sft_train.log"])
    p2.evaluate("a-s1", model)
    assert calls[-1] == ("eval (a-s1)", ["eval_a-s1_bfcl.log", "eval_a-s1_toolrl.log"])
    # only_missing (a resumed run's finished stage): only the suites without an output; none: nothing runs.
    (run2 / "eval" / "a-s1_toolrl.json").unlink()
    p2.evaluate("a-s1", model, only_missing=True)
    assert calls[-1] == ("eval (a-s1)", ["eval_a-s1_toolrl.log"])
    n = len(calls)
    p2.evaluate("a-s1", model, only_missing=True)
    assert len(calls) == n
    # --eval-samples K: every stage but the base also answers the ToolRL questions K times, sampled at the
    # training temperature with one fixed seed; a resumed run's finished stage gets only that.
    seconds["sampled"] = 11.0
    p4 = learning.Pipeline(argparse.Namespace(**vars(args), eval_samples=4), learning.SMOKE_CONFIG, [], run2)
    p4.evaluate("a-s1", model, only_missing=True)
    assert calls[-1] == ("eval (a-s1)", ["eval_a-s1_sampled.log"])
    sampled_cmd = p4.state["stages"][-1]["commands"][0]
    assert (f"--samples 4 --temperature {p4.cfg.rollout.temperature} --seed 0 --out {run2 / 'eval' / 'a-s1_sampled.json'}"
            in sampled_cmd) and "--suite toolrl" in sampled_cmd
    p4.evaluate("base", model)
    assert calls[-1] == ("eval base", ["eval_base_bfcl.log", "eval_base_toolrl.log", "eval_base_train.log"])
    assert p4.state["eval_samples"] == 4


def test_arm_prompts_reads_each_arms_start_event(tmp_path):
    import json

    from bench.learning_run import arm_prompts

    for arm, message in [("a", "mode=local tasks=25 too_long=39"), ("b", "mode=local tasks=25 too_long=39"),
                         ("c", "mode=cluster tasks=64 too_long=0"),
                         ("e", "mode=local tasks=64 too_long=39 long_answer=12 mix=no_call:64")]:
        (tmp_path / f"arm_{arm}").mkdir()
        (tmp_path / f"arm_{arm}" / "events.jsonl").write_text(
            json.dumps({"step": 0, "event": "start", "message": message}) + "\n")
    assert arm_prompts(tmp_path, ["a", "b", "c", "d", "e"]) == (
        "(a) (b) 25 prompts, 39 rows left out as too long; (c) 64 prompts, 0 rows left out as too long; "
        "(e) 64 prompts, 39 rows left out as too long and 12 for an answer longer than data.max_answer_tokens")


def test_resume_trains_only_the_arms_without_evaluations(tmp_path, monkeypatch, tiny_model):
    import json

    from bench import learning

    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    stages = [{"stage": s, "seconds": 1.0, "note": "", "commands": []} for s in ("eval base", "train (a)", "eval (a)")]
    state = {"command": "x", "config": learning.SMOKE_CONFIG, "seed": 3, "steps": 5,
             "overrides": ["--sft.output_dir", str(tmp_path / "no-sft")],   # no warm start there
             "arms": ["a"], "stages": stages, "commit": "`abc`", "started": "t0", "machine": {"cpu": "c", "cores": 2}}
    (run / "learning.json").write_text(json.dumps(state))
    for suite in ("toolrl", "bfcl"):
        (run / "eval" / f"a_{suite}.json").write_text(json.dumps({"summary": {"overall": 0.1, "seconds": 1}}))
    (run / "arm_b").mkdir()                                     # killed in the middle of (b)
    calls = []
    monkeypatch.setattr(learning.Pipeline, "train", lambda self, arm, sft, seed: calls.append(
        ("train", arm, self.steps, seed)) or (report.stage_id(arm, seed, self.seed), sft))
    missing = []   # the finished stages' evaluations completed (only_missing): base, and (a)
    monkeypatch.setattr(learning.Pipeline, "evaluate", lambda self, arm, model, cache=False, only_missing=False: (
        missing if only_missing else calls).append(arm if only_missing else ("eval", arm)))
    monkeypatch.setattr(learning.Pipeline, "sft", lambda self, out, stage="sft": calls.append((stage,)) or tmp_path)
    monkeypatch.setattr(learning, "write_report", lambda run_dir, out, compare=None: out / "LEARNING.md")
    monkeypatch.setattr(learning, "_commit", lambda: "`def`")
    learning.main(["--resume", str(run), "--arms", "a,b,c", "--out", str(tmp_path)])
    # No warm start of this run's on disk (none in sft.output_dir): trained again before the arms.
    assert calls == [("sft again",), ("train", "b", 5, 3), ("eval", "b"), ("train", "c", 5, 3), ("eval", "c")]
    assert sorted(missing) == ["a", "base"]   # not the SFT: the warm start on disk is not this run's
    assert (run / "arm_b.failed-0").is_dir() and not (run / "arm_b").exists()
    kept = json.loads((run / "learning.json").read_text())
    assert [s["stage"] for s in kept["stages"]] == ["eval base", "train (a)", "eval (a)"]
    assert kept["arms"] == ["a"] and kept["commit"] == "`abc`"   # the run's start commit is kept
    assert kept["started"] == "t0" and kept["machine"] == {"cpu": "c", "cores": 2}   # and its date and machine
    assert [r["commit"] for r in kept["resumed"]] == ["`def`"]    # the resume's own is recorded beside it
    # A second resume keeps the first one's record.
    (run / "eval" / "b_toolrl.json").write_text(json.dumps({"summary": {"overall": 0.1, "seconds": 1}}))
    learning.main(["--resume", str(run), "--arms", "a,b", "--out", str(tmp_path)])
    assert len(json.loads((run / "learning.json").read_text())["resumed"]) == 2


def test_a_resumed_runs_missing_evaluations_run_two_stages_at_a_time(tmp_path, monkeypatch, tiny_model):
    import argparse
    import threading
    import time

    from bench import learning

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    p = learning.Pipeline(argparse.Namespace(steps=1, smoke=False, seed=0, seeds=None), learning.SMOKE_CONFIG,
                          [], run_dir)
    active, peak, lock = [0], [0], threading.Lock()

    def evaluate(stage, model, cache=False, only_missing=False):
        if stage == "d":   # fails at once, while its partner still runs
            raise learning.StageFailed("eval (d)", 1, tmp_path / "d.log")
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.3)
        p._record(f"eval {stage}", time.perf_counter(), [["x", stage]])
        with lock:
            active[0] -= 1

    monkeypatch.setattr(p, "evaluate", evaluate)
    with pytest.raises(learning.StageFailed):
        p.evaluate_finished(["a", "b", "d", "c", "e", "e-s1", "e-s2"], tmp_path / "no-sft")
    assert peak[0] == min(2, os.cpu_count() or 1)
    stages = [s["stage"] for s in json.loads((run_dir / "learning.json").read_text())["stages"]]
    assert {"eval base", "eval a", "eval b"} <= set(stages)   # every stage records into the one learning.json
    assert "eval e-s1" not in stages and "eval e-s2" not in stages   # not started after the failure


def test_a_second_seed_resumes_after_the_first_seeds_arms(tmp_path, monkeypatch):
    import json

    from bench import learning

    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    state = {"command": "x", "config": learning.SMOKE_CONFIG, "overrides": [], "seed": 0, "seeds": [0, 1],
             "steps": 5, "arms": ["a", "d", "a-s1"], "stages": [], "commit": "`abc`"}
    (run / "learning.json").write_text(json.dumps(state))
    for stage in ("a", "d", "a-s1"):
        for suite in ("toolrl", "bfcl"):
            (run / "eval" / f"{stage}_{suite}.json").write_text(json.dumps({"summary": {"overall": 0.1}}))
    (run / "arm_d-s1").mkdir()                                  # killed in the middle of (d) with seed 1
    calls = []
    monkeypatch.setattr(learning.Pipeline, "train", lambda self, arm, sft, seed: calls.append(
        ("train", arm, seed)) or (report.stage_id(arm, seed, self.seed), sft))
    monkeypatch.setattr(learning.Pipeline, "evaluate", lambda self, stage, model, cache=False, only_missing=False:
                        None if only_missing else calls.append(("eval", stage)))
    monkeypatch.setattr(learning.Pipeline, "warm_start_for", lambda self, stages: tmp_path)   # its own test below
    monkeypatch.setattr(learning, "write_report", lambda run_dir, out, compare=None: out / "LEARNING.md")
    learning.main(["--resume", str(run), "--arms", "a,d", "--out", str(tmp_path)])
    assert calls == [("train", "d", 1), ("eval", "d-s1")]
    assert (run / "arm_d-s1.failed-0").is_dir() and not (run / "arm_d-s1").exists()
    # Without --arms a resume trains the run's own arms ("plan"), not every arm.
    state = json.loads((run / "learning.json").read_text())
    assert state["plan"] == ["a", "d"]
    calls.clear()
    learning.main(["--resume", str(run), "--out", str(tmp_path)])
    assert calls == [("train", "d", 1), ("eval", "d-s1")]
    # More seeds for the same run: its own seeds first, then the one added; a different order is refused.
    calls.clear()
    learning.main(["--resume", str(run), "--arms", "a,d", "--seeds", "0,1,2", "--out", str(tmp_path)])
    assert calls == [("train", "d", 1), ("eval", "d-s1"), ("train", "a", 2), ("eval", "a-s2"),
                     ("train", "d", 2), ("eval", "d-s2")]
    assert json.loads((run / "learning.json").read_text())["seeds"] == [0, 1, 2]
    with pytest.raises(SystemExit):
        learning.main(["--resume", str(run), "--seeds", "1,0"])
    # Arms added with some of the run's seeds only: just those are trained; the run keeps every seed.
    calls.clear()
    learning.main(["--resume", str(run), "--arms", "a,b,d", "--seeds", "0", "--out", str(tmp_path)])
    assert calls == [("train", "b", 0), ("eval", "b")]
    calls.clear()
    learning.main(["--resume", str(run), "--arms", "b", "--seeds", "2,3", "--out", str(tmp_path)])
    assert calls == [("train", "b", 2), ("eval", "b-s2"), ("train", "b", 3), ("eval", "b-s3")]
    assert json.loads((run / "learning.json").read_text())["seeds"] == [0, 1, 2, 3]
    with pytest.raises(SystemExit):
        learning.main(["--resume", str(run), "--seeds", "2,4,1"])


def test_a_resume_trains_its_arms_from_its_own_warm_start(tmp_path, monkeypatch):
    """The warm start on disk is the run's when `toolexpander sft`'s own cache key says so."""
    import argparse

    from bench import learning
    from bench.learning import REPO
    from toolexpander import sft
    from toolexpander.config import load_config, parse_overrides

    run_dir, model = tmp_path / "run", tmp_path / "warm"
    run_dir.mkdir()
    p = learning.Pipeline(argparse.Namespace(steps=1, smoke=False, seed=0, seeds=None), learning.SMOKE_CONFIG,
                          ["--sft.output_dir", str(model)], run_dir)
    sft_calls = []
    monkeypatch.setattr(learning.Pipeline, "sft", lambda self, out, stage="sft": sft_calls.append(stage) or model)
    cfg = load_config(REPO / learning.SMOKE_CONFIG, parse_overrides(["--sft.seed", "0"]))
    key = sft.cache_key(cfg.model_copy(update={"data": cfg.data.model_copy(
        update={"train_path": str(REPO / cfg.data.train_path)})}), REPO / cfg.model.path)
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    (model / sft.MARKER).write_text(json.dumps({"hash": key, "complete": True}))
    assert p.warm_start_for(["b"]) == model and sft_calls == []      # the run's own: used as it is

    def pipeline(name, overrides, seed=0):
        (tmp_path / name).mkdir()
        return learning.Pipeline(argparse.Namespace(steps=1, smoke=False, seed=seed, seeds=None),
                                 learning.SMOKE_CONFIG, ["--sft.output_dir", str(model), *overrides], tmp_path / name)

    # A run that differs in other sections only (sampler, train) shares the warm start: no "sft again".
    assert pipeline("other", ["--sampler.tau", "2.0", "--train.steps", "7"]).owns_warm_start(model)
    assert not pipeline("rows", ["--sft.rows", "3"]).owns_warm_start(model)     # another run's sft settings
    assert not pipeline("lr", ["--sft.lr", "0.00123"]).owns_warm_start(model)
    assert not pipeline("seed1", [], seed=1).owns_warm_start(model)             # another SFT seed
    (model / sft.MARKER).write_text(json.dumps({"hash": "another run's", "complete": True}))
    assert not p.owns_warm_start(model)
    assert p.warm_start_for([]) == model and sft_calls == []         # nothing to train: nothing retrained
    assert p.warm_start_for(["b", "d-s1"]) == model and sft_calls == ["sft again"]
    (model / sft.MARKER).write_text(json.dumps({"hash": key, "complete": False}))   # killed mid-way
    assert not p.owns_warm_start(model)


def test_sft_again_leaves_the_runs_first_warm_start_records(tmp_path, tiny_model):
    """A real `toolexpander sft` on the tiny model (SMOKE_OVERRIDES: 8 rows), as a resume's "sft again"."""
    import argparse

    from bench import learning

    run_dir = tmp_path / "run"
    for d in ("logs", "sft"):
        (run_dir / d).mkdir(parents=True)
    (run_dir / "logs" / "sft.log").write_text("first")
    (run_dir / "sft" / "metrics.jsonl").write_text("{}\n")
    p = learning.Pipeline(argparse.Namespace(steps=1, smoke=True, seed=0, seeds=None), learning.SMOKE_CONFIG,
                          learning.SMOKE_OVERRIDES, run_dir)
    model = p.sft(tmp_path / "warm", stage="sft again")
    assert (model / "config.json").is_file()                        # an HF export, trained here
    assert (run_dir / "logs" / "sft.log").read_text() == "first"    # the run's first SFT: its log and metrics
    assert (run_dir / "sft" / "metrics.jsonl").read_text() == "{}\n"
    assert (run_dir / "logs" / "sft_again.log").is_file() and (run_dir / "sft_again" / "metrics.jsonl").is_file()
    (stage,) = json.loads((run_dir / "learning.json").read_text())["stages"]
    assert stage["stage"] == "sft again" and stage["note"].startswith("-> ") and "2 steps, loss" in stage["note"]


def test_seeds_and_set_arguments_are_checked():
    from bench import learning

    assert learning._override("data.subset_mix=file") == ("--data.subset_mix", "file")
    for bad in (["--seeds", "0,x"], ["--seeds", "1,1"], ["--seeds", ","], ["--seed", "2", "--seeds", "0,1"],
                ["--set", "subset_mix=file"], ["--set", "data.subset_mix"], ["--resume", "x", "--set", "a.b=1"]):
        with pytest.raises(SystemExit):
            learning.main(bad)


def test_stage_names_carry_every_seed_but_the_first():
    assert report.stage_id("a", 0, 0) == "a" and report.stage_id("d", 2, 0) == "d-s2"
    assert report.split_stage("d-s2") == ("d", 2) and report.split_stage("a") == ("a", None)
    assert report.split_stage("sft") == ("sft", None)
    assert report.label("d-s2") == "(d) full method (both papers), seed 2"
    assert report.label("a", 0) == "(a) plain GRPO, seed 0" and report.label("a") == "(a) plain GRPO"
    assert report.label("sft", 0) == "SFT"


SEEDED = {**STAGES,
          "a-s1": {"toolrl": toolrl(6, 80, 0.5), "bfcl": bfcl({**ZERO, "simple_python": 0.3}),
                   "metrics": metrics([0.2, 0.2, 0.2, 0.4, 0.6], [0.6, 0.6, 0.6, 0.6, 0.6])},
          "d-s1": {"toolrl": toolrl(12, 80, 0.7), "bfcl": bfcl({**ZERO, "simple_python": 0.5}),
                   "metrics": metrics([0.0, 0.0, 0.3, 0.3, 0.3], [0.2, 0.2, 0.2, 0.2, 0.2])}}


def test_seed_means_average_each_arm_over_its_seeds():
    rows = report.table_rows(SEEDED, first_seed=0)
    assert [r["label"] for r in rows] == ["base", "SFT", "(a) plain GRPO, seed 0", "(d) full method (both papers), seed 0",
                                          "(a) plain GRPO, seed 1", "(d) full method (both papers), seed 1"]
    means = {m["stage"]: m for m in report.seed_means(rows)}
    assert list(means) == ["base", "sft", "a", "d"]
    a, d = means["a"], means["d"]
    assert a["seeds"] == [0, 1] and d["seeds"] == [0, 1]
    assert a["toolrl_correct"] == pytest.approx((10 + 6) / 160) and d["toolrl_correct"] == pytest.approx(32 / 160)
    assert a["toolrl_format"] == pytest.approx(0.55) and a["bfcl_simple"] == pytest.approx(0.2)
    assert a["bfcl"]["simple_python"] == pytest.approx(0.2) and a["bfcl"]["multiple"] == pytest.approx(0.05)
    assert a["correct_last"] == pytest.approx(((0.3 + 0.4 + 0.5) / 3 + (0.2 + 0.4 + 0.6) / 3) / 2)
    # (d) seed 0 logged a null all-fail share at step 2: its mean is over the 4 values it has.
    assert d["all_fail_mean"] == pytest.approx(((0.5 + 0.1 + 0.2 + 0.2) / 4 + 0.2) / 2)
    assert means["sft"]["toolrl_correct"] == pytest.approx(0.1) and means["sft"]["seeds"] == []
    # One seed per arm: the same values as the table.
    single = {m["stage"]: m for m in report.seed_means(report.table_rows(STAGES))}
    assert single["d"]["toolrl_correct"] == pytest.approx(0.25) and single["d"]["seeds"] == [None]
    assert not report.several_seeds(report.table_rows(STAGES)) and report.several_seeds(rows)


def test_across_seeds_section_lists_each_seed_and_the_paired_differences():
    rows = report.table_rows(SEEDED, first_seed=0)
    text = report.markdown_seeds(rows)
    assert "| (a) plain GRPO | 0, 1 | 10.0 (12.5 / 7.5) | 55.0 (60.0 / 50.0) |" in text
    assert "| (d) full method (both papers) | 0, 1 | 20.0 (25.0 / 15.0) | 80.0 (90.0 / 70.0) |" in text
    assert "- (d) minus (a), ToolRL correct, seed by seed: seed 0 +12.5, seed 1 +7.5; mean +10.0 points." in text
    goals = goals_.goals(rows)
    assert goals[0]["measured"] == "20.0%, mean of 2 seeds" and goals[0]["status"] == "met"
    assert goals[1]["measured"] == "+10.0 points, mean of 2 seeds"
    note = report.noise_note(rows)
    assert note.startswith("Noise: several seeds per arm: the ToolRL correct rate of one arm moved between its "
                           "seeds by 5.0 points ((a) plain GRPO), 10.0 points ((d) full method (both papers)); 80 ")
    info = {"command": "x", "date": "d", "seed": 0, "seeds": [0, 1], "commit": "`abc`", "cpu": "c", "cores": 2,
            "loadavg": 1.0, "run_dir": "r", "config": "k", "steps": 5, "max_tokens": 16, "bfcl_limit": 10,
            "bfcl_categories": ["simple_python"], "arms": ["a", "d", "a-s1", "d-s1"], "stages": []}
    doc = report.document({**info, "mix": {0: "no_call 10, parallel 4", 1: "no_call 6, parallel 14"},
                           "test_mix": "no_call 2, parallel 35"}, rows, [])
    assert ("Training prompts per sub-task: seed 0: no_call 10, parallel 4; seed 1: no_call 6, parallel 14 "
            "(the ToolRL test set: no_call 2, parallel 35).") in doc
    assert "Training prompts per sub-task" not in report.document(info, rows, [])
    assert "Protocol: config `k` with `--data.subset_mix file` (" in report.document(
        {**info, "overrides": ["--data.subset_mix", "file"], "settings": {"data.subset_mix": "file"}}, rows, [])
    assert "`x`, seeds 0, 1, commit" in doc and "## Across seeds" in doc and text in doc
    assert "with each of the seeds 0, 1 (train, sampler and rollout seed; the SFT warm start is trained once, " \
           "with seed 0" in doc
    assert doc.count("| (a) plain GRPO | `--sampler.hard_rounds false") == 1
    assert "## Across seeds" not in report.document({**info, "seeds": [0]}, report.table_rows(STAGES), [])


def test_sign_test_is_the_exact_binomial_tail_on_the_changed_questions():
    assert report.sign_test_p(0, 0) == 1.0
    assert report.sign_test_p(3, 3) == 1.0
    assert report.sign_test_p(5, 0) == pytest.approx(2 / 32)        # both tails of 5 coin flips
    assert report.sign_test_p(1, 8) == pytest.approx(2 * (1 + 9) / 512)
    assert report.sign_test_p(8, 1) == report.sign_test_p(1, 8)


def test_paired_comparisons_count_gained_and_lost_questions_against_sft_and_same_seed_a():
    rows = report.table_rows(SEEDED, first_seed=0)
    ids = [f"q{i}" for i in range(6)]
    right = lambda *hits: {q: i in hits for i, q in enumerate(ids)}  # noqa: E731
    answers = {"sft": {"toolrl": right(0, 1, 2), "bfcl": right(0)},
               "a": {"toolrl": right(0, 1, 3, 4, 5), "bfcl": None},
               "d": {"toolrl": right(0), "bfcl": right(0, 1)},
               "a-s1": {"toolrl": right(1, 2), "bfcl": right()},
               "d-s1": {"toolrl": None, "bfcl": None}}
    got = report.paired_comparisons(rows, answers, ("toolrl", "bfcl"))
    assert [(name, against) for name, against, _ in got] == [
        ("(a) plain GRPO, seed 0", "SFT"), ("(d) full method (both papers), seed 0", "SFT"),
        ("(a) plain GRPO, seed 1", "SFT"), ("(d) full method (both papers), seed 1", "SFT"),
        ("(d) full method (both papers), seed 0", "(a) plain GRPO, seed 0"),
        ("(d) full method (both papers), seed 1", "(a) plain GRPO, seed 1")]
    assert got[0][2][0] == {"questions": 6, "both_right": 2, "gained": 3, "lost": 1, "p": pytest.approx(0.625)}
    assert got[0][2][1] is None and got[3][2] == [None, None]
    assert got[4][2][0] == {"questions": 6, "both_right": 1, "gained": 0, "lost": 4, "p": pytest.approx(0.125)}
    text = report.markdown_paired(got)
    assert "| (a) plain GRPO, seed 0 | SFT | 2 | 3 | 1 | +33.3 | 0.62 | - | - | - | - | - |" in text
    assert "| (d) full method (both papers), seed 0 | SFT | 1 | 0 | 2 | -33.3 | 0.50 | 1 | 1 | 0 | +16.7 | 1.00 |" in text
    assert "seed 1 | SFT |" not in text.replace("(a) plain GRPO, seed 1 | SFT", "")   # (d) seed 1: nothing to show
    doc = report.document({**DOC_INFO, "paired": text}, report.table_rows(STAGES), [])
    assert "## Question by question" in doc and text in doc
    assert "## Question by question" not in report.document(DOC_INFO, report.table_rows(STAGES), [])


def test_sampled_answers_compare_per_question_rates_with_a_paired_standard_error():
    p = report.paired_rates({"q1": 0.5, "q2": 0.25, "q3": 0.0, "q4": 1.0}, {"q1": 0.75, "q2": 0.75, "q3": 0.0, "q5": 1.0})
    # differences 0.25, 0.5, 0: mean 0.25, sample sd 0.25, se 0.25 / sqrt(3)
    assert p == pytest.approx({"questions": 3, "up": 2, "down": 0, "same": 1, "mean": 0.25,
                               "se": 0.25 / 3 ** 0.5, "p": math.erfc(3 ** 0.5 / 2 ** 0.5)})
    assert report.paired_rates({"q": 0.5}, {"q": 0.5})["p"] == 1.0
    rows = report.table_rows(SEEDED, first_seed=0)
    rates = {"sft": {"sampled": {"q1": 0.5, "q2": 0.25, "q3": 0.0}},
             "a": {"sampled": {"q1": 0.75, "q2": 0.75, "q3": 0.0}}, "d": {"sampled": None}}
    comparisons = report.paired_comparisons(rows, rates, ("sampled",), report.paired_rates)
    summaries = {"SFT": {"samples": 8, "overall": 0.25, "pass_at_k": {"overall": 0.5}, "means": {"format": 0.9},
                         "no_call_opening": 0.125},
                 "(a) plain GRPO, seed 0": {"samples": 8, "overall": 0.5, "pass_at_k": {"overall": 0.75}}}
    text = report.markdown_sampled(summaries, comparisons)
    assert "| SFT | 8 | 25.0 | 50.0 | 90.0 | 12.5 |" in text
    assert "| (a) plain GRPO, seed 0 | 8 | 50.0 | 75.0 | - | - |" in text
    assert "| (a) plain GRPO, seed 0 | SFT | 2 / 0 / 1 | +25.0 | 14.4 | 0.08 |" in text
    assert text.count(" | SFT | ") == 1 and report.markdown_sampled({}, comparisons) == ""
    rates.update({"a-s1": {"sampled": {"q1": 0.25, "q2": 0.75, "q3": 0.5}},
                  "d": {"sampled": {"q1": 1.0, "q2": 0.0, "q3": 0.0}}, "d-s1": {"sampled": {"q1": 0.0, "q2": 0.0}}})
    pooled = report.seed_mean_comparisons(rows, rates, "sampled")
    # (a) over seeds 0 and 1: q1 0.5, q2 0.75, q3 0.25 against SFT's 0.5, 0.25, 0: differences 0, 0.5, 0.25
    assert [(name, against) for name, against, _ in pooled] == [
        ("(a) plain GRPO, mean of seeds 0, 1", "SFT"), ("(d) full method (both papers), mean of seeds 0, 1", "SFT"),
        ("(d) full method (both papers), mean of seeds 0, 1", "(a) plain GRPO, mean of seeds 0, 1")]
    assert pooled[0][2][0] == pytest.approx(report.paired_rates({"q1": 0.5, "q2": 0.25, "q3": 0.0},
                                                                {"q1": 0.5, "q2": 0.75, "q3": 0.25}))
    assert pooled[2][2][0]["questions"] == 2          # (d) seed 1 lacks q3: only the questions every seed has
    assert report.seed_mean_comparisons(report.table_rows(STAGES), {"a": rates["a"]}, "sampled") == []
    doc = report.document({**DOC_INFO, "sampled": text, "eval_samples": 8, "eval_temperature": 0.7},
                          report.table_rows(STAGES), [])
    assert "## Sampled answers" in doc and "training temperature (0.7)" in doc and text in doc


def test_no_call_push_sums_the_advantages_of_completions_opening_with_the_no_call_thought():
    groups = [("multi_turn", [("<think>No tool call", 1.0), ("<think>The call", 0.0)]),   # A = +1 / -1
              ("single", [(" <think>No tool", 0.0), ("<think>The", 3.0), ("<think>The", 3.0)]),
              ("no_call", [("<think>No", 2.0), ("<think>No", 2.0)]),                        # no spread: A = 0
              ("parallel", [("<think>The", 1.0), ("<think>The", 0.0)])]
    push = report.no_call_push(groups)
    # single: mean 2, population std sqrt(2): the "No" completion's advantage is -2 / sqrt(2)
    assert push["reply"] == [3, pytest.approx(1.0 / (1.0 + 1e-6))]
    assert push["call"] == [1, pytest.approx(-2.0 / (2.0 ** 0.5 + 1e-6))]
    rows = report.table_rows(STAGES)
    text = report.markdown_no_call_push(rows, {"a": push, "d": None})
    assert "| (a) plain GRPO | 3 | +1.0 | 1 | -1.4 | -0.4 | - |" in text and "(d)" not in text
    assert "| (d) full method (both papers) |" in report.markdown_no_call_push(rows, {"d": push})
    assert "| 45.0 |" in report.markdown_no_call_push(rows, {"d": push})   # d's test 'No' share
    assert report.markdown_no_call_push(rows, {"a": None}) == ""
    doc = report.document({**DOC_INFO, "no_call_push": text}, rows, [])
    assert "## The no-call opening" in doc and text in doc


def test_no_call_answers_counts_call_questions_opened_with_the_no_call_thought():
    from bench.learning_run import no_call_answers

    entries = [{"category": "single", "raw": "<think>No tool call is needed here"},
               {"category": "single", "raw": " <think>No, wait"},
               {"category": "parallel", "raw": "<think>The request needs f"},
               {"category": "parallel", "raw": "garbage"},
               {"category": "no_call", "raw": "<think>No tool call is needed here"},     # needs no call: left out
               {"category": "multi_turn", "raw": "<think>No tool call is needed here"}]  # mixed: left out
    assert no_call_answers(entries) == 0.5
    assert no_call_answers(entries[4:]) is None   # no call question among them
    assert no_call_answers([]) is None


def test_stage_rows_take_summary_and_no_call_column_from_the_same_eval_json(tmp_path):
    import json

    from bench.learning_run import stage_rows

    (tmp_path / "eval").mkdir()
    entries = [{"id": "q0", "category": "single", "raw": "<think>No tool call is needed here", "error_type": "reward:format"},
               {"id": "q1", "category": "parallel", "raw": "<think>The request needs f", "error_type": None},
               {"id": "q2", "category": "parallel", "raw": "<think>No", "error_type": "reward:tool_name"},
               {"id": "q3", "category": "single", "raw": "<think>f", "error_type": None}]
    for stage, suites in STAGES.items():
        for suite in ("toolrl", "bfcl"):
            body = {"summary": suites[suite], "entries": entries[:1] if stage == "base" else entries}
            (tmp_path / "eval" / f"{stage}_{suite}.json").write_text(json.dumps(body))
    rows, stages = stage_rows(tmp_path, {"arms": ["a"], "seeds": [0]})   # d evaluated, not in arms: left out
    assert [r["stage"] for r in rows] == ["base", "sft", "a"]
    assert [r["toolrl_no_call"] for r in rows] == [1.0, 0.5, 0.5]
    assert [r["toolrl_correct"] for r in rows] == [0.0, 0.1, 0.125]
    assert stages["a"]["metrics"] == [] and stages["sft"]["metrics"] is None   # no metrics.jsonl for a; sft is no arm
    # the same reads give each question's greedy answer, for the question-by-question table
    assert stages["a"]["answers"]["toolrl"] == {"q0": False, "q1": True, "q2": False, "q3": True}
    assert stages["base"]["answers"] == {"toolrl": {"q0": False}, "bfcl": {"q0": False}}
    assert stages["sft"]["bfcl"] == STAGES["sft"]["bfcl"]


def test_failures_count_each_question_once_under_its_first_short_dimension(tmp_path):
    import json

    from bench.learning_run import stage_rows

    entries = [{"category": "single", "error_type": None, "finish_reason": "stop"},
               {"category": "parallel", "error_type": "reward:tool_name", "finish_reason": "length"},
               {"category": "parallel", "error_type": "reward:tool_name", "finish_reason": "stop"},
               {"category": "single", "error_type": "reward:param_value", "finish_reason": "stop"},
               {"category": "single", "error_type": "reward:calls_mismatch", "finish_reason": "stop"},
               {"category": "parallel", "error_type": "prompt_too_long", "finish_reason": None},
               {"category": "single", "error_type": None, "finish_reason": "length"}]   # right, then ran on: not cut
    counts = report.failure_counts(entries)
    assert list(counts) == ["single", "parallel"]
    assert counts["single"] == {"correct": 2, "format": 0, "tool_name": 0, "param_name": 0, "param_value": 1,
                                "other": 1, "cut": 0}
    assert counts["parallel"] == {"correct": 0, "format": 0, "tool_name": 2, "param_name": 0, "param_value": 0,
                                  "other": 1, "cut": 1}

    (tmp_path / "eval").mkdir()
    for stage, suites in STAGES.items():
        for suite in ("toolrl", "bfcl"):
            body = {"summary": suites[suite], "entries": [{"id": f"q{i}", **e} for i, e in enumerate(entries)]}
            (tmp_path / "eval" / f"{stage}_{suite}.json").write_text(json.dumps(body))
    rows, _ = stage_rows(tmp_path, {"arms": ["a"], "seeds": [0]})
    table = report.markdown_failures(rows).splitlines()
    assert len(table) == 2 + 3 * 2   # header, rule, two categories for each of base, SFT, (a)
    assert table[2] == "| base | single | 4 | 2 | 0 | 0 | 0 | 1 | 1 | 0 |"
    assert table[3] == "| base | parallel | 3 | 0 | 0 | 2 | 0 | 0 | 1 | 1 |"
    assert report.markdown_failures([{**rows[0], "toolrl_failures": None}]) == ""


def test_training_mix_reads_the_start_event_and_recomputes_for_older_runs(tmp_path, tiny_model):
    import json

    from bench.learning_run import REPO, training_mix
    from toolexpander.config import Config
    from toolexpander.trainset import subtask_mix, training_tasks

    def arm(stage: str, seed: int, start: str | None) -> Config:
        cfg = Config.model_validate({"model": {"path": str(tiny_model), "prepare": None},
                                     "data": {"train_path": str(REPO / "data" / "tool_calls_train.jsonl"),
                                              "limit": 200, "max_prompt_tokens": 700, "subset": 64},
                                     "train": {"seed": seed}})
        (tmp_path / f"arm_{stage}").mkdir()
        (tmp_path / f"arm_{stage}" / "config.json").write_text(cfg.model_dump_json())
        if start is not None:
            (tmp_path / f"arm_{stage}" / "events.jsonl").write_text(
                json.dumps({"step": 0, "event": "start", "message": start}) + "\n")
        return cfg

    arm("a", 0, "mode=local tasks=64 too_long=3 mix=no_call:10,single:30,parallel:4,multi_turn:20")
    arm("d", 0, "mode=local tasks=64 too_long=3 mix=no_call:1,single:1,parallel:1,multi_turn:1")  # seed 0 known
    older = arm("a-s1", 1, "mode=local tasks=64 too_long=3")   # before the start event logged mix=
    expected = subtask_mix(training_tasks(older, tiny_model)[0]).replace(":", " ").replace(",", ", ")
    assert training_mix(tmp_path, ["a", "d", "a-s1", "b"]) == {   # b: no directory, left out
        0: "no_call 10, single 30, parallel 4, multi_turn 20", 1: expected}
    assert expected.startswith("no_call ") and sum(int(x.split()[1]) for x in expected.split(", ")) == 64


def test_answer_ceiling_counts_the_test_questions_a_budget_cuts_off(tiny_model):
    from collections import Counter

    from bench.learning_run import REPO, answer_ceiling
    from toolexpander.data import load_tasks
    from toolexpander.sft import answer_text
    from toolexpander.trainset import load_tokenizer

    tokenizer = load_tokenizer(tiny_model)
    tasks = load_tasks(REPO / "data" / "tool_calls_eval.jsonl")
    sizes = [(t.subtask, len(tokenizer.encode(answer_text(t), add_special_tokens=False)) + 1) for t in tasks]
    over = Counter(kind for kind, n in sizes if n > 160)
    assert answer_ceiling(tiny_model, 160) == (f"{sum(over.values())} of the 80 (parallel {over['parallel']}, "
                                               f"multi_turn {over['multi_turn']})")
    assert set(over) == {"parallel", "multi_turn"} and answer_ceiling(tiny_model, 4096) == "0 of the 80"
    assert answer_ceiling(tiny_model, 4096, limit=20) == "0 of the 20"


def test_run_settings_fill_what_learning_json_missed_in_order_with_defaults_for_older_configs(tmp_path):
    import json

    from bench.learning_run import SETTINGS, run_settings

    (tmp_path / "arm_a").mkdir()
    # an arm's resolved config from before data.max_answer_tokens and data.subset_mix existed
    (tmp_path / "arm_a" / "config.json").write_text(json.dumps({"data": {"subset": 64}, "rollout": {"n": 10}}))
    state = {"arms": ["a"], "settings": {"rollout.n": 12, "model.dtype": "float32"}}
    found = run_settings(tmp_path, state)
    assert list(found) == [k for k in SETTINGS if k in found]                   # SETTINGS order
    assert found["rollout.n"] == 12 and found["model.dtype"] == "float32"      # learning.json wins
    assert found["data.subset"] == 64                                          # from the config
    assert found["data.subset_mix"] == "fitting" and found["data.max_answer_tokens"] is None   # defaults
    assert found["sampler.demo_pool"] == "prompts"    # not the default "file": what runs before it did
    assert run_settings(tmp_path, {"arms": ["b"], "settings": {"rollout.n": 12}}) == {"rollout.n": 12}  # no config
    # the arms' config, not the SFT one (a cache hit keeps the config of the run that trained it)
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "config.json").write_text(json.dumps({"data": {"subset": 8, "max_answer_tokens": 64}}))
    assert run_settings(tmp_path, state)["data.subset"] == 64
    assert run_settings(tmp_path, {"arms": [], "settings": {}})["data.max_answer_tokens"] == 64   # no arm yet


def write_dumps(directory: Path, name: str, key: str, steps: list[list[tuple]]) -> None:
    """Rollout dumps as a run writes them (<name>_<step>.parquet), one (group_id, `key`, num_demos,
    reward_correct) tuple per row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for k, rows in enumerate(steps):
        pq.write_table(pa.table({"group_id": [r[0] for r in rows], key: [r[1] for r in rows],
                                 "num_demos": pa.array([r[2] for r in rows], pa.int8()),
                                 "reward_correct": pa.array([r[3] for r in rows], pa.float32())}),
                       directory / f"{name}_{k:06d}.parquet")


def test_groups_with_and_without_demos_are_counted_from_the_dumped_batches(tmp_path):
    from bench import learning_run as run

    rollouts = tmp_path / run.arm_dir("d") / "rollouts"
    rollouts.mkdir(parents=True)
    # step 0: group 0 bare single (one correct of two), group 1 parallel with demos (none correct);
    # step 1: group 0 again (ids restart each step) parallel with demos, solved.
    steps = [[(0, "single", 0, 1.0), (0, "single", 0, 0.0), (1, "parallel", 2, 0.0), (1, "parallel", 2, 0.0)],
             [(0, "parallel", 1, 0.0), (0, "parallel", 1, 1.0)]]
    write_dumps(rollouts, "step", "subtask", steps)
    outcomes = run.group_outcomes(tmp_path, "d")
    assert outcomes == {"bare": {"single": [1, 1]}, "demos": {"parallel": [1, 2]}}
    assert run.group_outcomes(tmp_path, "a") is None           # no rollouts kept
    text = report.markdown_groups({"(d)": outcomes, "(a)": None, "(b)": {"bare": {"single": [0, 3]}, "demos": {}}})
    assert text.splitlines()[2:] == ["| (d) | 1 | 100.0 | single 1/1 | 2 | 50.0 | parallel 1/2 |",
                                     "| (b) | 3 | 0.0 | single 0/3 | 0 | - | - |"]
    assert report.markdown_groups({"(a)": None}) == ""


def test_all_fail_groups_split_by_sub_task_and_weighted_by_plain_grpos_mix(tmp_path):
    from bench import learning_run as run

    # (a): 2 single groups, both solved; 2 parallel groups, both all-fail -> mix 1/2, 1/2, pooled 2/4.
    # (d): 1 single solved; 3 parallel all-fail (the last with demos) -> pooled 3/4; at (a)'s mix
    # 1/2 * 0/1 + 1/2 * 3/3 = 1/2, so 25 of its 25 points over (a) come from the mix.
    # (d) seed 1: 2 single, one all-fail; no (a) seed 1 beside it -> no mix-weighted share.
    dumps = {"a": [[(0, "single", 0, 1.0), (1, "single", 0, 1.0), (2, "parallel", 0, 0.0)],
                   [(0, "parallel", 0, 0.0), (0, "parallel", 0, 0.0)]],
             "d": [[(0, "single", 0, 1.0), (0, "single", 0, 0.0), (1, "parallel", 0, 0.0)],
                   [(0, "parallel", 0, 0.0), (1, "parallel", 2, 0.0), (1, "parallel", 2, 0.0)]],
             "d-s1": [[(0, "single", 0, 0.0), (1, "single", 0, 1.0)]]}
    for stage, steps in dumps.items():
        (tmp_path / run.arm_dir(stage) / "rollouts").mkdir(parents=True)
        write_dumps(tmp_path / run.arm_dir(stage) / "rollouts", "generated", "subtask", steps)
        write_dumps(tmp_path / run.arm_dir(stage) / "rollouts", "step", "subtask", steps[:1])
    outcomes = {stage: run.group_outcomes(tmp_path, stage, "generated") for stage in [*dumps, "b"]}
    assert outcomes["d"] == {"bare": {"single": [1, 1], "parallel": [0, 2]}, "demos": {"parallel": [0, 1]}}
    assert outcomes["b"] is None
    assert run.group_outcomes(tmp_path, "d")["bare"] == {"single": [1, 1], "parallel": [0, 1]}   # step dumps
    assert report.all_fail_by_subtask(outcomes["d"]) == {"single": [0, 1], "parallel": [3, 3]}
    assert report.all_fail_at_mix({"single": [1, 4]}, {"parallel": [2, 2]}) is None   # no sub-task in common
    assert report.all_fail_at_mix({"single": [1, 4], "parallel": [1, 1]},
                                  {"single": [0, 3], "parallel": [1, 1], "no_call": [0, 6]}) == 3 / 4 * 1 / 4 + 1 / 4
    rows = [{"stage": s, "arm": s[0], "seed": 1 if s.endswith("s1") else 0, "label": f"({s})"}
            for s in ("a", "d", "d-s1", "b")]
    mix = report.all_fail_mix(rows, outcomes)
    assert mix["a"]["pooled"] == 0.5 and mix["a"]["at_a_mix"] == 0.5
    a = {"fails": {"single": [0, 2], "parallel": [2, 2]}, "groups": 4, "pooled": 0.5, "borrowed": False}
    assert mix["d"] == {"fails": {"single": [0, 1], "parallel": [3, 3]}, "groups": 4, "pooled": 0.75,
                        "borrowed": False, "reference": a, "at_a_mix": 0.5}
    assert mix["d-s1"]["pooled"] == 0.5 and mix["d-s1"]["at_a_mix"] is None and "b" not in mix
    # another run's (a) with seed 1 (same warm start) stands in where this run has none; this run's own
    # (a) seed 0 wins over a borrowed one
    borrowed = report.all_fail_mix(rows, outcomes, {1: outcomes["d"], 0: outcomes["d-s1"]})
    assert borrowed["d-s1"]["at_a_mix"] == 1 / 2 and borrowed["d-s1"]["reference"]["borrowed"] is True
    assert borrowed["d"] == mix["d"]
    assert report.markdown_all_fail_mix(rows, borrowed, outcomes).splitlines()[-1] == (
        "| (d-s1) | 2 | - | 100 / 50 | 50.0 | 50.0 (compared run's (a)) | +0.0 | - |")
    assert report.markdown_all_fail_mix(rows, mix, outcomes).splitlines() == [
        "| stage | groups generated | parallel: % of groups / all-fail % | single: % of groups / all-fail % "
        "| all-fail % | at (a)'s sub-task mix % | from the mix, points | groups with demos: all-fail |",
        "|---|---|---|---|---|---|---|---|",
        "| (a) | 4 | 50 / 100 | 50 / 0 | 50.0 | 50.0 | +0.0 | - |",
        "| (d) | 4 | 75 / 100 | 25 / 0 | 75.0 | 50.0 | +25.0 | 1: 1 |",
        "| (d-s1) | 2 | - | 100 / 50 | 50.0 | - | - | - |"]
    assert report.markdown_all_fail_mix(rows, {}, outcomes) == ""
    assert goals_.mix_reason(mix) == (
        "pooled over every group generated, (d) all-failed 75.0% of its groups and (a) 50.0% (mean of the same "
        "1 seed); with (a)'s sub-task mix, (d)'s own per-sub-task rates give 50.0% (1.00x (a)), so +25.0 of the "
        "+25.0 points come from the mix alone: parallel made up 75.0% of (d)'s groups ((a): 50.0%), and "
        "100.0% of those all-failed (\"All-fail groups by sub-task\")")
    assert goals_.mix_reason({"d-s1": mix["d-s1"]}) is None


def test_same_warm_start_compares_the_sft_models_greedy_answers(tmp_path):
    from bench import learning_run as run

    def write(name: str, raws: list[str]) -> Path:
        (tmp_path / name / "eval").mkdir(parents=True)
        entries = [{"id": f"q{i}", "raw": raw} for i, raw in enumerate(raws)]
        (tmp_path / name / "eval" / "sft_toolrl.json").write_text(json.dumps({"summary": {}, "entries": entries}))
        return tmp_path / name

    one, same, other = write("one", ["x", "y"]), write("same", ["x", "y"]), write("other", ["x", "z"])
    assert run.same_warm_start(one, same) and not run.same_warm_start(one, other)
    assert not run.same_warm_start(one, tmp_path / "none")   # no SFT evaluation: nothing to tell by


def test_cross_run_comparisons_pair_each_arm_with_the_earlier_runs_same_stage_and_plain_grpo():
    def row(stage: str) -> dict:
        arm, seed = report.split_stage(stage)
        return {"stage": stage, "arm": arm, "seed": 0 if seed is None else seed, "label": report.label(stage, 0)}

    mine = {"d": {"q0": 0.5, "q1": 0.0}, "d-s1": {"q0": 1.0, "q1": 0.5}, "sft": {"q0": 0.0, "q1": 0.0}}
    theirs = {"d": {"q0": 0.0, "q1": 0.0}, "a": {"q0": 0.5, "q1": 0.5}, "d-s1": {"q0": 1.0, "q1": 0.0},
              "a-s1": {"q0": 0.5, "q1": 0.5}, "b": None}
    out = report.cross_run_comparisons([row(s) for s in ("sft", "d", "d-s1")],
                                       [row(s) for s in ("sft", "a", "d", "b", "a-s1", "d-s1")], mine, theirs)
    got = [(name, against, p["up"], p["down"], p["same"], p["mean"]) for name, against, (p,) in out]
    d, a = report.STAGE_LABELS["d"], report.STAGE_LABELS["a"]
    assert got == [
        (f"{d}, seed 0", f"earlier run's {d}, seed 0", 1, 0, 1, 0.25),
        (f"{d}, seed 0", f"earlier run's {a}, seed 0", 0, 1, 1, -0.25),
        (f"{d}, seed 1", f"earlier run's {d}, seed 1", 1, 0, 1, 0.25),
        (f"{d}, seed 1", f"earlier run's {a}, seed 1", 1, 0, 1, 0.25),
        # means over seeds 0, 1: this run's (d) {q0: .75, q1: .25}; the earlier (d) {.5, 0}, (a) {.5, .5}
        (f"{d}, mean of seeds 0, 1", f"earlier run's {d}, same seeds", 2, 0, 0, 0.25),
        (f"{d}, mean of seeds 0, 1", f"earlier run's {a}, same seeds", 1, 1, 0, 0.0)]
    assert out[4][2][0]["se"] == 0.0 and out[4][2][0]["p"] == 0.0
    assert report.markdown_paired_rates(out[:1]).splitlines()[2] == (
        f"| {d}, seed 0 | earlier run's {d}, seed 0 | 1 / 0 / 1 | +25.0 | 25.0 | 0.32 |")
    assert report.cross_run_comparisons([row("d")], [row("a")], {"d": None}, theirs) == []


def test_trained_completions_keep_each_steps_groups_with_text_and_total_reward(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench import learning_run as run

    rollouts = tmp_path / run.arm_dir("d") / "rollouts"
    rollouts.mkdir(parents=True)
    for k, rows in enumerate([[(1, "single", "<think>No", 0.5), (0, "no_call", "x", 1.0), (1, "single", "y", 2.0)],
                              [(0, "parallel", "z", 0.0)]]):
        pq.write_table(pa.table({"group_id": [r[0] for r in rows], "subtask": [r[1] for r in rows],
                                 "text": [r[2] for r in rows], "reward_total": pa.array([r[3] for r in rows],
                                                                                        pa.float32())}),
                       rollouts / f"step_{k:06d}.parquet")
    assert run.trained_completions(tmp_path, "d") == [("no_call", [("x", 1.0)]),
                                                      ("single", [("<think>No", 0.5), ("y", 2.0)]),
                                                      ("parallel", [("z", 0.0)])]
    assert run.trained_completions(tmp_path, "a") is None


def test_prompts_drawn_again_follow_each_prompts_correct_rate_from_every_generated_group(tmp_path):
    from bench import learning_run as run

    rollouts = tmp_path / run.arm_dir("a") / "rollouts"
    rollouts.mkdir(parents=True)
    # (group_id, task_id, num_demos, reward_correct): step 0 draws p (1 of 2 correct) and q (none);
    # step 1 draws q again (2 of 2) and p with a demo (left out: another prompt); step 2 p bare (0 of 2)
    steps = [[(0, "p", 0, 1.0), (0, "p", 0, 0.0), (1, "q", 0, 0.0), (1, "q", 0, 0.0)],
             [(0, "q", 0, 1.0), (0, "q", 0, 1.0), (1, "p", 1, 1.0), (1, "p", 1, 1.0)],
             [(0, "p", 0, 0.0), (0, "p", 0, 0.0), (1, "r", 0, 1.0), (1, "r", 0, 0.0)]]
    write_dumps(rollouts, "generated", "task_id", steps)
    visits = run.prompt_visits(tmp_path, "a")
    assert visits == {"p": [0.5, 0.0], "q": [0.0, 1.0], "r": [0.5]}
    assert run.prompt_visits(tmp_path, "d") is None                   # an arm that kept none
    s = report.revisit_summary(visits)
    assert s == {"prompts": 2, "first": 0.25, "last": 0.5, "rose": 1, "fell": 1, "same": 0, "from_zero": 1,
                 "from_zero_solved": 1, "sft_wrong": None, "sft_wrong_first": None, "sft_wrong_last": None,
                 "sft_wrong_now_right": None}
    # greedy answers to the training prompts: SFT got q and r wrong (r drawn once: not counted), the arm q right
    sft, arm = {"p": True, "q": False, "r": False}, {"p": False, "q": True, "r": False}
    s = report.revisit_summary(visits, sft, arm)
    assert (s["sft_wrong"], s["sft_wrong_first"], s["sft_wrong_last"], s["sft_wrong_now_right"]) == (1, 0.0, 1.0, 1)
    text = report.markdown_revisits({"(a)": report.revisit_summary(visits), "(d)": None})
    assert text.splitlines()[2:] == ["| (a) | 2 | 0.250 | 0.500 | +0.250 | 1 / 1 / 0 | 1 of 1 | - |"]
    text = report.markdown_revisits({"(a)": s, "(d)": None})
    assert text.splitlines()[2:] == ["| (a) | 2 | 0.250 | 0.500 | +0.250 | 1 / 1 / 0 | 1 of 1 | "
                                     "1: 0.000 -> 1.000, right greedily after: 1 |"]
    assert report.markdown_revisits({"(a)": report.revisit_summary(visits, sft)}).endswith(
        "right greedily after: - |")   # the arm not asked the training prompts
    import json

    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "sft_train.json").write_text(json.dumps({"summary": {}, "entries": [
        {"id": "p", "error_type": None}, {"id": "q", "error_type": "reward:format"}]}))
    assert run.greedy_right(tmp_path, "sft") == {"p": True, "q": False}
    assert run.greedy_right(tmp_path, "a") is None                    # not asked the training prompts
    assert report.markdown_revisits({"(d)": None}) == ""
    doc = report.document({**DOC_INFO, "revisits": text}, report.table_rows(STAGES), [])
    assert "## Prompts drawn again" in doc and text in doc
    assert "## Prompts drawn again" not in report.document(DOC_INFO, report.table_rows(STAGES), [])


def test_training_budget_sums_updates_and_groups_and_averages_the_shares():
    rows = [{"step": 0, "learner/applied": 1.0, "learner/groups": 4, "sampler/zero_signal_share": 0.2,
             "learner/entropy": 0.3},
            {"step": 1, "learner/applied": 0.0, "learner/groups": 2, "sampler/zero_signal_share": 0.6,
             "learner/entropy": float("nan")},   # a skipped update: its entropy has no value
            {"step": 2, "learner/applied": 2.0, "learner/groups": 3, "sampler/zero_signal_share": 0.4,
             "learner/entropy": 0.1}]
    budget = report.budget_summary(rows)
    assert budget == {"updates": 3.0, "groups_trained": 9.0, "zero_signal_mean": pytest.approx(0.4),
                      "entropy_mean": pytest.approx(0.2)}
    # a run from before learner/applied: the cumulative learner/updates of its last step
    assert report.budget_summary([{"step": 0, "learner/updates": 1.0}, {"step": 1, "learner/updates": 2.0}])["updates"] == 2.0
    table = report.table_rows({"sft": {"toolrl": None, "bfcl": None, "metrics": None},
                               "a": {"toolrl": None, "bfcl": None, "metrics": rows}})
    assert report.markdown_budget(table).splitlines()[2:] == ["| (a) plain GRPO | 3 | 3 | 9 | 0.400 | 0.200 |"]
    assert report.markdown_budget(table[:1]) == ""


def test_fork_copies_the_kept_stages_and_trains_the_named_arms_anew(tmp_path, monkeypatch):
    import json

    from bench import learning

    src = tmp_path / "src"
    for d in ("eval", "logs", "sft", "arm_a", "arm_d"):
        (src / d).mkdir(parents=True)
    stages = [{"stage": s, "seconds": 1.0, "note": "", "commands": []}
              for s in ("prepare base model", "eval base", "sft", "eval sft", "train (a)", "eval (a)", "train (d)",
                        "eval (d)")]
    state = {"command": "first", "config": learning.SMOKE_CONFIG, "seed": 0, "seeds": [0],
             "overrides": ["--sft.output_dir", str(tmp_path / "no-sft")],   # no warm start there
             "steps": 5, "arms": ["a", "d"], "stages": stages, "commit": "`abc`", "started": "t0",
             "resumed": [{"command": "again", "commit": "`abd`"}]}
    (src / "learning.json").write_text(json.dumps(state))
    (src / "train_prompts.jsonl").write_text("{}\n")
    (src / "sft" / "metrics.jsonl").write_text("{}\n")
    for stage in ("base", "sft", "a", "d"):
        for suite in ("toolrl", "bfcl", "train"):
            (src / "eval" / f"{stage}_{suite}.json").write_text(json.dumps({"summary": {"overall": 0.1}}))
        (src / "logs" / f"eval_{stage}_toolrl.log").write_text("log")
    (src / "logs" / "train_a.log").write_text("a")
    (src / "logs" / "train_d.log").write_text("d")
    (src / "logs" / "sft.log").write_text("sft")
    (src / "arm_a" / "metrics.jsonl").write_text("{}\n")
    calls = []
    monkeypatch.setattr(learning, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(learning.Pipeline, "train", lambda self, arm, sft, seed: calls.append(
        ("train", arm)) or (report.stage_id(arm, seed, self.seed), sft))
    monkeypatch.setattr(learning.Pipeline, "evaluate", lambda self, arm, model, cache=False, only_missing=False: (
        None if only_missing else calls.append(("eval", arm))))
    monkeypatch.setattr(learning, "write_report", lambda run_dir, out, compare=None: out / "LEARNING.md")
    monkeypatch.setattr(learning.Pipeline, "sft", lambda self, out, stage="sft": calls.append((stage,)) or tmp_path)
    monkeypatch.setattr(learning, "_commit", lambda: "`new`")
    learning.main(["--fork", str(src), "--arms", "d", "--out", str(tmp_path)])
    # No warm start with src's cache key in its sft.output_dir: trained again first.
    assert calls == [("sft again",), ("train", "d"), ("eval", "d")]
    (run,) = (tmp_path / "runs").iterdir()
    assert sorted(p.name for p in (run / "eval").iterdir()) == sorted(
        f"{s}_{x}.json" for s in ("base", "sft", "a") for x in ("toolrl", "bfcl", "train"))
    assert sorted(p.name for p in (run / "logs").iterdir()) == [
        "eval_a_toolrl.log", "eval_base_toolrl.log", "eval_sft_toolrl.log", "sft.log", "train_a.log"]
    assert (run / "arm_a" / "metrics.jsonl").is_file() and not (run / "arm_d").exists()
    assert (run / "train_prompts.jsonl").is_file() and (run / "sft" / "metrics.jsonl").is_file()
    kept = json.loads((run / "learning.json").read_text())
    assert [s["stage"] for s in kept["stages"]] == ["prepare base model", "eval base", "sft", "eval sft",
                                                    "train (a)", "eval (a)"]
    assert kept["arms"] == ["a"] and kept["plan"] == ["a", "d"] and kept["commit"] == "`abc`"
    assert kept["forked_from"]["kept"] == ["base", "sft", "a"] and kept["forked_from"]["command"] == "first"
    assert kept["forked_from"]["resumed"] == ["`again` at commit `abd`"]
    assert [r["commit"] for r in kept["resumed"]] == ["`new`"]      # the fork's own training, recorded
    assert (src / "arm_d").is_dir() and len(json.loads((src / "learning.json").read_text())["arms"]) == 2
    text = report._forked_text(kept["forked_from"])
    assert "fork (`--fork`) of" in text and "base, SFT, (a) plain GRPO are that run's" in text
    assert "made by `first` at commit `abc`; `again` at commit `abd`" in text
    with pytest.raises(SystemExit):
        learning.main(["--fork", str(src), "--out", str(tmp_path)])            # which arms to train anew?
