"""Checkpoint directories under the run's storage (toolexpander/storage.py), complete only with their
manifest.

Each part is written by the process that holds it (learner ranks, the sampler, the driver) into the
directory begin() names; commit(), called by the driver once every part has landed, lists the files
with their sizes in a COMPLETE marker, written last. On a plain path the directory is a temp one,
renamed into place after the marker; on a URI (no atomic directory rename in an object store) the
parts go to step_N directly and the marker alone makes it complete.

A directory without its marker, or whose files do not match the manifest (a torn write), is never
loaded; the newest valid one is used instead, with a warning. Keeps the last K.
"""

from __future__ import annotations

import json
import warnings

from toolexpander.storage import Store, join

MARKER = "COMPLETE"


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def _parts_name(store: Store, step: int) -> str:
    return f".tmp_{step_name(step)}" if store.local else step_name(step)


def begin(root: str, step: int) -> str:
    """The location the parts of step's checkpoint go to (emptied first)."""
    store = Store(root)
    name = _parts_name(store, step)
    store.delete_dir(name)
    store.mkdir(name)
    return join(root, name)


def commit(root: str, step: int, keep_last: int) -> str:
    """Write the manifest and marker over the parts that landed in begin()'s location; returns the
    checkpoint's location. Older checkpoints beyond keep_last are removed."""
    store = Store(root)
    name = _parts_name(store, step)
    files = {k: v for k, v in store.files(name).items() if k != MARKER}
    store.write_text(f"{name}/{MARKER}", json.dumps({"step": step, "files": files}, indent=1))
    final = step_name(step)
    if name != final:
        store.delete_dir(final)
        store.move(name, final)
    # The last keep_last complete checkpoints stay; so does an unfinished one of a later step (a run
    # resumed from an earlier checkpoint writes over it when it gets there).
    names = store.dirs("", "step_")
    complete = [n for n in names if store.is_file(f"{n}/{MARKER}")]
    unfinished = [n for n in names if n not in complete and n < final]
    for old in complete[:-keep_last] + unfinished:
        try:
            store.delete_dir(old)
        except OSError as e:  # a bucket that refuses deletes keeps more checkpoints: said, not fatal
            warnings.warn(f"checkpoint {join(root, old)} not removed (train.keep_last): {e}", stacklevel=2)
    return join(root, final)


def problem(store: Store, name: str) -> str | None:
    """Why checkpoint `name` in store cannot be loaded, or None when it is complete."""
    if not store.is_file(f"{name}/{MARKER}"):
        return "no COMPLETE marker (the write did not finish)"
    try:
        files = json.loads(store.read_text(f"{name}/{MARKER}"))["files"]
    except (OSError, ValueError, KeyError):
        return "unreadable COMPLETE marker"
    present = store.files(name)
    for rel, size in files.items():
        if rel not in present:
            return f"{rel} is missing"
        if present[rel] != size:
            return f"{rel} has {present[rel]} bytes, expected {size} (torn write)"
    return None


def latest(root: str) -> str | None:
    """The newest complete checkpoint's location; skipped broken ones are reported with a warning."""
    store = Store(root)
    for name in sorted(store.dirs("", "step_"), reverse=True):
        why = problem(store, name)
        if why is None:
            return join(root, name)
        warnings.warn(f"checkpoint {join(root, name)} skipped: {why}", stacklevel=2)
    return None
