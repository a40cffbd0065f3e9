"""`toolexpander sft`: the loss mask on a hand-made task, the row choice (training data only), bad
input, and a real run on the tiny model with two learner ranks (loss falls, model + metrics +
marker written, the same command again is a cache hit)."""

import json
import math
import subprocess
import sys

from pathlib import Path

import pytest
import torch
import yaml

import toolexpander.sft as sft_module
from toolexpander.config import load_config
from toolexpander.data import load_tasks
from toolexpander.learner.shared_prompt import completion_logprobs_plain
from toolexpander.prompt import chat_messages, prompt_ids
from toolexpander.sft import (MARKER, SftError, answer_text, cache_key, choose_examples, is_cached, sft,
                              sft_example, train_tasks)
from toolexpander.types import Task

REPO = Path(__file__).resolve().parent.parent

TOOLS = [{"name": "get_weather", "description": "Weather for a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
CALL_TASK = Task.model_validate({
    "id": "hand-1", "tools": TOOLS, "messages": [{"role": "user", "content": "Weather in Oslo?"}],
    "answer": {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}})
REPLY_TASK = Task.model_validate({
    "id": "hand-2", "tools": TOOLS, "messages": [{"role": "user", "content": "Hi there"}],
    "answer": {"tool_calls": [], "response": "Hello! How can I help?"}})


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def template_ids(tokenizer, messages) -> list[int]:
    encoded = tokenizer.apply_chat_template(messages, tokenize=True)
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


@pytest.mark.parametrize("task", [CALL_TASK, REPLY_TASK], ids=["call", "reply"])
def test_loss_mask_is_exactly_the_answer_and_end_of_turn(tokenizer, task):
    ex = sft_example(tokenizer, task)
    # The prompt is the rollout prompt: same ids, ending with the generation prompt, no demos.
    assert ex.prompt == prompt_ids(tokenizer, task)
    assert tokenizer.decode(ex.prompt).endswith("<|im_start|>assistant\n")
    assert "Solved examples" not in tokenizer.decode(ex.prompt)
    # The target is the rendered ground truth and the end-of-turn token, nothing else.
    assert tokenizer.decode(ex.answer) == answer_text(task) + "<|im_end|>"
    assert ex.answer[-1] == tokenizer.eos_token_id and ex.answer.count(tokenizer.eos_token_id) == 1
    assert answer_text(task).startswith("<think>")
    # Prompt + target is the chat template's own rendering of the finished conversation (up to the
    # template's newline after the end-of-turn token, which the model never has to produce).
    full = template_ids(tokenizer, chat_messages(task) + [{"role": "assistant", "content": answer_text(task)}])
    assert full[: len(ex.ids)] == ex.ids and tokenizer.decode(full[len(ex.ids):]) == "\n"
    assert ex.loss_mask == [0] * len(ex.prompt) + [1] * len(ex.answer)
    assert len(ex.loss_mask) == len(ex.ids)


def test_learner_loss_is_cross_entropy_on_the_masked_tokens(tokenizer, tiny_model):
    # Learner.sft_step scores the answer with completion_logprobs_plain; that must equal the
    # textbook loss: cross-entropy with every position outside loss_mask ignored (-100).
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    ex = sft_example(tokenizer, CALL_TASK)
    labels = [i if m else -100 for i, m in zip(ex.ids, ex.loss_mask)]
    with torch.no_grad():
        reference = model(input_ids=torch.tensor([ex.ids]), labels=torch.tensor([labels])).loss
        logprobs_1T, _ = completion_logprobs_plain(model, ex.prompt, [ex.answer])
    assert float(-logprobs_1T.sum() / len(ex.answer)) == pytest.approx(float(reference), rel=1e-5)


def cfg_for(tmp_path, **sections):
    tree = {"model": {"path": str(REPO / "models" / "tiny"), "prepare": "tiny"}, "logging": {"tensorboard": False},
            "data": {"train_path": str(REPO / "data" / "tool_calls_train.jsonl"), "max_prompt_tokens": 512},
            "sft": {"output_dir": str(tmp_path / "out")}}
    for section, values in sections.items():
        tree[section] = {**tree.get(section, {}), **values}
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(tree))
    return load_config(path), path


def test_row_budget_reads_only_the_train_file(tokenizer, tmp_path, repo, monkeypatch):
    read = []
    monkeypatch.setattr(sft_module, "load_tasks", lambda path: read.append(str(path)) or load_tasks(path))
    train = str(repo / "data" / "tool_calls_train.jsonl")
    cfg, _ = cfg_for(tmp_path, data={"train_path": train, "limit": 40}, sft={"rows": 10_000})
    examples, too_long = choose_examples(cfg, tokenizer, train_tasks(cfg))
    assert read == [train]  # a budget larger than the file takes what fits and looks nowhere else
    assert len(examples) + too_long == 40
    assert all(len(e.prompt) <= 512 and len(e.answer) <= cfg.sft.max_answer_tokens for e in examples)
    first_40 = {t.id for t in load_tasks(train)[:40]}
    eval_ids = {t.id for name in ("tool_calls_eval.jsonl", "acebench_eval.jsonl")
                for t in load_tasks(repo / "data" / name)}
    chosen = [e.task_id for e in examples]
    assert set(chosen) <= first_40 and not set(chosen) & eval_ids
    # Seeded: the same seed picks the same rows in the same order, another seed another order.
    cfg_small, _ = cfg_for(tmp_path, data={"train_path": train, "limit": 40}, sft={"rows": 5})
    again = [e.task_id for e in choose_examples(cfg_small, tokenizer, train_tasks(cfg_small))[0]]
    assert again == chosen[:5]
    cfg_seed, _ = cfg_for(tmp_path, data={"train_path": train, "limit": 40}, sft={"rows": 5, "seed": 1})
    assert [e.task_id for e in choose_examples(cfg_seed, tokenizer, train_tasks(cfg_seed))[0]] != again


def test_sft_prompt_limit_replaces_the_data_one(tokenizer, tmp_path, repo):
    # data.max_prompt_tokens 512 (cfg_for) binds GRPO; sft.max_prompt_tokens lets SFT take longer prompts.
    train = str(repo / "data" / "tool_calls_train.jsonl")
    cfg, _ = cfg_for(tmp_path, data={"train_path": train, "limit": 60}, sft={"rows": 10_000, "max_prompt_tokens": 1024})
    examples, too_long = choose_examples(cfg, tokenizer, train_tasks(cfg))
    lengths = [len(e.prompt) for e in examples]
    assert max(lengths) <= 1024 and any(n > 512 for n in lengths)
    narrow, narrow_too_long = choose_examples(cfg_for(tmp_path, data={"train_path": train, "limit": 60},
                                                      sft={"rows": 10_000})[0], tokenizer, train_tasks(cfg))
    assert [e for e in examples if len(e.prompt) <= 512] == narrow
    assert len(examples) + too_long == len(narrow) + narrow_too_long == 60


@pytest.mark.parametrize("name", ["tool_calls_eval.jsonl", "acebench_eval.jsonl"])
def test_evaluation_files_are_refused(tmp_path, repo, name):
    cfg, _ = cfg_for(tmp_path, data={"train_path": str(repo / "data" / name)})
    with pytest.raises(SftError, match="evaluation data"):
        sft(cfg)
    assert not (tmp_path / "out").exists()


def test_bad_row_is_named_by_file_row_and_field(tmp_path, repo):
    good = json.loads((repo / "data" / "tool_calls_train.jsonl").open().readline())
    bad = {**good, "id": "bad-1", "messages": "not a list"}
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    _, config = cfg_for(tmp_path, data={"train_path": str(data)})
    out = subprocess.run([sys.executable, "-m", "toolexpander", "sft", "--config", str(config)],
                         capture_output=True, text=True, timeout=300, cwd=repo)
    assert out.returncode == 1
    assert f"{data}:2: messages:" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "out").exists()  # nothing written for a run that never started
    missing = tmp_path / "missing.jsonl"
    out = subprocess.run([sys.executable, "-m", "toolexpander", "sft", "--config", str(config),
                          "--data.train_path", str(missing)], capture_output=True, text=True, timeout=300, cwd=repo)
    assert out.returncode == 1 and f"{missing}: file not found" in out.stderr


