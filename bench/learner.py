"""One GRPO learner step: the DeepSpeed Learner (in-process, gloo, world size 1) vs plain torch
forward + backward + AdamW on the same batch, with share_prompt on and off, in float32 and in bf16
(autocast over float32 weights, both sides); tokens/s vs the compute bound 6 x parameters FLOP per
token at that dtype's matmul rate.

    python -m bench.learner --groups 2 --n 4 --prompt-len 256 --completion-len 32   # short (run_all)
    python -m bench.learner                                                         # full: 4 x 10, 600 + 64

Full settings take ~25 min on one core (the plain path alone forwards 26,560 tokens per pass).

    python -m bench.learner --device cuda --groups 4 --n 16 --completion-len 512 --steps 3   # a GPU: bench/GPU.md

--device cuda: the Learner takes the GPU (NCCL, world size 1, sdpa attention), the torch baseline runs
there too (same attention, CUDA autocast), and the bound is the GPU's measured matmul rate;
--model DIR times another model directory of the same tokenizer (e.g. random weights of a shape).

The batch is built like tests/learner/test_learner.py's, from real prompts: training tasks whose
rendered prompt has at least --prompt-len tokens, cut to exactly that many; completions are random
tokens of exactly --completion-len; rewards alternate 0/1 so every advantage is non-zero.
The torch baseline uses the same logprob path (shared or plain), the same attention kernels (eager
on CPU), the same autocast and the same clipped loss, so the difference is DeepSpeed's engine and the
Learner's bookkeeping. It times two things in one step:
"fwd+bwd+AdamW" (the textbook step) and a no-grad forward for the old logprobs; "same work" is their
sum. The Learner runs that forward only when a batch gets more than one update (ppo_epochs or
mini_batches > 1); at the benchmark's single update it uses the gradient pass's own logprobs, so
"fwd+bwd+AdamW" is the row to compare with. Tokens counted: computed = prompt + n x completion per group on
the shared path, n x (prompt + completion) on the plain one; effective = n x (prompt + completion).
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench.common import MODEL, TRAIN_DATA, gflops, goal, gpu_name, gpu_page, log, parameters, table, write

GOAL_OVERHEAD = 0.15
GOAL_BOUND = 0.50


def real_prompts(tokenizer, count: int, length: int) -> list[list[int]]:
    from toolexpander.data import load_tasks
    from toolexpander.prompt import prompt_ids

    out = []
    for task in load_tasks(TRAIN_DATA):
        ids = prompt_ids(tokenizer, task)
        if len(ids) >= length:
            out.append(ids[:length])
            if len(out) == count:
                return out
    raise SystemExit(f"{TRAIN_DATA}: only {len(out)} prompts have >= {length} tokens")


def rollout_table(prompts: list[list[int]], n: int, completion_len: int, seed: int = 0) -> pa.Table:
    """Scored groups in ROLLOUT_SCHEMA, one row per completion (as tests/learner/test_learner.py)."""
    from toolexpander.types import REWARD_DIMS, ROLLOUT_SCHEMA

    rng = np.random.default_rng(seed)
    rows = {f.name: [] for f in ROLLOUT_SCHEMA}
    for g, prompt in enumerate(prompts):
        for i in range(n):
            values = dict(group_id=g, task_id=f"t{g}", subtask="single", demo_round=0, num_demos=0,
                          policy_version=0, prompt_ids=prompt,
                          completion_ids=rng.integers(10, 40000, completion_len).tolist(),
                          logprobs=[-1.0] * completion_len, finish_reason="length", text="",
                          reward_total=float(i % 2), **{f"reward_{d}": 0.0 for d in REWARD_DIMS})
            for k, v in values.items():
                rows[k].append(v)
    return pa.Table.from_pydict(rows, schema=ROLLOUT_SCHEMA)


def learner_cfg(share: bool, head_fp32: bool = True) -> dict:
    from toolexpander.config import LearnerConfig

    # is_cap None: the batch's behaviour logprobs are made up (-1), so no behaviour correction
    return LearnerConfig(lr=2e-6, ppo_epochs=1, mini_batches=1, zero_stage=0, share_prompt=share,
                         is_cap=None, lm_head_fp32=head_fp32).model_dump()


class TorchStep:
    """The same GRPO update in plain torch: per group fwd + loss + bwd, then clip + AdamW."""

    def __init__(self, cfg: dict, pad_id: int, dtype: str, model_dir=MODEL, device: str = "cpu"):
        import torch
        from transformers import AutoModelForCausalLM

        from toolexpander.learner.learner import _float32_head

        self.cfg, self.pad_id, self.device = cfg, pad_id, device
        self.autocast = dtype == "bfloat16"
        attn = "sdpa" if device == "cuda" else "eager"   # what the Learner picks on each
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                          attn_implementation=attn).eval().to(device)
        if self.autocast and cfg["lm_head_fp32"]:
            _float32_head(self.model.get_output_embeddings(), device)
        self.model.config.use_cache = True
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg["lr"], betas=(0.9, 0.999), eps=1e-8,
                                     weight_decay=0.0)

    def step(self, table: pa.Table, logprobs_fn) -> dict:
        import torch

        from toolexpander.learner.grpo import clipped_surrogate, group_advantages
        from toolexpander.learner.groups import groups_from_table

        groups = groups_from_table(table)
        start = time.perf_counter()
        compute = torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.autocast)
        with torch.no_grad(), compute:  # old logprobs under the current weights (the Learner's multi-update pre-pass)
            olds = [logprobs_fn(self.model, g.prompt, g.completions, pad_id=self.pad_id)[0] for g in groups]
        self.sync()
        old_s = time.perf_counter() - start
        start = time.perf_counter()
        token_count = sum(g.tokens for g in groups)
        for g, old in zip(groups, olds):
            adv_n = group_advantages(torch.as_tensor(g.rewards_n).unsqueeze(0), std_norm=True)[0].to(self.device)
            with compute:
                lp, mask, _ = logprobs_fn(self.model, g.prompt, g.completions, pad_id=self.pad_id,
                                          return_entropy=True)
            out = clipped_surrogate(lp, old, adv_n, mask, eps_low=self.cfg["eps_low"],
                                    eps_high=self.cfg["eps_high"], dual_clip=None, token_count=token_count)
            out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg["grad_clip"])
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.sync()
        return {"old_fwd_s": old_s, "train_s": time.perf_counter() - start}

    def sync(self) -> None:
        """Wait for the GPU's queued work, so that a time is the work's, not its launch's."""
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()


