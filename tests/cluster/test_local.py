"""Attaching to a cluster: which actor env vars the driver passes beside a job's own runtime env."""

import json

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
