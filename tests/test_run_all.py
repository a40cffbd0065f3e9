"""bench/run_all.py's report: a benchmark with no JSON here (a fresh clone: bench/results/ is not
committed) keeps its section and goal rows from the RESULTS.md being replaced, marked as an earlier
run with that file's machine, and keeps its first origin across later rewrites. Hand-made files, no
benchmark runs."""

import json

from bench import run_all

EARLIER = f"""# Benchmark results

Written by `python -m bench.run_all` on 2026-12-01T10:00:00+00:00. Machine: 2 cores (CPU A, avx2), 8 GB; torch x.

## Goals

| benchmark | what | goal | measured | met |
|---|---|---|---|---|
| overlap | K=1 step time / max(rollout, learner) | <= 1.1x | 1.04x | yes |
| driver_scale | driver overhead share, 16 workers | <= 5% | 16.9% (earlier run) | **no** |

## overlap

`python -m bench.overlap --steps 4` on 2026-12-01T09:00:00+00:00, 1-min load average at the end 1.2 on 2 cores

```
overlap table
```

## driver_scale

not run (no bench/results/driver_scale.json): --skip.

{run_all.MARKER}

## Analysis

by hand
"""


def weight_push_json(results):
    machine = {"nproc": 2, "cpu": "CPU B", "isa": ["avx2"], "loadavg_1m": 0.5, "date": "2026-12-04T15:00:00+00:00"}
    (results / "weight_push.json").write_text(json.dumps({
        "argv": ["--reps", "3"], "machine": machine, "table": "push table",
        "goals": [{"name": "push", "value": 0.3, "goal": "<= 0.35 s", "unit": " s", "met": True}]}))


def test_sections_without_json_are_kept_from_the_file_being_replaced(tmp_path, monkeypatch):
    monkeypatch.setattr(run_all, "RESULTS", tmp_path)
    weight_push_json(tmp_path)
    text = run_all.report({"overlap": "not in --only"}, "2026-12-04T14:00:00+00:00", EARLIER)

    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| benchmark")]
    assert rows == [
        "| weight_push | push | <= 0.35 s | 0.3 s | yes |",
        "| overlap | K=1 step time / max(rollout, learner) | <= 1.1x | 1.04x (earlier run) | yes |",
    ]
    overlap = text.split("## overlap\n\n", 1)[1].split("\n## ", 1)[0]
    assert overlap.startswith("**Not measured in this run: not in --only.** These are the results of an earlier run:\n"
                              "(kept from the RESULTS.md written by `python -m bench.run_all` on "
                              "2026-12-01T10:00:00+00:00. Machine: 2 cores (CPU A, avx2), 8 GB; torch x; where")
    assert "`python -m bench.overlap --steps 4` on 2026-12-01T09:00:00+00:00" in overlap
    assert "```\noverlap table\n```" in overlap
    # a section that was 'not run' has nothing to keep
    assert "## driver_scale\n\nnot run (no bench/results/driver_scale.json)." in text
    # a measured section names its own machine
    assert "`python -m bench.weight_push --reps 3` on 2026-12-04T15:00:00+00:00, 2 cores (CPU B, avx2)" in text


def test_a_kept_section_keeps_its_first_origin_when_kept_again(tmp_path, monkeypatch):
    monkeypatch.setattr(run_all, "RESULTS", tmp_path)
    once = run_all.report({}, None, EARLIER)
    twice = run_all.report({}, None, once + "\n" + run_all.MARKER)

    def overlap(text):
        return text.split("## overlap\n\n", 1)[1].split("\n## ", 1)[0]

    assert overlap(twice) == overlap(once)
    assert overlap(twice).count("(kept from") == 1
    assert "1.04x (earlier run) |" in twice and "(earlier run) (earlier run)" not in twice


def test_the_gpu_page_replaces_its_own_section_and_keeps_the_others(tmp_path, monkeypatch):
    from bench import common

    page = tmp_path / "GPU.md"
    monkeypatch.setattr(common, "GPU_PAGE", page)
    monkeypatch.setattr(common, "REPO", tmp_path)
    page.write_text("# GPU measurements\n\n## learner_memory\n\nkept body\n\n## learner (m)\n\nold body\n")
    result = tmp_path / "r.json"
    result.write_text(json.dumps({
        "argv": ["--device", "cuda"], "table": "new table", "gpu": "GPU X",
        "machine": {"date": "2026-12-04T16:00:00+00:00", "nproc": 16, "cpu": "CPU C", "torch": "2",
                    "deepspeed": "0.1", "transformers": "5"}}))
    common.gpu_page("learner (m)", result)
    text = page.read_text()
    assert "## learner_memory\n\nkept body\n" in text
    assert "old body" not in text
    assert ("## learner (m)\n\n`python -m bench.learner --device cuda`, 2026-12-04T16:00:00+00:00, on GPU X with 16 CPU "
            "cores (CPU C); torch 2, deepspeed 0.1, transformers 5.\n\n```\nnew table\n```\n") in text
