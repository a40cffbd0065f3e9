"""Faults injected for real: torn checkpoints, garbage model output, bad input, exposure."""

import ast
import json
import random
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from toolexpander import storage
from toolexpander.learner import checkpoint
from toolexpander.rewards import ZERO, score_batch

PACKAGE = Path(__file__).resolve().parent.parent / "toolexpander"


def fake_checkpoint(root, step, keep_last=5):
    tmp = checkpoint.begin(root, step)
    with storage.writable(storage.join(tmp, "learner")) as d:   # a learner rank's part
        (d / "model.pt").write_bytes(b"x" * 1000)
    storage.write_file(storage.join(tmp, "sampler.npz"), b"y" * 100)   # the sampler's
    return checkpoint.commit(root, step, keep_last)


@pytest.fixture(params=["path", "uri", "s3"])
def ckpt_root(request, tmp_path):
    """A plain directory (written in place, renamed into place), a file:// URI or a bucket (the
    object-store path: staged uploads, no renames, the marker alone completes a checkpoint)."""
    if request.param == "s3":
        return storage.join(request.getfixturevalue("s3"), tmp_path.name, "checkpoints")
    return str(tmp_path) if request.param == "path" else f"file://{tmp_path}"


def test_torn_checkpoint_is_never_loaded(ckpt_root):
    store = storage.Store(ckpt_root)
    first = fake_checkpoint(ckpt_root, 2)
    second = fake_checkpoint(ckpt_root, 4)
    assert checkpoint.latest(ckpt_root) == second == storage.join(ckpt_root, "step_00000004")
    store.write_bytes("step_00000004/learner/model.pt", b"x" * 10)   # cut short by a crash mid-write
    with pytest.warns(UserWarning, match="step_00000004 skipped: learner/model.pt has 10 bytes, expected 1000"):
        assert checkpoint.latest(ckpt_root) == first
    store.fs.delete_file(store.path(f"step_00000002/{checkpoint.MARKER}"))   # marker never written
    with pytest.warns(UserWarning, match="no COMPLETE marker"):
        assert checkpoint.latest(ckpt_root) is None


def test_unfinished_checkpoints_and_pruning(ckpt_root):
    store = storage.Store(ckpt_root)
    checkpoint.begin(ckpt_root, 9)  # a write that never committed
    for step in (1, 2, 3):
        fake_checkpoint(ckpt_root, step, keep_last=2)
    kept = [name for name in store.dirs("", "step_") if store.is_file(f"{name}/{checkpoint.MARKER}")]
    assert kept == ["step_00000002", "step_00000003"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert checkpoint.latest(ckpt_root) == storage.join(ckpt_root, "step_00000003")
    # a plain path wrote step 9 under a temp name; a URI wrote it in place, and it is skipped, said so
    assert [str(w.message) for w in caught] == ([] if ckpt_root.startswith("/") else
                                                [f"checkpoint {ckpt_root}/step_00000009 skipped: no COMPLETE "
                                                 "marker (the write did not finish)"])


def test_ten_thousand_fuzzed_completions_never_raise(train_tasks):
    rng = random.Random(0)
    pieces = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<response>", "</response>",
              "<example>", "</example>", "{", "}", "[", "]", '"name"', '"arguments"', ":", ",", "\n",
              "\\u0000", "\ud800", "NaN", "1e999", "9" * 5000, "{" * 500, "null", "\x00"]
    tasks = rng.sample(train_tasks, 50)
    scored = 0
    for i in range(200):
        texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 60))) for _ in range(50)]
        for vector in score_batch(texts, tasks[i % 50], strict=True):   # a scorer exception fails
            assert 0.0 <= vector.format <= 1.0 and 0.0 <= vector.correct <= 1.0
            scored += 1
    assert scored == 10_000
    assert score_batch(["x" * 10_000_000], tasks[0]) == [ZERO]


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "toolexpander", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["--config", "configs/smoke.yaml", "--learner.zero_stage", "5"], "learner.zero_stage: Input should be 0, 1, 2 or 3"),
    (["--config", "configs/smoke.yaml", "--rollout.nn", "4"], "rollout.nn: unknown key"),
    (["--config", "configs/nope.yaml"], "config file not found: configs/nope.yaml"),
    (["--config", "configs/smoke.yaml", "--model.path", "/nonexistent/model", "--model.prepare", "null"],
     "model.path: /nonexistent/model is not a model directory"),
    (["--config", "configs/smoke.yaml", "--data.train_path", "data/missing.jsonl"],
     "data/missing.jsonl: file not found"),
])
def test_bad_config_and_paths_give_one_line(repo, tmp_path, args, message):
    out = subprocess.run([sys.executable, "-m", "toolexpander", "train", *args, "--output-dir",
                          str(tmp_path / "run")], capture_output=True, text=True, cwd=repo, timeout=300)
    assert out.returncode == 1
    assert message in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]


