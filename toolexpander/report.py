"""PNG plots of a run directory: reads RUN_DIR/metrics.jsonl (the metric names in DESIGN.md) and
RUN_DIR/events.jsonl, writes RUN_DIR/report/*.png and an index.md with first-vs-last values.

Reads a run that is still being written: an unparseable line (the half-written last one, or the
fragment a crash left before a resume appended) is skipped and counted; a re-logged step keeps its
latest record. A figure with nothing to show is not written.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from toolexpander.types import REWARD_DIMS, SUBTASKS

Series = tuple[list[int], list[float]]  # (steps, values), sorted by step, finite values only

# Shown in index.md's first-vs-last table when present (eval/* keys are added after these).
KEY_METRICS = ("reward/total_mean", "reward/correct_mean", "reward/format_mean", "reward/exemplar_mean",
               "sampler/demo_rate", "sampler/demo_solved_share", "sampler/all_fail_share", "sampler/zero_signal_share",
               "sampler/unsolved_share", "sampler/parked",
               "rollout/tokens_per_s", "time/step_s", "learner/lr", "learner/loss", "learner/grad_norm",
               "learner/clip_frac", "learner/entropy", "sft/loss", "sft/tokens_per_s")
EVENT_COLORS = {"start": "tab:green", "worker_restart": "tab:red", "nonfinite": "tab:purple"}
MAX_EVENT_ROWS = 50


class ReportError(RuntimeError):
    pass


@dataclass
class Run:
    series: dict[str, Series]     # metric key -> its finite points
    nulls: dict[str, list[int]]   # metric key -> steps where it was logged as null (non-finite)
    n_steps: int                  # distinct steps with a record
    skipped_lines: list[int]      # 1-based line numbers that did not parse as a JSON object
    events: list[dict]            # events.jsonl records with a step, in file order


@dataclass
class Panel:
    title: str
    draw: Callable  # (ax) -> None
    events: bool = False  # mark the run's events (restarts, non-finite updates) as vertical lines


# ---- reading -------------------------------------------------------------------------------------
def _read_jsonl(path: Path) -> tuple[list[dict], list[int]]:
    rows, skipped = [], []
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            skipped.append(i)
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            skipped.append(i)
    return rows, skipped


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def read_run(run_dir: Path) -> Run:
    path = run_dir / "metrics.jsonl"
    rows, skipped = _read_jsonl(path) if path.is_file() else ([], [])
    by_step: dict[int, dict] = {}
    for row in rows:
        step = row.get("step")
        if isinstance(step, int) and not isinstance(step, bool):
            by_step[step] = row  # a resumed run re-logs the steps after its checkpoint: the later one wins
    if not by_step:
        raise ReportError(f"{path}: no metrics")
    series: dict[str, Series] = {}
    nulls: dict[str, list[int]] = {}
    for step in sorted(by_step):
        for key, value in by_step[step].items():
            v = _number(value)
            if value is None:
                nulls.setdefault(key, []).append(step)
            elif key != "step" and v is not None:
                steps, values = series.setdefault(key, ([], []))
                steps.append(step)
                values.append(v)
    events_path = run_dir / "events.jsonl"
    events = _read_jsonl(events_path)[0] if events_path.is_file() else []
    events = [e for e in events if _number(e.get("step")) is not None]
    return Run(series, nulls, len(by_step), skipped, events)


def _keys(run: Run, pattern: str) -> list[str]:
    """Metric keys matching `pattern` (a regex with one group), sorted numerically where they can be."""
    found = [(m.group(1), k) for k in run.series if (m := re.fullmatch(pattern, k))]
    order = lambda g: (0, int(g), "") if g.isdigit() else (1, 0, g)  # noqa: E731 -- round 10 after round 9
    return [k for g, k in sorted(found, key=lambda gk: order(gk[0]))]


# ---- drawing -------------------------------------------------------------------------------------
def _lines(run: Run, keys: list[str], label: Callable[[str], str] = lambda k: k, ylabel: str = "",
           logy: bool = False) -> Callable:
    def draw(ax):
        for key in keys:
            steps, values = run.series[key]
            line, = ax.plot(steps, values, label=label(key), marker="o" if len(steps) <= 40 else None,
                            markersize=3)
            if run.nulls.get(key):  # non-finite values: an x on the step axis, not a silent bridge
                ax.plot(run.nulls[key], [0.0] * len(run.nulls[key]), "x", color=line.get_color(),
                        transform=ax.get_xaxis_transform(), clip_on=False, label=f"{label(key)}: null")
        if logy and all(v > 0 for k in keys for v in run.series[k][1]):
            ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        if len(keys) > 1 or any(run.nulls.get(k) for k in keys):
            ax.legend(fontsize=8)
    return draw


def _line_panel(run: Run, title: str, keys: list[str], events: bool = False, **kw) -> list[Panel]:
    keys = [k for k in keys if k in run.series]
    return [Panel(title, _lines(run, keys, **kw), events=events)] if keys else []


def _before_after(run: Run, before_keys: list[str]) -> Callable:
    """Grouped bars: each eval_before/<suite>/<category> beside the last eval/<suite>/<category>."""
    def draw(ax):
        names = [k.removeprefix("eval_before/") for k in before_keys]
        x = list(range(len(names)))
        first = [run.series[k][1][0] for k in before_keys]
        last = [run.series[f"eval/{n}"][1][-1] if f"eval/{n}" in run.series else float("nan") for n in names]
        ax.bar([i - 0.2 for i in x], first, width=0.4, label="before")
        ax.bar([i + 0.2 for i in x], last, width=0.4, label="after")
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("score")
        ax.legend(fontsize=8)
    return draw


def _stacked(run: Run, keys: list[str], label: Callable[[str], str]) -> Callable:
    """Stacked areas over the union of the keys' steps; a key missing at a step counts as 0 there."""
    def draw(ax):
        steps = sorted({s for k in keys for s in run.series[k][0]})
        layers = []
        for key in keys:
            at = dict(zip(*run.series[key]))
            layers.append([at.get(s, 0.0) for s in steps])
        ax.stackplot(steps, layers, labels=[label(k) for k in keys], alpha=0.85)
        ax.set_ylabel("prompts")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="demo round",
                  title_fontsize=8)
    return draw


