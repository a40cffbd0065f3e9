"""write_report on a synthetic 20-step run: nulls, a half-written last line, a resumed (re-logged)
step, events; the PNGs are real PNGs and index.md lists them; an empty run is one clear error."""

import json
import math

import pytest

from toolexpander.report import ReportError, read_run, write_report
from toolexpander.types import REWARD_DIMS, SUBTASKS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STEPS = 20


def record(step: int) -> dict:
    t = step / (STEPS - 1)
    r = {"step": step, "policy_version": step + 1}
    for i, d in enumerate((*REWARD_DIMS, "total")):
        slope = 0.8 if d == "total" else 0.8 - 0.1 * i
        r[f"reward/{d}_mean"] = 0.004 * t if d == "exemplar" else 0.1 + slope * t
    for k, v in enumerate([40 - step, step, step // 2, step // 4]):
        r[f"sampler/demo_round/{k}"] = float(v)
    r.update({"sampler/demo_rate": 0.5 * (1 - t), "sampler/all_fail_share": 0.6 * (1 - t),
              "sampler/zero_signal_share": 0.3, "sampler/parked": float(step % 5)})
    for i, s in enumerate(SUBTASKS):
        r[f"sampler/mastery/{s}"] = t * (i + 1) / 4
        r[f"sampler/share/{s}"] = 0.25
    r.update({"rollout/tokens_per_s": 900.0 + 10 * step, "time/step_s": 12.0, "time/rollout_s": 8.0,
              "time/learner_s": 3.5, "time/weight_push_s": 0.5,
              "learner/lr": 1e-6 * 0.99 ** step, "learner/loss": -0.01 * math.sin(step),
              "learner/grad_norm": None if step == 3 else 0.5 + 0.1 * step,  # non-finite -> null
              "learner/clip_frac": 0.02, "learner/approx_kl": 1e-4 * step,
              "learner/entropy": 1.2 - 0.02 * step,
              "learner/skipped": False})
    if step == 0:  # eval.before: the starting policy, logged in the first row
        r["eval_before/bfcl/simple"] = 0.1
        r["eval_before/bfcl/parallel"] = 0.05
    if step % 10 == 9:
        r["eval/bfcl/simple"] = 0.3 + 0.02 * step
        r["eval/bfcl/parallel"] = 0.2 + 0.01 * step
    return r


@pytest.fixture
def run_dir(tmp_path):
    lines = [json.dumps(record(s)) for s in range(STEPS)]
    # a crash after step 10, then a resume from the step-10 checkpoint: step 10 is logged twice
    lines.insert(10, json.dumps({**record(10), "time/step_s": 999.0}))
    half = json.dumps(record(STEPS))[:57]  # the writer was mid-line
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n" + half)
    events = [{"step": 0, "time": 0.0, "event": "start", "message": "mode=local"},
              {"step": 7, "time": 1.0, "event": "worker_restart",
               "message": "rollout worker 1 died | restarting"}]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return tmp_path


def test_report_writes_every_plot_and_an_index(run_dir):
    out = write_report(run_dir)
    assert out == run_dir / "report"
    names = ["rewards", "hard_sampling", "curriculum", "throughput", "learner", "eval"]
    index = (out / "index.md").read_text()
    for name in names:
        data = (out / f"{name}.png").read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, name
        assert f"({name}.png)" in index
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{n}.png" for n in names)
    assert "20 steps logged (step 0 to 19)" in index
    assert "Skipped 1 unreadable line(s) of metrics.jsonl: 22." in index
    # first-vs-last table: first and last finite values with their steps
    assert "| `reward/total_mean` | 0.1 (0) | 0.9 (19) | +0.8 |" in index
    assert "| `learner/grad_norm` | 0.5 (0) | 2.4 (19) |" in index
    assert "| `eval/bfcl/simple` | 0.48 (9) | 0.68 (19) | +0.2 |" in index
    assert "| `eval_before/bfcl/simple` | 0.1 (0) | 0.1 (0) | +0 |" in index
    assert "| 7 | worker_restart | rollout worker 1 died \\| restarting |" in index
    assert "mode=local" not in index  # the step-0 start event is not news


def test_read_run_keeps_the_latest_record_per_step_and_drops_nulls(run_dir):
    run = read_run(run_dir)
    assert run.n_steps == STEPS
    steps, values = run.series["time/step_s"]
    assert steps == list(range(STEPS)) and values[10] == 12.0  # the re-logged step 10 wins
    assert 3 not in run.series["learner/grad_norm"][0] and run.nulls["learner/grad_norm"] == [3]
    assert "learner/skipped" not in run.series  # booleans are flags, not series
    assert run.series["eval/bfcl/simple"][0] == [9, 19]


def test_missing_keys_skip_their_plots_and_stale_plots_go(run_dir):
    write_report(run_dir)
    keep = ("step", "reward/total_mean", "reward/format_mean")
    rows = [{k: v for k, v in record(s).items() if k in keep} for s in range(5)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = write_report(run_dir)
    assert [p.name for p in out.glob("*.png")] == ["rewards.png"]
    index = (out / "index.md").read_text()
    assert "(rewards.png)" in index and "learner.png" not in index


@pytest.mark.parametrize("content", [None, "", "\n\n", '{"step": 0, "reward/tot'])
def test_no_metrics_is_one_clear_error(tmp_path, content):
    if content is not None:
        (tmp_path / "metrics.jsonl").write_text(content)
    with pytest.raises(ReportError, match=r"metrics\.jsonl: no metrics$"):
        write_report(tmp_path)
    assert not (tmp_path / "report").exists()


def test_cli_report_prints_the_error_as_one_line(tmp_path, capsys):
    from toolexpander.cli import main

    (tmp_path / "metrics.jsonl").write_text("")
    assert main(["report", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"toolexpander report: error: {tmp_path / 'metrics.jsonl'}: no metrics"
