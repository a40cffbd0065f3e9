"""Supervised warm start: `toolexpander sft --config X.yaml` teaches the target format before GRPO.

In: data.train_path only (never evaluation data), a seeded choice of sft.rows rows. Each example is
the prompt exactly as rollouts render it (no demos) and, as the target, the ground truth rendered in
the target format followed by the chat template's end-of-turn token; the loss is the token-level mean
cross-entropy over every answer token of the optimizer batch, on all learner ranks (Learner.sft_step).
Out: sft.output_dir, a model directory `train --model.path DIR --model.prepare null` starts from, with
DIR/sft/{config.json, metrics.jsonl, report/} and a completion marker that holds a hash of the
SFT-relevant config: the same command again is a cache hit that returns at once.

    toolexpander sft --config configs/local-smollm2.yaml                 # -> models/smollm2-135m-sft
    toolexpander train --config configs/local-smollm2.yaml --model.path models/smollm2-135m-sft --model.prepare null
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from toolexpander.config import Config, LearnerConfig, dump_config
from toolexpander.data import DataError, load_tasks
from toolexpander.models import ensure_model
from toolexpander.prompt import demo_think, prompt_ids
from toolexpander.rewards import render_answer
from toolexpander.types import Task

MARKER = "toolexpander-sft.json"
RUN_SUBDIR = "sft"  # DIR/config.json is the model's own config, so the run's record lives one level down


class SftError(RuntimeError):
    pass


# ---- examples (pure: a tokenizer in, token ids out) ----------------------------------------------
@dataclass(frozen=True)
class Example:
    task_id: str
    prompt: list[int]   # (T_p,) the rollout prompt: chat template, no demos, generation prompt
    answer: list[int]   # (T_a,) the ground truth in the target format, then the end-of-turn token

    @property
    def ids(self) -> list[int]:
        return self.prompt + self.answer                                    # (T_p + T_a,)

    @property
    def loss_mask(self) -> list[int]:
        return [0] * len(self.prompt) + [1] * len(self.answer)              # (T_p + T_a,)


def answer_text(task: Task) -> str:
    """The target: the ground truth with the short think the hard-sampling demonstrations use."""
    return render_answer(task.answer, think=demo_think(task))


@lru_cache(maxsize=8)
def end_of_turn_id(tokenizer) -> int:
    """The token the chat template closes an assistant turn with (<|im_end|> for ChatML models,
    <|eot_id|> for Llama 3), read off a rendered turn; the tokenizer's EOS when there is none."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}],
                                         tokenize=False)
    after = tokenizer.encode(text[text.rindex("ok") + 2:], add_special_tokens=False)
    if after and after[0] in tokenizer.all_special_ids:
        return after[0]
    if tokenizer.eos_token_id is None:
        raise SftError("the model's chat template and tokenizer name no token that ends an answer")
    return tokenizer.eos_token_id


def answer_ids(tokenizer, task: Task) -> list[int]:
    """The target as token ids: generation stops at the end-of-turn token, so the target ends with it
    (also what a rollout must produce to answer the task: trainset.answer_tokens)."""
    return tokenizer.encode(answer_text(task), add_special_tokens=False) + [end_of_turn_id(tokenizer)]


def sft_example(tokenizer, task: Task) -> Example:
    return Example(task_id=task.id, prompt=prompt_ids(tokenizer, task), answer=answer_ids(tokenizer, task))


def refuse_eval_data(path: str | Path) -> None:
    """SFT trains on training data only: the ToolRL test set, ACEBench and BFCL are evaluation data."""
    from toolexpander.eval.runner import DATA_FILES

    path = Path(path)
    repo_data = Path(__file__).resolve().parents[1] / "data"
    eval_files = {(base / name).resolve() for name in DATA_FILES.values() for base in (Path("data"), repo_data)}
    if path.name in DATA_FILES.values() or path.resolve() in eval_files or "bfcl_eval" in path.resolve().parts:
        raise SftError(f"data.train_path: {path} is evaluation data; sft trains on training data only")


def train_tasks(cfg: Config) -> list[Task]:
    """The rows sft may train on: data.train_path (the first data.limit rows), never evaluation data.
    A bad row raises DataError naming the file, the row and the field."""
    refuse_eval_data(cfg.data.train_path)
    return load_tasks(cfg.data.train_path)[: cfg.data.limit]