def alternating(fns: dict, table, warm, steps: int) -> dict[str, list]:
    """A same-size warm-up call of each, then `steps` rounds calling each once, the order alternating
    per round, so that load changes on a shared machine hit every side alike."""
    for fn in fns.values():
        fn(warm)
    out = {name: [] for name in fns}
    for k in range(steps):
        for name in (list(fns) if k % 2 == 0 else list(fns)[::-1]):
            start = time.perf_counter()
            result = fns[name](table)
            out[name].append((time.perf_counter() - start, result))
            log(f"{name}: {out[name][-1][0]:.2f} s")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--prompt-len", type=int, default=600)
    ap.add_argument("--completion-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=1, help="timed steps per system, after a warm-up step")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads, the bound uses the same (1: what Ray gives a learner rank with "
                         "cpus_per_rank 1, and robust on a loaded machine, where 2 OpenMP threads stall)")
    ap.add_argument("--modes", nargs="+", default=["shared", "plain"], choices=["shared", "plain"])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    ap.add_argument("--bf16-heads", nargs="+", default=["fp32"], choices=["fp32", "bf16"],
                    help="bfloat16 rows: the LM head in float32 (learner.lm_head_fp32, the default) and/or under "
                         "autocast like the rest (bf16 matmul)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--model", type=Path, default=MODEL, help="model directory (default SmolLM2-135M)")
    args = ap.parse_args(argv)
    steps = args.steps
    on_gpu = args.device == "cuda"

    import torch
    from transformers import AutoTokenizer

    from toolexpander.learner.learner import Learner
    from toolexpander.learner.shared_prompt import completion_logprobs_plain, completion_logprobs_shared

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    pad_id = tokenizer.pad_token_id or 0
    prompts = real_prompts(tokenizer, args.groups + 1, args.prompt_len)
    tbl = rollout_table(prompts[:args.groups], args.n, args.completion_len)
    # Warm-up on a batch of the same shapes: the first step at a new size is 3x slower (allocation).
    warm = rollout_table(prompts[1:args.groups + 1], args.n, args.completion_len, seed=1)
    params = parameters(args.model)
    t_start = time.perf_counter()
    rate = gpu_gflops if on_gpu else gflops
    gf_before = {d: rate(d, args.threads) for d in args.dtypes}
    P, C, n, G = args.prompt_len, args.completion_len, args.n, args.groups
    effective = G * n * (P + C)

    rows = []
    for dtype, head in [(d, h) for d in args.dtypes for h in (args.bf16_heads if d == "bfloat16" else ["fp32"])]:
        baseline = None
        for mode in args.modes:
            share = mode == "shared"
            cfg = learner_cfg(share, head_fp32=head == "fp32")
            computed = G * (P + n * C) if share else effective
            learner = Learner(0, 1, "127.0.0.1", 0, str(args.model), cfg, dtype, 0, pad_id)
            torch.set_num_threads(args.threads)   # the Learner picks its own count (learner.torch_threads)
            baseline = baseline or TorchStep(cfg, pad_id, dtype, args.model, args.device)
            fn = completion_logprobs_shared if share else completion_logprobs_plain
            name = f"{dtype} (head {head}) {mode}"
            runs = alternating({f"{name} Learner.step": lambda t: learner.step(t, 0),
                                f"{name} torch step": lambda t: baseline.step(t, fn)}, tbl, warm, steps)
            del learner
            gc.collect()
            if on_gpu:
                torch.cuda.empty_cache()
            ds_s = statistics.median(s for s, _ in runs[f"{name} Learner.step"])
            parts = [p for _, p in runs[f"{name} torch step"]]
            textbook = statistics.median(p["train_s"] for p in parts)
            same = statistics.median(p["train_s"] + p["old_fwd_s"] for p in parts)
            for what, s in (("DeepSpeed Learner.step", ds_s), ("torch fwd+bwd+AdamW", textbook),
                            ("torch same work (+ old-logprob fwd)", same)):
                rows.append({"dtype": dtype, "head": head, "mode": mode, "what": what, "seconds": s,
                             "computed": computed, "tok_s": computed / s, "eff_tok_s": effective / s,
                             "vs_textbook": s / textbook - 1})
        del baseline
        gc.collect()
    gf_after = {d: rate(d, args.threads) for d in args.dtypes}
    # the machine's best measured per dtype: a load dip must not lower the bound
    gf = {d: max(gf_before[d], gf_after[d]) for d in args.dtypes}
    bound = {d: gf[d] * 1e9 / (6 * params) for d in args.dtypes}
    for r in rows:
        r["of_bound"] = r["tok_s"] / bound[r["dtype"]]
    fp32_learner = {r["mode"]: r["seconds"] for r in rows
                    if r["dtype"] == "float32" and r["what"].startswith("DeepSpeed")}
    for r in rows:
        r["speedup"] = fp32_learner[r["mode"]] / r["seconds"] if r["mode"] in fp32_learner else None
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    gpu_peak = (f"; peak GPU memory allocated {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB (this process: "
                "a Learner and the torch baseline, each with its own weights and AdamW state)") if on_gpu else ""
    where = f"on {gpu_name()}" if on_gpu else f"torch threads {args.threads}"
    ds_rows = [r for r in rows if r["what"].startswith("DeepSpeed")]
    text = "\n".join([
        f"learner step: {args.model.name} ({params / 1e6:.1f}M params; float32 weights, bfloat16 = autocast; "
        f"LM head: float32 (learner.lm_head_fp32) or bf16 under autocast), {G} groups x n={n}, prompt {P} + "
        f"completion {C} tokens, {where}, median of {steps} step(s) after a same-size warm-up step",
        table(rows, [("dtype", "dtype", ""), ("head", "LM head", ""), ("mode", "share_prompt", ""), ("what", "what", ""),
                     ("seconds", "s/step", ".2f"), ("speedup", "x fp32 Learner", ".2f"),
                     ("vs_textbook", "vs fwd+bwd+AdamW", "+.1%"), ("computed", "computed tok", "d"),
                     ("tok_s", "computed tok/s", ".1f"), ("eff_tok_s", "effective tok/s", ".1f"),
                     ("of_bound", "of bound", ".1%")]),
        *[f"bound {d}: matmul {gf[d]:.1f} GFLOP/s ({'the GPU' if on_gpu else f'{args.threads} thread(s)'}; "
          f"before/after {gf_before[d]:.1f}/{gf_after[d]:.1f}) / (6 x params) = {bound[d]:.1f} tok/s"
          for d in args.dtypes],
        f"effective tokens = n x (prompt + completion) = {effective}",
        *[f"{r['dtype']} (head {r['head']}) {r['mode']}: overhead vs fwd+bwd+AdamW {r['vs_textbook']:+.1%} (goal <= {GOAL_OVERHEAD:.0%}), "
          f"computed tok/s {r['of_bound']:.1%} of bound (goal >= {GOAL_BOUND:.0%})" for r in ds_rows],
        f"peak RSS {rss_gb:.1f} GB{gpu_peak}; wall {time.perf_counter() - t_start:.0f} s",
    ])
    goals = []
    for r in ds_rows:
        which = f"{r['dtype']}{'' if r['head'] == 'fp32' else ', bf16 head'}, {r['mode']}"
        goals += [goal(f"learner ({which}): overhead vs torch fwd+bwd+AdamW", r["vs_textbook"], GOAL_OVERHEAD, False),
                  goal(f"learner ({which}): computed tok/s of 6N bound", r["of_bound"], GOAL_BOUND, True)]
    name = "learner_cuda" if on_gpu else "learner"
    path = write(name, {"args": {**vars(args), "model": str(args.model)}, "steps": steps, "parameters": params,
                        "gflops": gf, "bound_tokens_per_s": bound, "rows": rows, "peak_rss_gb": rss_gb,
                        "gpu": gpu_name() if on_gpu else None, "goals": goals}, text)
    if on_gpu:
        gpu_page(f"learner ({args.model.name})", path)


def gpu_gflops(dtype: str, threads: int | None = None, size: int = 8192, reps: int = 10) -> float:
    """The GPU's size x size matmul GFLOP/s in dtype (float32 as torch runs it by default: no TF32)."""
    import torch

    dt = getattr(torch, dtype)
    a = torch.randn(size, size, device="cuda", dtype=dt)
    b = torch.randn(size, size, device="cuda", dtype=dt)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * size**3 * reps / (time.perf_counter() - start) / 1e9


if __name__ == "__main__":
    main()