def test_malformed_training_rows_refuse_to_start(repo, tmp_path):
    rows = (repo / "data" / "tool_calls_eval.jsonl").read_text().splitlines()[:3]
    rows[1] = rows[1].replace('"messages"', '"messagez"', 1)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(rows) + "\n")
    out = subprocess.run([sys.executable, "-m", "toolexpander", "train", "--config", "configs/smoke.yaml",
                          "--data.train_path", str(bad), "--output-dir", str(tmp_path / "run")],
                         capture_output=True, text=True, cwd=repo, timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"{bad}:2: messages: Field required" in out.stderr


def test_unreachable_ray_address_is_named(repo, tiny_model, tmp_path):
    start = time.time()
    out = subprocess.run([sys.executable, "-m", "toolexpander", "train", "--config", "configs/smoke.yaml",
                          "--cluster.address", "127.0.0.1:1", "--output-dir", str(tmp_path / "run")],
                         capture_output=True, text=True, cwd=repo, timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "cluster.address: cannot reach Ray at '127.0.0.1:1'" in out.stderr
    assert time.time() - start < 120


def calls_in_package():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                yield path, node


def test_no_eval_exec_or_unsafe_unpickling_in_the_package():
    for path, node in calls_in_package():
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        # The builtins, not methods such as torch's module.eval().
        assert not (isinstance(func, ast.Name) and name in ("eval", "exec")), f"{path}:{node.lineno} calls {name}"
        if name == "load" and isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            module = func.value.id
            assert module != "pickle", f"{path}:{node.lineno} unpickles"
            if module == "torch":
                kw = {k.arg: k.value for k in node.keywords}
                assert "weights_only" in kw and getattr(kw["weights_only"], "value", None) is True, \
                    f"{path}:{node.lineno}: torch.load without weights_only=True"
            if module == "np":
                kw = {k.arg: k.value for k in node.keywords}
                assert getattr(kw.get("allow_pickle"), "value", None) is False, f"{path}:{node.lineno}"


def test_three_nonfinite_updates_stop_the_run_with_a_checkpoint(repo, tiny_model, tmp_path):
    """A real fault: one NaN in a weight of the model makes every loss non-finite. On ZeRO-2,
    DeepSpeed's own overflow check skips the update; the learner asks it (was_step_applied)."""
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "nan-model"
    shutil.copytree(tiny_model, broken)
    weights = load_file(str(broken / "model.safetensors"))
    weights["model.layers.1.mlp.down_proj.weight"][0, 0] = float("nan")
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    run_dir = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "toolexpander", "train", "--config", "configs/smoke.yaml",
                          "--model.path", str(broken), "--model.prepare", "null", "--train.steps", "8",
                          "--learner.zero_stage", "2", "--output-dir", str(run_dir)],
                         capture_output=True, text=True, cwd=repo, timeout=600)
    assert out.returncode == 2, out.stderr[-2000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for r in rows:  # logged, never hidden: NaN (null) where no value exists, and no weights pushed
        assert r["learner/skipped"] == 1 and r["learner/applied"] == 0 and r["learner/nonfinite"] == 1
        assert r["learner/grad_norm"] is None and r["learner/loss"] is None
        assert r["policy_version"] == 0 and r["time/weight_push_s"] is None
        assert "learner/clip_frac" in r and "learner/entropy" in r
    assert "stopping: 3 non-finite updates in a row; checkpoint" in out.stdout
    events = [json.loads(line)["event"] for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert events.count("nonfinite") == 3
    assert checkpoint.latest(str(run_dir / "checkpoints")) == str(run_dir / "checkpoints" / "step_00000003")


def process_tree(root_pid: int) -> list[int]:
    import psutil

    try:
        root = psutil.Process(root_pid)
        return [root_pid, *(p.pid for p in root.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def listening(pids: list[int]) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every TCP socket these processes listen on. One machine-wide
    table per call: asking each process for its own reads the whole TCP table once per process (up to
    ~10 ms of CPU for a torch process), a good share of a 2-core machine polled twice a second."""
    import psutil

    wanted, found = set(pids), []
    for c in psutil.net_connections(kind="tcp"):
        if c.pid in wanted and c.status == psutil.CONN_LISTEN:
            try:
                found.append((psutil.Process(c.pid).name(), c.laddr.ip, c.laddr.port))
            except psutil.NoSuchProcess:
                continue
    return found


def is_loopback(address: str) -> bool:
    import ipaddress

    ip = ipaddress.ip_address(address)
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


def test_local_mode_listens_only_on_loopback(repo, tiny_model, tmp_path):
    # Every kind of socket a run opens: Ray's servers and workers, two DeepSpeed ranks (their
    # rendezvous store and gloo pairs) and the gloo weight-push group with the rollout worker.
    log = tmp_path / "train.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "toolexpander", "train", "--config", "configs/smoke.yaml",
         "--output-dir", str(tmp_path / "run"), "--train.steps", "2", "--rollout.n", "4",
         "--rollout.max_tokens", "8", "--data.limit", "16", "--learner.world_size", "2",
         "--learner.weight_sync", "gloo", "--eval.every", "0"],
        cwd=repo, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    seen, deadline = set(), time.time() + 600
    try:
        while proc.poll() is None and time.time() < deadline:
            seen.update(listening(process_tree(proc.pid)))
            time.sleep(0.5)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, log.read_text()[-3000:]
    names = {name for name, _, _ in seen}
    assert {"gcs_server", "raylet"} <= names and any(n.startswith("ray::Learner") for n in names), names
    exposed = sorted(s for s in seen if not is_loopback(s[1]))
    assert not exposed, f"listening beyond loopback: {exposed}"
