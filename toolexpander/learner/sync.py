"""Weights learner -> rollout workers: one interface, three transports.

gloo (CPU) / nccl (GPU): learner rank 0 and every vLLM worker form a private broadcast group (its own
TCPStore, apart from DeepSpeed's group) and the weights go over it in fixed-size flat buckets.
object_store: rank 0 puts the weights in Ray's object store and every worker reads them.
Both sides plan the same buckets from the same metadata (plan_buckets), so nothing but raw bytes
crosses the wire on a push. Every push carries a policy version.
Weights travel in the rollout engine's dtype (model.dtype): a bfloat16 engine gets half the bytes of
float32, rounded from the learner's float32 master weights exactly as vLLM's own loader would round them.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import torch

Meta = list[tuple[str, tuple[int, ...]]]   # (parameter name, shape), in broadcast order


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def wire_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"weight push dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def to_wire(p: torch.Tensor, dtype: str, out: torch.Tensor | None = None) -> np.ndarray:
    """A parameter as the numpy array the object store carries, in `dtype`. numpy has no bfloat16, so
    bfloat16 travels as its int16 bit pattern (from_wire reads it back). A CPU float32 parameter is
    returned as a view (no copy); a conversion goes into `out` when given (a buffer of the wire dtype
    and the parameter's shape, reused push after push: fresh memory would cost page faults every time)."""
    target = wire_dtype(dtype)
    if out is not None and (p.dtype != target or p.device.type != "cpu"):
        t = out.copy_(p.detach())
    else:
        t = p.detach().to(device="cpu", dtype=target)
    return t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()


def from_wire(array: np.ndarray, dtype: str) -> torch.Tensor:
    """The inverse of to_wire (no copy)."""
    t = torch.from_numpy(array)
    return t.view(torch.bfloat16) if wire_dtype(dtype) == torch.bfloat16 else t


def plan_buckets(meta: Meta, bucket_bytes: int, dtype: str = "float32") -> list[list[int]]:
    """Split parameter indices into consecutive buckets of at most bucket_bytes bytes in `dtype`
    (a parameter larger than a bucket gets a bucket of its own)."""
    itemsize = wire_dtype(dtype).itemsize
    buckets, current, size = [], [], 0
    for i, (_, shape) in enumerate(meta):
        nbytes = itemsize * int(torch.Size(shape).numel())
        if current and size + nbytes > bucket_bytes:
            buckets.append(current)
            current, size = [], 0
        current.append(i)
        size += nbytes
    if current:
        buckets.append(current)
    return buckets


def open_group(backend: str, host: str, port: int, rank: int, world_size: int, device=None,
               timeout_s: float = 120.0, listener=None):
    """A broadcast group of its own (rank 0 = the learner). Returns a callable broadcast(tensor).
    gloo: a member that died makes the others' broadcast fail after timeout_s (learner.weight_sync_timeout_s),
    so that the driver can replace it and rebuild the group. Rank 0 serves the gloo store on `listener`
    when given (the socket it listened on before publishing the port)."""
    if backend == "gloo":
        from toolexpander.learner.dist import bind_gloo_to_node, tcp_store

        bind_gloo_to_node()
        timeout = timedelta(seconds=timeout_s)
        store = tcp_store(host, port, rank, world_size, timeout, listener)
        group = torch.distributed.ProcessGroupGloo(store, rank, world_size, timeout)

        def broadcast(tensor: torch.Tensor) -> None:
            opts = torch.distributed.BroadcastOptions()
            opts.rootRank = 0
            group.broadcast([tensor], opts).wait()

        return broadcast
    if backend == "nccl":
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.utils import StatelessProcessGroup

        pg = StatelessProcessGroup.create(host=host, port=port, rank=rank, world_size=world_size)
        comm = PyNcclCommunicator(pg, device=device)

        def broadcast(tensor: torch.Tensor) -> None:
            comm.broadcast(tensor, src=0, stream=torch.cuda.current_stream())
            torch.cuda.current_stream().synchronize()

        return broadcast
    raise ValueError(f"learner.weight_sync: unknown broadcast backend {backend!r}")


def send(broadcast, params: list[torch.Tensor], buckets: list[list[int]], device, dtype: str = "float32",
         flats: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Rank 0: flatten each bucket (in `dtype`) and broadcast it. `flats`: the buckets' flat buffers
    from the previous push, refilled in place (converting on the way); returns the buffers used."""
    used = []
    for k, bucket in enumerate(buckets):
        sizes = [params[i].numel() for i in bucket]
        flat = flats[k] if flats else torch.empty(sum(sizes), dtype=wire_dtype(dtype), device=device)
        for piece, i in zip(flat.split(sizes), bucket):
            piece.copy_(params[i].detach().reshape(-1))
        broadcast(flat)
        used.append(flat)
    return used


def receive(broadcast, meta: Meta, buckets: list[list[int]], device, dtype: str = "float32",
            flats: list[torch.Tensor] | None = None) -> tuple[list[tuple[str, torch.Tensor]], list[torch.Tensor]]:
    """Other ranks: receive each bucket (in `dtype`) and cut it back into named tensors (views, no copy).
    `flats`: the buffers of the previous push to receive into (the caller must have consumed its
    views), else new ones. Returns the named tensors and the buffers used, as send does."""
    out, used = [], []
    for k, bucket in enumerate(buckets):
        sizes = [int(torch.Size(meta[i][1]).numel()) for i in bucket]
        flat = flats[k] if flats else torch.empty(sum(sizes), dtype=wire_dtype(dtype), device=device)
        broadcast(flat)
        used.append(flat)
        for i, piece in zip(bucket, flat.split(sizes)):
            out.append((meta[i][0], piece.view(meta[i][1])))
    return out, used
