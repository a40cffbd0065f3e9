"""The training driver, top to bottom: config -> Ray -> actors -> loop.

Each step: sampler.next_batch -> rollout.generate (all workers in parallel) -> sampler.record
(refill until B informative groups or the draw budget) -> learner.step -> push weights -> metrics
-> eval every K steps -> checkpoint every K steps. SIGTERM/Ctrl-C finish the step, checkpoint, exit 0.
With train.max_staleness K >= 1 the sampler/rollout parts of the next K steps run one after another in
threads (Prefetch) while learner.step runs; a Gate keeps weight pushes out of their generations.
"""

from __future__ import annotations

import gc
import json
import signal
import time
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from toolexpander import storage
from toolexpander.config import Config, absolute_paths, dump_config
from toolexpander.data import DataError, load_tasks
from toolexpander.learner import checkpoint
from toolexpander.metrics import MetricsWriter, Progress, reward_metrics
from toolexpander.models import ensure_model
from toolexpander.overlap import PREFETCH_DIR, Gate, Prefetch, TrainError, load_phases, save_phases
from toolexpander.rollouts import Rollouts, RowsLost, retry_lost
from toolexpander.sampling.sampler import RECORD_COLUMNS
from toolexpander.trainset import load_tokenizer, subtask_mix, training_tasks

CLOSE_WAIT_S = 300.0   # Trainer.close: how long a cancelled rollout phase may take to stop


