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
