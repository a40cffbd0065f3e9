"""A multi-node run on one host: a ray.cluster_utils.Cluster shaped like the cloud YAMLs (a 0-CPU head
for the driver and the sampler, a rollout node, a learner node with 2 ZeRO-2 ranks), each node's
processes started in a working directory of its own, and `toolexpander train` attached to it with
--cluster.address from yet another directory, with relative paths typed as a user would."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from toolexpander.cluster.local import LOOPBACK_ENV, _loopback_only

pytestmark = pytest.mark.slow

STEPS = ["--rollout.n", "4", "--rollout.max_tokens", "8", "--data.limit", "16", "--eval.every", "0"]
PLACEMENT = ["--learner.world_size", "2", "--learner.zero_stage", "2",
             "--rollout.node_resource", "rollout", "--learner.node_resource", "learner"]


def running_in(directory: Path) -> list[int]:
    """PIDs of the processes whose working directory is `directory` or below: one node's Ray
    processes and their workers, and no one else's."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and Path(os.readlink(entry / "cwd")).is_relative_to(directory):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class NodeCluster:
    """A 0-CPU head, a learner node (2 CPUs) and a rollout node (1 CPU), marked with the custom
    resources the run's node_resource options name. Each node is started from a directory of its
    own (its raylet and workers keep it as their working directory, as on a real node), on loopback."""

    def __init__(self, root: Path):
        from ray.cluster_utils import Cluster

        self.root, self.dirs = root, {}
        self.cluster = Cluster(initialize_head=False)
        self.head = self.add("head", num_cpus=0)
        self.learner = self.add("learner", num_cpus=2, resources={"learner": 1})
        self.rollout = self.add("rollout", num_cpus=1, resources={"rollout": 1})

    def add(self, name: str, **args):
        """Start a node (the head first); on a loaded machine a raylet can miss Ray's fixed 30 s to
        register, so a node that failed to start is killed and started again once, elsewhere."""
        for attempt in range(2):
            directory = self.root / (name if attempt == 0 else f"{name}-again")
            directory.mkdir()
            try:
                with contextlib.chdir(directory), _loopback_only():
                    node = self.cluster.add_node(node_ip_address="127.0.0.1", include_dashboard=False, **args)
            except Exception as e:   # Ray raises a bare Exception for this
                kill_all(running_in(directory))
                if attempt:
                    raise
                warnings.warn(f"Ray node {name} failed to start ({e}); starting it again")
                continue
            self.cluster.wait_for_nodes(timeout=120)
            self.dirs[name] = directory
            return node

    @property
    def address(self) -> str:
        return self.cluster.address


@pytest.fixture(scope="module")
def cluster(tiny_model, s3):
    # Started after the local S3 endpoint (s3): its nodes' processes inherit the AWS_* variables, as a
    # cloud node has its instance role. A private Ray temp dir: Cluster records its address in $RAY_TMPDIR/ray/ray_current_cluster, where
    # any plain ray.init() on this machine would otherwise find it and attach to it.
    root = Path(tempfile.mkdtemp(prefix="mn", dir="/tmp"))   # short: Ray's socket paths live under it
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = str(root / "t")
    (root / "t").mkdir()
    test_cluster = None
    try:
        test_cluster = NodeCluster(root)
        yield test_cluster
    finally:
        if test_cluster is not None:
            test_cluster.cluster.shutdown()
        kill_all(running_in(root))   # whatever a failed start or a removed node left behind
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def user_dir(repo, tiny_model, tmp_path_factory):
    """Where the user types commands: a checkout's configs/ and data/, and models/tiny."""
    home = tmp_path_factory.mktemp("user")
    for name in ("configs", "data"):
        (home / name).symlink_to(repo / name)
    (home / "models").mkdir()
    (home / "models" / "tiny").symlink_to(tiny_model)
    return home


