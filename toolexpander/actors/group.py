"""Groups of Ray actors: N rollout workers and the learner's ranks, each in a placement group.

RolloutGroup splits a prompt batch evenly over its workers and gathers the light views of their
answers in order, the full rows staying in the object store (rollouts.Rollouts); LearnerGroup runs the
same call on every rank, each fetching its own shard's rows. A dead actor raises WorkerDied naming it.
"""

from __future__ import annotations

import threading
import time
import warnings

import pyarrow as pa
import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from toolexpander.actors.rollout import RolloutWorker
from toolexpander.config import Config
from toolexpander.learner.shards import shard_tables
from toolexpander.rollouts import LOST, Rollouts, RowsLost, get_each
from toolexpander.types import PromptRequest, RolloutStats, read_light


class WorkerDied(RuntimeError):
    def __init__(self, role: str, index: int, cause: Exception):
        self.role, self.index = role, index
        super().__init__(f"{role} {index} died: {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}")


# What a bundle asks of a role's node_resource: enough to need a node that has it, small enough that
# any node marked with it (amount 1 and up) holds as many bundles as its CPUs and GPUs allow.
NODE_MARK = 0.001


def _bundles(n: int, cpus: float, gpus: float, node_resource: str | None) -> list[dict[str, float]]:
    bundle = ({"CPU": cpus} | ({"GPU": gpus} if gpus > 0 else {})
              | ({node_resource: NODE_MARK} if node_resource else {}))
    return [dict(bundle) for _ in range(n)]


def bundle_nodes(pg) -> list[str]:
    """The node id of each bundle of a placement group, in bundle order."""
    nodes = ray.util.placement_group_table(pg)["bundles_to_node_id"]
    return [nodes.get(i, "") for i in range(len(nodes))]


def _placed(pg, index: int):
    return PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=index)


class WorkerHung(WorkerDied):
    """An actor call that did not return within cluster.call_timeout_s."""

    def __init__(self, role: str, index: int, timeout_s: float):
        self.role, self.index = role, index
        RuntimeError.__init__(self, f"{role} {index} did not answer within {timeout_s:g} s "
                                    f"(cluster.call_timeout_s): hung or far slower than expected")


def _get(refs: list, role: str, timeout_s: float | None = None) -> list:
    """ray.get of every ref within one deadline, naming the actor that died (WorkerDied) or did not
    answer in time (WorkerHung)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    out = []
    for i, ref in enumerate(refs):
        try:
            out.append(ray.get(ref, timeout=None if deadline is None else max(0.0, deadline - time.monotonic())))
        except LOST as e:
            raise WorkerDied(role, i, e) from e
        except ray.exceptions.GetTimeoutError:
            raise WorkerHung(role, i, timeout_s) from None
    return out


def wait_placed(pg, role: str, bundles: list[dict], timeout_s: float) -> None:
    """Wait for a placement group, or stop saying what it asked for and what the cluster has."""
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise PlacementTimeout(
            f"{role}: {len(bundles)} bundle(s) of {bundles[0]} not placed within {timeout_s:g} s "
            f"(cluster.placement_timeout_s); the cluster has {ray.cluster_resources()}, free now "
            f"{ray.available_resources()}") from None


def deal(requests: list, workers: int) -> list[list]:
    """Each worker's shard of a generate call: request i to worker i % workers."""
    return [requests[i::workers] for i in range(workers)]


class PlacementTimeout(RuntimeError):
    pass


