"""The resumable embed-corpus job: input windows -> length-sorted micro-batches -> Parquet shards + manifest.

How a crash is survived (SIGKILL at any moment included): the input is cut into fixed windows of
``window_size`` lines (rows); each window becomes one shard, written under a temporary name and renamed,
then recorded in ``manifest.json``, which is itself replaced atomically. A window is done exactly when the
manifest lists it. Reopening an output folder deletes temporaries and shards the manifest does not list,
cuts ``rejects.jsonl`` back to the length the manifest recorded, and carries on with the first window not
done. Windows are the same in every run and micro-batches depend only on a window's records, so the
finished output equals an uninterrupted run's, every id exactly once.

A rerun must use the settings that shaped the vectors (model checksum, input, prefix, window size, maximum
length, token budget, dtype); anything else is refused with the differences listed (``--overwrite`` starts
afresh). When every window is done the exact search index is built next to the shards (``index/``), the
manifest is marked complete and the sinks (PostgreSQL) are written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import numpy as np

from e5studio.engine.checkpoint import WEIGHT_FILES, load_checkpoint
from e5studio.errors import InputError
from e5studio.jobs.batch_embed.reader import InputSpec, Reject, Window, WindowSpec, iter_windows
from e5studio.jobs.batch_embed.writer import (
    FORMAT,
    MANIFEST,
    REJECTS,
    SHARDS_DIR,
    ShardInfo,
    fsync_dir,
    read_manifest,
    remove_temporaries,
    text_sha256,
    write_manifest,
    write_shard,
)
from e5studio.settings import EngineSettings

if TYPE_CHECKING:  # torch is imported only when a job runs
    from e5studio.engine.embedder import Embedder

INDEX_DIR = "index"
LOCK = ".lock"
BAD_RECORD_MODES = ("skip", "fail")
INPUT_TYPES = ("passage", "query")
_LISTED_REJECTS = 10
T = TypeVar("T")


@dataclass(frozen=True)
class JobSettings:
    """One embed-corpus job.

    input_type: E5 prefix added where missing (``passage``, ``query``) or ``None`` for texts as given.
    window_size: input lines (rows) per window = per shard; records are length-sorted within a window.
    bad_records: ``skip`` (each bad record goes to ``rejects.jsonl`` with its line number) or ``fail``.
    workers: local engine, micro-batches embedded at once (``None``: the engine's default, one per CPU thread; 1 on
    GPU), see :meth:`e5studio.engine.embedder.Embedder.load`.
    """

    input: InputSpec
    output: Path
    engine: EngineSettings
    input_type: str | None = "passage"
    window_size: int = 10_000
    bad_records: str = "skip"
    overwrite: bool = False
    progress: bool = True
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.input_type is not None and self.input_type not in INPUT_TYPES:
            raise InputError(f"input type must be passage, query or none, got {self.input_type!r}")
        if self.bad_records not in BAD_RECORD_MODES:
            raise InputError(f"--bad-records must be skip or fail, got {self.bad_records!r}")
        if self.window_size < 1:
            raise InputError("--window-size must be at least 1")
        if self.workers is not None and self.workers < 1:
            raise InputError("--workers must be at least 1")


# ---------------------------------------------------------------------------------------------- model


def model_sha256(path: Path) -> str:
    """SHA-256 over the files that shape the vectors: config, tokenizer, weights (names included)."""
    names = ["config.json", "tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
             *WEIGHT_FILES]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError):
            names += sorted(set(json.loads(index.read_text())["weight_map"].values()))
    digest = hashlib.sha256()
    for name in names:
        file = path / name
        if file.is_file():
            digest.update(name.encode() + b"\0")
            with file.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):  # noqa: B023 - f is bound per file
                    digest.update(block)
    return digest.hexdigest()


def model_identity(engine: EngineSettings) -> dict[str, Any]:
    """Name, resolved path, checksum, dimension and truncation length, without loading the weights."""
    checkpoint = load_checkpoint(engine.model)
    config = checkpoint.config
    max_length = min(engine.max_length or checkpoint.max_length, config.max_position_embeddings)
    return {"name": engine.model, "path": str(checkpoint.path.resolve()), "sha256": model_sha256(checkpoint.path),
            "dim": config.hidden_size, "max_length": max_length}


# ---------------------------------------------------------------------------------------------- state


def _vector_settings(settings: JobSettings, model: dict[str, Any]) -> dict[str, Any]:
    """Everything a rerun must share with the first run for the vectors to be the same."""
    return {
        "model_sha256": model["sha256"],
        "max_length": model["max_length"],
        "input_type": settings.input_type,
        "window_size": settings.window_size,
        "max_batch_tokens": settings.engine.max_batch_tokens,
        "dtype": settings.engine.dtype,
        "input_format": settings.input.format,
        "text_field": settings.input.text_field if settings.input.format != "text" else None,
        "id_field": settings.input.id_field,
        "input": settings.input.fingerprint(),
    }


class JobState:
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
    def open(cls, settings: JobSettings, model: dict[str, Any]) -> JobState:
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
    def _open_locked(cls, settings: JobSettings, model: dict[str, Any]) -> JobState:
        output = settings.output
        wanted = _vector_settings(settings, model)
        manifest = read_manifest(output)
        if manifest is None:
            leftovers = [p.name for p in output.iterdir() if not p.name.startswith(".tmp-") and p.name != LOCK]
            if leftovers:
                raise InputError(f"output folder {output} is not empty and has no {MANIFEST} "
                                 f"({', '.join(sorted(leftovers)[:5])}); choose an empty or new folder")
            manifest = {
                "format": FORMAT, "status": "running", "model": model, "dim": model["dim"], "count": 0,
                "input": {"path": str(settings.input.path.resolve()), "format": settings.input.format,
                          "text_field": wanted["text_field"], "id_field": settings.input.id_field,
                          **wanted["input"]},
                "settings": wanted, "windows_total": None, "shards": [],
                "rejects": {"file": REJECTS, "count": 0, "bytes": 0}, "index": None, "runs": [],
            }
        else:
            differences = [f"{k}: {manifest['settings'].get(k)!r} -> {v!r}" for k, v in wanted.items()
                           if manifest["settings"].get(k) != v]
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
        rejects = self.output / REJECTS
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
            path = self.output / REJECTS
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
    handle = (output / LOCK).open("ab")
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
    if not (output / MANIFEST).is_file() and any(p.name != LOCK for p in output.iterdir()):
        raise InputError(f"--overwrite: {output} is not an embed-corpus output (no {MANIFEST}); not deleting it")
    with _lock(output):
        _clear(output)


def _clear(output: Path) -> None:
    for name in (MANIFEST, REJECTS):
        (output / name).unlink(missing_ok=True)
    for name in (SHARDS_DIR, INDEX_DIR):
        shutil.rmtree(output / name, ignore_errors=True)
    remove_temporaries(output)


# ---------------------------------------------------------------------------------------------- windows


@dataclass
class WindowResult:
    spec: WindowSpec
    shard: ShardInfo | None
    rejects: list[Reject]
    tokens: int
    device: str
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return self.shard.rows if self.shard else 0


def bad_records_error(spec: InputSpec, rejects: list[Reject]) -> InputError:
    shown = "\n  ".join(r.describe(spec) for r in rejects[:_LISTED_REJECTS])
    more = f"\n  ... and {len(rejects) - _LISTED_REJECTS} more in this window" if len(rejects) > _LISTED_REJECTS \
        else ""
    return InputError(f"bad records in {spec.path} (--bad-records fail):\n  {shown}{more}\n"
                      "fix them, or pass --bad-records skip to write them to rejects.jsonl and go on")


@dataclass
class PreparedWindow:
    window: Window
    token_ids: list[np.ndarray] = field(default_factory=list)


def prepare_window(embedder: Embedder, window: Window, input_type: str | None,
                   chunk: int = 1024) -> PreparedWindow:
    """Token ids of a window's records (tokenised ``chunk`` texts at a time: the tokenizer's own per-text
    buffers, overflow included, are much larger than the ids kept)."""
    texts = [r.text for r in window.records]
    ids: list[np.ndarray] = []
    for start in range(0, len(texts), chunk):
        ids += embedder.tokenize(texts[start:start + chunk], input_type)
    return PreparedWindow(window, ids)


def embed_window(embedder: Embedder, prepared: PreparedWindow, output: Path) -> WindowResult:
    """Embed one tokenised window (length-sorted, token-budget micro-batches) and write its shard."""
    t0 = time.perf_counter()
    window = prepared.window
    shard = None
    if window.records:
        vectors = embedder.embed_ids(prepared.token_ids)  # [n, dim] float32, input order
        shard = write_shard(output, window.spec.index, [r.id for r in window.records],
                            [text_sha256(r.text) for r in window.records], vectors)
    tokens = int(sum(len(ids) for ids in prepared.token_ids))
    return WindowResult(window.spec, shard, window.rejects, tokens, embedder.device,
                        time.perf_counter() - t0)


def prefetch(items: Iterator[T], depth: int = 1) -> Generator[T, None, None]:
    """``items`` produced by a background thread up to ``depth`` ahead (reading/tokenising overlap compute)."""
    done = object()
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put(exc)

    thread = threading.Thread(target=produce, name="embed-corpus-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


# ---------------------------------------------------------------------------------------------- progress


class Progress:
    """A tqdm bar over the input (bytes or rows) with passages/s, tokens/s and the ETA; quiet when disabled."""

    def __init__(self, total: int, initial: int, enabled: bool, units: str) -> None:
        self._bar: Any = None
        self.passages = 0
        self.tokens = 0
        self.rejects = 0
        self._t0 = time.perf_counter()
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, file=sys.stderr, dynamic_ncols=True,
                             desc="starting", bar_format="embed-corpus {percentage:3.0f}%|{bar}| {desc} "
                                                         "[{elapsed}, ETA {remaining}]")

    def update(self, result: WindowResult) -> None:
        self.passages += result.rows
        self.tokens += result.tokens
        self.rejects += len(result.rejects)
        if self._bar is not None:
            elapsed = max(time.perf_counter() - self._t0, 1e-9)
            self._bar.set_description_str(f"{self.passages:,} passages, {self.passages / elapsed:,.1f} passages/s, "
                                          f"{self.tokens / elapsed:,.0f} tokens/s, {self.rejects} rejected",
                                          refresh=False)
            self._bar.update(result.spec.end - result.spec.start)

    def write(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# ---------------------------------------------------------------------------------------------- the job


@dataclass(frozen=True)
class JobResult:
    output: Path
    manifest: dict[str, Any]
    run: dict[str, Any]
    sinks: list[dict[str, Any]]

    def summary(self) -> str:
        m, run = self.manifest, self.run
        rejects = m["rejects"]
        lines = [
            f"embed-corpus: {m['count']:,} vectors (dim {m['dim']}) in "
            f"{sum(1 for s in m['shards'] if s.get('file'))} shard(s) -> {self.output}",
            f"  model {m['model']['name']} (sha256 {m['model']['sha256'][:12]}), input type "
            f"{m['settings']['input_type'] or 'none (texts as given)'}, max length {m['settings']['max_length']}",
            (f"  this run ({run['engine']}): {run['passages']:,} passages, {run['tokens']:,} tokens in "
             f"{run['seconds']:.1f} s: {run['passages_per_s']:,.1f} passages/s, {run['tokens_per_s']:,.0f} tokens/s"
             + (f"; resumed at window {run['resumed_at_window']}" if run.get("resumed_at_window") else ""))
            if run["passages"] or not run.get("already_complete")
            else "  this run: nothing to embed (already complete)",
            f"  rejected: {rejects['count']:,} bad record(s)"
            + (f" -> {self.output / REJECTS} (first: line {rejects['first']['line']}: {rejects['first']['reason']})"
               if rejects["count"] else ""),
        ]
        if m.get("index"):
            lines.append(f"  index: {self.output / INDEX_DIR} ({m['index']['kind']}, {m['index']['count']:,} vectors);"
                         f" search with: e5studio search {self.output} \"query text\"")
        for sink in self.sinks:
            lines.append(f"  sink {sink['sink']}: {sink['inserted']:,} inserted, {sink['updated']:,} updated, "
                         f"{sink['unchanged']:,} unchanged; table {sink['table']} has {sink['rows']:,} rows")
        return "\n".join(lines)


Engine = Callable[[JobSettings, JobState, Progress], int]


def local_engine(settings: JobSettings, state: JobState, progress: Progress) -> int:
    """Embed every window not done, in input order, on this machine; returns how many windows the input has.

    A background thread reads and tokenises the next window while this one is embedded and written. On CPU
    the engine embeds the micro-batches of a window ``workers`` at once (default: one per core), each with its
    share of torch's threads (:mod:`e5studio.engine.embedder`).
    """
    from e5studio.engine.embedder import Embedder

    embedder = Embedder.load(settings.engine, workers=settings.workers)
    return _embed_windows(settings, state, progress, embedder)


def _embed_windows(settings: JobSettings, state: JobState, progress: Progress, embedder: Embedder) -> int:
    done = state.done

    def prepared() -> Iterator[tuple[int, PreparedWindow | None]]:
        for window in iter_windows(settings.input, settings.window_size, state.resume_point()):
            skip = window.spec.index in done
            yield window.spec.index, None if skip else prepare_window(embedder, window, settings.input_type)

    total = 0
    items = prefetch(prepared())
    try:
        for index, item in items:
            total = index + 1
            if item is None:
                continue
            if item.window.rejects and settings.bad_records == "fail":
                raise bad_records_error(settings.input, item.window.rejects)
            result = embed_window(embedder, item, settings.output)
            state.commit(result)
            progress.update(result)
    finally:
        items.close()  # stops the reader thread
    return total


def run_job(settings: JobSettings, engine: Engine = local_engine,
            sinks: list[Any] | None = None) -> JobResult:
    """Run (or continue, or just finish) the job; returns the summary. Raises InputError on bad input."""
    model = model_identity(settings.engine)
    state = JobState.open(settings, model)
    try:
        return _run(settings, engine, sinks or [], state)
    finally:
        state.close()


def _run(settings: JobSettings, engine: Engine, sinks: list[Any], state: JobState) -> JobResult:
    from e5studio.jobs.batch_embed.sinks import build_index

    resumed = sorted(state.done)
    start = state.resume_point()
    progress = Progress(settings.input.total(), start.start if start else 0,
                        settings.progress and not state.complete, settings.input.units)
    engine_name = getattr(engine, "engine_name", "local")
    was_complete = state.complete
    try:
        if not state.complete:
            if resumed:
                progress.write(f"embed-corpus: continuing {settings.output} ({len(resumed)} window(s) done, "
                               f"{state.manifest['count']:,} vectors)")
            total = engine(settings, state, progress)
            state.set_total(max(total, max(state.done, default=-1) + 1))
            missing = sorted(set(range(state.manifest["windows_total"])) - state.done)
            if missing:
                raise InputError(f"windows {missing[:10]} were not embedded; rerun the same command to continue")
    finally:
        progress.close()
    seconds = progress.elapsed
    run = {"engine": engine_name, "passages": progress.passages, "tokens": progress.tokens,
           "rejected": progress.rejects, "seconds": round(seconds, 3),
           "passages_per_s": progress.passages / seconds if seconds > 0 else 0.0,
           "tokens_per_s": progress.tokens / seconds if seconds > 0 else 0.0,
           "resumed_at_window": (start.index if start else 0) if resumed else None,
           "already_complete": was_complete,
           "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if not state.complete or not (settings.output / INDEX_DIR).is_dir():
        state.finish(build_index(settings.output, state.manifest), run)
    reports = [sink.write(settings.output) for sink in sinks]
    return JobResult(settings.output, state.manifest, run, reports)


__all__ = ["JobSettings", "JobState", "JobResult", "run_job", "local_engine"]
