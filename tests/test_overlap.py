"""train.max_staleness K: the next K steps' rollouts generate while the learner trains. The Gate and
the handshake that keep pushes out of generations (pure threads); the sampler's ledger with K = 0, 1, 2
and a K = 2 resume from drained phases (the real Trainer over fake engines); and a real run on the tiny
model: the policy lag it records, and a resume from a checkpoint taken with a batch in flight, step for
step like the uninterrupted run."""

import json
import shutil
import threading

import pyarrow.parquet as pq
import pytest

from toolexpander.overlap import PREFETCH_DIR, Gate, Prefetch, TrainError, load_phases, save_phases


def test_prefetch_waits_for_the_driver_push_when_it_replaced_a_worker():
    log, release = [], threading.Event()

    def phase(step):
        log.append(("generate", step))
        release.wait(5)                          # "generating" until the test lets it go
        Prefetch.current().wait_for_push()       # a worker was replaced: it needs the current weights
        log.append(("regenerate", step))
        return {"step": step}

    assert Prefetch.current() is None            # the driver's thread
    p = Prefetch(phase, 7)
    assert not p.needs_push
    release.set()
    waited = p.wait_idle()                       # idle: waiting for a push, no generation in flight
    assert waited >= 0 and p.needs_push and log == [("generate", 7)]
    p.pushed()
    p.wait_idle()
    assert not p.needs_push and log == [("generate", 7), ("regenerate", 7)]
    assert p.result() == {"step": 7}
    assert Prefetch.finished({"step": 8}).result() == {"step": 8} and Prefetch.finished({}).wait_idle() >= 0


def test_prefetch_errors_reach_the_driver():
    def phase(step):
        raise RuntimeError(f"worker gone at step {step}")

    p = Prefetch(phase, 3)
    p.wait_idle()
    with pytest.raises(RuntimeError, match="worker gone at step 3"):
        p.result()


def test_cancelled_phases_end_at_their_next_check_or_push_wait_and_release_the_gate():
    """Trainer.close cancels the phases queued ahead and joins them: one waiting for a push wakes and
    ends, one queued behind it never starts, one between draw rounds stops at its check; the gate is
    free afterwards (a restarted attempt starts with no thread of the old one)."""
    gate, log, ready = Gate(), [], threading.Event()

    def waits_for_push(step):
        log.append(("generate", step))
        Prefetch.current().wait_for_push()
        log.append(("after push", step))

    def draws(step):
        ready.wait(5)
        Prefetch.current().check()                # the next draw round
        log.append(("draw", step))

    waiting = Prefetch(waits_for_push, 1, gate)
    queued = Prefetch(waits_for_push, 2, gate, after=waiting)
    waiting.wait_idle()
    assert waiting.needs_push and log == [("generate", 1)]
    waiting.cancel()
    queued.cancel()
    waiting.join()
    queued.join()
    for p, step in ((waiting, 1), (queued, 2)):
        with pytest.raises(TrainError, match=f"step {step}"):
            p.result()
    assert log == [("generate", 1)]
    drawing = Prefetch(draws, 3, gate)
    drawing.cancel()
    ready.set()
    drawing.join()
    with pytest.raises(TrainError, match="the rollout phase of step 3 was cancelled"):
        drawing.result()
    assert log == [("generate", 1)]
    with gate.held():                              # free: no cancelled phase kept it
        pass
    busy, release = threading.Event(), threading.Event()
    stuck = Prefetch(lambda step: busy.set() or release.wait(5), 4, gate)   # in a Ray call: no check
    busy.wait(5)
    stuck.cancel()
    assert stuck.join(0.1) is False                # Trainer.close warns and goes on without it
    release.set()
    assert stuck.join(5) is True


def test_queued_phases_run_one_at_a_time_in_step_order_and_never_during_a_push():
    gate, log, lock = Gate(), [], threading.Lock()
    go = {s: threading.Event() for s in (1, 2, 3)}

    def phase(step):
        with lock:
            log.append(("start", step))
        go[step].wait(5)
        with lock:
            log.append(("end", step))
        return {"step": step}

    first = Prefetch(phase, 1, gate)
    second = Prefetch(phase, 2, gate, after=first)
    third = Prefetch(phase, 3, gate, after=second)
    go[3].set()                                   # released early: it still waits for step 2
    while not log:
        threading.Event().wait(0.01)
    assert log == [("start", 1)]
    waited = []
    holder = threading.Thread(target=lambda: waited.append(_hold(gate, log, lock)))
    holder.start()                                # a push: waits until step 1 stops generating
    threading.Event().wait(0.1)
    assert log == [("start", 1)] and not waited
    go[1].set()
    holder.join(5)
    assert waited and log[:3] == [("start", 1), ("end", 1), ("push", None)]
    go[2].set()
    assert [p.result()["step"] for p in (first, second, third)] == [1, 2, 3]
    assert log == [("start", 1), ("end", 1), ("push", None), ("start", 2), ("end", 2), ("start", 3), ("end", 3)]


