"""The learner process's host memory: its resident size, and glibc's free pages handed back to the OS
when the node runs short. Reads /proc and calls glibc's malloc_trim; elsewhere both are no-ops.

Why: glibc keeps the memory a learner step freed (activations, logits) for reuse, and steps whose
sizes differ (prompts with and without demonstrations) fragment it, so the process grows step after
step. Measured 2026-12-03 on the 24 GB machine, `make learn` arm (d): the learner at 10.2 GB of private
memory, of which malloc_trim(0) returned 3.7 GB at once; without it Ray's memory monitor killed the
run at 12.3 GB. Trimming is not free: the next step faults the pages back in (seconds for GBs), so it
happens only when the node's available memory is below a share of its total.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

GIB = float(1 << 30)


def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _libc()


def resident_bytes() -> int:
    """This process's resident set size (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def available_share(meminfo: str | None = None) -> float:
    """MemAvailable / MemTotal of this node (/proc/meminfo, or the text given); 1.0 when unknown."""
    if meminfo is None:
        try:
            with open("/proc/meminfo") as f:
                meminfo = f.read()
        except OSError:
            return 1.0
    fields = {}
    for line in meminfo.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[key] = int(parts[0])
    total, available = fields.get("MemTotal"), fields.get("MemAvailable")
    return available / total if total and available is not None else 1.0


def trim() -> bool:
    """glibc malloc_trim(0): every free page of every arena back to the OS. False where unavailable."""
    return bool(_LIBC is not None and _LIBC.malloc_trim(0))


def release_if_short(below: float | None, share: float | None = None) -> dict[str, float]:
    """After a step: trim when the node's available share of memory (`share`, default: read now) is
    below `below` (None: never). Metrics: learner/host_rss_gb (before any trim), learner/host_trimmed_gb
    (what the trim returned, 0 when none ran)."""
    before = resident_bytes()
    trimmed = below is not None and (available_share() if share is None else share) < below and trim()
    after = resident_bytes() if trimmed else before
    return {"learner/host_rss_gb": before / GIB, "learner/host_trimmed_gb": max(0, before - after) / GIB}
