"""Do hard-sample demos help the model answer? One warm-started model, the prompts a learning run trained on,
each sampled n times as the rollouts sample it, with no demos, with demos from those prompts
(`sampler.demo_pool: prompts`) and with demos from every row of the training file (`file`), in the system
prompt or (-turns) as earlier exchanges, or with no demos at a higher temperature (hot).
No training: what a demo round hands the policy before any update.

    python -m bench.demo_probe --run runs/learn-<stamp>                  # the run's training prompts and SFT model
    python -m bench.demo_probe --run runs/learn-<stamp> --demos 2 --n 10
    python -m bench.demo_probe --run runs/learn-<stamp> --settings bare,file,file-turns,hot --hot-temperature 1.0

Per setting: the share of completions correct, the prompts with at least one correct completion, the same on
the prompts none of whose bare completions was correct (those a hard-sample round is for), and the share of
completions that copy a demo: they call a tool that a demo's answer calls and the prompt does not offer,
and, on the prompts whose demo calls one of their own tools, the completions correct against the same
prompts' bare completions.
Prints the table and writes bench/results/demo_probe.json; with --out, a markdown page too.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bench.common import REPO, cores, log, machine, private_ray, table, write

CONFIG = REPO / "configs" / "learn-smollm2.yaml"
# <pool>: demos in the system prompt; <pool>-turns: as earlier exchanges (sampler.demo_format turns);
# hot: no demos, sampled at --hot-temperature
SETTINGS = ("bare", "prompts", "file", "prompts-turns", "file-turns", "hot")


def demo_sets(prompts, rows, m: int, seed: int) -> dict[str, list[list[int]]]:
    """Per setting, each prompt's demo rows: indices into `prompts` (prompts) or `rows` (file); the same
    selection as the sampler's first hard-sample round with demo_schedule [m]."""
    from toolexpander.sampling.sampler import demo_index

    names: dict[str, int] = {}
    own, pool = demo_index(prompts, names), demo_index(rows, names)
    rng = np.random.default_rng(seed)
    out = {"bare": [[] for _ in prompts], "prompts": [], "file": []}
    for p in range(len(prompts)):
        out["prompts"].append(list(own.select(p, m, rng)))
        out["file"].append(list(pool.select_for(*own.query(p), m, rng)))
    return out


def copied(text: str, prompt_tools: set[str], demo_calls: set[str]) -> bool:
    """The completion calls a tool that a demo's answer calls and the prompt does not offer."""
    from toolexpander.rewards.parse import parse_completion

    calls = parse_completion(text).calls or []   # lenient: the lines that parsed as calls
    return any(name in demo_calls and name not in prompt_tools for name, _ in calls)


def summarize(tbl, prompts, demos_of, n: int, bare_fail: set[int] | None, per_prompt: list[int],
              bare_correct: np.ndarray | None = None) -> dict:
    """demos_of: per prompt, the tool names its demos' answers call; per_prompt: its demo count;
    bare_correct: (prompts, n) `correct` of the bare setting, to compare the prompts whose demos share a
    tool with them (`related`) on the same prompts."""
    correct = np.array(tbl.column("reward_correct").to_pylist()).reshape(len(prompts), n)   # (P, n)
    texts = tbl.column("text").to_pylist()
    tools_P = [{t.name for t in task.tools} for task in prompts]
    copies = [copied(texts[p * n + k], tools_P[p], demos_of[p]) for p in range(len(prompts)) for k in range(n)]
    solved = correct.max(axis=1) > 0
    hard = sorted(bare_fail) if bare_fail is not None else [p for p in range(len(prompts)) if not solved[p]]
    related = [p for p in range(len(prompts)) if per_prompt[p] and demos_of[p] & tools_P[p]]
    base = correct if bare_correct is None else bare_correct
    return {"related": len(related),
            "related_correct": float(correct[related].mean()) if related else float("nan"),
            "related_bare": float(base[related].mean()) if related else float("nan"),
            "correct_PN": correct,
            "correct": float(correct.mean()), "solved": int(solved.sum()), "prompts": len(prompts),
            "hard": len(hard), "hard_solved": int(solved[hard].sum()) if hard else 0,
            "hard_correct": float(correct[hard].mean()) if hard else float("nan"),
            "copy": float(np.mean(copies)), "demos": float(np.mean(per_prompt)),
            "hard_ids": hard}


