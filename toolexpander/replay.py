"""Run the learner alone on rollouts dumped by `train --save-rollouts` (no vLLM, no sampler):
debug the update on fixed data. Writes replay_metrics.jsonl into the run directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pyarrow.parquet as pq

from toolexpander.config import Config
from toolexpander.models import ensure_model
from toolexpander.types import ROLLOUT_SCHEMA

if TYPE_CHECKING:
    from toolexpander.learner.learner import Learner


class ReplayError(RuntimeError):
    pass


def replay_steps(cfg: Config, rollouts_dir: str, limit: int | None = None) -> Iterator[tuple[int, Path, Learner, dict]]:
    """One learner (rank 0 of 1, the config's model and learner settings) taking an update on each
    dumped batch in step order (at most `limit`), with the step seed training used; yields
    (step, file, learner, metrics) after each update."""
    from transformers import AutoTokenizer

    from toolexpander.learner.learner import Learner

    files = sorted(Path(rollouts_dir).glob("step_*.parquet"))[:limit]
    if not files:
        raise ReplayError(f"--replay-rollouts: no step_*.parquet files in {rollouts_dir}")
    model_path = ensure_model(cfg.model.path, cfg.model.prepare)
    pad_id = AutoTokenizer.from_pretrained(model_path).pad_token_id or 0
    learner = Learner(0, 1, "127.0.0.1", 0, str(model_path), cfg.learner.model_dump(),
                      cfg.model.dtype, cfg.train.seed, pad_id, cfg.rollout.temperature)
    for step, path in enumerate(files):
        table = pq.read_table(path)
        if not table.schema.equals(ROLLOUT_SCHEMA, check_metadata=False):
            raise ReplayError(f"{path}: not a rollout dump (schema differs from ROLLOUT_SCHEMA)")
        yield step, path, learner, learner.step(table, step_seed=cfg.train.seed * 1_000_003 + step, train_step=step)


def replay(cfg: Config, rollouts_dir: str) -> Path:
    run_dir = Path(cfg.logging.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / "replay_metrics.jsonl"
    with out.open("w") as f:
        for step, path, _, metrics in replay_steps(cfg, rollouts_dir):
            f.write(json.dumps({"step": step, "file": path.name, **metrics}) + "\n")
            print(f"replayed {path.name}: loss={metrics.get('learner/loss', float('nan')):.4g} "
                  f"lr={metrics['learner/lr']:.3g}", flush=True)
    return out
