"""The training-inference mismatch: the rollout engine's sampled logprobs (vLLM, float32 or bf16)
against the Learner's recomputation of them (float32; bf16 autocast; bf16 with a float32 LM head),
on the same real completions.

    python -m bench.mismatch                              # 4 prompts x n=10, 64 tokens, T=0.7 (run_all)
    python -m bench.mismatch --prompts 8 --max-tokens 128

Per (engine dtype, learner variant), over every completion token: mean and max |log pi - log mu|,
the k3 estimate of KL(mu || pi) (rollout/mismatch_k3_kl in training), and the share of tokens whose
importance weight pi / mu leaves [0.5, 2] (learner.is_cap = 2 truncates the upper side). No goal: it
is the measurement behind learner.lm_head_fp32's default (on) and the bf16 configs; speed is
bench/learner.py's (the seconds of the logprob passes, in the JSON only, vary with every group's shape).
"""

from __future__ import annotations

import argparse
import math
import time

from bench.common import MODEL, cores, log, private_ray, table, write
from bench.rollout import pick_prompts

# learner variant -> (model.dtype, learner.lm_head_fp32)
VARIANTS = {"float32": ("float32", False), "bf16": ("bfloat16", False), "bf16 + fp32 head": ("bfloat16", True)}


def generate(args, dtype: str, chunk) -> list[dict]:
    """n completions per prompt from a RolloutGroup with one worker in `dtype`: rows of ROLLOUT_SCHEMA."""
    from toolexpander.actors.group import RolloutGroup
    from toolexpander.config import Config
    from toolexpander.types import PromptRequest

    cfg = Config.model_validate({
        "model": {"path": str(MODEL), "prepare": None, "dtype": dtype},
        "rollout": {"num_workers": 1, "n": args.n, "max_tokens": args.max_tokens, "temperature": args.temperature,
                    "max_model_len": 2048, "cpu_kvcache_gb": 1, "cpus_per_worker": 1, "seed": 0}})
    group = RolloutGroup(cfg, str(MODEL))
    try:
        reqs = [PromptRequest(task=t, demo_round=0, group_id=i) for i, (t, _) in enumerate(chunk)]
        tbl, _, lost = group.generate(reqs, 0)
        assert not lost
        return tbl.to_pylist()
    finally:
        group.shutdown()


def compare(learner_lp: list[list[float]], engine_lp: list[list[float]]) -> dict:
    import torch

    from toolexpander.learner.grpo import behaviour_weights

    pi = torch.tensor([[x for row in learner_lp for x in row]], dtype=torch.float64)
    mu = torch.tensor([[x for row in engine_lp for x in row]], dtype=torch.float64)
    diffs = (pi - mu)[0]
    # the k3 estimator training logs as rollout/mismatch_k3_kl, over the same tokens
    _, metrics = behaviour_weights(pi, mu, torch.ones_like(pi, dtype=torch.bool), cap=None)
    return {"tokens": len(diffs), "mean_abs": float(diffs.abs().mean()), "max_abs": float(diffs.abs().max()),
            "k3": metrics["rollout/mismatch_k3_kl"], "outside": float((diffs.abs() > math.log(2)).double().mean())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.7)
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoTokenizer

    from toolexpander.config import LearnerConfig
    from toolexpander.learner.groups import groups_from_table
    from toolexpander.learner.learner import Learner

    t_start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    pad_id = tokenizer.pad_token_id or 0
    chunk = pick_prompts(tokenizer, args.prompts, 1024)
    rows_by_engine = {}
    with private_ray(cores()):
        for dtype in ("float32", "bfloat16"):
            log(f"generating with a {dtype} engine")
            rows_by_engine[dtype] = generate(args, dtype, chunk)
    import pyarrow as pa

    from toolexpander.types import ROLLOUT_SCHEMA

    rows = []
    for name, (dtype, head) in VARIANTS.items():
        cfg = LearnerConfig(lr=1e-6, lm_head_fp32=head, torch_threads=cores()).model_dump()
        learner = Learner(0, 1, "127.0.0.1", 0, str(MODEL), cfg, dtype, 0, pad_id, args.temperature)
        for engine, engine_rows in rows_by_engine.items():
            groups = groups_from_table(pa.Table.from_pylist(engine_rows, schema=ROLLOUT_SCHEMA))
            start = time.perf_counter()
            learner_lp, engine_lp = [], []
            for g in groups:
                lp, mask = learner.logprobs(g, grad=False)[:2]
                learner_lp += [row[:len(c)].tolist() for row, c in zip(lp, g.completions)]
                engine_lp += g.rollout_logprobs
            seconds = time.perf_counter() - start
            rows.append({"engine": engine, "learner": name, "seconds": seconds, **compare(learner_lp, engine_lp)})
            log(f"engine {engine} / learner {name}: {rows[-1]}")
        del learner
        torch.set_num_threads(cores())
    text = "\n".join([
        f"training-inference mismatch: {MODEL.name}, {args.prompts} prompts x n={args.n}, up to "
        f"{args.max_tokens} tokens at T={args.temperature}; learner = toolexpander's Learner.logprobs "
        f"(eager attention on CPU), {cores()} torch threads",
        table(rows, [("engine", "engine", ""), ("learner", "learner", ""), ("tokens", "tokens", "d"),
                     ("mean_abs", "mean |d logp|", ".2e"), ("max_abs", "max |d logp|", ".3f"),
                     ("k3", "k3 KL", ".2e"), ("outside", "w outside [0.5, 2]", ".2%")]),
        f"wall {time.perf_counter() - t_start:.0f} s"])
    write("mismatch", {"args": vars(args), "rows": rows, "goals": []}, text)


if __name__ == "__main__":
    main()