def _hold(gate, log, lock):
    with gate.held() as waited:
        with lock:
            log.append(("push", None))
        threading.Event().wait(0.1)               # no phase starts while the push is held
        with lock:
            assert log[-1] == ("push", None)
    return waited


def test_a_failed_phase_fails_the_ones_queued_after_it():
    def phase(step):
        if step == 1:
            raise RuntimeError("worker gone")
        return {"step": step}

    gate = Gate()
    first = Prefetch(phase, 1, gate)
    second = Prefetch(phase, 2, gate, after=first)
    with pytest.raises(RuntimeError, match="worker gone"):
        first.result()
    with pytest.raises(RuntimeError, match="rollout phase of step 2 did not run: the one of step 1 failed"):
        second.result()


def rows(run_dir):
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        out[row["step"]] = row
    return out


@pytest.mark.slow
def test_one_step_off_policy_run_records_lag_and_resumes_exactly(repo, tiny_model, tmp_path):
    from tests.test_resume import train_cmd
    import subprocess

    run_dir, dumps = tmp_path / "run", tmp_path / "rollouts"
    out = subprocess.run(train_cmd(repo, run_dir, dumps, 4, "--train.max_staleness", "1"),
                         capture_output=True, text=True, cwd=repo)
    assert out.returncode == 0, out.stderr[-3000:]
    ref = rows(run_dir)
    assert sorted(ref) == [0, 1, 2, 3]
    # step 0 is generated by the initial weights and trained by them; every later batch was generated
    # while the learner trained the step before, so by the version before the learner's
    assert ref[0]["rollout/policy_lag_max"] == 0
    for s in (1, 2, 3):
        if ref[s - 1]["learner/applied"] > 0:
            assert ref[s]["rollout/policy_lag_mean"] == ref[s]["rollout/policy_lag_max"] == 1
    assert all(r["time/rollout_wait_s"] >= 0 for r in ref.values())
    assert "rollout/mismatch_k3_kl" in ref[1]
    # The step-2 checkpoint holds step 2's batch, generated and recorded before it was taken.
    assert (run_dir / "checkpoints" / "step_00000002" / PREFETCH_DIR / "step_000002" / "batch.parquet").is_file()

    # Resume from step 2 (drop the final checkpoint): steps 2 and 3 train exactly what the
    # uninterrupted run trained, and the sampler's ledger is the same.
    shutil.rmtree(run_dir / "checkpoints" / "step_00000004")
    again = tmp_path / "again"
    shutil.copytree(run_dir, again)
    out = subprocess.run(train_cmd(repo, again, tmp_path / "again_rollouts", 4, "--train.max_staleness", "1",
                                   "--resume"), capture_output=True, text=True, cwd=repo)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "at step 2" in out.stdout
    got = rows(again)
    assert sorted(got) == [0, 1, 2, 3]
    for s in (2, 3):
        for key in ("reward/total_mean", "reward/correct_mean", "sampler/all_fail_share", "sampler/parked",
                    "rollout/groups", "rollout/policy_lag_max"):
            assert got[s][key] == ref[s][key], (s, key)
        assert got[s]["learner/loss"] == pytest.approx(ref[s]["learner/loss"], rel=1e-4, abs=1e-6)
        ours = pq.read_table(tmp_path / "again_rollouts" / f"step_{s:06d}.parquet")
        theirs = pq.read_table(dumps / f"step_{s:06d}.parquet")
        for column in ("task_id", "demo_round", "policy_version", "completion_ids"):
            assert ours.column(column).to_pylist() == theirs.column(column).to_pylist(), (s, column)


