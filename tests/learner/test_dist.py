"""torch.distributed bootstrapping helpers that need no process group."""

import os
import time

import pytest

from toolexpander.learner.dist import clear_stale_build_locks


def test_a_stale_build_lock_is_removed_and_a_fresh_one_kept(tmp_path):
    stale, fresh = tmp_path / "deepspeed_shm_comm" / "lock", tmp_path / "other_op" / "lock"
    for lock in (stale, fresh):
        lock.parent.mkdir()
        lock.write_text("")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    with pytest.warns(UserWarning, match="stale torch-extension build lock"):
        assert clear_stale_build_locks(str(tmp_path), max_age_s=600) == [str(stale)]
    assert not stale.exists() and fresh.exists()                # a build in progress keeps its lock
    assert clear_stale_build_locks(str(tmp_path / "missing")) == []


def test_the_rendezvous_port_is_held_from_publication_to_the_store():
    # The port rank 0 publishes is one it already listens on: no other process can bind it before the
    # store serves on that very socket (a free port picked, closed and bound later raced: EADDRINUSE).
    import errno
    import threading
    from datetime import timedelta

    from toolexpander.learner.dist import listen, rendezvous_listener, tcp_store

    listener, host, port = rendezvous_listener()
    assert (host, port) == listener.getsockname()[:2] and port > 0
    with pytest.raises(OSError) as taken:
        listen(host, port)
    assert taken.value.errno == errno.EADDRINUSE
    stores = {}
    master = threading.Thread(target=lambda: stores.setdefault(0, tcp_store(
        host, port, 0, 2, timedelta(seconds=30), listener)))
    master.start()
    stores[1] = tcp_store(host, port, 1, 2, timedelta(seconds=30))
    master.join(30)
    stores[1].set("k", "v")
    assert stores[0].get("k") == b"v"
    assert listener.fileno() == -1   # detached: the store owns the socket now
