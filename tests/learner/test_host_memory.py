"""toolexpander/learner/host_memory.py: the node's available share parsed exactly, and a trim that
really returns memory glibc kept after a free (no torch, no Ray)."""

import pytest

from toolexpander.learner import host_memory

MEMINFO = "MemTotal:       24105000 kB\nMemFree:         1000 kB\nMemAvailable:    6026250 kB\nCached: 5 kB\n"


def test_available_share_is_available_over_total():
    assert host_memory.available_share(MEMINFO) == 0.25
    assert host_memory.available_share("MemTotal: 100 kB\n") == 1.0       # unknown: never "short"
    assert host_memory.available_share("garbage") == 1.0
    assert 0.0 < host_memory.available_share() <= 1.0                   # this machine's /proc/meminfo


def _fragment(mib: int):
    """Free `mib` MiB of 4 KiB heap chunks while the last one stays alive, so glibc cannot shrink
    the heap from its top by itself: the pages stay resident until a trim."""
    chunks = [bytearray(4096) for _ in range(mib * 256)]
    keep = chunks[-1]
    del chunks
    return keep


@pytest.mark.skipif(host_memory._LIBC is None or host_memory.resident_bytes() == 0,
                    reason="needs glibc and /proc")
def test_a_trim_runs_only_when_memory_is_short_and_returns_what_was_freed():
    keep = _fragment(256)
    untouched = host_memory.release_if_short(0.25, share=0.30)            # not short: no trim
    assert untouched["learner/host_trimmed_gb"] == 0.0 and untouched["learner/host_rss_gb"] > 0.25
    assert host_memory.release_if_short(None, share=0.0)["learner/host_trimmed_gb"] == 0.0   # never
    trimmed = host_memory.release_if_short(0.25, share=0.20)              # short: trim
    assert trimmed["learner/host_trimmed_gb"] >= 0.8 * 256 / 1024          # at least 80% of the 256 MiB
    assert len(keep) == 4096
