"""Atomic training checkpoints with retention, what a resumed run must share with them, and atomic model export.

A checkpoint is a directory ``<output>/checkpoints/step-<8 digits>/`` holding ``state.pt`` (model,
optimizer, scheduler, scaler, sampler position, RNG states, history, the run's fingerprint) and a ``COMPLETE``
marker written last. It is written under a temporary name (``.tmp-...``), every file fsynced, and only then renamed
into place; rename is atomic on POSIX file systems, so a crash at any moment leaves either the complete
checkpoint or a ``.tmp-`` directory that :func:`latest_checkpoint` never picks (and the next run deletes).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from e5studio.engine.checkpoint import Checkpoint, save_checkpoint
from e5studio.engine.encoder import BertEncoder
from e5studio.errors import InputError
from e5studio.jobs.train.settings import TrainSettings

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


def check_resumable(saved: Mapping[str, Any], mine: Mapping[str, Any]) -> None:
    """Refuse to resume when the checkpoint's fingerprint (hyperparameters, model, dataset, processes) is not
    this run's: the continued run would be neither the old one nor a new one."""
    if isinstance(saved.get("settings"), dict):  # hyperparameters added since the checkpoint: their defaults
        saved = {**saved, "settings": {**asdict(TrainSettings()), **saved["settings"]}}
    changed = [key for key in mine if saved.get(key) != mine[key]]
    if "settings" in changed:
        old = saved.get("settings") or {}
        fields = [k for k, v in mine["settings"].items() if old.get(k) != v]
        raise InputError(f"cannot resume: hyperparameters differ from the checkpoint ({', '.join(fields)}); "
                         "resume with the same ones or train into a new --output")
    if changed:
        raise InputError(f"cannot resume: {', '.join(changed)} differ from the checkpoint's")


def rng_state() -> dict[str, Any]:
    """This process's torch RNG states (dropout masks), saved per rank so a resumed run continues exactly."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(saved: Sequence[Mapping[str, Any]], rank: int) -> None:
    """Restore this rank's RNG states from a checkpoint's list (one per rank)."""
    state = saved[rank] if rank < len(saved) else saved[0]
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def export_model(encoder: BertEncoder, checkpoint: Checkpoint, directory: Path) -> Path:
    """Write the encoder as a Hugging Face + sentence-transformers checkpoint, replacing ``directory`` atomically."""
    state = {k: v.detach().float().cpu() for k, v in encoder.state_dict().items()}
    return write_atomically(directory, lambda tmp: save_checkpoint(
        tmp, checkpoint.config, state, tokenizer_from=checkpoint.path, max_length=checkpoint.max_length))
