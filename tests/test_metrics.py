"""MetricsWriter: one row per step, a resumed run included."""

import json

from toolexpander.metrics import MetricsWriter


def test_resume_drops_the_rows_logged_after_the_checkpoint(tmp_path):
    # A driver logged steps 0-2, its last checkpoint was at step 2, and it died mid-line at step 3.
    lines = [json.dumps({"step": s, "learner/loss": float(s)}) for s in range(3)] + ['{"step": 3, "lea']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    writer = MetricsWriter(tmp_path, tensorboard=False, wandb_project=None, config={}, resume=True, start_step=2)
    writer.log(2, {"learner/loss": 20.0})
    writer.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["learner/loss"]) for r in rows] == [(0, 0.0), (1, 1.0), (2, 20.0)]


def test_a_fresh_run_starts_an_empty_file(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n')
    writer = MetricsWriter(tmp_path, tensorboard=False, wandb_project=None, config={}, resume=False)
    writer.log(0, {"learner/loss": float("nan"), "learner/skipped": 1})
    writer.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"learner/loss": None, "learner/skipped": 1,
                                                                    "step": 0}


def test_missed_call_share_counts_prompts_that_need_a_call_only():
    # A policy drifting to "no tool call is needed" shows in rollout/missed_call_share, which
    # reward/format_mean cannot show (a <response> is well-formed).
    import math

    import pyarrow as pa

    from toolexpander.metrics import reward_metrics
    from toolexpander.types import REWARD_DIMS, ROLLOUT_SCHEMA, light_view

    def table(specs):  # the driver sees the light view of each batch (types.light_view)
        cols = {f.name: [] for f in ROLLOUT_SCHEMA}
        for g, (subtask, text) in enumerate(specs):
            row = dict(group_id=g, task_id=f"t{g}", subtask=subtask, demo_round=0, num_demos=0, policy_version=0,
                       prompt_ids=[1], completion_ids=[2, 3], logprobs=[-1.0, -1.0], finish_reason="stop",
                       text=text, reward_total=0.0, **{f"reward_{d}": 0.0 for d in REWARD_DIMS})
            for k, v in row.items():
                cols[k].append(v)
        return light_view(pa.Table.from_pydict(cols, schema=ROLLOUT_SCHEMA))

    mixed = table([("single", "<think>x</think>\n<tool_call>\n{}\n</tool_call>"),
                   ("single", "<think>No tool call is needed here</think>\n<response>hi</response>"),
                   ("parallel", "garbage"), ("no_call", "<response>ok</response>")])
    assert mixed.column("has_tool_call").to_pylist() == [True, False, False, False]
    assert reward_metrics(mixed)["rollout/missed_call_share"] == 2 / 3   # the no_call prompt is not counted
    assert reward_metrics(mixed)["rollout/completion_len_mean"] == 2.0
    assert math.isnan(reward_metrics(table([("no_call", "<response>ok</response>")]))["rollout/missed_call_share"])
    assert math.isnan(reward_metrics(mixed)["sampler/demo_solved_share"])   # no prompt carried demos

    # Three groups of two rows; two carried demos, one of them with a correct completion.
    cols = {f.name: [] for f in ROLLOUT_SCHEMA}
    for g, demos, correct in ((0, 0, 1.0), (0, 0, 0.0), (1, 2, 0.0), (1, 2, 1.0), (2, 1, 0.0), (2, 1, 0.0)):
        row = dict(group_id=g, task_id=f"t{g}", subtask="single", demo_round=min(demos, 1), num_demos=demos,
                   policy_version=0, prompt_ids=[1], completion_ids=[2], logprobs=[-1.0], finish_reason="stop",
                   text="x", reward_total=correct, **{f"reward_{d}": 0.0 for d in REWARD_DIMS})
        row["reward_correct"] = correct
        for k, v in row.items():
            cols[k].append(v)
    demo_groups = light_view(pa.Table.from_pydict(cols, schema=ROLLOUT_SCHEMA))
    assert reward_metrics(demo_groups)["sampler/demo_solved_share"] == 0.5
