"""Atomic training checkpoints with retention, and atomic model export.

A checkpoint is a directory ``<output>/checkpoints/step-<8 digits>/`` holding ``state.pt`` (model,
optimizer, scheduler, scaler, sampler position, RNG states, history) and a ``COMPLETE`` marker written
last. It is written under a temporary name (``.tmp-...``), every file fsynced, and only then renamed
into place; rename is atomic on POSIX file systems, so a crash at any moment leaves either the complete
checkpoint or a ``.tmp-`` directory that :func:`latest_checkpoint` never picks (and the next run deletes).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from e5studio.errors import InputError

STATE_FILE = "state.pt"
COMPLETE_FILE = "COMPLETE"
PREFIX = "step-"
TMP_PREFIX = ".tmp-"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with path.open("rb+") as f:
        os.fsync(f.fileno())


def checkpoint_step(path: Path) -> int | None:
    """The step of a complete checkpoint directory, or None for anything else."""
    name = path.name
    if not name.startswith(PREFIX) or not name[len(PREFIX):].isdigit():
        return None
    if not (path / COMPLETE_FILE).is_file() or not (path / STATE_FILE).is_file():
        return None
    return int(name[len(PREFIX):])


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [(step, p) for p in root.iterdir() if p.is_dir() and (step := checkpoint_step(p)) is not None]
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1][1] if found else None


def remove_temporary(root: Path) -> None:
    """Delete leftovers of interrupted writes (``.tmp-*``)."""
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final`` atomically; an existing ``final`` is moved aside first, then deleted."""
    old = None
    if final.exists():
        old = final.with_name(f"{TMP_PREFIX}old-{final.name}-{os.getpid()}")
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_atomically(final: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_dir)``, fsync what it wrote, then rename ``tmp_dir`` to ``final``."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{TMP_PREFIX}{final.name}-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write(tmp)
        for path in sorted(tmp.rglob("*"), reverse=True):
            if path.is_file():
                _fsync_file(path)
            else:
                _fsync_dir(path)
        _fsync_dir(tmp)
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def save_checkpoint_state(root: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` as checkpoint ``step`` atomically, then keep only the newest ``keep`` checkpoints."""
    def write(tmp: Path) -> None:
        torch.save(state, tmp / STATE_FILE)
        (tmp / COMPLETE_FILE).write_text(json.dumps({"step": step}) + "\n")

    path = write_atomically(root / f"{PREFIX}{step:08d}", write)
    for _, old in complete_checkpoints(root)[:-max(keep, 1)]:
        doomed = old.with_name(f"{TMP_PREFIX}delete-{old.name}")
        os.rename(old, doomed)  # never leaves a half-deleted step-* directory behind
        shutil.rmtree(doomed, ignore_errors=True)
    return path


def load_checkpoint_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable state is reported the same way
        raise InputError(f"{path}: cannot read the training checkpoint: {exc}") from None
    if not isinstance(state, dict):
        raise InputError(f"{path}: not a training checkpoint")
    return state
