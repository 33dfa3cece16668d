"""The resumable embed-corpus job: input windows -> length-sorted micro-batches -> Parquet shards + manifest.

The input is cut into fixed windows of ``window_size`` lines (rows); each window becomes one shard, recorded
in the manifest once written (:mod:`.manifest_state` says how a crash is survived). Windows are the same in
every run and micro-batches depend only on a window's records, so the finished output equals an
uninterrupted run's, every id exactly once. A window executor embeds the windows not done: on this machine
(:func:`local_executor`, ``--engine local``) or on Ray Data (:mod:`.ray_executor`, ``--engine ray``). When
every window is done the exact search index is built next to the shards (``index/``), the manifest is
marked complete and the sinks (PostgreSQL) are written.

The job runs under its lifecycle handle (:mod:`e5studio.jobs.lifecycle`; with ``--job-id`` the server's record,
else none): its progress line, the rows done on its record, its end (Succeeded, Failed, Interrupted).

A batch-embed window, top to bottom: :func:`run_job` -> :func:`local_executor` (reader thread:
:func:`.windows.prepare_window`) -> :func:`.windows.embed_vectors` (engine ``Embedder.embed_ids``; the line
moves by :meth:`.progress.EmbedTally.rows_done`) -> writer thread (:mod:`.write_behind`):
:func:`.windows.write_window` (:func:`.writer.write_shard`) -> :meth:`.manifest_state.ManifestState.commit` ->
:meth:`.progress.EmbedTally.update` (the job's record). Reading, embedding and writing overlap: three windows
in flight.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from e5studio.engine.model_identity import model_identity
from e5studio.errors import InputError
from e5studio.jobs.batch_embed.chunking import Chunker, ChunkPolicy
from e5studio.jobs.batch_embed.manifest_state import ManifestState
from e5studio.jobs.batch_embed.prefetch import prefetch
from e5studio.jobs.batch_embed.progress import EmbedTally, Measure, display
from e5studio.jobs.batch_embed.reader import InputSpec, iter_windows
from e5studio.jobs.batch_embed.summary import EmbedCorpusResult
from e5studio.jobs.batch_embed.windows import (
    EmbeddedWindow,
    PreparedWindow,
    bad_records_error,
    embed_vectors,
    prepare_window,
    write_window,
)
from e5studio.jobs.batch_embed.write_behind import WriteBehind
from e5studio.jobs.lifecycle import JobHandle
from e5studio.jobspec.batch_params import WINDOW_SIZE
from e5studio.jobspec.layout import INDEX_DIR
from e5studio.settings import EngineSettings

if TYPE_CHECKING:  # torch is imported only when a job runs
    from e5studio.engine.embedder import Embedder

BAD_RECORD_MODES = ("skip", "fail")
INPUT_TYPES = ("passage", "query")


@dataclass(frozen=True)
class EmbedCorpusSettings:
    """One embed-corpus job.

    input_type: E5 prefix added where missing (``passage``, ``query``) or ``None`` for texts as given.
    window_size: input lines (rows) per window = per shard; records are length-sorted within a window.
    bad_records: ``skip`` (each bad record goes to ``rejects.jsonl`` with its line number) or ``fail``.
    workers: local executor, micro-batches embedded at once (``None``: the engine's default, one per CPU thread;
    1 on GPU), see :meth:`e5studio.engine.embedder.Embedder.load`.
    """

    input: InputSpec
    output: Path
    engine: EngineSettings
    input_type: str | None = "passage"
    window_size: int = WINDOW_SIZE.default  # type: ignore[assignment]
    bad_records: str = "skip"
    overwrite: bool = False
    progress: bool = True
    workers: int | None = None
    chunking: ChunkPolicy | None = None  # knowledge bases: documents -> chunk rows (None: one vector per record)
    taken_ids: frozenset[str] = frozenset()  # with chunking: document ids already stored elsewhere (rejected)

    def __post_init__(self) -> None:
        if self.input_type is not None and self.input_type not in INPUT_TYPES:
            raise InputError(f"input type must be passage, query or none, got {self.input_type!r}")
        if self.bad_records not in BAD_RECORD_MODES:
            raise InputError(f"--bad-records must be skip or fail, got {self.bad_records!r}")
        if self.window_size < 1:
            raise InputError("--window-size must be at least 1")
        if self.workers is not None and self.workers < 1:
            raise InputError("--workers must be at least 1")


class WindowExecutor(Protocol):
    """Embeds every window the manifest does not list, committing each; returns how many windows the input
    has. ``executor_name`` is recorded in the manifest's runs (``local``, ``ray``)."""

    executor_name: str

    def __call__(self, settings: EmbedCorpusSettings, state: ManifestState, progress: EmbedTally) -> int: ...


class LocalExecutor:
    """Embed every window not done, in input order, on this machine.

    A background thread reads and tokenises the next window while this one is embedded, and another writes the
    previous one's shard and commits it (:mod:`.write_behind`). On CPU
    the engine embeds the micro-batches of a window ``workers`` at once (default: one per core), each with its
    share of torch's threads (:mod:`e5studio.engine.embedder`).
    """

    executor_name = "local"

    def __call__(self, settings: EmbedCorpusSettings, state: ManifestState, progress: EmbedTally) -> int:
        from e5studio.engine.embedder import Embedder

        embedder = Embedder.load(settings.engine, workers=settings.workers)
        return embed_windows(settings, state, progress, embedder)