class Driver:
    """A `toolexpander train` process attached to the cluster, its stdout and stderr in files (a pipe
    nobody reads while the test waits would block it). finish() waits for it to exit 0; one that hangs
    past the timeout is asked for every thread's stack (SIGUSR1, the CLI's faulthandler) and killed."""

    def __init__(self, user_dir: Path, *args):
        logs = user_dir / "driver-logs"
        logs.mkdir(exist_ok=True)
        stem = logs / f"{time.time_ns()}"
        self.out, self.err = stem.with_suffix(".out"), stem.with_suffix(".err")
        with self.out.open("w") as out, self.err.open("w") as err:
            # Loopback: Ray would otherwise swap the cluster's 127.0.0.1 for this machine's address.
            self.proc = subprocess.Popen([sys.executable, "-m", "toolexpander", "train", *args], cwd=user_dir,
                                         stdout=out, stderr=err, env={**os.environ, **LOOPBACK_ENV},
                                         start_new_session=True)

    def running(self) -> bool:
        if self.proc.poll() is None:
            return True
        self._fail(f"exited {self.proc.returncode} early")

    def finish(self, timeout: float = 600) -> str:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGUSR1)
            time.sleep(5)
            self.kill()
            self._fail(f"still running after {timeout:g} s (its threads' stacks are at the end of stderr)")
        if self.proc.returncode != 0:
            self._fail(f"exited {self.proc.returncode}")
        return self.out.read_text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def _fail(self, what: str) -> None:
        # pytest.fail: an assert's message would be cut to a few lines
        pytest.fail(f"toolexpander train {what}\n--- stdout (end) ---\n{self.out.read_text()[-2000:]}\n"
                    f"--- stderr (end) ---\n{self.err.read_text()[-8000:]}", pytrace=False)


def train(user_dir: Path, *args) -> str:
    """Run `toolexpander train` to its end (exit 0); its stdout."""
    driver = Driver(user_dir, *args)
    try:
        return driver.finish()
    finally:
        driver.kill()


