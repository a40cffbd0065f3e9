"""Dealing a step's groups to learner ranks by tokens (pure: numpy and pyarrow), exact hand cases."""

import pyarrow as pa
import pytest

from toolexpander.learner.shards import balanced_shards, shard_tables
from toolexpander.types import REWARD_DIMS, ROLLOUT_SCHEMA


def test_longest_first_onto_the_least_loaded_rank_with_room():
    # tokens 100, 10, 90, 20, 50, 30 on 2 ranks, 3 each: 100 -> r0; 90 -> r1; 50 -> r1 (90 < 100);
    # 30 -> r0 (100 < 140); 20 -> r0 (130 < 140); r0 full, so 10 -> r1. Sums 150 / 150.
    # Round-robin would deal {100, 90, 50} = 240 against {10, 20, 30} = 60.
    assert balanced_shards([100, 10, 90, 20, 50, 30], 2) == [[0, 3, 5], [1, 2, 4]]


def test_counts_differ_by_at_most_one_and_every_group_is_dealt_once():
    shards = balanced_shards([5, 5, 5, 5, 5], 3)
    assert sorted(len(s) for s in shards) == [1, 2, 2]
    assert sorted(g for s in shards for g in s) == [0, 1, 2, 3, 4]
    assert balanced_shards([7], 3) == [[0], [], []]
    assert balanced_shards([], 2) == [[], []]
    assert balanced_shards([3, 1, 2], 1) == [[0, 1, 2]]
    with pytest.raises(ValueError, match="world_size"):
        balanced_shards([1], 0)


def table(groups):
    """groups: [(group_id, prompt_len, [completion lengths])] -> rollout rows."""
    rows = {f.name: [] for f in ROLLOUT_SCHEMA}
    for gid, prompt_len, lengths in groups:
        for i, length in enumerate(lengths):
            values = dict(group_id=gid, task_id=f"t{gid}", subtask="single", demo_round=0, num_demos=0,
                          policy_version=0, prompt_ids=[gid] * prompt_len, completion_ids=[i] * length,
                          logprobs=[-1.0] * length, finish_reason="stop", text="", reward_total=float(i),
                          **{f"reward_{d}": 0.0 for d in REWARD_DIMS})
            for k, v in values.items():
                rows[k].append(v)
    return pa.Table.from_pydict(rows, schema=ROLLOUT_SCHEMA)


def test_shard_tables_deal_whole_groups_and_pad_with_the_shortest():
    # Group tokens (prompt once + completions): 7 -> 10 + 4 + 4 = 18; 3 -> 2 + 1 + 1 = 4; 9 -> 6 + 3 + 3 = 12.
    # 2 ranks: 18 -> r0, 12 -> r1, 4 -> r1 (12 < 18). r0 pads with a copy of its shortest (group 7).
    t = table([(7, 10, [4, 4]), (3, 2, [1, 1]), (9, 6, [3, 3])])
    (a, pad_a), (b, pad_b) = shard_tables(t, 2)
    assert (pad_a, pad_b) == (1, 0)
    assert a.column("group_id").to_pylist() == [7, 7, -1, -1]
    assert a.column("prompt_ids").to_pylist()[2:] == [[7] * 10] * 2          # the copy is group 7's rows
    assert b.column("group_id").to_pylist() == [3, 3, 9, 9]                   # arrival order kept
    assert a.schema == b.schema == ROLLOUT_SCHEMA


def test_shard_tables_give_a_rank_without_groups_the_steps_shortest():
    t = table([(4, 5, [2, 2]), (5, 1, [1, 1])])
    shards = shard_tables(t, 3)
    assert [pad for _, pad in shards] == [0, 0, 1]
    assert shards[2][0].column("group_id").to_pylist() == [-1, -1]
    assert shards[2][0].column("prompt_ids").to_pylist() == [[5], [5]]       # group 5: 3 tokens < 9


def test_a_light_view_is_dealt_like_its_table_and_assembles_back_to_its_rows():
    # The driver deals the light view (token counts, no token lists); a rank assembles its rows from
    # the parts: part 0 holds groups 7 and 3, part 1 group 9 (two workers' answers).
    from toolexpander.learner.shards import assemble
    from toolexpander.types import light_view

    part0, part1 = table([(7, 10, [4, 4]), (3, 2, [1, 1])]), table([(9, 6, [3, 3])])
    light = pa.concat_tables([light_view(part0), light_view(part1)])
    light = light.append_column("part", pa.array([0, 0, 0, 0, 1, 1], pa.int32()))
    light = light.append_column("row", pa.array([0, 1, 2, 3, 0, 1], pa.int32()))
    assert light.column("prompt_len").to_pylist() == [10, 10, 2, 2, 6, 6]
    assert light.column("completion_len").to_pylist() == [4, 4, 1, 1, 3, 3]
    assert "completion_ids" not in light.column_names
    (a, pad_a), (b, pad_b) = shard_tables(light, 2)
    assert (pad_a, pad_b) == (1, 0)                                          # as for the full table
    assert a.column("group_id").to_pylist() == [7, 7, -1, -1]
    assert b.column("group_id").to_pylist() == [3, 3, 9, 9]
    rows_a = assemble(a, [part0, part1])
    assert rows_a.schema == ROLLOUT_SCHEMA
    assert rows_a.column("group_id").to_pylist() == [7, 7, -1, -1]          # the copy keeps its own id
    assert rows_a.column("prompt_ids").to_pylist() == [[7] * 10] * 4
    assert rows_a.column("completion_ids").to_pylist() == [[0] * 4, [1] * 4, [0] * 4, [1] * 4]
    rows_b = assemble(b, [part0, part1])
    assert rows_b.column("completion_ids").to_pylist() == [[0], [1], [0] * 3, [1] * 3]
    assert rows_b.column("reward_total").to_pylist() == [0.0, 1.0, 0.0, 1.0]


def test_assemble_refuses_a_place_outside_its_parts():
    from toolexpander.learner.shards import assemble
    from toolexpander.types import light_view

    part = table([(1, 2, [1, 1])])
    light = light_view(part).append_column("part", pa.array([0, 1], pa.int32()))
    with pytest.raises(ValueError, match="part index out of range"):
        assemble(light.append_column("row", pa.array([0, 1], pa.int32())), [part])
    light = light_view(part).append_column("part", pa.array([0, 0], pa.int32()))
    with pytest.raises(ValueError, match="past the end"):
        assemble(light.append_column("row", pa.array([0, 2], pa.int32())), [part])
    with pytest.raises(ValueError, match="no parts"):
        assemble(light.append_column("row", pa.array([0, 1], pa.int32())), [])
