"""The parameters of a batch-embedding (embed-corpus) job that the job runner and the web UI take, written
once; ``e5studio embed-corpus`` builds its ``--window-size`` and ``--workers`` flags from them (``--threads``
is an engine flag, :mod:`e5studio.engine.flags`, with the same default)."""

from __future__ import annotations

from e5studio.jobspec.params import Param, by_name, defaults

WINDOW_SIZE = Param("window_size", int, 10_000, "input lines (rows) per window = per Parquet shard; records are "
                    "length-sorted within a window, and a rerun continues after the last complete one", minimum=1)
WORKERS = Param("workers", int, None, "local: micro-batches embedded in parallel, one model shared (default: one "
                "per CPU core; 1 on GPU); ray: actors in the pool, one engine each (default 1)", minimum=1,
                empty="one per core on CPU")
THREADS = Param("threads", int, None, "torch CPU threads", minimum=1, empty="one per core")

BATCH_EMBED_PARAMS = by_name([WINDOW_SIZE, THREADS, WORKERS])


def batch_embed_param_defaults() -> dict[str, int | float | str | None]:
    return defaults(BATCH_EMBED_PARAMS)
