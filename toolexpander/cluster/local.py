"""Connecting the driver to Ray: local single-node mode, or an existing cluster (`ray job submit`).

Local mode binds every port and the dashboard to 127.0.0.1 and gives actors the offline env vars.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import psutil

from toolexpander.config import Config

# What every actor process needs, wherever it runs.
ACTOR_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
             "TOKENIZERS_PARALLELISM": "false", "RAY_DEDUP_LOGS": "1"}


# Ray on Linux turns `_node_ip_address="127.0.0.1"` into the machine's outbound address, and its
# servers then listen there or on every interface. Its single-machine mode (the default on macOS and
# Windows, chosen by this variable) keeps 127.0.0.1 as the node address, and every server binds it.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


# Local mode: where actors write their stdout/stderr (the run directory's logs/), so the console
# shows the driver's one line per step instead of every worker's engine and DeepSpeed output.
LOG_DIR_ENV = "TOOLEXPANDER_LOG_DIR"


class ClusterError(RuntimeError):
    pass


def redirect_output(name: str) -> None:
    """Send this process's stdout and stderr (Python, vLLM, DeepSpeed and native code alike) to
    $TOOLEXPANDER_LOG_DIR/<name>.log, appended; a no-op when the variable is unset (clusters,
    tests, in-process use). Actors call it first thing in their constructor."""
    directory = os.environ.get(LOG_DIR_ENV)
    if not directory:
        return
    path = Path(directory) / f"{name}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, f"---- {name}: pid {os.getpid()}\n".encode())
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def needed_cpus(cfg: Config) -> float:
    return (cfg.rollout.num_workers * cfg.rollout.cpus_per_worker
            + cfg.learner.world_size * cfg.learner.cpus_per_rank)


def actor_env() -> dict[str, str]:
    env = dict(ACTOR_ENV)
    # DeepSpeed JIT-compiles an op on first use: keep the build in a cached place.
    env["TORCH_EXTENSIONS_DIR"] = os.environ.get(
        "TORCH_EXTENSIONS_DIR", str(Path.cwd() / ".cache" / "torch_extensions"))
    return env


def unset_by_job(env: dict[str, str]) -> dict[str, str]:
    """The entries of `env` that the job's own runtime env (`ray job submit --runtime-env`) leaves
    unset. Ray refuses to merge two values of one key into a job's runtime env, and the job's values
    reach every actor anyway. Only the job's runtime env counts, not this process's environment: a
    driver started by hand on the head has the offline variables (cli sets them), its actors do not."""
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    job = json.loads(os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR) or "{}")
    taken = (job.get("runtime_env") or {}).get("env_vars") or {}
    return {k: v for k, v in env.items() if k not in taken}


def _probe(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on an address nothing listens on (ray.init would retry for minutes)."""
    import socket

    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not port.isdigit():
        return
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ClusterError(f"cluster.address: cannot reach Ray at {address!r}: {e.strerror or e}") from None


@contextmanager
def _loopback_only():
    """Ray's single-machine mode for the processes started inside: the env var reaches gcs_server,
    raylet and the workers; the constant covers a `ray` this process imported before."""
    from ray._private import ray_constants

    saved_env = {k: os.environ.get(k) for k in LOOPBACK_ENV}
    saved = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(LOOPBACK_ENV)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start_local(**ray_init_kwargs) -> None:
    """ray.init of a new single-node Ray whose every port (and dashboard, if any) is on 127.0.0.1."""
    import ray

    ray_init_kwargs.setdefault("include_dashboard", False)
    ray_init_kwargs.setdefault("dashboard_host", "127.0.0.1")
    for attempt in range(2):
        before = _children()
        try:
            with _loopback_only():
                ray.init(_node_ip_address="127.0.0.1", **ray_init_kwargs)
            break
        except Exception as e:   # Ray raises a bare Exception when its processes miss the start-up deadline
            if attempt or "timed out during startup" not in str(e):
                raise
            # seen on a loaded 2-core machine (two runs and a test cluster starting at once)
            warnings.warn(f"local Ray did not start in time ({e}); stopping what it started and trying once more")
            ray.shutdown()
            for child in _children() - before:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
    if ray.util.get_node_ip_address() != "127.0.0.1":
        ray.shutdown()
        raise ClusterError(f"local mode: Ray took node address {ray.util.get_node_ip_address()!r}, "
                           "not 127.0.0.1; refusing to listen beyond loopback")


def connect(cfg: Config, log_dir: Path | None = None) -> str:
    """ray.init for this run; returns 'local' or the address it attached to. In local mode the
    actors' output goes to files under log_dir when one is given (see redirect_output)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": actor_env()}
    if address:
        _probe(address)
        env = unset_by_job(runtime_env["env_vars"])
        try:
            ray.init(address=address, namespace=cfg.cluster.namespace,
                     runtime_env={"env_vars": env} if env else None, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ClusterError(f"cluster.address: cannot attach to Ray at {address!r}: "
                               f"{str(e).splitlines()[0]}") from None
        return address
    # Ray starts workers at niceness 15; ours are the compute (vLLM, DeepSpeed), so they run at 0,
    # not behind whatever else shares the machine.
    os.environ.setdefault("RAY_worker_niceness", "0")
    if log_dir is not None:
        runtime_env["env_vars"][LOG_DIR_ENV] = str(Path(log_dir).resolve())
    cpus = cfg.cluster.num_cpus or max(os.cpu_count() or 1, math.ceil(needed_cpus(cfg)))
    start_local(num_cpus=cpus, namespace=cfg.cluster.namespace, runtime_env=runtime_env,
                dashboard_host=cfg.cluster.dashboard_host, log_to_driver=True)
    return "local"


def _children() -> set:
    """This process's descendants (the processes a failed ray.init left behind are among them)."""
    return set(psutil.Process().children(recursive=True))
