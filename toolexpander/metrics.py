"""Per-step metrics: metrics.jsonl (the contract in DESIGN.md), TensorBoard, optional wandb, and a
progress display (a bar on a terminal, plain log lines otherwise)."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from toolexpander.types import REWARD_DIMS

PROGRESS_KEYS = (("reward", "reward/total_mean"), ("correct", "reward/correct_mean"),
                 ("demo", "sampler/demo_rate"), ("tok/s", "rollout/tokens_per_s"))


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


class MetricsWriter:
    def __init__(self, run_dir: Path, tensorboard: bool, wandb_project: str | None, config: dict,
                 resume: bool, start_step: int = 0):
        """resume: continue the run's files from start_step, the restored checkpoint's step; rows
        of later steps (logged after that checkpoint by a driver that then died) are dropped, in
        metrics.jsonl and TensorBoard alike, so that every step keeps one row."""
        self.path = run_dir / "metrics.jsonl"
        if resume:
            self._drop_rows_from(start_step)
        self.file = self.path.open("a" if resume else "w")
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step if resume else None)
        self.wandb = None
        if wandb_project:
            import wandb  # optional; only imported when configured

            self.wandb = wandb.init(project=wandb_project, config=config, dir=str(run_dir))

    def _drop_rows_from(self, step: int) -> None:
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by the crash
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] < step:
                kept.append(line + "\n")
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(kept))
        tmp.replace(self.path)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        # Non-finite numbers become null (JSON has no NaN); counters stay integers.
        record = {**{k: (v if _finite(v) else None if isinstance(v, float) else v)
                     for k, v in sorted(metrics.items())}, "step": step}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                if _finite(v):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in metrics.items() if _finite(v)}, step=step)

    def event(self, step: int, kind: str, message: str, **fields) -> None:
        """Out-of-band events (worker restarts, skipped steps, where actors run) go to events.jsonl
        beside the metrics; `fields` (JSON values) join the row."""
        with (self.path.parent / "events.jsonl").open("a") as f:
            f.write(json.dumps({"step": step, "time": time.time(), "event": kind, "message": message, **fields})
                    + "\n")

    def flush(self) -> None:
        self.file.flush()
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


class Progress:
    """A tqdm bar with the key numbers on a terminal; one plain line per step otherwise."""

    def __init__(self, total: int, start: int, mode: str):
        self.bar_mode = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
        self.total, self.start_step, self.t0 = total, start, time.time()
        self.bar = None
        if self.bar_mode:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)

    def update(self, step: int, metrics: dict[str, float]) -> None:
        shown = {name: metrics.get(key) for name, key in PROGRESS_KEYS}
        text = " ".join(f"{k}={v:.3g}" for k, v in shown.items() if _finite(v))
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(1)
            return
        done = step + 1 - self.start_step
        eta = (time.time() - self.t0) / max(done, 1) * (self.total - step - 1)
        print(f"step {step + 1}/{self.total} {text} step_s={metrics.get('time/step_s', 0):.1f} "
              f"eta={eta:.0f}s", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def reward_metrics(table: pa.Table) -> dict[str, float]:
    """Per-step rollout metrics from the light view of every row generated (types.light_view)."""
    out = {f"reward/{d}_mean": float(pc.mean(table.column(f"reward_{d}")).as_py() or 0.0)
           for d in (*REWARD_DIMS, "total")}
    out["rollout/completion_len_mean"] = float(pc.mean(table.column("completion_len")).as_py() or 0.0)
    out["rollout/truncated_share"] = float(pc.mean(pc.equal(table.column("finish_reason"), "length")
                                                   .cast(pa.float32())).as_py() or 0.0)
    # Completions with no <tool_call>, among prompts that need one: a policy drifting to "no tool call is
    # needed" shows here (a <response> is well-formed, so reward/format_mean does not show it).
    needs_call = pc.not_equal(table.column("subtask"), "no_call")
    calls = table.filter(needs_call).column("has_tool_call")
    out["rollout/missed_call_share"] = (float(pc.mean(pc.invert(calls).cast(pa.float32())).as_py())
                                        if len(calls) else float("nan"))
    # Whether the hard-sample rounds' demos help: of the step's groups whose prompt carried demos, the
    # share with at least one correct completion (NaN in a step without any).
    groups = group_results(table)
    solved = groups.filter(groups.column("demos")).column("solved")
    out["sampler/demo_solved_share"] = (float(pc.mean(solved.cast(pa.float32())).as_py())
                                        if len(solved) else float("nan"))
    return out


def group_results(table: pa.Table) -> pa.Table:
    """One row per group of a rollout table (group ids are unique within a step): group_id, subtask,
    demos (its prompt carried demonstrations) and solved (at least one completion correct)."""
    g = table.group_by(["group_id", "subtask"]).aggregate([("num_demos", "max"), ("reward_correct", "max")])
    return pa.table({"group_id": g.column("group_id"), "subtask": g.column("subtask"),
                     "demos": pc.greater(g.column("num_demos_max"), 0),
                     "solved": pc.greater(g.column("reward_correct_max"), 0)})