class StopFlag:
    """SIGTERM / SIGINT ask the loop to stop after the current step."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C abandons the step
            raise KeyboardInterrupt
        self.requested = True
        print(f"\nreceived {signal.Signals(signum).name}: finishing this step, then saving a checkpoint",
              flush=True)


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, resume: bool, save_rollouts: str | None,
                 mode: str | None = None):
        """mode: the Ray session a previous attempt of this run left up ("local" or the address it
        attached to); None connects (cluster.local.connect)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from toolexpander.actors.group import LearnerGroup, RolloutGroup, WeightSync
        from toolexpander.cluster.local import connect
        from toolexpander.sampling.sampler import Sampler

        self.cfg, self.run_dir = cfg, run_dir
        self.save_rollouts = Path(save_rollouts) if save_rollouts else None
        self.model_path = ensure_model(cfg.model.path, cfg.model.prepare)
        rows = load_tasks(cfg.data.train_path)[: cfg.data.limit]   # a bad row refuses to start before Ray
        # Start-up runs side by side, each part mostly in processes of its own or waiting on them: the
        # tokenizer's import (seconds) with Ray's start; then the engines (the slowest) and the learner's
        # ranks load while the driver tokenizes every prompt to keep those that fit; neither group needs
        # the other until the first weight push.
        with ThreadPoolExecutor(max_workers=2) as pool:
            tokenizer = pool.submit(load_tokenizer, self.model_path)
            self.mode = mode or connect(cfg, log_dir=run_dir / "logs")
            rollout = pool.submit(RolloutGroup, cfg, str(self.model_path))
            tokenizer = tokenizer.result()
            learner = pool.submit(LearnerGroup, cfg, str(self.model_path), tokenizer.pad_token_id or 0)
            tasks, too_long, long_answers = training_tasks(cfg, self.model_path, rows, tokenizer)
            # The sampler holds the run's per-prompt state: it lives on the driver's node (the head under
            # `ray job submit`), never on a rollout or learner node that may be lost mid-run.
            here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
            # Demos from the file's rows only where those are more than the prompts (data.subset, rows too
            # long to draw): the same rows twice would double what the sampler actor is sent.
            file_pool = cfg.sampler.demo_pool == "file" and cfg.sampler.hard_rounds and len(rows) > len(tasks)
            self.sampler = ray.remote(Sampler).options(num_cpus=0, scheduling_strategy=here).remote(
                cfg.sampler.model_dump(), tasks, cfg.reward.exemplar_bonus, cfg.reward.weights,
                rows if file_pool else None)
            self.rollout, self.learner = rollout.result(), learner.result()
        self.sync = WeightSync(self.learner, self.rollout, cfg)
        self.location = cfg.logging.output_dir   # run_dir itself, or the URI run_dir is copied to
        self.ckpt_root = storage.join(self.location, "checkpoints")
        self.step, self.version = 0, 0
        self.init_overlap()
        if resume:
            self._restore()
        self.metrics = MetricsWriter(run_dir, cfg.logging.tensorboard, cfg.logging.wandb_project,
                                     cfg.model_dump(mode="json"), resume, start_step=self.step)
        self.metrics.event(self.step, "start", f"mode={self.mode} tasks={len(tasks)} too_long={too_long} "
                           f"long_answer={long_answers} mix={subtask_mix(tasks)}")
        self._log_placement()

    def init_overlap(self) -> None:
        """train.max_staleness K: the rollout phases of the next K steps, generated one after another
        (in step order) in threads of their own while the learner trains, and the Gate between them and
        the weight pushes."""
        self.ahead: deque[Prefetch] = deque()
        self.gate = Gate()
        if self.cfg.train.max_staleness and self.sync.stages and not self.sync.staged:
            # the initial weights too: a phase admitted with them may start after an evaluation landed newer
            self.sync.stage(self.version)

    def _log_placement(self) -> None:
        """events.jsonl: the Ray job, and the node of the driver (and sampler), each rollout worker and rank."""
        import ray

        from toolexpander.actors.group import bundle_nodes

        context = ray.get_runtime_context()
        self.metrics.event(self.step, "placement", "the Ray node of each actor", job=context.get_job_id(),
                           driver=context.get_node_id(),
                           rollout=bundle_nodes(self.rollout.pg), learner=bundle_nodes(self.learner.pg))

    def _sampler_get(self, ref):
        """A sampler call's result within cluster.call_timeout_s (the sampler is never replaced: it
        holds the run's state; a hung one stops the run, to be resumed from the checkpoint)."""
        from toolexpander.actors.group import _get

        return _get([ref], "sampler", self.cfg.cluster.call_timeout_s)[0]

    # ---- one step ------------------------------------------------------------------------------
    def _generate(self, requests, step_seed: int):
        """Rollouts for `requests`; a dead worker is restarted, given the weights, and its prompts
        re-issued (the sampler has not recorded them yet, so nothing is lost or counted twice).
        Returns the rows by reference (rollouts.Rollouts) and the workers' stats."""
        rollouts, stats, lost = self.rollout.generate_refs(requests, step_seed)
        answered = [rollouts] if rollouts is not None else []
        prefetch = Prefetch.current()
        for i, (worker, shard) in enumerate(lost):
            if prefetch is not None:
                prefetch.check()   # a closing run does not wait for a replacement worker's placement
            if i == 0:   # once per step (it fetches the staged weights): lost with learner rank 0's node,
                self.rollout.check_weights()   # WorkerDied, and train() restarts from the checkpoint
            self.metrics.event(self.step, "worker_restart",
                               f"rollout worker {worker} died or hung (cluster.call_timeout_s); restarting it")
            self.rollout.restart(worker)
            self._log_placement()
            # Object store: the re-issued call carries the engines' version to the new worker (RolloutGroup.carry).
            if prefetch is not None and not self.sync.stages:  # the learner may be training: the driver
                prefetch.wait_for_push()                        # connects and pushes after it
            elif not self.sync.stages:
                self.sync.connect()
                if self.version > 0:
                    self.sync.push(self.version)
            again, more, still_lost = self.rollout.generate_refs(shard, step_seed)
            if still_lost:
                raise TrainError(f"rollout worker {worker} died twice in one step; giving up")
            answered.append(again)
            stats += more
        return (Rollouts.concat(answered) if len(answered) > 1 else answered[0]), stats

    def _push(self) -> float:
        """Push the current weights; a worker that died meanwhile is replaced and the push redone."""
        seconds, dead, error = self.sync.push_healing(self.version)
        if dead:
            self.metrics.event(self.step, "worker_restart", f"rollout worker(s) {dead} died during a "
                               f"weight push ({error}); restarted")
            self._log_placement()
        return seconds

    def _fill_batch(self, step_seed: int):
        """Draw, generate and record until B informative groups or the draw budget (DAPO-style).
        Returns the light view of every generated row, the kept groups' rows (by reference), the
        sampler records and the workers' stats."""
        cfg = self.cfg
        kept, generated, records, stats = [], [], [], []
        prefetch = Prefetch.current()
        for _ in range(cfg.sampler.max_draw_rounds):
            if prefetch is not None:
                prefetch.check()   # a closing run cancels the phases queued ahead
            requests = self._sampler_get(self.sampler.next_batch.remote(cfg.sampler.batch_prompts - len(kept)))
            if not requests:
                break
            rollouts, more = self._generate(requests, step_seed)
            record = self._sampler_get(self.sampler.record.remote(rollouts.light.select(list(RECORD_COLUMNS))))
            kept += [g for g, ok in zip(record["group_ids"], record["informative"])
                     if ok or not cfg.sampler.filter_zero_signal]
            generated.append(rollouts)
            records.append(record)
            stats += more
            if len(kept) >= cfg.sampler.batch_prompts:
                break
        rollouts = Rollouts.concat(generated)
        return rollouts.light, rollouts.filter(kept[: cfg.sampler.batch_prompts]), records, stats

    def _rollout_phase(self, step: int, version: int | None = None) -> dict:
        """Everything step `step` needs from the rollout side: its batch (draw, generate, record,
        DAPO-style refills) and the sampler's end of step. Runs in the driver's thread (max_staleness
        0) or in a Prefetch thread while the learner trains on a step before (K >= 1); in every case
        the sampler sees the same calls in the same order, so its ledger is the same."""
        t0 = time.perf_counter()
        # Weights staged since the last phase land first (object store; inside the Gate, or in the driver's
        # thread with nothing else generating): carried with each worker's generate call, loaded before it.
        if self.sync.stages:
            self.sync.land(version, defer=True)
        version = self.sync.landed[0]   # the engines' weights for this batch
        step_seed = self.cfg.train.seed * 1_000_003 + step
        table, batch, records, stats = self._fill_batch(step_seed)
        land_s = max((s.land_s for s in stats), default=0.0)
        rollout_s = time.perf_counter() - t0
        return {"step": step, "seed": step_seed, "table": table, "batch": batch, "records": records,
                "stats": stats, "rollout_s": rollout_s, "version": version, "land_s": land_s,
                "sampler_end": self._sampler_get(self.sampler.end_step.remote())}

    def train_step(self) -> dict[str, float]:
        cfg, t0 = self.cfg, time.perf_counter()
        wait_s = 0.0
        if self.ahead:   # generated while the learner trained the steps before
            phase, wait_s = self._await(self.ahead[0])
            self.ahead.popleft()
        else:
            phase = self._rollout_phase(self.step)
        if phase["step"] != self.step:
            raise TrainError(f"internal: the batch of step {phase['step']} arrived at step {self.step}")
        self._admit()
        table, records, stats = phase["table"], phase["records"], phase["stats"]
        if self.save_rollouts is not None:
            self._save_batch(phase)
        batch = phase["batch"]
        m = reward_metrics(table)
        m.update(self._sampler_metrics(records))
        carried = pc.greater(table.column("num_demos"), 0).cast(pa.float32())
        m["sampler/demo_rate"] = float(pc.mean(carried).as_py() or 0.0)  # prompts that carried demos
        if batch.num_rows:  # versions between the weights that generated a row and those training on it
            lag = self.version - batch.light.column("policy_version").to_numpy()
            m["rollout/policy_lag_mean"], m["rollout/policy_lag_max"] = float(lag.mean()), float(lag.max())
        t = time.perf_counter()
        if batch.num_rows:
            m.update(self._learn(phase))
        else:  # no informative group: nothing to learn from; the contract metrics have no value
            nan = float("nan")
            m.update({"learner/skipped": 0.0, "learner/applied": 0.0, "learner/loss": nan,
                      "learner/grad_norm": nan, "learner/clip_frac": nan, "learner/entropy": nan,
                      "learner/approx_kl": nan, "learner/lr": self.learner.call("lr")[0]})
        learner_s = time.perf_counter() - t
        t = time.perf_counter()
        m["time/weight_push_s"] = float("nan")
        if m["learner/applied"] > 0:  # unchanged weights keep their version and are not pushed
            self.version += 1
            m["time/weight_push_s"], waited = self._publish()
            wait_s += waited
        push_s = time.perf_counter() - t - wait_s
        m["time/weight_land_s"] = phase["land_s"]   # staged weights loaded before this batch generated
        m.update(phase["sampler_end"])
        tokens = sum(s.completion_tokens for s in stats)
        # every group generated this step: completions scored 0 because scoring raised (worker logs say why)
        m["reward/scorer_errors"] = sum(s.scorer_errors for s in stats)
        rollout_s = phase["rollout_s"]
        m.update({"policy_version": self.version, "time/rollout_s": rollout_s,
                  "time/learner_s": learner_s, "time/weight_push_total_s": push_s,
                  "time/rollout_wait_s": wait_s,
                  "rollout/tokens_per_s": tokens / max(rollout_s, 1e-9),
                  "rollout/completion_tokens": tokens, "rollout/groups": table.num_rows / cfg.rollout.n,
                  "rollout/draw_rounds": len(records), "learner/groups": phase["batch"].num_rows / cfg.rollout.n,
                  "time/step_s": time.perf_counter() - t0})
        return m

    def _learn(self, phase: dict) -> dict[str, float]:
        """The learner's step on the phase's batch. The ranks fetch its rows from the rollout nodes'
        object stores; rows lost with their node before that are generated again and the step retried."""
        def regenerate(lost):
            self._regenerate(phase, lost)
            if self.save_rollouts is not None:
                self._save_batch(phase)   # what is trained, not what was lost

        return retry_lost(lambda: self.learner.step(phase["batch"], phase["seed"], self.step), regenerate,
                          f"step {self.step}")

    def _rows(self, phase: dict) -> pa.Table:
        """The phase's full batch, fetched to the driver (saved rollouts, a checkpoint's queued phases:
        the training path itself never brings rows here); a part lost with its node is generated again."""
        return retry_lost(lambda: phase["batch"].fetch(), lambda lost: self._regenerate(phase, lost),
                          f"step {phase['step']}'s batch")

    def _regenerate(self, phase: dict, lost: RowsLost) -> None:
        """The kept groups of the lost parts, generated again with the engines' current weights (no phase
        generating meanwhile), in their place in phase["batch"]. The sampler keeps what it recorded of
        the first answers (it is not told twice); the new rows carry their own policy_version."""
        batch = phase["batch"]
        part = batch.light.column("part").to_numpy()
        kept = set(batch.light.column("group_id").to_numpy()[np.isin(part, lost.parts)].tolist())
        requests = [r for p in lost.parts for r in batch.requests[p] if r.group_id in kept]
        self.metrics.event(self.step, "rows_lost", f"step {phase['step']}: {lost}: generating their "
                           f"{len(requests)} prompt(s) again")
        with self.engines_current():
            again, _ = self._generate(requests, phase["seed"])
        phase["batch"] = Rollouts.concat([batch.without(lost.parts), again])

    def _save_batch(self, phase: dict) -> None:
        """--save-rollouts: the learner batch's full rows (step_N.parquet), and the scalar columns of every
        row the phase generated (generated_N.parquet: also the groups without reward spread, which never
        reach the learner), so that a prompt's correct rate can be followed from one draw to the next."""
        self.save_rollouts.mkdir(parents=True, exist_ok=True)
        pq.write_table(self._rows(phase), self.save_rollouts / f"step_{self.step:06d}.parquet")
        pq.write_table(phase["table"], self.save_rollouts / f"generated_{self.step:06d}.parquet")

    # ---- overlap (train.max_staleness K) -----------------------------------------------------------
    def _admit(self) -> None:
        """Queue the rollout phases of the steps up to K ahead of the one being trained (admission: a
        phase queued now generates with weights at most K versions older than those that train on it),
        never past the last step."""
        last = self.ahead[-1].step if self.ahead else self.step
        for step in range(last + 1, min(self.step + self.cfg.train.max_staleness, self.cfg.train.steps - 1) + 1):
            # generated with the weights of this moment (staged by the step before): K <= 1 is exactly the
            # synchronous loop's schedule shifted, and any K is reproducible over the object store
            version = self.version
            self.ahead.append(Prefetch(lambda s, v=version: self._rollout_phase(s, v), step, self.gate,
                                       self.ahead[-1] if self.ahead else None))

    def _await(self, prefetch: Prefetch) -> tuple[dict, float]:
        """A queued phase's result and the seconds waited for it; when it waits for a push (it replaced a
        rollout worker; broadcast weight sync), the driver connects the group and pushes."""
        start = time.perf_counter()
        while True:
            prefetch.wait_idle()
            if not prefetch.needs_push:
                return prefetch.result(), time.perf_counter() - start
            with self.gate.held():
                self._push_for_waiting()

    def _publish(self) -> tuple[float, float]:
        """The new version toward the engines: (seconds of the push, seconds waited for idle engines).
        Object store: staged (gathered from the idle learner); each worker loads it at the start of its
        next generate call, so the learner never waits for a generation and no push call is made.
        Nothing generating ahead: pushed now. A broadcast
        group needs the learner's ranks and the engines together: pushed once no phase generates."""
        if self.sync.stages:   # the next phase's generate calls carry it to the engines
            return self.sync.stage(self.version), 0.0
        if not self.ahead:
            return self._push(), 0.0
        with self.gate.held() as waited:
            if any(p.needs_push for p in self.ahead):
                self.sync.connect()
            seconds = self._push()
            for p in self.ahead:
                p.pushed()
        return seconds, waited

    def drain(self) -> list[dict]:
        """Every queued phase run to its end (a checkpoint saves them); their results in step order."""
        return [self._await(p)[0] for p in self.ahead]

    @contextmanager
    def engines_current(self):
        """No phase generating, and the engines holding the learner's current weights (an evaluation)."""
        with self.gate.held():
            if self.sync.stages:
                self.sync.land()
            elif any(p.needs_push for p in self.ahead):   # a worker a phase replaced has the initial weights
                self._push_for_waiting()
            yield

    def _push_for_waiting(self) -> None:
        """(Gate held) a phase replaced a rollout worker and waits: the new worker joins the broadcast
        group and gets the current weights, then the phase goes on."""
        self.sync.connect()
        if self.version > 0:
            self._push()
        for p in self.ahead:
            p.pushed()

    @staticmethod
    def _sampler_metrics(records: list[dict]) -> dict[str, float]:
        """Shares over every group generated in the step (all draw rounds)."""
        informative = np.concatenate([r["informative"] for r in records]).astype(float)
        all_fail = np.concatenate([r["all_fail"] for r in records]).astype(float)
        rounds = np.concatenate([r["demo_round"] for r in records])
        out = {"sampler/zero_signal_share": 1.0 - informative.mean(), "sampler/all_fail_share": all_fail.mean()}
        for k in range(int(rounds.max()) + 1):
            out[f"sampler/groups_at_round/{k}"] = float((rounds == k).sum())
        return out

    # ---- checkpoints ---------------------------------------------------------------------------
    def save(self) -> str:
        """Every part written by the process that holds it (each learner rank its own, the sampler its
        state, the driver the rest), then the manifest by the driver (learner/checkpoint.py). Returns
        the checkpoint's location."""
        ahead = self.drain()   # before the sampler's state: every phase it has begun is then recorded
        rows = [self._rows(p) for p in ahead]
        tmp = checkpoint.begin(self.ckpt_root, self.step)
        client = {"step": self.step, "policy_version": self.version}
        self.learner.call("save", storage.join(tmp, "learner"), client)
        self._sampler_get(self.sampler.save.remote(storage.join(tmp, "sampler.npz")))
        with storage.writable(tmp) as d:
            (d / "driver.json").write_text(json.dumps({"step": self.step, "policy_version": self.version}))
            save_phases(ahead, rows, d / PREFETCH_DIR)  # later steps' batches, recorded by the sampler already
        path = checkpoint.commit(self.ckpt_root, self.step, self.cfg.train.keep_last)
        self.metrics.flush()
        self.upload_driver_files()
        return path

    def upload_driver_files(self) -> None:
        """output_dir a URI: the driver's own files (metrics, events, TensorBoard, eval answers, logs,
        config.json) copied from logging.local_dir to it."""
        if storage.is_uri(self.location):
            storage.Store(self.location).upload(self.run_dir, "")

    def _restore(self) -> None:
        directory = checkpoint.latest(self.ckpt_root)
        if directory is None:
            raise TrainError(f"--resume: no complete checkpoint under {self.ckpt_root}")
        self.learner.call("load", storage.join(directory, "learner"))
        self._sampler_get(self.sampler.load.remote(storage.join(directory, "sampler.npz")))
        state = json.loads(storage.read_file(storage.join(directory, "driver.json")))
        self.step, self.version = state["step"], state["policy_version"]
        prefetch = storage.join(directory, PREFETCH_DIR)
        if storage.exists(prefetch):  # trained next, exactly as the interrupted run would have
            with storage.readable(prefetch) as d:
                self.ahead.extend(Prefetch.finished(phase) for phase in load_phases(d))
        self._push()
        print(f"resumed from {directory} at step {self.step} (policy version {self.version})", flush=True)

    def evaluate(self, tag: str | None = None) -> dict[str, float]:
        """Greedy eval of the current policy on a fixed subset (the first eval.limit questions per
        category), with the rollout workers; logged as eval/<suite>/<category> at this step.
        Answers go to eval/<tag>_<suite>.json (tag: step_NNNNNN by default)."""
        with self.engines_current():
            return self._evaluate(tag)

    def _evaluate(self, tag: str | None) -> dict[str, float]:
        from toolexpander.eval.runner import eval_metrics, run_eval

        metrics: dict[str, float] = {}
        for suite in self.cfg.eval.suites:
            out = self.run_dir / "eval" / f"{tag or f'step_{self.step:06d}'}_{suite}.json"
            summary = run_eval(model=str(self.model_path), suite=suite, categories=None,
                               limit=self.cfg.eval.limit, out=str(out), max_tokens=self.cfg.eval.max_tokens,
                               worker=self.rollout, label=f"the policy at step {self.step} (version "
                               f"{self.version}, trained from {self.model_path})")
            metrics.update(eval_metrics(summary, suite))
        return metrics

    def export(self) -> str:
        out = storage.join(self.location, "hf")
        self.learner.call("export_hf", out, str(self.model_path))
        return out

    # ---- the loop ------------------------------------------------------------------------------
    def run(self) -> int:
        cfg, stop = self.cfg, StopFlag()
        before = {}
        if cfg.eval.before and self.step == 0:  # the starting policy, on the questions eval.every uses
            before = {k.replace("eval/", "eval_before/", 1): v for k, v in self.evaluate("before").items()}
            print("before training: " + " ".join(f"{k}={v:.3g}" for k, v in before.items()
                                                 if k.endswith("/overall")), flush=True)
        progress = Progress(cfg.train.steps, self.step, cfg.logging.progress)
        try:
            while self.step < cfg.train.steps and not stop.requested:
                m = self.train_step() | before
                before = {}
                if cfg.eval.every and (self.step + 1) % cfg.eval.every == 0:
                    m.update(self.evaluate())
                self.metrics.log(self.step, m)
                progress.update(self.step, m)
                self.step += 1
                if m.get("learner/nonfinite"):
                    streak = self.learner.call("nonfinite_streak")[0]
                    self.metrics.event(self.step, "nonfinite", f"non-finite loss/gradient, {streak} in a row")
                    if streak >= cfg.learner.max_nonfinite_in_row:
                        path = self.save()
                        print(f"stopping: {streak} non-finite updates in a row; checkpoint {path}", flush=True)
                        return 2
                if cfg.train.save_every and self.step % cfg.train.save_every == 0:
                    self.save()
                if cfg.train.hf_export_every and self.step % cfg.train.hf_export_every == 0:
                    self.export()
        finally:
            progress.close()
        path = self.save()
        if stop.requested:
            print(f"stopped at step {self.step}; checkpoint {path}\nresume with: toolexpander train "
                  f"--config {storage.join(self.location, 'config.json')} --resume", flush=True)
            return 0
        self.export()
        return 0

    def close(self, keep_session: bool = False) -> None:
        """Phases queued ahead are cancelled and joined first (each ends at its next draw round or
        worker restart, or when its Ray call returns; at most CLOSE_WAIT_S): so no thread of this
        attempt runs on into a restarted attempt. keep_session: the attempt's actors and placement
        groups go and the Ray session stays up for the next attempt (not shut down and started again
        in one process); otherwise Ray is shut down."""
        import ray

        for phase in self.ahead:
            phase.cancel()
        bound = min(self.cfg.cluster.call_timeout_s, CLOSE_WAIT_S)
        for phase in self.ahead:
            if not phase.join(bound):
                warnings.warn(f"the rollout phase of step {phase.step} did not stop within {bound:g} s of "
                              "being cancelled; closing without it", stacklevel=2)
        self.metrics.close()
        try:
            self.upload_driver_files()
        finally:
            if keep_session:
                self.rollout.shutdown()
                self.learner.shutdown()
                ray.kill(self.sampler, no_restart=True)
            else:
                ray.shutdown()


