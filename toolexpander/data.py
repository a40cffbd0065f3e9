"""Load and validate tool-calling datasets (JSONL or Parquet) into `Task` records.

A bad row is reported by file, 1-based row number and field (DataError), never skipped silently.
Pure: pyarrow and pydantic only.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
from pydantic import ValidationError

from toolexpander.types import Task


class DataError(ValueError):
    """A dataset problem; `problems` lists every bad row as 'file:row: field: message'."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        more = f"\n... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__("\n".join(problems[:20]) + more)


def _describe(err: ValidationError) -> list[str]:
    out = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(row)"
        out.append(f"{field}: {e['msg']}")
    return out


def _raw_rows(path: Path):
    """Yield (row_number, dict-or-error-string) for every row of a JSONL or Parquet file."""
    if path.suffix == ".parquet":
        for i, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            # Parquet cannot hold free-form JSON objects: tools/arguments/meta may be JSON strings.
            for key in ("tools", "meta"):
                if isinstance(row.get(key), str):
                    try:
                        row[key] = json.loads(row[key])
                    except json.JSONDecodeError as e:
                        yield i, f"{key}: not valid JSON ({e.msg})"
                        break
            else:
                yield i, row
        return
    with path.open("rb") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                yield i, f"(row): not valid JSON ({getattr(e, 'msg', e)})"
                continue
            yield i, row if isinstance(row, dict) else "(row): not a JSON object"


def load_tasks(path: str | Path) -> list[Task]:
    """Every row of `path` as a validated Task; raises DataError listing all bad rows."""
    path = Path(path)
    if not path.is_file():
        raise DataError([f"{path}: file not found"])
    if path.suffix not in (".jsonl", ".json", ".parquet"):
        raise DataError([f"{path}: unsupported file type {path.suffix!r} (use .jsonl or .parquet)"])
    tasks, problems, seen = [], [], {}
    for row_no, row in _raw_rows(path):
        if isinstance(row, str):
            problems.append(f"{path}:{row_no}: {row}")
            continue
        try:
            task = Task.model_validate(row)
        except ValidationError as e:
            problems.extend(f"{path}:{row_no}: {d}" for d in _describe(e))
            continue
        if task.id in seen:
            problems.append(f"{path}:{row_no}: id: duplicate of row {seen[task.id]} ({task.id!r})")
            continue
        seen[task.id] = row_no
        tasks.append(task)
    if problems:
        raise DataError(problems)
    if not tasks:
        raise DataError([f"{path}: no rows"])
    return tasks


def summarize(tasks: list[Task]) -> dict[str, dict[str, int]]:
    """Counts per source and per sub-task, for `toolexpander data check`."""
    return {
        "source": dict(sorted(Counter(t.source for t in tasks).items())),
        "subtask": dict(sorted(Counter(t.subtask for t in tasks).items())),
    }
