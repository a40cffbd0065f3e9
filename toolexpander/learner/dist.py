"""All torch.distributed bootstrapping in one place: env vars, backend choice, free ports, and
where the rendezvous and gloo sockets listen (this node's Ray address, never every interface)."""

from __future__ import annotations

import os
import socket
from datetime import timedelta


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def listen(host: str, port: int = 0) -> socket.socket:
    """A socket listening on host:port (port 0: one the kernel picks, free by construction). Rank 0
    binds its rendezvous socket this way *before* telling the other ranks the port, so no other process
    can take the port in between (picking a free port, closing it and binding it later raced:
    EADDRINUSE when another process's ephemeral socket got it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen()
    except OSError:
        listener.close()
        raise
    return listener


def rendezvous_listener() -> tuple[socket.socket, str, int]:
    """Rank 0's rendezvous socket on this node's Ray address, already listening: (socket, host, port).
    Keep the socket and hand it to tcp_store."""
    host = node_ip()
    listener = listen(host)
    return listener, host, listener.getsockname()[1]


def node_ip() -> str:
    """This node's address as Ray sees it (127.0.0.1 in local mode)."""
    import ray

    return ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"


def interface_of(address: str) -> str | None:
    """The network interface that holds `address` ('lo' for 127.0.0.1), or None."""
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address == address for a in addrs):
            return name
    return None


def bind_gloo_to_node() -> None:
    """gloo listens on GLOO_SOCKET_IFNAME's interface, else on whatever the hostname resolves to;
    make that this node's Ray address. A user's GLOO_SOCKET_IFNAME wins."""
    import ray

    if "GLOO_SOCKET_IFNAME" in os.environ or not ray.is_initialized():
        return
    interface = interface_of(ray.util.get_node_ip_address())
    if interface:
        os.environ["GLOO_SOCKET_IFNAME"] = interface


def tcp_store(host: str, port: int, rank: int, world_size: int, timeout: timedelta,
              listener: socket.socket | None = None):
    """A rendezvous store whose server (rank 0) listens on `host` only; torch's own TCPStore server
    would listen on every interface. Rank 0 serves on `listener` when given (rendezvous_listener,
    bound before the port was published), else binds host:port itself (port 0 for a world of one)."""
    import torch.distributed as dist

    if rank != 0:
        return dist.TCPStore(host, port, world_size, is_master=False, timeout=timeout)
    if listener is None:
        listener = listen(host, port)
    port = listener.getsockname()[1]
    fd = listener.detach()  # the store owns the socket from here on
    try:
        return dist.TCPStore(host, port, world_size, is_master=True, timeout=timeout,
                             master_listen_fd=fd)
    except Exception:
        os.close(fd)
        raise


# A JIT build of DeepSpeed's CPU op takes about a minute here; a `lock` older than this was left by a
# process killed while building or loading it, and torch would wait on it forever.
STALE_BUILD_LOCK_S = 600.0


def clear_stale_build_locks(root: str | None = None, max_age_s: float = STALE_BUILD_LOCK_S) -> list[str]:
    """Remove torch-extension build locks (TORCH_EXTENSIONS_DIR/<op>/lock) older than max_age_s,
    each with a warning; returns the paths removed."""
    import time
    import warnings
    from pathlib import Path

    if root is None:
        from torch.utils.cpp_extension import _get_build_directory

        # the op's own directory (created here if new, as its build would): its parent is the root
        root = str(Path(_get_build_directory("deepspeed_shm_comm", verbose=False)).parent)
    removed = []
    for lock in Path(root).glob("*/lock"):
        try:
            age = time.time() - lock.stat().st_mtime
            if age > max_age_s:
                lock.unlink()
                removed.append(str(lock))
                warnings.warn(f"removed a stale torch-extension build lock {lock} ({age:.0f} s old): a process "
                              "was killed while building or loading the op; waiting on it would hang", stacklevel=2)
        except FileNotFoundError:  # its holder finished meanwhile
            continue
    return removed


def init_distributed(rank: int, world_size: int, master_addr: str, master_port: int,
                     listener: socket.socket | None = None) -> str:
    """Set RANK/WORLD_SIZE/MASTER_*/LOCAL_RANK and start the process group DeepSpeed uses; returns
    the backend. The group is built here, on our own store, and DeepSpeed adopts it. Rank 0 serves the
    store on `listener` when given (see rendezvous_listener); master_port 0 with no listener suits a
    world of one (the kernel picks the port)."""
    clear_stale_build_locks()
    import deepspeed
    import torch

    on_gpu = torch.cuda.is_available()
    if rank == 0 and not torch.distributed.is_initialized():
        listener = listener or listen(master_addr, master_port)
        master_port = listener.getsockname()[1]
    local_rank = 0  # one rank per actor; Ray sets CUDA_VISIBLE_DEVICES to the actor's GPU
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR=master_addr,
                      MASTER_PORT=str(master_port), LOCAL_RANK=str(local_rank),
                      LOCAL_WORLD_SIZE="1")
    backend = "nccl" if on_gpu else "gloo"
    if on_gpu:
        torch.cuda.set_device(local_rank)
    else:
        bind_gloo_to_node()
    if not torch.distributed.is_initialized():  # a second Learner in one process reuses the group
        timeout = timedelta(minutes=30)
        store = tcp_store(master_addr, master_port, rank, world_size, timeout, listener)
        torch.distributed.init_process_group(backend, store=store, rank=rank,
                                             world_size=world_size, timeout=timeout)
    elif listener is not None:
        listener.close()
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    return backend