def driver_dir(cfg: Config) -> Path:
    """Where the driver writes metrics, events, TensorBoard and eval answers: the run directory
    itself, or (output_dir a URI) logging.local_dir, copied to the URI at checkpoints and at the end."""
    location = cfg.logging.output_dir
    if storage.is_uri(location):
        return Path(cfg.logging.local_dir or f"runs/{location.rpartition('/')[2]}").resolve()
    return Path(location)


# A resumed driver on another machine continues these from the URI when its local_dir lacks them.
DRIVER_FILES = ("metrics.jsonl", "events.jsonl", "tensorboard")


def train(cfg: Config, resume: bool = False, save_rollouts: str | None = None) -> Path:
    """Returns the driver's directory (the run directory, or logging.local_dir for a URI run)."""
    cfg = absolute_paths(cfg)
    run_dir = driver_dir(cfg)
    store = storage.Store(cfg.logging.output_dir)
    if not resume and ((run_dir / "metrics.jsonl").exists() or store.is_file("metrics.jsonl")):
        raise TrainError(f"logging.output_dir: {cfg.logging.output_dir} already holds a run; pass --resume "
                         f"or choose another --output-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume and not store.local:
        for name in DRIVER_FILES:
            if (run_dir / name).exists():
                continue
            if store.is_dir(name):
                store.download(name, run_dir / name)
            elif store.is_file(name):
                (run_dir / name).write_bytes(store.read_bytes(name))
    dump_config(cfg, run_dir / "config.json")
    from toolexpander.actors.group import WorkerDied   # WorkerHung too: a learner rank's ends the attempt
    restarts, mode = 0, None
    while True:
        try:
            trainer = Trainer(cfg, run_dir, resume, save_rollouts, mode)
        except DataError as e:
            raise TrainError(f"data.train_path: refusing to start, bad rows:\n{e}") from None
        again = False
        try:
            code = trainer.run()
            break
        except Exception as e:
            if not (isinstance(e, WorkerDied) and e.role == "learner rank") \
                    or restarts >= cfg.cluster.max_restarts or checkpoint.latest(trainer.ckpt_root) is None:
                raise
            restarts += 1
            message = (f"{e}; starting the run again from its last checkpoint "
                       f"(restart {restarts} of cluster.max_restarts {cfg.cluster.max_restarts})")
            trainer.metrics.event(trainer.step, "restart", message)
            print(message, flush=True)
            resume, mode, again = True, trainer.mode, True
        finally:
            trainer.close(keep_session=again)
        del trainer   # the attempt's ObjectRefs and actor handles, released before the next one starts
        gc.collect()
    if code:
        raise SystemExit(code)
    return run_dir
