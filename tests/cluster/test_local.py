"""Attaching to a cluster: which actor env vars the driver passes beside a job's own runtime env."""

import json

import pytest

from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

from toolexpander.cluster.local import ACTOR_ENV, unset_by_job


def test_a_driver_started_by_hand_passes_every_actor_variable(monkeypatch):
    # cli sets the offline variables in the driver's own environment; its actors still need them.
    monkeypatch.delenv(RAY_JOB_CONFIG_JSON_ENV_VAR, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert unset_by_job(ACTOR_ENV) == ACTOR_ENV


def test_a_job_keeps_the_variables_its_runtime_env_sets(monkeypatch):
    job = {"runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}}}
    monkeypatch.setenv(RAY_JOB_CONFIG_JSON_ENV_VAR, json.dumps(job))
    passed = unset_by_job(ACTOR_ENV)
    assert set(passed) == set(ACTOR_ENV) - {"HF_HUB_OFFLINE", "VLLM_NO_USAGE_STATS"}


def test_a_local_ray_that_misses_its_start_deadline_is_stopped_and_started_once_more(monkeypatch):
    """Ray raises a bare Exception when its processes miss the start-up deadline (seen on a loaded
    2-core machine): start_local kills what the failed attempt started and tries once more; any other
    error, or a second timeout, is raised."""
    import subprocess

    import ray

    from toolexpander.cluster import local

    calls, left = [], []

    def init(**kwargs):
        calls.append(kwargs["_node_ip_address"])
        if len(calls) == 1:
            left.append(subprocess.Popen(["sleep", "300"]))   # what a failed start leaves behind
            raise Exception("The current node timed out during startup. This could happen because ...")

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "127.0.0.1")
    with pytest.warns(UserWarning, match="did not start in time"):
        local.start_local(num_cpus=1)
    assert calls == ["127.0.0.1", "127.0.0.1"]
    assert left[0].wait(timeout=10) == -9                          # killed, not left running

    def init_fails(**kwargs):
        calls.append("again")
        raise Exception("The current node timed out during startup.")

    monkeypatch.setattr(ray, "init", init_fails)
    calls.clear()
    with pytest.warns(UserWarning), pytest.raises(Exception, match="timed out during startup"):
        local.start_local(num_cpus=1)
    assert calls == ["again", "again"]                             # one retry only

    def init_broken(**kwargs):
        calls.append("broken")
        raise ValueError("bad argument")

    monkeypatch.setattr(ray, "init", init_broken)
    calls.clear()
    with pytest.raises(ValueError, match="bad argument"):
        local.start_local(num_cpus=1)
    assert calls == ["broken"]                                     # not retried
