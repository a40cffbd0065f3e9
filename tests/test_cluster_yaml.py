"""The deployment files under cluster/, checked offline: no Ray started, no network, no cloud credentials.

Cluster YAMLs go through Ray's own prepare_config + validate_config (what `ray up` runs before it
calls any cloud API: defaults merge, schema, node-type checks), then against what
configs/gpu-qwen2.5-1.5b.yaml needs; their install command runs for real in bash on a local git repo.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.runtime_env import RuntimeEnv

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster"
GPU_CONFIG = "configs/gpu-qwen2.5-1.5b.yaml"
PINNED = ("TOOLEXPANDER_REPO", "TOOLEXPANDER_COMMIT")


def render(text: str, **values: str) -> str:
    """What the files' documented `envsubst '${TOOLEXPANDER_REPO} ${TOOLEXPANDER_COMMIT}'` does: those
    two names, as $NAME or ${NAME}, become their value or nothing; the rest ($RAY_HEAD_IP, ${X:-y}) stays."""
    pattern = r"\$(?:\{(%s)\}|(%s)\b)" % ("|".join(PINNED), "|".join(PINNED))
    return re.sub(pattern, lambda m: values.get(m[1] or m[2], ""), text)


def gpu_needs() -> tuple[int, int]:
    """(GPUs, CPUs) that configs/gpu-qwen2.5-1.5b.yaml's rollout workers and learner ranks reserve."""
    cfg = yaml.safe_load((REPO / GPU_CONFIG).read_text())
    r, lrn = cfg["rollout"], cfg["learner"]
    gpus = r["num_workers"] * r["gpus_per_worker"] + lrn["world_size"] * lrn["gpus_per_rank"]
    cpus = r["num_workers"] * r["cpus_per_worker"] + lrn["world_size"] * lrn["cpus_per_rank"]
    return gpus, cpus


def prepared(cloud: str, commit: str = "0123abcd") -> dict:
    raw = yaml.safe_load(render((CLUSTER / f"{cloud}-gpu.yaml").read_text(), TOOLEXPANDER_COMMIT=commit))
    config = prepare_config(raw)  # offline for aws and gcp: merges the provider's bundled defaults.yaml
    validate_config(config)
    return config


def install_command(config: dict) -> str:
    [cmd] = [c for c in config["setup_commands"] if "pip install" in c and "git clone" in c]
    return cmd


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_cluster_yaml_validates_and_fits_the_gpu_config(cloud):
    config = prepared(cloud)
    assert config["provider"]["type"] == cloud
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0  # the head runs the driver and the sampler, not vLLM
    workers = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) > 0}
    assert len(workers) >= 2 and config["head_node_type"] not in workers
    gpus, cpus = gpu_needs()
    fits = []
    for name, t in workers.items():
        n = min(t["max_workers"], config["max_workers"])  # nodes of this type the autoscaler may start
        assert t["min_workers"] == 0, f"{name}: idle GPU nodes cost money"
        if n * t["resources"]["GPU"] >= gpus and n * t["resources"]["CPU"] >= cpus:
            fits.append(name)
        node = t["node_config"]
        if cloud == "gcp":  # GPUs attached explicitly, as many as the type advertises to Ray
            [acc] = node["guestAccelerators"]
            assert acc["acceleratorCount"] == t["resources"]["GPU"]
            assert node["scheduling"]["onHostMaintenance"] == "TERMINATE"
        else:
            assert re.fullmatch(r"(p4d|p5|g5|g6)\.\d+xlarge", node["InstanceType"]), node["InstanceType"]
    assert sorted(fits) == sorted(workers), "every GPU worker type must be able to run the GPU config"
    # Ray in the image = the Ray this project pins (pip would otherwise swap it under a running cluster)
    assert config["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-py311-")
    # the model directory the GPU config reads is on every node
    model_path = yaml.safe_load((REPO / GPU_CONFIG).read_text())["model"]["path"]
    assert model_path in config["file_mounts"]


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_cluster_yaml_start_and_setup_commands(cloud):
    config = prepared(cloud, commit="feedbeef")
    head_start = " ".join(config["head_start_ray_commands"])
    assert "ray start --head --port=6379" in head_start and "--dashboard-host=0.0.0.0" in head_start
    assert "ray start --address=$RAY_HEAD_IP:6379" in " ".join(config["worker_start_ray_commands"])
    cmd = install_command(config)
    assert "git clone ${TOOLEXPANDER_REPO:-https://github.com/OWNER/toolexpander}" in cmd
    assert "git checkout --quiet feedbeef" in cmd and 'pip install --quiet -e ".[gpu]"' in cmd
    # prepare_config prepends setup_commands to both roles: head and workers install the same commit
    assert cmd in config["head_setup_commands"] and cmd in config["worker_setup_commands"]