def _settings(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    if not names or names[0] != "bare" or len(set(names)) != len(names) or not set(names) <= set(SETTINGS):
        raise argparse.ArgumentTypeError(f"{text!r}: give settings from {', '.join(SETTINGS)}, each once, bare first")
    return names


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a learning-benchmark run directory: its "
                    "train_prompts.jsonl are the prompts")
    ap.add_argument("--model", type=Path, help="default: the config's SFT output (the run's warm start)")
    ap.add_argument("--demos", type=int, default=1, help="demos per prompt (the first round's count)")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--settings", type=_settings, default=list(SETTINGS[:3]),
                    help=f"comma-separated, from {','.join(SETTINGS)}, bare first (default bare,prompts,file)")
    ap.add_argument("--hot-temperature", type=float, default=1.0,
                    help="the hot setting: no demos, sampled at this temperature instead of the config's")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="also write this markdown page")
    args = ap.parse_args(argv)

    from toolexpander.actors.group import RolloutGroup
    from toolexpander.config import load_config, parse_overrides
    from toolexpander.data import load_tasks
    from toolexpander.prompt import make_demo
    from toolexpander.types import PromptRequest

    base = ["--rollout.n", str(args.n), "--rollout.seed", str(args.seed)]
    cfg = load_config(CONFIG, parse_overrides(base))
    hot_cfg = load_config(CONFIG, parse_overrides([*base, "--rollout.temperature", str(args.hot_temperature)]))
    model = (args.model or REPO / cfg.sft.output_dir).resolve()
    prompts = load_tasks(args.run / "train_prompts.jsonl")
    rows = load_tasks(REPO / cfg.data.train_path)[: cfg.data.limit]
    sets = demo_sets(prompts, rows, args.demos, args.seed)
    pools = {"bare": [], "prompts": prompts, "file": rows}   # where each demo source's row indices point
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results = {}
    with private_ray(num_cpus=cores()):
        group, group_cfg = None, None
        bare_fail = None
        for setting in args.settings:
            want = hot_cfg if setting == "hot" else cfg
            if group_cfg is not want:   # the workers' sampling temperature is fixed when they start
                if group is not None:
                    group.shutdown()
                group, group_cfg = RolloutGroup(want, str(model)), want
                group.ready()
            source = "bare" if setting == "hot" else setting.removesuffix("-turns")
            demos_P, pool = sets[source], pools[source]   # each prompt's demo rows, and the rows they index
            reqs = [PromptRequest(task=t, demo_round=1 if demos_P[p] else 0, group_id=p,
                                  demo_format="turns" if setting.endswith("-turns") else "system",
                                  demos=[make_demo(pool[q]) for q in demos_P[p]])
                    for p, t in enumerate(prompts)]
            tbl, _, lost = group.generate(reqs, step_seed=args.seed)
            assert not lost and tbl.num_rows == len(prompts) * args.n
            demo_calls = {p: {c.name for q in demos_P[p] for c in pool[q].answer.tool_calls}
                          for p in range(len(prompts))}
            results[setting] = summarize(tbl, prompts, demo_calls, args.n, bare_fail, [len(d) for d in demos_P],
                                         None if setting == "bare" else results["bare"]["correct_PN"])
            if setting == "bare":
                bare_fail = set(results["bare"]["hard_ids"])
            log(f"{setting}: correct {results[setting]['correct']:.3f}, copy {results[setting]['copy']:.3f}")
        group.shutdown()
    rows_out = [{"setting": s, "demos": f"{r['demos']:.2f}", "correct": f"{r['correct']:.3f}",
                 "solved": f"{r['solved']} of {r['prompts']}",
                 "hard_solved": f"{r['hard_solved']} of {r['hard']}", "hard_correct": f"{r['hard_correct']:.3f}",
                 "copy": f"{r['copy']:.3f}",
                 "related": "-" if not r["demos"] else
                 f"{r['related']}: {r['related_correct']:.3f} (bare {r['related_bare']:.3f})"}
                for s, r in results.items()]
    head = (f"demo probe: {model.relative_to(REPO) if model.is_relative_to(REPO) else model}, the "
            f"{len(prompts)} training prompts of {args.run}, n={args.n} at T={cfg.rollout.temperature}, "
            f"<= {cfg.rollout.max_tokens} tokens, {args.demos} demo(s) per prompt, seed {args.seed}"
            + (f"; hot: no demos at T={args.hot_temperature}" if "hot" in results else ""))
    text = head + "\n" + table(rows_out, [
        ("setting", "demos from", "s"), ("demos", "demos per prompt", "s"), ("correct", "completions correct", "s"),
        ("solved", "prompts with one correct", "s"),
        ("hard_solved", "bare all-fail prompts with one correct", "s"),
        ("hard_correct", "their completions correct", "s"), ("copy", "completions calling a demo's tool", "s"),
        ("related", "prompts whose demo shares a tool: completions correct", "s")])
    write("demo_probe", {"results": {k: {x: y for x, y in v.items() if x not in ("hard_ids", "correct_PN")}
                                     for k, v in results.items()},
                         "started": started}, text)
    if args.out:
        m = machine()
        args.out.write_text(
            "# Demo probe\n\nWritten by `python -m bench.demo_probe "
            + " ".join(argv if argv is not None else sys.argv[1:])
            + f"`, started {started} on {m['cpu']}, {m['nproc']} cores ({', '.join(m['isa'])}).\n\n"
            "bare: no demos; prompts: demos chosen among the run's training prompts (`sampler.demo_pool: "
            "prompts`); file: among every row of the training file (`file`), ranked by tool-name overlap as the "
            "sampler ranks them. A prompt with no demo available carries none. Demos go in the system prompt "
            "(`sampler.demo_format: system`), or with -turns before the question as earlier exchanges (`turns`). "
            f"hot: no demos, sampled at T={args.hot_temperature} (the others at the config's "
            f"{cfg.rollout.temperature}).\n\n```\n" + text + "\n```\n")
        log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
