"""Driver-loop overhead at scale: the real Trainer.train_step over many simulated rollout workers.

    python -m bench.driver_scale --workers 16 --steps 3      # short (run_all)
    python -m bench.driver_scale                             # full: 16 and 64 workers, 10 steps each

Every worker is a real Ray actor (num_cpus=0) that answers generate_split() with a canned Arrow batch
in ROLLOUT_SCHEMA (its requests' group ids, task ids and rounds; realistic prompt/completion sizes) and
its light view, exactly --delay seconds after the call started; loading weights returns at once. The
learner is one such actor whose step_parts() fetches its rows by reference and trains nothing.
Everything else is the training code itself: the real Sampler actor on the shipped tasks,
RolloutGroup.generate_refs (split, fan out with the carried weights, light views, sort),
LearnerGroup.step / weights_ref, WeightSync over the object store and Trainer.train_step, which we
call directly.
Overhead share = (step time - delay) / step time: what the driver adds to a step whose rollout
takes `delay` and whose learner and push take nothing. Beside it, in the same run and over the same
actors, Ray's floor: the same fan-out of calls that only sleep (ray_floor), what a driver calling each
worker pays before any row is built or read.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pyarrow as pa
import ray

from bench.common import REPO, TRAIN_DATA, cores, goal, log, private_ray, table, write
from toolexpander.actors.group import LearnerGroup, RolloutGroup, WeightSync, deal
from toolexpander.rollouts import fetch_rows
from toolexpander.types import REWARD_DIMS, ROLLOUT_SCHEMA, RolloutStats, light_view_ipc

GOAL_SHARE = 0.05


class FakeRolloutWorker:
    """Answers like RolloutWorker, after a fixed delay, from a canned batch."""

    def __init__(self, index: int, delay: float, n: int, max_prompts: int, prompt_len: int,
                 completion_len: int, seed: int):
        self.index, self.delay, self.n, self.version = index, delay, n, 0
        rng = np.random.default_rng(seed)
        rows = max_prompts * n
        self.heavy = {  # the per-row payload that dominates the batch's size
            "prompt_ids": pa.array([rng.integers(0, 49152, prompt_len, dtype=np.int32) for _ in range(rows)],
                                   pa.list_(pa.int32())),
            "completion_ids": pa.array([rng.integers(0, 49152, completion_len, dtype=np.int32)
                                        for _ in range(rows)], pa.list_(pa.int32())),
            "logprobs": pa.array([-rng.random(completion_len, dtype=np.float32) for _ in range(rows)],
                                 pa.list_(pa.float32())),
            "finish_reason": pa.array(["stop"] * rows),
            "text": pa.array(["<think>...</think>\n<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n"
                              "</tool_call>" * 3] * rows),
            **{f"reward_{d}": pa.array((rng.random(rows) < 0.5).astype(np.float32)) for d in REWARD_DIMS},
        }
        self.heavy["reward_total"] = pa.array(sum(self.heavy[f"reward_{d}"].to_numpy() for d in REWARD_DIMS))

    def info(self) -> dict:
        return {"worker": self.index}

    def generate(self, requests, step_seed: int = 0, **kwargs):
        start = time.perf_counter()
        k, n = len(requests), self.n
        light = {"group_id": pa.array(np.repeat([r.group_id for r in requests], n), pa.int64()),
                 "task_id": pa.array([r.task.id for r in requests for _ in range(n)]),
                 "subtask": pa.array([r.task.subtask for r in requests for _ in range(n)]),
                 "demo_round": pa.array(np.repeat([r.demo_round for r in requests], n), pa.int8()),
                 "num_demos": pa.array(np.repeat([len(r.demos) for r in requests], n), pa.int8()),
                 "policy_version": pa.array(np.full(k * n, self.version, np.int64))}
        columns = [light[f.name] if f.name in light else self.heavy[f.name].slice(0, k * n)
                   for f in ROLLOUT_SCHEMA]
        batch = pa.RecordBatch.from_arrays(columns, schema=ROLLOUT_SCHEMA)
        time.sleep(max(0.0, self.delay - (time.perf_counter() - start)))
        stats = RolloutStats(worker=self.index, prompts=k, completions=k * n, prompt_tokens=0,
                             completion_tokens=k * n * len(self.heavy["completion_ids"][0]),
                             seconds=time.perf_counter() - start)
        return batch, stats

    def generate_split(self, requests, step_seed: int = 0, version: int | None = None, weights=None, **kwargs):
        """As RolloutWorker.generate_split: carried weights first, then (light view, stats) for the
        driver and the full batch apart."""
        if weights is not None:
            self.update_weights(version, weights)
        batch, stats = self.generate(requests, step_seed, **kwargs)
        return (light_view_ipc(batch), stats), batch

    def update_weights(self, version: int, named_tensors) -> float:
        self.version = version
        return 0.0

    def idle(self, requests, delay: float):
        """Ray's floor for a generate call: the same arguments in, `delay` asleep, nothing built or sent
        back (two results, like generate_split)."""
        time.sleep(delay)
        return None, None


class FakeLearner:
    def step_parts(self, light: pa.Table, refs: list, ids: list[int], step_seed: int = 0,
                   train_step: int | None = None, padding: int = 0):
        """As Learner.step_parts: fetches its rows from the object store and assembles them (that
        cost is the data path's, on the rank), then trains nothing."""
        table, lost = fetch_rows(light, refs, ids)
        if lost:
            return None, lost
        return self.step(table, step_seed, train_step, padding), []

    def step(self, table: pa.Table, step_seed: int = 0, train_step: int | None = None, padding: int = 0) -> dict:
        return {"learner/loss": 0.0, "learner/grad_norm": 0.0, "learner/skipped": 0.0, "learner/applied": 1.0}

    def named_weights(self, dtype: str = "float32"):
        return [("w", np.zeros(1, np.float32))]

    def lr(self) -> float:
        return 0.0


class SimulatedRolloutGroup(RolloutGroup):
    """RolloutGroup's own generate/push over fake workers (no placement group, no vLLM)."""

    def __init__(self, cfg, workers):
        self.cfg, self.model_path, self.pg, self.workers = cfg, None, None, workers
        self.held = {}
        self.timeout_s = cfg.cluster.call_timeout_s

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w, no_restart=True)


