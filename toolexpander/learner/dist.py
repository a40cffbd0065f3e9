"""All torch.distributed bootstrapping in one place: env vars, backend choice, free ports."""

from __future__ import annotations

import os
import socket


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def node_ip() -> str:
    """This node's address as Ray sees it (127.0.0.1 in local mode)."""
    import ray

    return ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"


def init_distributed(rank: int, world_size: int, master_addr: str, master_port: int) -> str:
    """Set RANK/WORLD_SIZE/MASTER_*/LOCAL_RANK and start DeepSpeed's process group; returns backend."""
    import deepspeed
    import torch

    on_gpu = torch.cuda.is_available()
    local_rank = 0  # one rank per actor; Ray sets CUDA_VISIBLE_DEVICES to the actor's GPU
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR=master_addr,
                      MASTER_PORT=str(master_port), LOCAL_RANK=str(local_rank),
                      LOCAL_WORLD_SIZE="1")
    backend = "nccl" if on_gpu else "gloo"
    if on_gpu:
        torch.cuda.set_device(local_rank)
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False,
                               distributed_port=master_port, rank=rank, world_size=world_size)
    return backend
