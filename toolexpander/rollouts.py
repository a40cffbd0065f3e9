"""A step's rollouts by reference: what the driver holds of them, and how the learner gets the rows.

Each rollout worker's answer to one generate call is a *part*: its full Arrow batch (types.ROLLOUT_SCHEMA:
token lists, logprobs, text) stays in the object store of the worker's node as one ObjectRef, and the
driver gets only its light view (types.light_view: the scalar columns, token counts, has_tool_call; sent
as one Arrow IPC stream, types.light_view_ipc) plus each row's place in the part ("part", "row"). The
sampler, the metrics and the shard dealing need no more; each learner rank fetches the parts its own shard
names and assembles its rows (learner.shards.assemble). So the driver never reads the token lists. (Ray
itself returns a result under 100 KiB, max_direct_call_object_size, inline to its caller: a small part is
held in the driver's memory until a rank fetches it from there; forcing such parts into the object store
measured slower, bench/RESULTS.md's analysis of 2026-12-06.)

A part that died with its node before it was fetched raises RowsLost naming it; the trainer then
generates that part's requests again and retries what needed the rows (retry_lost, Trainer._regenerate).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from toolexpander.learner.shards import assemble
from toolexpander.overlap import TrainError
from toolexpander.types import ROLLOUT_SCHEMA, PromptRequest, light_view

# A result that died with its node (ObjectLostError and its kin) is a lost actor, like a dead one.
LOST = (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError, ray.exceptions.ObjectLostError,
        ray.exceptions.OwnerDiedError)


class RowsLost(RuntimeError):
    """Parts whose full rows were lost (their node died) before a learner rank or the driver fetched them."""

    def __init__(self, parts: list[int]):
        self.parts = sorted(set(parts))
        super().__init__(f"the rollout rows of part(s) {self.parts} were lost with their node before they "
                         "were fetched")


def get_each(refs: list) -> list:
    """The values of refs, one ray.get for all; when one was lost (its actor or its node died), each
    on its own, a lost one as None."""
    try:
        return ray.get(list(refs))
    except LOST:
        out = []
        for ref in refs:
            try:
                out.append(ray.get(ref))
            except LOST:
                out.append(None)
        return out


def fetch_parts(refs: list, ids: list[int]) -> tuple[list, list[int]]:
    """The parts' batches; returns (the batches fetched, the ids of those that were lost)."""
    values = get_each(refs)
    batches = [v for v in values if v is not None]
    return batches, [int(i) for i, v in zip(ids, values) if v is None]


def fetch_rows(light: pa.Table, refs: list, ids: list[int]) -> tuple[pa.Table | None, list[int]]:
    """The full rows that `light` names (parts renumbered 0..k-1 as Rollouts.localize gives them; `refs`
    those parts, `ids` their numbers in the step), in its order: (table, []), or (None, the ids of
    the parts lost with their node)."""
    batches, lost = fetch_parts(refs, ids)
    return (None, lost) if lost else (assemble(light, batches), [])


def retry_lost(action, regenerate, what: str):
    """action() (it needs a batch's full rows); when some were lost with their node, regenerate(the
    RowsLost) generates them again and action() runs once more. Lost twice: TrainError."""
    try:
        return action()
    except RowsLost as e:
        regenerate(e)
    try:
        return action()
    except RowsLost as e:
        raise TrainError(f"{e}, twice in {what}; giving up (resume from the last checkpoint)") from e


def _with_place(light: pa.Table, part: int) -> pa.Table:
    light = light.append_column("part", pa.array(np.full(light.num_rows, part, np.int32)))
    return light.append_column("row", pa.array(np.arange(light.num_rows, dtype=np.int32)))


@dataclass
class Rollouts:
    light: pa.Table                          # one row per completion: light_view columns + part, row
    parts: list                              # per part, an ObjectRef of its full batch (ROLLOUT_SCHEMA)
    requests: list[list[PromptRequest]]      # per part, the requests it answered (to generate it again)

    @classmethod
    def from_parts(cls, lights: list[pa.Table], refs: list, requests: list[list[PromptRequest]],
                   order: list[int]) -> "Rollouts":
        """Parts as the workers answered; rows sorted by `order` (group ids, the requests' order),
        a group's completions kept in their order."""
        light = pa.concat_tables([_with_place(t, i) for i, t in enumerate(lights)])
        rank = {g: k for k, g in enumerate(order)}
        keys = pa.array([rank[g] for g in light.column("group_id").to_pylist()], pa.int64())
        return cls(light.take(pc.sort_indices(keys)), list(refs), list(requests))

    @classmethod
    def from_table(cls, table: pa.Table, requests: list[PromptRequest] | None = None) -> "Rollouts":
        """A full table the caller holds (a test, a replay, a checkpoint), put into the object store as one part."""
        return cls(_with_place(light_view(table), 0), [ray.put(table)], [list(requests or [])])

    @property
    def num_rows(self) -> int:
        return self.light.num_rows

    def filter(self, group_ids) -> "Rollouts":
        """Only the rows of these groups (the parts stay; a part no row names is never fetched)."""
        keep = pc.is_in(self.light.column("group_id"), pa.array(list(group_ids), pa.int64()))
        return Rollouts(self.light.filter(keep), self.parts, self.requests)

    def without(self, parts: list[int]) -> "Rollouts":
        """Every row except those of these parts."""
        keep = pc.invert(pc.is_in(self.light.column("part"), pa.array(list(parts), pa.int32())))
        return Rollouts(self.light.filter(keep), self.parts, self.requests)

    @staticmethod
    def concat(items: list["Rollouts"]) -> "Rollouts":
        """One Rollouts of several: parts renumbered, rows in the order given."""
        lights, parts, requests = [], [], []
        for item in items:
            column = item.light.schema.get_field_index("part")
            shifted = pc.add(item.light.column("part"), pa.scalar(len(parts), pa.int32()))
            lights.append(item.light.set_column(column, "part", shifted))
            parts += item.parts
            requests += item.requests
        return Rollouts(pa.concat_tables(lights), parts, requests)

    def localize(self, light: pa.Table) -> tuple[pa.Table, list, list[int]]:
        """For rows of this Rollouts (a shard): those rows with parts renumbered 0..k-1, the k refs
        they name, and the k parts' ids here."""
        part = light.column("part").to_numpy(zero_copy_only=False)
        ids, local = np.unique(part, return_inverse=True)
        column = light.schema.get_field_index("part")
        light = light.set_column(column, "part", pa.array(local.astype(np.int32)))
        return light, [self.parts[i] for i in ids], [int(i) for i in ids]

    def fetch(self) -> pa.Table:
        """The full rows, in order (for the driver's own uses: saved rollouts, a checkpoint's queued batch)."""
        if self.num_rows == 0:
            return ROLLOUT_SCHEMA.empty_table()
        table, lost = fetch_rows(*self.localize(self.light))
        if lost:
            raise RowsLost(lost)
        return table