class RolloutGroup:
    def __init__(self, cfg: Config, model_path: str):
        r = cfg.rollout
        self.cfg, self.model_path = cfg, model_path
        self.timeout_s = cfg.cluster.call_timeout_s
        gpus = r.gpus_per_worker * r.tensor_parallel_size
        bundles = _bundles(r.num_workers, r.cpus_per_worker, gpus, r.node_resource)
        self.pg = placement_group(bundles, strategy=cfg.cluster.placement_strategy)
        wait_placed(self.pg, "rollout workers", bundles, cfg.cluster.placement_timeout_s)
        self.workers = [self._spawn(i) for i in range(r.num_workers)]
        self.held: dict[int, int] = {}   # worker -> the policy version its engine holds (absent: 0)
        self.ready()

    # Object-store weight sync: the version every engine should hold and its ObjectRef (WeightSync.land
    # with defer=True). A worker behind it loads it at the start of its next generate call: one call per
    # worker and step instead of a push call and a generate call.
    carried: tuple[int, object] | None = None

    def carry(self, version: int, weights_ref) -> None:
        self.carried = (version, weights_ref)

    def _spawn(self, index: int):
        r = self.cfg.rollout
        actor = ray.remote(RolloutWorker).options(
            num_cpus=r.cpus_per_worker, num_gpus=r.gpus_per_worker * r.tensor_parallel_size,
            scheduling_strategy=_placed(self.pg, index), name=None, max_concurrency=1)
        return actor.remote(index, self.model_path, r.model_dump(), self.cfg.reward.model_dump(),
                            self.cfg.model.dtype)

    def ready(self) -> list[dict]:
        return _get([w.info.remote() for w in self.workers], "rollout worker", self.timeout_s)

    def restart(self, index: int) -> None:
        """Replace a dead (or hung) worker with a fresh one in the same bundle (weights: call push after)."""
        try:
            ray.kill(self.workers[index], no_restart=True)
        except ValueError:
            pass  # not an actor handle any more: nothing to kill
        self.workers[index] = self._spawn(index)
        self.held[index] = 0   # the initial weights: a carried version reaches it with its next call
        _get([self.workers[index].info.remote()], "rollout worker", self.timeout_s)

    def heal(self) -> list[int]:
        """Restart every worker that no longer answers; returns their indices."""
        dead = []
        for i, w in enumerate(self.workers):
            try:
                ray.get(w.info.remote(), timeout=self.timeout_s)
            except (*LOST, ray.exceptions.GetTimeoutError):
                dead.append(i)
        for i in dead:
            self.restart(i)
        return dead

    def generate_refs(self, requests: list[PromptRequest], step_seed: int, **kwargs
                      ) -> tuple[Rollouts | None, list[RolloutStats], list[tuple[int, list[PromptRequest]]]]:
        """All workers in parallel; returns the rows by reference (light views in request order, each
        worker's full batch left in its node's object store) and per-worker stats.
        On a dead worker (or one whose result was lost with its node), the rows of the live ones come
        back and `lost` lists (worker, requests); a worker that has not answered within
        cluster.call_timeout_s is killed and counted lost the same way."""
        shards = deal(requests, len(self.workers))
        carried = self.carried
        calls = [(i, *w.generate_split.options(num_returns=2).remote(shard, step_seed, *self._weights_for(i, carried), **kwargs))
                 for i, (w, shard) in enumerate(zip(self.workers, shards)) if shard]
        # One wait and one get for every answer (the driver's cost per worker is Ray's per call).
        metas = [meta for _, meta, _ in calls]
        done = set(ray.wait(metas, num_returns=len(metas), timeout=self.timeout_s)[0]) if metas else set()
        answers = dict(zip(done, get_each(list(done))))
        lights, refs, answered, stats, lost = [], [], [], [], []
        for i, meta, full in calls:
            if meta not in done:
                warnings.warn(f"rollout worker {i} did not answer within {self.timeout_s:g} s "
                              "(cluster.call_timeout_s): killing it; its prompts are re-issued", stacklevel=2)
                ray.kill(self.workers[i], no_restart=True)
                lost.append((i, shards[i]))
                continue
            if answers[meta] is None:
                lost.append((i, shards[i]))
                continue
            light, stat = answers[meta]
            lights.append(read_light(light))
            refs.append(full)
            answered.append(shards[i])
            stats.append(stat)
            if carried is not None:
                self.held[i] = carried[0]
        rollouts = (Rollouts.from_parts(lights, refs, answered, [r.group_id for r in requests])
                    if lights else None)
        return rollouts, stats, lost

    def generate(self, requests: list[PromptRequest], step_seed: int, **kwargs
                 ) -> tuple[pa.Table | None, list[RolloutStats], list[tuple[int, list[PromptRequest]]]]:
        """generate_refs with the full rows fetched to the caller, in request order (evaluation,
        benchmarks, tests: the training loop keeps them by reference)."""
        rollouts, stats, lost = self.generate_refs(requests, step_seed, **kwargs)
        return (rollouts.fetch() if rollouts is not None else None), stats, lost

    def _weights_for(self, index: int, carried: tuple | None) -> tuple:
        """(version, weights ref) for a generate call to a worker behind `carried`, else (None, None)."""
        if carried is None or self.held.get(index, 0) == carried[0]:
            return None, None
        return carried

    def check_weights(self) -> None:
        """Raises WorkerDied for learner rank 0 when the weights the workers are to load next (the carried
        ref, in rank 0's node's object store) died with that node: a generate call carrying them would
        fail however often its worker is replaced, and the run must restart from its checkpoint.
        Fetches them (a copy on the driver's node), so it is called on the failure path only."""
        if self.carried is None:
            return
        try:
            ray.get(self.carried[1], timeout=self.timeout_s)
        except LOST as e:
            raise WorkerDied("learner rank", 0, e) from None
        except ray.exceptions.GetTimeoutError:   # not known to be lost: the caller goes on as before
            warnings.warn(f"the staged weights (version {self.carried[0]}) could not be fetched within "
                          f"{self.timeout_s:g} s (cluster.call_timeout_s) to check them", stacklevel=2)

    def push(self, version: int, weights_ref) -> float:
        """Load `weights_ref` (an ObjectRef of [(name, array)]) into every worker; slowest worker's seconds."""
        seconds = _get([w.update_weights.remote(version, weights_ref) for w in self.workers], "rollout worker",
                       self.timeout_s)
        self.carried, self.held = (version, weights_ref), {i: version for i in range(len(self.workers))}
        return max(seconds)

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w, no_restart=True)
        remove_placement_group(self.pg)


