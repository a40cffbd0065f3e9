"""Rollout throughput: (a) RolloutWorker in a Ray actor (RolloutGroup, 1 worker) vs bare
`vllm.LLM.generate` in this process, on the same prompts, model, sampling params, seeds and env;
(b) the whole rollout phase on one worker per core vs the machine's matmul compute bound, with the
config's defaults and, side by side on the same prompts, other KV-cache block sizes (--block-sizes,
vLLM's CPU default 128 unless told otherwise) and a compiled engine (--compiled: enforce_eager false).

    python -m bench.rollout --prompts 4 --n 10 --max-tokens 64 --reps 3 --compiled   # short (run_all)
    python -m bench.rollout --compiled                                               # full: 16 prompts, 3 reps

The worker's time includes everything it does per call: rendering the chat template, vLLM, the
reward scoring of every completion and building the Arrow batch; the driver's time adds Ray's
transfer and the group's concatenate/sort. Both engines run with logprobs=0 (the worker needs the
sampled token's logprob). Every repetition uses fresh prompts (prefix caching stays on, as in
training, but cannot serve a repetition from the previous one); repetitions alternate which side
goes first so that load drift on a shared machine hits both.
Bound: tokens/s = GFLOP/s / (2 x parameters), matmul GFLOP/s measured in the same run, before and
after (b), on all cores (the best of threads = cores and cores x 1 thread, and of the two times);
attention FLOPs are not counted (so achieved/bound understates utilisation).
Roofline (b'): at small batches a decode step costs at least one read of all the engine's weights, so
the phase can be slower than its matmuls allow whatever the engine does; the memory read rate is
measured in the same run, and the table says how much of the matmul bound these settings allow.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path

from bench.common import (MODEL, TRAIN_DATA, cores, gflops, goal, log, parameters, private_ray, read_gibs, table,
                          write)

GOAL_RATIO = 0.9      # worker-in-Ray tokens/s over bare vLLM tokens/s
GOAL_BOUND = 0.50     # rollout phase tokens/s over the compute bound of the engine dtype (bf16 in run_all)


def pick_prompts(tokenizer, count: int, max_prompt_tokens: int):
    """Training tasks in file order whose rendered prompt fits max_prompt_tokens: (task, ids) pairs."""
    from toolexpander.data import load_tasks
    from toolexpander.prompt import prompt_ids

    out = []
    for task in load_tasks(TRAIN_DATA):
        ids = prompt_ids(tokenizer, task)
        if len(ids) <= max_prompt_tokens:
            out.append((task, ids))
            if len(out) == count:
                return out
    raise SystemExit(f"{TRAIN_DATA}: only {len(out)} tasks fit --max-prompt-tokens {max_prompt_tokens}")


def machine_gflops() -> dict[str, float]:
    """Matmul GFLOP/s of all cores, per dtype: the better of one process with threads = cores and
    cores x one thread (two OpenMP threads stall when the machine is oversubscribed)."""
    return {d: max(gflops(d, cores(), seconds=2), cores() * gflops(d, 1, seconds=2))
            for d in ("float32", "bfloat16")}


def make_cfg(args, workers: int, block_size: int | None = None, eager: bool = True):
    """block_size None: the config's default (toolexpander's, not vLLM's); eager False: rollout.enforce_eager
    false (vLLM compiles the model at engine start)."""
    from toolexpander.config import Config

    return Config.model_validate({
        "model": {"path": str(MODEL), "prepare": None, "dtype": args.dtype},
        "rollout": {"num_workers": workers, "n": args.n, "max_tokens": args.max_tokens,
                    "temperature": args.temperature, "max_model_len": 2048, "cpu_kvcache_gb": 1,
                    "cpus_per_worker": 1, "seed": 0, "enforce_eager": eager, "block_size": block_size}})


def requests(chunk, first_group: int):
    from toolexpander.types import PromptRequest

    return [PromptRequest(task=t, demo_round=0, group_id=first_group + i) for i, (t, _) in enumerate(chunk)]


def cpu_seconds(pids: list[int]) -> float:
    """user + system CPU seconds of whole processes, from /proc (ticks of 1/SC_CLK_TCK s)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def decode_steps(tbl, stats, workers: int) -> int:
    """Decode steps of one RolloutGroup.generate call summed over its engines, each engine's at least
    its longest completion (one token per sequence per step). Rows belong to the worker RolloutGroup
    deals their request to (actors.group.deal: request i to worker i % workers; group ids here are
    request indices), checked against each worker's own completion-token count."""
    import pyarrow.compute as pc

    lengths = pc.list_value_length(tbl["completion_ids"]).to_numpy()
    owner = tbl["group_id"].to_numpy() % workers
    tokens = {s.worker: s.completion_tokens for s in stats}
    steps = 0
    for w in range(workers):
        mine = lengths[owner == w]
        if mine.size:
            if int(mine.sum()) != tokens.get(w):
                raise RuntimeError(f"worker {w}: {int(mine.sum())} completion tokens by group id, {tokens.get(w)} "
                                   "by its stats: RolloutGroup no longer deals request i to worker i % workers")
            steps += int(mine.max())
    return steps


