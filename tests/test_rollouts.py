"""Rollouts by reference (toolexpander/rollouts.py) in real Ray: the driver holds light views and
ObjectRefs, the learner ranks fetch their rows; and the trainer's answer when rows are lost before that.
The real node loss is in tests/cluster/test_multinode.py."""

import pyarrow as pa


def fake_group(cfg, workers):
    from bench.driver_scale import SimulatedRolloutGroup

    return SimulatedRolloutGroup(cfg, workers)


def config(tmp_path, **train):
    from toolexpander.config import Config

    return Config.model_validate({
        "model": {"prepare": None}, "rollout": {"num_workers": 2, "n": 4},
        "sampler": {"batch_prompts": 4, "max_draw_rounds": 1, "all_fail_min_n": 4, "filter_zero_signal": False},
        "learner": {"weight_sync": "object_store"}, "train": {"steps": 4, **train},
        "logging": {"output_dir": str(tmp_path / "run")}})


def test_a_light_view_travels_as_one_ipc_stream_and_reads_back_whole():
    """What a rollout worker sends the driver (types.light_view_ipc) reads back as light_view's table:
    the same schema (nulls and the extra columns included) and the same values."""
    from toolexpander.types import REWARD_DIMS, ROLLOUT_SCHEMA, light_view, light_view_ipc, read_light

    rows = [dict(group_id=g, task_id=f"t{g}", subtask="single", demo_round=g % 2, num_demos=g, policy_version=7,
                 prompt_ids=list(range(3 + g)), completion_ids=[2] * g, logprobs=[-0.5] * g,
                 finish_reason=None if g == 2 else "stop", text="<tool_call>" if g else "no call",
                 reward_total=float(g), **{f"reward_{d}": 0.25 * g for d in REWARD_DIMS}) for g in range(3)]
    batch = pa.RecordBatch.from_pylist(rows, schema=ROLLOUT_SCHEMA)
    data = light_view_ipc(batch)
    assert isinstance(data, bytes)
    light = read_light(data)
    assert light.equals(light_view(batch), check_metadata=True)
    assert light.column("prompt_len").to_pylist() == [3, 4, 5]
    assert light.column("has_tool_call").to_pylist() == [False, True, True]
    assert light.column("finish_reason").to_pylist() == ["stop", "stop", None]


def lost_ref(value):
    """An ObjectRef of `value` whose owner (an actor that put it) then died: lost, as with its node.
    Returns once Ray knows (it tells the driver asynchronously)."""
    import time

    import ray

    from toolexpander.rollouts import LOST

    @ray.remote(num_cpus=0)
    class Owner:
        def hold(self, value):
            return [ray.put(value)]

    owner = Owner.remote()
    [lost] = ray.get(owner.hold.remote(value))
    ray.kill(owner)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            ray.get(lost, timeout=10)
        except LOST:
            return lost
        time.sleep(0.1)
    raise AssertionError("Ray never reported the object lost")


def test_rays_floor_times_bare_calls_beyond_their_delay(ray_local, train_tasks):
    """bench.driver_scale's baseline: `steps` bare fan-outs after a warm-up, each timed from the first
    call to the last answer, less the delay every call sleeps (so within [0, delay) for two idle workers;
    not subtracting it, or not waiting for the answers, falls outside)."""
    import ray

    from bench.driver_scale import FakeRolloutWorker, ray_floor
    from toolexpander.types import PromptRequest

    worker_cls = ray.remote(FakeRolloutWorker).options(num_cpus=0)
    workers = [worker_cls.remote(i, 0.0, 4, 4, 8, 4, seed=i) for i in range(2)]
    requests = [PromptRequest(task=t, demo_round=0, group_id=g) for g, t in enumerate(train_tasks[:3])]
    floor = ray_floor(workers, requests, 0.3, steps=2)
    assert len(floor) == 2 and all(0.0 <= f < 0.3 for f in floor), floor
    for w in workers:
        ray.kill(w)