def choose_examples(cfg: Config, tokenizer, tasks: list[Task]) -> tuple[list[Example], int]:
    """The first sft.rows tasks of a seeded permutation whose prompt fits sft.max_prompt_tokens (default
    data.max_prompt_tokens) and whose target fits sft.max_answer_tokens. Returns the examples and how many
    were too long."""
    chosen, too_long = [], 0
    max_prompt = prompt_limit(cfg)
    for i in np.random.default_rng(cfg.sft.seed).permutation(len(tasks)):
        example = sft_example(tokenizer, tasks[i])
        if len(example.prompt) > max_prompt or len(example.answer) > cfg.sft.max_answer_tokens:
            too_long += 1
            continue
        chosen.append(example)
        if len(chosen) == cfg.sft.rows:
            break
    if not chosen:
        raise SftError(f"data.train_path: no row fits a prompt of {max_prompt} tokens (sft.max_prompt_tokens, "
                       f"default data.max_prompt_tokens) and sft.max_answer_tokens={cfg.sft.max_answer_tokens}")
    return chosen, too_long


def prompt_limit(cfg: Config) -> int:
    """The longest prompt SFT trains on: sft.max_prompt_tokens, or data.max_prompt_tokens when unset."""
    return cfg.data.max_prompt_tokens if cfg.sft.max_prompt_tokens is None else cfg.sft.max_prompt_tokens


# ---- the cache -----------------------------------------------------------------------------------
def output_dir(cfg: Config) -> Path:
    return Path(cfg.sft.output_dir or f"{cfg.model.path.rstrip('/')}-sft")