def events(run_dir: Path, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return [r for r in rows if r["event"] == kind]


def steps_logged(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# Run by a driver process of its own: a pytest worker may already hold the session's local Ray (ray_local).
WHERE = """
import os, sys, ray
ray.init(address=sys.argv[1])
@ray.remote(num_cpus=1, resources={"rollout": 0.001})
def where():
    import toolexpander
    return os.getcwd(), toolexpander.__file__
print(*ray.get(where.remote()), sep="\\n")
"""


def test_workers_run_where_their_node_started(cluster, repo, tmp_path):
    """The premise of the other tests: a worker's directory is its node's, and it runs this checkout."""
    out = subprocess.run([sys.executable, "-c", WHERE, cluster.address], cwd=tmp_path, capture_output=True,
                         text=True, env={**os.environ, **LOOPBACK_ENV}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    cwd, module = out.stdout.splitlines()[-2:]
    assert Path(cwd) == cluster.dirs["rollout"]
    assert Path(module).is_relative_to(repo)


def test_attach_checkpoint_export_and_resume_through_a_bucket(cluster, user_dir, s3, tmp_path):
    """logging.output_dir a bucket (s3://, a local S3 endpoint reached over HTTP from every node): each
    learner rank uploads its own checkpoint part from the learner node, the driver the manifest last;
    a new driver on "another machine" (another directory, nothing local) resumes from the bucket."""
    from toolexpander import storage

    uri = storage.join(s3, tmp_path.name, "mn")
    bucket = storage.Store(uri)
    common = ["--output-dir", uri, "--cluster.address", cluster.address]
    train(user_dir, "--config", "configs/smoke.yaml", "--model.path", "models/tiny", "--train.steps", "2",
          *common, *STEPS, *PLACEMENT)
    local = user_dir / "runs" / "mn"          # the driver's own files: logging.local_dir's default
    logged = [json.loads(line)["step"] for line in bucket.read_text("metrics.jsonl").splitlines()]
    assert steps_logged(local) == logged == [0, 1]
    ckpt = "checkpoints/step_00000002"
    assert all(bucket.is_file(f"{ckpt}/{name}") for name in ("COMPLETE", "sampler.npz", "driver.json"))
    manifest = json.loads(bucket.read_text(f"{ckpt}/COMPLETE"))["files"]
    assert manifest == {k: v for k, v in bucket.files(ckpt).items() if k != "COMPLETE"}
    shards = sorted(f for f in manifest if "optim_states" in f)
    assert len(shards) == 2 and "rank_0" in shards[0] and "rank_1" in shards[1], manifest   # one per rank
    assert bucket.dirs("checkpoints") == ["step_00000002"]
    assert bucket.is_file("hf/model.safetensors")
    assert bucket.is_file("config.json") and bucket.is_dir("tensorboard")
    placed = events(local, "placement")[0]
    assert placed["driver"] == cluster.head.node_id
    assert placed["rollout"] == [cluster.rollout.node_id]
    assert placed["learner"] == [cluster.learner.node_id] * 2

    # A new driver elsewhere resumes from the bucket alone (its config.json, its checkpoint, its metrics).
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()   # config.json holds absolute model and data paths (on a cluster: a shared filesystem)
    out = train(elsewhere, "--resume", *common, "--train.steps", "3")
    assert f"resumed from {uri}/checkpoints/step_00000002" in out and "at step 2" in out
    logged = [json.loads(line)["step"] for line in bucket.read_text("metrics.jsonl").splitlines()]
    assert steps_logged(elsewhere / "runs" / "mn") == logged == [0, 1, 2]
    assert bucket.is_file("checkpoints/step_00000003/COMPLETE")
    # Nothing was written relative to a node's own working directory.
    for node, directory in cluster.dirs.items():
        assert not list(directory.iterdir()), node


def lose_node_mid_run(cluster, user_dir, role: str, until, *args) -> None:
    """Start a run attached to the cluster, wait until until() holds, remove the `role` node ("rollout"
    or "learner"), add a fresh one like it, and wait for the run to end with exit code 0."""
    driver = Driver(user_dir, "--config", "configs/smoke.yaml", "--model.path", "models/tiny",
                    "--cluster.address", cluster.address, *args, *STEPS, *PLACEMENT)
    try:
        start = time.time()
        while not until():
            assert driver.running() and time.time() - start < 600, f"{until.__doc__} never happened"
            time.sleep(0.2)
        cluster.cluster.remove_node(getattr(cluster, role))
        cpus = {"rollout": 1, "learner": 2}[role]
        setattr(cluster, role, cluster.add(f"{role}-{int(time.time())}", num_cpus=cpus, resources={role: 1}))
        driver.finish()
    finally:
        driver.kill()


def test_losing_the_rollout_node_mid_run(cluster, user_dir):
    run, dumps = user_dir / "runs" / "loss", user_dir / "rollouts"
    metrics = run / "metrics.jsonl"

    def logged():
        """a step logged"""
        return metrics.is_file() and bool(metrics.read_text().strip())

    lose_node_mid_run(cluster, user_dir, "rollout", logged, "--train.steps", "4", "--output-dir", "runs/loss",
                      "--save-rollouts", "rollouts")
    assert steps_logged(run) == [0, 1, 2, 3]
    assert events(run, "worker_restart"), (run / "events.jsonl").read_text()
    assert events(run, "placement")[-1]["rollout"] == [cluster.rollout.node_id]
    # Every group the sampler drew was generated, recorded and trained once, with all n completions
    # (smoke.yaml trains on every group: filter_zero_signal is false).
    per_group = {}
    for path in sorted(dumps.glob("step_*.parquet")):
        for gid in pq.read_table(path).column("group_id").to_pylist():
            per_group[gid] = per_group.get(gid, 0) + 1
    assert sorted(per_group) == list(range(4 * 2)) and set(per_group.values()) == {4}
    # Relative paths typed by the user were resolved at the driver: nothing landed in a node's directory.
    for node, directory in cluster.dirs.items():
        assert not list(directory.iterdir()), node


def test_losing_the_learner_node_restarts_the_run_from_its_checkpoint(cluster, user_dir):
    """The learner node dies mid-run (both ZeRO-2 ranks with it) and a fresh one joins: the driver
    starts the run again from its last checkpoint in the same process and Ray session (cluster.max_restarts),
    on the new node, and it finishes with one metrics row per step."""
    run = user_dir / "runs" / "learner-loss"
    saved = run / "checkpoints" / "step_00000002" / "COMPLETE"

    def checkpointed():
        """a checkpoint at step 2"""
        return saved.is_file()

    lose_node_mid_run(cluster, user_dir, "learner", checkpointed, "--train.steps", "16", "--train.save_every", "2",
                      "--output-dir", "runs/learner-loss")
    restarts = events(run, "restart")
    assert len(restarts) == 1 and "learner rank" in restarts[0]["message"], restarts
    assert steps_logged(run) == list(range(16))                     # rows past the checkpoint superseded
    placements = events(run, "placement")
    assert set(placements[-1]["learner"]) == {cluster.learner.node_id}
    assert len(placements) == 2 and placements[0]["job"] == placements[1]["job"]   # one Ray job, one driver
    assert (run / "hf" / "model.safetensors").is_file()


# Run by a driver process of its own (see WHERE). A rollout worker on the rollout node answers; the
# driver keeps its rows by reference (the full batch, > 100 KiB, stays in that node's object store);
# the node is removed; then the driver's fetch and a learner rank's fetch (on the learner node) must
# both name the lost part.
LOSE_ROWS = """
import json, sys
import numpy as np, pyarrow as pa, ray
from toolexpander.actors.group import LearnerGroup
from toolexpander.rollouts import Rollouts, RowsLost, fetch_parts
from toolexpander.types import REWARD_DIMS, ROLLOUT_SCHEMA, RolloutStats, light_view

ray.init(address=sys.argv[1])

@ray.remote(num_cpus=0, resources={"rollout": 0.001})
class Worker:
    def generate_split(self, rows):
        cols = {f.name: [] for f in ROLLOUT_SCHEMA}
        for i in range(rows):
            row = dict(group_id=i // 4, task_id="t", subtask="single", demo_round=0, num_demos=0,
                       policy_version=0, prompt_ids=list(range(8000)), completion_ids=[1, 2],
                       logprobs=[-1.0, -1.0], finish_reason="stop", text="", reward_total=0.0,
                       **{f"reward_{d}": 0.0 for d in REWARD_DIMS})
            for k, v in row.items():
                cols[k].append(v)
        batch = pa.RecordBatch.from_pydict(cols, schema=ROLLOUT_SCHEMA)
        stats = RolloutStats(worker=0, prompts=rows // 4, completions=rows, prompt_tokens=0,
                             completion_tokens=0, seconds=0.0)
        return (light_view(batch), stats), batch

@ray.remote(num_cpus=0, resources={"learner": 0.001})
class Rank:
    def step_parts(self, light, refs, ids, step_seed=0, train_step=None, padding=0):
        batches, lost = fetch_parts(refs, ids)
        return ({"rows": sum(b.num_rows for b in batches)} if not lost else None), lost

worker, rank = Worker.remote(), Rank.remote()
meta, full = worker.generate_split.options(num_returns=2).remote(8)
light, _ = ray.get(meta)
rollouts = Rollouts.from_parts([light], [full], [[]], [0, 1])
group = LearnerGroup.__new__(LearnerGroup)
group.ranks, group.timeout_s = [rank], 120
ray.wait([full], fetch_local=False)   # made, and held by the rollout node only (a fetch elsewhere would copy it)
print("READY", light.num_rows, flush=True)
sys.stdin.readline()   # the test removes the rollout node
out = {}
for name, call in (("driver", rollouts.fetch), ("learner", lambda: group.step(rollouts, 0, 0))):
    try:
        call()
        out[name] = "fetched"
    except RowsLost as e:
        out[name] = e.parts
print(json.dumps(out), flush=True)
"""


def test_rows_whose_node_died_before_they_were_fetched_are_named_lost(cluster, repo, tmp_path):
    """The data path keeps a step's full rows on the rollout node until the learner ranks fetch them
    (a fetched object has a copy on the fetching node too, which Ray then uses: checked by hand, a rank's
    fetch before the loss left the rows readable after it): when that node dies first, the fetch names
    the lost part (the trainer then generates its groups
    again: tests/test_rollouts.py), on the driver and on a learner rank alike, without hanging."""
    proc = subprocess.Popen([sys.executable, "-c", LOSE_ROWS, cluster.address], cwd=tmp_path, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **LOOPBACK_ENV}, start_new_session=True)
    try:
        ready = proc.stdout.readline()
        assert ready.startswith("READY"), (ready, proc.stderr.read()[-3000:] if proc.poll() is not None else "")
        assert ready.split() == ["READY", "8"]
        cluster.cluster.remove_node(cluster.rollout)
        cluster.rollout = cluster.add(f"rollout-{int(time.time())}", num_cpus=1, resources={"rollout": 1})
        stdout, stderr = proc.communicate("removed\n", timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr[-3000:]
    assert json.loads(stdout.splitlines()[-1]) == {"driver": [0], "learner": [0]}
