"""bench/trl_compare's comparison on hand-made side results (the benchmark itself runs under make bench)."""

import json

import pytest

import bench.trl_compare as tc


def _side(side: str, step_s: float, **extra) -> dict:
    return {"side": side, "dtype": "bfloat16", "steps": 4, "step_times": [2 * step_s, step_s, step_s, step_s],
            "step_s": step_s, "completions_per_step": 8, "completions_per_s": 8 / step_s,
            "prompt_len_mean": 471.0, "wall_s": None, **extra}


@pytest.fixture
def compared(tmp_path, monkeypatch):
    written = {}
    monkeypatch.setattr(tc, "RESULTS", tmp_path)
    monkeypatch.setattr(tc, "write", lambda name, payload, text: written.update(payload=payload, text=text))

    def run(sides: dict) -> dict:
        for name, result in sides.items():
            (tmp_path / f"trl_compare_{name}.json").write_text(json.dumps({"result": result}))
        tc.compare()
        return written
    return run


def test_the_torch_side_bounds_what_a_faster_trainer_could_reach(compared):
    out = compared({"trl": _side("trl", 20.0, prompts="the tasks ours drew"),
                    "ours": _side("ours", 5.0, rollout_s=2.0, learner_s=3.0, push_s=0.0, run_dir="runs/a"),
                    "torch": _side("torch", 4.0, threads=2, ours_run_dir="runs/a")})
    assert out["payload"]["ratio"] == pytest.approx(4.0)
    assert "ratio ours/TRL: 4.00x (goal >= 10x: MISSED)" in out["text"]
    assert "plain torch fwd+bwd+AdamW on ours' groups (no rollout)" in out["text"]
    assert ("with a free rollout and a learner at PyTorch eager's speed a step would be 5.00x TRL's; "
            "10x needs 2.00 s/step for rollout and learner together") in out["text"]


def test_results_from_before_the_torch_side_still_compare(compared):
    out = compared({"trl": _side("trl", 20.0), "ours": _side("ours", 2.0, rollout_s=1.0, learner_s=1.0, push_s=0.0)})
    assert "ratio ours/TRL: 10.00x (goal >= 10x: met)" in out["text"]
    assert "plain torch" not in out["text"]


def test_a_torch_side_of_another_run_of_ours_is_left_out(compared):
    out = compared({"trl": _side("trl", 20.0),
                    "ours": _side("ours", 5.0, rollout_s=2.0, learner_s=3.0, push_s=0.0, run_dir="runs/b"),
                    "torch": _side("torch", 4.0, threads=2, ours_run_dir="runs/a")})
    assert "ratio ours/TRL: 4.00x" in out["text"]
    assert "plain torch" not in out["text"]
