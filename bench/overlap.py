"""Overlapping rollouts with learning (train.max_staleness): the real Trainer.train_step over simulated
actors with set costs, K = 0 (synchronous) vs K = 1 (the next batch generates while the learner trains)
vs K = 2 (the next two), first with a fixed rollout cost, then with one that alternates between
rollout-s + jitter and rollout-s - jitter from step to step (DAPO-style refills and long completions make
real rollout phases uneven; a deeper queue absorbs that).

    python -m bench.overlap                                    # rollout 1.0 s (+-0.5 s), learner 1.0 s
    python -m bench.overlap --rollout-s 1.5 --learner-s 0.5 --jitter 0

Rollout workers and the learner are bench.driver_scale's fakes (Ray actors with num_cpus 0): every
generate() returns a canned batch its set delay after it started, step() sleeps --learner-s,
pushes go through the object store at once. Everything else is the training code: the real Sampler,
RolloutGroup, LearnerGroup.call, WeightSync and Trainer.train_step with its Prefetch queue and Gate.
Step time (the mean of the timed steps) is compared with max(mean rollout, learner), what a perfect
overlap would give, and with their sum, what the synchronous loop pays. Goal (issue #16): K = 1 within
1.1 x max(rollout, learner) with the fixed rollout cost.
"""

from __future__ import annotations

import argparse
import statistics
import time

import ray

from bench.common import REPO, goal, table, write
from bench.driver_scale import (FakeLearner, FakeRolloutWorker, close_simulated, simulate_each, simulated_trainer,
                                timed_steps)

GOAL_X = 1.1
KS = (0, 1, 2)


class SlowLearner(FakeLearner):
    def __init__(self, seconds: float):
        self.seconds = seconds

    def step(self, table, step_seed: int = 0, train_step: int | None = None, padding: int = 0) -> dict:
        time.sleep(self.seconds)
        return super().step(table, step_seed, train_step)


class JitteryWorker(FakeRolloutWorker):
    """A fake worker whose delay cycles through `delays`, one per generate() call (one call a step)."""

    def __init__(self, index: int, delays: list[float], *args, **kwargs):
        super().__init__(index, delays[0], *args, **kwargs)
        self.delays, self.calls = delays, 0

    def generate(self, requests, step_seed: int = 0, **kwargs):
        self.delay = self.delays[self.calls % len(self.delays)]
        self.calls += 1
        return super().generate(requests, step_seed, **kwargs)


def simulate(case: tuple[int, float], args, tasks) -> dict:
    """Mean wall time of args.steps Trainer.train_step calls after one warm-up step, for (K, jitter)."""
    staleness, jitter = case
    from toolexpander.config import Config

    cfg = Config.model_validate({
        "model": {"prepare": None},
        "rollout": {"num_workers": args.workers, "n": args.n},
        "sampler": {"batch_prompts": args.workers * 2, "max_draw_rounds": 1, "all_fail_min_n": args.n},
        "learner": {"weight_sync": "object_store"},
        "train": {"steps": args.steps + 10, "max_staleness": staleness},
        "logging": {"output_dir": str(REPO / "runs" / "bench-overlap")}})
    worker_cls = ray.remote(JitteryWorker).options(num_cpus=0, max_concurrency=1)
    delays = [args.rollout_s + jitter, args.rollout_s - jitter] if jitter else [args.rollout_s]
    trainer = simulated_trainer(cfg, tasks, [worker_cls.remote(i, delays, args.n, 2, 600, 96, seed=i)
                                             for i in range(args.workers)],
                                ray.remote(SlowLearner).options(num_cpus=0).remote(args.learner_s))
    timed = timed_steps(trainer, args.steps, f"K={staleness}, jitter {jitter} s")
    walls, lags = [w for w, _ in timed], [m.get("rollout/policy_lag_max", 0.0) for _, m in timed]
    close_simulated(trainer)
    step = statistics.mean(walls)
    return {"K": staleness, "jitter": jitter, "step": step, "walls": walls, "lag_max": max(lags),
            "vs_max": step / max(args.rollout_s, args.learner_s), "vs_sum": step / (args.rollout_s + args.learner_s)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rollout-s", type=float, default=1.0)
    ap.add_argument("--learner-s", type=float, default=1.0)
    ap.add_argument("--jitter", type=float, default=0.5, help="the uneven case: rollout-s +- this, alternating "
                    "(0: only the fixed case)")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per case (after one warm-up step; even, so "
                    "that the uneven case times as many long phases as short ones)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--n", type=int, default=10)
    args = ap.parse_args(argv)
    if not 0 <= args.jitter < args.rollout_s:
        ap.error(f"--jitter {args.jitter}: must be at least 0 and below --rollout-s {args.rollout_s}")
    t_start = time.perf_counter()
    cases = [(k, 0.0) for k in KS] + ([(k, args.jitter) for k in KS] if args.jitter else [])
    runs = simulate_each(simulate, cases, args)
    by = {(r["K"], r["jitter"]): r for r in runs}
    lines = [f"K=1: {by[1, 0.0]['vs_max']:.2f}x max(rollout, learner) with the fixed rollout cost (goal <= {GOAL_X}x); "
             f"speed-up over K=0 {by[0, 0.0]['step'] / by[1, 0.0]['step']:.2f}x"]
    if args.jitter:
        lines.append(f"uneven rollouts (+-{args.jitter} s): K=1 {by[1, args.jitter]['vs_max']:.2f}x, "
                     f"K=2 {by[2, args.jitter]['vs_max']:.2f}x max(mean rollout, learner)")
    text = "\n".join([
        f"overlap: simulated rollout {args.rollout_s} s and learner {args.learner_s} s per step, {args.workers} "
        f"workers x 2 prompts x n={args.n}; mean of {args.steps} steps after a warm-up; uneven case: rollout "
        f"alternating {args.rollout_s + args.jitter:g} s / {args.rollout_s - args.jitter:g} s",
        table(runs, [("K", "max_staleness", "d"), ("jitter", "rollout jitter s", ".2f"), ("step", "s/step", ".3f"),
                     ("vs_max", "x max(rollout, learner)", ".2f"), ("vs_sum", "x (rollout + learner)", ".2f"),
                     ("lag_max", "policy lag max", ".0f")]),
        *lines, f"wall {time.perf_counter() - t_start:.0f} s"])
    write("overlap", {"args": vars(args), "runs": runs,
                      "goals": [goal("K=1 step time / max(rollout, learner)", by[1, 0.0]["vs_max"], GOAL_X, False, "x")]},
          text)


if __name__ == "__main__":
    main()
