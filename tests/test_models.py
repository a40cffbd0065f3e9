"""prepare-model: the real GGUF -> safetensors conversion (no hub) and the tiny test model."""

import json
import subprocess
import sys
import time

import pytest
import torch

from toolexpander.models import GGUF_NAME, MARKER, ModelError, ensure_model, gguf_dir, prepare_model


def test_tiny_model_is_cached_and_shares_the_tokenizer(tiny_model, repo):
    from transformers import AutoConfig, AutoTokenizer

    marker = tiny_model / MARKER
    stamp = marker.stat().st_mtime_ns
    start = time.perf_counter()
    assert prepare_model("tiny", tiny_model) == tiny_model
    assert time.perf_counter() - start < 0.5 and marker.stat().st_mtime_ns == stamp  # a second call costs nothing
    config = AutoConfig.from_pretrained(tiny_model)
    assert config.head_dim >= 32 and config.tie_word_embeddings
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert tokenizer.vocab_size == config.vocab_size == 49152 and tokenizer.chat_template


def test_refuses_foreign_directories_and_missing_models(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(ModelError, match="was not written by prepare-model"):
        prepare_model("tiny", tmp_path)
    with pytest.raises(ModelError, match="unknown model kind"):
        prepare_model("llama-70b", tmp_path / "x")
    with pytest.raises(ModelError, match="not a model directory"):
        ensure_model(tmp_path / "none", None)


@pytest.mark.slow
def test_converted_smollm2_matches_the_gguf_and_answers(repo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = subprocess.run([sys.executable, "-m", "toolexpander", "prepare-model", "smollm2-135m", "--out",
                          str(repo / "models" / "smollm2-135m")], capture_output=True, text=True, cwd=repo)
    assert out.returncode == 0, out.stderr[-2000:]
    path = repo / "models" / "smollm2-135m"
    assert json.loads((path / MARKER).read_text())["parameters"] > 130_000_000
    converted = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    reference = AutoModelForCausalLM.from_pretrained(gguf_dir(), gguf_file=GGUF_NAME, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        gap = (converted(ids).logits - reference(ids).logits).abs().max().item()
    assert gap < 1e-4, gap
    answer = converted.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:]
    assert "Paris" in tokenizer.decode(answer)


@pytest.mark.parametrize("role", ["rollout", "learner"])
def test_an_actor_without_the_model_on_its_node_names_node_and_path(tmp_path, role):
    # The check runs first in each actor's __init__, before vLLM or DeepSpeed load anything.
    missing = tmp_path / "models" / "not-here"
    if role == "rollout":
        from toolexpander.actors.rollout import RolloutWorker

        with pytest.raises(ModelError, match=r"rollout worker 3 on node 127\.0\.0\.1: model directory .*not-here"):
            RolloutWorker(3, str(missing), {}, {})
    else:
        from toolexpander.learner.learner import Learner

        with pytest.raises(ModelError, match=r"learner rank 1 on node 127\.0\.0\.1: model directory .*not-here"):
            Learner(1, 2, "127.0.0.1", 1, str(missing), {})


def test_two_processes_preparing_one_directory_do_not_collide(tmp_path):
    # make test's two xdist workers (or two runs) may both ask for a model that is not there yet:
    # one writes it under the lock, the other waits and finds it prepared.
    import subprocess
    import sys

    out = tmp_path / "models" / "tiny"
    cmd = [sys.executable, "-m", "toolexpander", "prepare-model", "tiny", "--out", str(out)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in results]
    assert (out / MARKER).is_file() and (out / "config.json").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".tiny.") and p.is_dir()]  # no leftovers