class LearnerGroup:
    def __init__(self, cfg: Config, model_path: str, pad_id: int):
        from toolexpander.learner.learner import Learner

        lc = cfg.learner
        self.dtype = cfg.model.dtype  # the rollout engines' too: pushes carry it
        self.timeout_s = cfg.cluster.call_timeout_s
        bundles = _bundles(lc.world_size, lc.cpus_per_rank, lc.gpus_per_rank, lc.node_resource)
        self.pg = placement_group(bundles, strategy=cfg.cluster.placement_strategy)
        wait_placed(self.pg, "learner ranks", bundles, cfg.cluster.placement_timeout_s)
        cls = ray.remote(Learner)
        self.ranks = [cls.options(num_cpus=lc.cpus_per_rank, num_gpus=lc.gpus_per_rank,
                                  scheduling_strategy=_placed(self.pg, r)).remote(
            r, lc.world_size, None, None, model_path, lc.model_dump(), cfg.model.dtype,
            cfg.train.seed, pad_id, cfg.rollout.temperature) for r in range(lc.world_size)]
        # Rank 0 listens on its own node first (a port the kernel gave it, held open), then all join.
        master_addr, port = _get([self.ranks[0].rendezvous.remote()], "learner rank", self.timeout_s)[0]
        self.call("start", master_addr, port)

    def call(self, method: str, *args, **kwargs) -> list:
        """The same method on every rank (collectives need them all); one result per rank."""
        return _get([getattr(r, method).remote(*args, **kwargs) for r in self.ranks], "learner rank", self.timeout_s)

    def step(self, rollouts: Rollouts | pa.Table, step_seed: int, train_step: int | None = None
             ) -> dict[str, float]:
        """One GRPO step on every rank, each given only its own groups: dealt by tokens
        (learner/shards.py) from the light view, padded to the same count with zero-advantage copies of
        the rank's shortest group; each rank fetches its rows' parts from the object store itself.
        A full table (tests, benchmarks) is put there first. Returns rank 0's metrics (the ranks
        reduce them among themselves); raises RowsLost when a part was lost before the ranks fetched it."""
        if isinstance(rollouts, pa.Table):
            rollouts = Rollouts.from_table(rollouts)
        light = rollouts.light
        shards = [(light, 0)] if len(self.ranks) == 1 else shard_tables(light, len(self.ranks))
        calls = []
        for r, (shard, pad) in zip(self.ranks, shards):
            shard, refs, ids = rollouts.localize(shard)
            calls.append(r.step_parts.remote(shard, refs, ids, step_seed, train_step, padding=pad))
        results = _get(calls, "learner rank", self.timeout_s)
        lost = [i for _, rank_lost in results for i in rank_lost]
        if lost:
            raise RowsLost(lost)
        return results[0][0]

    def weights_ref(self):
        """Rank 0's full weights in the engines' dtype, left in the object store; every rank joins the gather."""
        refs = [r.named_weights.remote(self.dtype) for r in self.ranks]
        _get(refs[1:], "learner rank", self.timeout_s)
        return refs[0]

    def shutdown(self) -> None:
        for r in self.ranks:
            ray.kill(r, no_restart=True)
        remove_placement_group(self.pg)


