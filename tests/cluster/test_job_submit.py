"""`ray job submit` against a head node this test starts on free loopback ports (stopped by PID)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.test_reliability import is_loopback, listening
from toolexpander.cluster.local import LOOPBACK_ENV
from toolexpander.learner.dist import free_port

RAY = str(Path(sys.executable).parent / "ray")


def processes_under(temp_dir: str) -> list[int]:
    """PIDs of the Ray processes of this head only (their command lines name its temp dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
            except OSError:
                continue
            if temp_dir in cmdline and int(entry.name) != os.getpid():
                pids.append(int(entry.name))
    return pids


@pytest.fixture
def head():
    temp_dir = tempfile.mkdtemp(prefix="rtj", dir="/tmp")
    ports = {name: free_port() for name in ("port", "dashboard-port", "ray-client-server-port",
                                            "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                            "runtime-env-agent-port", "metrics-export-port",
                                            "node-manager-port", "object-manager-port")}
    # Loopback only, like local mode (cluster/local.py): a test cluster is no one else's business.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", **LOOPBACK_ENV}
    cmd = [RAY, "start", "--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
           "--include-dashboard=true", f"--temp-dir={temp_dir}", "--num-cpus=4",
           *[f"--{k}={v}" for k, v in ports.items()]]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    try:
        assert out.returncode == 0, out.stderr[-3000:]
        yield f"http://127.0.0.1:{ports['dashboard-port']}", env, temp_dir
    finally:
        for pid in processes_under(temp_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_job_submit_runs_training_on_the_cluster(repo, tiny_model, tmp_path, head):
    address, env, head_temp_dir = head
    run_dir = tmp_path / "job_run"
    entry = [sys.executable, "-m", "toolexpander", "train", "--config", "configs/smoke.yaml",
             "--model.path", str(tiny_model), "--output-dir", str(run_dir),
             "--train.steps", "2", "--rollout.n", "4", "--rollout.max_tokens", "8"]
    out = subprocess.run([RAY, "job", "submit", "--address", address, "--working-dir", str(repo),
                          "--runtime-env", str(repo / "cluster" / "runtime-env.yaml"), "--", *entry],
                         capture_output=True, text=True, env=env, timeout=900, cwd=repo)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    assert "succeeded" in out.stdout
    ports = listening(processes_under(head_temp_dir))
    assert ports and all(is_loopback(ip) for _, ip, _ in ports), ports
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["policy_version"] for r in rows] == [1, 2]
    assert json.loads((run_dir / "config.json").read_text())["train"]["steps"] == 2