def test_the_driver_holds_light_views_and_refs_and_fetches_rows_in_request_order(ray_local, train_tasks, tmp_path):
    import ray

    from bench.driver_scale import FakeRolloutWorker
    from toolexpander.rollouts import Rollouts
    from toolexpander.types import HEAVY_COLUMNS, ROLLOUT_SCHEMA, PromptRequest

    worker_cls = ray.remote(FakeRolloutWorker).options(num_cpus=0)
    workers = [worker_cls.remote(i, 0.0, 4, 4, 8, 4, seed=i) for i in range(2)]
    group = fake_group(config(tmp_path), workers)
    requests = [PromptRequest(task=t, demo_round=0, group_id=g)
                for t, g in zip(train_tasks[:5], [4, 0, 3, 1, 2])]
    rollouts, stats, lost = group.generate_refs(requests, step_seed=0)
    assert lost == [] and len(stats) == 2 and len(rollouts.parts) == 2
    light = rollouts.light
    assert not set(HEAVY_COLUMNS) & set(light.column_names)           # no token lists at the driver
    assert all(isinstance(p, ray.ObjectRef) for p in rollouts.parts)
    # request order (worker 0 got requests 0, 2, 4; worker 1 got 1, 3), a group's n rows together
    assert light.column("group_id").to_pylist() == [g for g in (4, 0, 3, 1, 2) for _ in range(4)]
    assert light.column("part").to_pylist() == [p for p in (0, 1, 0, 1, 0) for _ in range(4)]
    assert light.column("row").to_pylist()[:8] == [0, 1, 2, 3, 0, 1, 2, 3]
    full = rollouts.fetch()
    assert full.schema == ROLLOUT_SCHEMA and full.num_rows == 20
    assert full.column("group_id").to_pylist() == light.column("group_id").to_pylist()
    assert full.column("task_id").to_pylist() == light.column("task_id").to_pylist()
    assert pa.compute.list_value_length(full.column("prompt_ids")).to_pylist() == light.column("prompt_len").to_pylist()
    # kept groups, and a shard's localized parts: only the parts its rows name travel to its rank
    kept = rollouts.filter([0, 1])
    assert kept.light.column("group_id").to_pylist() == [0] * 4 + [1] * 4
    shard, refs, ids = kept.localize(kept.light.filter(pa.compute.equal(kept.light.column("group_id"), 1)))
    assert ids == [1] and refs == [rollouts.parts[1]] and set(shard.column("part").to_pylist()) == {0}
    both = Rollouts.concat([kept, rollouts.filter([2])])
    assert len(both.parts) == 4 and both.light.column("part").to_pylist()[-4:] == [2] * 4
    assert both.fetch().column("group_id").to_pylist() == [0] * 4 + [1] * 4 + [2] * 4
    assert both.without([2]).light.column("group_id").to_pylist() == [0] * 4 + [1] * 4
    for w in workers:
        ray.kill(w)


def test_rows_lost_before_the_learner_fetched_them_are_generated_again(ray_local, train_tasks, tmp_path):
    """The real Trainer over fake engines; the learner's rank finds the parts of step 1 lost (as when
    their node died after the rollout phase): no rank trains, the driver generates those groups again,
    the step is retried with the new rows, and the run goes on. Every step trains its full batch once;
    the sampler was told of each group once (one record call per draw)."""
    import types

    import ray

    from bench.driver_scale import FakeLearner, FakeRolloutWorker, close_simulated, simulated_trainer

    class LosingLearner(FakeLearner):
        def __init__(self):
            self.calls, self.trained = 0, []

        def step_parts(self, light, refs, ids, step_seed=0, train_step=None, padding=0):
            self.calls += 1
            if self.calls == 2:
                return None, list(ids)
            return super().step_parts(light, refs, ids, step_seed, train_step, padding)

        def step(self, table, step_seed=0, train_step=None, padding=0):
            self.trained.append((train_step, table.column("group_id").to_pylist(),
                                 table.column("task_id").to_pylist()))
            return super().step(table, step_seed, train_step)

        def log(self):
            return self.trained

    class CountingWorker(FakeRolloutWorker):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.asked = []

        def generate(self, requests, step_seed=0, **kwargs):
            self.asked.append(sorted(r.group_id for r in requests))
            return super().generate(requests, step_seed, **kwargs)

        def log(self):
            return self.asked

    worker_cls = ray.remote(CountingWorker).options(num_cpus=0, max_concurrency=1)
    workers = [worker_cls.remote(i, 0.0, 4, 4, 8, 4, seed=i) for i in range(2)]
    learner = ray.remote(LosingLearner).options(num_cpus=0).remote()
    trainer = simulated_trainer(config(tmp_path), train_tasks[:24], workers, learner)
    events = []
    trainer.metrics = types.SimpleNamespace(event=lambda step, kind, message: events.append((step, kind, message)))
    records, sampler = [], trainer.sampler

    class CountingSampler:   # the real sampler actor; record() calls counted on the way
        def __getattr__(self, name):
            return getattr(sampler, name)

        record = types.SimpleNamespace(remote=lambda t: records.append(t.num_rows) or sampler.record.remote(t))

    trainer.sampler = CountingSampler()
    for _ in range(4):
        m = trainer.train_step()
        assert m["learner/groups"] == 4
        trainer.step += 1
    trainer.sampler = sampler
    trained = ray.get(learner.log.remote())
    asked = [ray.get(w.log.remote()) for w in workers]
    close_simulated(trainer)
    assert [(s, kind) for s, kind, _ in events] == [(1, "rows_lost")]
    assert "generating their 4 prompt(s) again" in events[0][2]
    assert [s for s, _, _ in trained] == [0, 1, 2, 3]                 # step 1 trained once, after the retry
    assert all(len(set(groups)) == 4 and len(groups) == 16 for _, groups, _ in trained), trained
    # four steps' draws (group ids run on over steps: 4 per step), each dealt over both workers, and one
    # more call each, in step 1, right after its draw: step 1's four groups again
    assert [len(calls) for calls in asked] == [5, 5]
    assert sorted(asked[0][2] + asked[1][2]) == [4, 5, 6, 7]
    assert sorted(g for calls in asked for call in calls for g in call) == sorted([*range(16), 4, 5, 6, 7])
    assert [sorted(set(groups)) for _, groups, _ in trained] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11],
                                                                 [12, 13, 14, 15]]
    assert records == [16] * 4                                         # the sampler heard of every group once


