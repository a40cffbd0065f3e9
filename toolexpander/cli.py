"""Command-line entry points: train, sft, prepare-model, data check, report, eval.

Bad input (config, data, model directory, Ray address) ends with one line naming the file, row,
field or setting and a non-zero exit code, never a traceback wall.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import signal
import sys
from pathlib import Path

EXPECTED = ("ConfigError", "DataError", "TrainError", "ModelError", "ClusterError", "EvalError", "ReplayError",
            "ReportError", "SftError", "WorkerDied")


def _offline_env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.cwd() / ".cache" / "torch_extensions"))


def cmd_train(args, overrides: list[str]) -> int:
    from toolexpander import storage
    from toolexpander.config import load_config, parse_overrides
    from toolexpander.train import train

    pairs = parse_overrides(overrides)
    config = args.config
    if args.output_dir:
        pairs["logging.output_dir"] = args.output_dir
    if args.resume and config is None:
        config = storage.join(pairs.get("logging.output_dir") or "runs/latest", "config.json")
    if config is None:
        raise SystemExit("toolexpander train: --config FILE is required (or --resume with --output-dir)")
    cfg = load_config(config, pairs)
    if args.replay_rollouts:
        from toolexpander.replay import replay

        print(replay(cfg, args.replay_rollouts))
        return 0
    run_dir = train(cfg, resume=args.resume, save_rollouts=args.save_rollouts)
    print(f"run directory: {run_dir}")
    if args.report:
        from toolexpander.report import write_report

        print(f"report: {write_report(run_dir)}")
    return 0


def cmd_sft(args, overrides: list[str]) -> int:
    from toolexpander.config import load_config, parse_overrides
    from toolexpander.sft import sft

    pairs = parse_overrides(overrides)
    if args.output_dir:
        pairs["sft.output_dir"] = args.output_dir
    out, cached = sft(load_config(args.config, pairs))
    print(f"cached: {out}" if cached else f"model directory: {out}")
    return 0


def cmd_prepare(args, _) -> int:
    from toolexpander.models import prepare_model

    print(prepare_model(args.kind, args.out, seed=args.seed, force=args.force))
    return 0


def cmd_data_check(args, _) -> int:
    from toolexpander.data import DataError, load_tasks, summarize

    try:
        tasks = load_tasks(args.path)
    except DataError as e:
        print(f"{args.path}: {len(e.problems)} problem(s)", file=sys.stderr)
        for line in e.problems:
            print(line, file=sys.stderr)
        return 1
    counts = summarize(tasks)
    print(f"{args.path}: {len(tasks)} rows OK")
    for group, values in counts.items():
        print(f"  by {group}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    return 0


def cmd_report(args, _) -> int:
    from toolexpander.report import write_report

    print(write_report(Path(args.run_dir)))
    return 0


def cmd_eval(args, _) -> int:
    from toolexpander.eval.runner import run_eval

    run_eval(model=args.model, suite=args.suite, categories=args.categories, limit=args.limit,
             out=args.out, max_tokens=args.max_tokens, data=args.data, samples=args.samples,
             temperature=args.temperature, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="toolexpander", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train with GRPO (local mode unless cluster.address / RAY_ADDRESS)")
    t.add_argument("--config", help="YAML config (configs/*.yaml)")
    t.add_argument("--output-dir", help="run directory (logging.output_dir)")
    t.add_argument("--resume", action="store_true", help="continue from the run's last complete checkpoint")
    t.add_argument("--save-rollouts", metavar="DIR", help="per step, as Parquet: the learner batch's rows (step_N) "
                   "and the scalar columns of every row generated, also the groups without reward spread (generated_N)")
    t.add_argument("--replay-rollouts", metavar="DIR", help="run the learner alone on dumped rollouts")
    t.add_argument("--report", action="store_true", help="write the PNG report at the end")
    t.set_defaults(fn=cmd_train)

    s = sub.add_parser("sft", help="supervised warm start on the target format (cached by config hash)")
    s.add_argument("--config", required=True, help="YAML config (configs/*.yaml); the `sft` section")
    s.add_argument("--output-dir", help="model directory to write (sft.output_dir)")
    s.set_defaults(fn=cmd_sft)

    m = sub.add_parser("prepare-model", help="write a local model directory (no hub)")
    m.add_argument("kind", choices=["smollm2-135m", "tiny"])
    m.add_argument("--out", required=True)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--force", action="store_true")
    m.set_defaults(fn=cmd_prepare)

    d = sub.add_parser("data", help="dataset tools")
    dsub = d.add_subparsers(dest="data_command", required=True)
    c = dsub.add_parser("check", help="validate a JSONL/Parquet task file")
    c.add_argument("path")
    c.set_defaults(fn=cmd_data_check)

    r = sub.add_parser("report", help="PNG plots of a run directory")
    r.add_argument("run_dir")
    r.set_defaults(fn=cmd_report)

    e = sub.add_parser("eval", help="evaluate a model directory on BFCL / ToolRL / ACEBench")
    e.add_argument("--model", required=True)
    e.add_argument("--suite", required=True, choices=["bfcl", "toolrl", "acebench"])
    e.add_argument("--categories", nargs="*")
    e.add_argument("--limit", type=int)
    e.add_argument("--max-tokens", type=int, default=256)
    e.add_argument("--data", metavar="FILE", help="toolrl/acebench: ask the questions of this task file (the "
                   "training schema) instead of the suite's own, e.g. the prompts a run trained on")
    e.add_argument("--samples", type=int, metavar="K", help="K sampled completions per question instead of "
                   "one greedy answer: accuracy is then mean@K (each question's share of right completions, "
                   "averaged), and pass@K is printed beside it")
    e.add_argument("--temperature", type=float, help="with --samples: the sampling temperature (default 1.0; "
                   "a training run samples at rollout.temperature)")
    e.add_argument("--seed", type=int, default=0, help="with --samples: the sampling seed")
    e.add_argument("--out", required=True)
    e.set_defaults(fn=cmd_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    _offline_env()
    # A crash in native code (Ray's core worker, a CUDA/gloo library) leaves every thread's Python stack
    # on the process's stderr instead of a bare exit code -11; `kill -USR1 <pid>` prints them on demand
    # (a run that seems stuck).
    if not faulthandler.is_enabled() and sys.__stderr__ is not None:
        faulthandler.enable(file=sys.__stderr__)
        faulthandler.register(signal.SIGUSR1, file=sys.__stderr__, all_threads=True)
    args, rest = build_parser().parse_known_args(argv)
    if rest and args.command not in ("train", "sft"):
        print(f"toolexpander {args.command}: unexpected arguments {' '.join(rest)}", file=sys.stderr)
        return 2
    try:
        return args.fn(args, rest)
    except Exception as e:  # expected user-facing errors become one clear line
        if type(e).__name__ not in EXPECTED:
            raise
        print(f"toolexpander {args.command}: error: {e}", file=sys.stderr)
        return 1
