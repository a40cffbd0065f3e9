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
