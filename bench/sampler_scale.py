"""Times SamplerCore.next_batch(B=64) + record(64 groups x n=10) per step at 10k, 100k and 1M prompts
on synthetic arrays (no Task objects); prints a table and writes bench/results/sampler_scale.json.

    python -m bench.sampler_scale [--sizes 10000 100000 1000000] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from toolexpander.config import SamplerConfig
from toolexpander.sampling.core import SamplerCore
from toolexpander.types import REWARD_DIMS, SUBTASKS

GOAL_MS = 20.0
CORRECT = REWARD_DIMS.index("correct")
EXEMPLAR = REWARD_DIMS.index("exemplar")


def synthetic(P: int, rng: np.random.Generator):
    """Sub-task codes, 1-4 tool-name ids per prompt from a vocabulary of P/10 names, answer hashes
    (1% duplicates), and a latent solve rate per prompt (30% never solved: they go through the rounds)."""
    codes = rng.integers(0, len(SUBTASKS), size=P).astype(np.int8)
    sizes = rng.integers(1, 5, size=P)
    indptr = np.concatenate([[0], np.cumsum(sizes)])
    ids = rng.integers(0, max(100, P // 10), size=int(indptr[-1]))
    answer_hash = rng.integers(0, P * 99 // 100, size=P)
    solve = np.where(rng.random(P) < 0.3, 0.0, rng.random(P))
    return codes, indptr, ids, answer_hash, solve


def rewards_for(prompts: np.ndarray, solve: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    correct_Gn = (rng.random((len(prompts), n)) < solve[prompts, None]).astype(np.float64)
    r_GnD = (rng.random((len(prompts), n, len(REWARD_DIMS))) < 0.7).astype(np.float64)
    r_GnD[:, :, CORRECT] = correct_Gn
    r_GnD[:, :, EXEMPLAR] *= 0.01
    return r_GnD


def run(P: int, steps: int, batch: int, n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    codes, indptr, ids, answer_hash, solve = synthetic(P, rng)
    t0 = time.perf_counter()
    core = SamplerCore(SamplerConfig(batch_prompts=batch, seed=seed), codes, indptr, ids, answer_hash)
    build_s = time.perf_counter() - t0
    # Make every 10th prompt hard-and-seen so demo selection runs at every size, not only at 10k.
    hard = np.arange(0, P, 10)
    core.record(hard, np.zeros(len(hard), np.int64), rewards_for(hard, np.zeros(P), n, rng))
    core.end_step()
    t_next, t_rec, t_met, demos = [], [], [], 0
    for step in range(steps + 2):                      # the first 2 steps are warm-up
        a = time.perf_counter()
        draws = core.next_batch(batch)
        b = time.perf_counter()
        prompts = np.array([d.prompt for d in draws])
        rounds = np.array([d.demo_round for d in draws])
        r_GnD = rewards_for(prompts, solve, n, rng)
        c = time.perf_counter()
        core.record(prompts, rounds, r_GnD)
        d = time.perf_counter()
        core.metrics()
        e = time.perf_counter()
        core.end_step()
        if step >= 2:
            t_next.append(b - a), t_rec.append(d - c), t_met.append(e - d)
            demos += int((rounds > 0).sum())
    ms = lambda xs: 1e3 * float(np.median(xs))  # noqa: E731
    return {"prompts": P, "steps": steps, "batch": batch, "n": n, "build_s": build_s,
            "next_batch_ms": ms(t_next), "record_ms": ms(t_rec),
            "total_ms": ms(np.add(t_next, t_rec)), "metrics_ms": ms(t_met),
            "demo_draw_share": demos / (steps * batch)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--out", default="bench/results/sampler_scale.json")
    args = ap.parse_args(argv)
    rows = [run(P, args.steps, args.batch, args.n) for P in args.sizes]
    print(f"{'prompts':>9} | {'next_batch ms':>13} | {'record ms':>9} | {'total ms':>8} | {'goal ms':>7} | "
          f"{'ok':>3} | {'metrics() ms':>12} | {'build s':>7} | {'demo draws':>10}")
    for r in rows:
        ok = "yes" if r["total_ms"] <= GOAL_MS else "NO"
        print(f"{r['prompts']:>9} | {r['next_batch_ms']:>13.2f} | {r['record_ms']:>9.2f} | "
              f"{r['total_ms']:>8.2f} | {GOAL_MS:>7.0f} | {ok:>3} | {r['metrics_ms']:>12.2f} | "
              f"{r['build_s']:>7.2f} | {r['demo_draw_share']:>10.1%}")
    print("times: median per step over --steps steps after 2 warm-up steps; metrics() is outside the total")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"goal_ms": GOAL_MS, "machine": platform.platform(),
                               "numpy": np.__version__, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