def test_carried_weights_reach_each_worker_once_with_its_next_generate_call(ray_local, train_tasks, tmp_path):
    """Object-store weight sync: RolloutGroup.carry(version, ref) sends the ref with the next generate
    call of each worker behind it (no push call); a worker without work this time gets it with its
    next call; one that holds it is not sent it again; its rows carry the version."""
    import numpy as np
    import ray

    from bench.driver_scale import FakeRolloutWorker
    from toolexpander.types import PromptRequest

    class LoadCounting(FakeRolloutWorker):
        loads = 0

        def update_weights(self, version, named_tensors):
            assert [name for name, _ in named_tensors] == ["w"]   # the ref arrives resolved
            self.loads += 1
            return super().update_weights(version, named_tensors)

        def loaded(self):
            return self.loads

    worker_cls = ray.remote(LoadCounting).options(num_cpus=0)
    workers = [worker_cls.remote(i, 0.0, 4, 4, 8, 4, seed=i) for i in range(2)]
    group = fake_group(config(tmp_path), workers)
    requests = [PromptRequest(task=t, demo_round=0, group_id=g) for g, t in enumerate(train_tasks[:2])]
    group.carry(1, ray.put([("w", np.zeros(1, np.float32))]))
    first, _, _ = group.generate_refs(requests[:1], step_seed=0)        # only worker 0 has work
    assert [ray.get(w.loaded.remote()) for w in workers] == [1, 0]
    second, _, _ = group.generate_refs(requests, step_seed=0)           # worker 1 catches up, 0 is not sent it
    assert [ray.get(w.loaded.remote()) for w in workers] == [1, 1]
    group.generate_refs(requests, step_seed=0)
    assert [ray.get(w.loaded.remote()) for w in workers] == [1, 1]
    assert set(first.light.column("policy_version").to_pylist()) == {1}
    assert set(second.light.column("policy_version").to_pylist()) == {1}
    group.carry(2, ray.put([("w", np.ones(1, np.float32))]))
    third, _, _ = group.generate_refs(requests, step_seed=0)
    assert [ray.get(w.loaded.remote()) for w in workers] == [2, 2]
    assert set(third.light.column("policy_version").to_pylist()) == {2}
    for w in workers:
        ray.kill(w)


