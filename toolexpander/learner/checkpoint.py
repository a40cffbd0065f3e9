"""Atomic checkpoint directories: written to a temp dir, given a manifest + COMPLETE marker, renamed.

A directory without its marker, or whose files do not match the manifest (a torn write), is never
loaded; the newest valid one is used instead, with a warning. Keeps the last K.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

MARKER = "COMPLETE"


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}"


def begin(root: Path, step: int) -> Path:
    tmp = root / f".tmp_step_{step:08d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, root: Path, step: int, keep_last: int) -> Path:
    files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
    (tmp / MARKER).write_text(json.dumps({"step": step, "files": files}, indent=1))
    final = step_dir(root, step)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in sorted(valid_or_not(root))[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def valid_or_not(root: Path) -> list[Path]:
    return [p for p in root.glob("step_*") if p.is_dir()] if root.is_dir() else []


def problem(directory: Path) -> str | None:
    """Why a checkpoint directory cannot be loaded, or None when it is complete."""
    marker = directory / MARKER
    if not marker.is_file():
        return "no COMPLETE marker (the write did not finish)"
    try:
        files = json.loads(marker.read_text())["files"]
    except (OSError, ValueError, KeyError):
        return "unreadable COMPLETE marker"
    for name, size in files.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, expected {size} (torn write)"
    return None


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint; skipped broken ones are reported with a warning."""
    for directory in sorted(valid_or_not(root), reverse=True):
        why = problem(directory)
        if why is None:
            return directory
        warnings.warn(f"checkpoint {directory} skipped: {why}", stacklevel=2)
    return None