def run_group(group, chunk, step_seed: int, pids: list[int]) -> dict:
    """One RolloutGroup.generate call, timed at the driver; `pids` are the workers' processes."""
    reqs = requests(chunk, 0)
    cpu, start = cpu_seconds(pids), time.perf_counter()
    tbl, stats, lost = group.generate(reqs, step_seed)
    seconds = time.perf_counter() - start
    assert not lost and tbl.num_rows == len(reqs) * group.cfg.rollout.n
    return {"seconds": seconds, "completion_tokens": sum(s.completion_tokens for s in stats),
            "prompt_tokens": sum(s.prompt_tokens for s in stats),
            "worker_seconds": max(s.seconds for s in stats), "cpu_s": cpu_seconds(pids) - cpu,
            "decode_steps": decode_steps(tbl, stats, len(group.workers))}


def run_bare(llm, cfg, chunk, step_seed: int, nice: int) -> dict:
    """The same requests straight into vLLM: same seeds per request (step_seed * 1_000_003 + group),
    at the worker's niceness (Ray starts workers at nice 15; Linux niceness is per thread, and this
    thread is the in-process engine's only compute thread)."""
    from vllm import SamplingParams

    r = cfg.rollout
    params = [SamplingParams(n=r.n, temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens,
                             logprobs=0, seed=step_seed * 1_000_003 + g) for g in range(len(chunk))]
    prompts = [{"prompt_token_ids": ids} for _, ids in chunk]
    own = os.getpriority(os.PRIO_PROCESS, 0)
    os.setpriority(os.PRIO_PROCESS, 0, nice)
    try:
        cpu, start = cpu_seconds([os.getpid()]), time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - start
        cpu = cpu_seconds([os.getpid()]) - cpu
    finally:
        os.setpriority(os.PRIO_PROCESS, 0, own)   # lowering niceness back needs root (we are)
    return {"seconds": seconds, "completion_tokens": sum(len(c.token_ids) for o in outs for c in o.outputs),
            "prompt_tokens": sum(len(ids) for _, ids in chunk), "cpu_s": cpu}