class WeightSync:
    """Learner -> every rollout worker, with a policy version: a broadcast group (gloo on CPU, NCCL
    on GPUs) or, as the fallback, Ray's object store."""

    def __init__(self, learner: LearnerGroup, rollout: RolloutGroup, cfg: Config):
        import torch

        mode = cfg.learner.weight_sync
        if mode == "auto":  # on CPU the object store measured faster than gloo (bench/weight_push.py)
            mode = "nccl" if cfg.rollout.gpus_per_worker > 0 and torch.cuda.is_available() else "object_store"
        self.mode, self.learner, self.rollout = mode, learner, rollout
        self.tp = cfg.rollout.tensor_parallel_size
        self.bucket_bytes = cfg.learner.weight_sync_bucket_mb << 20
        self.timeout_s = cfg.learner.weight_sync_timeout_s
        # The driver's bound on each call: gloo gives up on a dead member by itself (timeout_s); an
        # NCCL broadcast (vLLM's PyNcclCommunicator) cannot be aborted, so a push that meets a dead
        # member stops the run here, naming the actor, instead of hanging (resume from the checkpoint).
        self.call_timeout_s = cfg.cluster.call_timeout_s
        # Object store only: the weights of every version gathered (stage) and not yet superseded in the
        # engines, and of the version the engines hold (land), as ObjectRefs: a push can wait for the
        # engines to be idle without the learner waiting with it; each rollout phase lands the version it
        # was admitted with (so the version that generates a batch never depends on timing); a replaced
        # worker gets the other workers' version without asking the (maybe busy) learner.
        self.staged: dict[int, object] = {}
        self.landed: tuple[int, object | None] = (0, None)   # version 0: the weights the engines started with
        self._lock = threading.Lock()   # stage() in the driver's thread, land() in a rollout phase's
        if mode != "object_store":
            self.connect()

    @property
    def stages(self) -> bool:
        """Whether a push can be split into stage (learner side) and land (engine side)."""
        return self.mode == "object_store"

    def stage(self, version: int) -> float:
        """Object store: gather `version`'s weights from the learner now (it is idle between steps),
        to be loaded into the engines by land() once they are idle. Returns the gather's seconds."""
        start = time.perf_counter()
        ref = self.learner.weights_ref()
        with self._lock:
            self.staged[version] = ref
        return time.perf_counter() - start

    def land(self, version: int | None = None, defer: bool = False) -> tuple[float, int | None]:
        """Load `version` into every worker unless the engines hold it already (the caller makes sure no
        generation is in flight): a rollout phase (defer=True) lands the version it was admitted with, or
        in the synchronous loop (no `version`) the newest staged, and staged versions older than it are
        dropped (phases run in step order: no later one needs them); an evaluation (defer=False, no
        `version`) lands the newest and drops nothing (a phase queued ahead may still land an older one).
        defer=True: the weights are not pushed now but carried with each worker's next generate call
        (RolloutGroup.carry), which loads them before it generates (their seconds come back in
        RolloutStats.land_s). Returns (seconds, the version landed or None).

        Until 2026-12-03 the synchronous loop's phases dropped nothing: every version's weights stayed
        referenced, so the object store grew by one copy of the model per step (measured: 18 objects,
        4.6 GB pinned at step 17 of a SmolLM2 run) and would then spill to disk step after step."""
        prune = defer or version is not None
        with self._lock:
            if version is None:
                version = max(self.staged, default=0)
            if self.landed[0] == version:
                if prune:
                    self._drop_older(version)
                return 0.0, None
            if version not in self.staged:
                raise RuntimeError(f"internal: weights of policy version {version} were never staged "
                                   f"(staged: {sorted(self.staged)}, engines: {self.landed[0]})")
            landing = (version, self.staged[version])
        if defer:
            self.rollout.carry(*landing)
            seconds = 0.0
        else:
            seconds = self.rollout.push(*landing)
        with self._lock:
            self.landed = landing
            if prune:
                self._drop_older(version)
        return seconds, version

    def _drop_older(self, version: int) -> None:
        """(lock held) Forget the staged weights older than `version`: their object-store copies are freed."""
        for old in [v for v in self.staged if v < version]:
            del self.staged[old]

    def connect(self) -> None:
        """(Re)build the broadcast group; needed again after a worker is replaced."""
        if self.mode == "object_store":
            return
        meta = self.learner.call("weight_meta")[0]
        host, port = _get([self.learner.ranks[0].sync_endpoint.remote()], "learner rank", self.call_timeout_s)[0]
        world = 1 + len(self.rollout.workers) * self.tp
        refs = [r.init_weight_group.remote(self.mode, host, port, world, self.bucket_bytes, self.learner.dtype,
                                           self.timeout_s) for r in self.learner.ranks]
        refs += [w.init_weight_group.remote(self.mode, host, port, 1 + i * self.tp, world, meta,
                                            self.bucket_bytes, self.timeout_s)
                 for i, w in enumerate(self.rollout.workers)]
        _get(refs, "weight-sync member", self.call_timeout_s)

    def push_healing(self, version: int) -> tuple[float, list[int], str]:
        """push(version); when it fails because rollout workers died (a dead receiver, or a broadcast
        that gave up on one after learner.weight_sync_timeout_s), replace them, rebuild the group and
        push again. Returns (seconds of the push that landed, replaced worker indices, the error)."""
        try:
            return self.push(version), [], ""
        except (WorkerDied, ray.exceptions.RayTaskError) as e:
            dead = self.rollout.heal()
            if not dead:
                raise
            self.connect()
            return self.push(version), dead, type(e).__name__

    def push(self, version: int) -> float:
        """Seconds until every worker holds `version` (gather, transfer, load, cache reset)."""
        if self.mode == "object_store":
            landing = (version, self.learner.weights_ref())
            seconds = self.rollout.push(*landing)   # always: also after a heal, at the same version
            with self._lock:
                self.staged[version] = landing[1]
                self.landed = landing
            return seconds
        start = time.perf_counter()
        senders = [r.broadcast_weights.remote() for r in self.learner.ranks]
        receivers = [w.receive_weights.remote(version) for w in self.rollout.workers]
        _get(receivers, "rollout worker", self.call_timeout_s)
        _get(senders, "learner rank", self.call_timeout_s)
        self.landed = (version, None)
        return time.perf_counter() - start