def test_weights_lost_with_the_learner_node_end_the_attempt_as_the_learner_s_death(ray_local, train_tasks, tmp_path):
    """The weights the workers are to load with their next generate call (object-store sync) live in
    learner rank 0's node's object store; lost with it, every call carrying them fails however often its
    worker is replaced. check_weights tells that apart from a dead rollout worker: WorkerDied for the
    learner (train() restarts the run from its checkpoint), not "rollout worker died twice"."""

    import numpy as np
    import pytest
    import ray

    from bench.driver_scale import FakeRolloutWorker
    from toolexpander.actors.group import WorkerDied
    from toolexpander.types import PromptRequest

    worker_cls = ray.remote(FakeRolloutWorker).options(num_cpus=0)
    workers = [worker_cls.remote(i, 0.0, 4, 4, 8, 4, seed=i) for i in range(2)]
    group = fake_group(config(tmp_path), workers)
    group.timeout_s = 30.0
    requests = [PromptRequest(task=t, demo_round=0, group_id=g) for g, t in enumerate(train_tasks[:2])]
    group.carry(1, ray.put([("w", np.ones(1 << 16, np.float32))]))
    group.check_weights()                                   # alive: nothing to say
    group.carry(2, lost_ref([("w", np.zeros(1 << 16, np.float32))]))
    rollouts, _, failed = group.generate_refs(requests, step_seed=0)
    assert rollouts is None and [i for i, _ in failed] == [0, 1]   # the workers live; their calls failed
    with pytest.raises(WorkerDied, match="learner rank 0 died") as died:
        group.check_weights()
    assert died.value.role == "learner rank"
    for w in workers:
        ray.kill(w)


def test_rows_lost_before_a_checkpoint_saved_a_queued_phase_are_generated_again(ray_local, train_tasks, tmp_path):
    """max_staleness 1: step 1's rollout phase is queued when the checkpoint after step 0 is taken, and
    one of its parts is lost (its owner died) before Trainer.save fetched it: save generates those
    groups again, the checkpoint holds step 1's full batch, and step 1 then trains those rows."""
    import types
    from pathlib import Path

    import pyarrow.parquet as pq
    import ray

    from bench.driver_scale import FakeLearner, FakeRolloutWorker, close_simulated, simulated_trainer
    from toolexpander.overlap import PREFETCH_DIR

    class SavingLearner(FakeLearner):
        trained = []

        def save(self, path, client):
            Path(path).mkdir(parents=True, exist_ok=True)
            (Path(path) / "rank_0.json").write_text("{}")

        def step(self, table, step_seed=0, train_step=None, padding=0):
            self.trained.append((train_step, table.column("group_id").to_pylist()))
            return super().step(table, step_seed, train_step)

        def log(self):
            return self.trained

    worker_cls = ray.remote(FakeRolloutWorker).options(num_cpus=0, max_concurrency=1)
    workers = [worker_cls.remote(i, 0.0, 4, 4, 8, 4, seed=i) for i in range(2)]
    learner = ray.remote(SavingLearner).options(num_cpus=0).remote()
    trainer = simulated_trainer(config(tmp_path, max_staleness=1), train_tasks[:24], workers, learner)
    events = []
    trainer.metrics = types.SimpleNamespace(event=lambda step, kind, message: events.append((step, kind, message)),
                                            flush=lambda: None)
    trainer.run_dir = tmp_path / "run"
    trainer.location = str(tmp_path / "run")
    trainer.ckpt_root = str(tmp_path / "run" / "checkpoints")
    trainer.train_step()
    trainer.step += 1
    [phase] = trainer.drain()                            # step 1's, generated while step 0 trained
    assert phase["step"] == 1 and sorted(set(phase["batch"].light.column("group_id").to_pylist())) == [4, 5, 6, 7]
    phase["batch"].parts[0] = lost_ref(ray.get(phase["batch"].parts[0]))
    saved = Path(trainer.save())
    assert [(s, kind) for s, kind, _ in events] == [(1, "rows_lost")]
    assert events[0][2].startswith("step 1: the rollout rows of part(s) [0] were lost")
    rows = pq.read_table(saved / PREFETCH_DIR / "step_000001" / "batch.parquet")
    assert rows.num_rows == 16 and sorted(set(rows.column("group_id").to_pylist())) == [4, 5, 6, 7]
    trainer.train_step()                                 # step 1 trains the regenerated batch, fetched anew
    trainer.step += 1
    trained = ray.get(learner.log.remote())
    close_simulated(trainer)
    assert [s for s, _ in trained] == [0, 1] and sorted(set(trained[1][1])) == [4, 5, 6, 7]
    assert len(trained[1][1]) == 16
