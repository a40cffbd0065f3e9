"""A vLLM worker extension (worker_extension_cls): joins the learner's weight-broadcast group and
loads pushed weights into the running engine (`load_pushed_weights`, for the broadcast and the
object-store pushes alike). Runs inside every vLLM worker process, so it works for the in-process CPU
engine and for tensor-parallel GPU engines alike (via collective_rpc)."""

from __future__ import annotations

import logging

import torch

from toolexpander.learner.sync import open_group, plan_buckets, receive

log = logging.getLogger(__name__)


class CpuRepackingLoader:
    """Loads pushed weights into a CPU engine: vLLM's own weight loaders (`model.load_weights`: the
    fusing of q/k/v and gate/up, the name mapping) into checkpoint-layout weights this loader keeps,
    then each layer's own CPU processing again (the oneDNN / packed GEMM weights every linear layer and
    the LM head compute with).

    Why not vLLM's `reload_weights`: on CPU it leaves a tied LM head computing with the weights the
    engine started with. The head's packed GEMM weights are built from the embedding once; a reload
    loads the embedding but never processes the head again (it is the embedding's weight, so no pushed
    tensor names it: vLLM logs "ParallelLMHead: Failed to load weights"), so every push since the start
    sampled from a head the learner no longer has. Found 2026-12-06 on SmolLM2-135M (tied), bf16 and
    float32: after a reload of perturbed weights the engine's greedy logprobs differ from a fresh
    engine's on the same weights; with this loader they are identical (tests/actors/test_rollout.py:
    after a push that changes only the tied embedding, the sampled logprobs were up to 48 nats from a
    transformers forward of the pushed weights; now < 1e-3). It is also faster (no meta-device restore
    and copy-back per layer; bench/weight_push). Cost: one more copy of the linear layers' weights per
    engine, kept in checkpoint layout between pushes.

    Built on the metadata vLLM records for its own reload (`record_metadata_for_reloading`, vllm 0.32):
    a linear layer whose weight the CPU processing removed gets it back in its checkpoint shape, with its
    weight loader. Layers of any other quantization method raise NotImplementedError at construction
    (the caller then uses reload_weights)."""

    def __init__(self, model: torch.nn.Module):
        from vllm.model_executor.layers.linear import UnquantizedLinearMethod
        from vllm.model_executor.layers.quantization.base_config import QuantizeMethodBase
        from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod
        from vllm.model_executor.model_loader.reload.layerwise import _get_original_loader, get_layerwise_info
        from vllm.model_executor.model_loader.reload.meta import materialize_meta_tensor
        from vllm.model_executor.model_loader.reload.sanitize import restore_layer_refs

        self.model = model
        self.linears: list[torch.nn.Module] = []     # their CPU GEMM weights are packed from .weight
        self.embeddings: list[torch.nn.Module] = []  # the LM head: its GEMM weights are packed too
        head = getattr(model, "lm_head", None)       # (a tied head may be embed_tokens itself)
        for name, layer in model.named_modules():   # every layer checked before any is changed
            method = getattr(layer, "quant_method", None)
            if not isinstance(method, QuantizeMethodBase):
                continue
            if type(method) is UnquantizedEmbeddingMethod:
                # An input embedding computes with F.embedding on its .weight: packing it again for a
                # GEMM (as vLLM's start-up does) would be work for nothing. Without a known lm_head,
                # every embedding is processed.
                if head is None or layer is head:
                    self.embeddings.append(layer)
            elif type(method) is UnquantizedLinearMethod:
                if not getattr(layer, "_cpu_skip_gemm_dispatch", False):   # those compute with F.linear
                    self.linears.append(layer)                             # on the .weight load_weights fills
            else:
                raise NotImplementedError(f"{name}: {type(method).__name__} layers are reloaded by vLLM")
        for layer in self.linears:
            if layer.weight.numel() == 0:   # the CPU processing removed it: back in checkpoint shape
                meta = get_layerwise_info(layer).restore_metadata[0]["weight"]
                weight = materialize_meta_tensor(restore_layer_refs(meta, layer))
                weight.weight_loader = _get_original_loader(weight)
                layer.register_parameter("weight", weight)
        self.expected = {name for name, _ in model.named_parameters()}

    @torch.no_grad()
    def load(self, named) -> None:
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

        loaded = self.model.load_weights(iter(named))
        missing = self.expected - set(loaded or ())
        if missing:
            raise RuntimeError(f"weight push: {len(missing)} parameters of the engine got no pushed tensor, "
                               f"e.g. {sorted(missing)[:3]}")
        for layer in self.linears:
            dispatch_cpu_unquantized_gemm(layer, remove_weight=False)   # packed again from the new weight
        for layer in self.embeddings:
            layer.quant_method.process_weights_after_loading(layer)     # the head's pack, tied or not


class WeightReceiver:
    def load_pushed_weights(self, named) -> None:
        """Load (name, tensor) pairs, in the checkpoint's names, into the running engine. On CPU with
        CpuRepackingLoader (see there why); on GPU, and for what it cannot load, vLLM's reload_weights
        (in place, with each layer's processing: on GPU the kernels read the parameters themselves)."""
        from vllm.platforms import current_platform

        if getattr(self, "_cpu_loader", None) is None:   # decided at the first push: a loader, or False
            self._cpu_loader = False
            if current_platform.is_cpu():
                try:
                    self._cpu_loader = CpuRepackingLoader(self.model_runner.get_model())
                except NotImplementedError as e:
                    log.warning("weight pushes load with vLLM's reload_weights (%s); on CPU a tied LM head "
                                "then keeps its start-up weights", e)
        if self._cpu_loader:
            self._cpu_loader.load(named)
        else:
            self.reload_weights(weights_iterator=iter(named))

    def init_weight_group(self, backend: str, host: str, port: int, rank_offset: int, world_size: int,
                          meta: list, bucket_bytes: int, dtype: str = "float32", timeout_s: float = 120.0) -> None:
        rank = rank_offset + int(getattr(self, "rank", 0))  # one rank per tensor-parallel worker
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        self._weight_meta = [(name, tuple(shape)) for name, shape in meta]
        self._weight_dtype = dtype
        self._weight_buckets = plan_buckets(self._weight_meta, bucket_bytes, dtype)
        self._weight_device = device
        self._weight_broadcast = open_group(backend, host, port, rank, world_size, device, timeout_s)
        self._weight_flats = None   # receive's buffers, allocated by the first push and reused

    def receive_weights(self) -> None:
        # Loading copies out of the received views, so the same buffers take the next push.
        named, self._weight_flats = receive(self._weight_broadcast, self._weight_meta, self._weight_buckets,
                                            self._weight_device, self._weight_dtype, self._weight_flats)
        self.load_pushed_weights(named)
