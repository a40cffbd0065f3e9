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
