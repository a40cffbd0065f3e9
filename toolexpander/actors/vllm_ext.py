"""A vLLM worker extension (worker_extension_cls): joins the learner's weight-broadcast group and
loads what arrives with vLLM's in-place reload_weights. Runs inside every vLLM worker process, so it
works for the in-process CPU engine and for tensor-parallel GPU engines alike (via collective_rpc)."""

from __future__ import annotations

import torch

from toolexpander.learner.sync import open_group, plan_buckets, receive


class WeightReceiver:
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
        # reload_weights copies out of the received views, so the same buffers take the next push.
        named, self._weight_flats = receive(self._weight_broadcast, self._weight_meta, self._weight_buckets,
                                            self._weight_device, self._weight_dtype, self._weight_flats)
        # reload_weights, not load_weights: on CPU, oneDNN repacks weights at load time.
        self.reload_weights(weights_iterator=iter(named))
