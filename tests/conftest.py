"""Shared fixtures: the repository root, the tiny model (prepared once, cached under models/), and
one private local Ray instance for the session, with its own temp dir (never `ray stop`: that kills
every Ray on the box)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
# Every Ray the tests start (ray_local, the multi-node and `ray start` clusters, a train subprocess's
# local mode) runs its workers at niceness 0, as local mode does (cluster/local.py): at Ray's default
# of 15, one test's workers get ~3% of a core beside the other pytest worker's busy processes, and a
# multi-node run waited 10 minutes for its rollout worker to start beside two busy loops.
os.environ.setdefault("RAY_worker_niceness", "0")

# `make test` deals whole files to its two workers in collection order (--dist loadfile
# --no-loadscope-reorder), so a long file collected last runs alone at the end. The longest files go
# first (longest processing time first), in the order of their summed durations (pytest --durations /
# --junitxml, 2026-12-02, 2-core AMD EPYC: 353 s for test_resume.py down to 28 s for test_sft.py);
# the rest follow in collection order, and the tests of a file keep theirs.
LONGEST_FIRST = ("test_resume.py", "learner/test_learner.py", "learner/test_sync.py", "actors/test_rollout.py",
                 "cluster/test_multinode.py", "test_overlap.py", "test_reliability.py", "test_train_e2e.py",
                 "cluster/test_job_submit.py", "test_models.py", "eval/test_runner.py", "test_sft.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    tests = REPO / "tests"
    # stable; a path outside tests/ (relpath starts with ..) is simply not listed
    items.sort(key=lambda item: rank.get(Path(os.path.relpath(item.path, tests)).as_posix(), len(rank)))


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    from toolexpander.models import prepare_model

    # `make test`'s pytest-xdist workers may both get here first: prepare_model locks, one writes.
    return prepare_model("tiny", REPO / "models" / "tiny")


@pytest.fixture(scope="session")
def train_tasks():
    from toolexpander.data import load_tasks

    return load_tasks(REPO / "data" / "tool_calls_train.jsonl")


@pytest.fixture(scope="session")
def s3():
    """A local S3 endpoint (moto's server: the S3 protocol over HTTP, on 127.0.0.1, in a process of its
    own: its Flask must not be imported where vLLM walks the loaded modules) with an empty bucket;
    returns the bucket's URI. The AWS_* variables point this process, and every process it starts from
    then on (Ray nodes, drivers), at it, as a cluster's nodes find their credentials in their
    environment or instance role; restored at the end of the session."""
    import socket
    import subprocess
    import sys
    import time

    import pyarrow.fs as pafs

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    try:   # stopped however the set-up or the session ends
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "moto's S3 server did not start"
                time.sleep(0.1)
        os.environ.update(env)
        pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], allow_bucket_creation=True).create_dir(
            "toolexpander-test")
        yield "s3://toolexpander-test"
    finally:
        server.terminate()
        server.wait(30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def ray_local():
    """A private Ray shared by every test that asks for it: its own temp dir, loopback only, stopped
    by shutdown() at the end of the session. Started once (seconds on a 2-core box), not per module;
    each test removes the actors and placement groups it makes. A `toolexpander train` subprocess
    still starts a Ray of its own: ray.init attaches only to a cluster started by `ray start`."""
    import ray

    from toolexpander.cluster.local import start_local

    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    env = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           "TORCH_EXTENSIONS_DIR": os.environ["TORCH_EXTENSIONS_DIR"]}
    start_local(num_cpus=4, _temp_dir=temp, runtime_env={"env_vars": env}, log_to_driver=False)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)
