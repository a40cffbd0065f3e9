"""Sampler: the only owner of per-prompt state; a thin shell over the pure SamplerCore.

In: scored rollout tables (Arrow). Out: PromptRequests (tasks with their demo round and demos).
State is saved as a plain .npz (no pickle) with every checkpoint.
"""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pyarrow as pa

from toolexpander.config import SamplerConfig
from toolexpander.prompt import make_demo
from toolexpander.sampling.core import SamplerCore
from toolexpander.sampling.hard import DemoIndex
from toolexpander.storage import read_file, write_file
from toolexpander.types import REWARD_DIMS, SUBTASKS, PromptRequest, Task


def answer_hash(task: Task) -> int:
    text = json.dumps(task.answer.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)


def core_arrays(tasks: list[Task], names: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """The per-prompt arrays SamplerCore needs: sub-task codes, tool-name ids (CSR), answer hashes.
    names: tool name -> id, extended in place (one id space for the prompts and the demo pool)."""
    names = {} if names is None else names
    indptr, ids = [0], []
    for t in tasks:
        ids.extend(sorted({names.setdefault(tool.name, len(names)) for tool in t.tools}))
        indptr.append(len(ids))
    return {"subtask_codes": np.array([SUBTASKS.index(t.subtask) for t in tasks], dtype=np.int8),
            "tool_ids_indptr": np.array(indptr, dtype=np.int64),
            "tool_ids": np.array(ids, dtype=np.int64),
            "answer_hash": np.array([answer_hash(t) for t in tasks], dtype=np.int64),
            # A demo must be a valid solved example: flagged-broken ground truth never is.
            "demo_pool": np.array([not t.meta.get("gt_invalid") for t in tasks], dtype=bool)}


def demo_index(tasks: list[Task], names: dict[str, int]) -> DemoIndex:
    """A DemoIndex over `tasks` (their tool names as ids in `names`, extended in place)."""
    a = core_arrays(tasks, names)
    return DemoIndex(a["subtask_codes"], a["tool_ids_indptr"], a["tool_ids"], a["answer_hash"], a["demo_pool"],
                     len(SUBTASKS))


# The columns of a rollout table that Sampler.record reads: the driver sends only these (the token
# lists, most of the table's bytes, never reach the sampler).
RECORD_COLUMNS = ("group_id", "task_id", "demo_round", *[f"reward_{d}" for d in REWARD_DIMS])


class Sampler:
    """demo_tasks: the rows hard-sample demos are drawn from (sampler.demo_pool "file": every row of the
    training file, also those the run does not draw); None: the prompts themselves."""

    def __init__(self, cfg: dict, tasks: list[Task], exemplar_bonus: float = 0.01,
                 reward_weights: dict[str, float] | None = None, demo_tasks: list[Task] | None = None):
        self.cfg = SamplerConfig.model_validate(cfg)
        self.tasks = tasks
        self.demo_tasks = tasks if demo_tasks is None else demo_tasks
        self.row_of = {t.id: i for i, t in enumerate(tasks)}
        weights = None if reward_weights is None else np.array(
            [reward_weights.get(d, 0.0) for d in REWARD_DIMS], dtype=np.float64)
        names: dict[str, int] = {}
        arrays = core_arrays(tasks, names)
        self.core = SamplerCore(self.cfg, **arrays, exemplar_bonus=exemplar_bonus, reward_weights=weights,
                                demo_index=None if demo_tasks is None else demo_index(demo_tasks, names))
        self.next_group_id = 0
        self.drawn: list[int] = []  # prompts drawn in the current step (refills exclude them)

    def next_batch(self, batch_size: int) -> list[PromptRequest]:
        exclude = np.array(self.drawn, dtype=np.int64)
        draws = self.core.next_batch(batch_size, exclude=exclude)
        requests = []
        for d in draws:
            self.drawn.append(d.prompt)
            requests.append(PromptRequest(task=self.tasks[d.prompt], demo_round=d.demo_round,
                                          demos=[make_demo(self.demo_tasks[p]) for p in d.demo_prompts],
                                          demo_format=self.cfg.demo_format,
                                          group_id=self.next_group_id))
            self.next_group_id += 1
        return requests

    def record(self, table: pa.Table) -> dict:
        """Update every statistic from scored groups; say which groups carry GRPO signal. `table` needs
        only RECORD_COLUMNS."""
        cols = table.select(list(RECORD_COLUMNS)).to_pydict()
        groups: dict[int, list[int]] = {}
        for row, gid in enumerate(cols["group_id"]):
            groups.setdefault(gid, []).append(row)
        gids = list(groups)
        n = min(len(rows) for rows in groups.values())
        rewards = np.zeros((len(gids), n, len(REWARD_DIMS)))
        for g, gid in enumerate(gids):
            rows = groups[gid][:n]
            for d, dim in enumerate(REWARD_DIMS):
                rewards[g, :, d] = [cols[f"reward_{dim}"][r] for r in rows]
        prompts = np.array([self.row_of[cols["task_id"][groups[g][0]]] for g in gids], dtype=np.int64)
        rounds = np.array([cols["demo_round"][groups[g][0]] for g in gids], dtype=np.int64)
        result = self.core.record(prompts, rounds, rewards)
        return {"group_ids": gids, "informative": result.informative.tolist(),
                "all_fail": result.all_fail.tolist(), "demo_round": rounds.tolist(),
                "metrics": result.metrics}

    def end_step(self) -> dict[str, float]:
        self.core.end_step()
        self.drawn = []
        return self.core.metrics()

    def metrics(self) -> dict[str, float]:
        return self.core.metrics()

    def save(self, location: str) -> None:
        """The state as one .npz at `location` (a path or a storage URI, toolexpander/storage.py)."""
        state = self.core.state_dict()
        state["next_group_id"] = np.array(self.next_group_id, dtype=np.int64)
        buffer = io.BytesIO()
        np.savez(buffer, **state)
        write_file(location, buffer.getvalue())

    def load(self, location: str) -> None:
        with np.load(io.BytesIO(read_file(location)), allow_pickle=False) as f:
            state = {k: f[k] for k in f.files}
        self.next_group_id = int(state.pop("next_group_id"))
        self.core.load_state_dict(state)
        self.drawn = []