local_executor = LocalExecutor()


def embed_windows(settings: EmbedCorpusSettings, state: ManifestState, progress: EmbedTally,
                  embedder: Embedder) -> int:
    """The local executor's loop over windows: the reader thread prepares the next window while this thread
    embeds one and the writer thread writes and commits the one before (:mod:`.write_behind`)."""
    done = state.done
    chunker = None
    if settings.chunking is not None:
        chunker = Chunker(embedder.tokenizer, settings.chunking, settings.input_type,
                          set(settings.taken_ids) | state.stored_doc_ids())

    def prepared() -> Iterator[tuple[int, PreparedWindow | None]]:
        for window in iter_windows(settings.input, settings.window_size, state.resume_point()):
            skip = window.spec.index in done
            yield window.spec.index, None if skip else prepare_window(embedder, window, settings.input_type,
                                                                      chunker=chunker)

    def write(embedded: EmbeddedWindow) -> None:
        result = write_window(embedded, settings.output)
        state.commit(result)
        progress.update(result)

    total = 0
    items = prefetch(prepared())
    writer: WriteBehind[EmbeddedWindow] = WriteBehind(write)
    try:
        for index, item in items:
            total = index + 1
            if item is None:
                continue
            if item.window.rejects and settings.bad_records == "fail":
                raise bad_records_error(settings.input, item.window.rejects)
            rows, tokens = len(item.token_ids), item.tokens
            embedded = embed_vectors(embedder, item, progress.rows_done(item.window.spec, rows, tokens))
            progress.embedded(item.window.spec, rows, tokens)
            writer.submit(embedded)
    finally:
        try:
            writer.close()  # windows already embedded are written, also when this loop failed
        finally:
            items.close()  # stops the reader thread
    return total


def run_job(settings: EmbedCorpusSettings, executor: WindowExecutor = local_executor,
            sinks: list[Any] | None = None, handle: JobHandle | None = None) -> EmbedCorpusResult:
    """Run (or continue, or just finish) the job under its ``handle`` (default: unrecorded, its progress on
    stderr and in the output's ``progress.json``); returns the summary. Raises InputError on bad input."""
    if handle is None:
        handle = JobHandle.unrecorded(display(settings.output, settings.progress))
    model = model_identity(settings.engine)
    state = ManifestState.open(settings, model)
    try:
        return _run(settings, executor, sinks or [], state, handle)
    finally:
        state.close()


def _rows_done(state: ManifestState, settings: EmbedCorpusSettings) -> int:
    """Input rows done, all runs together: embedded or rejected (chunked: the documents, whatever their chunks)."""
    if settings.chunking is not None:
        return sum(int(shard["input"]["count"]) for shard in state.manifest["shards"])
    return int(state.manifest["count"]) + int(state.manifest["rejects"]["count"])


def _run(settings: EmbedCorpusSettings, executor: WindowExecutor, sinks: list[Any], state: ManifestState,
         handle: JobHandle) -> EmbedCorpusResult:
    from e5studio.jobs.batch_embed.sinks import build_index

    resumed = sorted(state.done)
    start = state.resume_point()
    was_complete = state.complete
    progress = EmbedTally(handle, Measure.of(settings.input), start, was_complete, lambda: _rows_done(state, settings))
    try:
        if not state.complete:
            if resumed:
                progress.write(f"embed-corpus: continuing {settings.output} ({len(resumed)} window(s) done, "
                               f"{state.manifest['count']:,} vectors)")
            total = executor(settings, state, progress)
            state.set_total(max(total, max(state.done, default=-1) + 1))
            missing = sorted(set(range(state.manifest["windows_total"])) - state.done)
            if missing:
                raise InputError(f"windows {missing[:10]} were not embedded; rerun the same command to continue")
    finally:
        handle.display.close()
    seconds = progress.elapsed
    run = {"engine": executor.executor_name, "passages": progress.passages, "tokens": progress.tokens,
           "rejected": progress.rejects, "seconds": round(seconds, 3),
           "passages_per_s": progress.passages / seconds if seconds > 0 else 0.0,
           "tokens_per_s": progress.tokens / seconds if seconds > 0 else 0.0,
           "resumed_at_window": (start.index if start else 0) if resumed else None,
           "already_complete": was_complete,
           "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if not state.complete or not (settings.output / INDEX_DIR).is_dir():
        state.finish(build_index(settings.output, state.manifest), run)
    reports = [sink.write(settings.output) for sink in sinks]
    handle.finish(_rows_done(state, settings), {"count": state.manifest["count"],
                                                "rejects": state.manifest["rejects"]["count"],
                                                "dim": state.manifest.get("dim"), "vectors": str(settings.output)})
    return EmbedCorpusResult(settings.output, state.manifest, run, reports)


__all__ = ["EmbedCorpusSettings", "WindowExecutor", "LocalExecutor", "local_executor", "run_job"]
