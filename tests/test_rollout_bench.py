"""bench/rollout's roofline arithmetic on hand-made calls (the benchmark itself runs under make bench)."""

import json

import pyarrow as pa
import pytest

from bench.rollout import decode_steps, matmul_weights, roofline
from toolexpander.types import RolloutStats


def _call(lengths_by_group: dict[int, list[int]]) -> pa.Table:
    groups = [g for g, lengths in lengths_by_group.items() for _ in lengths]
    completions = [[7] * k for lengths in lengths_by_group.values() for k in lengths]
    return pa.table({"group_id": pa.array(groups, pa.int64()),
                     "completion_ids": pa.array(completions, pa.list_(pa.int32()))})


def _stats(worker: int, tokens: int) -> RolloutStats:
    return RolloutStats(worker=worker, prompts=1, completions=2, prompt_tokens=0, completion_tokens=tokens,
                        seconds=1.0)


def test_decode_steps_sum_each_engines_longest_completion():
    # 2 workers: groups 0 and 2 on worker 0 (longest 9), group 1 on worker 1 (longest 5)
    tbl = _call({0: [3, 9], 1: [5, 1], 2: [4, 4]})
    assert decode_steps(tbl, [_stats(0, 3 + 9 + 4 + 4), _stats(1, 6)], workers=2) == 9 + 5
    # one worker: every row is its own
    assert decode_steps(tbl, [_stats(0, 26)], workers=1) == 9


def test_decode_steps_refuses_rows_dealt_otherwise():
    tbl = _call({0: [3, 9], 1: [5, 1]})
    with pytest.raises(RuntimeError, match="worker 0: 12 completion tokens by group id, 6 by its stats"):
        decode_steps(tbl, [_stats(0, 6), _stats(1, 12)], workers=2)


def test_roofline_is_the_longer_of_matmuls_and_weight_reads():
    phase = {"completion_tokens": 1000, "prompt_tokens": 1000, "decode_steps": 100, "tokens_per_s": 50.0}
    # matmuls: 2 x (1000 x (8e7 + 2e7) + 1000 x 8e7) / 1000 GFLOP/s = 0.36 s; reads: 100 x 2^30 B / 10 GiB/s = 10 s
    out = roofline(phase, weight_bytes=2**30, gibs=10.0, gflops_=1000.0, layers=8 * 10**7, head=2 * 10**7,
                   bound_tps=5000.0)
    assert out["matmul_s"] == pytest.approx(0.36)
    assert out["read_s"] == pytest.approx(10.0)
    assert out["roofline_tps"] == pytest.approx(100.0)
    assert out["roofline_of_bound"] == pytest.approx(0.02)
    assert out["of_roofline"] == pytest.approx(0.5)
    # weights read fast: the matmuls bound it
    out = roofline(phase, weight_bytes=2**20, gibs=10.0, gflops_=1000.0, layers=8 * 10**7, head=2 * 10**7,
                   bound_tps=5000.0)
    assert out["roofline_tps"] == pytest.approx(1000 / 0.36)


@pytest.mark.parametrize("tied, layers", [(True, 1000 - 64 * 4), (False, 1000 - 2 * 64 * 4)])
def test_matmul_weights_leave_out_an_untied_input_embedding(tmp_path, tied, layers):
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 64, "hidden_size": 4, "tie_word_embeddings": tied}))
    assert matmul_weights(1000, tmp_path) == (layers, 64 * 4)
