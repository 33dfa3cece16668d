"""The manifest of one embed-corpus output folder and the operations that keep it consistent with the files.

How a crash is survived (SIGKILL at any moment included): each window becomes one shard, written under a
temporary name and renamed, then recorded in ``manifest.json``, which is itself replaced atomically. A
window is done exactly when the manifest lists it. Reopening an output folder deletes temporaries and
shards the manifest does not list, cuts ``rejects.jsonl`` back to the length the manifest recorded, and
carries on with the first window not done. A rerun must use the settings that shaped the vectors
(:func:`vector_settings`); anything else is refused with the differences listed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from e5studio.errors import InputError
from e5studio.jobs.batch_embed.reader import WindowSpec
from e5studio.jobs.batch_embed.writer import (
    FORMAT,
    fsync_dir,
    read_columns,
    read_manifest,
    remove_temporaries,
    write_manifest,
)
from e5studio.jobspec.layout import INDEX_DIR, LOCK_FILE, MANIFEST_FILE, PROGRESS_FILE, REJECTS_FILE, SHARDS_DIR

if TYPE_CHECKING:
    from e5studio.jobs.batch_embed.runner import EmbedCorpusSettings
    from e5studio.jobs.batch_embed.windows import WindowResult


def vector_settings(settings: EmbedCorpusSettings, model: dict[str, Any]) -> dict[str, Any]:
    """Everything a rerun must share with the first run for the vectors to be the same."""
    return {
        "model_sha256": model["sha256"],
        "max_length": model["max_length"],
        "input_type": settings.input_type,
        "window_size": settings.window_size,
        "max_batch_tokens": settings.engine.max_batch_tokens,
        "dtype": settings.engine.dtype,
        "precision": settings.engine.precision,
        "input_format": settings.input.format,
        "text_field": settings.input.text_field if settings.input.format != "text" else None,
        "id_field": settings.input.id_field,
        "input": settings.input.fingerprint(),
        **({"chunking": settings.chunking.to_json(), "metadata": settings.input.metadata}
           if settings.chunking is not None else {}),
    }


class ManifestState:
    """The manifest of one output folder and the operations that keep it consistent."""

    def __init__(self, output: Path, manifest: dict[str, Any]) -> None:
        self.output = output
        self.manifest = manifest
        self._lock: IO[bytes] | None = None

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the lock
            self._lock = None

    # -- opening

    @classmethod
    def open(cls, settings: EmbedCorpusSettings, model: dict[str, Any]) -> ManifestState:
        """Lock ``output`` for this process, check or create its manifest, tidy what a crash left.

        Call :meth:`close` when done (the lock also goes when the process dies, however it dies)."""
        output = settings.output
        if settings.overwrite:
            clear_output(output)
        output.mkdir(parents=True, exist_ok=True)
        lock = _lock(output)
        try:
            state = cls._open_locked(settings, model)
        except BaseException:
            lock.close()
            raise
        state._lock = lock
        return state

    @classmethod
    def _open_locked(cls, settings: EmbedCorpusSettings, model: dict[str, Any]) -> ManifestState:
        output = settings.output
        wanted = vector_settings(settings, model)
        manifest = read_manifest(output)
        if manifest is None:
            leftovers = [p.name for p in output.iterdir()
                         if not p.name.startswith(".tmp-") and p.name not in (LOCK_FILE, PROGRESS_FILE)]
            if leftovers:
                raise InputError(f"output folder {output} is not empty and has no {MANIFEST_FILE} "
                                 f"({', '.join(sorted(leftovers)[:5])}); choose an empty or new folder")
            manifest = {
                "format": FORMAT, "status": "running", "model": model, "dim": model["dim"], "count": 0,
                "input": {"path": str(settings.input.path.resolve()), "format": settings.input.format,
                          "text_field": wanted["text_field"], "id_field": settings.input.id_field,
                          **wanted["input"]},
                "settings": wanted, "windows_total": None, "shards": [],
                "rejects": {"file": REJECTS_FILE, "count": 0, "bytes": 0}, "index": None, "runs": [],
            }
        else:
            differences = [f"{k}: {manifest['settings'].get(k)!r} -> {v!r}" for k, v in wanted.items()
                           if manifest["settings"].get(k, "fp32" if k == "precision" else None) != v]
            if differences:
                raise InputError(f"{output} holds a job with other settings ({'; '.join(differences)}); rerun "
                                 "with the original settings to continue it, or pass --overwrite to start afresh")
        state = cls(output, manifest)
        state._tidy()
        write_manifest(output, manifest)
        return state

    def _tidy(self) -> None:
        """Remove what a killed run left that the manifest does not vouch for."""
        remove_temporaries(self.output)
        listed = {s["file"] for s in self.manifest["shards"] if s.get("file")}
        shards = self.output / SHARDS_DIR
        if shards.is_dir():
            for p in shards.iterdir():
                if f"{SHARDS_DIR}/{p.name}" not in listed:
                    p.unlink()
        rejects = self.output / REJECTS_FILE
        committed = int(self.manifest["rejects"]["bytes"])
        if rejects.exists() and rejects.stat().st_size != committed:
            with rejects.open("r+b") as f:
                f.truncate(committed)
        elif not rejects.exists() and committed:
            raise InputError(f"{rejects} is missing but the manifest records {committed} bytes of rejects")
        for stale in self.output.glob(".old-*"):
            shutil.rmtree(stale, ignore_errors=True)

    # -- queries

    @property
    def complete(self) -> bool:
        return self.manifest["status"] == "complete"

    @property
    def done(self) -> set[int]:
        return {int(s["window"]) for s in self.manifest["shards"]}

    def stored_doc_ids(self) -> set[str]:
        """The document ids of the chunk shards done (a knowledge base's resumed run must not take them again)."""
        ids: set[str] = set()
        for entry in self.manifest["shards"]:
            if entry.get("file"):
                ids.update(read_columns(self.output / entry["file"], ["doc_id"])["doc_id"])
        return ids

    def resume_point(self) -> WindowSpec | None:
        """Where the first window not done starts (None: from the beginning)."""
        by_window = {int(s["window"]): s for s in self.manifest["shards"]}
        k = 0
        while k in by_window:
            k += 1
        if k == 0:
            return None
        previous = by_window[k - 1]["input"]
        first = previous["first"] + previous["count"]
        return WindowSpec(k, first, 0, previous["end"], previous["end"])

    # -- changes

    def commit(self, result: WindowResult) -> None:
        """Record one finished window: its rejects appended (flushed), then the manifest replaced."""
        if result.rejects:
            path = self.output / REJECTS_FILE
            with path.open("ab") as f:
                for reject in result.rejects:
                    f.write((json.dumps(reject.to_json(), ensure_ascii=False) + "\n").encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(self.output)
            self.manifest["rejects"]["count"] += len(result.rejects)
            self.manifest["rejects"]["bytes"] = path.stat().st_size
            if "first" not in self.manifest["rejects"]:
                self.manifest["rejects"]["first"] = result.rejects[0].to_json()
        shard = result.shard
        self.manifest["shards"].append({
            "window": result.spec.index, "file": shard.file if shard else None, "rows": shard.rows if shard else 0,
            "sha256": shard.sha256 if shard else None, "bytes": shard.bytes if shard else 0,
            "input": result.spec.to_json(), "rejects": len(result.rejects), "tokens": result.tokens,
            "device": result.device,
        })
        self.manifest["count"] += shard.rows if shard else 0
        write_manifest(self.output, self.manifest)

    def set_total(self, windows: int) -> None:
        self.manifest["windows_total"] = windows
        write_manifest(self.output, self.manifest)

    def finish(self, index: dict[str, Any], run: dict[str, Any]) -> None:
        self.manifest["index"] = index
        self.manifest["status"] = "complete"
        self.manifest["runs"].append(run)
        write_manifest(self.output, self.manifest)


def _lock(output: Path) -> IO[bytes]:
    """An exclusive lock on ``output`` (a second job on the same folder is refused, not interleaved)."""
    handle = (output / LOCK_FILE).open("ab")
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise InputError(f"another embed-corpus job is running on {output}; wait for it or stop it") from None
    return handle


def clear_output(output: Path) -> None:
    """Delete what embed-corpus writes in ``output`` (only its own files and folders)."""
    if not output.exists():
        return
    if not (output / MANIFEST_FILE).is_file() and any(p.name not in (LOCK_FILE, PROGRESS_FILE)
                                                       for p in output.iterdir()):
        raise InputError(f"--overwrite: {output} is not an embed-corpus output (no {MANIFEST_FILE}); not deleting it")
    with _lock(output):
        _clear(output)


def _clear(output: Path) -> None:
    for name in (MANIFEST_FILE, REJECTS_FILE, PROGRESS_FILE):
        (output / name).unlink(missing_ok=True)
    for name in (SHARDS_DIR, INDEX_DIR):
        shutil.rmtree(output / name, ignore_errors=True)
    remove_temporaries(output)