class SimulatedLearnerGroup(LearnerGroup):
    def __init__(self, ranks):
        self.pg, self.ranks, self.dtype, self.timeout_s = None, ranks, "float32", None

    def shutdown(self) -> None:
        for r in self.ranks:
            ray.kill(r, no_restart=True)


def simulated_trainer(cfg, tasks, workers: list, learner_actor):
    """A Trainer over fake actors (its __init__ would start real ones): the real Sampler on `tasks`,
    RolloutGroup over `workers`, LearnerGroup over `learner_actor`, WeightSync over the object store.
    close_simulated() stops them."""
    from toolexpander.sampling.sampler import Sampler
    from toolexpander.train import Trainer

    trainer = Trainer.__new__(Trainer)
    trainer.cfg = cfg
    trainer.sampler = ray.remote(Sampler).options(num_cpus=0).remote(
        cfg.sampler.model_dump(), tasks, cfg.reward.exemplar_bonus, cfg.reward.weights)
    trainer.rollout = SimulatedRolloutGroup(cfg, workers)
    trainer.rollout.ready()
    trainer.learner = SimulatedLearnerGroup([learner_actor])
    trainer.sync = WeightSync(trainer.learner, trainer.rollout, cfg)
    trainer.step, trainer.version, trainer.save_rollouts, trainer.metrics = 0, 0, None, None
    trainer.init_overlap()
    return trainer