def test_output_dir_that_is_not_ours_is_refused(tmp_path, tiny_model):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    cfg, _ = cfg_for(tmp_path, data={"limit": 4})
    with pytest.raises(SftError, match="not written by `toolexpander sft`"):
        sft(cfg)
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_cache_key_follows_what_changes_the_weights(tmp_path):
    base, _ = cfg_for(tmp_path)
    same = [cfg_for(tmp_path, **change)[0] for change in
            ({"learner": {"lr": 0.5}}, {"rollout": {"n": 4}}, {"logging": {"output_dir": "x"}},
             {"sft": {"output_dir": str(tmp_path / "elsewhere")}}, {"sft": {"max_prompt_tokens": 512}})]
    assert all(cache_key(c) == cache_key(base) for c in same)
    other = [cfg_for(tmp_path, **change)[0] for change in
             ({"sft": {"lr": 1e-4}}, {"sft": {"seed": 1}}, {"sft": {"rows": 7}}, {"model": {"path": "models/x"}},
              {"data": {"max_prompt_tokens": 256}}, {"learner": {"world_size": 2}}, {"sft": {"max_prompt_tokens": 1024}})]
    assert len({cache_key(c) for c in other} | {cache_key(base)}) == len(other) + 1
    # The LM head's precision matters only under bf16 autocast; its default leaves the key as it was.
    bf16 = cfg_for(tmp_path, model={"dtype": "bfloat16"})[0]
    assert cache_key(cfg_for(tmp_path, learner={"lm_head_fp32": False})[0]) == cache_key(base)
    assert cache_key(cfg_for(tmp_path, model={"dtype": "bfloat16"}, learner={"lm_head_fp32": True})[0]) == cache_key(bf16)
    assert cache_key(cfg_for(tmp_path, model={"dtype": "bfloat16"}, learner={"lm_head_fp32": False})[0]) not in (
        cache_key(bf16), cache_key(base))


