"""How far the first GRPO updates move the think block's first word, on fixed rollouts.

Replays the first K dumped batches of a run (`toolexpander train --save-rollouts DIR`) through the
learner with a given learning rate and warm-up, exports the model after each update, and prints
bench.first_token's P("No") after "<think>" on the ToolRL test prompts (no demos) split by whether
the question needs a tool call. This is the measurement behind configs/learn-smollm2.yaml's warm-up:

    python -m bench.first_update runs/RUN/config.json runs/RUN_ROLLOUTS --steps 4 --lr 2e-5 --warmup 1
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="the run's config.json (or any config YAML): model, learner, rollout")
    ap.add_argument("rollouts", type=Path, help="a --save-rollouts directory (step_*.parquet)")
    ap.add_argument("--steps", type=int, default=4, help="batches to replay")
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--warmup", type=int, required=True, help="learner.warmup_steps")
    args = ap.parse_args(argv)

    from bench.first_token import first_word_probs
    from toolexpander.config import load_config
    from toolexpander.replay import replay_steps

    cfg = load_config(args.config, {"learner.lr": args.lr, "learner.warmup_steps": args.warmup})
    before = first_word_probs(cfg.model.path)
    print(json.dumps({"step": "start", "P_no_call_questions": round(float(before[True][:, 1].mean()), 3)}))
    with tempfile.TemporaryDirectory(prefix="first-update-") as out:
        for step, path, learner, m in replay_steps(cfg, args.rollouts, args.steps):
            learner.export_hf(out, cfg.model.path)
            p = first_word_probs(out)
            print(json.dumps({"step": step, "file": path.name, "lr": m["learner/lr"],
                              "grad_norm": round(m["learner/grad_norm"], 3),
                              "P_no_call_questions": round(float(p[True][:, 1].mean()), 3),
                              "P_no_no_call_questions": round(float(p[False][:, 1].mean()), 3),
                              "greedy_no_call_questions": round(float((p[True][:, 1] > p[True][:, 0]).mean()), 2)}),
                  flush=True)


if __name__ == "__main__":
    main()
