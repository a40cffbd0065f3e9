"""The prompts a run trains on: the rows of data.train_path whose prompt (and, with data.max_answer_tokens,
reference answer) fits, then data.subset of them.
Tasks and the tokenizer in, Tasks out (the driver hands them to the sampler)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from toolexpander.config import Config
from toolexpander.data import load_tasks
from toolexpander.overlap import TrainError
from toolexpander.sampling.curriculum import pick_subset
from toolexpander.types import SUBTASKS, Task


def load_tokenizer(model_path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


def fitting_tasks(tasks: list[Task], model_path: Path, cfg: Config, tokenizer=None) -> tuple[list[Task], int, int]:
    """Tasks whose bare prompt fits data.max_prompt_tokens (and the context with max_tokens) and, with
    data.max_answer_tokens set, whose reference answer fits that. Returns them, how many prompts were
    too long and how many answers (of the rows whose prompt fits)."""
    from toolexpander.prompt import prompt_ids

    if tokenizer is None:   # not `or`: a tokenizer's truth is its vocabulary's length
        tokenizer = load_tokenizer(model_path)
    limit = min(cfg.data.max_prompt_tokens, cfg.rollout.max_model_len - cfg.rollout.max_tokens)
    kept = [t for t in tasks if len(prompt_ids(tokenizer, t)) <= limit]
    if cfg.data.max_answer_tokens is None:
        return kept, len(tasks) - len(kept), 0
    answered = [t for t in kept if answer_tokens(tokenizer, t) <= cfg.data.max_answer_tokens]
    return answered, len(tasks) - len(kept), len(kept) - len(answered)


def answer_tokens(tokenizer, task: Task) -> int:
    """The length of the task's reference answer as a completion: the target SFT trains on (the ground
    truth in the target format with the demonstrations' think line) and the end-of-turn token."""
    from toolexpander.sft import answer_ids

    return len(answer_ids(tokenizer, task))


def training_tasks(cfg: Config, model_path: Path, rows: list[Task] | None = None,
                   tokenizer=None) -> tuple[list[Task], int, int]:
    """The tasks a run trains on and how many rows were left out for a too long prompt, and for a too
    long answer: data.train_path (its first data.limit rows; `rows` when the caller has read them), those
    that fit, then data.subset of them (seeded by train.seed), so that a subset of 64 trains on 64 prompts."""
    if rows is None:
        rows = load_tasks(cfg.data.train_path)[: cfg.data.limit]
    tasks, too_long, long_answers = fitting_tasks(rows, model_path, cfg, tokenizer)
    if not tasks:
        raise TrainError(f"data.train_path: no task fits data.max_prompt_tokens={cfg.data.max_prompt_tokens}"
                         + (f" and data.max_answer_tokens={cfg.data.max_answer_tokens}"
                            if cfg.data.max_answer_tokens is not None else ""))
    if cfg.data.subset and cfg.data.subset < len(tasks):
        mix = [t.subtask for t in rows] if cfg.data.subset_mix == "file" else None
        tasks = [tasks[i] for i in pick_subset([t.subtask for t in tasks], cfg.data.subset,
                                               np.random.default_rng(cfg.train.seed), mix)]
    return tasks, too_long, long_answers


def subtask_mix(tasks: list[Task]) -> str:
    """"no_call:10,single:30,parallel:4,multi_turn:20": prompts per sub-task (the start event's mix=)."""
    counts = Counter(t.subtask for t in tasks)
    return ",".join(f"{name}:{counts[name]}" for name in SUBTASKS)