def test_cache_key_reads_the_model_and_data_by_content_not_by_path(tmp_path, tiny_model):
    import shutil

    base, _ = cfg_for(tmp_path)
    # another checkout: the same model and training file at other paths (a clone, a git worktree)
    clone = tmp_path / "clone"
    shutil.copytree(REPO / "models" / "tiny", clone / "models" / "tiny", ignore=shutil.ignore_patterns("*.lock"))
    (clone / "data").mkdir()
    shutil.copy(REPO / "data" / "tool_calls_train.jsonl", clone / "data" / "tool_calls_train.jsonl")
    moved, _ = cfg_for(tmp_path, model={"path": str(clone / "models" / "tiny")},
                       data={"train_path": str(clone / "data" / "tool_calls_train.jsonl")})
    assert cache_key(moved) == cache_key(base)
    # one byte of the model's weights or of the data file changed: another warm start
    weights = clone / "models" / "tiny" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")
    assert cache_key(moved) != cache_key(base)
    rows = clone / "data" / "tool_calls_train.jsonl"
    rows.write_text(rows.read_text() + "\n")
    assert cache_key(cfg_for(tmp_path, data={"train_path": str(rows)})[0]) != cache_key(base)
    # files below the model directory (an SFT output's run logs) are not the model
    logs = tmp_path / "with_logs"
    shutil.copytree(REPO / "models" / "tiny", logs, ignore=shutil.ignore_patterns("*.lock"))
    (logs / "sft").mkdir()
    (logs / "sft" / "metrics.jsonl").write_text("{}\n")
    assert cache_key(cfg_for(tmp_path, model={"path": str(logs)})[0]) == cache_key(base)


def test_tiny_run_two_ranks_then_cache_hit(ray_local, tiny_model, tokenizer, tmp_path, repo, monkeypatch):
    # 4 rows in one batch per step: every step's loss is measured on the same examples, before its update.
    cfg, config = cfg_for(tmp_path, model={"path": str(tiny_model), "prepare": None},
                          data={"train_path": str(repo / "data" / "tool_calls_train.jsonl")},
                          sft={"rows": 4, "batch_rows": 4, "epochs": 4, "lr": 1e-3, "lr_min": 5e-4},
                          learner={"world_size": 2, "cpus_per_rank": 1})
    read = []
    monkeypatch.setattr(sft_module, "load_tasks", lambda path: read.append(str(path)) or load_tasks(path))
    out, cached = sft(cfg)
    assert read == [cfg.data.train_path]  # the only data the run looked at
    assert not cached and out == tmp_path / "out"
    rows = [json.loads(line) for line in (out / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    for r in rows:
        for key in ("sft/loss", "sft/tokens", "learner/lr", "learner/grad_norm", "time/step_s"):
            assert r[key] is not None and math.isfinite(r[key]), key
        assert r["sft/skipped"] == 0
    losses = [r["sft/loss"] for r in rows]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert [r["learner/lr"] for r in rows] == pytest.approx([1e-3, 1e-3 * 0.5 ** (1 / 3), 1e-3 * 0.5 ** (2 / 3), 5e-4])

    # Step 0's loss is the token-level mean over every answer token of the batch on both ranks.
    from transformers import AutoModelForCausalLM

    examples, _ = choose_examples(cfg, tokenizer, train_tasks(cfg))
    assert rows[0]["sft/tokens"] == sum(len(e.answer) for e in examples)

    def mean_nll(model_dir) -> float:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        with torch.no_grad():
            nll = sum(-float(completion_logprobs_plain(model, e.prompt, [e.answer])[0].sum()) for e in examples)
        return nll / sum(len(e.answer) for e in examples)

    assert rows[0]["sft/loss"] == pytest.approx(mean_nll(tiny_model), rel=1e-5)
    # The exported model is the trained one: its loss on the training rows is below every logged one.
    assert mean_nll(out) < losses[-1]
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out).chat_template == tokenizer.chat_template
    assert json.loads((out / "sft" / "config.json").read_text())["sft"]["rows"] == 4
    assert (out / "sft" / "report" / "sft.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    marker = json.loads((out / MARKER).read_text())
    assert marker["complete"] and marker["hash"] == cache_key(cfg) and is_cached(out, cache_key(cfg))

    # The same command again: a cache hit that touches nothing.
    before = (out / "model.safetensors").stat().st_mtime_ns
    hit = subprocess.run([sys.executable, "-m", "toolexpander", "sft", "--config", str(config)],
                         capture_output=True, text=True, timeout=120, cwd=repo)
    assert hit.returncode == 0, hit.stderr[-2000:]
    assert hit.stdout.strip() == f"cached: {out}"
    assert (out / "model.safetensors").stat().st_mtime_ns == before