def test_the_sampler_ledger_is_the_same_with_and_without_overlap(ray_local, train_tasks, tmp_path):
    """The real Trainer, Sampler and RolloutGroup over bench.driver_scale's fake workers (canned
    rewards, so every run sees the same outcomes): with K = 1 and K = 2 the sampler gets the same calls
    in the same order as with K = 0, so every step trains the same groups and the sampler's whole state
    (reward statistics, demo rounds, parking, mastery, rng) ends equal; and so does a K = 2 run stopped
    after step 3 with its queued phases drained and saved as a checkpoint saves them, then resumed by a new
    Trainer from the sampler's saved state and those phases. Hard rounds, reward-statistics priority and
    the curriculum all on, on 24 prompts so that prompts come back, fail and get parked."""
    import numpy as np
    import ray

    from bench.driver_scale import FakeLearner, FakeRolloutWorker, close_simulated, simulated_trainer
    from toolexpander.config import Config

    class RecordingLearner(FakeLearner):
        def __init__(self):
            self.trained = []

        def step(self, table, step_seed=0, train_step=None, padding=0):
            self.trained.append(sorted(set(zip(table.column("group_id").to_pylist(),
                                               table.column("task_id").to_pylist()))))
            return super().step(table, step_seed, train_step)

        def groups(self):
            return self.trained

    steps = 8

    def trainer_for(k, name):
        cfg = Config.model_validate({
            "model": {"prepare": None},
            "rollout": {"num_workers": 2, "n": 4},
            "sampler": {"batch_prompts": 4, "max_draw_rounds": 2, "all_fail_min_n": 4, "cooldown": 2},
            "learner": {"weight_sync": "object_store"},
            "train": {"steps": steps, "max_staleness": k},
            "logging": {"output_dir": str(tmp_path / name)}})
        worker_cls = ray.remote(FakeRolloutWorker).options(num_cpus=0, max_concurrency=1)
        learner = ray.remote(RecordingLearner).options(num_cpus=0).remote()
        return simulated_trainer(cfg, train_tasks[:24], [worker_cls.remote(i, 0.01, 4, 4, 8, 4, seed=i)
                                                         for i in range(2)], learner), learner

    def train(trainer, until, rows):
        while trainer.step < until:
            m = trainer.train_step()
            trainer.step += 1
            rows.append({key: v for key, v in m.items() if key.startswith(("sampler/", "rollout/policy_lag"))})

    def ledger(trainer, learner, rows, name, trained=()):
        assert not trainer.ahead                             # nothing generated past the last step
        ray.get(trainer.sampler.save.remote(str(tmp_path / f"{name}.npz")))
        with np.load(tmp_path / f"{name}.npz") as f:
            state = {key: f[key] for key in f.files}
        out = ([*trained, *ray.get(learner.groups.remote())], rows, state)
        close_simulated(trainer)
        return out

    ledgers = {}
    for k in (0, 1, 2):
        trainer, learner = trainer_for(k, f"k{k}")
        rows = []
        train(trainer, steps, rows)
        ledgers[k] = ledger(trainer, learner, rows, f"k{k}")

    # K = 2 stopped after step 3: what Trainer.save keeps (the drained phases, the sampler's state, the
    # version), then a new Trainer resumed from it as Trainer._restore does
    trainer, learner = trainer_for(2, "stopped")
    rows = []
    train(trainer, 3, rows)
    phases = trainer.drain()
    assert [p["step"] for p in phases] == [3, 4]             # admitted up to K = 2 ahead of step 2
    save_phases(phases, [trainer._rows(p) for p in phases], tmp_path / "ckpt" / PREFETCH_DIR)
    ray.get(trainer.sampler.save.remote(str(tmp_path / "ckpt" / "sampler.npz")))
    version, before = trainer.version, ray.get(learner.groups.remote())
    trainer.ahead.clear()
    close_simulated(trainer)
    trainer, learner = trainer_for(2, "resumed")
    ray.get(trainer.sampler.load.remote(str(tmp_path / "ckpt" / "sampler.npz")))
    trainer.step, trainer.version = 3, version
    trainer.ahead.extend(Prefetch.finished(p) for p in load_phases(tmp_path / "ckpt" / PREFETCH_DIR))
    trainer._push()
    train(trainer, steps, rows)
    ledgers["resumed"] = ledger(trainer, learner, rows, "resumed", before)

    def sampler_rows(rows):   # NaN (a metric with no value this step, e.g. demo_solved_share) equals itself
        return [{key: "nan" if v != v else v for key, v in r.items() if key.startswith("sampler/")} for r in rows]

    groups0, rows0, state0 = ledgers[0]
    assert len(groups0) == steps
    trained = [g for step in groups0 for g, _ in step]
    assert len(trained) == len(set(trained))                 # no group trained twice
    for k in (1, 2, "resumed"):
        groups, rows, state = ledgers[k]
        assert groups == groups0, k
        assert sampler_rows(rows) == sampler_rows(rows0), k
        assert state.keys() == state0.keys()
        for name in state0:
            np.testing.assert_array_equal(state[name], state0[name], err_msg=f"{k} {name}")
    # versions between generation and training: none at K = 0, exactly 1 at K = 1 (after step 0), 2 at K = 2
    for k in (0, 1, 2):
        lags = [r["rollout/policy_lag_max"] for r in ledgers[k][1]]
        assert max(lags) <= k and lags[0] == 0, (k, lags)
        if k == 1:
            assert lags[1:] == [1] * (steps - 1)
        if k == 2:   # each phase generates with the weights of its admission, whatever the timing
            assert lags[1:] == [1] + [2] * (steps - 2)
    # the hard rounds moved: prompts climbed to demo round 1 and groups carrying demos were trained
    assert state0["demo_round"].max() >= 1 and any(r["sampler/demo_rate"] > 0 for r in rows0)