def simulate_each(simulate, values: list, args) -> list[dict]:
    """simulate(value, args, tasks) for each value, in one private Ray, on the shipped training tasks."""
    from toolexpander.data import load_tasks

    tasks = load_tasks(TRAIN_DATA)
    with private_ray(num_cpus=cores()):
        return [simulate(v, args, tasks) for v in values]


def timed_steps(trainer, steps: int, label: str) -> list[tuple[float, dict]]:
    """(wall seconds, metrics) of `steps` Trainer.train_step calls after one untimed warm-up step;
    metrics["bench/driver_cpu_s"] is the CPU time the driver process spent in the step (its Python and
    the Ray core worker's threads in it)."""
    out = []
    for k in range(steps + 1):
        start, cpu = time.perf_counter(), time.process_time()
        m = trainer.train_step()
        wall = time.perf_counter() - start
        m["bench/driver_cpu_s"] = time.process_time() - cpu
        trainer.step += 1
        if k:
            out.append((wall, m))
        log(f"{label}, step {k}: {wall:.3f} s")
    return out


def ray_floor(workers: list, requests: list, delay: float, steps: int) -> list[float]:
    """Seconds beyond `delay` of `steps` bare fan-outs (after a warm-up one): every worker's idle() called
    with its shard of `requests` (dealt as RolloutGroup deals them), one wait, one get, as generate_refs
    does. What any driver that calls each worker pays on this machine, before building or reading a row."""
    shards = deal(requests, len(workers))
    out = []
    for k in range(steps + 1):
        start = time.perf_counter()
        calls = [w.idle.options(num_returns=2).remote(shard, delay) for w, shard in zip(workers, shards) if shard]
        metas = [meta for meta, _ in calls]
        ray.wait(metas, num_returns=len(metas))
        ray.get(metas)
        if k:
            out.append(time.perf_counter() - start - delay)
    return out


def close_simulated(trainer) -> None:
    for prefetch in trainer.ahead:
        prefetch.join()
    trainer.rollout.shutdown()
    trainer.learner.shutdown()
    ray.kill(trainer.sampler, no_restart=True)