def cache_key(cfg: Config, model_path: Path | None = None) -> str:
    """A hash of everything that changes the weights SFT writes, by content: the starting model's files
    (model_path, default model.path) and the data file's bytes, not where the checkout keeps them (a
    cache made in one clone or worktree is found from another), nor where SFT writes."""
    data = Path(cfg.data.train_path)
    relevant = {
        "model": {"files": files_digest(Path(model_path or cfg.model.path)), "dtype": cfg.model.dtype},
        "data": {"limit": cfg.data.limit, "max_prompt_tokens": prompt_limit(cfg),
                 "sha256": hashlib.sha256(data.read_bytes()).hexdigest() if data.is_file() else f"missing:{data}"},
        "sft": cfg.sft.model_dump(mode="json", exclude={"output_dir", "max_prompt_tokens"}),
        "learner": cfg.learner.model_dump(mode="json", include={"world_size", "zero_stage", "grad_clip"}),
    }
    if cfg.model.dtype != "float32" and not cfg.learner.lm_head_fp32:
        # a bf16 LM head trains other weights; only its non-default value is hashed, so that the caches
        # made before it was (always with the float32 head) stay valid
        relevant["learner"]["lm_head_fp32"] = False
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def files_digest(directory: Path) -> str:
    """sha256 over a model directory's own files (weights, config, tokenizer: names and bytes; not its
    subdirectories, such as an SFT output's run logs); "missing:<path>" where there is no such directory."""
    if not directory.is_dir():
        return f"missing:{directory}"
    h = hashlib.sha256()
    for f in sorted(p for p in directory.iterdir() if p.is_file()):
        h.update(f.name.encode() + b"\0")
        with f.open("rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()


def _marker(out: Path) -> dict | None:
    try:
        return json.loads((out / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_cached(out: Path, key: str) -> bool:
    marker = _marker(out)
    weights = ("model.safetensors", "model.safetensors.index.json")  # one file, or shards and their index
    return bool(marker and marker.get("complete") and marker.get("hash") == key
                and any((out / name).is_file() for name in weights))


def _claim(out: Path, model_path: Path, key: str) -> None:
    """Empty `out` for a new run; only a directory an earlier sft wrote (complete or not) is removed."""
    if out.resolve() == model_path.resolve():
        raise SftError(f"sft.output_dir: {out} is the model being trained; choose another directory")
    if out.exists() and any(out.iterdir()):
        if _marker(out) is None:
            raise SftError(f"sft.output_dir: {out} exists and was not written by `toolexpander sft`; "
                           f"choose another directory")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps({"hash": key, "complete": False}) + "\n")


# ---- the run -------------------------------------------------------------------------------------
def learner_tree(cfg: Config, total_steps: int) -> Config:
    """The config the LearnerGroup is built from: sft's LR schedule and seed in place of GRPO's."""
    s = cfg.sft
    decay_steps = max(total_steps - s.warmup_steps - 1, 1)
    gamma = 1.0 if s.lr_min is None else (s.lr_min / s.lr) ** (1.0 / decay_steps)
    learner = LearnerConfig.model_validate({**cfg.learner.model_dump(), "lr": s.lr, "lr_min": s.lr_min or s.lr,
                                            "lr_gamma": gamma, "warmup_steps": s.warmup_steps})
    return cfg.model_copy(update={"learner": learner, "train": cfg.train.model_copy(update={"seed": s.seed})})


def sft(cfg: Config) -> tuple[Path, bool]:
    """Run the warm start, or find it done. Returns (the model directory, whether it was cached)."""
    out = output_dir(cfg)
    model_path = ensure_model(cfg.model.path, cfg.model.prepare)   # prepared first: the key hashes its files
    key = cache_key(cfg, model_path)
    if is_cached(out, key):  # before the heavy imports: a cache hit returns at once
        return out, True
    try:
        tasks = train_tasks(cfg)
    except DataError as e:
        raise SftError(f"data.train_path: refusing to start, bad rows:\n{e}") from None
    import ray
    from transformers import AutoTokenizer

    from toolexpander.cluster.local import connect
    from toolexpander.report import write_report

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    examples, too_long = choose_examples(cfg, tokenizer, tasks)
    _claim(out, model_path, key)
    run_dir = out / RUN_SUBDIR
    run_dir.mkdir()
    dump_config(cfg, run_dir / "config.json")
    owns_ray = not ray.is_initialized()  # a caller's Ray (tests, notebooks) is used, not replaced
    mode = connect(cfg, log_dir=run_dir / "logs") if owns_ray else "attached"
    try:
        steps = _train(cfg, model_path, tokenizer.pad_token_id or 0, examples, out, run_dir,
                       f"mode={mode} rows={len(examples)} too_long={too_long}")
    finally:
        if owns_ray:
            ray.shutdown()
    write_report(run_dir)
    (out / MARKER).write_text(json.dumps({"hash": key, "complete": True, "rows": len(examples),
                                          "steps": steps, "base_model": str(model_path)}, indent=2) + "\n")
    return out, False


def _train(cfg: Config, model_path: Path, pad_id: int, examples: list[Example], out: Path, run_dir: Path,
           start_note: str) -> int:
    """The loop: epochs x ceil(rows / batch_rows) steps, one Learner.sft_step each; then the export.
    Returns the number of steps."""
    from toolexpander.actors.group import LearnerGroup
    from toolexpander.metrics import MetricsWriter

    steps_per_epoch = math.ceil(len(examples) / cfg.sft.batch_rows)
    total = cfg.sft.epochs * steps_per_epoch
    learner = LearnerGroup(learner_tree(cfg, total), str(model_path), pad_id)
    metrics = MetricsWriter(run_dir, cfg.logging.tensorboard, None, cfg.model_dump(mode="json"), resume=False)
    metrics.event(0, "start", f"{start_note} steps={total}")
    print(f"sft: {len(examples)} rows, {cfg.sft.epochs} epoch(s), {total} steps of <= {cfg.sft.batch_rows} "
          f"rows, {cfg.learner.world_size} learner rank(s); {start_note}", flush=True)
    try:
        rng = np.random.default_rng(cfg.sft.seed)
        step = 0
        for epoch in range(cfg.sft.epochs):
            # the chosen rows are already in a seeded random order; later epochs reshuffle them
            order = rng.permutation(len(examples)) if epoch else np.arange(len(examples))
            for batch in np.array_split(order, steps_per_epoch):
                t0 = time.perf_counter()
                m = learner.call("sft_step", [(examples[i].prompt, examples[i].answer) for i in batch], step)[0]
                step_s = time.perf_counter() - t0
                m.update({"sft/epoch": epoch, "sft/rows": len(batch), "time/step_s": step_s,
                          "sft/tokens_per_s": m["sft/input_tokens"] / step_s,
                          "sft/answer_tokens_per_s": m["sft/tokens"] / step_s})
                metrics.log(step, m)
                print(f"sft step {step + 1}/{total} loss={m['sft/loss']:.4g} lr={m['learner/lr']:.3g} "
                      f"tok/s={m['sft/tokens_per_s']:.0f} step_s={step_s:.1f}", flush=True)
                step += 1
        learner.call("export_hf", str(out), str(model_path))
    finally:
        metrics.close()
        learner.shutdown()
    return total