def test_a_worker_that_dies_in_a_queued_phase_is_replaced_with_the_engines_weights(ray_local, train_tasks, tmp_path):
    """K = 2 over the object store, the real Trainer over fake engines: a rollout worker dies in the
    middle of a phase generated ahead of the learner. The phase replaces it and loads the weights the
    other engines hold into it (from the object store: the learner may be training), re-issues its
    prompts, and goes on: every step trains a full batch, no group twice, and every batch comes from one
    weight version, the replaced worker's rows included."""
    import os
    import types

    import ray

    from bench.driver_scale import (FakeLearner, FakeRolloutWorker, SimulatedRolloutGroup, close_simulated,
                                    simulated_trainer)
    from toolexpander.config import Config

    class DyingWorker(FakeRolloutWorker):
        def __init__(self, *args, die_at=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.die_at, self.calls = die_at, 0

        def generate(self, requests, step_seed=0, **kwargs):
            self.calls += 1
            if self.calls == self.die_at:
                os._exit(1)
            return super().generate(requests, step_seed, **kwargs)

    class VersionLearner(FakeLearner):
        def __init__(self):
            self.trained = []

        def step(self, table, step_seed=0, train_step=None, padding=0):
            self.trained.append((sorted(set(table.column("group_id").to_pylist())),
                                 sorted(set(table.column("policy_version").to_pylist()))))
            return super().step(table, step_seed, train_step)

        def log(self):
            return self.trained

    worker_cls = ray.remote(DyingWorker).options(num_cpus=0, max_concurrency=1)

    class Group(SimulatedRolloutGroup):
        def _spawn(self, index):
            return worker_cls.remote(index, 0.01, 4, 4, 8, 4, seed=index)

    steps = 8
    cfg = Config.model_validate({
        "model": {"prepare": None}, "rollout": {"num_workers": 2, "n": 4},
        "sampler": {"batch_prompts": 4, "max_draw_rounds": 1, "all_fail_min_n": 4, "filter_zero_signal": False},
        "learner": {"weight_sync": "object_store"}, "train": {"steps": steps, "max_staleness": 2},
        "logging": {"output_dir": str(tmp_path / "run")}})
    learner = ray.remote(VersionLearner).options(num_cpus=0).remote()
    workers = [worker_cls.remote(0, 0.01, 4, 4, 8, 4, seed=0),
               worker_cls.remote(1, 0.01, 4, 4, 8, 4, seed=1, die_at=5)]   # its 5th call: a phase ahead
    trainer = simulated_trainer(cfg, train_tasks[:24], workers, learner)
    trainer.rollout.__class__ = Group
    events = []
    trainer.metrics = types.SimpleNamespace(event=lambda step, kind, *a, **k: events.append((step, kind)))
    trainer._log_placement = lambda: None
    versions = []
    for _ in range(steps):
        trainer.train_step()
        versions.append(trainer.version)
        trainer.step += 1
    trained = ray.get(learner.log.remote())
    close_simulated(trainer)
    assert [kind for _, kind in events] == ["worker_restart"]
    assert len(trained) == steps and all(len(groups) == 4 for groups, _ in trained)
    every = [g for groups, _ in trained for g in groups]
    assert len(every) == len(set(every))
    assert all(len(v) == 1 for _, v in trained), trained            # one weight version per batch
    assert max(v[0] for _, v in trained) >= 2                       # the replaced worker got a pushed version