def _save(panels: list[Panel], suptitle: str, events: list[dict], target: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ncols = 1 if len(panels) == 1 else 2 if len(panels) in (2, 4) else 3
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.6 * ncols, 3.6 * nrows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        panel.draw(ax)
        if panel.events:
            _mark_events(ax, events)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(suptitle)
    fig.tight_layout()
    fig.savefig(target, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _mark_events(ax, events: list[dict]) -> None:
    labelled = set()
    for e in events:
        kind = str(e.get("event", "event"))
        if kind == "start" and e["step"] == 0:
            continue  # every run starts; a later start is a resume and worth a line
        ax.axvline(e["step"], color=EVENT_COLORS.get(kind, "tab:gray"), linestyle=":", linewidth=1,
                   label=None if kind in labelled else kind)
        labelled.add(kind)
    if labelled:
        ax.legend(fontsize=8)


# ---- the figures ---------------------------------------------------------------------------------
def _figures(run: Run) -> dict[str, tuple[str, list[Panel]]]:
    """name -> (title, panels); names are the PNG file names."""
    short = lambda prefix, suffix="": (lambda k: k.removeprefix(prefix).removesuffix(suffix))  # noqa: E731
    # exemplar (at most 0.01) gets its own axis; total is the weighted sum the advantage uses
    dims = [f"reward/{d}_mean" for d in (*REWARD_DIMS, "total") if d != "exemplar"]
    rewards = (_line_panel(run, "reward dimensions (mean over completions)", dims,
                           label=short("reward/", "_mean"), ylabel="reward")
               + _line_panel(run, "self-exemplifying reward", ["reward/exemplar_mean"], ylabel="reward"))

    rounds = _keys(run, r"sampler/demo_round/(\d+)")
    hard = ([Panel("prompts by demo round", _stacked(run, rounds, short("sampler/demo_round/")))]
            if rounds else [])
    hard += _line_panel(run, "shares of the step's groups",
                        ["sampler/demo_rate", "sampler/demo_solved_share", "sampler/all_fail_share",
                         "sampler/zero_signal_share"],
                        label=short("sampler/"), ylabel="share")
    hard += _line_panel(run, "parked prompts", ["sampler/parked"], ylabel="prompts")

    curriculum = (_line_panel(run, "mastery by sub-task", [f"sampler/mastery/{t}" for t in SUBTASKS],
                              label=short("sampler/mastery/"), ylabel="mastery")
                  + _line_panel(run, "sampling share by sub-task", [f"sampler/share/{t}" for t in SUBTASKS],
                                label=short("sampler/share/"), ylabel="share"))

    throughput = (_line_panel(run, "rollout throughput", ["rollout/tokens_per_s"], ylabel="tokens/s",
                              events=True)
                  + _line_panel(run, "time per step", ["time/step_s", "time/rollout_s", "time/learner_s",
                                                       "time/weight_push_s", "time/weight_land_s"],
                                label=short("time/"), ylabel="seconds", events=True))

    learner = []
    for key, logy in (("learner/lr", True), ("learner/loss", False), ("learner/grad_norm", False),
                      ("learner/clip_frac", False), ("learner/approx_kl", False), ("learner/entropy", False)):
        learner += _line_panel(run, key.removeprefix("learner/"), [key], logy=logy, events=True)

    sft = (_line_panel(run, "loss (mean over answer tokens)", ["sft/loss"], ylabel="nats / token", events=True)
           + _line_panel(run, "throughput (prompt + answer tokens)", ["sft/tokens_per_s"], ylabel="tokens/s"))

    suites = sorted({k.split("/")[1] for k in run.series if k.startswith("eval/") and k.count("/") >= 2})
    before = _keys(run, r"eval_before/(.+)")
    evals = [Panel("before and after training (eval.before, last eval)", _before_after(run, before))] if before else []
    for s in suites:
        evals += _line_panel(run, f"eval: {s}", _keys(run, rf"eval/{re.escape(s)}/(.+)"),
                             label=short(f"eval/{s}/"), ylabel="score")

    return {"rewards": ("Rewards", rewards), "hard_sampling": ("Dynamic multi-round hard sampling", hard),
            "curriculum": ("Task-based curriculum", curriculum), "throughput": ("Throughput", throughput),
            "learner": ("Learner", learner), "sft": ("Supervised warm start", sft),
            "eval": ("Evaluation", evals)}


# ---- index.md ------------------------------------------------------------------------------------
def _fmt(v: float) -> str:
    return f"{v + 0.0:.4g}"  # no "-0"


def _index(run_dir: Path, run: Run, written: list[tuple[str, str]]) -> str:
    steps = sorted({s for steps, _ in run.series.values() for s in steps})
    lines = [f"# Report: {run_dir.name}", "",
             f"{run.n_steps} steps logged (step {steps[0]} to {steps[-1]}) in `{run_dir / 'metrics.jsonl'}`."
             if steps else f"{run.n_steps} steps logged, no numeric values.", ""]
    if run.skipped_lines:
        shown = ", ".join(map(str, run.skipped_lines[:10])) + (" ..." if len(run.skipped_lines) > 10 else "")
        lines += [f"Skipped {len(run.skipped_lines)} unreadable line(s) of metrics.jsonl: {shown}.", ""]
    lines += ["## Plots", ""] + [f"- [{title}]({name}.png)" for name, title in written]
    lines += [""] + [f"![{title}]({name}.png)" for name, title in written]

    keys = [k for k in KEY_METRICS if k in run.series]
    keys += sorted(k for k in run.series if k.startswith(("eval_before/", "eval/")))
    if keys:
        lines += ["", "## First and last values", "", "| metric | first (step) | last (step) | change |",
                  "|---|---|---|---|"]
        for k in keys:
            s, v = run.series[k]
            lines.append(f"| `{k}` | {_fmt(v[0])} ({s[0]}) | {_fmt(v[-1])} ({s[-1]}) | {v[-1] - v[0]:+.4g} |")

    shown_events = [e for e in run.events if not (e.get("event") == "start" and e["step"] == 0)]
    if shown_events:
        lines += ["", "## Events", "", "| step | event | message |", "|---|---|---|"]
        for e in shown_events[:MAX_EVENT_ROWS]:
            message = str(e.get("message", "")).replace("|", "\\|")
            lines.append(f"| {e['step']} | {e.get('event', '')} | {message} |")
        if len(shown_events) > MAX_EVENT_ROWS:
            lines.append(f"\n{len(shown_events) - MAX_EVENT_ROWS} more in events.jsonl.")
    return "\n".join(lines) + "\n"


def write_report(run_dir: Path) -> Path:
    """Write RUN_DIR/report/*.png and index.md; return the report directory."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    written = []
    for name, (title, panels) in _figures(run).items():
        target = out / f"{name}.png"
        target.unlink(missing_ok=True)  # a plot that has nothing to show this time must not linger
        if panels:
            _save(panels, title, run.events, target)
            written.append((name, title))
    (out / "index.md").write_text(_index(run_dir, run, written))
    return out