def run_install(cmd: str, home: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """Runs the node's install command with a fake pip that records where it ran and on which commit."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake_pip = bin_dir / "pip"
    fake_pip.write_text('#!/bin/sh\necho "$(pwd) $(git rev-parse HEAD) $*" >> "$PIP_LOG"\n')
    fake_pip.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in PINNED}
    env.update(HOME=str(home), PATH=f"{bin_dir}:{env['PATH']}", PIP_LOG=str(tmp_path / "pip.log"),
               GIT_CONFIG_GLOBAL=os.devnull, GIT_TERMINAL_PROMPT="0")
    return subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=60)


def git(*args, cwd):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_install_command_checks_out_the_pinned_commit(cloud, tmp_path):
    origin = tmp_path / "origin"
    origin.mkdir()
    git("init", "--quiet", cwd=origin)
    (origin / "pyproject.toml").write_text("# v1\n")
    git("add", ".", cwd=origin)
    git("commit", "--quiet", "-m", "v1", cwd=origin)
    first = git("rev-parse", "HEAD", cwd=origin)
    (origin / "pyproject.toml").write_text("# v2\n")
    git("commit", "--quiet", "-am", "v2", cwd=origin)  # the branch tip is NOT what gets installed
    second = git("rev-parse", "HEAD", cwd=origin)
    home = tmp_path / "home"
    home.mkdir()
    text = (CLUSTER / f"{cloud}-gpu.yaml").read_text()

    for commit in (first, second):  # a fresh node, then a stopped node restarted with a new pin
        config = yaml.safe_load(render(text, TOOLEXPANDER_REPO=str(origin), TOOLEXPANDER_COMMIT=commit))
        done = run_install(install_command(config), home, tmp_path)
        assert done.returncode == 0, done.stderr
    log = (tmp_path / "pip.log").read_text().splitlines()
    clone = home / "toolexpander"
    assert log == [f"{clone} {c} install --quiet -e .[gpu]" for c in (first, second)]


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_unrendered_install_command_stops_with_a_message(cloud, tmp_path):
    config = yaml.safe_load((CLUSTER / f"{cloud}-gpu.yaml").read_text())  # `ray up` on the file as is
    home = tmp_path / "home"
    home.mkdir()
    done = run_install(install_command(config), home, tmp_path)
    assert done.returncode == 1
    assert f"TOOLEXPANDER_COMMIT is empty: render cluster/{cloud}-gpu.yaml with envsubst" in done.stderr
    assert not (home / "toolexpander").exists() and not (tmp_path / "pip.log").exists()


def test_kuberay_rayjob():
    job = yaml.safe_load((CLUSTER / "kuberay-rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert spec["entrypoint"].startswith(f"python -m toolexpander train --config {GPU_CONFIG}")
    assert (REPO / GPU_CONFIG).is_file()
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]["template"]["spec"]
    groups = cluster["workerGroupSpecs"]
    pods = [head] + [g["template"]["spec"] for g in groups]
    for pod in pods:
        [container] = pod["containers"]
        image, _, tag = container["image"].rpartition(":")
        assert image == "rayproject/ray" and tag.startswith(f"{ray.__version__}-")  # pinned, not :latest
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
        assert claims[mounts["/mnt/models"]] == "toolexpander-models"
    assert "nvidia.com/gpu" not in head["containers"][0]["resources"]["limits"]
    gpus, cpus = gpu_needs()
    for g in groups:
        limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= gpus and int(limits["cpu"]) >= cpus  # one pod: one node
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    # the runtime env is valid, and one rendered commit pins both the source and the installed package
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    RuntimeEnv(**env)
    assert "${TOOLEXPANDER_COMMIT}" in env["working_dir"] and env["working_dir"].endswith(".zip")
    assert all("${TOOLEXPANDER_COMMIT}" in p for p in env["pip"])
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1"


def test_runtime_env_file():
    from ray._private.runtime_env.packaging import _get_excludes  # what `--working-dir` upload uses

    data = yaml.safe_load((CLUSTER / "runtime-env.yaml").read_text())
    env = RuntimeEnv(**data)  # raises on a malformed runtime env
    assert {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "TOKENIZERS_PARALLELISM": "false"}.items() \
        <= env["env_vars"].items()
    excluded = _get_excludes(REPO, data["excludes"])
    for path in [".venv/bin/python", "runs/smoke/metrics.jsonl", "models/tiny/config.json",
                 ".cache/torch_extensions", "bench/results/sampler.json"]:
        assert excluded(REPO / path), path
    for path in ["toolexpander/models.py", "configs/gpu-qwen2.5-1.5b.yaml", "data", "bench/sampler_scale.py"]:
        assert not excluded(REPO / path), path
