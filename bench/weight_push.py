"""Weight push, learner -> every rollout worker, end to end, with 1 and 2 workers, by both transports:
the object store (LearnerGroup.weights_ref() + RolloutGroup.push: gather, object store, load into vLLM,
prefix-cache reset) and the gloo broadcast group (WeightSync, the CPU default); beside a plain memcpy
of the same bytes, vLLM's own in-process reload_weights of a ready state dict and the loader the pushes
use (vllm_ext.WeightReceiver.load_pushed_weights: on CPU, CpuRepackingLoader) on the same state dict.

    python -m bench.weight_push [--reps 5] [--warmup 3] [--workers 2] [--dtype bfloat16]

--dtype is the engines' and so the wire's (model.dtype): bfloat16 (the demo's) sends half of float32's bytes.
Each setting is timed after --warmup untimed pushes: a training run pushes every step, and its first pushes
pay one-off costs (the object store's fresh pages, each worker's first mapping of them); every timed push
is listed, so a slow first one shows.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time

import numpy as np

from bench.common import MODEL, cores, goal, log, private_ray, table, write

GOAL_S = 0.35


def make_cfg(workers: int, sync: str = "object_store", dtype: str = "bfloat16"):
    from toolexpander.config import Config

    return Config.model_validate({
        "model": {"path": str(MODEL), "prepare": None, "dtype": dtype},
        "rollout": {"num_workers": workers, "n": 2, "max_tokens": 8, "max_model_len": 2048,
                    "cpu_kvcache_gb": 1, "cpus_per_worker": 1},
        "learner": {"zero_stage": 0, "cpus_per_rank": 1, "world_size": 1, "weight_sync": sync}})


def push_once(learner, group, version: int) -> dict:
    """One object-store push (WeightSync's fallback); the gather is waited for first only to time it apart."""
    import ray

    start = time.perf_counter()
    ref = learner.weights_ref()
    ray.wait([ref], fetch_local=False)
    gathered = time.perf_counter()
    worker_s = group.push(version, ref)
    end = time.perf_counter()
    return {"total_s": end - start, "gather_s": gathered - start, "worker_load_s": worker_s,
            "transfer_s": end - gathered - worker_s}


def median_of(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def timed_median(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5, help="timed pushes per setting")
    ap.add_argument("--warmup", type=int, default=3, help="untimed pushes before each setting's timed ones")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    args = ap.parse_args(argv)

    import copy

    import ray
    from transformers import AutoTokenizer

    from toolexpander.actors.group import LearnerGroup, RolloutGroup, WeightSync
    from toolexpander.actors.rollout import engine_env

    cfg = make_cfg(args.workers, dtype=args.dtype)
    pad_id = AutoTokenizer.from_pretrained(MODEL).pad_token_id or 0
    t_start = time.perf_counter()
    rows, version = [], 0
    with private_ray(num_cpus=max(cores(), args.workers + 1)):
        learner = LearnerGroup(cfg, str(MODEL), pad_id)
        group = RolloutGroup(cfg, str(MODEL))
        for w in sorted({1, args.workers}):
            sub = copy.copy(group)              # the same group code over its first w workers
            sub.workers = group.workers[:w]
            runs = []
            for rep in range(args.warmup + args.reps):
                version += 1
                run = push_once(learner, sub, version)
                if rep >= args.warmup:
                    runs.append(run)
            rows.append({"what": f"object store push, {w} worker{'s' * (w > 1)}", **median_of(runs),
                         "each": " ".join(f"{r['total_s']:.2f}" for r in runs)})
            log(rows[-1]["what"] + f": {rows[-1]['total_s']:.3f} s")
        for w in sorted({1, args.workers}):
            sub = copy.copy(group)
            sub.workers = group.workers[:w]
            sync = WeightSync(learner, sub, make_cfg(w, "gloo", args.dtype))   # forms the broadcast group
            times = []
            for rep in range(args.warmup + args.reps):
                version += 1
                start = time.perf_counter()
                sync.push(version)
                if rep >= args.warmup:
                    times.append(time.perf_counter() - start)
            rows.append({"what": f"gloo broadcast push, {w} worker{'s' * (w > 1)}",
                         "total_s": statistics.median(times), "each": " ".join(f"{t:.2f}" for t in times)})
            log(rows[-1]["what"] + f": {rows[-1]['total_s']:.3f} s")
        weights = ray.get(learner.weights_ref())
        names = [name for name, _ in weights]
        src = [w.copy() for _, w in weights]    # out of the object store, which shutdown frees
        group.shutdown()
        learner.shutdown()
    nbytes = sum(a.nbytes for a in src)

    dst = [np.empty_like(a) for a in src]
    memcpy_s = timed_median(lambda: [np.copyto(d, s) for d, s in zip(dst, src)], args.reps)
    del src
    gc.collect()

    # vLLM's own reload of a ready state dict, in this process, with the env and thread count worker 0 uses.
    import torch

    os.environ.update(engine_env(0, cfg.rollout, on_gpu=False))
    torch.set_num_threads(1)  # as RolloutWorker on CPU (torch is imported, so OMP_NUM_THREADS comes too late)
    from vllm import LLM

    from toolexpander.learner.sync import from_wire

    llm = LLM(model=str(MODEL), dtype=args.dtype, enforce_eager=True, max_model_len=2048, seed=0,
              gpu_memory_utilization=0.5, enable_prefix_caching=True, enable_chunked_prefill=False,
              worker_extension_cls="toolexpander.actors.vllm_ext.WeightReceiver")
    tensors = [(name, from_wire(d, args.dtype)) for name, d in zip(names, dst)]

    def reload():
        llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(tensors)})
        llm.reset_prefix_cache()

    def ours():
        llm.collective_rpc("load_pushed_weights", args=(tensors,))
        llm.reset_prefix_cache()

    # vLLM's reload first: once the extension's CPU loader has kept the checkpoint-layout weights, vLLM's
    # reload no longer fits the layers (the pushes use only the extension's loader)
    reload_s = timed_median(reload, args.reps)
    ours_s = timed_median(ours, args.reps)
    rows += [{"what": "vLLM reload_weights in-process", "total_s": reload_s},
             {"what": "load_pushed_weights in-process", "total_s": ours_s},
             {"what": "memcpy of all params (numpy)", "total_s": memcpy_s}]
    for r in rows:
        r["vs_memcpy"] = r["total_s"] / memcpy_s
    pushes = [r for r in rows if " push, " in r["what"]]
    worst = max(r["total_s"] for r in pushes)
    text = "\n".join([
        f"weight push: {MODEL.name}, {len(names)} tensors, {nbytes / 2**20:.0f} MiB {args.dtype}; "
        f"median of {args.reps} after {args.warmup} warm-up push(es) per setting; memcpy "
        f"{nbytes / memcpy_s / 2**30:.2f} GiB/s",
        table(rows, [("what", "what", ""), ("total_s", "seconds", ".3f"), ("gather_s", "gather", ".3f"),
                     ("transfer_s", "transfer+sched", ".3f"), ("worker_load_s", "worker load", ".3f"),
                     ("vs_memcpy", "x memcpy", ".1f"), ("each", "each timed push s", "")]),
        "object store: gather = learner named_weights() into the object store; worker load = from_numpy + "
        "load_pushed_weights + prefix-cache reset in the slowest worker; transfer+sched = the rest (dispatch, "
        "arg fetch)",
        "gloo: WeightSync.push (64 MiB buckets broadcast from the learner, load_pushed_weights + cache reset), "
        "timed whole",
        f"slowest push {worst:.3f} s (goal <= {GOAL_S} s: {'met' if worst <= GOAL_S else 'MISSED'}); "
        f"wall {time.perf_counter() - t_start:.0f} s",
    ])
    goals = [goal(f"weight push e2e, {r['what']}", r["total_s"], GOAL_S, False, " s") for r in pushes]
    write("weight_push", {"args": vars(args), "bytes": nbytes, "rows": rows, "goals": goals}, text)


if __name__ == "__main__":
    main()