def matmul_weights(params: int, model_dir: Path = MODEL) -> tuple[int, int]:
    """(the decoder layers' weights, the LM head's) of a causal LM with `params` parameters: every token
    runs the layers, only a completion token (and a prompt's last) the head; an untied input embedding
    is a lookup, not a matmul."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    head = cfg["vocab_size"] * cfg["hidden_size"]
    return params - head * (1 if cfg.get("tie_word_embeddings") else 2), head


def roofline(phase: dict, weight_bytes: int, gibs: float, gflops_: float, layers: int, head: int,
             bound_tps: float) -> dict:
    """The phase's lower bound on time: its matmuls at the measured rate (2 x (layers + head) per completion
    token, 2 x layers per prompt token), or reading the weights (`weight_bytes`) once per decode step at the
    measured memory rate, whichever is longer (attention and everything else free)."""
    flops = 2 * (phase["completion_tokens"] * (layers + head) + phase["prompt_tokens"] * layers)
    matmul_s = flops / (gflops_ * 1e9)
    read_s = phase["decode_steps"] * weight_bytes / (gibs * 2**30)
    roof = phase["completion_tokens"] / max(matmul_s, read_s)
    return {"matmul_s": matmul_s, "read_s": read_s, "roofline_tps": roof, "roofline_of_bound": roof / bound_tps,
            "of_roofline": phase["tokens_per_s"] / roof}


def summarize(runs: list[dict]) -> dict:
    tokens = sum(r["completion_tokens"] for r in runs)
    prompt = sum(r["prompt_tokens"] for r in runs)
    seconds = sum(r["seconds"] for r in runs)
    return {"seconds": seconds, "completion_tokens": tokens, "prompt_tokens": prompt,
            "cores_used": sum(r["cpu_s"] for r in runs) / seconds,
            "tokens_per_s": tokens / seconds, "processed_per_s": (tokens + prompt) / seconds,
            "rep_seconds": [round(r["seconds"], 3) for r in runs],
            "decode_steps": sum(r.get("decode_steps", 0) for r in runs),
            "worker_seconds": sum(r.get("worker_seconds", 0.0) for r in runs) or None}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16, help="prompts per generate call")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--reps", type=int, default=None, help="timed calls per side (default: 1 short, 3 full)")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-prompt-tokens", type=int, default=768, help="as configs/local-smollm2.yaml")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--workers", type=int, default=cores(), help="(b): rollout workers, one per core")
    ap.add_argument("--block-sizes", type=int, nargs="*", default=[128],
                    help="(b): also run the phase with these KV-cache block sizes (rollout.block_size), side by "
                         "side with the config's default, alternating per repetition; 128 is vLLM's CPU default")
    ap.add_argument("--compiled", action="store_true",
                    help="(b): also run the phase with rollout.enforce_eager false (vLLM compiles the model at start)")
    args = ap.parse_args(argv)
    reps = args.reps or (1 if args.prompts <= 4 else 3)

    from transformers import AutoTokenizer

    from toolexpander.actors.group import RolloutGroup
    from toolexpander.actors.rollout import engine_args, engine_env

    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    # Disjoint prompt sets: warm-up, (a) reps, (b) reps.
    prompts = pick_prompts(tokenizer, args.prompts * (1 + 2 * reps), args.max_prompt_tokens)
    chunks = [prompts[i:i + args.prompts] for i in range(0, len(prompts), args.prompts)]
    warm, a_sets, b_sets = chunks[0], chunks[1:1 + reps], chunks[1 + reps:]
    cfg1 = make_cfg(args, workers=1)
    params = parameters()
    t_start = time.perf_counter()

    loads = {"start": os.getloadavg()[0]}
    default_block = engine_args(cfg1.rollout, False)["block_size"]
    # (b)'s settings as (block size, eager): the config's default first
    variants = ([(None, True)] + [(b, True) for b in args.block_sizes if b != default_block]
                + [(None, False)] * args.compiled)
    with private_ray(num_cpus=max(args.workers, cores()) * len(variants)):
        # (a) worker in Ray vs bare vLLM in this process, alternating who goes first. At most two
        # engines live at a time (each holds ~3 GB on CPU).
        solo = RolloutGroup(cfg1, str(MODEL))
        solo_pids = [i["pid"] for i in solo.ready()]
        run_group(solo, warm, 0, solo_pids)
        nice = os.getpriority(os.PRIO_PROCESS, solo_pids[0])
        # The env worker 0 gives its engine (one OpenMP thread bound to core 0), for the bare engine;
        # set after ray.init so that the Ray processes do not inherit it.
        os.environ.update(engine_env(0, cfg1.rollout, on_gpu=False))
        # torch is already imported here, so OMP_NUM_THREADS no longer applies: without this the bare
        # engine runs 2 threads on 2 cores (measured) while the Ray worker, started with Ray's
        # OMP_NUM_THREADS=1, runs one.
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        affinity = os.sched_getaffinity(0)
        from vllm import LLM

        llm = LLM(model=str(MODEL), dtype=args.dtype, enforce_eager=True, max_model_len=2048, seed=0,
                  gpu_memory_utilization=0.5, enable_prefix_caching=True, enable_chunked_prefill=False,
                  **engine_args(cfg1.rollout, on_gpu=False))
        run_bare(llm, cfg1, warm, step_seed=0, nice=nice)
        ray_runs, bare_runs = [], []
        for k, chunk in enumerate(a_sets):
            sides = [(ray_runs, lambda c=chunk, s=k + 1: run_group(solo, c, s, solo_pids)),
                     (bare_runs, lambda c=chunk, s=k + 1: run_bare(llm, cfg1, c, s, nice))]
            for out, fn in (sides if k % 2 == 0 else sides[::-1]):
                out.append(fn())
                log(f"(a) rep {k}: {'ray' if out is ray_runs else 'bare'} {out[-1]['seconds']:.2f} s, "
                    f"{out[-1]['completion_tokens']} tokens")
        solo.shutdown()
        del llm
        gc.collect()
        os.sched_setaffinity(0, affinity)  # the engine pinned this thread to core 0
        loads["after_a"] = os.getloadavg()[0]

        # (b) the whole rollout phase on one worker per core, between two bound measurements; one group
        # per block size (the config's default first), the same prompts and seeds, alternating who goes
        # first; a group's engines idle while the other generates.
        bound_before, read_before = machine_gflops(), read_gibs()
        groups, pids, up_s = [], [], []
        for b, eager in variants:
            start = time.perf_counter()
            groups.append(RolloutGroup(make_cfg(args, args.workers, b, eager), str(MODEL)))
            pids.append([i["pid"] for i in groups[-1].ready()])
            up_s.append(time.perf_counter() - start)
        for g, p in zip(groups, pids):
            run_group(g, warm, 0, p)
        b_runs = [[] for _ in variants]
        for k, chunk in enumerate(b_sets):
            order = list(range(len(variants)))
            for v in (order if k % 2 == 0 else order[::-1]):
                b_runs[v].append(run_group(groups[v], chunk, 100 + k, pids[v]))
                log(f"(b) rep {k}, {variants[v]}: "
                    f"{b_runs[v][-1]['seconds']:.2f} s, {b_runs[v][-1]['completion_tokens']} tokens")
        for g in groups:
            g.shutdown()
        bound_after, read_after = machine_gflops(), read_gibs()
        loads["after_b"] = os.getloadavg()[0]

    ray_s, bare_s = summarize(ray_runs), summarize(bare_runs)
    phases = [summarize(runs) for runs in b_runs]
    phase = phases[0]   # the config's default: the goal's row
    ratio = ray_s["tokens_per_s"] / bare_s["tokens_per_s"]
    gf = {d: max(bound_before[d], bound_after[d]) for d in bound_before}  # best measured
    bound_tps = {d: g * 1e9 / (2 * params) for d, g in gf.items()}
    gibs = max(read_before, read_after)
    layers, head = matmul_weights(params)
    weight_bytes = (layers + head) * (2 if args.dtype == "bfloat16" else 4)
    rows_a = [
        {"path": "RolloutWorker in Ray (1 worker)", **ray_s},
        {"path": "bare vllm.LLM.generate", **bare_s},
    ]
    rows_b = [{"path": f"rollout phase, {args.workers} workers, block size "
                       + (f"{default_block} (default)" if b is None else str(b)) + ("" if eager else ", compiled"),
               "block_size": b or default_block, "enforce_eager": eager, "up_s": up, **ph,
               "bound_fp32": bound_tps["float32"], "bound_bf16": bound_tps["bfloat16"],
               "of_fp32": ph["tokens_per_s"] / bound_tps["float32"],
               "of_bf16": ph["tokens_per_s"] / bound_tps["bfloat16"],
               "proc_of_fp32": ph["processed_per_s"] / bound_tps["float32"],
               "vs_default": ph["tokens_per_s"] / phase["tokens_per_s"],
               **roofline(ph, weight_bytes, gibs, gf[args.dtype], layers, head, bound_tps[args.dtype])}
              for (b, eager), up, ph in zip(variants, up_s, phases)]
    text = "\n".join([
        f"rollout: {MODEL.name} ({params / 1e6:.1f}M params, {args.dtype}), {args.prompts} prompts x n={args.n} x "
        f"<= {args.max_tokens} tokens, temperature {args.temperature}, {reps} timed call(s) per side",
        "",
        f"(a) worker in a Ray actor vs bare vLLM in-process (same prompts, seeds, env: 1 OpenMP thread on core 0, "
        f"nice {nice}); in worker = RolloutWorker.generate's own time; cores used = CPU s / wall s",
        table(rows_a, [("path", "path", ""), ("completion_tokens", "completion tok", "d"),
                       ("prompt_tokens", "prompt tok", "d"), ("seconds", "seconds", ".2f"),
                       ("worker_seconds", "in worker s", ".2f"), ("cores_used", "cores used", ".2f"),
                       ("tokens_per_s", "completion tok/s", ".1f"),
                       ("processed_per_s", "prompt+compl tok/s", ".1f")]),
        f"ratio worker/bare: {ratio:.3f}x (goal >= {GOAL_RATIO}x: {'met' if ratio >= GOAL_RATIO else 'MISSED'})",
        "",
        f"(b) whole rollout phase vs compute bound (matmul 1024^2 on {cores()} cores: fp32 {gf['float32']:.1f}, "
        f"bf16 {gf['bfloat16']:.1f} GFLOP/s; bound tok/s = GFLOP/s / (2 x params))",
        table(rows_b, [("path", "path", ""), ("completion_tokens", "completion tok", "d"),
                       ("seconds", "seconds", ".2f"), ("cores_used", "cores used", ".2f"),
                       ("tokens_per_s", "completion tok/s", ".1f"),
                       ("bound_fp32", "bound fp32", ".1f"), ("of_fp32", "of fp32 bound", ".1%"),
                       ("bound_bf16", "bound bf16", ".1f"), ("of_bf16", "of bf16 bound", ".1%"),
                       ("proc_of_fp32", "prompt+compl of fp32", ".1%"),
                       ("vs_default", "tok/s x default's", ".2f"), ("up_s", "engines up s", ".0f")]),
        "block size: rollout.block_size, the KV-cache block (tokens); a prompt's n completions share its whole "
        "blocks and each recomputes its last, partial one; compiled: rollout.enforce_eager false (vLLM compiles "
        "the model when an engine starts: engines up s = RolloutGroup start until ready, both workers)",
        "",
        f"(b') what these settings allow: an engine whose only costs are its matmuls ({args.dtype}, "
        f"{gf[args.dtype]:.1f} GFLOP/s: 2 x (layers + LM head) weights per completion token, 2 x layers per prompt "
        f"token) and reading its weights "
        f"({weight_bytes / 2**20:.0f} MiB) once per decode step at {gibs:.1f} GiB/s (float32 sum over 512 MiB on "
        f"{cores()} threads, best before/after (b): {read_before:.1f}/{read_after:.1f}); decode steps = each "
        "engine's longest completion per call, summed; roofline tok/s = completion tokens / "
        "max(matmul s, weight-read s)",
        table(rows_b, [("path", "path", ""), ("decode_steps", "decode steps", "d"),
                       ("matmul_s", "matmul s", ".2f"), ("read_s", "weight-read s", ".2f"),
                       ("seconds", "seconds", ".2f"), ("roofline_tps", "roofline tok/s", ".1f"),
                       ("roofline_of_bound", f"roofline of {args.dtype} bound", ".1%"),
                       ("of_roofline", "achieved of roofline", ".1%")]),
        f"achieved/bound ({args.dtype} engine vs {args.dtype} bound): "
        f"{phase['tokens_per_s'] / bound_tps[args.dtype]:.1%} (goal >= {GOAL_BOUND:.0%}); at these settings the "
        f"roofline is {rows_b[0]['roofline_of_bound']:.1%} of that bound "
        f"({'the goal is above it' if rows_b[0]['roofline_of_bound'] < GOAL_BOUND else 'the goal is below it'}), and "
        f"the phase runs at {rows_b[0]['of_roofline']:.1%} of the roofline",
        f"matmul GFLOP/s before/after (b): fp32 {bound_before['float32']:.1f}/{bound_after['float32']:.1f}, "
        f"bf16 {bound_before['bfloat16']:.1f}/{bound_after['bfloat16']:.1f}; "
        "1-min load average start/after (a)/after (b): " + "/".join(f"{v:.1f}" for v in loads.values()) + f"; wall {time.perf_counter() - t_start:.0f} s",
    ])
    goals = [goal("rollout: worker-in-Ray / bare vLLM tokens/s", ratio, GOAL_RATIO, True, "x"),
             goal(f"rollout: phase tokens/s / {args.dtype} compute bound",
                  phase["tokens_per_s"] / bound_tps[args.dtype], GOAL_BOUND, True)]
    write("rollout", {"args": vars(args), "reps": reps, "parameters": params, "gflops": gf,
                      "gflops_before": bound_before, "gflops_after": bound_after,
                      "read_gibs": {"before": read_before, "after": read_after}, "loadavg": loads, "nice": nice,
                      "bound_tokens_per_s": bound_tps, "a": {"ray": ray_s, "bare": bare_s, "ratio": ratio},
                      "b": rows_b[0], "b_block_sizes": rows_b, "goals": goals}, text)


if __name__ == "__main__":
    main()
