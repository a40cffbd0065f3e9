"""RolloutWorker: owns one vLLM engine; renders prompts, samples n completions, scores them.

In: PromptRequests (from the sampler). Out: one Arrow record batch, one row per completion
(types.ROLLOUT_SCHEMA), plus RolloutStats. The only module that imports vLLM.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Iterable

import pyarrow as pa

from toolexpander.cluster.local import redirect_output
from toolexpander.config import RewardConfig, RolloutConfig
from toolexpander.models import check_model_dir
from toolexpander.prompt import prompt_ids
from toolexpander.rewards import GroupScore, score_group
from toolexpander.types import REWARD_DIMS, ROLLOUT_SCHEMA, PromptRequest, RolloutStats, light_view_ipc

log = logging.getLogger(__name__)
RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"


class BenignReloadWarnings(logging.Filter):
    """Drops vLLM's "<Layer>: Failed to load weights" on a weight push through vLLM's reload_weights (GPU
    engines; CPU engines load with vllm_ext.CpuRepackingLoader) for the layers that need no pushed
    weight: RotaryEmbedding (its cos/sin cache is computed, never trained) and, when the embeddings are
    tied, ParallelLMHead (it is embed_tokens' weight, which is pushed; on GPU the head computes with that
    parameter itself, while on CPU its packed copy went stale: see CpuRepackingLoader). Every other
    layer's warning still shows."""

    def __init__(self, tied_embeddings: bool):
        super().__init__()
        self.layers = {"RotaryEmbedding"} | ({"ParallelLMHead"} if tied_embeddings else set())

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "%s: Failed to load weights" and bool(record.args)
                    and record.args[0] in self.layers)


def engine_env(worker_index: int, cfg: RolloutConfig, on_gpu: bool) -> dict[str, str]:
    """Environment for an in-process vLLM engine; set before vllm is imported."""
    env = {"VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TOKENIZERS_PARALLELISM": "false"}
    if not on_gpu:
        # One OpenMP thread per engine, each engine bound to its own core: N workers share N cores.
        env.update(OMP_NUM_THREADS="1", VLLM_CPU_KVCACHE_SPACE=str(cfg.cpu_kvcache_gb),
                   VLLM_CPU_OMP_THREADS_BIND=str(worker_index % (os.cpu_count() or 1)))
    return env


CPU_BLOCK_SIZE = 32   # the smallest the CPU attention kernels take (vLLM's CPU default is 128)


def engine_args(cfg: RolloutConfig, on_gpu: bool) -> dict:
    """vLLM engine arguments from the rollout config that also set up benchmarks' bare engines.
    block_size: see RolloutConfig.block_size (unset on GPU: vLLM's default)."""
    size = cfg.block_size if cfg.block_size is not None else (None if on_gpu else CPU_BLOCK_SIZE)
    if size is not None and not on_gpu and size % 32:
        raise ValueError(f"rollout.block_size: a CPU engine needs a multiple of 32, got {size}")
    return {"block_size": size} if size is not None else {}


