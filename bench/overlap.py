"""Overlapping rollouts with learning (train.max_staleness): the real Trainer.train_step over simulated
actors with fixed costs, K = 0 (synchronous) vs K = 1 (the next batch generates while the learner trains).

    python -m bench.overlap                                    # rollout 1.0 s, learner 1.0 s per step
    python -m bench.overlap --rollout-s 1.5 --learner-s 0.5

Rollout workers and the learner are bench.driver_scale's fakes (Ray actors with num_cpus 0): every
generate() returns a canned batch --rollout-s seconds after it started, step() sleeps --learner-s,
pushes go through the object store at once. Everything else is the training code: the real Sampler,
RolloutGroup, LearnerGroup.call, WeightSync and Trainer.train_step with its Prefetch.
Step time is compared with max(rollout, learner), what a perfect overlap would give, and with their
sum, what the synchronous loop pays. Goal (issue #16): K = 1 within 1.1 x max(rollout, learner).
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


class SlowLearner(FakeLearner):
    def __init__(self, seconds: float):
        self.seconds = seconds

    def step(self, table, step_seed: int = 0, train_step: int | None = None, padding: int = 0) -> dict:
        time.sleep(self.seconds)
        return super().step(table, step_seed, train_step)


def simulate(staleness: int, args, tasks) -> dict:
    """Median wall time of args.steps Trainer.train_step calls after one warm-up step."""
    from toolexpander.config import Config

    cfg = Config.model_validate({
        "model": {"prepare": None},
        "rollout": {"num_workers": args.workers, "n": args.n},
        "sampler": {"batch_prompts": args.workers * 2, "max_draw_rounds": 1, "all_fail_min_n": args.n},
        "learner": {"weight_sync": "object_store"},
        "train": {"steps": args.steps + 10, "max_staleness": staleness},
        "logging": {"output_dir": str(REPO / "runs" / "bench-overlap")}})
    worker_cls = ray.remote(FakeRolloutWorker).options(num_cpus=0, max_concurrency=1)
    trainer = simulated_trainer(cfg, tasks, [worker_cls.remote(i, args.rollout_s, args.n, 2, 600, 96, seed=i)
                                             for i in range(args.workers)],
                                ray.remote(SlowLearner).options(num_cpus=0).remote(args.learner_s))
    timed = timed_steps(trainer, args.steps, f"K={staleness}")
    walls, lags = [w for w, _ in timed], [m.get("rollout/policy_lag_max", 0.0) for _, m in timed]
    close_simulated(trainer)
    step = statistics.median(walls)
    return {"K": staleness, "step": step, "walls": walls, "lag_max": max(lags),
            "vs_max": step / max(args.rollout_s, args.learner_s), "vs_sum": step / (args.rollout_s + args.learner_s)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rollout-s", type=float, default=1.0)
    ap.add_argument("--learner-s", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per K (after one warm-up step)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--n", type=int, default=10)
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    runs = simulate_each(simulate, [0, 1], args)
    text = "\n".join([
        f"overlap: simulated rollout {args.rollout_s} s and learner {args.learner_s} s per step, {args.workers} "
        f"workers x 2 prompts x n={args.n}; median of {args.steps} steps after a warm-up",
        table(runs, [("K", "max_staleness", "d"), ("step", "s/step", ".3f"), ("vs_max", "x max(rollout, learner)", ".2f"),
                     ("vs_sum", "x (rollout + learner)", ".2f"), ("lag_max", "policy lag max", ".0f")]),
        f"K=1: {runs[1]['vs_max']:.2f}x max(rollout, learner) (goal <= {GOAL_X}x); speed-up over K=0 "
        f"{runs[0]['step'] / runs[1]['step']:.2f}x; wall {time.perf_counter() - t_start:.0f} s",
    ])
    write("overlap", {"args": vars(args), "runs": runs,
                      "goals": [goal("K=1 step time / max(rollout, learner)", runs[1]["vs_max"], GOAL_X, False, "x")]},
          text)


if __name__ == "__main__":
    main()