def simulate(workers: int, args, tasks) -> dict:
    """Median timings of args.steps Trainer.train_step calls (after a warm-up) over `workers` fakes."""
    from toolexpander.config import Config

    cfg = Config.model_validate({
        "model": {"prepare": None},
        "rollout": {"num_workers": workers, "n": args.n},
        # One draw round per step, so a step holds exactly one rollout delay.
        "sampler": {"batch_prompts": workers * args.prompts_per_worker, "max_draw_rounds": 1,
                    "all_fail_min_n": args.n},
        # Fake actors cannot join a gloo group: the push goes through the object store path.
        "learner": {"weight_sync": "object_store"},
        "logging": {"output_dir": str(REPO / "runs" / "bench-driver-scale")}})
    start = time.perf_counter()
    worker_cls = ray.remote(FakeRolloutWorker).options(num_cpus=0, max_concurrency=1)
    trainer = simulated_trainer(cfg, tasks, [
        worker_cls.remote(i, args.delay, args.n, args.prompts_per_worker, args.prompt_len,
                          args.completion_len, seed=i) for i in range(workers)],
        ray.remote(FakeLearner).options(num_cpus=0).remote())
    started_s = time.perf_counter() - start
    steps = [{"wall": wall, "rollout": m["time/rollout_s"], "learner": m["time/learner_s"],
              "push": m["time/weight_push_total_s"], "rows": m["rollout/groups"] * args.n,
              "cpu": m["bench/driver_cpu_s"]}
             for wall, m in timed_steps(trainer, args.steps, f"{workers} workers")]
    requests = ray.get(trainer.sampler.next_batch.remote(cfg.sampler.batch_prompts))
    floor = ray_floor(trainer.rollout.workers, requests, args.delay, args.steps)
    log(f"{workers} workers, Ray's floor: " + ", ".join(f"{f:.3f}" for f in floor) + " s beyond the delay")
    close_simulated(trainer)
    med = {k: statistics.median(s[k] for s in steps) for k in steps[0]}
    d, floor_s = args.delay, statistics.median(floor)
    return {"workers": workers, "rows": int(steps[0]["rows"]), "actors_up_s": started_s, "steps": steps,
            "generate": med["rollout"] - d, "learner": med["learner"], "push": med["push"],
            "sampler": med["wall"] - med["rollout"] - med["learner"] - med["push"],
            "overhead": med["wall"] - d, "step": med["wall"], "share": (med["wall"] - d) / med["wall"],
            "floor": floor_s, "floor_steps": floor, "floor_share": floor_s / (d + floor_s),
            "driver_cpu": med["cpu"], "cpu_share": med["cpu"] / med["wall"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[16, 64], help="one run per count")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (after one warm-up step)")
    ap.add_argument("--delay", type=float, default=0.5, help="seconds every worker takes per generate")
    ap.add_argument("--prompts-per-worker", type=int, default=2)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--prompt-len", type=int, default=600)
    ap.add_argument("--completion-len", type=int, default=96)
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    runs = simulate_each(simulate, args.workers, args)
    parts = [("generate", "rollout phase beyond the delay (sampler next_batch and record, fan-out, light views)"),
             ("learner", "learner step (the rank fetches its shard's rows by reference)"),
             ("push", "weights staged (weights_ref; the next generate calls carry them)"),
             ("sampler", "sampler end_step, metrics, filtering"),
             ("overhead", "total overhead (step - delay)"), ("step", "step"),
             ("driver_cpu", "driver process CPU time (its own work, all threads)")]
    rows = [{"part": label, **{f"s{r['workers']}": r[key] for r in runs},
             **{f"p{r['workers']}": r[key] / r["step"] for r in runs}} for key, label in parts]
    columns = [("part", "part of a step (median)", "")]
    for r in runs:
        columns += [(f"s{r['workers']}", f"{r['workers']} workers: s", ".3f"), (f"p{r['workers']}", "share", ".1%")]
    row_tokens = args.prompt_len + 2 * args.completion_len   # prompt ids + completion ids + logprobs
    text = "\n".join([
        f"driver loop: simulated rollout workers x {args.prompts_per_worker} prompts x n={args.n} each "
        f"(~{row_tokens * 4 * args.prompts_per_worker * args.n / 2**10:.0f} KiB of token lists per worker and step), "
        f"delay {args.delay} s; median of {args.steps} steps after a warm-up",
        table(rows, columns),
        *[f"{r['workers']} workers: overhead share (step - delay) / step {r['share']:.1%} (goal <= {GOAL_SHARE:.0%}: "
          f"{'met' if r['share'] <= GOAL_SHARE else 'MISSED'}); actors up in {r['actors_up_s']:.0f} s; steps "
          + ", ".join(f"{s['wall']:.3f}" for s in r["steps"]) for r in runs],
        *[f"{r['workers']} workers: Ray's floor (the same calls with the same shards to the same actors, each only "
          f"asleep for the delay, one wait and one get; median of {args.steps} after a warm-up) {r['floor']:.3f} s "
          f"beyond the delay, {r['floor_share']:.1%} of such a step; the rollout phase's overhead above is "
          f"{r['generate'] / r['floor']:.1f}x it, the whole overhead {r['overhead'] / r['floor']:.1f}x"
          for r in runs],
        *[f"{r['workers']} workers: driver CPU time / step {r['cpu_share']:.1%} (the simulated workers share this "
          f"machine's {cores()} cores with the driver: their CPU time delays the answers and counts in the overhead "
          "above, which a cluster's rollout nodes would not add)" for r in runs],
        f"wall {time.perf_counter() - t_start:.0f} s",
    ])
    write("driver_scale", {"args": vars(args), "runs": runs,
                           "goals": [goal(f"driver overhead share, {r['workers']} workers", r["share"], GOAL_SHARE,
                                          False) for r in runs]}, text)


if __name__ == "__main__":
    main()
