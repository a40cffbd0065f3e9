"""PURE: deal a step's groups to the learner ranks, balanced by the tokens each rank computes.

Every rank must run the same number of forward/backward passes (the collectives pair them up), so
counts differ by at most one before padding and the shorter shards are padded with zero-advantage
copies; within that, the longest groups are placed first, each on the least-loaded rank with room
(verl balances by sequence length the same way; round-robin dealing can put the long groups together).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def balanced_shards(tokens_G, world_size: int) -> list[list[int]]:
    """Group indices per rank: sizes floor(G / W), and G mod W of them one more, token sums as even
    as the greedy gets. Ties go to the lower rank, so the deal is deterministic; each shard lists its
    groups in their original order."""
    tokens_G = np.asarray(tokens_G, dtype=np.int64)
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    floor, extra = divmod(len(tokens_G), world_size)
    load = np.zeros(world_size, dtype=np.int64)
    count = np.zeros(world_size, dtype=np.int64)
    shards: list[list[int]] = [[] for _ in range(world_size)]
    for g in np.argsort(-tokens_G, kind="stable"):
        # a rank may grow past floor only while fewer than `extra` ranks have done so
        room = (count < floor) | ((count == floor) & (np.count_nonzero(count > floor) < extra))
        open_ = np.flatnonzero(room)
        r = int(open_[np.argmin(load[open_])])
        shards[r].append(int(g))
        load[r] += tokens_G[g]
        count[r] += 1
    return [sorted(s) for s in shards]


def token_counts(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(prompt, completion) tokens per row: a light view's prompt_len/completion_len, else the lists'."""
    if "completion_len" in table.column_names:
        return (table.column("prompt_len").to_numpy(zero_copy_only=False),
                table.column("completion_len").to_numpy(zero_copy_only=False))
    return (pc.list_value_length(table.column("prompt_ids")).to_numpy(zero_copy_only=False),
            pc.list_value_length(table.column("completion_ids")).to_numpy(zero_copy_only=False))


def shard_tables(table: pa.Table, world_size: int) -> list[tuple[pa.Table, int]]:
    """(rows of the rank's groups, how many padding groups end it) per rank, for a full rollout table
    or its light view (types.light_view; Rollouts deals those). A group costs its prompt
    once plus every completion (the learner shares the prompt); a padding group is a copy of the rank's
    shortest group (of the step's shortest if the rank has none) under a negative group_id, so it
    never merges with the group it copies."""
    if table.num_rows == 0:
        raise ValueError("shard_tables: no groups to deal (the learner is only called with some)")
    gid = table.column("group_id").to_numpy()
    ids, first, inverse = np.unique(gid, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")                 # groups in the order they arrive
    arrival = np.empty(len(ids), dtype=np.int64)
    arrival[order] = np.arange(len(ids))
    g_row = arrival[inverse]                                  # (rows,) group index 0..G-1 in arrival order
    prompt, completion = token_counts(table)
    tokens_G = np.bincount(g_row, weights=completion, minlength=len(ids)).astype(np.int64)
    prompt_G = np.zeros(len(ids), dtype=np.int64)
    prompt_G[g_row] = prompt
    tokens_G += prompt_G
    shards = balanced_shards(tokens_G, world_size)
    count = max(len(s) for s in shards)
    out = []
    for shard in shards:
        parts = [table.take(np.flatnonzero(np.isin(g_row, shard)))]
        pad = count - len(shard)
        if pad:
            shortest = min(shard or [int(np.argmin(tokens_G))], key=lambda g: (tokens_G[g], g))
            copy = table.take(np.flatnonzero(g_row == shortest))
            column = copy.schema.get_field_index("group_id")
            parts += [copy.set_column(column, "group_id", pa.array(np.full(copy.num_rows, -1 - k, np.int64)))
                      for k in range(pad)]
        out.append((pa.concat_tables(parts), pad))
    return out


def assemble(light: pa.Table, parts: list[pa.Table | pa.RecordBatch]) -> pa.Table:
    """The full rollout rows a light view names, in its order: row i is row light["row"][i] of
    parts[light["part"][i]], under light's group_id (a padding copy's is negative)."""
    if not parts:
        raise ValueError("assemble: no parts")
    tables = [p if isinstance(p, pa.Table) else pa.Table.from_batches([p]) for p in parts]
    sizes = np.array([t.num_rows for t in tables], dtype=np.int64)
    part = light.column("part").to_numpy(zero_copy_only=False).astype(np.int64)
    row = light.column("row").to_numpy(zero_copy_only=False).astype(np.int64)
    if len(part) and (part.min() < 0 or part.max() >= len(tables)):
        raise ValueError(f"assemble: part index out of range 0..{len(tables) - 1}: {sorted(set(part.tolist()))}")
    if len(part) and ((row < 0) | (row >= sizes[part])).any():
        raise ValueError("assemble: a row index is past the end of its part")
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    full = pa.concat_tables(tables).take(pa.array(offsets[part] + row))
    column = full.schema.get_field_index("group_id")
    return full.set_column(column, "group_id", light.column("group_id").combine_chunks())
