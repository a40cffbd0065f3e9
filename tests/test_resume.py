"""Faults in the driver: SIGKILL between steps, then --resume; SIGTERM finishes the step and saves."""

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

ARGS = ["--rollout.n", "4", "--rollout.max_tokens", "8", "--data.limit", "24", "--train.save_every", "2",
        "--sampler.prior_mean", "1", "--sampler.prior_std", "0"]


def train_cmd(repo, run_dir, dumps, steps, *extra):
    return [sys.executable, "-m", "toolexpander", "train", "--config", str(repo / "configs" / "smoke.yaml"),
            "--output-dir", str(run_dir), "--save-rollouts", str(dumps), "--train.steps", str(steps),
            *ARGS, *extra]


def losses(run_dir):
    rows = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[row["step"]] = row  # a step logged twice (killed after logging) keeps its last record
    return rows


def wait_for_rows(path, rows, proc, timeout=300):
    start = time.time()
    while not path.exists() or len(path.read_text().splitlines()) < rows:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() - start < timeout, f"{path} never had {rows} rows"
        time.sleep(0.2)


def wait_for(path, proc, timeout=300):
    start = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() - start < timeout, f"{path} never appeared"
        time.sleep(0.5)


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(repo, tiny_model, tmp_path):
    # The uninterrupted reference run goes on beside the killed run and its resume: most of a run is
    # one process busy at a time (imports, engine and DeepSpeed start-up), so two share 2 cores well.
    ref_dir, ref_dumps, ref_log = tmp_path / "ref", tmp_path / "ref_rollouts", tmp_path / "ref.log"
    with ref_log.open("w") as log:
        reference = subprocess.Popen(train_cmd(repo, ref_dir, ref_dumps, 4), cwd=repo, stdout=subprocess.DEVNULL,
                                     stderr=log, start_new_session=True)
    try:
        run_dir, dumps = tmp_path / "run", tmp_path / "rollouts"
        proc = subprocess.Popen(train_cmd(repo, run_dir, dumps, 4), cwd=repo, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        wait_for(run_dir / "checkpoints" / "step_00000002" / "COMPLETE", proc)
        wait_for_rows(run_dir / "metrics.jsonl", 3, proc)  # step 2 logged after the step-2 checkpoint
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started die together
        proc.wait()
        out = subprocess.run(train_cmd(repo, run_dir, dumps, 4, "--resume"), capture_output=True, text=True,
                             cwd=repo)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "resumed from" in out.stdout and "at step 2" in out.stdout
        steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert steps == [0, 1, 2, 3]  # step 2, run again after the resume, keeps one row
        assert reference.wait(timeout=600) == 0, ref_log.read_text()[-3000:]
    finally:
        if reference.poll() is None:
            os.killpg(reference.pid, signal.SIGKILL)

    ref, got = losses(ref_dir), losses(run_dir)
    for step in (2, 3):
        ours = pq.read_table(dumps / f"step_{step:06d}.parquet")
        theirs = pq.read_table(ref_dumps / f"step_{step:06d}.parquet")
        assert ours.column("task_id").to_pylist() == theirs.column("task_id").to_pylist()
        assert ours.column("demo_round").to_pylist() == theirs.column("demo_round").to_pylist()
        assert ours.column("completion_ids").to_pylist() == theirs.column("completion_ids").to_pylist()
        for key in ("learner/loss", "learner/lr", "policy_version", "learner/grad_norm"):
            assert got[step][key] == pytest.approx(ref[step][key], rel=1e-6, abs=1e-9), key


@pytest.mark.slow
def test_sigterm_finishes_the_step_saves_and_exits_zero(repo, tiny_model, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(repo, run_dir, tmp_path / "r", 50), cwd=repo,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for(run_dir / "metrics.jsonl", proc)
    while not (run_dir / "metrics.jsonl").read_text().strip():
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert "--resume" in stdout and "stopped at step" in stdout
    steps = sorted(losses(run_dir))
    assert (run_dir / "checkpoints" / f"step_{steps[-1] + 1:08d}" / "COMPLETE").is_file()


def descendants(pid: int) -> list[int]:
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="ignore")
    except OSError:
        return ""


@pytest.mark.slow
def test_a_killed_rollout_worker_is_replaced_and_nothing_is_lost(repo, tiny_model, tmp_path):
    run_dir, dumps = tmp_path / "run", tmp_path / "rollouts"
    proc = subprocess.Popen(train_cmd(repo, run_dir, dumps, 5, "--rollout.num_workers", "2",
                                      "--sampler.batch_prompts", "4"),
                            cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        wait_for(run_dir / "metrics.jsonl", proc)
        while not (run_dir / "metrics.jsonl").read_text().strip():
            time.sleep(0.2)
        workers = [p for p in descendants(proc.pid) if "RolloutWorker" in cmdline(p)]
        assert len(workers) == 2, [cmdline(p) for p in descendants(proc.pid)]
        os.kill(workers[0], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr[-3000:]
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "worker_restart" for e in events)
    assert sorted(losses(run_dir)) == [0, 1, 2, 3, 4]
    rows = [r for path in sorted(dumps.glob("step_*.parquet")) for r in pq.read_table(path).to_pylist()]
    per_group = {}
    for r in rows:
        per_group[r["group_id"]] = per_group.get(r["group_id"], 0) + 1
    assert set(per_group.values()) == {4}  # every group once, with all n completions