class RolloutWorker:
    """Wrapped with ray.remote by actors.group.RolloutGroup; usable in-process for tests and evals."""

    def __init__(self, worker_index: int, model_path: str, rollout: dict, reward: dict,
                 dtype: str = "float32"):
        redirect_output(f"rollout-{worker_index}")
        check_model_dir(model_path, f"rollout worker {worker_index}")
        self.index = worker_index
        self.dtype = dtype  # the engine's, and the weight pushes'
        self.cfg = RolloutConfig.model_validate(rollout)
        self.reward = RewardConfig.model_validate(reward)
        import torch

        on_gpu = torch.cuda.is_available()
        os.environ.update(engine_env(worker_index, self.cfg, on_gpu))
        if not on_gpu:  # torch is already imported, so OMP_NUM_THREADS alone comes too late
            torch.set_num_threads(1)
        from vllm import LLM

        self.llm = LLM(model=model_path, dtype=dtype, enforce_eager=self.cfg.enforce_eager,
                       max_model_len=self.cfg.max_model_len, seed=self.cfg.seed + worker_index,
                       tensor_parallel_size=self.cfg.tensor_parallel_size,
                       gpu_memory_utilization=self.cfg.gpu_memory_utilization,
                       enable_prefix_caching=True,
                       # log softmax(logits / temperature): the distribution the tokens were drawn
                       # from, which the learner scores too (raw logprobs ignore the temperature).
                       logprobs_mode="processed_logprobs",
                       # Seeded requests + chunked prefill crash on the CPU generator ("does not use
                       # offset"): prefill each prompt whole instead.
                       enable_chunked_prefill=on_gpu,
                       **engine_args(self.cfg, on_gpu),
                       worker_extension_cls="toolexpander.actors.vllm_ext.WeightReceiver")
        self.tokenizer = self.llm.get_tokenizer()
        tied = bool(getattr(self.llm.llm_engine.model_config.hf_config, "tie_word_embeddings", False))
        logging.getLogger(RELOAD_LOGGER).addFilter(BenignReloadWarnings(tied))
        self.version = 0

    def info(self) -> dict:
        return {"worker": self.index, "pid": os.getpid(), "policy_version": self.version,
                "block_size": self.llm.llm_engine.vllm_config.cache_config.block_size}

    def _sampling_params(self, n: int, seed: int | None, greedy: bool, max_tokens: int | None):
        from vllm import SamplingParams

        if greedy:
            return SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens or self.cfg.max_tokens,
                                  logprobs=0)
        # logprobs=0: the sampled token's logprob at this temperature (logprobs_mode), as the learner scores it.
        return SamplingParams(n=n, temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                              max_tokens=max_tokens or self.cfg.max_tokens, logprobs=0, seed=seed)

    def _fit(self, request: PromptRequest, max_tokens: int) -> tuple[list[int], int]:
        """Prompt ids, dropping trailing demos until prompt + completion fit the context."""
        demos = list(request.demos)
        while True:
            ids = prompt_ids(self.tokenizer, request.task, demos, request.demo_format)
            if len(ids) + max_tokens <= self.cfg.max_model_len or not demos:
                return ids, len(demos)
            demos.pop()

    def generate_split(self, requests: list[PromptRequest], step_seed: int = 0, version: int | None = None,
                       weights=None, **kwargs) -> tuple[tuple[bytes, RolloutStats], pa.RecordBatch]:
        """generate() as two results (call it with .options(num_returns=2)): (the batch's light view as
        Arrow IPC bytes (types.light_view_ipc), stats) for the driver, and the full batch, which stays in
        this node's object store (if over 100 KiB; Ray returns a smaller one inline to the driver) until
        the learner ranks fetch their rows (rollouts.Rollouts). With `weights` (policy `version`,
        carried by RolloutGroup over the object store) they are loaded first (stats.land_s)."""
        land_s = self.update_weights(version, weights) if weights is not None else 0.0
        batch, stats = self.generate(requests, step_seed, **kwargs)
        return (light_view_ipc(batch), stats.model_copy(update={"land_s": land_s})), batch

    def generate(self, requests: list[PromptRequest], step_seed: int = 0, greedy: bool = False,
                 n: int | None = None, max_tokens: int | None = None) -> tuple[pa.RecordBatch, RolloutStats]:
        """n completions per request, scored; one row per completion in ROLLOUT_SCHEMA."""
        start = time.perf_counter()
        n = 1 if greedy else (n or self.cfg.n)
        max_tokens = max_tokens or self.cfg.max_tokens
        fitted = [self._fit(r, max_tokens) for r in requests]
        prompts = [{"prompt_token_ids": ids} for ids, _ in fitted]
        params = [self._sampling_params(n, step_seed * 1_000_003 + r.group_id, greedy, max_tokens)
                  for r in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=False) if prompts else []
        columns: dict[str, list] = {f.name: [] for f in ROLLOUT_SCHEMA}
        completion_tokens = scorer_errors = 0
        for request, (ids, n_demos), out in zip(requests, fitted, outputs):
            texts = [c.text for c in out.outputs]
            scored = self._score(request, texts)
            scorer_errors += len(scored.errors)
            for c, text, r in zip(out.outputs, texts, scored.rewards):
                tokens = list(c.token_ids)
                completion_tokens += len(tokens)
                columns["group_id"].append(request.group_id)
                columns["task_id"].append(request.task.id)
                columns["subtask"].append(request.task.subtask)
                columns["demo_round"].append(request.demo_round)
                columns["num_demos"].append(n_demos)
                columns["policy_version"].append(self.version)
                columns["prompt_ids"].append(ids)
                columns["completion_ids"].append(tokens)
                columns["logprobs"].append(_sampled_logprobs(c.logprobs, tokens))
                columns["finish_reason"].append(c.finish_reason or "")
                columns["text"].append(text)
                values = r.as_dict()
                for d in (*REWARD_DIMS, "total"):
                    columns[f"reward_{d}"].append(values[d])
        batch = pa.RecordBatch.from_pydict(columns, schema=ROLLOUT_SCHEMA)
        stats = RolloutStats(worker=self.index, prompts=len(requests), completions=batch.num_rows,
                             prompt_tokens=sum(len(ids) for ids, _ in fitted),
                             completion_tokens=completion_tokens, scorer_errors=scorer_errors,
                             seconds=time.perf_counter() - start)
        return batch, stats

    def _score(self, request: PromptRequest, texts: list[str]) -> GroupScore:
        """Score one group. A completion whose scoring raised scores 0 and is logged with the task id
        (a scorer bug must not pass for a model that earns nothing)."""
        scored = score_group(texts, request.task, weights=self.reward.weights,
                             exemplar_bonus=self.reward.exemplar_bonus,
                             max_chars=self.reward.max_completion_chars)
        if scored.errors:
            i, e = scored.errors[0]
            log.warning("scorer raised on %d of %d completions of task %s (scored 0); first, completion "
                        "%d: %r", len(scored.errors), len(texts), request.task.id, i, e, exc_info=e)
        return scored

    def update_weights(self, version: int, named_tensors: Iterable[tuple[str, "object"]]) -> float:
        """Load new parameters into the running engine (no restart); returns seconds taken.
        Numpy arrays are read as learner.sync.to_wire wrote them, in the engine's dtype."""
        import warnings

        import torch

        from toolexpander.learner.sync import from_wire

        start = time.perf_counter()
        with warnings.catch_warnings():  # arrays from the object store are read-only; vLLM copies them
            warnings.simplefilter("ignore", UserWarning)
            tensors = [(name, from_wire(w, self.dtype) if not isinstance(w, torch.Tensor) else w)
                       for name, w in named_tensors]
        # the extension's loader, not vLLM's load_weights: on CPU every layer's GEMM weights are packed again
        self.llm.collective_rpc("load_pushed_weights", args=(tensors,))
        self.llm.reset_prefix_cache()  # cached KV was computed by the old weights
        self.version = version
        return time.perf_counter() - start


    def init_weight_group(self, backend: str, host: str, port: int, rank_offset: int, world_size: int,
                          meta: list, bucket_bytes: int, timeout_s: float = 120.0) -> None:
        """Join the learner's broadcast group (every vLLM worker of this engine takes a rank)."""
        self.llm.collective_rpc("init_weight_group", args=(backend, host, port, rank_offset, world_size, meta,
                                                           bucket_bytes, self.dtype, timeout_s))

    def receive_weights(self, version: int) -> float:
        """Receive one broadcast push into the running engine; returns seconds taken."""
        start = time.perf_counter()
        self.llm.collective_rpc("receive_weights")
        self.llm.reset_prefix_cache()
        self.version = version
        return time.perf_counter() - start


def _sampled_logprobs(logprobs, tokens: list[int]) -> list[float]:
    if logprobs is None:
        return [0.0] * len(tokens)
    return [float(step[t].logprob) for step, t in zip(logprobs, tokens)]
